//! The embedded job store: one SQLite file in the data directory.
//!
//! One connection behind a mutex is enough for a single-node server and keeps
//! SQLite's locking simple; every call runs on the blocking pool so a slow
//! disk never stalls the async runtime. State changes are compare-and-set
//! updates inside `IMMEDIATE` transactions, so they stay correct even when a
//! second process (the CLI, a second server by mistake) opens the same file.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ignis_vmm::RunReport;
use rusqlite::types::Value;
use rusqlite::{
    params, params_from_iter, Connection, OptionalExtension, Params, Row, ToSql, Transaction,
    TransactionBehavior,
};

use super::{
    job_result_parts, result_parts, Admission, ApiKey, Claimed, JobStore, ListQuery,
    PendingWebhook, StoreError, StoreResult, Waiting,
};
use crate::job::{ClaimDecision, Job, JobId, JobStatus, Timings, Transition, EXHAUSTED_MESSAGE};

/// Schema steps, applied in order; `PRAGMA user_version` records how many ran.
/// A later migration is appended here, never edited in place.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE jobs (
        id          TEXT PRIMARY KEY,
        owner       TEXT NOT NULL,
        language    TEXT NOT NULL,
        status      TEXT NOT NULL,
        request     TEXT NOT NULL,
        webhook_url TEXT,
        result      TEXT,
        timings     TEXT,
        created_at  INTEGER NOT NULL,
        started_at  INTEGER,
        finished_at INTEGER,
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
        created_at   INTEGER NOT NULL
    );
",
    "
    ALTER TABLE jobs ADD COLUMN compat TEXT;
",
    // Outputs as bytes beside the result's JSON, rather than JSON-escaped
    // inside it (a control byte took six). Earlier results move over.
    "
    ALTER TABLE jobs ADD COLUMN stdout BLOB;
    ALTER TABLE jobs ADD COLUMN stderr BLOB;
    UPDATE jobs SET
        stdout = CAST(json_extract(result, '$.stdout') AS BLOB),
        stderr = CAST(json_extract(result, '$.stderr') AS BLOB),
        result = json_set(result, '$.stdout', '', '$.stderr', '')
    WHERE result IS NOT NULL;
",
    // Webhook deliveries not yet over, so that a restart sends them.
    "
    CREATE TABLE webhooks (
        job_id     TEXT PRIMARY KEY,
        url        TEXT NOT NULL,
        body       BLOB NOT NULL,
        created_at INTEGER NOT NULL
    );
",
    // Key limits: a cap on running jobs; admission counts queued jobs per owner.
    "
    ALTER TABLE api_keys ADD COLUMN max_running INTEGER;
    CREATE INDEX jobs_owner_status ON jobs (owner, status);
",
];

/// How long a statement waits for another connection's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const JOB_COLUMNS: &str = "id, owner, language, status, request, webhook_url, result, timings, \
                           created_at, started_at, finished_at, attempts, compat, stdout, stderr";
/// [`JOB_COLUMNS`] without the outputs, for listings: a page of jobs never
/// reads what they printed.
const SUMMARY_COLUMNS: &str = "id, owner, language, status, request, webhook_url, result, \
                               timings, created_at, started_at, finished_at, attempts, compat, \
                               NULL, NULL";
const JOB_PLACEHOLDERS: &str = "?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15";

/// The SQLite implementation of [`JobStore`]. Cloning shares the connection.
///
/// Timestamps are stored as unix milliseconds, so they come back truncated
/// to the millisecond.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema
    /// up to date. Refuses a file written by a newer Ignis, whose schema this
    /// build cannot know.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        // Every tenant's code, input and output: the owner's alone (0600 in 0700).
        ignis_vmm::paths::private_database(path)
            .ctx(format_args!("creating {}", path.display()))?;
        let mut conn = Connection::open(path).ctx(format_args!("opening {}", path.display()))?;
        // First, so that even the setup below waits for another process's
        // lock instead of failing at once with SQLITE_BUSY.
        conn.busy_timeout(BUSY_TIMEOUT)
            .ctx("setting busy_timeout")?;
        // WAL lets readers proceed while a writer commits; the mode is stored
        // in the file, so this is a no-op on later opens.
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
            .ctx("setting journal_mode=WAL")?;
        conn.pragma_update(None, "foreign_keys", true)
            .ctx("enabling foreign_keys")?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn call<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave SQLite half-written:
            // an open transaction is rolled back when it is dropped during the
            // unwind. The connection is therefore still sound; keep using it.
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .ctx("store task")?
    }

    /// Runs `f` inside an `IMMEDIATE` transaction (the write lock is taken at
    /// the start, so a read-then-update cannot race another writer) and
    /// commits if it succeeds.
    async fn write<T, F>(&self, what: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate);
            let tx = tx.ctx(format_args!("{what}: begin"))?;
            let out = f(&tx)?;
            tx.commit().ctx(format_args!("{what}: commit"))?;
            Ok(out)
        })
        .await
    }
}

