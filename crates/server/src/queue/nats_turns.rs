//! A worker's puller for one language of the JetStream queue: it takes
//! turns between owners.
//!
//! Each owner's jobs of a language are on their own subject, pulled through
//! their own durable consumer (made on first use, shared by every worker,
//! removed by the server after an hour unused). For each unit of demand
//! the puller lists the subjects that hold jobs (one stream-info request),
//! and pulls from them in turn, starting after the owner it served last:
//! round robin between owners, FIFO within one, as the embedded queue
//! does. Redelivery, acknowledgement and progress are the consumers' own,
//! so at-least-once delivery is unchanged.
//!
//! A puller that finds nothing waits for a job of its language to be
//! published (it listens on the subjects, an ordinary NATS subscription),
//! or at most [`RECHECK`], the time it takes to notice a job whose worker
//! was lost and whose redelivery is due.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, Consumer};
use async_nats::jetstream::{stream, AckKind};
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{unavailable, JobMessage, NatsAck};
use crate::queue::{Delivery, QueueError, QueuedJob};

/// The longest a puller with nothing to pull waits before it looks again.
const RECHECK: Duration = Duration::from_secs(1);

/// How long an owner's consumer may go unused before the server drops it.
const CONSUMER_IDLE: Duration = Duration::from_secs(3600);

/// Pulls one language's jobs, one per unit of demand, owners in turn.
pub(super) struct Puller {
    language: String,
    stream: stream::Stream,
    ack_wait: Duration,
    demand: Arc<Semaphore>,
    tx: mpsc::Sender<Delivery>,
    closed: CancellationToken,
    /// Every job published on this language's subjects, as a wake-up.
    wake: async_nats::Subscriber,
    /// The owners' consumers, by subject, made on first use.
    consumers: HashMap<String, Consumer<pull::Config>>,
    /// The subject served last; the next turn goes to the one after it.
    last: Option<String>,
}

impl Puller {
    pub(super) async fn new(
        language: String,
        client: async_nats::Client,
        stream: stream::Stream,
        ack_wait: Duration,
        demand: Arc<Semaphore>,
        tx: mpsc::Sender<Delivery>,
        closed: CancellationToken,
    ) -> Result<Puller, QueueError> {
        let wake = client
            .subscribe(format!("ignis.jobs.{language}.>"))
            .await
            .map_err(|e| unavailable(&format!("{language} jobs subscription"), e))?;
        Ok(Puller {
            language,
            stream,
            ack_wait,
            demand,
            tx,
            closed,
            wake,
            consumers: HashMap::new(),
            last: None,
        })
    }

    pub(super) async fn run(mut self) {
        let mut pause = Duration::from_millis(100);
        let (demand, closed) = (self.demand.clone(), self.closed.clone());
        loop {
            let permit = tokio::select! {
                () = self.closed.cancelled() => return,
                p = demand.acquire() => p,
            };
            let Ok(permit) = permit else { return };
            // The demand is ours now; handed back unless a job meets it.
            permit.forget();
            // Wake-ups so far are answered by the look below.
            while let Some(Some(_)) = self.wake.next().now_or_never() {}
            let got = tokio::select! {
                () = closed.cancelled() => return,
                got = self.next_job() => got,
            };
            match got {
                Ok(Some(d)) => {
                    pause = Duration::from_millis(100);
                    if self.tx.send(d).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    // Another language may meet the demand meanwhile.
                    self.demand.add_permits(1);
                    tokio::select! {
                        () = closed.cancelled() => return,
                        _ = self.wake.next() => {}
                        () = tokio::time::sleep(RECHECK) => {}
                    }
                }
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

    /// The next job in turn: from the first owner after the one served
    /// last that has a job to hand out now.
    async fn next_job(&mut self) -> Result<Option<Delivery>, QueueError> {
        let filter = format!("ignis.jobs.{}.>", self.language);
        let mut info = self
            .stream
            .info_with_subjects(&filter)
            .await
            .map_err(|e| unavailable("listing queued owners", e))?;
        let mut subjects = vec![];
        while let Some(item) = info.next().await {
            let (subject, count) = item.map_err(|e| unavailable("listing queued owners", e))?;
            if count > 0 {
                subjects.push(subject);
            }
        }
        subjects.sort();
        let after_last = match &self.last {
            Some(last) => subjects.partition_point(|s| s <= last),
            None => 0,
        };
        subjects.rotate_left(after_last);
        for subject in subjects {
            // All of an owner's jobs may be out with workers: next owner.
            if let Some(d) = self.pull_from(&subject).await? {
                self.last = Some(subject);
                return Ok(Some(d));
            }
        }
        Ok(None)
    }

    /// The consumer of one owner's subject, made (or found) on first use.
    async fn consumer(&mut self, subject: &str) -> Result<Consumer<pull::Config>, QueueError> {
        if let Some(c) = self.consumers.get(subject) {
            return Ok(c.clone());
        }
        let owner = subject.rsplit('.').next().unwrap_or_default();
        let name = format!("jobs-{}-{owner}", self.language);
        let consumer = self
            .stream
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: subject.to_owned(),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: self.ack_wait,
                    // The store ends a job that keeps losing its workers;
                    // the queue never drops one by itself.
                    max_deliver: -1,
                    inactive_threshold: CONSUMER_IDLE,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| unavailable(&format!("consumer {name}"), e))?;
        self.consumers.insert(subject.to_owned(), consumer.clone());
        Ok(consumer)
    }

    /// One job from `subject` if one can be handed out now.
    async fn pull_from(&mut self, subject: &str) -> Result<Option<Delivery>, QueueError> {
        let consumer = self.consumer(subject).await?;
        let pulled = async {
            let mut batch = consumer.fetch().max_messages(1).messages().await?;
            batch.next().await.transpose()
        };
        let msg = match pulled.await {
            Ok(Some(msg)) => msg,
            Ok(None) => return Ok(None),
            Err(e) => {
                // The server may have dropped an idle consumer: make it anew.
                self.consumers.remove(subject);
                return Err(unavailable("pull", e));
            }
        };
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
                owner: job.owner,
                max_running: job.max_running,
            },
            redelivered,
            handle: Box::new(NatsAck(Arc::new(msg))),
        }))
    }
}
