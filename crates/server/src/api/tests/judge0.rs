//! The Judge0 CE compatible API: its shapes, its statuses from finished
//! jobs, its limits and its authentication. Jobs are finished through the
//! store as a worker would finish them.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::Utc;
use ignis_protocol::Verdict;
use ignis_vmm::RunReport;

use super::*;
use crate::job::Timings;
use crate::store::Claimed;

fn two_languages() -> Harness {
    harness_of(
        |dir| {
            vec![
                crate::test_kit::python_image(dir),
                crate::test_kit::go_image(dir),
            ]
        },
        |_| {},
    )
}

fn j0(method: Method, uri: &str, token: Option<&str>, body: Option<&Value>) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        b = b.header("X-Auth-Token", t);
    }
    match body {
        Some(v) => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(v).expect("JSON"))),
        None => b.body(Body::empty()),
    }
    .expect("valid request")
}

fn report(status: Verdict, stdout: &str) -> RunReport {
    RunReport {
        status,
        exit_code: Some(0),
        stdout: stdout.into(),
        cpu_ms: 12,
        duration_ms: 30,
        memory_kib: 4096,
        ..RunReport::internal_error("", None)
    }
}

impl Harness {
    /// Ends job `id` with `r`, as a worker would.
    async fn finish(&self, id: JobId, r: RunReport) {
        let now = Utc::now();
        let Claimed::Run(job) = self
            .svc
            .store
            .claim(id, false, 2, now)
            .await
            .expect("claim")
        else {
            panic!("job {id} could not be claimed");
        };
        let attempt = job.attempts;
        self.svc
            .store
            .complete(id, attempt, &r, Timings::default(), now)
            .await
            .expect("complete");
    }

    async fn j0_submit(&self, key: &str, body: Value) -> JobId {
        let r = self
            .send(j0(
                Method::POST,
                "/judge0/submissions",
                Some(key),
                Some(&body),
            ))
            .await;
        r.assert_status(StatusCode::CREATED);
        r.json()["token"]
            .as_str()
            .expect("token")
            .parse()
            .expect("uuid")
    }
}

#[tokio::test]
async fn a_submission_is_an_ordinary_job_of_its_key() {
    let h = two_languages();
    let (key, key_id) = h.key(None, None).await;
    let body = json!({
        "source_code": STANDARD.encode("print(input())"),
        "language_id": 71,
        "stdin": STANDARD.encode("hi"),
        "command_line_arguments": "a 'b c'",
        "wall_time_limit": 5,
        "memory_limit": 128000,
        "max_file_size": 64,
        "max_processes_and_or_threads": 16,
        "language": 71,
        "something_new": true
    });
    let r = h
        .send(j0(
            Method::POST,
            "/judge0/submissions?base64_encoded=true&wait=false",
            Some(&key),
            Some(&body),
        ))
        .await;
    r.assert_status(StatusCode::CREATED);
    let id: JobId = r.json()["token"]
        .as_str()
        .expect("token")
        .parse()
        .expect("uuid");
    let job = h
        .svc
        .store
        .get(&key_id, id)
        .await
        .expect("store")
        .expect("owned");
    assert_eq!(job.language, "python");
    assert_eq!(job.request.files[0].name, "main.py");
    assert_eq!(job.request.files[0].content, b"print(input())");
    assert_eq!(job.request.stdin, b"hi");
    assert_eq!(job.request.args, vec!["a".to_owned(), "b c".to_owned()]);
    let l = job.request.limits;
    assert_eq!(
        (
            l.timeout_ms,
            l.memory_mib,
            l.max_output_kib,
            l.max_processes
        ),
        (5000, 125, 64, 16)
    );
    assert_eq!(h.svc.queue.depth(), 1);

    // Visible in /v1/jobs, and in Judge0's words while queued.
    let list = h.get("/v1/jobs", Some(&key)).await.json();
    assert_eq!(ids(&list), vec![id.to_string()]);
    let r = h
        .send(j0(
            Method::GET,
            &format!("/judge0/submissions/{id}"),
            Some(&key),
            None,
        ))
        .await;
    r.assert_status(StatusCode::OK);
    let v = r.json();
    assert_eq!(v["status"], json!({"id": 1, "description": "In Queue"}));
    assert_eq!(v["token"], id.to_string());
    let mut keys: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "compile_output",
            "memory",
            "message",
            "status",
            "stderr",
            "stdout",
            "time",
            "token"
        ]
    );

    // Another key sees nothing; Go by its Judge0 id runs Go.
    let (other, _) = h.key(None, None).await;
    let r = h
        .send(j0(
            Method::GET,
            &format!("/judge0/submissions/{id}"),
            Some(&other),
            None,
        ))
        .await;
    r.assert_status(StatusCode::NOT_FOUND);
    let go = h
        .j0_submit(
            &key,
            json!({"source_code": "package main", "language_id": 60}),
        )
        .await;
    let job = h
        .svc
        .store
        .get(&key_id, go)
        .await
        .expect("store")
        .expect("owned");
    assert_eq!(
        (job.language.as_str(), job.request.files[0].name.as_str()),
        ("go", "main.go")
    );
}

