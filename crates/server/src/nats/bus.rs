//! Job events and cancels over NATS.
//!
//! Whoever runs a job publishes its events on `ignis.events.<id>`, which a
//! JetStream stream keeps; a subscriber (any API process) reads them with
//! an ordered consumer from the first, so it gets the history and then the
//! live events, in order, without gaps. Publishing goes through one task
//! per process, so one publisher's events of a job stay in order.
//!
//! A cancel is a request on `ignis.cancel.<id>`: the worker running the job
//! stops it and answers; no answer means nobody runs it now.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::{self};
use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::events::{Bus, BusError, EventStream, JobEvent, RunningJobs, SUBSCRIBERS_MAX};
use crate::job::JobId;
use crate::queue::nats::EVENTS_STREAM;

/// How long a cancel waits for the worker running the job to answer.
const STOP_WAIT: Duration = Duration::from_secs(2);

fn event_subject(id: JobId) -> String {
    format!("ignis.events.{id}")
}

fn cancel_subject(id: JobId) -> String {
    format!("ignis.cancel.{id}")
}

#[derive(Debug)]
pub struct NatsBus {
    client: async_nats::Client,
    js: jetstream::Context,
    outbox: mpsc::UnboundedSender<(String, Vec<u8>)>,
    subscribers: Subscribers,
}

/// Subscribers per job in this process, bounded as in the one-process hub:
/// each is a consumer on the server, and costs memory here.
#[derive(Debug, Clone, Default)]
struct Subscribers(Arc<Mutex<HashMap<JobId, usize>>>);

impl Subscribers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, usize>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for one more subscriber of `id`, given back when dropped.
    fn enter(&self, id: JobId) -> Result<Place, BusError> {
        let mut g = self.lock();
        let n = g.entry(id).or_default();
        if *n >= SUBSCRIBERS_MAX {
            return Err(BusError::TooManySubscribers {
                id,
                max: SUBSCRIBERS_MAX,
            });
        }
        *n += 1;
        Ok(Place {
            of: self.clone(),
            id,
        })
    }
}

#[derive(Debug)]
struct Place {
    of: Subscribers,
    id: JobId,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut g = self.of.lock();
        if let Some(n) = g.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                g.remove(&self.id);
            }
        }
    }
}

impl NatsBus {
    pub fn new(client: async_nats::Client) -> NatsBus {
        let (outbox, mut rx) = mpsc::unbounded_channel::<(String, Vec<u8>)>();
        let c = client.clone();
        tokio::spawn(async move {
            while let Some((subject, body)) = rx.recv().await {
                // While NATS is away the client buffers; what it cannot
                // take is lost as a live event, never as a result (the
                // store keeps that).
                if let Err(e) = c.publish(subject, body.into()).await {
                    tracing::debug!("event not published: {e}");
                }
            }
        });
        NatsBus {
            js: jetstream::new(client.clone()),
            client,
            outbox,
            subscribers: Subscribers::default(),
        }
    }

    /// Answers cancel requests for the jobs running in this process.
    pub async fn serve_cancels(
        &self,
        running: Arc<RunningJobs>,
    ) -> Result<tokio::task::JoinHandle<()>, BusError> {
        let mut sub = self
            .client
            .subscribe("ignis.cancel.*")
            .await
            .map_err(|e| BusError::Unavailable(format!("subscribing to cancels: {e}")))?;
        let client = self.client.clone();
        Ok(tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let id = msg
                    .subject
                    .as_str()
                    .rsplit('.')
                    .next()
                    .map(JobId::parse_str);
                let Some(Ok(id)) = id else { continue };
                // Only the worker that runs it answers; the others keep
                // quiet, so no answer means nobody runs it.
                if running.stop(id) {
                    if let Some(reply) = msg.reply {
                        let _ = client.publish(reply, "stopped".into()).await;
                    }
                }
            }
        }))
    }
}

#[async_trait]
impl Bus for NatsBus {
    fn publish(&self, id: JobId, ev: JobEvent) {
        match serde_json::to_vec(&ev) {
            Ok(body) => {
                let _ = self.outbox.send((event_subject(id), body));
            }
            Err(e) => tracing::error!(job = %id, "encoding an event: {e}"),
        }
    }

    async fn subscribe(&self, id: JobId) -> Result<Option<EventStream>, BusError> {
        let unavailable = |e: &dyn std::fmt::Display| BusError::Unavailable(e.to_string());
        let place = self.subscribers.enter(id)?;
        let stream = self
            .js
            .get_stream(EVENTS_STREAM)
            .await
            .map_err(|e| unavailable(&e))?;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: event_subject(id),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(&e))?;
        let messages = consumer.messages().await.map_err(|e| unavailable(&e))?;
        let events = messages
            .take_while(|m| futures::future::ready(m.is_ok()))
            .filter_map(move |m| {
                // The place is held for as long as the stream lives.
                let _ = &place;
                let ev = m
                    .ok()
                    .and_then(|m| serde_json::from_slice::<JobEvent>(&m.payload).ok());
                futures::future::ready(ev)
            })
            .boxed();
        Ok(Some(events))
    }

    async fn stop(&self, id: JobId) -> bool {
        let ask = self.client.request(cancel_subject(id), "".into());
        matches!(tokio::time::timeout(STOP_WAIT, ask).await, Ok(Ok(_)))
    }
}

#[cfg(test)]
#[path = "bus_tests.rs"]
mod tests;
