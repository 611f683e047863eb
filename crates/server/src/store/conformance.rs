//! The conformance suite of [`JobStore`]: what every store must do, run
//! against SQLite (`sqlite_tests.rs`) and PostgreSQL (`postgres_tests.rs`)
//! alike through [`conformance_tests!`]. A store that passes it can stand
//! behind the API and the workers.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use ignis_protocol::{File, Limits, RunRequest, Verdict};
use ignis_vmm::RunReport;
use uuid::Uuid;

use super::{Admission, ApiKey, Claimed, JobStore, ListQuery, PendingWebhook, StoreError};
use crate::job::{Job, JobStatus, Timings, EXHAUSTED_MESSAGE};
use crate::keys::KeyLimits;

/// Two handles on one fresh database (two connections, so compare-and-set
/// must hold across the database's own locking), and whatever keeps the
/// database alive.
pub(crate) struct Fixture {
    pub a: Arc<dyn JobStore>,
    pub b: Arc<dyn JobStore>,
    pub _keep: Box<dyn std::any::Any + Send + Sync>,
}

/// Instantiates every conformance test for a store; `$open` is an async
/// expression that yields a [`Fixture`] over a fresh database.
macro_rules! conformance_tests {
    ($open:expr) => {
        conformance_tests!(@each $open;
            insert_get_and_owner_isolation,
            list_order_filters_and_cursor,
            claim_complete_requeue_transitions,
            redelivery_retakes_then_exhausts,
            results_are_stored_once_per_attempt,
            cancel_semantics,
            discard_only_what_no_worker_saw,
            in_status_lists_oldest_first,
            outputs_are_exact_bytes_and_listings_skip_them,
            pending_webhooks_are_kept_until_done,
            waiting_lists_queued_jobs_with_owners,
            keys_round_trip);
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn admission_is_atomic() {
            let f = $open.await;
            crate::store::conformance::admission_is_atomic(&f).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn concurrent_claims_have_one_winner() {
            let f = $open.await;
            crate::store::conformance::concurrent_claims_have_one_winner(&f).await;
        }
    };
    (@each $open:expr; $($name:ident),*) => {
        $(
            #[tokio::test]
            async fn $name() {
                let f = $open.await;
                crate::store::conformance::$name(&*f.a).await;
            }
        )*
    };
}
pub(crate) use conformance_tests;

fn request() -> RunRequest {
    RunRequest {
        files: vec![File {
            name: "main.py".into(),
            content: b"print('hi')\n\xff".to_vec(),
        }],
        stdin: b"in\0put".to_vec(),
        args: vec!["-x".into()],
        env: BTreeMap::from([("K".into(), "v".into())]),
        limits: Limits::default(),
    }
}

/// A job with millisecond timestamps (what every store keeps).
fn job(owner: &str, language: &str) -> Job {
    let mut j = Job::new(
        owner.into(),
        language.into(),
        request(),
        Some("https://example.test/hook".into()),
    );
    let ms = j.created_at.timestamp_millis();
    j.created_at = DateTime::from_timestamp_millis(ms).unwrap();
    j.compat = Some(r#"{"expected_output":"hi\n"}"#.into());
    j
}

fn t(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_700_000_000_000 + ms).unwrap()
}

/// Claims a queued job as a worker's first delivery would.
async fn start(s: &dyn JobStore, id: Uuid, at: DateTime<Utc>) -> Job {
    match s.claim(id, false, 10, at).await.unwrap() {
        Claimed::Run(j) => j,
        other => panic!("expected to run {id}, got {other:?}"),
    }
}

fn report() -> RunReport {
    let mut r = RunReport::internal_error("x", None);
    r.status = Verdict::Ok;
    r.stdout = "hi\n".into();
    r.exit_code = Some(0);
    r.message = None;
    r
}

fn q(limit: u32) -> ListQuery {
    ListQuery {
        limit,
        ..ListQuery::default()
    }
}

pub(crate) async fn insert_get_and_owner_isolation(s: &dyn JobStore) {
    let j = job("alice", "python");
    s.insert(&j).await.unwrap();
    assert_eq!(s.get("alice", j.id).await.unwrap(), Some(j.clone()));
    assert_eq!(s.get("bob", j.id).await.unwrap(), None);
    assert_eq!(s.get_any(j.id).await.unwrap(), Some(j.clone()));
    assert_eq!(s.get_any(Uuid::now_v7()).await.unwrap(), None);
    assert!(
        matches!(s.insert(&j).await, Err(StoreError::Backend(_))),
        "duplicate id"
    );
    assert_eq!(s.count_queued("alice").await.unwrap(), 1);
    assert_eq!(s.count_queued("bob").await.unwrap(), 0);
}

pub(crate) async fn list_order_filters_and_cursor(s: &dyn JobStore) {
    let mut ids = Vec::new();
    for i in 0..7 {
        let j = job("alice", if i % 2 == 0 { "python" } else { "rust" });
        s.insert(&j).await.unwrap();
        ids.push(j.id);
    }
    s.insert(&job("bob", "python")).await.unwrap();
    let newest_first: Vec<_> = ids.iter().rev().copied().collect();

    let all = s.list("alice", &q(100)).await.unwrap();
    assert_eq!(all.iter().map(|j| j.id).collect::<Vec<_>>(), newest_first);

    // Pages of 3 via the cursor cover everything exactly once.
    let mut seen = Vec::new();
    let mut query = q(3);
    loop {
        let page = s.list("alice", &query).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        query.before = page.last().map(|j| j.id);
        seen.extend(page.into_iter().map(|j| j.id));
    }
    assert_eq!(seen, newest_first);

    let rust = s
        .list(
            "alice",
            &ListQuery {
                language: Some("rust".into()),
                ..q(100)
            },
        )
        .await
        .unwrap();
    assert_eq!(
        rust.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[5], ids[3], ids[1]]
    );

    start(s, ids[2], t(0)).await;
    let running = s
        .list(
            "alice",
            &ListQuery {
                status: Some(JobStatus::Running),
                ..q(100)
            },
        )
        .await
        .unwrap();
    assert_eq!(
        running.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[2]]
    );
    let both = ListQuery {
        status: Some(JobStatus::Queued),
        language: Some("python".into()),
        ..q(100)
    };
    let got = s.list("alice", &both).await.unwrap();
    assert_eq!(
        got.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[6], ids[4], ids[0]]
    );
}

