//! Handler tests with `oneshot` (no VMs): see the integration tests for real runs.
//!
//! Every test builds the real router over real services: a SQLite store in a
//! temporary directory, the in-process queue, and pools over a launcher whose
//! catalog holds one fake Python image. No worker runs and no pool refills,
//! so nothing ever boots: a job stays where the API put it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
pub(super) use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use ignis_vmm::driver::fake::FakeDriver;
use serde_json::{json, Value};
use tempfile::TempDir;
use tower::ServiceExt;

use super::{app, AppState, BODY_LIMIT};
use crate::config::{PoolConfig, ServerConfig};
use crate::job::{JobId, JobStatus};
use crate::state::Services;
use crate::store::sqlite::SqliteStore;

pub(super) const PROBLEM_JSON: &str = "application/problem+json";

/// The services behind one test's router, and the directory they live in.
pub(super) struct Harness {
    _dir: TempDir,
    svc: Arc<Services>,
    state: AppState,
}

pub(super) fn harness_with(tweak: impl FnOnce(&mut ServerConfig)) -> Harness {
    harness_of(|dir| vec![crate::test_kit::python_image(dir)], tweak)
}

/// A harness whose catalog holds the images `images` makes in its directory.
pub(super) fn harness_of(
    images: impl FnOnce(&std::path::Path) -> Vec<ignis_vmm::image::LanguageImage>,
    tweak: impl FnOnce(&mut ServerConfig),
) -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = ServerConfig::new(dir.path().to_path_buf());
    cfg.pool = PoolConfig {
        warm: 0,
        max_vms: 4,
        max_memory_mib: 4096,
    };
    // Tests make many requests quickly; `sharing.rs` tests the defaults.
    cfg.key_defaults = crate::keys::Allowance::UNLIMITED;
    tweak(&mut cfg);
    let store = SqliteStore::open(&dir.path().join("ignis.db")).expect("open store");
    let svc = crate::embedded::assemble(
        cfg,
        crate::test_kit::fake_launcher_with(dir.path(), FakeDriver::default(), images(dir.path())),
        Arc::new(store),
        b"secret".to_vec(),
    );
    Harness {
        _dir: dir,
        state: AppState::new(svc.clone()),
        svc,
    }
}

pub(super) fn harness() -> Harness {
    harness_with(|_| {})
}

/// What came back from one request.
#[derive(Debug)]
pub(super) struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    pub(super) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub(super) fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(&name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .expect("ASCII header")
    }

    /// Asserts an RFC 9457 problem with this status and stable type.
    #[track_caller]
    pub(super) fn assert_problem(&self, status: StatusCode, slug: &str) -> Value {
        assert_eq!(
            self.status,
            status,
            "expected {status} {slug}, got: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.header(header::CONTENT_TYPE), PROBLEM_JSON);
        let p = self.json();
        assert_eq!(p["type"], format!("urn:ignis:problem:{slug}"), "{p}");
        assert_eq!(p["status"], status.as_u16(), "{p}");
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "{p}");
        assert!(p["detail"].as_str().is_some_and(|d| !d.is_empty()), "{p}");
        p
    }

    #[track_caller]
    pub(super) fn assert_status(&self, status: StatusCode) -> &Self {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        self
    }
}

pub(super) fn request(
    method: Method,
    uri: &str,
    key: Option<&str>,
    body: Option<Body>,
) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(key) = key {
        b = b.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    match body {
        Some(body) => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(body),
        None => b.body(Body::empty()),
    }
    .expect("valid request")
}

impl Harness {
    pub(super) async fn send(&self, req: Request<Body>) -> Reply {
        let res = app(self.state.clone())
            .oneshot(req)
            .await
            .expect("infallible router");
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.expect("body").to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub(super) async fn get(&self, uri: &str, key: Option<&str>) -> Reply {
        self.send(request(Method::GET, uri, key, None)).await
    }

    pub(super) async fn delete(&self, uri: &str, key: Option<&str>) -> Reply {
        self.send(request(Method::DELETE, uri, key, None)).await
    }

    pub(super) async fn post(&self, uri: &str, key: Option<&str>, body: &Value) -> Reply {
        let body = Body::from(serde_json::to_vec(body).expect("JSON"));
        self.send(request(Method::POST, uri, key, Some(body))).await
    }

    pub(super) async fn post_raw(&self, key: Option<&str>, body: impl Into<Body>) -> Reply {
        self.send(request(Method::POST, "/v1/jobs", key, Some(body.into())))
            .await
    }

    /// A new API key's secret and id.
    pub(super) async fn key(
        &self,
        rate_per_sec: Option<u32>,
        max_queued: Option<u32>,
    ) -> (String, String) {
        let (key, secret) = crate::keys::create(&*self.svc.store, "test", rate_per_sec, max_queued)
            .await
            .expect("create key");
        (secret, key.id)
    }

    /// Submits a valid job and returns its id.
    pub(super) async fn submit(&self, key: &str) -> JobId {
        let r = self.post("/v1/jobs", Some(key), &hello()).await;
        r.assert_status(StatusCode::ACCEPTED);
        r.json()["id"].as_str().expect("id").parse().expect("uuid")
    }
}

impl Harness {
    /// Plays a worker for the next queued job: claims it, ends it with `r`
    /// and publishes its end. Yields the job as it was submitted.
    pub(super) fn play_worker(
        &self,
        r: ignis_vmm::RunReport,
    ) -> tokio::task::JoinHandle<crate::job::Job> {
        let svc = self.svc.clone();
        tokio::spawn(async move {
            let delivery = svc.queue.pop().await.expect("queued");
            let id = delivery.job.id;
            let now = chrono::Utc::now();
            let claimed = svc.store.claim(id, false, 2, now).await.expect("claim");
            let crate::store::Claimed::Run(job) = claimed else {
                panic!("job {id} not claimed: {claimed:?}");
            };
            let t = crate::job::Timings::default();
            svc.store
                .complete(id, job.attempts, &r, t, now)
                .await
                .expect("complete");
            crate::service::finish(&svc, id).await;
            job
        })
    }
}

pub(super) fn hello() -> Value {
    json!({"language": "python", "code": "print('hello')"})
}

pub(super) fn ids(list: &Value) -> Vec<String> {
    list["jobs"]
        .as_array()
        .expect("jobs array")
        .iter()
        .map(|j| j["id"].as_str().expect("id").to_owned())
        .collect()
}

mod access;
mod judge0;
mod output;
mod piston;
mod playground;
mod service;
mod sharing;
mod submit;
