//! Jobs end to end through the API: every recipe's language, and isolation
//! between keys.

use super::*;

/// Every language a recipe defines runs its own hello world through the API,
/// all submitted at once; a compiled language reports its compile step.
#[tokio::test]
async fn every_recipes_hello_world_runs_through_the_api() {
    let app = spawn_app(Opts::default()).await;
    let api = &app.api;
    let runs = common::recipes().into_iter().map(|r| async move {
        // Followed through its events: a slow compiler (tsc, rustc) under
        // TCG, queued behind the others, may outlast `?wait`. The longest
        // limit the server allows: Node.js alone needs 2.5 s of CPU for a
        // hello world under TCG, and several times that on a busy host.
        let job = api
            .submit(&json!({
                "language": r.name,
                "code": r.conformance.hello,
                "limits": {"timeout_ms": 60_000},
            }))
            .await;
        (r, api.wait(&id_of(&job)).await)
    });
    for (recipe, job) in futures::future::join_all(runs).await {
        let r = &job["result"];
        assert_eq!(r["status"], "ok", "{}: {job}", recipe.name);
        assert_eq!(r["stdout"], "hello, world\n", "{}: {job}", recipe.name);
        assert_eq!(
            r["compile_ms"].is_u64(),
            recipe.compile.is_some(),
            "{}: a compile step is reported for compiled languages only: {job}",
            recipe.name
        );
    }
}

#[tokio::test]
async fn a_python_job_runs_end_to_end() {
    let app = spawn_app(Opts::default()).await;
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
    let python_version = &app.pools().launcher().catalog.languages["python"]
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
    // A listing summarises: how it ended, not what it printed.
    for field in [
        "id",
        "status",
        "language",
        "attempts",
        "timings",
        "created_at",
    ] {
        assert_eq!(jobs[0][field], job[field], "{field} in {}", jobs[0]);
    }
    assert_eq!(
        (&jobs[0]["verdict"], &jobs[0]["exit_code"]),
        (&json!("ok"), &json!(0))
    );
    assert!(jobs[0].get("result").is_none(), "no outputs: {}", jobs[0]);
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

    // Bytes that are not UTF-8 come back exactly in base64, and the text
    // says it is not them.
    let raw = python("import sys\nsys.stdout.buffer.write(b'ok\\xff\\x01\\n')");
    let bytes_job = api.run(&raw).await;
    assert_eq!(bytes_job["result"]["stdout_lossy"], true, "{bytes_job}");
    let bytes_id = id_of(&bytes_job);
    let exact = api.get(&format!("{bytes_id}?encoding=base64")).await;
    let exact = common::expect_json(exact, StatusCode::OK).await;
    assert_eq!(exact["result"]["stdout"], "b2v/AQo=", "{exact}");

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
    let catalog = &app.pools().launcher().catalog;
    let recipes = common::recipes();
    assert_eq!(
        langs.len(),
        recipes.len(),
        "one language per recipe: {langs:?}"
    );
    for recipe in &recipes {
        let name = recipe.name.as_str();
        let l = langs
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {langs:?}"));
        let manifest = &catalog.languages[name].manifest;
        assert_eq!(l["version"], manifest.version.as_str());
        assert!(!manifest.version.is_empty());
        assert_eq!(l["compiled"], recipe.compile.is_some(), "{name}");
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
        // hello, the bytes job, the files job, the failing one.
        metric_line(&metrics, "ignis_jobs_submitted_total 4"),
        "{metrics}"
    );
    assert!(
        metric_line(&metrics, "ignis_jobs_total{verdict=\"ok\"} 3"),
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
    let app = spawn_app(Opts {
        warm: 0,
        ..Opts::default()
    })
    .await;
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
    let app = spawn_app(Opts {
        warm: 0,
        ..Opts::default()
    })
    .await;
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
