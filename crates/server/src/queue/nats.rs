//! The distributed queue: a NATS JetStream work-queue stream.
//!
//! One subject per language and owner (`ignis.jobs.<language>.<owner
//! hash>`) and one durable pull consumer per subject, shared by every
//! worker that has that language's image, so a worker only ever pulls the
//! languages it can run. Owners take turns: a worker's puller for a
//! language lists the owners with jobs in the stream and pulls from them
//! round robin (see `nats_turns.rs`), so one key with a thousand queued
//! jobs delays another's job by about one job per worker, and each owner's
//! jobs leave in the order they came.
//!
//! A worker pulls one job per free slot: each waiting [`JobQueue::pop`] is
//! one unit of demand, and a language's puller asks the server for a job
//! only while there is demand it has claimed. A job stays in the stream
//! until a worker acknowledges it (after its result is stored); one never
//! acknowledged is delivered again after the consumer's `ack_wait`.
//!
//! The stream has limits: at `max_messages` a publish is refused
//! ([`QueueError::Full`]) and nothing is added. Publishes carry the job id
//! as `Nats-Msg-Id`, so queueing the same job twice within the duplicate
//! window (recovery after a crash) stores it once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, AckKind};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Mutex, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{Acker, Delivery, JobQueue, QueueError, QueuedJob};
use crate::job::JobId;

/// The stream that holds queued jobs.
pub const JOBS_STREAM: &str = "IGNIS_JOBS";
/// The stream that keeps job events for late subscribers.
pub const EVENTS_STREAM: &str = "IGNIS_EVENTS";

/// The subject of `owner`'s jobs in `language`. The owner is hashed: it
/// may hold characters a subject cannot, and is nobody else's business.
pub fn job_subject(language: &str, owner: &str) -> String {
    use sha2::Digest;
    let hash = hex::encode(sha2::Sha256::digest(owner.as_bytes()));
    format!("ignis.jobs.{language}.{}", &hash[..16])
}

/// How the queue is set up; the API's settings win on the stream's limits.
#[derive(Debug, Clone)]
pub struct NatsQueueConfig {
    /// Jobs the stream holds at most (queued and running together).
    pub max_jobs: i64,
    /// Unacknowledged this long, a job is delivered to another worker.
    pub ack_wait: Duration,
}

impl Default for NatsQueueConfig {
    fn default() -> Self {
        NatsQueueConfig {
            max_jobs: 10_000,
            ack_wait: Duration::from_secs(30),
        }
    }
}

/// What a message on the jobs stream says.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobMessage {
    id: JobId,
    language: String,
    #[serde(default)]
    owner: String,
    #[serde(default)]
    max_running: Option<u32>,
}

/// Sorts a JetStream error: unreachable server (retry) or other.
pub(crate) fn unavailable(what: &str, e: impl std::fmt::Display) -> QueueError {
    QueueError::Unavailable(format!("{what}: {e}"))
}

/// Makes sure both streams exist. `update` (the API) also sets the jobs
/// stream's limits to `cfg`, so an operator's change takes effect.
pub async fn ensure_streams(
    js: &jetstream::Context,
    cfg: &NatsQueueConfig,
    update: bool,
) -> Result<stream::Stream, QueueError> {
    let jobs = stream::Config {
        name: JOBS_STREAM.into(),
        subjects: vec!["ignis.jobs.>".into()],
        retention: RetentionPolicy::WorkQueue,
        max_messages: cfg.max_jobs,
        discard: DiscardPolicy::New,
        storage: StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    let events = stream::Config {
        name: EVENTS_STREAM.into(),
        subjects: vec!["ignis.events.*".into()],
        retention: RetentionPolicy::Limits,
        max_age: Duration::from_secs(3600),
        max_bytes: 512 * 1024 * 1024,
        // Per job, as the one-process hub keeps: a job that floods events
        // loses its oldest ones, not other jobs' history.
        max_messages_per_subject: crate::events::HISTORY_EVENTS_MAX as i64,
        discard: DiscardPolicy::Old,
        storage: StorageType::File,
        ..Default::default()
    };
    js.get_or_create_stream(events.clone())
        .await
        .map_err(|e| unavailable("events stream", e))?;
    // A stream made by an earlier version lacks the per-job bound.
    js.update_stream(events)
        .await
        .map_err(|e| unavailable("events stream limits", e))?;
    let stream = js
        .get_or_create_stream(jobs.clone())
        .await
        .map_err(|e| unavailable("jobs stream", e))?;
    if update {
        js.update_stream(jobs)
            .await
            .map_err(|e| unavailable("jobs stream limits", e))?;
    }
    Ok(stream)
}

/// The JetStream queue. The API only pushes; a worker also pops the
/// languages given to [`NatsQueue::pull`].
#[derive(Debug)]
pub struct NatsQueue {
    js: jetstream::Context,
    client: async_nats::Client,
    cfg: NatsQueueConfig,
    depth: Arc<AtomicUsize>,
    pulling: Option<Pulling>,
    closed: CancellationToken,
}

#[derive(Debug)]
struct Pulling {
    /// Free slots that asked for a job and have not got one.
    demand: Arc<Semaphore>,
    deliveries: Mutex<mpsc::Receiver<Delivery>>,
}

impl NatsQueue {
    /// A queue that publishes jobs (the API). Creates the streams and
    /// keeps the depth fresh in the background.
    pub async fn publisher(
        client: async_nats::Client,
        cfg: NatsQueueConfig,
    ) -> Result<NatsQueue, QueueError> {
        let js = jetstream::new(client.clone());
        ensure_streams(&js, &cfg, true).await?;
        let q = NatsQueue {
            js,
            client,
            cfg,
            depth: Arc::default(),
            pulling: None,
            closed: CancellationToken::new(),
        };
        q.watch_depth();
        Ok(q)
    }

    /// A queue a worker pops `languages` from.
    pub async fn puller(
        client: async_nats::Client,
        cfg: NatsQueueConfig,
        languages: &[String],
    ) -> Result<NatsQueue, QueueError> {
        let js = jetstream::new(client.clone());
        let stream = ensure_streams(&js, &cfg, false).await?;
        let demand = Arc::new(Semaphore::new(0));
        let (tx, rx) = mpsc::channel(languages.len().max(1));
        let closed = CancellationToken::new();
        let shared = turns::Shared {
            demand: demand.clone(),
            tx,
            closed: closed.clone(),
            running: Arc::default(),
        };
        for language in languages {
            let puller = turns::Puller::new(
                language.clone(),
                client.clone(),
                stream.clone(),
                cfg.ack_wait,
                shared.clone(),
            )
            .await?;
            tokio::spawn(puller.run());
        }
        let q = NatsQueue {
            js,
            client,
            cfg,
            depth: Arc::default(),
            pulling: Some(Pulling {
                demand,
                deliveries: Mutex::new(rx),
            }),
            closed,
        };
        q.watch_depth();
        Ok(q)
    }

    /// Refreshes [`JobQueue::depth`] from the stream every second.
    fn watch_depth(&self) {
        let (js, depth, closed) = (self.js.clone(), self.depth.clone(), self.closed.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    () = closed.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Ok(mut s) = js.get_stream(JOBS_STREAM).await {
                    if let Ok(info) = s.info().await {
                        let n = usize::try_from(info.state.messages).unwrap_or(usize::MAX);
                        depth.store(n, Ordering::Relaxed);
                    }
                }
            }
        });
    }

    pub fn config(&self) -> &NatsQueueConfig {
        &self.cfg
    }
}

