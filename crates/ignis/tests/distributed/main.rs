//! The distributed mode end to end, as separate processes: a real
//! `nats-server -js` and PostgreSQL, `ignis api` and `ignis worker`
//! processes of the real binary, real VMs. Each test has a cluster of its
//! own, so the tests run side by side.

mod cluster;
#[path = "../common/mod.rs"]
mod common;

use std::collections::BTreeSet;

use cluster::{expect_json, python, until, Cluster, WorkerOpts};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A job that runs a while, so several are in flight at once.
fn slow(n: usize) -> Value {
    python(&format!(
        "import time\nprint('start {n}', flush=True)\ntime.sleep(2)\nprint('end {n}')"
    ))
}

fn ok_with(job: &Value, stdout: &str) {
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["result"]["status"], "ok", "{job}");
    assert_eq!(job["result"]["stdout"], stdout, "{job}");
}

#[tokio::test]
async fn jobs_spread_over_workers_and_survive_a_killed_one() {
    let mut c = Cluster::new().await;
    let api = c.api(&[]).await;
    c.worker(WorkerOpts::default());
    c.worker(WorkerOpts::default());
    c.until_workers(&api, 2).await;

    // More jobs than either worker has room for: both must take some.
    let mut ids = Vec::new();
    for n in 0..8 {
        ids.push((n, api.submit(&slow(n)).await));
    }
    for (n, id) in &ids {
        ok_with(&api.until_final(id).await, &format!("start {n}\nend {n}\n"));
    }
    let health = until("both workers to report their jobs", || async {
        let h = api.health().await;
        let done: Vec<u64> = h["workers"]
            .as_array()?
            .iter()
            .map(|w| w["jobs"].as_u64().unwrap_or(0))
            .collect();
        (done.iter().sum::<u64>() == 8).then_some(h)
    })
    .await;
    for w in health["workers"].as_array().expect("workers") {
        assert!(
            w["jobs"].as_u64() > Some(0),
            "a worker ran nothing: {health}"
        );
    }

    // Now a batch, and SIGKILL a worker while it runs some of them.
    let batch: Vec<(usize, String)> = {
        let mut v = Vec::new();
        for n in 10..16 {
            v.push((n, api.submit(&slow(n)).await));
        }
        v
    };
    let mut first = api.events(&batch[0].1).await;
    first.until("stdout").await;
    let busy = until("a worker running jobs", || async {
        let h = api.health().await;
        h["workers"]
            .as_array()?
            .iter()
            .find(|w| w["running"].as_u64() > Some(0))
            .and_then(|w| w["id"].as_str().map(str::to_owned))
    })
    .await;
    c.worker_by_id(&busy).kill();

    let mut retried = 0;
    for (n, id) in &batch {
        let job = api.until_final(id).await;
        ok_with(&job, &format!("start {n}\nend {n}\n"));
        if job["attempts"].as_u64() > Some(1) {
            retried += 1;
        }
    }
    assert!(
        retried > 0,
        "some job ran on the killed worker and again elsewhere"
    );
    // Exactly once: every job ended once, with one result, and nothing
    // more was accepted or ended than was submitted.
    let list = expect_json(
        api.request(Method::GET, "/v1/jobs?limit=100")
            .send()
            .await
            .expect("list"),
        StatusCode::OK,
    )
    .await;
    let jobs = list["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 14);
    assert!(jobs.iter().all(|j| j["status"] == "completed"), "{list}");
}

#[tokio::test]
async fn outages_of_nats_and_postgres_lose_nothing() {
    let mut c = Cluster::new().await;
    let api = c.api(&[]).await;
    c.worker(WorkerOpts::default());
    c.worker(WorkerOpts::default());
    c.until_workers(&api, 2).await;

    let mut accepted = Vec::new();
    for n in 0..4 {
        accepted.push((n, api.submit(&slow(n)).await));
    }

    // NATS goes away mid-run: submissions are refused, not lost or hung.
    // (The servers' stop and start block this test's thread; everything
    // else runs in other processes.)
    c.nats.pause();
    let r = api.post(&python("print('during the NATS outage')")).await;
    let p = expect_json(r, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(p["type"], "urn:ignis:problem:unavailable", "{p}");
    c.nats.resume();
    for n in 4..6 {
        let id = until("a submission after NATS came back", || async {
            let r = api.post(&slow(n)).await;
            match r.status() {
                StatusCode::ACCEPTED => Some(expect_json(r, StatusCode::ACCEPTED).await),
                StatusCode::SERVICE_UNAVAILABLE => None,
                other => panic!("unexpected {other}: {:?}", r.text().await),
            }
        })
        .await;
        accepted.push((n, id["id"].as_str().expect("id").to_owned()));
    }

    // Then PostgreSQL: the API answers 503 and health says why.
    c.pg.pause();
    let r = api
        .post(&python("print('during the database outage')"))
        .await;
    let p = expect_json(r, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(p["type"], "urn:ignis:problem:unavailable", "{p}");
    let h = api
        .request(Method::GET, "/healthz")
        .send()
        .await
        .expect("healthz");
    assert_eq!(h.status(), StatusCode::SERVICE_UNAVAILABLE);
    c.pg.resume();

    // Everything accepted completes, once.
    for (n, id) in &accepted {
        ok_with(&api.until_final(id).await, &format!("start {n}\nend {n}\n"));
    }
    let ids: BTreeSet<&String> = accepted.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), 6);
}

#[tokio::test]
async fn a_worker_without_the_go_image_never_gets_go_jobs() {
    let mut c = Cluster::new().await;
    let api = c.api(&[]).await;
    c.worker(WorkerOpts {
        only: Some(vec!["python"]),
        ..WorkerOpts::default()
    });
    c.worker(WorkerOpts::default());
    let h = c.until_workers(&api, 2).await;
    let langs: Vec<Vec<Value>> = h["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| w["languages"].as_array().cloned().unwrap_or_default())
        .collect();
    assert!(langs.contains(&vec![json!("python")]), "{h}");

    let mut ids = Vec::new();
    for n in 0..4 {
        let code =
            format!("package main\nimport \"fmt\"\nfunc main() {{ fmt.Println(\"go {n}\") }}\n");
        ids.push((
            n,
            api.submit(&json!({"language": "go", "code": code})).await,
        ));
    }
    for (n, id) in &ids {
        ok_with(&api.until_final(id).await, &format!("go {n}\n"));
    }
    let h = until("the workers to report", || async {
        let h = api.health().await;
        let total: u64 = h["workers"]
            .as_array()?
            .iter()
            .map(|w| w["jobs"].as_u64().unwrap_or(0))
            .sum();
        (total == 4).then_some(h)
    })
    .await;
    for w in h["workers"].as_array().expect("workers") {
        if w["languages"] == json!(["python"]) {
            assert_eq!(w["jobs"], 0, "the python-only worker ran a go job: {h}");
        }
    }
}

#[tokio::test]
async fn cancel_and_events_cross_processes_and_a_full_queue_is_503() {
    let mut c = Cluster::new().await;
    let api1 = c.api(&["--queue-max", "2"]).await;
    let api2 = c.api(&["--queue-max", "2"]).await;
    c.worker(WorkerOpts {
        capacity: 1,
        warm: 1,
        only: Some(vec!["python"]),
    });
    c.until_workers(&api1, 1).await;
    c.until_workers(&api2, 1).await;

    let spin = python("print('spinning', flush=True)\nwhile True:\n    pass\n");
    let a = api1.submit(&spin).await;
    // The events of a job submitted through one API process, read through
    // another, from the worker process that runs it.
    let mut events = api2.events(&a).await;
    let seen = events.until("stdout").await;
    let names: Vec<&str> = seen.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names, ["status", "status", "stdout"], "{seen:?}");
    assert_eq!(seen[0].1, json!({"status": "queued"}));
    assert_eq!(seen[1].1, json!({"status": "running"}));
    assert_eq!(seen[2].1, json!({"data": "spinning\n"}));

    // The worker has room for one job: the next waits in the stream, and
    // the stream (limit 2) is then full.
    let b = api1.submit(&python("print('after')")).await;
    let r = api1.post(&python("print('one too many')")).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let p: Value = r.json().await.expect("problem");
    assert_eq!(p["type"], "urn:ignis:problem:queue-full", "{p}");
    let list = expect_json(
        api1.request(Method::GET, "/v1/jobs")
            .send()
            .await
            .expect("list"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        list["jobs"].as_array().map(Vec::len),
        Some(2),
        "the refused job was not half-created: {list}"
    );

    // Cancel through the other API process: it reaches the worker.
    let r = api2
        .request(Method::DELETE, &format!("/v1/jobs/{a}"))
        .send()
        .await
        .expect("DELETE");
    let canceled = expect_json(r, StatusCode::OK).await;
    assert_eq!(canceled["status"], "canceled");
    let rest = events.until("result").await;
    assert_eq!(
        rest.last().map(|(_, d)| d["status"].clone()),
        Some(json!("canceled"))
    );
    // Its VM was freed: the job behind it runs.
    let mut after = api2.events(&b).await;
    let end = after.until("result").await;
    let last = &end.last().expect("result").1;
    assert_eq!(last["result"]["stdout"], "after\n", "{last}");
    assert_eq!(api1.job(&a).await["status"], "canceled");
}
