//! The Piston compatible API: keys in the path, the operator's anonymous
//! switch, and Piston's request and response shapes.

use ignis_protocol::Verdict;
use ignis_vmm::RunReport;

use super::*;

fn two_languages(anonymous: bool) -> Harness {
    harness_of(
        |dir| {
            vec![
                crate::test_kit::python_image(dir),
                crate::test_kit::go_image(dir),
            ]
        },
        |c| c.piston_anonymous = anonymous,
    )
}

fn report(status: Verdict) -> RunReport {
    RunReport {
        status,
        exit_code: Some(0),
        stdout: "out\n".into(),
        stderr: "err\n".into(),
        cpu_ms: 5,
        duration_ms: 9,
        memory_kib: 1024,
        message: None,
        ..RunReport::internal_error("", None)
    }
}

#[tokio::test]
async fn runtimes_need_a_key_in_the_path_unless_the_operator_opens_them() {
    let h = two_languages(false);
    let (key, _) = h.key(None, None).await;
    let r = h.get("/piston/api/v2/runtimes", None).await;
    r.assert_status(StatusCode::UNAUTHORIZED);
    assert!(r.json()["message"]
        .as_str()
        .is_some_and(|m| m.contains("/piston/k/")));
    h.get("/piston/k/wrong/api/v2/runtimes", None)
        .await
        .assert_status(StatusCode::UNAUTHORIZED);
    let r = h
        .get(&format!("/piston/k/{key}/api/v2/runtimes"), None)
        .await;
    r.assert_status(StatusCode::OK);
    assert_eq!(
        r.json(),
        json!([
            {"language": "go", "version": "1.19.8", "aliases": ["golang"]},
            {"language": "python", "version": "3.11.2", "aliases": ["py", "py3", "python3"]},
        ])
    );
    // A Bearer key works on the keyless paths too.
    h.get("/piston/api/v2/runtimes", Some(&key))
        .await
        .assert_status(StatusCode::OK);

    let open = two_languages(true);
    open.get("/piston/api/v2/runtimes", None)
        .await
        .assert_status(StatusCode::OK);
    // The switch opens Piston's API alone.
    open.get("/v1/jobs", None)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    open.get("/judge0/languages", None)
        .await
        .assert_status(StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn execute_runs_an_ordinary_job_and_answers_in_pistons_shape() {
    let h = two_languages(false);
    let (key, key_id) = h.key(None, None).await;
    let worker = h.play_worker(RunReport {
        compile_output: Some(String::new()),
        compile_ms: Some(700),
        ..report(Verdict::Ok)
    });
    let body = json!({
        "language": "golang",
        "version": "1.19",
        "files": [{"content": "package main"}, {"name": "util.go", "content": "cGFja2FnZSBtYWlu", "encoding": "base64"}],
        "stdin": "in",
        "args": ["1", "2"],
        "compile_timeout": 10000,
        "run_timeout": 3000,
        "compile_memory_limit": -1,
        "run_memory_limit": 134217728,
        "unknown_to_ignis": 1
    });
    let r = h
        .post(&format!("/piston/k/{key}/api/v2/execute"), None, &body)
        .await;
    r.assert_status(StatusCode::OK);
    let v = r.json();
    assert_eq!(
        (v["language"].as_str(), v["version"].as_str()),
        (Some("go"), Some("1.19.8"))
    );
    assert_eq!(v["compile"]["code"], 0, "{v}");
    assert_eq!(v["run"]["stdout"], "out\n");
    assert_eq!(v["run"]["stderr"], "err\n");
    assert_eq!(v["run"]["output"], "out\nerr\n");
    assert_eq!(v["run"]["code"], 0);
    assert_eq!(v["run"]["signal"], Value::Null);

    let job = worker.await.expect("worker");
    assert_eq!(job.owner, key_id, "the key's job, as in /v1/jobs");
    let names: Vec<&str> = job.request.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["main.go", "util.go"]);
    assert_eq!(job.request.files[1].content, b"package main");
    assert_eq!(job.request.stdin, b"in");
    assert_eq!(job.request.args, ["1", "2"]);
    let l = job.request.limits;
    assert_eq!(
        (l.timeout_ms, l.memory_mib, l.compile_timeout_ms),
        (3000, 128, 10000)
    );
}

#[tokio::test]
async fn a_failed_compile_has_no_run_and_a_killed_run_has_a_signal() {
    let h = two_languages(true);
    let worker = h.play_worker(RunReport {
        compile_output: Some("main.go:1: syntax error\n".into()),
        exit_code: None,
        ..report(Verdict::CompileError)
    });
    let go = json!({"language": "go", "version": "*", "files": [{"content": "package"}]});
    let r = h.post("/piston/api/v2/execute", None, &go).await;
    r.assert_status(StatusCode::OK);
    let v = r.json();
    assert_eq!(v["compile"]["code"], 1, "{v}");
    assert_eq!(v["compile"]["stderr"], "main.go:1: syntax error\n");
    assert!(v.get("run").is_none(), "{v}");
    assert_eq!(worker.await.expect("worker").owner, "piston-anonymous");

    let worker = h.play_worker(RunReport {
        signal: Some(9),
        exit_code: None,
        ..report(Verdict::Timeout)
    });
    let py =
        json!({"language": "python", "version": "3.11.2", "files": [{"content": "while 1: pass"}]});
    let v = h.post("/piston/api/v2/execute", None, &py).await.json();
    assert!(v.get("compile").is_none(), "{v}");
    assert_eq!(v["run"]["signal"], "SIGKILL");
    assert_eq!(v["run"]["code"], Value::Null);
    assert_eq!(v["run"]["status"], "TO");
    worker.await.expect("worker");

    let worker = h.play_worker(RunReport {
        exit_code: Some(1),
        ..report(Verdict::RuntimeError)
    });
    let v = h.post("/piston/api/v2/execute", None, &py).await.json();
    assert_eq!(
        (v["run"]["code"].as_i64(), v["run"]["status"].as_str()),
        (Some(1), Some("RE"))
    );
    worker.await.expect("worker");
}

#[tokio::test]
async fn bad_executions_are_refused_with_a_message() {
    let h = two_languages(true);
    for body in [
        json!({"version": "*", "files": [{"content": ""}]}),
        json!({"language": "python", "files": [{"content": ""}]}),
        json!({"language": "python", "version": "2.7", "files": [{"content": ""}]}),
        json!({"language": "cobol", "version": "*", "files": [{"content": ""}]}),
        json!({"language": "python", "version": "*", "files": []}),
        json!({"language": "python", "version": "*", "files": [{"content": "zz", "encoding": "hex"}]}),
        json!({"language": "python", "version": "*", "files": [{"content": ""}], "run_timeout": 10_000_000}),
        json!({"language": "go", "version": "*", "files": [{"content": ""}], "compile_timeout": 10_000_000}),
    ] {
        let r = h.post("/piston/api/v2/execute", None, &body).await;
        assert!(r.status.is_client_error(), "{body}: {}", r.status);
        assert!(
            r.json()["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
    let v = h
        .post(
            "/piston/api/v2/execute",
            None,
            &json!({"language": "python", "version": "2.7", "files": [{"content": ""}]}),
        )
        .await
        .json();
    assert_eq!(v["message"], "python-2.7 runtime is unknown");
    assert_eq!(h.svc.queue.depth(), 0, "nothing refused was queued");
}
