//! How a job looks from the outside.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use ignis_protocol::Verdict;
use ignis_vmm::report::VmReport;
use ignis_vmm::RunReport;
use serde::Serialize;

use uuid::Uuid;

use super::parsed::Encoding;
use crate::job::{Job, JobStatus, Timings};

/// One job with its whole result, stdout and stderr included.
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
    pub result: Option<ResultView>,
    pub timings: Option<Timings>,
    pub webhook_url: Option<String>,
}

impl JobView {
    /// The job with its outputs in `encoding`.
    pub fn new(j: &Job, encoding: Encoding) -> JobView {
        JobView {
            id: j.id,
            language: j.language.clone(),
            status: j.status,
            created_at: j.created_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
            attempts: j.attempts,
            result: j.result.as_ref().map(|r| ResultView::new(r, encoding)),
            timings: j.timings,
            webhook_url: j.webhook_url.clone(),
        }
    }
}

impl From<&Job> for JobView {
    fn from(j: &Job) -> Self {
        JobView::new(j, Encoding::Utf8)
    }
}

/// How a run ended, as `ignis run --json` says it, with stdout and stderr
/// in the encoding asked for.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ResultView {
    pub status: Verdict,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// What the program wrote: text when `encoding` is `utf8`, else the
    /// exact bytes in base64.
    pub stdout: String,
    pub stderr: String,
    /// `utf8` (the default) or `base64` (`?encoding=base64`).
    pub encoding: Encoding,
    /// The program's stdout was not valid UTF-8, so `stdout` (in `utf8`)
    /// has U+FFFD in place of the bytes that were not: ask for
    /// `?encoding=base64` to get them exactly. Always false in `base64`.
    pub stdout_lossy: bool,
    /// As `stdout_lossy`, for stderr.
    pub stderr_lossy: bool,
    pub compile_output: Option<String>,
    pub compile_ms: Option<u64>,
    pub duration_ms: u64,
    pub cpu_ms: u64,
    pub memory_kib: u64,
    /// The program wrote more than its output limit; the rest was dropped.
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// Why, for `internal_error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub vm: Option<VmReport>,
}

/// Output bytes in `encoding`, and whether text had to replace some.
fn encode(bytes: &[u8], encoding: Encoding) -> (String, bool) {
    match encoding {
        Encoding::Base64 => (STANDARD.encode(bytes), false),
        Encoding::Utf8 => match std::str::from_utf8(bytes) {
            Ok(s) => (s.to_owned(), false),
            Err(_) => (String::from_utf8_lossy(bytes).into_owned(), true),
        },
    }
}

impl ResultView {
    pub fn new(r: &RunReport, encoding: Encoding) -> ResultView {
        let (stdout, stdout_lossy) = encode(&r.stdout, encoding);
        let (stderr, stderr_lossy) = encode(&r.stderr, encoding);
        ResultView {
            status: r.status,
            exit_code: r.exit_code,
            signal: r.signal,
            stdout,
            stderr,
            encoding,
            stdout_lossy,
            stderr_lossy,
            compile_output: r.compile_output.clone(),
            compile_ms: r.compile_ms,
            duration_ms: r.duration_ms,
            cpu_ms: r.cpu_ms,
            memory_kib: r.memory_kib,
            stdout_truncated: r.stdout_truncated,
            stderr_truncated: r.stderr_truncated,
            message: r.message.clone(),
            vm: r.vm.clone(),
        }
    }
}

/// The job as its final event and webhook carry it: outputs as text.
pub fn job_json(j: &Job) -> serde_json::Value {
    serde_json::to_value(JobView::from(j)).unwrap_or_default()
}

/// A job in a listing: how it ended, without what it printed, so a page
/// stays small whatever the jobs wrote. `GET /v1/jobs/{id}` has the rest.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobSummary {
    pub id: Uuid,
    pub language: String,
    pub status: JobStatus,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub attempts: u32,
    /// The verdict, once the job completed.
    pub verdict: Option<Verdict>,
    pub exit_code: Option<i32>,
    pub timings: Option<Timings>,
    pub webhook_url: Option<String>,
}

impl From<&Job> for JobSummary {
    fn from(j: &Job) -> Self {
        JobSummary {
            id: j.id,
            language: j.language.clone(),
            status: j.status,
            created_at: j.created_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
            attempts: j.attempts,
            verdict: j.result.as_ref().map(|r| r.status),
            exit_code: j.result.as_ref().and_then(|r| r.exit_code),
            timings: j.timings,
            webhook_url: j.webhook_url.clone(),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobList {
    /// Summaries, newest first; outputs only in `GET /v1/jobs/{id}`.
    pub jobs: Vec<JobSummary>,
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
