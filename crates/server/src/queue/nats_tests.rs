//! The JetStream queue at its seam, on a real nats-server started for
//! these tests: routing by language, turns between owners, redelivery of
//! what was never acknowledged, duplicates and the stream's limit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ignis_testkit::Nats;

use super::*;

/// A wait for something that must happen (a hang guard, not a measure).
const PATIENCE: Duration = Duration::from_secs(60);

fn job(n: u128, language: &str) -> QueuedJob {
    job_of(n, language, "alice")
}

fn job_of(n: u128, language: &str, owner: &str) -> QueuedJob {
    QueuedJob {
        id: uuid::Uuid::from_u128(n),
        language: language.into(),
        owner: owner.into(),
        max_running: None,
    }
}

async fn pop(q: &NatsQueue) -> Delivery {
    tokio::time::timeout(PATIENCE, q.pop())
        .await
        .expect("a delivery within the hang guard")
        .expect("pop")
}

async fn stream_messages(client: &async_nats::Client) -> u64 {
    let js = jetstream::new(client.clone());
    let mut s = js.get_stream(JOBS_STREAM).await.expect("jobs stream");
    s.info().await.expect("stream info").state.messages
}

#[tokio::test]
async fn workers_get_their_languages_and_unacknowledged_jobs_come_back() {
    let nats = tokio::task::spawn_blocking(Nats::start).await.unwrap();
    let client = crate::nats::connect(&nats.url(), "test").await.unwrap();
    let cfg = NatsQueueConfig {
        max_jobs: 100,
        ack_wait: Duration::from_secs(1),
    };
    let api = NatsQueue::publisher(client.clone(), cfg.clone())
        .await
        .unwrap();
    let python = NatsQueue::puller(client.clone(), cfg.clone(), &["python".into()])
        .await
        .unwrap();
    let go = NatsQueue::puller(client.clone(), cfg, &["go".into()])
        .await
        .unwrap();

    api.push(job(1, "go")).await.unwrap();
    api.push(job(2, "python")).await.unwrap();
    // The same job queued again (recovery after a crash) is kept once.
    api.push(job(2, "python")).await.unwrap();
    assert_eq!(stream_messages(&client).await, 2);

    let d = pop(&python).await;
    assert_eq!((d.job.id, d.redelivered), (job(2, "python").id, false));
    let g = pop(&go).await;
    assert_eq!(g.job, job(1, "go"));
    g.handle.ack().await.unwrap();

    // Never acknowledged (its worker died): it comes back, marked so.
    drop(d);
    let again = pop(&python).await;
    assert_eq!(
        (again.job.id, again.redelivered),
        (job(2, "python").id, true)
    );
    again.handle.progress().await.unwrap();
    again.handle.ack().await.unwrap();
    assert_eq!(stream_messages(&client).await, 0);

    python.close();
    assert!(matches!(python.pop().await, Err(QueueError::Closed)));
    assert!(
        matches!(api.pop().await, Err(QueueError::Backend(_))),
        "the API's queue only publishes"
    );
}

#[tokio::test]
async fn a_full_stream_refuses_and_a_lost_server_is_unavailable() {
    let mut nats = tokio::task::spawn_blocking(Nats::start).await.unwrap();
    let client = crate::nats::connect(&nats.url(), "test").await.unwrap();
    let cfg = NatsQueueConfig {
        max_jobs: 1,
        ..NatsQueueConfig::default()
    };
    let api = NatsQueue::publisher(client.clone(), cfg).await.unwrap();
    api.push(job(1, "python")).await.unwrap();
    let full = api.push(job(2, "python")).await.expect_err("full");
    assert!(matches!(full, QueueError::Full(_)), "{full:?}");
    assert!(full.is_retryable());
    assert_eq!(stream_messages(&client).await, 1);
    api.ping().await.unwrap();

    let mut nats = tokio::task::spawn_blocking(move || {
        nats.pause();
        nats
    })
    .await
    .unwrap();
    let err = api.push(job(3, "python")).await.expect_err("no server");
    assert!(matches!(err, QueueError::Unavailable(_)), "{err:?}");
    assert!(api.ping().await.is_err());
    let nats = tokio::task::spawn_blocking(move || {
        nats.resume();
        nats
    })
    .await
    .unwrap();
    // The stream survived the restart; the client reconnects by itself.
    let mut tries = 0;
    while api.ping().await.is_err() {
        tries += 1;
        assert!(tries < 600, "no reconnection");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stream_messages(&client).await, 1);
    drop(nats);
}

#[tokio::test]
async fn owners_take_turns_and_each_owners_jobs_keep_their_order() {
    let nats = tokio::task::spawn_blocking(Nats::start).await.unwrap();
    let client = crate::nats::connect(&nats.url(), "test").await.unwrap();
    let cfg = NatsQueueConfig::default();
    let api = NatsQueue::publisher(client.clone(), cfg.clone())
        .await
        .unwrap();
    for n in 0..50 {
        api.push(job_of(n, "python", "a")).await.unwrap();
    }
    api.push(job_of(1000, "python", "b")).await.unwrap();
    api.push(job_of(1001, "python", "b")).await.unwrap();
    assert_eq!(stream_messages(&client).await, 52);
    let worker = NatsQueue::puller(client.clone(), cfg, &["python".into()])
        .await
        .unwrap();
    let mut got = vec![];
    for _ in 0..6 {
        let d = pop(&worker).await;
        got.push(d.job.clone());
        d.handle.ack().await.unwrap();
    }
    assert!(
        got[..2].contains(&job_of(1000, "python", "b")),
        "b's first job was not among the first two pops: {got:?}"
    );
    // Turns alternate while both have jobs; then a alone.
    let owners: Vec<&str> = got.iter().map(|j| j.owner.as_str()).collect();
    assert!(owners[..4] == ["a", "b", "a", "b"] || owners[..4] == ["b", "a", "b", "a"]);
    assert_eq!(owners[4..], ["a", "a"]);
    let a: Vec<u128> = got
        .iter()
        .filter(|j| j.owner == "a")
        .map(|j| j.id.as_u128())
        .collect();
    assert_eq!(a, [0, 1, 2, 3], "a's jobs in the order they came");
    assert_eq!(stream_messages(&client).await, 52 - 6);
}

