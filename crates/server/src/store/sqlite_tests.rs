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

/// 3 MB of `\x01` (six bytes each once JSON-escaped) takes about 3 MB in
/// the row, not 18.
#[tokio::test]
async fn outputs_are_stored_as_bytes_at_their_size() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("ignis.db")).unwrap();
    let j = job("alice", "c");
    s.insert(&j).await.unwrap();
    s.claim(j.id, false, 2, t(1)).await.unwrap();
    let raw = vec![0x01u8; 3 * 1024 * 1024];
    let mut r = ignis_vmm::RunReport::internal_error("x", None);
    r.stdout = raw.clone();
    s.complete(j.id, 1, &r, Timings::default(), t(2))
        .await
        .unwrap();
    let sql = "SELECT length(result) + length(stdout) + length(stderr), typeof(stdout) FROM jobs";
    let (stored, kind): (i64, String) = {
        let conn = s.conn.lock().unwrap();
        conn.query_row(sql, [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
    };
    assert_eq!(kind, "blob");
    let stored = stored as f64;
    assert!(
        stored < raw.len() as f64 * 1.01,
        "{stored} bytes stored for {} bytes of output",
        raw.len()
    );
    let got = s.get_any(j.id).await.unwrap().unwrap();
    assert!(got.result.unwrap().stdout == raw, "bytes round-trip");
}

/// A database written before outputs had columns of their own: its results
/// read back as before, and the outputs moved out of the JSON.
#[tokio::test]
async fn results_from_before_the_output_columns_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ignis.db");
    let j = job("alice", "python");
    {
        let mut conn = Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        tx.execute_batch(MIGRATIONS[0]).unwrap();
        tx.execute_batch(MIGRATIONS[1]).unwrap();
        tx.pragma_update(None, "user_version", 2).unwrap();
        tx.commit().unwrap();
        let mut old = ignis_vmm::RunReport::internal_error("x", None);
        old.stdout = "old \u{1}\u{0}é\n".into();
        old.stderr = "warn\n".into();
        let result = serde_json::to_string(&old).unwrap();
        assert!(result.contains("\\u0001"), "the old layout: {result}");
        let sql = "INSERT INTO jobs (id, owner, language, status, request, result, created_at, \
                   attempts) VALUES (?1, 'alice', 'python', 'completed', ?2, ?3, 0, 1)";
        let request = serde_json::to_string(&j.request).unwrap();
        conn.execute(sql, params![j.id.to_string(), request, result])
            .unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let got = s.get("alice", j.id).await.unwrap().unwrap().result.unwrap();
    assert_eq!(
        (got.stdout.as_slice(), got.stderr.as_slice()),
        ("old \u{1}\u{0}é\n".as_bytes(), &b"warn\n"[..])
    );
    let conn = s.conn.lock().unwrap();
    let left: String = conn
        .query_row("SELECT result FROM jobs", [], |r| r.get(0))
        .unwrap();
    assert!(!left.contains("old"), "outputs left the JSON: {left}");
}

/// Another process holding the write lock past the busy timeout is a
/// moment, not a broken database: the error says "try again".
#[tokio::test]
async fn a_locked_database_is_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ignis.db");
    let s = SqliteStore::open(&path).unwrap();
    let other = Connection::open(&path).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let err = s.insert(&job("alice", "c")).await.expect_err("locked");
    assert!(err.is_retryable(), "{err:?}");
    other.execute_batch("COMMIT").unwrap();
    s.insert(&job("alice", "c")).await.expect("free again");
}
