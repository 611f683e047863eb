//! SQLite against the conformance suite, and what only SQLite has (the
//! file, its pragmas, its schema version).

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};

use super::*;
use crate::store::conformance::{conformance_tests, Fixture};

async fn open() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join("ignis.db");
    Fixture {
        a: Arc::new(SqliteStore::open(&path).unwrap()),
        b: Arc::new(SqliteStore::open(&path).unwrap()),
        _keep: Box::new(dir),
    }
}

conformance_tests!(open());

fn t(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_700_000_000_000 + ms).unwrap()
}

fn job(owner: &str, language: &str) -> Job {
    Job::new(
        owner.into(),
        language.into(),
        ignis_protocol::RunRequest {
            files: vec![],
            stdin: vec![],
            args: vec![],
            env: Default::default(),
            limits: Default::default(),
        },
        None,
    )
}

#[tokio::test]
async fn reopening_keeps_data_and_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ignis.db");
    let j = job("alice", "rust");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.insert(&j).await.unwrap();
        s.claim(j.id, false, 2, t(1)).await.unwrap();
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
