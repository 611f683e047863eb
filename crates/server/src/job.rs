//! Jobs: what a user submitted, where it is in its life, and how it ended.

use chrono::{DateTime, Utc};
use ignis_protocol::RunRequest;
use ignis_vmm::RunReport;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub type JobId = Uuid;

/// Where a job is in its life. Moves only forward:
/// `queued → running → completed`, `queued → canceled`, `running → canceled`;
/// `running → queued` only when a restart gives it another attempt, and
/// `running → running` when a lost worker's job is delivered again. The
/// moves are [`Transition`]s; [`JobStatus::may_become`] answers for them.
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

    /// Whether a job in this status may move to `to`: the lifecycle in one
    /// place, which every store enforces with a compare-and-set.
    pub fn may_become(self, to: JobStatus) -> bool {
        Transition::ALL
            .iter()
            .any(|t| t.to() == to && t.from().contains(&self))
    }
}

/// A move in a job's life. Each store applies these, and only these, as
/// compare-and-set updates on the status it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// `queued → running`: a worker took it; one more attempt.
    Start,
    /// `running → running`: the worker running it was lost and the queue
    /// delivered the job again; one more attempt.
    Retake,
    /// `running → completed`, with the result of the current attempt.
    Complete,
    /// `running → queued`: the attempt was given back (shutdown, restart).
    Requeue,
    /// `queued|running → canceled`.
    Cancel,
}

impl Transition {
    pub const ALL: [Transition; 5] = [
        Transition::Start,
        Transition::Retake,
        Transition::Complete,
        Transition::Requeue,
        Transition::Cancel,
    ];

    pub fn to(self) -> JobStatus {
        match self {
            Transition::Start | Transition::Retake => JobStatus::Running,
            Transition::Complete => JobStatus::Completed,
            Transition::Requeue => JobStatus::Queued,
            Transition::Cancel => JobStatus::Canceled,
        }
    }

    /// The statuses this move may start from.
    pub fn from(self) -> &'static [JobStatus] {
        use JobStatus::{Queued, Running};
        match self {
            Transition::Start => &[Queued],
            Transition::Retake | Transition::Complete | Transition::Requeue => &[Running],
            Transition::Cancel => &[Queued, Running],
        }
    }

    /// The verb, for errors ("cannot start").
    pub fn name(self) -> &'static str {
        match self {
            Transition::Start => "start",
            Transition::Retake => "retake",
            Transition::Complete => "complete",
            Transition::Requeue => "requeue",
            Transition::Cancel => "cancel",
        }
    }

    pub fn allowed(self, current: JobStatus) -> bool {
        self.from().contains(&current)
    }
}

/// What a worker does with a job the queue handed it, decided from the
/// stored job alone, so every store and every worker decide alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimDecision {
    /// Run it: [`Transition::Start`] or [`Transition::Retake`].
    Run(Transition),
    /// Its workers were lost `attempts` times already: end it as
    /// `internal_error` instead of starting it again.
    Exhaust,
    /// Nothing to do: it ended, or another worker runs it and this delivery
    /// is a duplicate. The delivery is acknowledged.
    Skip,
}

impl ClaimDecision {
    /// `redelivered`: the queue handed this delivery out before and never
    /// got an acknowledgement, so whoever had it is gone. A first delivery
    /// of a running job is a duplicate message, never a reason to run it
    /// twice at once.
    pub fn decide(
        status: JobStatus,
        attempts: u32,
        redelivered: bool,
        max_attempts: u32,
    ) -> ClaimDecision {
        match status {
            JobStatus::Queued => ClaimDecision::Run(Transition::Start),
            JobStatus::Running if !redelivered => ClaimDecision::Skip,
            JobStatus::Running if attempts >= max_attempts.max(1) => ClaimDecision::Exhaust,
            JobStatus::Running => ClaimDecision::Run(Transition::Retake),
            JobStatus::Completed | JobStatus::Canceled => ClaimDecision::Skip,
        }
    }
}

/// What start-up recovery of the embedded server does with a job that was
/// `running` when the last process died: another attempt while it has
/// attempts left, else an honest `internal_error`.
pub fn recover_running(attempts: u32, max_attempts: u32) -> ClaimDecision {
    if attempts < max_attempts {
        ClaimDecision::Run(Transition::Requeue)
    } else {
        ClaimDecision::Exhaust
    }
}

/// The message of a job that kept losing its worker (or the server); it is
/// failed rather than retried forever.
pub const EXHAUSTED_MESSAGE: &str =
    "the worker running this job was lost on every attempt; it was not retried again";

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

/// A submission that passed every check, not yet a job.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub language: String,
    pub request: RunRequest,
    pub webhook_url: Option<String>,
    /// See [`Job::compat`].
    pub compat: Option<String>,
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
    /// What a compatible API (Judge0) was asked beside the run itself, such
    /// as the expected output, kept as that API's own JSON text so it can
    /// answer later from the job alone. Opaque to the stores and workers.
    #[serde(default)]
    pub compat: Option<String>,
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
            compat: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::JobStatus::*;
    use super::*;

    #[test]
    fn the_lifecycle_moves_only_forward() {
        let all = [Queued, Running, Completed, Canceled];
        let allowed: Vec<(JobStatus, JobStatus)> = all
            .iter()
            .flat_map(|a| all.iter().map(move |b| (*a, *b)))
            .filter(|(a, b)| a.may_become(*b))
            .collect();
        assert_eq!(
            allowed,
            vec![
                (Queued, Running),
                (Queued, Canceled),
                (Running, Queued),
                (Running, Running),
                (Running, Completed),
                (Running, Canceled),
            ]
        );
        for s in [Completed, Canceled] {
            assert!(all.iter().all(|t| !s.may_become(*t)), "{s:?} is final");
        }
    }

    #[test]
    fn claims_run_retake_skip_or_exhaust() {
        use ClaimDecision as D;
        assert_eq!(D::decide(Queued, 0, false, 2), D::Run(Transition::Start));
        assert_eq!(D::decide(Queued, 1, true, 2), D::Run(Transition::Start));
        assert_eq!(D::decide(Running, 1, false, 2), D::Skip, "a duplicate");
        assert_eq!(D::decide(Running, 1, true, 2), D::Run(Transition::Retake));
        assert_eq!(D::decide(Running, 2, true, 2), D::Exhaust);
        assert_eq!(D::decide(Completed, 1, true, 2), D::Skip);
        assert_eq!(D::decide(Canceled, 0, false, 2), D::Skip);
        assert_eq!(recover_running(1, 2), D::Run(Transition::Requeue));
        assert_eq!(recover_running(2, 2), D::Exhaust);
    }
}

#[cfg(test)]
#[path = "job_props.rs"]
mod props;
