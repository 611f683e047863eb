//! Generated tests of the job lifecycle: random sequences of moves, applied
//! to the rules alone and to the SQLite store through its API, never reach
//! a status the rules forbid, never leave a final status, and the store
//! does exactly what [`JobStatus::may_become`] and [`ClaimDecision`] say.
//! A store that disagreed with the rules would let a canceled job run, or a
//! finished one run again.

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use ignis_protocol::{File, Limits, RunRequest, Verdict};
use ignis_vmm::RunReport;
use proptest::prelude::*;

use super::JobStatus::{Canceled, Completed, Queued, Running};
use super::*;
use crate::store::sqlite::SqliteStore;
use crate::store::{Claimed, JobStore, StoreError};

const ALL: [JobStatus; 4] = [Queued, Running, Completed, Canceled];
const MAX_ATTEMPTS: u32 = 3;

fn transition() -> impl Strategy<Value = Transition> {
    proptest::sample::select(Transition::ALL.to_vec())
}

/// One call a worker, the API or recovery may make on a stored job.
#[derive(Debug, Clone)]
enum Op {
    Claim {
        redelivered: bool,
    },
    /// A result for the current attempt plus `offset` (a stale or a future
    /// one when not zero).
    Complete {
        offset: i8,
    },
    Requeue,
    Cancel {
        by_owner: bool,
    },
    Discard,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        any::<bool>().prop_map(|redelivered| Op::Claim { redelivered }),
        prop_oneof![Just(0i8), Just(-1), Just(1)].prop_map(|offset| Op::Complete { offset }),
        Just(Op::Requeue),
        any::<bool>().prop_map(|by_owner| Op::Cancel { by_owner }),
        Just(Op::Discard),
    ]
}

proptest! {
    /// The rules alone: a move is allowed only where `may_become` says the
    /// status may go, and from a final status nothing is allowed.
    #[test]
    fn no_sequence_of_transitions_leaves_the_lifecycle(moves in proptest::collection::vec(transition(), 0..40)) {
        let mut status = Queued;
        let mut ended = false;
        for t in moves {
            if ended {
                prop_assert!(status.is_final());
            }
            if t.allowed(status) {
                prop_assert!(status.may_become(t.to()), "{t:?} from {status:?}");
                prop_assert!(!status.is_final(), "{t:?} left final {status:?}");
                status = t.to();
            } else {
                prop_assert!(!t.from().contains(&status));
            }
            ended |= status.is_final();
            for to in ALL {
                prop_assert_eq!(
                    status.may_become(to),
                    Transition::ALL.iter().any(|t| t.allowed(status) && t.to() == to)
                );
                if status.is_final() {
                    prop_assert!(!status.may_become(to), "{status:?} is final");
                }
            }
        }
    }
}

fn t(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_700_000_000_000 + ms)
        .single()
        .expect("a valid time")
}

fn new_job() -> Job {
    let mut j = Job::new(
        "alice".into(),
        "python".into(),
        RunRequest {
            files: vec![File {
                name: "main.py".into(),
                content: b"print(1)".to_vec(),
            }],
            stdin: vec![],
            args: vec![],
            env: Default::default(),
            limits: Limits::default(),
        },
        None,
    );
    j.created_at = t(0);
    j
}

fn report() -> RunReport {
    let mut r = RunReport::internal_error("x", None);
    r.status = Verdict::Ok;
    r.message = None;
    r
}

/// What the rules say `op` does to a job in `before` (status, attempts):
/// the status and attempts after, or the error the store must give.
fn expected(op: &Op, before: (JobStatus, u32)) -> Result<(JobStatus, u32), &'static str> {
    let (status, attempts) = before;
    let allowed = |t: Transition| {
        if t.allowed(status) {
            Ok((t.to(), attempts))
        } else {
            Err("not allowed")
        }
    };
    match *op {
        Op::Claim { redelivered } => Ok(
            match ClaimDecision::decide(status, attempts, redelivered, MAX_ATTEMPTS) {
                ClaimDecision::Run(t) => (t.to(), attempts + 1),
                ClaimDecision::Exhaust => (Completed, attempts),
                ClaimDecision::Skip => (status, attempts),
            },
        ),
        Op::Complete { offset } if offset != 0 && status == Running => Err("stale"),
        Op::Complete { .. } => allowed(Transition::Complete),
        Op::Requeue => allowed(Transition::Requeue),
        Op::Cancel { by_owner: false } => Err("not found"),
        Op::Cancel { .. } => allowed(Transition::Cancel),
        Op::Discard if status == Queued && attempts == 0 => Err("gone"),
        Op::Discard => Err("not allowed"),
    }
}

