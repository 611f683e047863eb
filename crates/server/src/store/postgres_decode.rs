//! How PostgreSQL rows become jobs, and how driver errors are sorted into
//! retryable and fatal ones; the queries themselves are in `postgres.rs`.

use tokio_postgres::Row;

use crate::job::{Job, JobId, JobStatus};
use crate::store::{with_outputs, StoreError, StoreResult};

/// Sorts a driver error into retryable (the server is away) and fatal.
pub(super) fn pg(what: &str, e: tokio_postgres::Error) -> StoreError {
    match e.code() {
        // The server answered: the statement itself was refused.
        Some(code) if !code.code().starts_with("08") && !code.code().starts_with("57P") => {
            StoreError::Backend(format!("{what}: {e}"))
        }
        _ => StoreError::Unavailable(format!("{what}: {e}")),
    }
}

pub(super) fn json<T: serde::Serialize>(what: &str, v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(format!("encoding {what}: {e}")))
}

fn unjson<T: serde::de::DeserializeOwned>(id: JobId, what: &str, s: &str) -> StoreResult<T> {
    serde_json::from_str(s)
        .map_err(|e| StoreError::Backend(format!("job {id} in database: decoding {what}: {e}")))
}

pub(super) fn u32_of(what: &str, n: i32) -> StoreResult<u32> {
    u32::try_from(n).map_err(|_| StoreError::Backend(format!("{what} {n} out of range")))
}

pub(super) fn job_of(r: &Row) -> StoreResult<Job> {
    let id: JobId = r.get(0);
    let status: String = r.get(3);
    let text = |i: usize| r.get::<_, Option<String>>(i);
    Ok(Job {
        id,
        owner: r.get(1),
        language: r.get(2),
        status: JobStatus::parse(&status)
            .ok_or_else(|| StoreError::Backend(format!("job {id}: status {status:?}")))?,
        request: unjson(id, "request", r.get(4))?,
        webhook_url: r.get(5),
        result: text(6)
            .map(|s| unjson(id, "result", &s))
            .transpose()?
            .map(|res| with_outputs(res, r.get(13), r.get(14))),
        timings: text(7).map(|s| unjson(id, "timings", &s)).transpose()?,
        created_at: r.get(8),
        started_at: r.get(9),
        finished_at: r.get(10),
        attempts: u32_of("attempts", r.get(11))?,
        compat: r.get(12),
    })
}
