//! The job store of the distributed mode: PostgreSQL, shared by every API
//! process and worker.
//!
//! A small pool of connections (deadpool) that are checked before reuse and
//! made anew after the server comes back. Every call has a deadline, so an
//! unreachable database is an `Unavailable` error (the API answers 503)
//! rather than a hang. State changes lock the job's row (`FOR UPDATE`) and
//! apply the lifecycle of [`crate::job::Transition`], like the SQLite store.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use ignis_vmm::RunReport;
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;

use super::{
    job_result_parts, result_parts, Admission, ApiKey, Claimed, JobStore, ListQuery,
    PendingWebhook, StoreError, StoreResult, Waiting,
};
use crate::job::{ClaimDecision, Job, JobId, JobStatus, Timings, Transition, EXHAUSTED_MESSAGE};

/// Schema steps, applied in order and recorded in `schema_migrations`.
/// A later migration is appended here, never edited in place. JSON is kept
/// as text: programs' bytes may hold NUL, which `jsonb` refuses.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE jobs (
        id          UUID PRIMARY KEY,
        owner       TEXT NOT NULL,
        language    TEXT NOT NULL,
        status      TEXT NOT NULL,
        request     TEXT NOT NULL,
        webhook_url TEXT,
        result      TEXT,
        timings     TEXT,
        created_at  TIMESTAMPTZ NOT NULL,
        started_at  TIMESTAMPTZ,
        finished_at TIMESTAMPTZ,
        attempts    INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_owner_id ON jobs (owner, id);
    CREATE INDEX jobs_status ON jobs (status);
    CREATE TABLE api_keys (
        id           TEXT PRIMARY KEY,
        name         TEXT NOT NULL,
        secret_hash  TEXT NOT NULL UNIQUE,
        rate_per_sec INTEGER,
        max_queued   INTEGER,
        created_at   TIMESTAMPTZ NOT NULL
    );
",
    "
    ALTER TABLE jobs ADD COLUMN compat TEXT;
",
    // Outputs as bytes beside the result's JSON, rather than JSON-escaped
    // inside it (a control byte took six). Earlier rows keep theirs in the
    // JSON, where `with_outputs` still finds them: moving them here would
    // need Postgres to decode `\u0000`, which its JSON refuses.
    "
    ALTER TABLE jobs ADD COLUMN stdout BYTEA, ADD COLUMN stderr BYTEA;
",
    // Webhook deliveries not yet over, so that a restart sends them.
    "
    CREATE TABLE webhooks (
        job_id     UUID PRIMARY KEY,
        url        TEXT NOT NULL,
        body       BYTEA NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
",
    // Key limits: a cap on running jobs; admission counts queued jobs per owner.
    "
    ALTER TABLE api_keys ADD COLUMN max_running INTEGER;
    CREATE INDEX jobs_owner_status ON jobs (owner, status);
",
];

/// Taken while migrating, so processes starting together migrate once.
const MIGRATION_LOCK: i64 = 0x1915_0001;

/// The longest any one store call may take before it counts as unavailable.
const CALL_DEADLINE: Duration = Duration::from_secs(10);

const JOB_COLUMNS: &str = "id, owner, language, status, request, webhook_url, result, timings, \
                           created_at, started_at, finished_at, attempts, compat, stdout, stderr";
/// [`JOB_COLUMNS`] without the outputs, for listings: a page of jobs never
/// reads what they printed.
const SUMMARY_COLUMNS: &str = "id, owner, language, status, request, webhook_url, result, \
                               timings, created_at, started_at, finished_at, attempts, compat, \
                               NULL::BYTEA, NULL::BYTEA";

/// The PostgreSQL implementation of [`JobStore`]. Cloning shares the pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("status", &self.pool.status())
            .finish()
    }
}

