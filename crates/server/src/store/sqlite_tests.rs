//! Tests of `sqlite.rs`, kept apart to keep the module readable.

use std::collections::BTreeMap;

use chrono::TimeZone;
use ignis_protocol::{File, Limits, RunRequest, Verdict};

use super::*;

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

/// A job with millisecond timestamps (what the store keeps).
fn job(owner: &str, language: &str) -> Job {
    let mut j = Job::new(
        owner.into(),
        language.into(),
        request(),
        Some("https://example.test/hook".into()),
    );
    j.created_at = from_ms(to_ms(j.created_at)).unwrap();
    j
}

fn t(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_700_000_000_000 + ms).unwrap()
}

fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("data").join("ignis.db")).unwrap();
    (dir, s)
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

#[tokio::test]
async fn insert_get_and_owner_isolation() {
    let (_d, s) = store();
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

#[tokio::test]
async fn list_order_filters_and_cursor() {
    let (_d, s) = store();
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

    s.start(ids[2], t(0)).await.unwrap();
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

#[tokio::test]
async fn start_complete_requeue_transitions() {
    let (_d, s) = store();
    let j = job("alice", "python");
    s.insert(&j).await.unwrap();

    let started = s.start(j.id, t(1)).await.unwrap();
    assert_eq!(
        (started.status, started.attempts, started.started_at),
        (JobStatus::Running, 1, Some(t(1)))
    );
    assert!(matches!(
        s.start(j.id, t(2)).await,
        Err(StoreError::NotAllowed {
            current: JobStatus::Running,
            action: "start"
        })
    ));

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
        s.complete(j.id, &report(), Timings::default(), t(3)).await,
        Err(StoreError::NotAllowed { .. })
    ));

    assert_eq!(s.start(j.id, t(4)).await.unwrap().attempts, 2);
    let timings = Timings {
        queue_ms: 1,
        acquire_ms: 2,
        run_ms: 3,
        total_ms: 6,
    };
    s.complete(j.id, &report(), timings, t(5)).await.unwrap();
    let done = s.get("alice", j.id).await.unwrap().unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(done.result, Some(report()));
    assert_eq!(done.timings, Some(timings));
    assert_eq!(
        (done.started_at, done.finished_at),
        (Some(t(4)), Some(t(5)))
    );
    assert!(matches!(
        s.complete(j.id, &report(), timings, t(6)).await,
        Err(StoreError::NotAllowed {
            current: JobStatus::Completed,
            action: "complete"
        })
    ));

    let missing = Uuid::now_v7();
    assert!(matches!(s.start(missing, t(0)).await, Err(StoreError::NotFound(id)) if id == missing));
    assert!(matches!(
        s.requeue(missing).await,
        Err(StoreError::NotFound(_))
    ));
}

#[tokio::test]
async fn cancel_semantics() {
    let (_d, s) = store();
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
    // A worker that dequeues a canceled job must lose.
    assert!(matches!(
        s.start(a.id, t(3)).await,
        Err(StoreError::NotAllowed {
            current: JobStatus::Canceled,
            action: "start"
        })
    ));

    s.start(b.id, t(4)).await.unwrap();
    assert_eq!(
        s.cancel("alice", b.id, t(5)).await.unwrap(),
        JobStatus::Running
    );
    // ... and so must the worker that was running it.
    assert!(matches!(
        s.complete(b.id, &report(), Timings::default(), t(6)).await,
        Err(StoreError::NotAllowed { .. })
    ));
    assert!(matches!(
        s.requeue(b.id).await,
        Err(StoreError::NotAllowed { .. })
    ));

    let c = job("alice", "python");
    s.insert(&c).await.unwrap();
    s.start(c.id, t(7)).await.unwrap();
    s.complete(c.id, &report(), Timings::default(), t(8))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_starts_have_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ignis.db");
    // Two stores on one file: two connections, so the CAS must hold across
    // SQLite's own locking, not just our mutex.
    let stores = [
        SqliteStore::open(&path).unwrap(),
        SqliteStore::open(&path).unwrap(),
    ];
    for round in 0..10 {
        let j = job("alice", "python");
        stores[0].insert(&j).await.unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let s = stores[i % 2].clone();
                tokio::spawn(async move { s.start(j.id, t(round)).await })
            })
            .collect();
        let mut wins = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(job) => {
                    assert_eq!(job.attempts, 1);
                    wins += 1;
                }
                Err(StoreError::NotAllowed {
                    current: JobStatus::Running,
                    action: "start",
                }) => {}
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert_eq!(wins, 1);
        assert_eq!(stores[1].get_any(j.id).await.unwrap().unwrap().attempts, 1);
    }
}