pub(crate) async fn claim_complete_requeue_transitions(s: &dyn JobStore) {
    let j = job("alice", "python");
    s.insert(&j).await.unwrap();

    let started = start(s, j.id, t(1)).await;
    assert_eq!(
        (started.status, started.attempts, started.started_at),
        (JobStatus::Running, 1, Some(t(1)))
    );
    // A second first delivery of a running job is a duplicate: skipped.
    assert_eq!(
        s.claim(j.id, false, 10, t(2)).await.unwrap(),
        Claimed::Skipped(JobStatus::Running)
    );

    s.requeue(j.id).await.unwrap();
    let back = s.get_any(j.id).await.unwrap().unwrap();
    assert_eq!(
        (back.status, back.attempts, back.started_at),
        (JobStatus::Queued, 1, None)
    );
    assert!(matches!(
        s.requeue(j.id).await,
        Err(StoreError::NotAllowed {
            current: JobStatus::Queued,
            ..
        })
    ));
    assert!(matches!(
        s.complete(j.id, 1, &report(), Timings::default(), t(3))
            .await,
        Err(StoreError::NotAllowed { .. })
    ));

    assert_eq!(start(s, j.id, t(4)).await.attempts, 2);
    let timings = Timings {
        queue_ms: 1,
        acquire_ms: 2,
        run_ms: 3,
        total_ms: 6,
    };
    s.complete(j.id, 2, &report(), timings, t(5)).await.unwrap();
    let done = s.get("alice", j.id).await.unwrap().unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(done.result, Some(report()));
    assert_eq!(done.timings, Some(timings));
    assert_eq!(
        (done.started_at, done.finished_at),
        (Some(t(4)), Some(t(5)))
    );
    assert!(matches!(
        s.complete(j.id, 2, &report(), timings, t(6)).await,
        Err(StoreError::NotAllowed {
            current: JobStatus::Completed,
            action: "complete"
        })
    ));
    assert_eq!(
        s.claim(j.id, true, 10, t(7)).await.unwrap(),
        Claimed::Skipped(JobStatus::Completed),
        "a redelivery of a finished job is acknowledged and skipped"
    );

    let missing = Uuid::now_v7();
    assert!(
        matches!(s.claim(missing, false, 10, t(0)).await, Err(StoreError::NotFound(id)) if id == missing)
    );
    assert!(matches!(
        s.requeue(missing).await,
        Err(StoreError::NotFound(_))
    ));
}