#[path = "postgres_decode.rs"]
mod decode;
use decode::{job_of, json, pg, u32_of};

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/db`) and brings the
    /// schema up to date. Refuses a database migrated by a newer Ignis.
    pub async fn connect(url: &str) -> StoreResult<PostgresStore> {
        let mut cfg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Backend(format!("database URL: {e}")))?;
        cfg.connect_timeout(Duration::from_secs(5));
        cfg.application_name("ignis");
        let mgr = Manager::from_config(
            cfg,
            NoTls,
            ManagerConfig {
                // A connection that died with its server is noticed before
                // reuse and replaced.
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(16)
            .runtime(Runtime::Tokio1)
            .timeouts(Timeouts {
                wait: Some(Duration::from_secs(5)),
                create: Some(Duration::from_secs(5)),
                recycle: Some(Duration::from_secs(5)),
            })
            .build()
            .map_err(|e| StoreError::Backend(format!("connection pool: {e}")))?;
        let store = PostgresStore { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(format!("database connection: {e}")))
    }

    /// Runs `f` on a pooled connection within [`CALL_DEADLINE`].
    async fn with<T>(
        &self,
        what: &'static str,
        f: impl AsyncFnOnce(&mut deadpool_postgres::Object) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let run = async {
            let mut c = self.client().await?;
            f(&mut c).await
        };
        match tokio::time::timeout(CALL_DEADLINE, run).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!(
                "{what}: no answer within {CALL_DEADLINE:?}"
            ))),
        }
    }

    async fn migrate(&self) -> StoreResult<()> {
        self.with("migration", async |c| {
            let tx = c.transaction().await.map_err(|e| pg("migration", e))?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await
                .map_err(|e| pg("migration lock", e))?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                     version INTEGER PRIMARY KEY,
                     applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            )
            .await
            .map_err(|e| pg("migration table", e))?;
            let row = tx
                .query_one(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                    &[],
                )
                .await
                .map_err(|e| pg("schema version", e))?;
            let current = usize::try_from(row.get::<_, i32>(0)).unwrap_or(0);
            if current > MIGRATIONS.len() {
                return Err(StoreError::Backend(format!(
                    "database schema version {current} is newer than this build ({})",
                    MIGRATIONS.len()
                )));
            }
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
                let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
                tx.batch_execute(sql)
                    .await
                    .map_err(|e| pg("migration", e))?;
                tx.execute(
                    "INSERT INTO schema_migrations (version) VALUES ($1)",
                    &[&version],
                )
                .await
                .map_err(|e| pg("migration record", e))?;
            }
            tx.commit().await.map_err(|e| pg("migration commit", e))
        })
        .await
    }

    /// The schema version recorded in the database (tests).
    pub async fn schema_version(&self) -> StoreResult<usize> {
        self.with("schema version", async |c| {
            let row = c
                .query_one(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                    &[],
                )
                .await
                .map_err(|e| pg("schema version", e))?;
            Ok(usize::try_from(row.get::<_, i32>(0)).unwrap_or(0))
        })
        .await
    }
}

/// Loads job `id` (of `owner`, if given) on `c`, optionally locking its row.
async fn load(
    c: &impl GenericClient,
    id: JobId,
    owner: Option<&str>,
    lock: bool,
) -> StoreResult<Option<Job>> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 AND ($2::TEXT IS NULL OR owner = $2){}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let row = c
        .query_opt(&sql, &[&id, &owner])
        .await
        .map_err(|e| pg("loading a job", e))?;
    row.as_ref().map(job_of).transpose()
}

/// Applies transition `t` to the locked job with the extra `set` clauses
/// (parameters from `$3`), after checking it is allowed.
async fn apply(
    tx: &deadpool_postgres::Transaction<'_>,
    job: &Job,
    t: Transition,
    set: &str,
    extra: &[&(dyn ToSql + Sync)],
) -> StoreResult<()> {
    if !t.allowed(job.status) {
        return Err(StoreError::not_allowed(job.status, t));
    }
    let sql = format!("UPDATE jobs SET status = $2{set} WHERE id = $1");
    let to = t.to().as_str();
    let mut args: Vec<&(dyn ToSql + Sync)> = vec![&job.id, &to];
    args.extend_from_slice(extra);
    tx.execute(&sql, &args).await.map_err(|e| pg(t.name(), e))?;
    Ok(())
}

/// Runs `f` in a transaction over the locked row of job `id` (any owner
/// when `owner` is None) and commits if it succeeds.
async fn locked<T>(
    c: &mut deadpool_postgres::Object,
    id: JobId,
    owner: Option<&str>,
    f: impl AsyncFnOnce(&deadpool_postgres::Transaction<'_>, Job) -> StoreResult<T>,
) -> StoreResult<T> {
    let tx = c.transaction().await.map_err(|e| pg("begin", e))?;
    let job = load(&tx, id, owner, true)
        .await?
        .ok_or(StoreError::NotFound(id))?;
    let out = f(&tx, job).await?;
    tx.commit().await.map_err(|e| pg("commit", e))?;
    Ok(out)
}

/// Inserts `job` as a new row on `c` (a connection or a transaction).
async fn insert_job(c: &impl GenericClient, job: &Job) -> StoreResult<()> {
    let request = json("request", &job.request)?;
    let (result, stdout, stderr) = job_result_parts(job)?;
    let timings = job
        .timings
        .as_ref()
        .map(|t| json("timings", t))
        .transpose()?;
    let attempts = i32::try_from(job.attempts).unwrap_or(i32::MAX);
    let sql = format!(
        "INSERT INTO jobs ({JOB_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
    );
    c.execute(
        &sql,
        &[
            &job.id,
            &job.owner,
            &job.language,
            &job.status.as_str(),
            &request,
            &job.webhook_url,
            &result,
            &timings,
            &job.created_at,
            &job.started_at,
            &job.finished_at,
            &attempts,
            &job.compat,
            &stdout,
            &stderr,
        ],
    )
    .await
    .map_err(|e| pg("inserting a job", e))?;
    Ok(())
}

#[async_trait]
impl JobStore for PostgresStore {
    async fn insert(&self, job: &Job) -> StoreResult<()> {
        self.with("insert", async |c| insert_job(&*c, job).await)
            .await
    }

    async fn insert_within(&self, job: &Job, max_queued: Option<u32>) -> StoreResult<Admission> {
        self.insert_admitted(job, max_queued).await
    }

    async fn get(&self, owner: &str, id: JobId) -> StoreResult<Option<Job>> {
        self.with("get", async |c| load(c, id, Some(owner), false).await)
            .await
    }

    async fn get_any(&self, id: JobId) -> StoreResult<Option<Job>> {
        self.with("get", async |c| load(c, id, None, false).await)
            .await
    }

    async fn list(&self, owner: &str, q: &ListQuery) -> StoreResult<Vec<Job>> {
        let status = q.status.map(JobStatus::as_str);
        let limit = i64::from(q.limit);
        self.with("list", async |c| {
            let sql = format!(
                "SELECT {SUMMARY_COLUMNS} FROM jobs WHERE owner = $1 \
                 AND ($2::TEXT IS NULL OR status = $2) \
                 AND ($3::TEXT IS NULL OR language = $3) \
                 AND ($4::UUID IS NULL OR id < $4) \
                 ORDER BY id DESC LIMIT $5"
            );
            let rows = c
                .query(&sql, &[&owner, &status, &q.language, &q.before, &limit])
                .await
                .map_err(|e| pg("listing jobs", e))?;
            rows.iter().map(job_of).collect()
        })
        .await
    }

    async fn count_queued(&self, owner: &str) -> StoreResult<u64> {
        self.with("count", async |c| {
            let sql = "SELECT COUNT(*) FROM jobs WHERE owner = $1 AND status = 'queued'";
            let row = c
                .query_one(sql, &[&owner])
                .await
                .map_err(|e| pg("counting queued jobs", e))?;
            Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
        })
        .await
    }

    async fn claim(
        &self,
        id: JobId,
        redelivered: bool,
        max_attempts: u32,
        at: DateTime<Utc>,
    ) -> StoreResult<Claimed> {
        let failed = json(
            "result",
            &RunReport::internal_error(EXHAUSTED_MESSAGE, None),
        )?;
        self.with("claim", async |c| {
            locked(c, id, None, async |tx, job| {
                match ClaimDecision::decide(job.status, job.attempts, redelivered, max_attempts) {
                    ClaimDecision::Skip => Ok(Claimed::Skipped(job.status)),
                    ClaimDecision::Run(t) => {
                        let set = ", started_at = $3, attempts = attempts + 1";
                        apply(tx, &job, t, set, &[&at]).await?;
                        let job = load(tx, id, None, false).await?;
                        Ok(Claimed::Run(job.ok_or(StoreError::NotFound(id))?))
                    }
                    ClaimDecision::Exhaust => {
                        let set = ", result = $3, finished_at = $4";
                        apply(tx, &job, Transition::Complete, set, &[&failed, &at]).await?;
                        let job = load(tx, id, None, false).await?;
                        Ok(Claimed::Exhausted(job.ok_or(StoreError::NotFound(id))?))
                    }
                }
            })
            .await
        })
        .await
    }

    async fn complete(
        &self,
        id: JobId,
        attempt: u32,
        result: &RunReport,
        timings: Timings,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let (result, stdout, stderr) = result_parts(result)?;
        let timings = json("timings", &timings)?;
        self.with("complete", async |c| {
            locked(c, id, None, async |tx, job| {
                if Transition::Complete.allowed(job.status) && job.attempts != attempt {
                    return Err(StoreError::Stale {
                        attempt,
                        current: job.attempts,
                    });
                }
                let set = ", result = $3, timings = $4, finished_at = $5, stdout = $6, stderr = $7";
                let args: [&(dyn ToSql + Sync); 5] = [&result, &timings, &at, &stdout, &stderr];
                apply(tx, &job, Transition::Complete, set, &args).await
            })
            .await
        })
        .await
    }

    async fn requeue(&self, id: JobId) -> StoreResult<()> {
        self.with("requeue", async |c| {
            locked(c, id, None, async |tx, job| {
                apply(tx, &job, Transition::Requeue, ", started_at = NULL", &[]).await
            })
            .await
        })
        .await
    }

    async fn cancel(&self, owner: &str, id: JobId, at: DateTime<Utc>) -> StoreResult<JobStatus> {
        self.with("cancel", async |c| {
            locked(c, id, Some(owner), async |tx, job| {
                apply(tx, &job, Transition::Cancel, ", finished_at = $3", &[&at]).await?;
                Ok(job.status)
            })
            .await
        })
        .await
    }

    async fn discard(&self, id: JobId) -> StoreResult<()> {
        self.with("discard", async |c| {
            locked(c, id, None, async |tx, job| {
                if job.status != JobStatus::Queued || job.attempts != 0 {
                    return Err(StoreError::NotAllowed {
                        current: job.status,
                        action: "discard",
                    });
                }
                tx.execute("DELETE FROM jobs WHERE id = $1", &[&id])
                    .await
                    .map_err(|e| pg("discard", e))?;
                Ok(())
            })
            .await
        })
        .await
    }

    async fn in_status(&self, status: JobStatus) -> StoreResult<Vec<(JobId, String, u32)>> {
        self.with("in_status", async |c| {
            let sql = "SELECT id, language, attempts FROM jobs WHERE status = $1 ORDER BY id";
            let rows = c
                .query(sql, &[&status.as_str()])
                .await
                .map_err(|e| pg("listing jobs by status", e))?;
            rows.iter()
                .map(|r| Ok((r.get(0), r.get(1), u32_of("attempts", r.get(2))?)))
                .collect()
        })
        .await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.with("ping", async |c| {
            c.simple_query("SELECT 1")
                .await
                .map_err(|e| pg("ping", e))?;
            Ok(())
        })
        .await
    }

    async fn webhook_pending(&self, id: JobId, url: &str, body: &[u8]) -> StoreResult<()> {
        self.with("webhook_pending", async |c| {
            let sql = "INSERT INTO webhooks (job_id, url, body) VALUES ($1, $2, $3) \
                       ON CONFLICT (job_id) DO UPDATE SET url = $2, body = $3, created_at = now()";
            let args: [&(dyn ToSql + Sync); 3] = [&id, &url, &body];
            c.execute(sql, &args)
                .await
                .map_err(|e| pg("recording a webhook", e))?;
            Ok(())
        })
        .await
    }

    async fn webhook_done(&self, id: JobId) -> StoreResult<()> {
        self.with("webhook_done", async |c| {
            c.execute("DELETE FROM webhooks WHERE job_id = $1", &[&id])
                .await
                .map_err(|e| pg("clearing a webhook", e))?;
            Ok(())
        })
        .await
    }

    async fn webhooks_pending(&self) -> StoreResult<Vec<PendingWebhook>> {
        self.with("webhooks_pending", async |c| {
            let sql = "SELECT job_id, url, body FROM webhooks ORDER BY created_at, job_id";
            let rows = c
                .query(sql, &[])
                .await
                .map_err(|e| pg("listing pending webhooks", e))?;
            Ok(rows
                .iter()
                .map(|r| PendingWebhook {
                    job: r.get(0),
                    url: r.get(1),
                    body: r.get(2),
                })
                .collect())
        })
        .await
    }

    async fn waiting(&self) -> StoreResult<Vec<Waiting>> {
        self.waiting_jobs().await
    }

    async fn create_key(&self, key: &ApiKey, secret_hash: &str) -> StoreResult<()> {
        self.insert_key(key, secret_hash).await
    }

    async fn key_by_hash(&self, secret_hash: &str) -> StoreResult<Option<ApiKey>> {
        self.find_key("secret_hash", secret_hash).await
    }

    async fn key_by_id(&self, id: &str) -> StoreResult<Option<ApiKey>> {
        self.find_key("id", id).await
    }
}

#[path = "postgres_tenants.rs"]
mod tenants;

#[cfg(test)]
#[path = "postgres_tests.rs"]
mod tests;
