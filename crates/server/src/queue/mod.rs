//! The job queue between the API and the workers. In-process in the
//! embedded default; the trait is the seam a NATS JetStream queue plugs into.
//!
//! The queue carries only ids (and the language, for routing); the store is
//! the truth about a job, so a message for a job that was canceled meanwhile
//! is simply skipped by the worker.

pub mod memory;

use async_trait::async_trait;

use crate::job::JobId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedJob {
    pub id: JobId,
    pub language: String,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue closed")]
    Closed,
    #[error("queue backend: {0}")]
    Backend(String),
}

#[async_trait]
pub trait JobQueue: Send + Sync + std::fmt::Debug + 'static {
    async fn push(&self, job: QueuedJob) -> Result<(), QueueError>;
    /// Waits for the next job; `Closed` once the queue is shut down and empty.
    async fn pop(&self) -> Result<QueuedJob, QueueError>;
    /// Jobs waiting (approximate for distributed queues).
    fn depth(&self) -> usize;
    /// Stops handing out jobs; waiting `pop`s return `Closed`.
    fn close(&self);
}
