//! What the PostgreSQL store keeps per tenant: API keys with their limits,
//! and the admission of a tenant's job against its `max_queued`.

use tokio_postgres::types::ToSql;

use super::{insert_job, pg, u32_of, PostgresStore, StoreResult};
use crate::job::Job;
use crate::keys::KeyLimits;
use crate::store::{Admission, ApiKey, Waiting};

/// The first half of the advisory lock taken per owner while admitting a
/// job; the second half is the hash of the owner.
const ADMISSION_LOCK: i32 = 0x1915_0002;

fn to_i32(n: Option<u32>) -> Option<i32> {
    n.map(|n| i32::try_from(n).unwrap_or(i32::MAX))
}

impl PostgresStore {
    /// Counts and inserts in one transaction that holds an advisory lock
    /// per owner: concurrent submissions of one owner (from any API
    /// process) queue up on the lock, so none counts before another's
    /// insert is committed; other owners never wait for it.
    pub(super) async fn insert_admitted(
        &self,
        job: &Job,
        max_queued: Option<u32>,
    ) -> StoreResult<Admission> {
        self.with("admission", async |c| {
            let tx = c.transaction().await.map_err(|e| pg("begin", e))?;
            if let Some(max) = max_queued {
                tx.execute(
                    "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                    &[&ADMISSION_LOCK, &job.owner],
                )
                .await
                .map_err(|e| pg("admission lock", e))?;
                let sql = "SELECT COUNT(*) FROM jobs WHERE owner = $1 AND status = 'queued'";
                let row = tx
                    .query_one(sql, &[&job.owner])
                    .await
                    .map_err(|e| pg("counting queued jobs", e))?;
                let queued = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
                if queued >= u64::from(max) {
                    return Ok(Admission::Refused { queued });
                }
            }
            insert_job(&tx, job).await?;
            tx.commit().await.map_err(|e| pg("commit", e))?;
            Ok(Admission::Inserted)
        })
        .await
    }

    pub(super) async fn waiting_jobs(&self) -> StoreResult<Vec<Waiting>> {
        self.with("waiting", async |c| {
            let sql = "SELECT id, owner, language FROM jobs WHERE status = 'queued' ORDER BY id";
            let rows = c
                .query(sql, &[])
                .await
                .map_err(|e| pg("listing queued jobs", e))?;
            Ok(rows
                .iter()
                .map(|r| Waiting {
                    id: r.get(0),
                    owner: r.get(1),
                    language: r.get(2),
                })
                .collect())
        })
        .await
    }

    pub(super) async fn insert_key(&self, key: &ApiKey, secret_hash: &str) -> StoreResult<()> {
        let l = key.limits;
        let (rate, queued, running) = (
            to_i32(l.rate_per_sec),
            to_i32(l.max_queued),
            to_i32(l.max_running),
        );
        self.with("create_key", async |c| {
            let sql = "INSERT INTO api_keys (id, name, secret_hash, rate_per_sec, max_queued, \
                       max_running, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)";
            let args: [&(dyn ToSql + Sync); 7] = [
                &key.id,
                &key.name,
                &secret_hash,
                &rate,
                &queued,
                &running,
                &key.created_at,
            ];
            c.execute(sql, &args)
                .await
                .map_err(|e| pg("creating an API key", e))?;
            Ok(())
        })
        .await
    }

    /// The key whose `column` (`id` or `secret_hash`, never user input) is
    /// `value`.
    pub(super) async fn find_key(
        &self,
        column: &'static str,
        value: &str,
    ) -> StoreResult<Option<ApiKey>> {
        self.with("find_key", async |c| {
            let sql = format!(
                "SELECT id, name, rate_per_sec, max_queued, max_running, created_at \
                 FROM api_keys WHERE {column} = $1"
            );
            let row = c
                .query_opt(&sql, &[&value])
                .await
                .map_err(|e| pg("looking up an API key", e))?;
            row.map(|r| {
                let opt = |i: usize, what: &str| {
                    r.get::<_, Option<i32>>(i)
                        .map(|n| u32_of(what, n))
                        .transpose()
                };
                Ok(ApiKey {
                    id: r.get(0),
                    name: r.get(1),
                    limits: KeyLimits {
                        rate_per_sec: opt(2, "rate_per_sec")?,
                        max_queued: opt(3, "max_queued")?,
                        max_running: opt(4, "max_running")?,
                    },
                    created_at: r.get(5),
                })
            })
            .transpose()
        })
        .await
    }
}