/// Applies the migrations the file has not seen yet, each in its own
/// transaction together with the bump of `user_version`. The version is read
/// under the write lock, so two processes opening a fresh file at once cannot
/// both run the same step.
fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let known = MIGRATIONS.len();
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate);
        let tx = tx.ctx("migration: begin")?;
        let current: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .ctx("user_version")?;
        let current = usize::try_from(current).ctx("user_version")?;
        if current > known {
            let msg =
                format!("database schema version {current} is newer than this build ({known})");
            return Err(StoreError::Backend(msg));
        }
        let Some(sql) = MIGRATIONS.get(current) else {
            return Ok(());
        };
        let version = current as i64 + 1;
        tx.execute_batch(sql)
            .ctx(format_args!("migration to schema {version}"))?;
        tx.pragma_update(None, "user_version", version)
            .ctx("setting user_version")?;
        tx.commit().ctx("migration: commit")?;
    }
}

/// Loads one job by id, optionally only if `owner` owns it.
fn load(conn: &Connection, id: JobId, owner: Option<&str>) -> StoreResult<Option<Job>> {
    let sql =
        format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1 AND (?2 IS NULL OR owner = ?2)");
    let raw = conn.query_row(&sql, params![id.to_string(), owner], RawJob::from_row);
    raw.optional()
        .ctx(format_args!("loading job {id}"))?
        .map(RawJob::into_job)
        .transpose()
}

/// Runs a query and collects its rows.
fn rows<T>(
    conn: &Connection,
    sql: &str,
    args: impl Params,
    f: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    conn.prepare(sql)?.query_map(args, f)?.collect()
}

/// The status and attempts of job `id` (of `owner`, if given; another
/// owner's job is `NotFound`), read under the transaction's write lock.
fn current(tx: &Transaction<'_>, id: JobId, owner: Option<&str>) -> StoreResult<(JobStatus, u32)> {
    let sql = "SELECT status, attempts FROM jobs WHERE id = ?1 AND (?2 IS NULL OR owner = ?2)";
    let row = tx.query_row(sql, params![id.to_string(), owner], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    });
    let (status, attempts) = row
        .optional()
        .ctx(format_args!("reading job {id}"))?
        .ok_or(StoreError::NotFound(id))?;
    let attempts = u32::try_from(attempts).ctx("attempts")?;
    Ok((parse_status(&status)?, attempts))
}

/// The compare-and-set behind every transition: applies `t` to job `id`
/// (of `owner`, if given; another owner's job is `NotFound`) with the extra
/// `set` clauses whose parameters start at `?3`. Returns the status it had.
fn cas(
    tx: &Transaction<'_>,
    id: JobId,
    owner: Option<&str>,
    t: Transition,
    set: &str,
    extra: &[&dyn ToSql],
) -> StoreResult<JobStatus> {
    let (action, to) = (t.name(), t.to());
    let (current, _) = current(tx, id, owner)?;
    if !t.allowed(current) {
        return Err(StoreError::not_allowed(current, t));
    }
    // The status in the WHERE clause is the compare-and-set proper; under
    // the transaction's write lock it cannot miss, so a miss is a bug.
    let sql = format!(
        "UPDATE jobs SET status = ?1{set} WHERE id = ?2 AND status = ?{}",
        extra.len() + 3
    );
    let (id_text, to_text, current_text) = (id.to_string(), to.as_str(), current.as_str());
    let mut args: Vec<&dyn ToSql> = vec![&to_text, &id_text];
    args.extend_from_slice(extra);
    args.push(&current_text);
    match tx
        .execute(&sql, params_from_iter(args))
        .ctx(format_args!("{action} job {id}"))?
    {
        1 => Ok(current),
        n => Err(StoreError::Backend(format!(
            "{action} job {id}: updated {n} rows"
        ))),
    }
}