pub(crate) async fn redelivery_retakes_then_exhausts(s: &dyn JobStore) {
    let j = job("alice", "python");
    s.insert(&j).await.unwrap();
    let first = s.claim(j.id, false, 2, t(1)).await.unwrap();
    assert!(
        matches!(first, Claimed::Run(ref r) if r.attempts == 1),
        "{first:?}"
    );
    // Its worker died: the queue delivers it again.
    let again = s.claim(j.id, true, 2, t(2)).await.unwrap();
    match again {
        Claimed::Run(r) => assert_eq!(
            (r.status, r.attempts, r.started_at),
            (JobStatus::Running, 2, Some(t(2)))
        ),
        other => panic!("expected a retake, got {other:?}"),
    }
    // And that worker died too: out of attempts, failed honestly.
    let last = s.claim(j.id, true, 2, t(3)).await.unwrap();
    let Claimed::Exhausted(failed) = last else {
        panic!("expected exhaustion, got {last:?}");
    };
    assert_eq!(
        (failed.status, failed.attempts, failed.finished_at),
        (JobStatus::Completed, 2, Some(t(3)))
    );
    let result = failed.result.unwrap();
    assert_eq!(result.status, Verdict::InternalError);
    assert_eq!(result.message.as_deref(), Some(EXHAUSTED_MESSAGE));
    assert_eq!(
        s.claim(j.id, true, 2, t(4)).await.unwrap(),
        Claimed::Skipped(JobStatus::Completed)
    );
}

pub(crate) async fn results_are_stored_once_per_attempt(s: &dyn JobStore) {
    let j = job("alice", "python");
    s.insert(&j).await.unwrap();
    start(s, j.id, t(1)).await;
    let retaken = s.claim(j.id, true, 5, t(2)).await.unwrap();
    assert!(matches!(retaken, Claimed::Run(ref r) if r.attempts == 2));
    // The first worker was slow, not dead: its late result is stale.
    let mut late = report();
    late.stdout = "late\n".into();
    assert!(matches!(
        s.complete(j.id, 1, &late, Timings::default(), t(3)).await,
        Err(StoreError::Stale {
            attempt: 1,
            current: 2
        })
    ));
    s.complete(j.id, 2, &report(), Timings::default(), t(4))
        .await
        .unwrap();
    // The same result arriving twice is stored once.
    assert!(matches!(
        s.complete(j.id, 2, &late, Timings::default(), t(5)).await,
        Err(StoreError::NotAllowed {
            current: JobStatus::Completed,
            ..
        })
    ));
    let done = s.get_any(j.id).await.unwrap().unwrap();
    assert_eq!(
        (done.result, done.finished_at),
        (Some(report()), Some(t(4)))
    );
}

pub(crate) async fn discard_only_what_no_worker_saw(s: &dyn JobStore) {
    let (a, b) = (job("alice", "python"), job("alice", "python"));
    s.insert(&a).await.unwrap();
    s.insert(&b).await.unwrap();
    s.discard(a.id).await.unwrap();
    assert_eq!(s.get_any(a.id).await.unwrap(), None);
    assert!(matches!(
        s.discard(a.id).await,
        Err(StoreError::NotFound(_))
    ));
    start(s, b.id, t(1)).await;
    assert!(matches!(
        s.discard(b.id).await,
        Err(StoreError::NotAllowed {
            current: JobStatus::Running,
            ..
        })
    ));
    assert!(s.get_any(b.id).await.unwrap().is_some());
}

pub(crate) async fn in_status_lists_oldest_first(s: &dyn JobStore) {
    let [a, b, c] = [(); 3].map(|_| job("alice", "python"));
    for j in [&a, &b, &c] {
        s.insert(j).await.unwrap();
    }
    start(s, b.id, t(0)).await;
    s.requeue(b.id).await.unwrap();
    start(s, b.id, t(1)).await;
    assert_eq!(
        s.in_status(JobStatus::Running).await.unwrap(),
        vec![(b.id, "python".to_owned(), 2)]
    );
    assert_eq!(
        s.in_status(JobStatus::Queued).await.unwrap(),
        vec![
            (a.id, "python".to_owned(), 0),
            (c.id, "python".to_owned(), 0)
        ]
    );
    assert_eq!(s.in_status(JobStatus::Canceled).await.unwrap(), vec![]);
}

