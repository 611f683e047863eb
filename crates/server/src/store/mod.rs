//! The job store: where jobs and API keys live. SQLite in the embedded
//! default; the trait is the seam a PostgreSQL store plugs into.
//!
//! Every state change is a compare-and-set on the current status, so two
//! workers (or a worker and a cancel) can never both win.

pub mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ignis_vmm::RunReport;

use crate::job::{Job, JobId, JobStatus, Timings};

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
    #[error("store backend: {0}")]
    Backend(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

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
    /// Requests per second allowed (burst of the same size); None = unlimited.
    pub rate_per_sec: Option<u32>,
    /// Queued jobs allowed at once; None = unlimited.
    pub max_queued: Option<u32>,
    pub created_at: DateTime<Utc>,
}

/// What happened to a job at start-up recovery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Jobs to put back on the queue, oldest first.
    pub requeued: Vec<(JobId, String)>,
    /// Jobs that were running too often already and were failed honestly.
    pub failed: Vec<JobId>,
}

#[async_trait]
pub trait JobStore: Send + Sync + std::fmt::Debug + 'static {
    async fn insert(&self, job: &Job) -> StoreResult<()>;
    /// A job as its owner sees it; `None` for another owner's job.
    async fn get(&self, owner: &str, id: JobId) -> StoreResult<Option<Job>>;
    /// A job whoever owns it (workers).
    async fn get_any(&self, id: JobId) -> StoreResult<Option<Job>>;
    async fn list(&self, owner: &str, q: &ListQuery) -> StoreResult<Vec<Job>>;
    async fn count_queued(&self, owner: &str) -> StoreResult<u64>;

    /// `queued → running`, counting an attempt.
    async fn start(&self, id: JobId, at: DateTime<Utc>) -> StoreResult<Job>;
    /// `running → completed` with the result.
    async fn complete(
        &self,
        id: JobId,
        result: &RunReport,
        timings: Timings,
        at: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// `running → queued`: the attempt was lost (dead VM, shutdown).
    async fn requeue(&self, id: JobId) -> StoreResult<()>;
    /// `queued|running → canceled`. Returns the status it had.
    async fn cancel(&self, owner: &str, id: JobId, at: DateTime<Utc>) -> StoreResult<JobStatus>;
    /// After a crash: `running` jobs go back to the queue while they have
    /// attempts left, else complete as `internal_error`; all queued jobs are
    /// returned for re-enqueueing.
    async fn recover(&self, max_attempts: u32, at: DateTime<Utc>) -> StoreResult<Recovered>;

    async fn create_key(&self, key: &ApiKey, secret_hash: &str) -> StoreResult<()>;
    async fn key_by_hash(&self, secret_hash: &str) -> StoreResult<Option<ApiKey>>;
}