#[tokio::test]
async fn recover_requeues_or_fails_by_attempts() {
    let (_d, s) = store();
    let [fresh, retried, exhausted, queued, done] = [(); 5].map(|_| job("alice", "python"));
    for j in [&fresh, &retried, &exhausted, &queued, &done] {
        s.insert(j).await.unwrap();
    }
    s.start(fresh.id, t(0)).await.unwrap(); // 1 attempt
    for _ in 0..2 {
        s.start(retried.id, t(0)).await.unwrap();
        s.requeue(retried.id).await.unwrap();
    }
    s.start(retried.id, t(0)).await.unwrap(); // 3 attempts
    for _ in 0..3 {
        s.start(exhausted.id, t(0)).await.unwrap();
        s.requeue(exhausted.id).await.unwrap();
    }
    s.start(exhausted.id, t(0)).await.unwrap(); // 4 attempts
    s.start(done.id, t(0)).await.unwrap();
    s.complete(done.id, &report(), Timings::default(), t(1))
        .await
        .unwrap();

    let r = s.recover(4, t(10)).await.unwrap();
    assert_eq!(r.failed, vec![exhausted.id]);
    let expect: Vec<_> = [&fresh, &retried, &queued]
        .iter()
        .map(|j| (j.id, "python".to_owned()))
        .collect();
    assert_eq!(r.requeued, expect, "all queued jobs, oldest first");

    let back = s.get_any(retried.id).await.unwrap().unwrap();
    assert_eq!(
        (back.status, back.attempts, back.started_at),
        (JobStatus::Queued, 3, None)
    );
    let failed = s.get_any(exhausted.id).await.unwrap().unwrap();
    assert_eq!(
        (failed.status, failed.finished_at),
        (JobStatus::Completed, Some(t(10)))
    );
    let result = failed.result.unwrap();
    assert_eq!(result.status, Verdict::InternalError);
    assert_eq!(result.message.as_deref(), Some(RECOVER_FAILED_MESSAGE));
    assert_eq!(
        s.get_any(done.id).await.unwrap().unwrap().result,
        Some(report())
    );

    // Nothing running any more: a second recovery only lists the queue.
    let again = s.recover(4, t(11)).await.unwrap();
    assert_eq!((again.requeued, again.failed), (expect, vec![]));
}

#[tokio::test]
async fn keys_round_trip() {
    let (_d, s) = store();
    let key = ApiKey {
        id: "key_1".into(),
        name: "ci".into(),
        rate_per_sec: Some(10),
        max_queued: None,
        created_at: t(42),
    };
    s.create_key(&key, "hash-1").await.unwrap();
    assert_eq!(s.key_by_hash("hash-1").await.unwrap(), Some(key.clone()));
    assert_eq!(s.key_by_hash("hash-2").await.unwrap(), None);
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

#[tokio::test]
async fn reopening_keeps_data_and_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ignis.db");
    let j = job("alice", "rust");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.insert(&j).await.unwrap();
        s.start(j.id, t(1)).await.unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let got = s.get("alice", j.id).await.unwrap().unwrap();
    assert_eq!(
        (got.status, got.attempts, got.request),
        (JobStatus::Running, 1, j.request)
    );
    let conn = s.conn.lock().unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, MIGRATIONS.len() as i64);
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    drop(conn);

    // A file from a newer build is refused rather than misread.
    drop(s);
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    assert!(matches!(SqliteStore::open(&path), Err(StoreError::Backend(m)) if m.contains("newer")));
}
