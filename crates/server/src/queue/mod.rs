//! The job queue between the API and the workers: in-process in the
//! embedded default (`memory`), a JetStream work-queue stream across
//! processes (`nats`).
//!
//! The queue carries only ids (and the language, for routing); the store is
//! the truth about a job, so a delivery of a job that was canceled or
//! finished meanwhile is simply acknowledged and skipped by the worker.
//! Delivery is at least once: a worker acknowledges a job only after its
//! result is stored, and a delivery it never acknowledges comes back.

pub mod memory;
pub mod nats;

use async_trait::async_trait;

use crate::job::JobId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedJob {
    pub id: JobId,
    pub language: String,
    /// Whose job it is: the queue takes turns between owners.
    pub owner: String,
    /// Jobs of this owner that may run at once (`None`: no cap); a queue
    /// that enforces it holds the owner's next job back meanwhile.
    pub max_running: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Shut down; nothing more is handed out or taken.
    #[error("queue closed")]
    Closed,
    /// At its limit: the job was not taken. Retry later.
    #[error("the queue is full ({0})")]
    Full(String),
    /// The queue's server cannot be reached now; retry later.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// Anything else, not worth retrying as it is.
    #[error("queue backend: {0}")]
    Backend(String),
}

impl QueueError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, QueueError::Full(_) | QueueError::Unavailable(_))
    }
}

/// One delivery of a job to a worker. Acknowledging it removes the job
/// from the queue for good; a delivery never acknowledged is handed out
/// again (to any worker) once its acknowledgement is overdue.
#[derive(Debug)]
pub struct Delivery {
    pub job: QueuedJob,
    /// The queue handed this job out before without an acknowledgement:
    /// the worker that had it is presumed lost.
    pub redelivered: bool,
    pub handle: Box<dyn Acker>,
}

/// The acknowledgement side of a delivery.
#[async_trait]
pub trait Acker: Send + Sync + std::fmt::Debug {
    /// Done with it: the result is stored (or there was nothing to do).
    async fn ack(&self) -> Result<(), QueueError>;
    /// Still working on it: postpones redelivery.
    async fn progress(&self) -> Result<(), QueueError>;
    /// A handle on the same delivery, for a keep-alive task.
    fn clone_box(&self) -> Box<dyn Acker>;
    /// Whether a delivery never acknowledged comes back by itself. A
    /// worker that could not take a job puts it back on the queue when not.
    fn redelivers(&self) -> bool {
        true
    }
}

#[async_trait]
pub trait JobQueue: Send + Sync + std::fmt::Debug + 'static {
    /// Takes the job, or refuses it (`Full`, `Unavailable`): never both.
    async fn push(&self, job: QueuedJob) -> Result<(), QueueError>;
    /// Waits for the next job; `Closed` once the queue is shut down. Each
    /// waiting `pop` asks for one job, so a worker that pops only when it
    /// has room never holds more jobs than it can run.
    async fn pop(&self) -> Result<Delivery, QueueError>;
    /// Jobs waiting (last known, for distributed queues).
    fn depth(&self) -> usize;
    /// Stops handing out jobs; waiting `pop`s return `Closed`.
    fn close(&self);
    /// Whether the queue's server answers now (for `/healthz`).
    async fn ping(&self) -> Result<(), QueueError> {
        Ok(())
    }
}
