//! How SQLite rows and values become jobs, and how errors are sorted into
//! retryable and fatal ones; the queries themselves are in `sqlite.rs`.

use std::fmt::Display;

use chrono::{DateTime, Utc};
use rusqlite::Row;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::job::{Job, JobId, JobStatus};
use crate::store::{with_outputs, StoreError, StoreResult};

/// Turns rusqlite, serde and other errors into a [`StoreError`], saying
/// what was being done.
pub(super) trait Context<T> {
    fn ctx(self, what: impl Display) -> StoreResult<T>;
}

impl<T, E: Classify> Context<T> for Result<T, E> {
    fn ctx(self, what: impl Display) -> StoreResult<T> {
        self.map_err(|e| match e.retryable() {
            true => StoreError::Unavailable(format!("{what}: {e}")),
            false => StoreError::Backend(format!("{what}: {e}")),
        })
    }
}

/// Whether an error may go away by itself, so the same call is worth
/// trying again (a worker storing a result retries it with backoff).
pub(super) trait Classify: Display {
    fn retryable(&self) -> bool {
        false
    }
}

impl Classify for rusqlite::Error {
    /// A lock held too long by another connection, a full disk, an I/O
    /// error: the database is fine, the moment is not. Anything else (a
    /// constraint, a corrupt file, SQL this build got wrong) stays wrong.
    fn retryable(&self) -> bool {
        use rusqlite::ErrorCode as C;
        matches!(
            self.sqlite_error_code(),
            Some(
                C::DatabaseBusy
                    | C::DatabaseLocked
                    | C::DiskFull
                    | C::SystemIoFailure
                    | C::CannotOpen
                    | C::OutOfMemory
            )
        )
    }
}

impl Classify for serde_json::Error {}
impl Classify for uuid::Error {}
impl Classify for std::num::TryFromIntError {}
impl Classify for std::io::Error {}
impl Classify for &str {}

impl Classify for tokio::task::JoinError {}

pub(super) fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(super) fn from_ms(ms: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
        .ok_or("out of range")
        .ctx(format_args!("timestamp {ms}"))
}

pub(super) fn to_json<T: serde::Serialize>(what: &str, v: &T) -> StoreResult<String> {
    serde_json::to_string(v).ctx(format_args!("encoding {what}"))
}

pub(super) fn from_json<T: DeserializeOwned>(what: &str, s: &str) -> StoreResult<T> {
    serde_json::from_str(s).ctx(format_args!("decoding {what}"))
}

pub(super) fn parse_status(s: &str) -> StoreResult<JobStatus> {
    JobStatus::parse(s)
        .ok_or("unknown")
        .ctx(format_args!("job status {s:?}"))
}

pub(super) fn parse_id(s: &str) -> StoreResult<JobId> {
    Uuid::parse_str(s).ctx(format_args!("job id {s:?}"))
}

pub(super) fn opt_u32(what: &str, v: Option<i64>) -> StoreResult<Option<u32>> {
    v.map(|n| u32::try_from(n).ctx(format_args!("{what} {n}")))
        .transpose()
}

/// A `jobs` row as SQLite hands it over; decoding the JSON and timestamps
/// happens outside rusqlite's row closure so those errors keep their context.
pub(super) struct RawJob {
    id: String,
    owner: String,
    language: String,
    status: String,
    request: String,
    webhook_url: Option<String>,
    result: Option<String>,
    timings: Option<String>,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    attempts: i64,
    compat: Option<String>,
    /// The outputs, when the query asked for them (not in a listing).
    stdout: Option<Vec<u8>>,
    stderr: Option<Vec<u8>>,
}

impl RawJob {
    pub(super) fn from_row(r: &Row<'_>) -> rusqlite::Result<RawJob> {
        Ok(RawJob {
            id: r.get(0)?,
            owner: r.get(1)?,
            language: r.get(2)?,
            status: r.get(3)?,
            request: r.get(4)?,
            webhook_url: r.get(5)?,
            result: r.get(6)?,
            timings: r.get(7)?,
            created_at: r.get(8)?,
            started_at: r.get(9)?,
            finished_at: r.get(10)?,
            attempts: r.get(11)?,
            compat: r.get(12)?,
            stdout: r.get(13)?,
            stderr: r.get(14)?,
        })
    }

    pub(super) fn into_job(self) -> StoreResult<Job> {
        let job = |e: StoreError| StoreError::Backend(format!("job {} in database: {e}", self.id));
        Ok(Job {
            id: parse_id(&self.id)?,
            status: parse_status(&self.status).map_err(job)?,
            request: from_json("request", &self.request).map_err(job)?,
            result: self
                .result
                .as_deref()
                .map(|s| from_json("result", s))
                .transpose()
                .map_err(job)?
                .map(|r| with_outputs(r, self.stdout, self.stderr)),
            timings: self
                .timings
                .as_deref()
                .map(|s| from_json("timings", s))
                .transpose()
                .map_err(job)?,
            created_at: from_ms(self.created_at).map_err(job)?,
            started_at: self.started_at.map(from_ms).transpose().map_err(job)?,
            finished_at: self.finished_at.map(from_ms).transpose().map_err(job)?,
            attempts: u32::try_from(self.attempts).ctx("attempts").map_err(job)?,
            owner: self.owner,
            language: self.language,
            webhook_url: self.webhook_url,
            compat: self.compat,
        })
    }
}