#[tokio::test]
async fn an_owner_at_its_running_cap_on_a_worker_waits_while_others_go_ahead() {
    let nats = tokio::task::spawn_blocking(Nats::start).await.unwrap();
    let client = crate::nats::connect(&nats.url(), "test").await.unwrap();
    let cfg = NatsQueueConfig::default();
    let api = NatsQueue::publisher(client.clone(), cfg.clone())
        .await
        .unwrap();
    let capped = |n| QueuedJob {
        max_running: Some(1),
        ..job_of(n, "python", "a")
    };
    for n in 1..=3 {
        api.push(capped(n)).await.unwrap();
    }
    for n in 11..=13 {
        api.push(job_of(n, "python", "b")).await.unwrap();
    }
    let worker = NatsQueue::puller(client.clone(), cfg, &["python".into()])
        .await
        .unwrap();
    // While a's first job runs, its others are passed over: without the
    // cap, turns would have handed out a's second job among these four.
    let mut a_running = vec![];
    let mut b_done = vec![];
    for _ in 0..4 {
        let d = pop(&worker).await;
        match d.job.owner.as_str() {
            "a" => a_running.push(d),
            _ => {
                b_done.push(d.job.id.as_u128());
                d.handle.ack().await.unwrap();
            }
        }
    }
    assert_eq!(a_running.len(), 1, "a ran more than its cap");
    assert_eq!(a_running[0].job.id.as_u128(), 1);
    assert_eq!(b_done, [11, 12, 13]);
    // a's job ends: its next one goes.
    let first = a_running.pop().unwrap();
    first.handle.ack().await.unwrap();
    drop(first);
    assert_eq!(pop(&worker).await.job.id.as_u128(), 2);
}

/// A job an older API published on the language's own subject (before
/// owners had theirs) is still delivered.
#[tokio::test]
async fn jobs_on_the_subject_from_before_owners_are_still_pulled() {
    let nats = tokio::task::spawn_blocking(Nats::start).await.unwrap();
    let client = crate::nats::connect(&nats.url(), "test").await.unwrap();
    let cfg = NatsQueueConfig::default();
    let api = NatsQueue::publisher(client.clone(), cfg.clone())
        .await
        .unwrap();
    let js = jetstream::new(client.clone());
    let old = serde_json::json!({"id": job(5, "python").id, "language": "python"});
    js.publish("ignis.jobs.python", old.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    api.push(job_of(6, "python", "b")).await.unwrap();
    let worker = NatsQueue::puller(client.clone(), cfg, &["python".into()])
        .await
        .unwrap();
    let mut got = vec![];
    for _ in 0..2 {
        let d = pop(&worker).await;
        got.push(d.job.id.as_u128());
        d.handle.ack().await.unwrap();
    }
    got.sort();
    assert_eq!(got, [5, 6]);
    assert_eq!(stream_messages(&client).await, 0);
}

/// Two workers: while one runs the capped owner's job, the other gets only
/// the other owner's jobs, because the owner's consumer hands out no more.
#[tokio::test]
async fn an_owners_running_cap_holds_across_workers() {
    let nats = tokio::task::spawn_blocking(Nats::start).await.unwrap();
    let client = crate::nats::connect(&nats.url(), "test").await.unwrap();
    let cfg = NatsQueueConfig::default();
    let api = NatsQueue::publisher(client.clone(), cfg.clone())
        .await
        .unwrap();
    let capped = |n| QueuedJob {
        max_running: Some(1),
        ..job_of(n, "python", "a")
    };
    for n in 1..=3 {
        api.push(capped(n)).await.unwrap();
    }
    for n in 11..=14 {
        api.push(job_of(n, "python", "b")).await.unwrap();
    }
    let one = NatsQueue::puller(client.clone(), cfg.clone(), &["python".into()])
        .await
        .unwrap();
    let two = NatsQueue::puller(client.clone(), cfg, &["python".into()])
        .await
        .unwrap();
    // Turns give worker one a's first job within two pops.
    let mut held = None;
    let mut b_left = 4;
    for _ in 0..2 {
        let d = pop(&one).await;
        if d.job.owner == "a" {
            held = Some(d);
            break;
        }
        d.handle.ack().await.unwrap();
        b_left -= 1;
    }
    let held = held.expect("a's job among worker one's first two pops");
    assert_eq!(held.job.id.as_u128(), 1);
    // Worker two has nothing of a's running, yet gets only b's jobs.
    for _ in 0..b_left {
        let d = pop(&two).await;
        assert_eq!(d.job.owner, "b", "a's second job ran beside its first");
        d.handle.ack().await.unwrap();
    }
    held.handle.ack().await.unwrap();
    drop(held);
    assert_eq!(pop(&two).await.job.id.as_u128(), 2);
}