/// Inserts `job` as a new row.
fn insert_job(conn: &Connection, job: &Job) -> StoreResult<()> {
    let request = to_json("request", &job.request)?;
    let (result, stdout, stderr) = job_result_parts(job)?;
    let timings = job
        .timings
        .as_ref()
        .map(|t| to_json("timings", t))
        .transpose()?;
    let sql = format!("INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({JOB_PLACEHOLDERS})");
    let args = params![
        job.id.to_string(),
        job.owner,
        job.language,
        job.status.as_str(),
        request,
        job.webhook_url,
        result,
        timings,
        to_ms(job.created_at),
        job.started_at.map(to_ms),
        job.finished_at.map(to_ms),
        job.attempts,
        job.compat,
        stdout,
        stderr,
    ];
    conn.execute(&sql, args)
        .ctx(format_args!("inserting job {}", job.id))?;
    Ok(())
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn insert(&self, job: &Job) -> StoreResult<()> {
        let job = job.clone();
        self.call(move |conn| insert_job(conn, &job)).await
    }

    async fn insert_within(&self, job: &Job, max_queued: Option<u32>) -> StoreResult<Admission> {
        self.insert_admitted(job, max_queued).await
    }

    async fn get(&self, owner: &str, id: JobId) -> StoreResult<Option<Job>> {
        let owner = owner.to_owned();
        self.call(move |conn| load(conn, id, Some(&owner))).await
    }

    async fn get_any(&self, id: JobId) -> StoreResult<Option<Job>> {
        self.call(move |conn| load(conn, id, None)).await
    }

    async fn list(&self, owner: &str, q: &ListQuery) -> StoreResult<Vec<Job>> {
        // Only the filters in use go into the SQL, so SQLite can walk the
        // (owner, id) index backwards from the cursor and stop at the limit.
        let mut sql = format!("SELECT {SUMMARY_COLUMNS} FROM jobs WHERE owner = ?1");
        let mut args = vec![Value::from(owner.to_owned())];
        let mut filter = |column: &str, op: &str, value: Value| {
            args.push(value);
            sql += &format!(" AND {column} {op} ?{}", args.len());
        };
        if let Some(status) = q.status {
            filter("status", "=", status.as_str().to_owned().into());
        }
        if let Some(language) = &q.language {
            filter("language", "=", language.clone().into());
        }
        if let Some(before) = q.before {
            filter("id", "<", before.to_string().into());
        }
        args.push(i64::from(q.limit).into());
        sql += &format!(" ORDER BY id DESC LIMIT ?{}", args.len());
        self.call(move |conn| {
            let raws = rows(conn, &sql, params_from_iter(args), RawJob::from_row);
            raws.ctx("listing jobs")?
                .into_iter()
                .map(RawJob::into_job)
                .collect()
        })
        .await
    }

    async fn count_queued(&self, owner: &str) -> StoreResult<u64> {
        let owner = owner.to_owned();
        self.call(move |conn| {
            let sql = "SELECT COUNT(*) FROM jobs WHERE owner = ?1 AND status = 'queued'";
            let n = conn.query_row(sql, params![owner], |r| r.get::<_, i64>(0));
            u64::try_from(n.ctx("counting queued jobs")?).ctx("counting queued jobs")
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
        let failed = RunReport::internal_error(EXHAUSTED_MESSAGE, None);
        let failed = to_json("result", &failed)?;
        self.write("claim", move |tx| {
            let (status, attempts) = current(tx, id, None)?;
            match ClaimDecision::decide(status, attempts, redelivered, max_attempts) {
                ClaimDecision::Skip => return Ok(Claimed::Skipped(status)),
                ClaimDecision::Run(t) => {
                    let set = ", started_at = ?3, attempts = attempts + 1";
                    cas(tx, id, None, t, set, params![to_ms(at)])?;
                }
                ClaimDecision::Exhaust => {
                    let set = ", result = ?3, finished_at = ?4";
                    let t = Transition::Complete;
                    cas(tx, id, None, t, set, params![failed, to_ms(at)])?;
                    let job = load(tx, id, None)?.ok_or(StoreError::NotFound(id))?;
                    return Ok(Claimed::Exhausted(job));
                }
            }
            let job = load(tx, id, None)?.ok_or(StoreError::NotFound(id))?;
            Ok(Claimed::Run(job))
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
        let timings = to_json("timings", &timings)?;
        self.write("complete", move |tx| {
            let (status, current_attempt) = current(tx, id, None)?;
            if Transition::Complete.allowed(status) && current_attempt != attempt {
                return Err(StoreError::Stale {
                    attempt,
                    current: current_attempt,
                });
            }
            let set = ", result = ?3, timings = ?4, finished_at = ?5, stdout = ?6, stderr = ?7";
            let args = params![result, timings, to_ms(at), stdout, stderr];
            cas(tx, id, None, Transition::Complete, set, args)?;
            Ok(())
        })
        .await
    }

    async fn requeue(&self, id: JobId) -> StoreResult<()> {
        self.write("requeue", move |tx| {
            cas(
                tx,
                id,
                None,
                Transition::Requeue,
                ", started_at = NULL",
                &[],
            )?;
            Ok(())
        })
        .await
    }

    async fn cancel(&self, owner: &str, id: JobId, at: DateTime<Utc>) -> StoreResult<JobStatus> {
        let owner = owner.to_owned();
        self.write("cancel", move |tx| {
            let (set, at) = (", finished_at = ?3", to_ms(at));
            cas(tx, id, Some(&owner), Transition::Cancel, set, params![at])
        })
        .await
    }

    async fn discard(&self, id: JobId) -> StoreResult<()> {
        self.write("discard", move |tx| {
            let sql = "DELETE FROM jobs WHERE id = ?1 AND status = 'queued' AND attempts = 0";
            match tx.execute(sql, params![id.to_string()]).ctx("discard")? {
                1 => Ok(()),
                _ => {
                    let (current, _) = current(tx, id, None)?;
                    Err(StoreError::NotAllowed {
                        current,
                        action: "discard",
                    })
                }
            }
        })
        .await
    }

    async fn in_status(&self, status: JobStatus) -> StoreResult<Vec<(JobId, String, u32)>> {
        self.call(move |conn| {
            let sql = "SELECT id, language, attempts FROM jobs WHERE status = ?1 ORDER BY id";
            let raw = rows(conn, sql, params![status.as_str()], |r| {
                Ok((r.get::<_, String>(0)?, r.get(1)?, r.get::<_, i64>(2)?))
            });
            raw.ctx("listing jobs by status")?
                .into_iter()
                .map(|(id, language, attempts)| {
                    let attempts = u32::try_from(attempts).ctx("attempts")?;
                    Ok((parse_id(&id)?, language, attempts))
                })
                .collect()
        })
        .await
    }

    async fn webhook_pending(&self, id: JobId, url: &str, body: &[u8]) -> StoreResult<()> {
        let (url, body, now) = (url.to_owned(), body.to_vec(), to_ms(Utc::now()));
        self.call(move |conn| {
            let sql = "INSERT OR REPLACE INTO webhooks (job_id, url, body, created_at) \
                       VALUES (?1, ?2, ?3, ?4)";
            conn.execute(sql, params![id.to_string(), url, body, now])
                .ctx(format_args!("recording the webhook of job {id}"))?;
            Ok(())
        })
        .await
    }

    async fn webhook_done(&self, id: JobId) -> StoreResult<()> {
        self.call(move |conn| {
            let sql = "DELETE FROM webhooks WHERE job_id = ?1";
            conn.execute(sql, params![id.to_string()])
                .ctx(format_args!("clearing the webhook of job {id}"))?;
            Ok(())
        })
        .await
    }

    async fn webhooks_pending(&self) -> StoreResult<Vec<PendingWebhook>> {
        self.call(move |conn| {
            let sql = "SELECT job_id, url, body FROM webhooks ORDER BY created_at, job_id";
            let raw = rows(conn, sql, [], |r| {
                Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?))
            });
            raw.ctx("listing pending webhooks")?
                .into_iter()
                .map(|(job, url, body)| {
                    Ok(PendingWebhook {
                        job: parse_id(&job)?,
                        url,
                        body,
                    })
                })
                .collect()
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

#[path = "sqlite_decode.rs"]
mod decode;
use decode::{from_ms, opt_u32, parse_id, parse_status, to_json, to_ms, Context, RawJob};
#[path = "sqlite_tenants.rs"]
mod tenants;

#[cfg(test)]
#[path = "sqlite_tests.rs"]
mod tests;
