//! PostgreSQL against the conformance suite, on a real server started for
//! these tests, and what only PostgreSQL has: versioned migrations shared
//! by processes, and a server that goes away and comes back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use ignis_testkit::Postgres;

use super::*;
use crate::store::conformance::{conformance_tests, Fixture};

async fn open() -> Fixture {
    let pg = Postgres::shared();
    let url = pg.database();
    Fixture {
        a: Arc::new(PostgresStore::connect(&url).await.expect("connect")),
        b: Arc::new(PostgresStore::connect(&url).await.expect("connect again")),
        _keep: Box::new(pg),
    }
}

conformance_tests!(open());

fn job() -> Job {
    Job::new(
        "alice".into(),
        "python".into(),
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
async fn migrations_run_once_and_a_newer_schema_is_refused() {
    let pg = Postgres::shared();
    let url = pg.database();
    // Processes starting together: each migrates or finds it done.
    let (a, b) = tokio::join!(PostgresStore::connect(&url), PostgresStore::connect(&url));
    let (a, _b) = (a.expect("first"), b.expect("second"));
    assert_eq!(a.schema_version().await.unwrap(), MIGRATIONS.len());
    let c = a.client().await.unwrap();
    c.execute("INSERT INTO schema_migrations (version) VALUES (99)", &[])
        .await
        .unwrap();
    let err = PostgresStore::connect(&url)
        .await
        .expect_err("newer schema");
    assert!(err.to_string().contains("newer"), "{err}");
}

/// A cluster of its own, since this test stops it.
#[tokio::test]
async fn an_outage_is_unavailable_then_the_store_reconnects() {
    let mut pg = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let url = pg.database();
    let s = PostgresStore::connect(&url).await.expect("connect");
    let j = job();
    s.insert(&j).await.unwrap();
    let mut pg = tokio::task::spawn_blocking(move || {
        pg.pause();
        pg
    })
    .await
    .unwrap();
    let err = s.get_any(j.id).await.expect_err("server away");
    assert!(err.is_retryable(), "{err:?}");
    assert!(s.ping().await.is_err());
    let pg = tokio::task::spawn_blocking(move || {
        pg.resume();
        pg
    })
    .await
    .unwrap();
    assert_eq!(s.get_any(j.id).await.unwrap().map(|g| g.id), Some(j.id));
    s.ping().await.unwrap();
    drop(pg);
}

/// A row written before outputs had columns of their own keeps them in the
/// result's JSON; they still read back.
#[tokio::test]
async fn results_from_before_the_output_columns_still_read() {
    let pg = Postgres::shared();
    let s = PostgresStore::connect(&pg.database())
        .await
        .expect("connect");
    let j = job();
    s.insert(&j).await.unwrap();
    let mut old = RunReport::internal_error("x", None);
    old.stdout = "old \u{1}é\n".into();
    old.stderr = "warn\n".into();
    let result = serde_json::to_string(&old).unwrap();
    let c = s.client().await.unwrap();
    let sql = "UPDATE jobs SET status = 'completed', result = $2, stdout = NULL, stderr = NULL \
               WHERE id = $1";
    c.execute(sql, &[&j.id, &result]).await.unwrap();
    let got = s.get_any(j.id).await.unwrap().unwrap().result.unwrap();
    assert_eq!(
        (got.stdout.as_slice(), got.stderr.as_slice()),
        ("old \u{1}é\n".as_bytes(), &b"warn\n"[..])
    );
}
