//! The job store: where jobs and API keys live. SQLite in the embedded
//! default, PostgreSQL in the distributed mode; one conformance suite
//! (`conformance.rs`) runs against both.
//!
//! Every state change is a compare-and-set on the current status, so two
//! workers (or a worker and a cancel) can never both win.

#[cfg(test)]
mod conformance;
pub mod postgres;
pub mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ignis_vmm::RunReport;

use crate::job::{Job, JobId, JobStatus, Timings, Transition};
use crate::keys::KeyLimits;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job {0} not found")]
    NotFound(JobId),
    /// The job is not in a status that allows this change.
    #[error("job is {current:?}; cannot {action}")]
    NotAllowed {
        current: JobStatus,
        action: &'static str,
    },
    /// A result of an attempt that is no longer the job's current one (its
    /// worker was presumed lost and the job was delivered again).
    #[error("attempt {attempt} is stale; the job is on attempt {current}")]
    Stale { attempt: u32, current: u32 },
    /// The database cannot be reached now; the same call may succeed later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug, a corrupt row, a schema from a newer build.
    #[error("store backend: {0}")]
    Backend(String),
}

impl StoreError {
    /// Worth trying again later (the API answers 503, a worker retries).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    pub(crate) fn not_allowed(current: JobStatus, t: Transition) -> StoreError {
        StoreError::NotAllowed {
            current,
            action: t.name(),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A result as the stores keep it: its JSON without the outputs, and the
/// outputs as bytes (a BLOB or BYTEA column each), so that a program's
/// bytes take as much room as they are long, not six times as much as
/// JSON escapes of control bytes.
pub(crate) fn result_parts(r: &RunReport) -> StoreResult<(String, Vec<u8>, Vec<u8>)> {
    let mut meta = r.clone();
    let stdout = std::mem::take(&mut meta.stdout);
    let stderr = std::mem::take(&mut meta.stderr);
    let json = serde_json::to_string(&meta)
        .map_err(|e| StoreError::Backend(format!("encoding result: {e}")))?;
    Ok((json, stdout, stderr))
}

/// [`result_parts`] of a job's result, all `None` while it has none: the
/// columns a new row is written with.
pub(crate) type OptionalParts = (Option<String>, Option<Vec<u8>>, Option<Vec<u8>>);

pub(crate) fn job_result_parts(job: &Job) -> StoreResult<OptionalParts> {
    Ok(match job.result.as_ref().map(result_parts).transpose()? {
        Some((r, out, err)) => (Some(r), Some(out), Some(err)),
        None => (None, None, None),
    })
}

/// The result read back with the outputs of its columns. A column that is
/// NULL leaves what the JSON held: a listing that did not read them, or a
/// row written before the outputs had columns of their own.
pub(crate) fn with_outputs(
    mut r: RunReport,
    stdout: Option<Vec<u8>>,
    stderr: Option<Vec<u8>>,
) -> RunReport {
    if let Some(out) = stdout {
        r.stdout = out;
    }
    if let Some(err) = stderr {
        r.stderr = err;
    }
    r
}

/// Filter and page of a listing; newest first.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub status: Option<JobStatus>,
    pub language: Option<String>,
    pub limit: u32,
    /// Only jobs older than this id (ids are time-ordered UUIDv7).
    pub before: Option<JobId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    /// As stored: `None` is the server's default (see [`crate::keys`]).
    pub limits: KeyLimits,
    pub created_at: DateTime<Utc>,
}

/// A webhook delivery not yet over ([`JobStore::webhooks_pending`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingWebhook {
    pub job: JobId,
    pub url: String,
    pub body: Vec<u8>,
}

/// What [`JobStore::insert_within`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Stored as `queued`.
    Inserted,
    /// Not stored: the owner already has `queued` jobs waiting, at its limit.
    Refused { queued: u64 },
}

/// A job waiting in the store, as recovery queues it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub id: JobId,
    pub owner: String,
    pub language: String,
}

