//! The HTTP API end to end: a real server on a loopback port, a real SQLite
//! store, real QEMU VMs booted from the installed images.
//!
//! Every test skips (and says why) when the images are not installed.
//! Nothing here sleeps to wait for the server: tests follow a job's event
//! stream, or hold `?wait=true`, until the thing they wait for happened.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{go, id_of, python, spawn_app, Opts};
use ignis_server::job::JobStatus;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The parts of a problem+json answer a client relies on.
async fn expect_problem(r: reqwest::Response, status: StatusCode, slug: &str) {
    assert_eq!(
        r.headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let p = common::expect_json(r, status).await;
    assert_eq!(p["type"], format!("urn:ignis:problem:{slug}"), "{p}");
}

fn metric_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[tokio::test]
async fn a_python_job_runs_end_to_end() {
    let Some(app) = spawn_app(Opts::default()).await else {
        return;
    };
    let api = &app.api;

    let job = api.run(&python("print('hello, world')")).await;
    let id = id_of(&job);
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["language"], "python");
    assert_eq!(job["attempts"], 1);
    let r = &job["result"];
    assert_eq!(r["status"], "ok", "{job}");
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["stdout"], "hello, world\n");
    assert_eq!(r["stderr"], "");
    assert_eq!(r["vm"]["driver"], "qemu");
    let python_version = &app.svc.pools.launcher().catalog.languages["python"]
        .manifest
        .version;
    assert_eq!(r["vm"]["runtime_version"], python_version.as_str());
    let t = &job["timings"];
    for field in ["queue_ms", "acquire_ms", "run_ms", "total_ms"] {
        assert!(t[field].is_u64(), "timings.{field} in {job}");
    }
    assert!(
        t["total_ms"].as_u64() >= t["run_ms"].as_u64(),
        "the run is part of the total: {t}"
    );
    assert!(
        job["started_at"].is_string() && job["finished_at"].is_string(),
        "{job}"
    );

    // GET shows exactly what the wait returned.
    assert_eq!(api.get_job(&id).await, job);
    let listed = api.list("").await;
    let jobs = listed["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0], job);
    assert_eq!(
        api.list("?status=completed&language=python").await["jobs"][0]["id"],
        id.as_str()
    );
    assert_eq!(api.list("?status=queued").await["jobs"], json!([]));

    // The event stream of a finished job is its final word.
    let events = api.events(&id).await.until_end().await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["status", "result"]);
    assert_eq!(events[0].json(), json!({"status": "completed"}));
    assert_eq!(events[1].json(), job);

    // Files, stdin, arguments and environment all reach the program.
    let job = api
        .run(&json!({
            "language": "python",
            "files": [
                {"name": "main.py", "content":
                    "import os, sys, helper\nprint(helper.X, sys.argv[1:], os.environ.get('GREETING'), sys.stdin.read())\n"},
                {"name": "helper.py", "content": "X = 42\n"}
            ],
            "stdin": "from stdin",
            "args": ["a", "b c"],
            "env": {"GREETING": "hi"},
        }))
        .await;
    assert_eq!(job["result"]["status"], "ok", "{job}");
    assert_eq!(job["result"]["stdout"], "42 ['a', 'b c'] hi from stdin\n");

    // A failing program is a completed job with a runtime error.
    let job = api
        .run(&python(
            "import sys\nprint('bye', file=sys.stderr)\nsys.exit(3)",
        ))
        .await;
    assert_eq!(job["status"], "completed");
    assert_eq!(job["result"]["status"], "runtime_error", "{job}");
    assert_eq!(job["result"]["exit_code"], 3);
    assert_eq!(job["result"]["stderr"], "bye\n");

    let langs = api.languages().await;
    let langs = langs.as_array().expect("languages");
    let catalog = &app.svc.pools.launcher().catalog;
    for name in ["python", "go"] {
        let l = langs
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {langs:?}"));
        let manifest = &catalog.languages[name].manifest;
        assert_eq!(l["version"], manifest.version.as_str());
        assert!(!manifest.version.is_empty());
        assert_eq!(l["compiled"], name == "go");
        assert_eq!(l["pool"]["target"], 1);
    }

    let health = common::expect_json(
        api.request(reqwest::Method::GET, "/healthz")
            .send()
            .await
            .expect("healthz"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(health["status"], "ok");
    let metrics = app.metrics().await;
    assert!(
        metric_line(&metrics, "ignis_jobs_submitted_total 3"),
        "{metrics}"
    );
    assert!(
        metric_line(&metrics, "ignis_jobs_total{verdict=\"ok\"} 2"),
        "{metrics}"
    );
    assert!(
        metric_line(&metrics, "ignis_jobs_total{verdict=\"runtime_error\"} 1"),
        "{metrics}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn go_compiles_and_runs_and_compile_errors_are_reported() {
    let Some(app) = spawn_app(Opts {
        warm: 0,
        ..Opts::default()
    })
    .await
    else {
        return;
    };
    let api = &app.api;
    let ok = api
        .submit(&go("package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hello from go\")\n}\n"))
        .await;
    let broken = api
        .submit(&go("package main\n\nfunc main() {\n\tnotDefined()\n}\n"))
        .await;
    let (ok_id, broken_id) = (id_of(&ok), id_of(&broken));
    let (ok, broken) = tokio::join!(api.wait(&ok_id), api.wait(&broken_id));

    assert_eq!(ok["status"], "completed");
    let r = &ok["result"];
    assert_eq!(r["status"], "ok", "{ok}");
    assert_eq!(r["stdout"], "hello from go\n");
    assert!(
        r["compile_ms"].is_u64(),
        "a compiled language reports its compile time: {ok}"
    );
    assert_eq!(r["vm"]["driver"], "qemu");
    assert!(
        r["vm"]["runtime_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("go version")),
        "{ok}"
    );

    assert_eq!(
        broken["status"], "completed",
        "a compile error is a finished job"
    );
    let r = &broken["result"];
    assert_eq!(r["status"], "compile_error", "{broken}");
    assert!(
        r["compile_output"]
            .as_str()
            .is_some_and(|o| o.contains("notDefined")),
        "the compiler's message is returned: {broken}"
    );
    assert_eq!(r["stdout"], "");
    app.shutdown().await;
}

#[tokio::test]
async fn one_key_cannot_see_or_touch_another_keys_jobs() {
    let Some(app) = spawn_app(Opts {
        warm: 0,
        ..Opts::default()
    })
    .await
    else {
        return;
    };
    let alice = &app.api;
    let bob = app.new_key().await;
    let job = alice
        .submit(&json!({
            "language": "python",
            "code": "import time\nprint('ready', flush=True)\ntime.sleep(60)\n",
            "limits": {"timeout_ms": 60000}
        }))
        .await;
    let id = id_of(&job);
    let mut events = alice.events(&id).await;
    loop {
        let e = events.expect_next().await;
        if e.event == "stdout" {
            assert_eq!(e.json()["data"], "ready\n");
            break;
        }
        assert_eq!(e.event, "status", "{e:?}");
    }
    // Alice's job is running now. To Bob it does not exist.
    expect_problem(bob.get(&id).await, StatusCode::NOT_FOUND, "not-found").await;
    expect_problem(
        bob.events_response(&id).await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
    expect_problem(bob.delete(&id).await, StatusCode::NOT_FOUND, "not-found").await;
    assert_eq!(bob.list("").await["jobs"], json!([]));
    assert_eq!(bob.list("?status=running").await["jobs"], json!([]));
    // ... and his DELETE did nothing to it.
    assert_eq!(alice.get_job(&id).await["status"], "running");
    let listed = alice.list("?status=running").await;
    assert_eq!(listed["jobs"][0]["id"], id.as_str());

    let canceled = common::expect_json(alice.delete(&id).await, StatusCode::OK).await;
    assert_eq!(canceled["status"], "canceled");
    let last = events.until_end().await.pop().expect("a final event");
    assert_eq!(last.event, "result");
    assert_eq!(last.json()["status"], "canceled");
    app.shutdown().await;
}

#[tokio::test]
async fn canceling_a_running_job_kills_its_vm() {
    // One VM slot and no warm pool: the job after the canceled one can only
    // run if the canceled job's VM was destroyed and its slot given back.
    let Some(app) = spawn_app(Opts {
        warm: 0,
        max_vms: 1,
        ..Opts::default()
    })
    .await
    else {
        return;
    };
    let api = &app.api;
    let job = api
        .submit(&json!({
            "language": "python",
            "code": "print('spinning', flush=True)\nwhile True:\n    pass\n",
            "limits": {"timeout_ms": 50000}
        }))
        .await;
    let id = id_of(&job);
    let mut events = api.events(&id).await;
    let first = events.expect_next().await;
    assert_eq!(
        (first.event.as_str(), first.json()),
        ("status", json!({"status": "queued"}))
    );
    let second = events.expect_next().await;
    assert_eq!(
        (second.event.as_str(), second.json()),
        ("status", json!({"status": "running"}))
    );
    // The program itself is running once it printed.
    let third = events.expect_next().await;
    assert_eq!(
        (third.event.as_str(), third.json()),
        ("stdout", json!({"data": "spinning\n"}))
    );

    let r = api.delete(&id).await;
    let canceled = common::expect_json(r, StatusCode::OK).await;
    assert_eq!(canceled["status"], "canceled");
    assert!(canceled["finished_at"].is_string(), "{canceled}");

    let rest = events.until_end().await;
    assert_eq!(rest.len(), 1, "after the cancel, only the result: {rest:?}");
    assert_eq!(rest[0].event, "result");
    assert_eq!(rest[0].json()["status"], "canceled");
    assert_eq!(rest[0].json()["id"], id.as_str());

    let stored = api.get_job(&id).await;
    assert_eq!(stored["status"], "canceled");
    assert!(
        stored["result"].is_null(),
        "no result was stored over the cancel: {stored}"
    );
    expect_problem(api.delete(&id).await, StatusCode::CONFLICT, "job-finished").await;
    let metrics = app.metrics().await;
    assert!(
        metric_line(&metrics, "ignis_jobs_total{verdict=\"canceled\"} 1"),
        "{metrics}"
    );

    let next = api.run(&python("print('slot is free')")).await;
    assert_eq!(next["result"]["stdout"], "slot is free\n", "{next}");
    // Canceled means canceled: it did not come back meanwhile.
    assert_eq!(api.get_job(&id).await["status"], "canceled");
    app.shutdown().await;
}

/// The brief's order exactly: DELETE as soon as the job is `running`, which
/// with no warm pool is while its VM is still booting inside
/// `Pools::acquire`.
#[tokio::test]
async fn canceling_a_job_while_its_vm_boots_frees_the_slot() {
    let Some(app) = spawn_app(Opts {
        warm: 0,
        max_vms: 1,
        ..Opts::default()
    })
    .await
    else {
        return;
    };
    let api = &app.api;
    let job = api
        .submit(&json!({"language": "python", "code": "while True:\n    pass\n", "limits": {"timeout_ms": 50000}}))
        .await;
    let id = id_of(&job);
    let mut events = api.events(&id).await;
    for status in ["queued", "running"] {
        let e = events.expect_next().await;
        assert_eq!(
            (e.event.as_str(), e.json()),
            ("status", json!({"status": status}))
        );
    }
    let canceled = common::expect_json(api.delete(&id).await, StatusCode::OK).await;
    assert_eq!(canceled["status"], "canceled");
    let last = events.until_end().await.pop().expect("a final event");
    assert_eq!(
        (last.event.as_str(), &last.json()["status"]),
        ("result", &json!("canceled"))
    );

    let next = api.run(&python("print('slot is free')")).await;
    assert_eq!(next["result"]["stdout"], "slot is free\n", "{next}");
    assert_eq!(
        app.svc.pools.sizes("python"),
        (0, 0),
        "nothing left booting"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn shutdown_during_an_on_demand_boot_returns() {
    let Some(mut app) = spawn_app(Opts {
        warm: 0,
        shutdown_grace: Duration::from_millis(1),
        ..Opts::default()
    })
    .await
    else {
        return;
    };
    let api = app.api.clone();
    let job = api.submit(&python("print('never')")).await;
    let id = id_of(&job);
    let mut events = api.events(&id).await;
    for status in ["queued", "running"] {
        let e = events.expect_next().await;
        assert_eq!(
            (e.event.as_str(), e.json()),
            ("status", json!({"status": status}))
        );
    }
    app.begin_shutdown();
    let svc = app.svc.clone();
    app.shutdown().await;
    let stored = svc
        .store
        .get_any(id.parse().expect("uuid"))
        .await
        .expect("store")
        .expect("job");
    assert_eq!(
        stored.status,
        JobStatus::Queued,
        "requeued for the next start"
    );
}

#[tokio::test]
async fn events_stream_status_output_and_result_in_order() {
    let Some(app) = spawn_app(Opts::default()).await else {
        return;
    };
    let api = &app.api;
    let code = "\
import sys, time
for i in range(1, 6):
    print(i, flush=True)
    time.sleep(0.2)
    if i == 3:
        print('warn', file=sys.stderr, flush=True)
        time.sleep(0.2)
";
    let job = api.submit(&python(code)).await;
    let id = id_of(&job);
    let events = api.events(&id).await.until_end().await;

    let mut it = events.iter().peekable();
    let mut statuses = Vec::new();
    while let Some(e) = it.next_if(|e| e.event == "status") {
        statuses.push(e.json()["status"].as_str().expect("status").to_owned());
    }
    assert_eq!(statuses, ["queued", "running"], "{events:?}");
    let mut before = String::new();
    while let Some(e) = it.next_if(|e| e.event == "stdout") {
        before.push_str(e.json()["data"].as_str().expect("data"));
    }
    assert_eq!(before, "1\n2\n3\n", "{events:?}");
    let stderr = it.next().expect("the stderr event");
    assert_eq!(
        (stderr.event.as_str(), stderr.json()),
        ("stderr", json!({"data": "warn\n"}))
    );
    let mut after = String::new();
    while let Some(e) = it.next_if(|e| e.event == "stdout") {
        after.push_str(e.json()["data"].as_str().expect("data"));
    }
    assert_eq!(after, "4\n5\n", "{events:?}");
    let result = it.next().expect("the result event");
    assert_eq!(result.event, "result");
    assert!(it.next().is_none(), "nothing after the result: {events:?}");

    let result = result.json();
    assert_eq!(result["status"], "completed");
    assert_eq!(result["result"]["stdout"], format!("{before}{after}"));
    assert_eq!(result["result"]["stderr"], "warn\n");
    assert_eq!(
        result,
        api.get_job(&id).await,
        "the result event is the job as stored"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn queued_jobs_survive_a_restart() {
    let dir = tempfile::tempdir().expect("data dir");
    // No VM may run at all, so every job is still waiting at shutdown: the
    // one a worker took goes back to the queue when the grace runs out.
    let Some(first) = spawn_app(Opts {
        warm: 0,
        max_vms: 0,
        workers: 1,
        shutdown_grace: Duration::from_millis(500),
        data_dir: Some(dir.path().to_path_buf()),
        ..Opts::default()
    })
    .await
    else {
        return;
    };
    let key = first.api.key.clone();
    let mut ids = Vec::new();
    for i in 0..3 {
        let job = first
            .api
            .submit(&python(&format!("print('job {i}')")))
            .await;
        ids.push(id_of(&job));
    }
    for id in &ids {
        let status = first.api.get_job(id).await["status"].clone();
        assert!(status == "queued" || status == "running", "{id}: {status}");
    }
    let secret = std::fs::read(dir.path().join("webhook-secret")).expect("webhook secret");
    let store = first.svc.store.clone();
    first.shutdown().await;
    for id in &ids {
        let job = store
            .get_any(id.parse().expect("uuid"))
            .await
            .expect("store")
            .expect("job kept");
        assert_eq!(
            job.status,
            JobStatus::Queued,
            "{id} was put back in the queue at shutdown"
        );
        assert!(job.result.is_none());
    }
    drop(store);

    let Some(second) = spawn_app(Opts {
        warm: 0,
        data_dir: Some(dir.path().to_path_buf()),
        ..Opts::default()
    })
    .await
    else {
        return;
    };
    let api = second.with_key(&key);
    for (i, id) in ids.iter().enumerate() {
        let job = api.wait(id).await;
        assert_eq!(job["status"], "completed", "{job}");
        assert_eq!(job["result"]["status"], "ok", "{job}");
        assert_eq!(job["result"]["stdout"], format!("job {i}\n"));
        let attempts = job["attempts"].as_u64().expect("attempts");
        assert!((1..=2).contains(&attempts), "{job}");
    }
    assert_eq!(api.list("?status=queued").await["jobs"], json!([]));
    assert_eq!(api.list("?status=running").await["jobs"], json!([]));
    assert_eq!(
        api.list("?status=completed").await["jobs"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    assert_eq!(
        std::fs::read(dir.path().join("webhook-secret")).expect("webhook secret"),
        secret,
        "the webhook secret outlives a restart"
    );
    second.shutdown().await;
}

#[tokio::test]
async fn a_finished_job_is_posted_to_its_webhook_signed() {
    use axum::body::Bytes;
    use axum::http::HeaderMap;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(HeaderMap, Bytes)>();
    let receiver = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((headers, body));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hook = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let receiving = tokio::spawn(async move { axum::serve(listener, receiver).await });

    let Some(app) = spawn_app(Opts {
        warm: 0,
        allow_private_webhooks: true,
        ..Opts::default()
    })
    .await
    else {
        return;
    };
    let api = &app.api;
    let job = api
        .submit(&json!({"language": "python", "code": "print('hooked')", "webhook_url": hook}))
        .await;
    assert_eq!(job["webhook_url"], hook.as_str());
    let id = id_of(&job);
    let done = api.wait(&id).await;
    assert_eq!(done["result"]["stdout"], "hooked\n");

    let (headers, body) = tokio::time::timeout(common::HANG, rx.recv())
        .await
        .expect("a delivery within the hang guard")
        .expect("a delivery");
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(header("content-type"), "application/json");
    assert_eq!(header(ignis_server::webhook::DELIVERY_HEADER), "1");
    let secret = std::fs::read_to_string(app.data_dir.join("webhook-secret")).expect("secret");
    let expected = ignis_server::webhook::sign(secret.trim().as_bytes(), &body);
    assert_eq!(header(ignis_server::webhook::SIGNATURE_HEADER), expected);
    assert_ne!(
        ignis_server::webhook::sign(b"another secret", &body),
        expected,
        "the signature depends on the secret"
    );
    let delivered: Value = serde_json::from_slice(&body).expect("JSON body");
    assert_eq!(
        delivered, done,
        "the body is the finished job as GET shows it"
    );
    app.shutdown().await;
    receiving.abort();
}

#[tokio::test]
async fn twenty_concurrent_jobs_in_two_languages_all_finish() {
    let Some(app) = spawn_app(Opts::default()).await else {
        return;
    };
    let api = &app.api;
    let mut expected = Vec::new();
    for i in 0..10 {
        let py = api.submit(&python(&format!("print({i} * 3)"))).await;
        expected.push((id_of(&py), format!("{}\n", i * 3)));
        let code = format!(
            "package main\n\nimport \"fmt\"\n\nfunc main() {{\n\tfmt.Println({i} + 1000)\n}}\n"
        );
        let g = api.submit(&go(&code)).await;
        expected.push((id_of(&g), format!("{}\n", i + 1000)));
    }
    let finished = futures::future::join_all(expected.iter().map(|(id, _)| api.wait(id))).await;
    for ((id, stdout), job) in expected.iter().zip(&finished) {
        assert_eq!(job["id"], id.as_str());
        assert_eq!(job["status"], "completed", "{job}");
        assert_eq!(job["result"]["status"], "ok", "{job}");
        assert_eq!(&job["result"]["stdout"], stdout.as_str(), "{job}");
    }
    let vms: BTreeSet<&str> = finished
        .iter()
        .map(|j| j["result"]["vm"]["id"].as_str().expect("vm id"))
        .collect();
    assert_eq!(vms.len(), 20, "no VM ran two jobs");
    let listed = api.list("?status=completed&limit=100").await;
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(20));
    let metrics = app.metrics().await;
    assert!(
        metric_line(&metrics, "ignis_jobs_total{verdict=\"ok\"} 20"),
        "{metrics}"
    );
    assert!(metric_line(&metrics, "ignis_queue_depth 0"), "{metrics}");
    app.shutdown().await;
}

/// Reads a job's events until a stdout chunk contains `text`.
async fn until_stdout(events: &mut common::Sse, text: &str) {
    let mut out = String::new();
    while !out.contains(text) {
        let e = events.expect_next().await;
        assert_ne!(e.event, "result", "ended before printing {text:?}: {e:?}");
        if e.event == "stdout" {
            out.push_str(e.json()["data"].as_str().expect("data"));
        }
    }
}

#[tokio::test]
async fn shutdown_lets_a_running_job_finish_and_leaves_no_vm() {
    let Some(mut app) = spawn_app(Opts {
        exclusive: true,
        shutdown_grace: Duration::from_secs(60),
        ..Opts::default()
    })
    .await
    else {
        return;
    };
    let api = app.api.clone();
    let job = api
        .submit(&python(
            "import time\nprint('started', flush=True)\ntime.sleep(2)\nprint('done')",
        ))
        .await;
    let id = id_of(&job);
    let mut events = api.events(&id).await;
    until_stdout(&mut events, "started").await;
    let vms = common::qemu_children();
    assert!(
        vms.iter()
            .any(|v| v.vm_dir.as_ref().is_some_and(|d| d.is_dir())),
        "the running job's VM is a child of this process, with its directory: {vms:?}"
    );

    app.begin_shutdown();
    // The job is allowed to finish, and its stream ends with the result.
    let rest = events.until_end().await;
    let last = rest.last().expect("events");
    assert_eq!(last.event, "result", "{rest:?}");
    assert_eq!(last.json()["result"]["stdout"], "started\ndone\n");
    let svc = app.svc.clone();
    app.shutdown().await;

    let stored = svc
        .store
        .get_any(id.parse().expect("uuid"))
        .await
        .expect("store")
        .expect("job");
    assert_eq!(stored.status, JobStatus::Completed);
    assert_no_vm_left(&vms).await;
}

#[tokio::test]
async fn shutdown_requeues_a_job_that_outlives_the_grace() {
    let Some(mut app) = spawn_app(Opts {
        exclusive: true,
        warm: 0,
        shutdown_grace: Duration::from_millis(500),
        ..Opts::default()
    })
    .await
    else {
        return;
    };
    let api = app.api.clone();
    let job = api
        .submit(&json!({
            "language": "python",
            "code": "print('spinning', flush=True)\nwhile True:\n    pass\n",
            "limits": {"timeout_ms": 50000}
        }))
        .await;
    let id = id_of(&job);
    let mut events = api.events(&id).await;
    until_stdout(&mut events, "spinning").await;
    let vms = common::qemu_children();
    assert!(
        vms.iter()
            .any(|v| v.vm_dir.as_ref().is_some_and(|d| d.is_dir())),
        "the job's VM is a child of this process, with its directory: {vms:?}"
    );

    app.begin_shutdown();
    let rest = events.until_end().await;
    assert!(
        rest.iter().all(|e| e.event != "result"),
        "a requeued job has not ended: {rest:?}"
    );
    let svc = app.svc.clone();
    app.shutdown().await;

    let stored = svc
        .store
        .get_any(id.parse().expect("uuid"))
        .await
        .expect("store")
        .expect("job");
    assert_eq!(
        stored.status,
        JobStatus::Queued,
        "back in the queue for the next start"
    );
    assert!(stored.result.is_none() && stored.started_at.is_none());
    assert_eq!(stored.attempts, 1);
    assert_no_vm_left(&vms).await;
}

#[tokio::test]
async fn shutdown_while_the_pools_boot_leaves_no_vm() {
    let Some(app) = spawn_app(Opts {
        exclusive: true,
        ..Opts::default()
    })
    .await
    else {
        return;
    };
    // The server answers once it runs; by then the pools have started
    // booting their first VMs (the refill tasks are spawned before the
    // listener is served).
    let health = common::expect_json(
        app.api
            .request(reqwest::Method::GET, "/healthz")
            .send()
            .await
            .expect("healthz"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(health["status"], "ok");
    let booting: usize = ["python", "go"]
        .iter()
        .map(|l| app.svc.pools.sizes(l).1)
        .sum();
    assert!(booting > 0, "the warm pools are booting");
    let vms = common::qemu_children();
    assert!(
        vms.iter()
            .any(|v| v.vm_dir.as_ref().is_some_and(|d| d.is_dir())),
        "booting VMs are QEMU children, with their directories: {vms:?}"
    );
    let svc = app.svc.clone();
    app.shutdown().await;
    for l in ["python", "go"] {
        assert_eq!(svc.pools.sizes(l), (0, 0), "{l}: nothing ready or booting");
    }
    assert_no_vm_left(&vms).await;
}

/// After a server stopped: every VM seen while it ran, and any QEMU child
/// still around, has its directory removed already (a VM's directory goes
/// when it is destroyed or dropped, so a VM still booting or pooled would
/// still have one), and its process ends. Only meaningful in an `exclusive`
/// test, where every QEMU child of this process is the server's.
async fn assert_no_vm_left(seen: &[common::QemuChild]) {
    let mut all = seen.to_vec();
    all.extend(
        common::qemu_children()
            .into_iter()
            .filter(|c| !seen.contains(c)),
    );
    for vm in &all {
        if let Some(dir) = &vm.vm_dir {
            assert!(
                !dir.exists(),
                "VM {} (QEMU {}) outlived the server",
                dir.display(),
                vm.pid
            );
        }
    }
    for vm in &all {
        common::exited(vm.pid).await;
    }
}
