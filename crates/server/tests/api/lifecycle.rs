//! The service over time: restarts, webhooks, load, and shutdown.

use super::*;

#[tokio::test]
async fn queued_jobs_survive_a_restart() {
    let dir = tempfile::tempdir().expect("data dir");
    // No VM may run at all, so every job is still waiting at shutdown: the
    // one a worker took goes back to the queue when the grace runs out.
    let first = spawn_app(Opts {
        warm: 0,
        max_vms: 0,
        workers: 1,
        shutdown_grace: Duration::from_millis(500),
        data_dir: Some(dir.path().to_path_buf()),
        ..Opts::default()
    })
    .await;
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

    let second = spawn_app(Opts {
        warm: 0,
        data_dir: Some(dir.path().to_path_buf()),
        ..Opts::default()
    })
    .await;
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

    let app = spawn_app(Opts {
        warm: 0,
        allow_private_webhooks: true,
        ..Opts::default()
    })
    .await;
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
    let ts = header(ignis_server::webhook::TIMESTAMP_HEADER);
    let signature = header(ignis_server::webhook::SIGNATURE_HEADER);
    let (secret, now) = (secret.trim().as_bytes(), chrono::Utc::now().timestamp());
    let tolerance = ignis_server::webhook::TIMESTAMP_TOLERANCE;
    ignis_server::webhook::verify(secret, &ts, &signature, &body, now, tolerance)
        .expect("signed with the secret, just now");
    assert!(
        ignis_server::webhook::verify(b"another secret", &ts, &signature, &body, now, tolerance)
            .is_err(),
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
    let app = spawn_app(Opts::default()).await;
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
    let mut app = spawn_app(Opts {
        exclusive: true,
        shutdown_grace: Duration::from_secs(60),
        ..Opts::default()
    })
    .await;
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
    let mut app = spawn_app(Opts {
        exclusive: true,
        warm: 0,
        shutdown_grace: Duration::from_millis(500),
        ..Opts::default()
    })
    .await;
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
    let app = spawn_app(Opts {
        exclusive: true,
        ..Opts::default()
    })
    .await;
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
    let languages: Vec<String> = common::recipes().into_iter().map(|r| r.name).collect();
    let booting: usize = languages.iter().map(|l| app.pools().sizes(l).1).sum();
    assert!(booting > 0, "the warm pools are booting");
    // A jailed VMM becomes `qemu` only once its jail is set up and it
    // execs: look until one has (ready or still booting, it is a VM).
    let mut vms = common::qemu_children();
    let since = std::time::Instant::now();
    while !vms
        .iter()
        .any(|v| v.vm_dir.as_ref().is_some_and(|d| d.is_dir()))
    {
        assert!(
            since.elapsed() < std::time::Duration::from_secs(30),
            "booting VMs are QEMU children, with their directories: {vms:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        vms = common::qemu_children();
    }
    let svc = app.svc.clone();
    app.shutdown().await;
    for l in &languages {
        assert_eq!(
            svc.pools.as_ref().expect("pools").sizes(l),
            (0, 0),
            "{l}: nothing ready or booting"
        );
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
