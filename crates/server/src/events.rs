//! Live events of jobs, for `GET /v1/jobs/{id}/events` and `?wait=true`,
//! and the way a cancel reaches the worker running a job.
//!
//! [`Bus`] is the seam: in one process the [`LocalBus`] (an [`EventHub`]
//! and the table of jobs running here); across processes the NATS bus in
//! `queue::nats`. Whoever runs a job publishes its events; whoever serves
//! the API subscribes, and gets a job's history so far and then its live
//! events, so a late subscriber never misses or repeats a chunk.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt};
use ignis_protocol::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_util::sync::CancellationToken;

use crate::job::{JobId, JobStatus};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The messaging system cannot be reached now; retry later.
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
}

/// A job's events: its history so far, then live ones until `result`.
pub type EventStream = BoxStream<'static, JobEvent>;

/// Where job events and cancels travel.
#[async_trait]
pub trait Bus: Send + Sync + std::fmt::Debug + 'static {
    /// Publishes an event of job `id`; never blocks. Events of one job from
    /// one publisher arrive in order.
    fn publish(&self, id: JobId, ev: JobEvent);
    /// Publishes the job's last event (`result`) and lets go of its channel.
    fn finish(&self, id: JobId, ev: JobEvent) {
        self.publish(id, ev);
    }
    /// The job's events from its first, then live. `None` when this bus
    /// knows nothing of the job (then the store has the final word).
    async fn subscribe(&self, id: JobId) -> Result<Option<EventStream>, BusError>;
    /// Asks whoever runs job `id` to stop it. False when nobody does (it
    /// was between workers), so the caller publishes its end itself.
    async fn stop(&self, id: JobId) -> bool;
}

/// Cancellation handles of the jobs running in this process.
#[derive(Debug, Default)]
pub struct RunningJobs {
    jobs: Mutex<HashMap<JobId, CancellationToken>>,
}

impl RunningJobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, CancellationToken>> {
        // A plain map; a panic elsewhere leaves nothing half-done.
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, id: JobId, token: CancellationToken) {
        self.lock().insert(id, token);
    }

    pub fn remove(&self, id: JobId) {
        self.lock().remove(&id);
    }

    /// Stops a job running in this process; false if it is not running here.
    pub fn stop(&self, id: JobId) -> bool {
        self.lock()
            .get(&id)
            .map(CancellationToken::cancel)
            .is_some()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The bus of the one-process server: an in-memory hub, and cancels that
/// reach the local workers directly.
#[derive(Debug, Default)]
pub struct LocalBus {
    pub hub: EventHub,
    pub running: Arc<RunningJobs>,
}

impl LocalBus {
    pub fn new(running: Arc<RunningJobs>) -> LocalBus {
        LocalBus {
            hub: EventHub::default(),
            running,
        }
    }
}

#[async_trait]
impl Bus for LocalBus {
    fn publish(&self, id: JobId, ev: JobEvent) {
        if matches!(ev, JobEvent::Status { .. }) {
            self.hub.open(id);
        }
        self.hub.publish(id, ev);
    }

    fn finish(&self, id: JobId, ev: JobEvent) {
        self.hub.finish(id, ev);
    }

    async fn subscribe(&self, id: JobId) -> Result<Option<EventStream>, BusError> {
        Ok(self.hub.subscribe(id).map(|(history, rx)| {
            // A client too slow to keep up is cut off rather than shown a
            // gap; reconnecting replays the whole history.
            let live = BroadcastStream::new(rx)
                .take_while(|r| futures::future::ready(r.is_ok()))
                .filter_map(|r| futures::future::ready(r.ok()));
            stream::iter(history).chain(live).boxed()
        }))
    }

    async fn stop(&self, id: JobId) -> bool {
        self.running.stop(id)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum JobEvent {
    Status {
        status: JobStatus,
    },
    Output {
        stream: Stream,
        data: String,
    },
    /// The last event: the whole job as `GET /v1/jobs/{id}` shows it.
    Result {
        job: serde_json::Value,
    },
}

impl JobEvent {
    /// The SSE `event:` name.
    pub fn name(&self) -> &'static str {
        match self {
            JobEvent::Status { .. } => "status",
            JobEvent::Output {
                stream: Stream::Stdout,
                ..
            } => "stdout",
            JobEvent::Output {
                stream: Stream::Stderr,
                ..
            } => "stderr",
            JobEvent::Result { .. } => "result",
        }
    }
}

/// Output kept per job for late subscribers; beyond it only live events flow.
const HISTORY_BYTES_MAX: usize = 16 * 1024 * 1024;

#[derive(Debug, Default)]
pub struct EventHub {
    jobs: Mutex<HashMap<JobId, Channel>>,
}

#[derive(Debug)]
struct Channel {
    history: Vec<JobEvent>,
    bytes: usize,
    tx: broadcast::Sender<JobEvent>,
}

pub type Subscription = (Vec<JobEvent>, broadcast::Receiver<JobEvent>);

impl EventHub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Channel>> {
        // Plain map of channels; a panic elsewhere leaves nothing half-done.
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn open(&self, id: JobId) {
        self.lock().entry(id).or_insert_with(|| Channel {
            history: Vec::new(),
            bytes: 0,
            tx: broadcast::channel(1024).0,
        });
    }

    pub fn publish(&self, id: JobId, ev: JobEvent) {
        let mut jobs = self.lock();
        let Some(ch) = jobs.get_mut(&id) else { return };
        let size = match &ev {
            JobEvent::Output { data, .. } => data.len(),
            _ => 0,
        };
        if ch.bytes + size <= HISTORY_BYTES_MAX {
            ch.bytes += size;
            ch.history.push(ev.clone());
        }
        let _ = ch.tx.send(ev);
    }

    /// Publishes the final event and forgets the job.
    pub fn finish(&self, id: JobId, ev: JobEvent) {
        self.publish(id, ev);
        self.lock().remove(&id);
    }

    pub fn subscribe(&self, id: JobId) -> Option<Subscription> {
        let jobs = self.lock();
        let ch = jobs.get(&id)?;
        Some((ch.history.clone(), ch.tx.subscribe()))
    }
}

/// Turns output chunks into text without breaking a multi-byte character
/// that a chunk boundary happened to split.
#[derive(Debug, Default)]
pub struct Utf8Chunker {
    pending: Vec<u8>,
}

impl Utf8Chunker {
    pub fn push(&mut self, data: &[u8]) -> String {
        self.pending.extend_from_slice(data);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // from_utf8 vouched for these bytes.
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        // An incomplete character at the end: wait for more.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + n);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_characters_are_joined() {
        let mut c = Utf8Chunker::default();
        let bytes = "héllo €".as_bytes();
        let (a, b) = bytes.split_at(2); // splits "é"
        let mut s = c.push(a);
        s.push_str(&c.push(b));
        assert_eq!(s, "héllo €");
        assert_eq!(c.push(&[0xff, b'x']), "\u{fffd}x");
    }

    #[test]
    fn late_subscribers_get_history_then_live() {
        let hub = EventHub::default();
        let id = uuid::Uuid::now_v7();
        hub.open(id);
        hub.publish(
            id,
            JobEvent::Status {
                status: JobStatus::Running,
            },
        );
        let (history, mut rx) = hub.subscribe(id).expect("open");
        assert_eq!(history.len(), 1);
        hub.finish(
            id,
            JobEvent::Result {
                job: serde_json::json!({}),
            },
        );
        assert_eq!(rx.try_recv().expect("live").name(), "result");
        assert!(hub.subscribe(id).is_none());
    }
}
