//! The distributed queue: a NATS JetStream work-queue stream.
//!
//! One subject per language (`ignis.jobs.<language>`) and one durable pull
//! consumer per language, shared by every worker that has that language's
//! image, so a worker only ever pulls the languages it can run. A worker
//! pulls one job per free slot: each waiting [`JobQueue::pop`] is one unit
//! of demand, and a language's puller asks the server for a job only while
//! there is demand it has claimed. A job stays in the stream until a worker
//! acknowledges it (after its result is stored); one never acknowledged is
//! delivered again after the consumer's `ack_wait`.
//!
//! The stream has limits: at `max_messages` a publish is refused
//! ([`QueueError::Full`]) and nothing is added. Publishes carry the job id
//! as `Nats-Msg-Id`, so queueing the same job twice within the duplicate
//! window (recovery after a crash) stores it once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, AckKind};
use async_trait::async_trait;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Mutex, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{Acker, Delivery, JobQueue, QueueError, QueuedJob};
use crate::job::JobId;

/// The stream that holds queued jobs.
pub const JOBS_STREAM: &str = "IGNIS_JOBS";
/// The stream that keeps job events for late subscribers.
pub const EVENTS_STREAM: &str = "IGNIS_EVENTS";

pub fn job_subject(language: &str) -> String {
    format!("ignis.jobs.{language}")
}

/// How long one pull request waits on the server for a job.
const PULL_WAIT: Duration = Duration::from_secs(5);

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
        subjects: vec!["ignis.jobs.*".into()],
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
        discard: DiscardPolicy::Old,
        storage: StorageType::File,
        ..Default::default()
    };
    js.get_or_create_stream(events)
        .await
        .map_err(|e| unavailable("events stream", e))?;
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
        for language in languages {
            let name = format!("jobs-{language}");
            let consumer = stream
                .get_or_create_consumer(
                    &name,
                    pull::Config {
                        durable_name: Some(name.clone()),
                        filter_subject: job_subject(language),
                        ack_policy: AckPolicy::Explicit,
                        ack_wait: cfg.ack_wait,
                        // The store ends a job that keeps losing its
                        // workers; the queue never drops one by itself.
                        max_deliver: -1,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| unavailable(&format!("{language} consumer"), e))?;
            let puller = Puller {
                language: language.clone(),
                consumer,
                demand: demand.clone(),
                tx: tx.clone(),
                closed: closed.clone(),
            };
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

/// Pulls one language's jobs, one per unit of demand.
struct Puller {
    language: String,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    demand: Arc<Semaphore>,
    tx: mpsc::Sender<Delivery>,
    closed: CancellationToken,
}

impl Puller {
    async fn run(self) {
        let mut pause = Duration::from_millis(100);
        loop {
            let permit = tokio::select! {
                () = self.closed.cancelled() => return,
                p = self.demand.acquire() => p,
            };
            let Ok(permit) = permit else { return };
            // The demand is ours now; handed back unless a job meets it.
            permit.forget();
            let got = tokio::select! {
                () = self.closed.cancelled() => return,
                got = self.pull_one() => got,
            };
            match got {
                Ok(Some(d)) => {
                    pause = Duration::from_millis(100);
                    if self.tx.send(d).await.is_err() {
                        return;
                    }
                }
                Ok(None) => self.demand.add_permits(1),
                Err(e) => {
                    self.demand.add_permits(1);
                    tracing::warn!(language = %self.language, "pulling jobs: {e}");
                    // The server is away: try again, not in a tight loop.
                    tokio::select! {
                        () = self.closed.cancelled() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    async fn pull_one(&self) -> Result<Option<Delivery>, QueueError> {
        let mut batch = self
            .consumer
            .batch()
            .max_messages(1)
            .expires(PULL_WAIT)
            .messages()
            .await
            .map_err(|e| unavailable("pull", e))?;
        let Some(msg) = batch.next().await else {
            return Ok(None);
        };
        let msg = msg.map_err(|e| unavailable("pull", e))?;
        let job: JobMessage = match serde_json::from_slice(&msg.payload) {
            Ok(j) => j,
            Err(e) => {
                // Not ours to run and never will be: drop it for good.
                tracing::error!("malformed job message dropped: {e}");
                let _ = msg.ack_with(AckKind::Term).await;
                return Ok(None);
            }
        };
        let redelivered = msg.info().map(|i| i.delivered > 1).unwrap_or(false);
        Ok(Some(Delivery {
            job: QueuedJob {
                id: job.id,
                language: job.language,
            },
            redelivered,
            handle: Box::new(NatsAck(Arc::new(msg))),
        }))
    }
}

#[derive(Debug, Clone)]
struct NatsAck(Arc<jetstream::Message>);

#[async_trait]
impl Acker for NatsAck {
    async fn ack(&self) -> Result<(), QueueError> {
        // Double ack: the server confirmed it, so an ack lost on the way
        // is an error here rather than a silent redelivery.
        self.0.double_ack().await.map_err(|e| unavailable("ack", e))
    }

    async fn progress(&self) -> Result<(), QueueError> {
        self.0
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
        };
        let payload = serde_json::to_vec(&body)
            .map_err(|e| QueueError::Backend(format!("encoding a job message: {e}")))?;
        let msg = PublishMessage::build()
            .payload(payload.into())
            .message_id(job.id.to_string());
        let ack = self
            .js
            .send_publish(job_subject(&job.language), msg)
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

#[cfg(test)]
#[path = "nats_tests.rs"]
mod tests;
