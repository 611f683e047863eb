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
    /// The job has as many subscribers as one job may have.
    #[error("job {id} already has {max} subscribers; try again when one leaves")]
    TooManySubscribers { id: JobId, max: usize },
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
        Ok(self.hub.subscribe(id)?.map(|(history, rx)| {
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
    /// The history kept for late subscribers was full (in events or in
    /// bytes): output after this point was streamed live but not kept, so
    /// a subscriber who came later sees this instead of it. The final
    /// `result` still holds the whole output.
    Trimmed {
        /// What filled up: `events` or `bytes`.
        limit: String,
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
            JobEvent::Trimmed { .. } => "trimmed",
        }
    }
}

/// Output kept per job for late subscribers; beyond it only live events flow.
pub const HISTORY_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Events kept per job for late subscribers. Output chunks that follow one
/// another on the same stream are joined in the history, so a program that
/// writes a byte at a time fills this only by switching streams.
pub const HISTORY_EVENTS_MAX: usize = 4096;

/// Subscribers one job may have at once (SSE clients and waiting
/// submissions); more are refused (429) rather than each costing memory.
pub const SUBSCRIBERS_MAX: usize = 64;

#[derive(Debug, Default)]
pub struct EventHub {
    jobs: Mutex<HashMap<JobId, Channel>>,
}

#[derive(Debug)]
struct Channel {
    history: Vec<JobEvent>,
    bytes: usize,
    /// The history is full and says so (a [`JobEvent::Trimmed`] ends it).
    trimmed: bool,
    tx: broadcast::Sender<JobEvent>,
}

impl Channel {
    /// Keeps `ev` for late subscribers, within the bounds: joined to the
    /// output before it when it continues it, and once the history is
    /// full, a single `trimmed` event in place of all that follows.
    fn keep(&mut self, ev: &JobEvent) {
        if self.trimmed {
            return;
        }
        let size = match ev {
            JobEvent::Output { data, .. } => data.len(),
            _ => 0,
        };
        if self.bytes + size > HISTORY_BYTES_MAX {
            return self.trim("bytes");
        }
        if let (
            JobEvent::Output { stream, data },
            Some(JobEvent::Output {
                stream: last,
                data: kept,
            }),
        ) = (ev, self.history.last_mut())
        {
            if stream == last {
                kept.push_str(data);
                self.bytes += size;
                return;
            }
        }
        // One place stays free for the `trimmed` event.
        if self.history.len() + 1 >= HISTORY_EVENTS_MAX {
            return self.trim("events");
        }
        self.bytes += size;
        self.history.push(ev.clone());
    }

    fn trim(&mut self, limit: &str) {
        self.trimmed = true;
        self.history.push(JobEvent::Trimmed {
            limit: limit.to_owned(),
        });
    }
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
            trimmed: false,
            tx: broadcast::channel(1024).0,
        });
    }

    pub fn publish(&self, id: JobId, ev: JobEvent) {
        let mut jobs = self.lock();
        let Some(ch) = jobs.get_mut(&id) else { return };
        ch.keep(&ev);
        let _ = ch.tx.send(ev);
    }

    /// Publishes the final event and forgets the job.
    pub fn finish(&self, id: JobId, ev: JobEvent) {
        self.publish(id, ev);
        self.lock().remove(&id);
    }

    /// The history so far and the live events of job `id`; `None` when
    /// the job has no channel here. A subscriber beyond
    /// [`SUBSCRIBERS_MAX`] is refused; one that drops its receiver frees
    /// its place.
    pub fn subscribe(&self, id: JobId) -> Result<Option<Subscription>, BusError> {
        let jobs = self.lock();
        let Some(ch) = jobs.get(&id) else {
            return Ok(None);
        };
        if ch.tx.receiver_count() >= SUBSCRIBERS_MAX {
            return Err(BusError::TooManySubscribers {
                id,
                max: SUBSCRIBERS_MAX,
            });
        }
        Ok(Some((ch.history.clone(), ch.tx.subscribe())))
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
        let (history, mut rx) = hub.subscribe(id).expect("allowed").expect("open");
        assert_eq!(history.len(), 1);
        hub.finish(
            id,
            JobEvent::Result {
                job: serde_json::json!({}),
            },
        );
        assert_eq!(rx.try_recv().expect("live").name(), "result");
        assert!(hub.subscribe(id).expect("allowed").is_none());
    }

    fn output(stream: Stream, data: &str) -> JobEvent {
        JobEvent::Output {
            stream,
            data: data.into(),
        }
    }

    /// A flood of one-byte writes is one event in the history, not a
    /// million; a flood that alternates streams fills the history up to
    /// its bound, which then says it was trimmed.
    #[test]
    fn history_is_bounded_in_events_and_says_when_trimmed() {
        let hub = EventHub::default();
        let id = uuid::Uuid::now_v7();
        hub.open(id);
        for _ in 0..100_000 {
            hub.publish(id, output(Stream::Stdout, "x"));
        }
        let (history, _rx) = hub.subscribe(id).expect("allowed").expect("open");
        assert_eq!(history, vec![output(Stream::Stdout, &"x".repeat(100_000))]);

        for i in 0..100_000 {
            let stream = [Stream::Stdout, Stream::Stderr][i % 2];
            hub.publish(id, output(stream, "y"));
        }
        let (history, _rx) = hub.subscribe(id).expect("allowed").expect("open");
        assert_eq!(history.len(), HISTORY_EVENTS_MAX);
        assert_eq!(
            history.last(),
            Some(&JobEvent::Trimmed {
                limit: "events".into()
            })
        );
    }

    #[test]
    fn history_is_bounded_in_bytes() {
        let hub = EventHub::default();
        let id = uuid::Uuid::now_v7();
        hub.open(id);
        let chunk = "z".repeat(1024 * 1024);
        for _ in 0..(HISTORY_BYTES_MAX / chunk.len() + 3) {
            hub.publish(id, output(Stream::Stdout, &chunk));
        }
        let (history, _rx) = hub.subscribe(id).expect("allowed").expect("open");
        let kept: usize = history
            .iter()
            .map(|e| match e {
                JobEvent::Output { data, .. } => data.len(),
                _ => 0,
            })
            .sum();
        assert!(kept <= HISTORY_BYTES_MAX, "{kept}");
        assert_eq!(
            history.last(),
            Some(&JobEvent::Trimmed {
                limit: "bytes".into()
            })
        );
    }

    #[test]
    fn subscribers_per_job_are_bounded() {
        let hub = EventHub::default();
        let id = uuid::Uuid::now_v7();
        hub.open(id);
        let mut subs: Vec<_> = (0..SUBSCRIBERS_MAX)
            .map(|_| hub.subscribe(id).expect("allowed").expect("open"))
            .collect();
        assert!(matches!(
            hub.subscribe(id),
            Err(BusError::TooManySubscribers { .. })
        ));
        subs.pop();
        assert!(hub.subscribe(id).expect("a place was freed").is_some());
    }
}