/// What claiming a delivered job did (see [`crate::job::ClaimDecision`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Claimed {
    /// Now `running` on a new attempt (`job.attempts`): run it.
    Run(Job),
    /// Out of attempts: now `completed` as `internal_error`; publish its end.
    Exhausted(Job),
    /// Nothing to do; the job is in this status.
    Skipped(JobStatus),
}

#[async_trait]
pub trait JobStore: Send + Sync + std::fmt::Debug + 'static {
    async fn insert(&self, job: &Job) -> StoreResult<()>;
    /// Inserts a new `queued` job unless its owner already has `max_queued`
    /// jobs queued (`None`: no limit). Counting and inserting are one
    /// atomic step, so parallel submissions cannot slip past the limit.
    async fn insert_within(&self, job: &Job, max_queued: Option<u32>) -> StoreResult<Admission>;
    /// A job as its owner sees it; `None` for another owner's job.
    async fn get(&self, owner: &str, id: JobId) -> StoreResult<Option<Job>>;
    /// A job whoever owns it (workers).
    async fn get_any(&self, id: JobId) -> StoreResult<Option<Job>>;
    /// A page of the owner's jobs, newest first, *without their outputs*:
    /// `result.stdout` and `result.stderr` are left unread (empty), so a
    /// listing costs the same whatever the jobs printed. [`JobStore::get`]
    /// has them.
    async fn list(&self, owner: &str, q: &ListQuery) -> StoreResult<Vec<Job>>;
    async fn count_queued(&self, owner: &str) -> StoreResult<u64>;

    /// Takes a job the queue delivered: starts it (or, when `redelivered`
    /// and its worker was lost, retakes it) on a new attempt, fails it when
    /// it is out of attempts, or skips it. Decided by
    /// [`crate::job::ClaimDecision::decide`] under the row's lock.
    async fn claim(
        &self,
        id: JobId,
        redelivered: bool,
        max_attempts: u32,
        at: DateTime<Utc>,
    ) -> StoreResult<Claimed>;
    /// `running → completed` with the result of `attempt`. A result for any
    /// other attempt is [`StoreError::Stale`]; one for a job that already
    /// ended is `NotAllowed` (a duplicate, or a cancel that stands).
    async fn complete(
        &self,
        id: JobId,
        attempt: u32,
        result: &RunReport,
        timings: Timings,
        at: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// `running → queued`: the attempt was given back (shutdown, restart).
    async fn requeue(&self, id: JobId) -> StoreResult<()>;
    /// `queued|running → canceled`. Returns the status it had.
    async fn cancel(&self, owner: &str, id: JobId, at: DateTime<Utc>) -> StoreResult<JobStatus>;
    /// Deletes a job that no worker ever saw (`queued`, no attempt): a
    /// submission the queue refused, so that it was never half-created.
    async fn discard(&self, id: JobId) -> StoreResult<()>;
    /// Jobs in `status`, oldest first, with their attempts and language.
    async fn in_status(&self, status: JobStatus) -> StoreResult<Vec<(JobId, String, u32)>>;
    /// Every `queued` job with its owner, oldest first (recovery).
    async fn waiting(&self) -> StoreResult<Vec<Waiting>>;

    /// Whether the store answers now (for `/healthz`).
    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    /// Records the webhook delivery of job `id`'s end (replacing one it
    /// had), so that a restart delivers it if this process does not.
    async fn webhook_pending(&self, id: JobId, url: &str, body: &[u8]) -> StoreResult<()>;
    /// The delivery of job `id` is over (delivered, or given up).
    async fn webhook_done(&self, id: JobId) -> StoreResult<()>;
    /// Deliveries recorded and not over, oldest first: `(job, url, body)`.
    async fn webhooks_pending(&self) -> StoreResult<Vec<PendingWebhook>>;

    async fn create_key(&self, key: &ApiKey, secret_hash: &str) -> StoreResult<()>;
    async fn key_by_hash(&self, secret_hash: &str) -> StoreResult<Option<ApiKey>>;
    /// The key whose id is `id` (the owner of its jobs).
    async fn key_by_id(&self, id: &str) -> StoreResult<Option<ApiKey>>;
}
