//! Canceling jobs at every stage, and the order of their events.

use super::*;

#[tokio::test]
async fn canceling_a_running_job_kills_its_vm() {
    // One VM slot and no warm pool: the job after the canceled one can only
    // run if the canceled job's VM was destroyed and its slot given back.
    let app = spawn_app(Opts {
        warm: 0,
        max_vms: 1,
        ..Opts::default()
    })
    .await;
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
    let app = spawn_app(Opts {
        warm: 0,
        max_vms: 1,
        ..Opts::default()
    })
    .await;
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
    assert_eq!(app.pools().sizes("python"), (0, 0), "nothing left booting");
    app.shutdown().await;
}

#[tokio::test]
async fn shutdown_during_an_on_demand_boot_returns() {
    let mut app = spawn_app(Opts {
        warm: 0,
        shutdown_grace: Duration::from_millis(1),
        ..Opts::default()
    })
    .await;
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
    let app = spawn_app(Opts::default()).await;
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