#[tokio::test]
async fn finished_jobs_answer_with_judge0_statuses() {
    let h = harness();
    let (key, _) = h.key(None, None).await;
    let sub = |expected: Option<&str>| {
        let mut b = json!({"source_code": "print(1)", "language_id": 71});
        if let Some(e) = expected {
            b["expected_output"] = json!(e);
        }
        b
    };
    let failing = |signal: Option<i32>, code: Option<i32>| RunReport {
        signal,
        exit_code: code,
        ..report(Verdict::RuntimeError, "")
    };
    let cases: Vec<(Option<&str>, RunReport, i64, &str)> = vec![
        (Some("1"), report(Verdict::Ok, "1  \n\n"), 3, "Accepted"),
        (None, report(Verdict::Ok, "anything"), 3, "Accepted"),
        (Some("2"), report(Verdict::Ok, "1\n"), 4, "Wrong Answer"),
        (None, report(Verdict::Timeout, ""), 5, "Time Limit Exceeded"),
        (
            None,
            report(Verdict::CompileError, ""),
            6,
            "Compilation Error",
        ),
        (None, failing(Some(11), None), 7, "Runtime Error (SIGSEGV)"),
        (
            None,
            report(Verdict::OutputLimit, ""),
            8,
            "Runtime Error (SIGXFSZ)",
        ),
        (None, failing(Some(8), None), 9, "Runtime Error (SIGFPE)"),
        (None, failing(Some(6), None), 10, "Runtime Error (SIGABRT)"),
        (None, failing(None, Some(3)), 11, "Runtime Error (NZEC)"),
        (None, failing(Some(9), None), 12, "Runtime Error (Other)"),
        (
            None,
            report(Verdict::InternalError, ""),
            13,
            "Internal Error",
        ),
    ];
    for (expected, r, id, description) in cases {
        let token = h.j0_submit(&key, sub(expected)).await;
        h.finish(token, r).await;
        let v = h
            .send(j0(
                Method::GET,
                &format!("/judge0/submissions/{token}?fields=*"),
                Some(&key),
                None,
            ))
            .await
            .json();
        assert_eq!(
            v["status"],
            json!({"id": id, "description": description}),
            "{v}"
        );
        assert_eq!(v["status_id"], id);
        assert_eq!(v["language_id"], 71);
        assert_eq!(v["language"]["name"], "Python (3.11.2)");
        assert_eq!(v["source_code"], "print(1)");
        assert_eq!(v["time"], "0.012");
        assert_eq!(v["wall_time"], "0.030");
        assert_eq!(v["memory"], 4096);
        let stamp = v["finished_at"].as_str().expect("finished_at");
        assert!(
            chrono::NaiveDateTime::parse_from_str(stamp, "%Y-%m-%dT%H:%M:%S%.fZ").is_ok(),
            "{stamp}"
        );
    }
    let token = h.j0_submit(&key, sub(None)).await;
    h.finish(token, failing(None, Some(3))).await;
    let v = h
        .send(j0(
            Method::GET,
            &format!(
                "/judge0/submissions/{token}?base64_encoded=true&fields=stdout,message,exit_code"
            ),
            Some(&key),
            None,
        ))
        .await
        .json();
    assert_eq!(
        v,
        json!({"stdout": "", "message": "Exited with error status 3", "exit_code": 3})
    );
}

