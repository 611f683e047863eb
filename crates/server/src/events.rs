//! Live events of running jobs, for `GET /v1/jobs/{id}/events`.
//!
//! Each active job has a channel with its history so far: a subscriber gets
//! the history and then the live events under one lock, so it never misses
//! or repeats a chunk, however late it arrives.

use std::collections::HashMap;
use std::sync::Mutex;

use ignis_protocol::Stream;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::job::{JobId, JobStatus};

#[derive(Debug, Clone, PartialEq, Serialize)]
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
