//! Sharing the server between keys: admission at `max_queued` is atomic
//! (over real HTTP, many submissions at once), keys without limits of
//! their own get the server's defaults, and the queue takes turns between
//! keys and holds a key's jobs beyond its `max_running`.

use futures::FutureExt;

use super::*;
use crate::keys::{KeyLimits, UNLIMITED};
use crate::queue::Delivery;

/// Fifty submissions at once over HTTP against `max_queued` = 5: exactly
/// five are accepted, and every other one is a 429 problem with
/// `Retry-After`, whatever order they arrive in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_parallel_submissions_against_max_queued_five_admit_exactly_five() {
    let h = harness();
    let (key, owner) = h.key(Some(UNLIMITED), Some(5)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let url = format!("http://{}/v1/jobs", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move { axum::serve(listener, app(h.state.clone())).await });
    // The environment's proxy must not see requests to 127.0.0.1.
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (http, url, key) = (http.clone(), url.clone(), key.clone());
            tokio::spawn(async move {
                let r = http
                    .post(url)
                    .bearer_auth(key)
                    .json(&hello())
                    .send()
                    .await
                    .expect("an answer");
                let status = r.status().as_u16();
                let headers = r.headers().clone();
                let body: Value = r.json().await.expect("a JSON body");
                (status, headers, body)
            })
        })
        .collect();
    let (mut accepted, mut refused) = (0, 0);
    for task in tasks {
        let (status, headers, body) = task.await.expect("join");
        match status {
            202 => accepted += 1,
            429 => {
                refused += 1;
                let content_type = headers.get("content-type").and_then(|v| v.to_str().ok());
                assert_eq!(content_type, Some(PROBLEM_JSON));
                assert!(headers.contains_key("retry-after"), "{headers:?}");
                assert_eq!(body["type"], "urn:ignis:problem:rate-limited", "{body}");
                assert_eq!(body["status"], 429);
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((accepted, refused), (5, 45));
    assert_eq!(h.svc.store.count_queued(&owner).await.expect("count"), 5);
    assert_eq!(h.svc.queue.depth(), 5);
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn keys_without_limits_of_their_own_get_the_servers_defaults() {
    let h = harness_with(|c| {
        c.key_defaults.rate_per_sec = Some(2);
        c.key_defaults.max_queued = Some(1);
    });
    let (plain, _) = h.key(None, None).await;
    h.submit(&plain).await;
    h.post("/v1/jobs", Some(&plain), &hello())
        .await
        .assert_problem(StatusCode::TOO_MANY_REQUESTS, "rate-limited");
    // Two requests spent the default rate of 2 per second.
    let r = h.get("/v1/jobs", Some(&plain)).await;
    r.assert_problem(StatusCode::TOO_MANY_REQUESTS, "rate-limited");
    assert_eq!(r.header(header::RETRY_AFTER), "1");

    // A key the operator made unlimited is: more jobs than the default.
    let (free, _) = h.key(Some(UNLIMITED), Some(UNLIMITED)).await;
    for _ in 0..3 {
        h.submit(&free).await;
    }
    assert_eq!(h.svc.queue.depth(), 4);
}

async fn pop(h: &Harness) -> Delivery {
    h.svc.queue.pop().await.expect("a queued job")
}

#[tokio::test]
async fn the_queue_takes_turns_between_keys_and_holds_a_key_at_max_running() {
    let h = harness();
    let busy = KeyLimits {
        rate_per_sec: Some(UNLIMITED),
        max_queued: Some(UNLIMITED),
        max_running: Some(1),
    };
    let (busy, busy_owner) = {
        let (k, secret) = crate::keys::create_with(&*h.svc.store, "busy", busy)
            .await
            .expect("key");
        (secret, k.id)
    };
    let (other, other_owner) = h.key(Some(UNLIMITED), None).await;
    let mut mine = vec![];
    for _ in 0..10 {
        mine.push(h.submit(&busy).await);
    }
    let theirs = h.submit(&other).await;
    // The other key's job is among the first two out, though it came last.
    let first = pop(&h).await;
    assert_eq!((first.job.id, &first.job.owner), (mine[0], &busy_owner));
    let second = pop(&h).await;
    assert_eq!((second.job.id, &second.job.owner), (theirs, &other_owner));
    // The busy key runs one job at a time: its next waits for the first.
    let mut next = Box::pin(h.svc.queue.pop());
    assert!(
        (&mut next).now_or_never().is_none(),
        "a second busy job ran"
    );
    drop(first);
    let d = next.await.expect("the busy key's next job");
    assert_eq!(d.job.id, mine[1]);
}