/// What a stored job in each status must (not) carry.
fn consistent(j: &Job) -> Result<(), TestCaseError> {
    match j.status {
        Queued => {
            prop_assert!(j.result.is_none() && j.started_at.is_none() && j.finished_at.is_none())
        }
        Running => prop_assert!(j.result.is_none() && j.started_at.is_some() && j.attempts >= 1),
        Completed => prop_assert!(j.result.is_some() && j.finished_at.is_some()),
        Canceled => prop_assert!(j.result.is_none() && j.finished_at.is_some()),
    }
    Ok(())
}

async fn apply(
    s: &dyn JobStore,
    id: JobId,
    op: &Op,
    attempts: u32,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    match *op {
        Op::Claim { redelivered } => s.claim(id, redelivered, MAX_ATTEMPTS, at).await.map(|c| {
            if let Claimed::Run(j) | Claimed::Exhausted(j) = c {
                assert_eq!(j.id, id);
            }
        }),
        Op::Complete { offset } => {
            let attempt = attempts.saturating_add_signed(offset.into());
            s.complete(id, attempt, &report(), Timings::default(), at)
                .await
        }
        Op::Requeue => s.requeue(id).await,
        Op::Cancel { by_owner } => {
            let owner = if by_owner { "alice" } else { "mallory" };
            s.cancel(owner, id, at).await.map(|_| ())
        }
        Op::Discard => s.discard(id).await,
    }
}

/// Runs `ops` on a fresh job in `s`, checking each step against the rules.
async fn run_sequence(s: &dyn JobStore, ops: &[Op]) -> Result<(), TestCaseError> {
    let job = new_job();
    s.insert(&job).await.expect("insert");
    let mut before = (Queued, 0u32);
    let mut final_row: Option<Job> = None;
    for (i, op) in ops.iter().enumerate() {
        let res = apply(s, job.id, op, before.1, t(i as i64 + 1)).await;
        let row = s.get_any(job.id).await.expect("get");
        let want = expected(op, before);
        match (&want, &res, &row) {
            (Err("gone"), Ok(()), None) => return Ok(()),
            (Ok(after), Ok(()), Some(row)) => {
                prop_assert_eq!(
                    (row.status, row.attempts),
                    *after,
                    "{:?} from {:?}",
                    op,
                    before
                );
                prop_assert!(
                    row.status == before.0 || before.0.may_become(row.status),
                    "{:?} moved {:?} to {:?}",
                    op,
                    before.0,
                    row.status
                );
            }
            (Err("stale"), Err(StoreError::Stale { .. }), Some(row))
            | (Err("not found"), Err(StoreError::NotFound(_)), Some(row)) => {
                prop_assert_eq!((row.status, row.attempts), before);
            }
            (Err("not allowed"), Err(StoreError::NotAllowed { current, .. }), Some(row)) => {
                prop_assert_eq!(*current, before.0);
                prop_assert_eq!((row.status, row.attempts), before);
            }
            _ => prop_assert!(
                false,
                "{:?} from {:?}: rules say {:?}, the store {:?}, row {:?}",
                op,
                before,
                want,
                res,
                row.as_ref().map(|r| r.status)
            ),
        }
        let row = row.expect("the job is still there");
        consistent(&row)?;
        if let Some(f) = &final_row {
            prop_assert_eq!(f, &row, "a final job changed");
        }
        if row.status.is_final() {
            final_row = Some(row.clone());
        }
        before = (row.status, row.attempts);
    }
    Ok(())
}

#[test]
fn the_sqlite_store_follows_the_rules_for_random_sequences() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tmp");
    let store: Arc<dyn JobStore> =
        Arc::new(SqliteStore::open(&dir.path().join("ignis.db")).expect("open"));
    let config = ProptestConfig::with_cases(96);
    proptest!(config, |(ops in proptest::collection::vec(op(), 1..16))| {
        rt.block_on(run_sequence(&*store, &ops))?;
    });
}