pub(crate) async fn cancel_semantics(s: &dyn JobStore) {
    let (a, b) = (job("alice", "python"), job("alice", "python"));
    s.insert(&a).await.unwrap();
    s.insert(&b).await.unwrap();

    assert!(matches!(
        s.cancel("bob", a.id, t(0)).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        s.cancel("alice", a.id, t(1)).await.unwrap(),
        JobStatus::Queued
    );
    let canceled = s.get_any(a.id).await.unwrap().unwrap();
    assert_eq!(
        (canceled.status, canceled.finished_at),
        (JobStatus::Canceled, Some(t(1)))
    );
    assert!(matches!(
        s.cancel("alice", a.id, t(2)).await,
        Err(StoreError::NotAllowed {
            current: JobStatus::Canceled,
            action: "cancel"
        })
    ));
    // A worker that dequeues a canceled job skips it.
    assert_eq!(
        s.claim(a.id, false, 10, t(3)).await.unwrap(),
        Claimed::Skipped(JobStatus::Canceled)
    );

    start(s, b.id, t(4)).await;
    assert_eq!(
        s.cancel("alice", b.id, t(5)).await.unwrap(),
        JobStatus::Running
    );
    // ... and so must the worker that was running it.
    assert!(matches!(
        s.complete(b.id, 1, &report(), Timings::default(), t(6))
            .await,
        Err(StoreError::NotAllowed { .. })
    ));
    assert!(matches!(
        s.requeue(b.id).await,
        Err(StoreError::NotAllowed { .. })
    ));

    let c = job("alice", "python");
    s.insert(&c).await.unwrap();
    start(s, c.id, t(7)).await;
    s.complete(c.id, 1, &report(), Timings::default(), t(8))
        .await
        .unwrap();
    assert!(matches!(
        s.cancel("alice", c.id, t(9)).await,
        Err(StoreError::NotAllowed {
            current: JobStatus::Completed,
            action: "cancel"
        })
    ));
    assert_eq!(s.count_queued("alice").await.unwrap(), 0);
}

pub(crate) async fn concurrent_claims_have_one_winner(f: &Fixture) {
    let stores = [f.a.clone(), f.b.clone()];
    for round in 0..10 {
        let j = job("alice", "python");
        stores[0].insert(&j).await.unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let s = stores[i % 2].clone();
                tokio::spawn(async move { s.claim(j.id, false, 10, t(round)).await })
            })
            .collect();
        let mut wins = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(Claimed::Run(job)) => {
                    assert_eq!(job.attempts, 1);
                    wins += 1;
                }
                Ok(Claimed::Skipped(JobStatus::Running)) => {}
                other => panic!("unexpected: {other:?}"),
            }
        }
        assert_eq!(wins, 1);
        assert_eq!(stores[1].get_any(j.id).await.unwrap().unwrap().attempts, 1);
    }
}

pub(crate) async fn keys_round_trip(s: &dyn JobStore) {
    let key = ApiKey {
        id: "key_1".into(),
        name: "ci".into(),
        limits: KeyLimits {
            rate_per_sec: Some(10),
            max_queued: None,
            max_running: Some(crate::keys::UNLIMITED),
        },
        created_at: t(42),
    };
    s.create_key(&key, "hash-1").await.unwrap();
    assert_eq!(s.key_by_hash("hash-1").await.unwrap(), Some(key.clone()));
    assert_eq!(s.key_by_hash("hash-2").await.unwrap(), None);
    assert_eq!(s.key_by_id("key_1").await.unwrap(), Some(key.clone()));
    assert_eq!(s.key_by_id("hash-1").await.unwrap(), None);
    let dup = ApiKey {
        id: "key_2".into(),
        ..key
    };
    assert!(
        matches!(
            s.create_key(&dup, "hash-1").await,
            Err(StoreError::Backend(_))
        ),
        "unique hash"
    );
}

#[path = "conformance_more.rs"]
mod more;
pub(crate) use more::*;