#[tokio::test]
async fn a_cpu_limit_is_checked_against_the_cpu_time_used() {
    let h = harness();
    let (key, _) = h.key(None, None).await;
    let token = h
        .j0_submit(
            &key,
            json!({"source_code": "x", "language_id": 71, "cpu_time_limit": 0.01}),
        )
        .await;
    let job = h
        .svc
        .store
        .get_any(token)
        .await
        .expect("store")
        .expect("job");
    assert_eq!(
        job.request.limits.timeout_ms, 10,
        "the CPU limit bounds the wall clock too"
    );
    h.finish(token, report(Verdict::Ok, "")).await;
    let v = h
        .send(j0(
            Method::GET,
            &format!("/judge0/submissions/{token}"),
            Some(&key),
            None,
        ))
        .await
        .json();
    assert_eq!(v["status"]["id"], 5, "{v}");
}

#[tokio::test]
async fn refused_submissions_say_which_field_and_why() {
    let h = harness();
    let (key, _) = h.key(None, None).await;
    for (body, field) in [
        (json!({"source_code": "x"}), "language_id"),
        (
            json!({"source_code": "x", "language_id": 9999}),
            "language_id",
        ),
        (json!({"language_id": 71}), "source_code"),
        (
            json!({"source_code": "x", "language_id": 71, "wall_time_limit": 1000}),
            "wall_time_limit",
        ),
        (
            json!({"source_code": "x", "language_id": 71, "memory_limit": 10_000_000}),
            "memory_limit",
        ),
        (
            json!({"source_code": "x", "language_id": 71, "enable_network": true}),
            "enable_network",
        ),
        (
            json!({"source_code": "x", "language_id": 71, "compiler_options": "-O2"}),
            "compiler_options",
        ),
        (
            json!({"source_code": "x", "language_id": 71, "number_of_runs": 3}),
            "number_of_runs",
        ),
        (
            json!({"source_code": "x", "language_id": 71, "cpu_time_limit": 50, "cpu_extra_time": 20}),
            "cpu_time_limit",
        ),
        (
            json!({"source_code": "x", "language_id": 71, "command_line_arguments": "'open"}),
            "command_line_arguments",
        ),
    ] {
        let r = h
            .send(j0(
                Method::POST,
                "/judge0/submissions",
                Some(&key),
                Some(&body),
            ))
            .await;
        r.assert_status(StatusCode::UNPROCESSABLE_ENTITY);
        let v = r.json();
        assert!(
            v[field][0].as_str().is_some_and(|m| !m.is_empty()),
            "{body}: {v}"
        );
    }
    let r = h
        .send(j0(
            Method::POST,
            "/judge0/submissions?base64_encoded=true",
            Some(&key),
            Some(&json!({"source_code": "%%%", "language_id": 71})),
        ))
        .await;
    r.assert_status(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json()["source_code"][0], "is not valid base64");
    assert_eq!(h.svc.queue.depth(), 0, "nothing refused was queued");
}

#[tokio::test]
async fn keys_come_from_x_auth_token_or_bearer() {
    let h = harness();
    let (key, _) = h.key(None, None).await;
    let r = h
        .send(j0(Method::GET, "/judge0/languages", None, None))
        .await;
    r.assert_status(StatusCode::UNAUTHORIZED);
    assert!(r.json()["error"]
        .as_str()
        .is_some_and(|e| e.contains("X-Auth-Token")));
    h.send(j0(Method::GET, "/judge0/languages", Some("wrong"), None))
        .await
        .assert_status(StatusCode::UNAUTHORIZED);
    let r = h.get("/judge0/languages", Some(&key)).await;
    r.assert_status(StatusCode::OK);
    assert_eq!(r.json(), json!([{"id": 71, "name": "Python (3.11.2)"}]));
    let dev = harness_with(|c| c.dev = true);
    dev.get("/judge0/statuses", None)
        .await
        .assert_status(StatusCode::OK);
}

