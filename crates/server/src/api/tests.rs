//! Handler tests with `oneshot` (no VMs): see the integration tests for real runs.
//!
//! Every test builds the real router over real services: a SQLite store in a
//! temporary directory, the in-process queue, and pools over a launcher whose
//! catalog holds one fake Python image. No worker runs and no pool refills,
//! so nothing ever boots: a job stays where the API put it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use ignis_vmm::accel::AccelChoice;
use ignis_vmm::image::{Catalog, ImageProblem, KernelImage, LanguageImage, Manifest};
use ignis_vmm::paths::Paths;
use ignis_vmm::{Accel, Launcher};
use serde_json::{json, Value};
use tempfile::TempDir;
use tower::ServiceExt;

use super::{app, AppState, BODY_LIMIT};
use crate::config::{PoolConfig, ServerConfig};
use crate::job::{JobId, JobStatus};
use crate::metrics::Metrics;
use crate::pool::Pools;
use crate::queue::memory::MemoryQueue;
use crate::state::Services;
use crate::store::sqlite::SqliteStore;
use crate::webhook::{RetryPolicy, WebhookSender};

const PROBLEM_JSON: &str = "application/problem+json";

/// A launcher that knows one language and can boot nothing: the kernel and
/// root filesystem paths do not exist, and nothing here asks for a boot.
fn fake_launcher(dir: &std::path::Path) -> Launcher {
    let python = LanguageImage {
        rootfs: dir.join("python/rootfs.ext4"),
        manifest: Manifest {
            language: "python".into(),
            version: "Python 3.11.2".into(),
            extensions: vec!["py".into()],
            source_file: "main.py".into(),
            compiled: false,
            vm_memory_mib: 512,
            rootfs_bytes: 0,
            key: "test".into(),
        },
    };
    Launcher {
        paths: Paths::new(dir),
        catalog: Catalog {
            dir: dir.join("images"),
            kernel: Err(ImageProblem {
                name: "kernel".into(),
                problem: "not built in unit tests".into(),
            }),
            languages: BTreeMap::from([("python".to_owned(), python)]),
            problems: vec![],
        },
        kernel: KernelImage {
            path: dir.join("vmlinux"),
            key: "test".into(),
        },
        accel: AccelChoice {
            accel: Accel::Tcg,
            reason: "unit test".into(),
        },
        boot_timeout: Duration::from_secs(1),
    }
}

/// The services behind one test's router, and the directory they live in.
struct Harness {
    _dir: TempDir,
    svc: Arc<Services>,
    state: AppState,
}

fn harness_with(tweak: impl FnOnce(&mut ServerConfig)) -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = ServerConfig::new(dir.path().to_path_buf());
    cfg.pool = PoolConfig {
        warm: 0,
        max_vms: 4,
        max_memory_mib: 4096,
    };
    tweak(&mut cfg);
    let store = SqliteStore::open(&dir.path().join("ignis.db")).expect("open store");
    let metrics = Arc::new(Metrics::new());
    metrics.add_language("python");
    let pools = Pools::new(fake_launcher(dir.path()), cfg.pool.clone(), metrics.clone());
    let webhooks = WebhookSender::new(
        b"secret".to_vec(),
        cfg.allow_private_webhooks,
        RetryPolicy::default(),
    );
    let svc = Arc::new(Services::new(
        cfg,
        Arc::new(store),
        Arc::new(MemoryQueue::new()),
        pools,
        metrics,
        webhooks,
    ));
    Harness {
        _dir: dir,
        state: AppState::new(svc.clone()),
        svc,
    }
}

fn harness() -> Harness {
    harness_with(|_| {})
}

/// What came back from one request.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(&name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .expect("ASCII header")
    }

    /// Asserts an RFC 9457 problem with this status and stable type.
    #[track_caller]
    fn assert_problem(&self, status: StatusCode, slug: &str) -> Value {
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
    fn assert_status(&self, status: StatusCode) -> &Self {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        self
    }
}

