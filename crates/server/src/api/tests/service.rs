//! The service around the jobs: draining, health, languages, metrics, OpenAPI, routing.

use super::*;

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
    assert_eq!(health["driver"], "fake");
    assert_eq!(health["snapshots"], true);
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
    // What every keyed operation can answer is documented, with the type
    // problems really have (tests/schema.rs checks this against the server).
    let get = &paths["/v1/jobs/{id}"]["get"]["responses"];
    for status in ["400", "401", "404", "429", "503"] {
        assert!(
            get[status]["content"][PROBLEM_JSON].is_object(),
            "{status}: {get}"
        );
    }
    assert_eq!(
        paths["/v1/jobs/{id}"]["get"]["parameters"][0]["schema"]["format"],
        "uuid"
    );
}

#[tokio::test]
async fn unknown_routes_are_404_problems() {
    let h = harness();
    let (key, _) = h.key(None, None).await;
    for uri in ["/v2/jobs", "/index.html", "/v1/jobs/x/y/z"] {
        h.get(uri, Some(&key))
            .await
            .assert_problem(StatusCode::NOT_FOUND, "not-found");
    }
}