#[tokio::test]
async fn batches_create_and_read_several() {
    let h = harness();
    let (key, _) = h.key(None, None).await;
    let body = json!({"submissions": [
        {"source_code": "print(1)", "language_id": 71},
        {"source_code": "print(2)", "language_id": 12345},
        {"source_code": "print(3)", "language_id": 92},
    ]});
    let r = h
        .send(j0(
            Method::POST,
            "/judge0/submissions/batch",
            Some(&key),
            Some(&body),
        ))
        .await;
    r.assert_status(StatusCode::CREATED);
    let v = r.json();
    assert!(v[1]["language_id"][0].as_str().is_some(), "{v}");
    let (a, c) = (
        v[0]["token"].as_str().expect("a"),
        v[2]["token"].as_str().expect("c"),
    );
    let uri = format!("/judge0/submissions/batch?tokens={a},{c},nonsense&fields=token,status_id");
    let r = h.send(j0(Method::GET, &uri, Some(&key), None)).await;
    r.assert_status(StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"submissions": [{"token": a, "status_id": 1}, {"token": c, "status_id": 1}, null]})
    );
    h.send(j0(
        Method::GET,
        "/judge0/submissions/x?fields=nope",
        Some(&key),
        None,
    ))
    .await
    .assert_status(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_service_documents_describe_ignis_in_judge0_terms() {
    let h = two_languages();
    let (key, _) = h.key(None, None).await;
    let get = |uri: &'static str| {
        let h = &h;
        let key = key.clone();
        async move {
            let r = h.get(uri, Some(&key)).await;
            r.assert_status(StatusCode::OK);
            r.json()
        }
    };
    assert_eq!(get("/judge0/about").await["version"], "1.13.1");
    let langs = get("/judge0/languages").await;
    assert_eq!(
        langs,
        json!([{"id": 60, "name": "Go (1.19.8)"}, {"id": 71, "name": "Python (3.11.2)"}])
    );
    assert_eq!(get("/judge0/languages/all").await, langs);
    let go = get("/judge0/languages/60").await;
    assert_eq!(
        (go["name"].as_str(), go["source_file"].as_str()),
        (Some("Go (1.19.8)"), Some("main.go"))
    );
    h.get("/judge0/languages/1", Some(&key))
        .await
        .assert_status(StatusCode::NOT_FOUND);
    let statuses = get("/judge0/statuses").await;
    assert_eq!(statuses.as_array().map(Vec::len), Some(14));
    assert_eq!(
        statuses[13],
        json!({"id": 14, "description": "Exec Format Error"})
    );
    let cfg = get("/judge0/config_info").await;
    assert_eq!(cfg["max_wall_time_limit"], 60.0);
    assert_eq!(
        cfg["max_memory_limit"],
        960 * 1024,
        "Go's 1 GiB guest less headroom"
    );
    assert_eq!(cfg["enable_wait_result"], true);
}

#[tokio::test]
async fn wait_true_answers_with_the_finished_submission() {
    let h = harness();
    let (key, _) = h.key(None, None).await;
    let worker = h.play_worker(report(Verdict::Ok, "hello\n"));
    let body = json!({"source_code": STANDARD.encode("print('hello')"), "language_id": 71, "expected_output": STANDARD.encode("hello")});
    let r = h
        .send(j0(
            Method::POST,
            "/judge0/submissions?base64_encoded=true&wait=true",
            Some(&key),
            Some(&body),
        ))
        .await;
    r.assert_status(StatusCode::CREATED);
    let v = r.json();
    assert_eq!(v["status"]["id"], 3, "{v}");
    assert_eq!(v["stdout"], STANDARD.encode("hello\n"));
    assert!(v["token"].is_string());
    worker.await.expect("worker");
}

#[tokio::test]
async fn a_v1_job_reads_as_a_submission_and_key_limits_hold() {
    let h = harness();
    let (key, _) = h.key(Some(1), None).await;
    let id = h.submit(&key).await;
    let r = h
        .send(j0(Method::GET, &format!("/judge0/submissions/{id}?fields=language_id,status_id,memory_limit,wall_time_limit"), Some(&key), None))
        .await;
    // One request per second: the key's own rate limit holds here too.
    r.assert_status(StatusCode::TOO_MANY_REQUESTS);
    assert!(r.json()["error"]
        .as_str()
        .is_some_and(|e| e.contains("per second")));
    assert!(!r.header(header::RETRY_AFTER).is_empty());

    let (free, _) = h.key(None, None).await;
    let id = h.submit(&free).await;
    let uri = format!(
        "/judge0/submissions/{id}?fields=language_id,status_id,memory_limit,wall_time_limit"
    );
    let v = h
        .send(j0(Method::GET, &uri, Some(&free), None))
        .await
        .json();
    let d = h.svc.config.defaults;
    assert_eq!(
        v,
        json!({"language_id": 71, "status_id": 1, "memory_limit": d.memory_mib * 1024, "wall_time_limit": d.timeout_ms as f64 / 1000.0})
    );
}