fn request(method: Method, uri: &str, key: Option<&str>, body: Option<Body>) -> Request<Body> {
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
    async fn send(&self, req: Request<Body>) -> Reply {
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

    async fn get(&self, uri: &str, key: Option<&str>) -> Reply {
        self.send(request(Method::GET, uri, key, None)).await
    }

    async fn delete(&self, uri: &str, key: Option<&str>) -> Reply {
        self.send(request(Method::DELETE, uri, key, None)).await
    }

    async fn post(&self, uri: &str, key: Option<&str>, body: &Value) -> Reply {
        let body = Body::from(serde_json::to_vec(body).expect("JSON"));
        self.send(request(Method::POST, uri, key, Some(body))).await
    }

    async fn post_raw(&self, key: Option<&str>, body: impl Into<Body>) -> Reply {
        self.send(request(Method::POST, "/v1/jobs", key, Some(body.into())))
            .await
    }

    /// A new API key's secret and id.
    async fn key(&self, rate_per_sec: Option<u32>, max_queued: Option<u32>) -> (String, String) {
        let (key, secret) = crate::keys::create(&*self.svc.store, "test", rate_per_sec, max_queued)
            .await
            .expect("create key");
        (secret, key.id)
    }

    /// Submits a valid job and returns its id.
    async fn submit(&self, key: &str) -> JobId {
        let r = self.post("/v1/jobs", Some(key), &hello()).await;
        r.assert_status(StatusCode::ACCEPTED);
        r.json()["id"].as_str().expect("id").parse().expect("uuid")
    }
}

fn hello() -> Value {
    json!({"language": "python", "code": "print('hello')"})
}

fn ids(list: &Value) -> Vec<String> {
    list["jobs"]
        .as_array()
        .expect("jobs array")
        .iter()
        .map(|j| j["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn requests_without_a_valid_key_get_401_problems() {
    let h = harness();
    let (key, _) = h.key(None, None).await;
    for uri in [
        "/v1/jobs",
        "/v1/languages",
        "/v1/jobs/0190c1d2-0000-7000-8000-000000000000",
    ] {
        h.get(uri, None)
            .await
            .assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
        h.get(uri, Some("ignis_not-a-real-key"))
            .await
            .assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
        // The right secret in the wrong scheme is still refused.
        let basic = Request::get(uri)
            .header(header::AUTHORIZATION, format!("Basic {key}"))
            .body(Body::empty())
            .expect("request");
        h.send(basic)
            .await
            .assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    h.post("/v1/jobs", None, &hello())
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(
        h.svc.queue.depth(),
        0,
        "an unauthenticated submission queued nothing"
    );
    h.get("/v1/jobs", Some(&key))
        .await
        .assert_status(StatusCode::OK);
}

#[tokio::test]
async fn dev_mode_needs_no_key_and_owns_jobs_as_dev() {
    let h = harness_with(|c| c.dev = true);
    let r = h.post("/v1/jobs", None, &hello()).await;
    r.assert_status(StatusCode::ACCEPTED);
    let id: JobId = r.json()["id"].as_str().expect("id").parse().expect("uuid");
    let stored = h
        .svc
        .store
        .get_any(id)
        .await
        .expect("store")
        .expect("stored");
    assert_eq!(stored.owner, super::auth::DEV_OWNER);
    let list = h.get("/v1/jobs", None).await;
    list.assert_status(StatusCode::OK);
    assert_eq!(ids(&list.json()), vec![id.to_string()]);
    h.get("/v1/languages", None)
        .await
        .assert_status(StatusCode::OK);
}

#[tokio::test]
async fn a_valid_job_is_accepted_stored_and_queued() {
    let h = harness();
    let (key, key_id) = h.key(None, None).await;
    let r = h
        .post(
            "/v1/jobs",
            Some(&key),
            &json!({
                "language": "python",
                "code": "print(input())",
                "stdin": "hi",
                "args": ["a"],
                "env": {"X": "1"},
                "limits": {"timeout_ms": 5000}
            }),
        )
        .await;
    r.assert_status(StatusCode::ACCEPTED);
    let view = r.json();
    let id: JobId = view["id"].as_str().expect("id").parse().expect("uuid");
    assert_eq!(r.header(header::LOCATION), format!("/v1/jobs/{id}"));
    assert_eq!(view["status"], "queued");
    assert_eq!(view["language"], "python");
    assert_eq!(view["attempts"], 0);
    assert!(
        view["result"].is_null() && view["started_at"].is_null(),
        "{view}"
    );

    let job = h
        .svc
        .store
        .get(&key_id, id)
        .await
        .expect("store")
        .expect("stored for its owner");
    assert_eq!(job.status, JobStatus::Queued);
    assert_eq!(job.request.files.len(), 1);
    assert_eq!(
        job.request.files[0].name, "main.py",
        "code becomes the image's source file"
    );
    assert_eq!(job.request.files[0].content, b"print(input())");
    assert_eq!(job.request.stdin, b"hi");
    assert_eq!(job.request.args, vec!["a".to_owned()]);
    assert_eq!(job.request.limits.timeout_ms, 5000);
    assert_eq!(
        job.request.limits.memory_mib,
        h.svc.config.defaults.memory_mib
    );

    assert_eq!(h.svc.queue.depth(), 1);
    let queued = h.svc.queue.pop().await.expect("queued");
    assert_eq!((queued.id, queued.language.as_str()), (id, "python"));

    let got = h.get(&format!("/v1/jobs/{id}"), Some(&key)).await;
    got.assert_status(StatusCode::OK);
    assert_eq!(got.json()["id"], id.to_string());
    assert_eq!(got.json()["status"], "queued");
}

#[tokio::test]
async fn files_with_base64_content_are_decoded() {
    let h = harness();
    let (key, key_id) = h.key(None, None).await;
    let r = h
        .post(
            "/v1/jobs",
            Some(&key),
            &json!({"language": "python", "files": [
                {"name": "main.py", "content": "aW1wb3J0IHV0aWw=", "encoding": "base64"},
                {"name": "util.py", "content": "X = 1"}
            ]}),
        )
        .await;
    r.assert_status(StatusCode::ACCEPTED);
    let id: JobId = r.json()["id"].as_str().expect("id").parse().expect("uuid");
    let job = h
        .svc
        .store
        .get(&key_id, id)
        .await
        .expect("store")
        .expect("stored");
    let files: Vec<(&str, &[u8])> = job
        .request
        .files
        .iter()
        .map(|f| (f.name.as_str(), f.content.as_slice()))
        .collect();
    assert_eq!(
        files,
        vec![("main.py", &b"import util"[..]), ("util.py", &b"X = 1"[..])]
    );
}

#[tokio::test]
async fn query_parameters_are_checked() {
    let h = harness();
    let (key, _) = h.key(None, None).await;
    for q in ["wait=soon", "wait=", "hurry=true"] {
        h.post(&format!("/v1/jobs?{q}"), Some(&key), &hello())
            .await
            .assert_problem(StatusCode::BAD_REQUEST, "invalid-query");
    }
    assert_eq!(h.svc.queue.depth(), 0, "a refused request queued nothing");
}

/// With no worker, `?wait=true` holds the answer for `wait_max` and then
/// answers 202 with the job still queued. The clock is paused, so the wait
/// takes no real time.
#[tokio::test(start_paused = true)]
async fn wait_gives_up_after_wait_max_with_a_202() {
    let h = harness_with(|c| c.wait_max = Duration::from_secs(30));
    let (key, _) = h.key(None, None).await;
    let before = tokio::time::Instant::now();
    let r = h.post("/v1/jobs?wait=true", Some(&key), &hello()).await;
    r.assert_status(StatusCode::ACCEPTED);
    assert_eq!(r.json()["status"], "queued");
    assert!(r.headers.contains_key(header::LOCATION));
    assert!(
        before.elapsed() >= Duration::from_secs(30),
        "the answer was held for wait_max (virtual time)"
    );
}

#[tokio::test]
async fn invalid_submissions_are_refused_with_stable_types() {
    let h = harness();
    let (key, _) = h.key(None, None).await;
    let cases = [
        (
            json!({"language": "python", "code": "", "extra": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
        ),
        (
            json!({"language": "python", "code": 5}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
        ),
        (
            json!({"code": "print(1)"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
        ),
        (
            json!({"language": "cobol", "code": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown-language",
        ),
        (
            json!({"language": "python"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-request",
        ),
        (
            json!({"language": "python", "code": "x", "files": [{"name": "a.py", "content": ""}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-request",
        ),
        (
            json!({"language": "python", "files": []}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-file",
        ),
        (
            json!({"language": "python", "files": [{"name": "../etc/passwd", "content": ""}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-file",
        ),
        (
            json!({"language": "python", "files": [{"name": "a.py", "content": ""}, {"name": "a.py", "content": ""}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-file",
        ),
        (
            json!({"language": "python", "files": [{"name": "a.py", "content": "!!", "encoding": "base64"}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-encoding",
        ),
        (
            json!({"language": "python", "code": "", "env": {"A=B": "c"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-env",
        ),
        (
            json!({"language": "python", "code": "", "args": ["a\u{0}b"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-args",
        ),
        (
            json!({"language": "python", "code": "", "limits": {"timeout_ms": 0}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "limit-too-low",
        ),
        (
            json!({"language": "python", "code": "", "webhook_url": "http://127.0.0.1:8080/hook"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "webhook-refused",
        ),
        (
            json!({"language": "python", "code": "", "webhook_url": "http://169.254.169.254/latest"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "webhook-refused",
        ),
        (
            json!({"language": "python", "code": "", "webhook_url": "file:///etc/passwd"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "webhook-refused",
        ),
    ];
    for (body, status, slug) in cases {
        let r = h.post("/v1/jobs", Some(&key), &body).await;
        assert_eq!(
            r.status,
            status,
            "{body}: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.assert_problem(status, slug);
    }
    h.post_raw(Some(&key), "{\"language\": \"python\", ")
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "malformed-json");
    let no_type = Request::post("/v1/jobs")
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .body(Body::from(hello().to_string()))
        .expect("request");
    h.send(no_type)
        .await
        .assert_problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type");

    assert_eq!(h.svc.queue.depth(), 0, "nothing refused was queued");
    let list = h.get("/v1/jobs", Some(&key)).await;
    assert!(ids(&list.json()).is_empty(), "nothing refused was stored");
}

#[tokio::test]
async fn limits_above_the_maxima_are_refused_not_clamped() {
    let h = harness();
    let (key, _) = h.key(None, None).await;
    let m = h.svc.config.maxima;
    let over = [
        ("timeout_ms", json!(m.timeout_ms + 1)),
        // The fake image has 512 MiB; the guest keeps 64 of them.
        ("memory_mib", json!(512 - 64 + 1)),
        ("max_output_kib", json!(m.max_output_kib + 1)),
        ("max_processes", json!(m.max_processes + 1)),
    ];
    for (name, value) in over {
        let body = json!({"language": "python", "code": "", "limits": {name: value}});
        let p = h
            .post("/v1/jobs", Some(&key), &body)
            .await
            .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "limit-exceeded");
        assert!(
            p["detail"].as_str().is_some_and(|d| d.contains(name)),
            "{p}"
        );
    }
    // Exactly at the maximum is fine, and kept as asked.
    let body = json!({"language": "python", "code": "", "limits": {"timeout_ms": m.timeout_ms}});
    let r = h.post("/v1/jobs", Some(&key), &body).await;
    r.assert_status(StatusCode::ACCEPTED);
    assert_eq!(h.svc.queue.depth(), 1);
}

#[tokio::test]
async fn code_over_the_size_limit_is_413() {
    let h = harness();
    let (key, _) = h.key(None, None).await;
    let max = h.svc.config.maxima.code_bytes;
    let code = "#".repeat(max + 1);
    h.post(
        "/v1/jobs",
        Some(&key),
        &json!({"language": "python", "code": code}),
    )
    .await
    .assert_problem(StatusCode::PAYLOAD_TOO_LARGE, "code-too-large");
    // Two files that are each small but together too big count as one program.
    let half = "#".repeat(max / 2 + 1);
    let files = json!([{"name": "a.py", "content": half}, {"name": "b.py", "content": half}]);
    h.post(
        "/v1/jobs",
        Some(&key),
        &json!({"language": "python", "files": files}),
    )
    .await
    .assert_problem(StatusCode::PAYLOAD_TOO_LARGE, "code-too-large");
    let code = "#".repeat(max);
    h.post(
        "/v1/jobs",
        Some(&key),
        &json!({"language": "python", "code": code}),
    )
    .await
    .assert_status(StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_body_over_the_body_limit_is_413() {
    let h = harness();
    let (key, _) = h.key(None, None).await;
    // Well-formed JSON, so only its size can be the problem.
    let body = json!({"language": "python", "code": "x", "stdin": "a".repeat(BODY_LIMIT)});
    h.post("/v1/jobs", Some(&key), &body)
        .await
        .assert_problem(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large");
    assert_eq!(h.svc.queue.depth(), 0);
}

#[tokio::test]
async fn bad_job_ids_are_400() {
    let h = harness();
    let (key, _) = h.key(None, None).await;
    for uri in ["/v1/jobs/not-a-uuid", "/v1/jobs/123/events"] {
        h.get(uri, Some(&key))
            .await
            .assert_problem(StatusCode::BAD_REQUEST, "invalid-id");
    }
    h.delete("/v1/jobs/zzz", Some(&key))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "invalid-id");
    h.get("/v1/jobs?cursor=zzz", Some(&key))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "invalid-id");
    // Well-formed but unknown.
    let missing = uuid::Uuid::now_v7();
    h.get(&format!("/v1/jobs/{missing}"), Some(&key))
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not-found");
}

#[tokio::test]
async fn another_keys_job_is_not_found() {
    let h = harness();
    let (alice, alice_id) = h.key(None, None).await;
    let (bob, _) = h.key(None, None).await;
    let id = h.submit(&alice).await;
    for uri in [format!("/v1/jobs/{id}"), format!("/v1/jobs/{id}/events")] {
        h.get(&uri, Some(&bob))
            .await
            .assert_problem(StatusCode::NOT_FOUND, "not-found");
    }
    h.delete(&format!("/v1/jobs/{id}"), Some(&bob))
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not-found");
    assert!(ids(&h.get("/v1/jobs", Some(&bob)).await.json()).is_empty());
    // Bob's DELETE changed nothing.
    let job = h
        .svc
        .store
        .get(&alice_id, id)
        .await
        .expect("store")
        .expect("stored");
    assert_eq!(job.status, JobStatus::Queued);
    assert_eq!(
        ids(&h.get("/v1/jobs", Some(&alice)).await.json()),
        vec![id.to_string()]
    );
}

#[tokio::test]
async fn the_list_pages_newest_first_and_filters() {
    let h = harness();
    let (key, _) = h.key(None, None).await;
    let (other, _) = h.key(None, None).await;
    h.submit(&other).await;
    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(h.submit(&key).await.to_string());
    }
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();

    let mut seen = Vec::new();
    let mut uri = "/v1/jobs?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let r = h.get(&uri, Some(&key)).await;
        r.assert_status(StatusCode::OK);
        let page = r.json();
        let page_ids = ids(&page);
        assert!(page_ids.len() <= 2, "{page}");
        seen.extend(page_ids);
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => uri = format!("/v1/jobs?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen, newest_first,
        "every job once, newest first, none of another key's"
    );

    let canceled = &created[1];
    h.delete(&format!("/v1/jobs/{canceled}"), Some(&key))
        .await
        .assert_status(StatusCode::OK);
    let by = |q: &'static str| {
        let h = &h;
        let key = &key;
        async move {
            let r = h.get(&format!("/v1/jobs?{q}"), Some(key)).await;
            r.assert_status(StatusCode::OK);
            ids(&r.json())
        }
    };
    assert_eq!(by("status=canceled").await, vec![canceled.clone()]);
    let queued: Vec<String> = newest_first
        .iter()
        .filter(|i| *i != canceled)
        .cloned()
        .collect();
    assert_eq!(by("status=queued").await, queued);
    assert_eq!(by("status=queued&limit=1").await, queued[..1].to_vec());
    assert!(by("status=completed").await.is_empty());
    assert_eq!(by("language=python").await, newest_first);
    assert!(by("language=go").await.is_empty());
    assert_eq!(by("limit=100").await, newest_first);

    for q in [
        "status=done",
        "limit=0",
        "limit=101",
        "limit=-1",
        "sort=asc",
    ] {
        h.get(&format!("/v1/jobs?{q}"), Some(&key))
            .await
            .assert_problem(StatusCode::BAD_REQUEST, "invalid-query");
    }
}

#[tokio::test]
async fn deleting_a_queued_job_cancels_it_once() {
    let h = harness();
    let (key, _) = h.key(None, None).await;
    let id = h.submit(&key).await;
    let r = h.delete(&format!("/v1/jobs/{id}"), Some(&key)).await;
    r.assert_status(StatusCode::OK);
    let view = r.json();
    assert_eq!(view["status"], "canceled");
    assert!(view["finished_at"].is_string(), "{view}");
    assert!(
        view["result"].is_null(),
        "a job that never ran has no result: {view}"
    );

    let p = h
        .delete(&format!("/v1/jobs/{id}"), Some(&key))
        .await
        .assert_problem(StatusCode::CONFLICT, "job-finished");
    assert!(
        p["detail"].as_str().is_some_and(|d| d.contains("canceled")),
        "{p}"
    );
    assert_eq!(
        h.get(&format!("/v1/jobs/{id}"), Some(&key)).await.json()["status"],
        "canceled"
    );
    // The queue still carries the id (it only carries ids), but the store,
    // which a worker asks first, no longer lets it start.
    let err = h
        .svc
        .store
        .start(id, chrono::Utc::now())
        .await
        .expect_err("canceled");
    assert!(
        matches!(err, crate::store::StoreError::NotAllowed { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn canceling_a_queued_job_is_counted_in_metrics() {
    let h = harness();
    let (key, _) = h.key(None, None).await;
    let id = h.submit(&key).await;
    h.delete(&format!("/v1/jobs/{id}"), Some(&key))
        .await
        .assert_status(StatusCode::OK);
    let text = String::from_utf8(h.get("/metrics", None).await.body.to_vec()).expect("UTF-8");
    assert!(
        text.lines()
            .any(|l| l == "ignis_jobs_total{verdict=\"canceled\"} 1"),
        "{text}"
    );
}

/// Events of a job that is live here: the history so far, then what
/// happens next, and the stream ends after the `result` event.
#[tokio::test]
async fn events_stream_history_then_the_final_result() {
    let h = harness();
    let (key, _) = h.key(None, None).await;
    let id = h.submit(&key).await;
    let res = app(h.state.clone())
        .oneshot(request(
            Method::GET,
            &format!("/v1/jobs/{id}/events"),
            Some(&key),
            None,
        ))
        .await
        .expect("infallible");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    // The stream is open and subscribed; the cancel below is its next event.
    h.delete(&format!("/v1/jobs/{id}"), Some(&key))
        .await
        .assert_status(StatusCode::OK);
    let text = String::from_utf8(
        res.into_body()
            .collect()
            .await
            .expect("ends")
            .to_bytes()
            .to_vec(),
    )
    .expect("UTF-8");
    let events = parse_sse(&text);
    assert_eq!(events.len(), 2, "{text}");
    assert_eq!(events[0].0, "status");
    assert_eq!(events[0].1, json!({"status": "queued"}));
    assert_eq!(events[1].0, "result");
    assert_eq!(events[1].1["id"], id.to_string());
    assert_eq!(events[1].1["status"], "canceled");

    // After the end, a new subscriber gets the final word from the store.
    let late = h.get(&format!("/v1/jobs/{id}/events"), Some(&key)).await;
    late.assert_status(StatusCode::OK);
    let events = parse_sse(std::str::from_utf8(&late.body).expect("UTF-8"));
    let names: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names, ["status", "result"]);
    assert_eq!(events[0].1, json!({"status": "canceled"}));
    assert_eq!(events[1].1["status"], "canceled");
}

/// `(event, data)` pairs of a complete SSE body.
fn parse_sse(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut event = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = Some(serde_json::from_str(v.trim()).expect("JSON data"));
                }
            }
            Some((event?, data?))
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_key_over_its_rate_gets_429_with_retry_after() {
    let h = harness();
    let (key, _) = h.key(Some(2), None).await;
    let (unlimited, _) = h.key(None, None).await;
    for _ in 0..2 {
        h.get("/v1/jobs", Some(&key))
            .await
            .assert_status(StatusCode::OK);
    }
    let r = h.get("/v1/jobs", Some(&key)).await;
    r.assert_problem(StatusCode::TOO_MANY_REQUESTS, "rate-limited");
    assert_eq!(r.header(header::RETRY_AFTER), "1");
    // Submissions count against the same budget.
    h.post("/v1/jobs", Some(&key), &hello())
        .await
        .assert_problem(StatusCode::TOO_MANY_REQUESTS, "rate-limited");
    assert_eq!(h.svc.queue.depth(), 0);
    // Other keys are not affected.
    for _ in 0..5 {
        h.get("/v1/jobs", Some(&unlimited))
            .await
            .assert_status(StatusCode::OK);
    }
    // Half a second buys one token at 2/s.
    tokio::time::advance(Duration::from_millis(500)).await;
    h.get("/v1/jobs", Some(&key))
        .await
        .assert_status(StatusCode::OK);
    h.get("/v1/jobs", Some(&key))
        .await
        .assert_problem(StatusCode::TOO_MANY_REQUESTS, "rate-limited");
}

#[tokio::test]
async fn a_key_at_max_queued_gets_429_until_one_leaves_the_queue() {
    let h = harness();
    let (key, _) = h.key(None, Some(2)).await;
    let first = h.submit(&key).await;
    h.submit(&key).await;
    let r = h.post("/v1/jobs", Some(&key), &hello()).await;
    r.assert_problem(StatusCode::TOO_MANY_REQUESTS, "rate-limited");
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    assert_eq!(h.svc.queue.depth(), 2);
    // Another key has its own allowance.
    let (other, _) = h.key(None, Some(1)).await;
    h.submit(&other).await;
    h.delete(&format!("/v1/jobs/{first}"), Some(&key))
        .await
        .assert_status(StatusCode::OK);
    h.submit(&key).await;
}

#[tokio::test]
async fn a_draining_server_refuses_new_jobs_with_503() {
    let h = harness();
    let (key, _) = h.key(None, None).await;
    h.svc.draining.store(true, Ordering::SeqCst);
    h.post("/v1/jobs", Some(&key), &hello())
        .await
        .assert_problem(StatusCode::SERVICE_UNAVAILABLE, "shutting-down");
    assert_eq!(h.svc.queue.depth(), 0);
    assert_eq!(h.get("/healthz", None).await.json()["status"], "draining");
}

#[tokio::test]
async fn health_needs_no_key_and_reports_the_catalog() {
    let h = harness();
    let (key, _) = h.key(None, None).await;
    h.submit(&key).await;
    let r = h.get("/healthz", None).await;
    r.assert_status(StatusCode::OK);
    let health = r.json();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["accel"], "tcg");
    assert_eq!(health["languages"], json!(["python"]));
    assert_eq!(health["queue_depth"], 1);
}

#[tokio::test]
async fn languages_lists_the_catalog_with_its_pools() {
    let h = harness();
    let (key, _) = h.key(None, None).await;
    let r = h.get("/v1/languages", Some(&key)).await;
    r.assert_status(StatusCode::OK);
    assert_eq!(
        r.json(),
        json!([{
            "name": "python",
            "version": "Python 3.11.2",
            "extensions": ["py"],
            "compiled": false,
            "source_file": "main.py",
            "pool": {"ready": 0, "booting": 0, "target": 0, "warm": false}
        }])
    );
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_the_queue_and_job_series() {
    let h = harness();
    let (key, _) = h.key(None, None).await;
    h.submit(&key).await;
    h.submit(&key).await;
    let r = h.get("/metrics", None).await;
    r.assert_status(StatusCode::OK);
    assert!(
        r.header(header::CONTENT_TYPE).starts_with("text/plain"),
        "{:?}",
        r.headers
    );
    let text = String::from_utf8(r.body.to_vec()).expect("UTF-8");
    let line = |l: &str| text.lines().any(|x| x == l);
    assert!(line("ignis_queue_depth 2"), "{text}");
    assert!(line("ignis_jobs_submitted_total 2"), "{text}");
    assert!(line("ignis_jobs_total{verdict=\"ok\"} 0"), "{text}");
    assert!(text.contains("# TYPE ignis_jobs_total counter"), "{text}");
    assert!(line("ignis_pool_ready{language=\"python\"} 0"), "{text}");
}

#[tokio::test]
async fn http_responses_are_counted_by_status_class() {
    let h = harness();
    h.get("/v1/jobs", None)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    h.get("/healthz", None).await.assert_status(StatusCode::OK);
    let text = String::from_utf8(h.get("/metrics", None).await.body.to_vec()).expect("UTF-8");
    let line = |l: &str| text.lines().any(|x| x == l);
    assert!(
        line("ignis_http_requests_total{status_class=\"4xx\"} 1"),
        "{text}"
    );
    assert!(
        line("ignis_http_requests_total{status_class=\"2xx\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn the_openapi_document_describes_the_api() {
    let h = harness();
    let r = h.get("/openapi.json", None).await;
    r.assert_status(StatusCode::OK);
    let doc = r.json();
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{doc}"
    );
    let paths = doc["paths"].as_object().expect("paths");
    for p in [
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/events",
        "/v1/languages",
        "/healthz",
        "/metrics",
    ] {
        assert!(
            paths.contains_key(p),
            "{p} missing from {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }
    assert!(paths["/v1/jobs"]["post"].is_object() && paths["/v1/jobs"]["get"].is_object());
    assert!(paths["/v1/jobs/{id}"]["delete"].is_object());
    assert!(doc["components"]["schemas"]["JobView"].is_object());
    assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
}

#[tokio::test]
async fn unknown_routes_are_404_problems() {
    let h = harness();
    let (key, _) = h.key(None, None).await;
    for uri in ["/", "/v2/jobs", "/v1/jobs/x/y/z"] {
        h.get(uri, Some(&key))
            .await
            .assert_problem(StatusCode::NOT_FOUND, "not-found");
    }
}
