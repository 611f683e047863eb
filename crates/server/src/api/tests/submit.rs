//! Submitting jobs: what is accepted, and every way a submission is refused.

use super::*;

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
    assert_eq!(
        (queued.job.id, queued.job.language.as_str()),
        (id, "python")
    );

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
