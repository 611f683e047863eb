//! The NATS event bus on a real nats-server: what a job's history keeps is
//! bounded per job, and so are its subscribers in one process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::jetstream;
use ignis_testkit::Nats;

use super::*;
use crate::events::HISTORY_EVENTS_MAX;
use crate::queue::nats::{ensure_streams, NatsQueueConfig};

/// A wait for something that must happen (a hang guard, not a measure).
const PATIENCE: Duration = Duration::from_secs(60);

async fn bus_on(nats: &Nats) -> (NatsBus, async_nats::Client) {
    let client = crate::nats::connect(&nats.url(), "test").await.unwrap();
    let js = jetstream::new(client.clone());
    ensure_streams(&js, &NatsQueueConfig::default(), true)
        .await
        .unwrap();
    (NatsBus::new(client.clone()), client)
}

#[tokio::test]
async fn a_jobs_subscribers_are_bounded_and_a_dropped_one_frees_its_place() {
    let nats = tokio::task::spawn_blocking(Nats::start).await.unwrap();
    let (bus, _client) = bus_on(&nats).await;
    let id = uuid::Uuid::now_v7();
    let mut held = Vec::new();
    for _ in 0..SUBSCRIBERS_MAX {
        held.push(bus.subscribe(id).await.unwrap().expect("a stream"));
    }
    match bus.subscribe(id).await {
        Err(BusError::TooManySubscribers { max, .. }) => assert_eq!(max, SUBSCRIBERS_MAX),
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("subscriber {} taken", SUBSCRIBERS_MAX + 1),
    }
    // Another job is not affected, and a dropped subscriber frees a place.
    assert!(bus.subscribe(uuid::Uuid::now_v7()).await.unwrap().is_some());
    held.pop();
    assert!(bus.subscribe(id).await.unwrap().is_some());
}

#[tokio::test]
async fn a_jobs_history_keeps_at_most_its_bound_of_events() {
    let nats = tokio::task::spawn_blocking(Nats::start).await.unwrap();
    let (bus, client) = bus_on(&nats).await;
    let id = uuid::Uuid::now_v7();
    let total = HISTORY_EVENTS_MAX + 100;
    for i in 0..total {
        bus.publish(
            id,
            JobEvent::Status {
                status: if i + 1 == total {
                    crate::job::JobStatus::Completed
                } else {
                    crate::job::JobStatus::Running
                },
            },
        );
    }
    // Publishing goes through one task; wait (bounded) until the last event
    // is in the stream, then count what the job's subject holds.
    let js = jetstream::new(client);
    let subject = format!("ignis.events.{id}");
    let kept = tokio::time::timeout(PATIENCE, async {
        loop {
            let mut stream = js
                .get_stream(crate::queue::nats::EVENTS_STREAM)
                .await
                .unwrap();
            let last = stream.get_last_raw_message_by_subject(&subject).await;
            if let Ok(m) = last {
                let ev: JobEvent = serde_json::from_slice(&m.payload).unwrap();
                if ev
                    == (JobEvent::Status {
                        status: crate::job::JobStatus::Completed,
                    })
                {
                    let info = stream.info().await.unwrap();
                    return info.state.messages;
                }
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the last event reached the stream within the hang guard");
    assert_eq!(kept, HISTORY_EVENTS_MAX as u64, "{total} published");
}