/// A delivery's message, and the running slot of its owner on this worker
/// (given back when the last handle on the delivery is dropped).
#[derive(Debug, Clone)]
struct NatsAck {
    msg: Arc<jetstream::Message>,
    _slot: Arc<turns::Slot>,
}

#[async_trait]
impl Acker for NatsAck {
    async fn ack(&self) -> Result<(), QueueError> {
        // Double ack: the server confirmed it, so an ack lost on the way
        // is an error here rather than a silent redelivery.
        self.msg
            .double_ack()
            .await
            .map_err(|e| unavailable("ack", e))
    }

    async fn progress(&self) -> Result<(), QueueError> {
        self.msg
            .ack_with(AckKind::Progress)
            .await
            .map_err(|e| unavailable("progress", e))
    }

    fn clone_box(&self) -> Box<dyn Acker> {
        Box::new(self.clone())
    }
}

#[async_trait]
impl JobQueue for NatsQueue {
    async fn push(&self, job: QueuedJob) -> Result<(), QueueError> {
        if self.closed.is_cancelled() {
            return Err(QueueError::Closed);
        }
        let body = JobMessage {
            id: job.id,
            language: job.language.clone(),
            owner: job.owner.clone(),
            max_running: job.max_running,
        };
        let payload = serde_json::to_vec(&body)
            .map_err(|e| QueueError::Backend(format!("encoding a job message: {e}")))?;
        let msg = PublishMessage::build()
            .payload(payload.into())
            .message_id(job.id.to_string());
        let ack = self
            .js
            .send_publish(job_subject(&job.language, &job.owner), msg)
            .await
            .map_err(|e| unavailable("publish", e))?;
        match ack.await {
            Ok(_) => {
                self.depth.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                let text = e.to_string();
                let full = ["maximum messages", "maximum bytes", "10077"]
                    .iter()
                    .any(|s| text.contains(s));
                Err(match full {
                    true => QueueError::Full(text),
                    false => unavailable("publish", text),
                })
            }
        }
    }

    async fn pop(&self) -> Result<Delivery, QueueError> {
        let Some(p) = &self.pulling else {
            return Err(QueueError::Backend(
                "this process only publishes jobs".into(),
            ));
        };
        p.demand.add_permits(1);
        let mut rx = tokio::select! {
            () = self.closed.cancelled() => return Err(QueueError::Closed),
            rx = p.deliveries.lock() => rx,
        };
        tokio::select! {
            () = self.closed.cancelled() => Err(QueueError::Closed),
            d = rx.recv() => d.ok_or(QueueError::Closed),
        }
    }

    fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    fn close(&self) {
        self.closed.cancel();
    }

    async fn ping(&self) -> Result<(), QueueError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            other => Err(QueueError::Unavailable(format!("NATS is {other:?}"))),
        }
    }
}

#[path = "nats_turns.rs"]
mod turns;

#[cfg(test)]
#[path = "nats_tests.rs"]
mod tests;
