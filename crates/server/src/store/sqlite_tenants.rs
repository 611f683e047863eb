//! What the SQLite store keeps per tenant: API keys with their limits, and
//! the admission of a tenant's job against its `max_queued`.

use rusqlite::{params, OptionalExtension};

use super::{
    from_ms, insert_job, opt_u32, parse_id, rows, to_ms, Context, SqliteStore, StoreResult,
};
use crate::job::Job;
use crate::keys::KeyLimits;
use crate::store::{Admission, ApiKey, Waiting};

impl SqliteStore {
    /// Counts and inserts under one `IMMEDIATE` transaction: the write lock
    /// is held from the count to the insert, so no other submission (from
    /// this process or another one on the same file) can come in between.
    pub(super) async fn insert_admitted(
        &self,
        job: &Job,
        max_queued: Option<u32>,
    ) -> StoreResult<Admission> {
        let job = job.clone();
        self.write("admission", move |tx| {
            if let Some(max) = max_queued {
                let sql = "SELECT COUNT(*) FROM jobs WHERE owner = ?1 AND status = 'queued'";
                let n = tx.query_row(sql, params![job.owner], |r| r.get::<_, i64>(0));
                let queued = u64::try_from(n.ctx("counting queued jobs")?).unwrap_or(0);
                if queued >= u64::from(max) {
                    return Ok(Admission::Refused { queued });
                }
            }
            insert_job(tx, &job)?;
            Ok(Admission::Inserted)
        })
        .await
    }

    pub(super) async fn waiting_jobs(&self) -> StoreResult<Vec<Waiting>> {
        self.call(move |conn| {
            let sql = "SELECT id, owner, language FROM jobs WHERE status = 'queued' ORDER BY id";
            let raw = rows(conn, sql, [], |r| {
                Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?))
            });
            raw.ctx("listing queued jobs")?
                .into_iter()
                .map(|(id, owner, language)| {
                    Ok(Waiting {
                        id: parse_id(&id)?,
                        owner,
                        language,
                    })
                })
                .collect()
        })
        .await
    }

    pub(super) async fn insert_key(&self, key: &ApiKey, secret_hash: &str) -> StoreResult<()> {
        let key = key.clone();
        let hash = secret_hash.to_owned();
        self.call(move |conn| {
            let sql = "INSERT INTO api_keys (id, name, secret_hash, rate_per_sec, max_queued, \
                       max_running, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
            let l = key.limits;
            let created = to_ms(key.created_at);
            let args = params![
                key.id,
                key.name,
                hash,
                l.rate_per_sec,
                l.max_queued,
                l.max_running,
                created
            ];
            conn.execute(sql, args)
                .ctx(format_args!("creating API key {}", key.id))?;
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
        let value = value.to_owned();
        self.call(move |conn| {
            type Raw = (String, String, Option<i64>, Option<i64>, Option<i64>, i64);
            let sql = format!(
                "SELECT id, name, rate_per_sec, max_queued, max_running, created_at \
                 FROM api_keys WHERE {column} = ?1"
            );
            let raw = conn.query_row(&sql, params![value], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            });
            let raw: Option<Raw> = raw.optional().ctx("looking up API key")?;
            raw.map(|(id, name, rate, queued, running, created_at)| {
                Ok(ApiKey {
                    limits: KeyLimits {
                        rate_per_sec: opt_u32("rate_per_sec", rate)?,
                        max_queued: opt_u32("max_queued", queued)?,
                        max_running: opt_u32("max_running", running)?,
                    },
                    created_at: from_ms(created_at)?,
                    id,
                    name,
                })
            })
            .transpose()
        })
        .await
    }
}
