//! Who sees what: keys, isolation, listing, cancel, events, rate limits.

use super::*;

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
    assert_eq!(stored.owner, crate::api::auth::DEV_OWNER);
    let list = h.get("/v1/jobs", None).await;
    list.assert_status(StatusCode::OK);
    assert_eq!(ids(&list.json()), vec![id.to_string()]);
    h.get("/v1/languages", None)
        .await
        .assert_status(StatusCode::OK);
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
    // which a worker asks first, has it skipped.
    let claimed = h.svc.store.claim(id, false, 2, chrono::Utc::now()).await;
    assert_eq!(
        claimed.expect("claim"),
        crate::store::Claimed::Skipped(JobStatus::Canceled)
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
