//! How a job looks from the outside.

use chrono::{DateTime, Utc};
use ignis_vmm::RunReport;
use serde::Serialize;

use uuid::Uuid;

use crate::job::{Job, JobStatus, Timings};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobView {
    pub id: Uuid,
    pub language: String,
    pub status: JobStatus,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub attempts: u32,
    /// Set once the job completed: the same fields as `ignis run --json`,
    /// including the VM (`driver`, `accel`) that ran it.
    pub result: Option<RunReport>,
    pub timings: Option<Timings>,
    pub webhook_url: Option<String>,
}

impl From<&Job> for JobView {
    fn from(j: &Job) -> Self {
        JobView {
            id: j.id,
            language: j.language.clone(),
            status: j.status,
            created_at: j.created_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
            attempts: j.attempts,
            result: j.result.clone(),
            timings: j.timings,
            webhook_url: j.webhook_url.clone(),
        }
    }
}

pub fn job_json(j: &Job) -> serde_json::Value {
    serde_json::to_value(JobView::from(j)).unwrap_or_default()
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<Uuid>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LanguageView {
    pub name: String,
    pub version: String,
    pub extensions: Vec<String>,
    pub compiled: bool,
    pub source_file: String,
    pub pool: PoolView,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PoolView {
    pub ready: usize,
    pub booting: usize,
    pub target: usize,
    /// At least one ready VM is waiting.
    pub warm: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`, `draining`, or `unavailable` (the store or the queue cannot
    /// be reached, or no worker announces itself; answered with 503).
    pub status: &'static str,
    /// Why it is `unavailable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// The VM driver, e.g. `qemu` (of the first worker).
    pub driver: String,
    /// VMs are restored from per-language snapshots (off: every VM boots).
    pub snapshots: bool,
    pub accel: String,
    pub accel_reason: String,
    pub languages: Vec<String>,
    pub queue_depth: usize,
    /// Every worker that announced itself lately (this process, under
    /// `ignis serve`).
    pub workers: Vec<WorkerHealth>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WorkerHealth {
    pub id: String,
    pub languages: Vec<String>,
    /// Jobs it runs at once.
    pub capacity: usize,
    /// Jobs it runs now.
    pub running: usize,
    pub draining: bool,
    pub accel: String,
    /// Jobs it ended since it started (any verdict, or canceled).
    pub jobs: u64,
}
