//! Jobs: what a user submitted, where it is in its life, and how it ended.

use chrono::{DateTime, Utc};
use ignis_protocol::RunRequest;
use ignis_vmm::RunReport;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub type JobId = Uuid;

/// Where a job is in its life. Moves only forward:
/// `queued → running → completed`, `queued → canceled`, `running → canceled`;
/// `running → queued` only when a server restart or a dead VM gives it
/// another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Completed,
    Canceled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        Some(match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "completed" => JobStatus::Completed,
            "canceled" => JobStatus::Canceled,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Canceled)
    }
}

/// Where the time of a finished job went, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Timings {
    /// From creation until a worker took it.
    pub queue_ms: u64,
    /// Getting a ready VM (zero-ish from a warm pool, a boot otherwise).
    pub acquire_ms: u64,
    /// Sending the program, running it, receiving the result.
    pub run_ms: u64,
    /// From creation to the end.
    pub total_ms: u64,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    /// The API key (its id) that owns the job; another key cannot see it.
    pub owner: String,
    pub language: String,
    pub status: JobStatus,
    pub request: RunRequest,
    pub webhook_url: Option<String>,
    pub result: Option<RunReport>,
    pub timings: Option<Timings>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// How many times a worker has started it (a retry after a dead VM or a
    /// restart counts).
    pub attempts: u32,
}

impl Job {
    pub fn new(
        owner: String,
        language: String,
        request: RunRequest,
        webhook_url: Option<String>,
    ) -> Job {
        Job {
            // v7 ids sort by creation time, which the list cursor relies on.
            id: Uuid::now_v7(),
            owner,
            language,
            status: JobStatus::Queued,
            request,
            webhook_url,
            result: None,
            timings: None,
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
            attempts: 0,
        }
    }
}
