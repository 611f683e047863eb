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
//!
//! A key's `max_running` holds across every worker, per language: the
//! owner's consumer hands out at most that many jobs not yet acknowledged
//! (`max_ack_pending`, set from what the owner's newest job says), and a
//! job is acknowledged once it ended. Each worker also counts its own deliveries per owner and passes
//! over an owner at its cap (keeping its turn), so it does not even ask.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, Consumer};
use async_nats::jetstream::{stream, AckKind};
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{unavailable, JobMessage, NatsAck};
use crate::queue::{Delivery, QueueError, QueuedJob};

/// The longest a puller with nothing to pull waits before it looks again.
const RECHECK: Duration = Duration::from_secs(1);

/// How long a pull from an owner at its cap waits for the server to say so.
const CAPPED_WAIT: Duration = Duration::from_millis(250);

/// How long an owner's consumer may go unused before the server drops it.
const CONSUMER_IDLE: Duration = Duration::from_secs(3600);

/// What the pullers of one worker process share.
#[derive(Debug, Clone)]
pub(super) struct Shared {
    /// Free slots that asked for a job and have not got one.
    pub demand: Arc<Semaphore>,
    pub tx: mpsc::Sender<Delivery>,
    pub closed: CancellationToken,
    pub running: Arc<Running>,
}

/// Deliveries alive in this process per owner (by the hash in its
/// subject), with the owner's `max_running` as its last job said.
#[derive(Debug, Default)]
pub(super) struct Running {
    owners: Mutex<HashMap<String, (u32, Option<u32>)>>,
    /// Told when a slot is given back: an owner held at its cap may go on.
    freed: Notify,
}

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u32, Option<u32>)>> {
        // Plain counters; a panic elsewhere leaves them usable.
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn at_cap(&self, owner: &str) -> bool {
        let g = self.lock();
        g.get(owner)
            .is_some_and(|(n, cap)| cap.is_some_and(|cap| *n >= cap))
    }
}

/// One owner's running slot on this worker.
#[derive(Debug)]
pub(super) struct Slot {
    running: Arc<Running>,
    owner: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.running.lock();
        if let Some((n, _)) = g.get_mut(&self.owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                g.remove(&self.owner);
            }
        }
        drop(g);
        self.running.freed.notify_waiters();
    }
}

/// The owner part (a hash) of a job subject.
fn owner_of(subject: &str) -> &str {
    subject.rsplit('.').next().unwrap_or_default()
}

/// Pulls one language's jobs, one per unit of demand, owners in turn.
pub(super) struct Puller {
    language: String,
    stream: stream::Stream,
    ack_wait: Duration,
    demand: Arc<Semaphore>,
    tx: mpsc::Sender<Delivery>,
    closed: CancellationToken,
    running: Arc<Running>,
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
        shared: Shared,
    ) -> Result<Puller, QueueError> {
        let wake = client
            .subscribe(format!("ignis.jobs.{language}.>"))
            .await
            .map_err(|e| unavailable(&format!("{language} jobs subscription"), e))?;
        Ok(Puller {
            language,
            stream,
            ack_wait,
            demand: shared.demand,
            tx: shared.tx,
            closed: shared.closed,
            running: shared.running,
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
                    let running = self.running.clone();
                    tokio::select! {
                        () = closed.cancelled() => return,
                        _ = self.wake.next() => {}
                        () = running.freed.notified() => {}
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
        let (legacy, prefix) = (
            self.legacy_subject(),
            format!("ignis.jobs.{}.", self.language),
        );
        let mut info = self
            .stream
            .info_with_subjects("ignis.jobs.>")
            .await
            .map_err(|e| unavailable("listing queued owners", e))?;
        let mut subjects = vec![];
        while let Some(item) = info.next().await {
            let (subject, count) = item.map_err(|e| unavailable("listing queued owners", e))?;
            let ours = subject.starts_with(&prefix) || subject == legacy;
            // An owner at its running cap here keeps its turn for later.
            if ours && count > 0 && !self.running.at_cap(owner_of(&subject)) {
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

    /// The subject of this language's jobs before owners had their own:
    /// what an older API process published is pulled too, as one more
    /// owner, so an upgrade strands no job.
    fn legacy_subject(&self) -> String {
        format!("ignis.jobs.{}", self.language)
    }

    /// The consumer of one owner's subject, made (or found) on first use.
    async fn consumer(&mut self, subject: &str) -> Result<Consumer<pull::Config>, QueueError> {
        if let Some(c) = self.consumers.get(subject) {
            return Ok(c.clone());
        }
        let name = self.consumer_name(subject);
        let consumer = self
            .stream
            .get_or_create_consumer(&name, self.consumer_config(subject, None))
            .await
            .map_err(|e| unavailable(&format!("consumer {name}"), e))?;
        self.consumers.insert(subject.to_owned(), consumer.clone());
        Ok(consumer)
    }

    fn consumer_name(&self, subject: &str) -> String {
        match subject == self.legacy_subject() {
            // The consumer of that subject from before, so as not to
            // overlap with it (a work queue allows one per subject).
            true => format!("jobs-{}", self.language),
            false => format!("jobs-{}-{}", self.language, owner_of(subject)),
        }
    }

    /// The consumer of `subject`, handing out at most `max_running` jobs
    /// not yet acknowledged (`None`: no cap).
    fn consumer_config(&self, subject: &str, max_running: Option<u32>) -> pull::Config {
        let name = self.consumer_name(subject);
        pull::Config {
            durable_name: Some(name),
            filter_subject: subject.to_owned(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            // The store ends a job that keeps losing its workers; the
            // queue never drops one by itself.
            max_deliver: -1,
            max_ack_pending: max_running.map_or(-1, i64::from),
            inactive_threshold: CONSUMER_IDLE,
            ..Default::default()
        }
    }

    /// Makes the server hold `subject`'s jobs beyond `max_running` (the
    /// owner's cap as its newest job says) across every worker: a work
    /// queue consumer hands out no more than `max_ack_pending` jobs not
    /// yet acknowledged, and a job is acknowledged once it ended.
    async fn cap(&mut self, subject: &str, max_running: Option<u32>) -> Result<(), QueueError> {
        let want = max_running.map_or(-1, i64::from);
        let current = self
            .consumers
            .get(subject)
            .map(|c| c.cached_info().config.max_ack_pending);
        if current == Some(want) {
            return Ok(());
        }
        let config = self.consumer_config(subject, max_running);
        // Creating an existing durable consumer with another config updates
        // it (nats-server 2.9; 2.10 also has an explicit update).
        let consumer = self
            .stream
            .create_consumer(config)
            .await
            .map_err(|e| unavailable(&format!("capping consumer of {subject}"), e))?;
        self.consumers.insert(subject.to_owned(), consumer);
        Ok(())
    }

    /// One job from `subject` if one can be handed out now.
    async fn pull_from(&mut self, subject: &str) -> Result<Option<Delivery>, QueueError> {
        let consumer = self.consumer(subject).await?;
        let pulled = async {
            // An owner at its cap gets no answer at all to a pull that does
            // not wait: the request expires instead.
            let fetch = consumer.fetch().max_messages(1).expires(CAPPED_WAIT);
            let mut batch = fetch.messages().await?;
            batch.next().await.transpose()
        };
        let msg = match pulled.await {
            Ok(Some(msg)) => msg,
            Ok(None) => return Ok(None),
            // The owner has its `max_running` jobs out with workers.
            Err(e) if e.to_string().contains("MaxAckPending") => return Ok(None),
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
        if let Err(e) = self.cap(subject, job.max_running).await {
            // This worker's own count still holds the owner to its cap.
            tracing::warn!("{e}");
        }
        let owner = owner_of(subject).to_owned();
        {
            let mut g = self.running.lock();
            let entry = g.entry(owner.clone()).or_insert((0, None));
            entry.0 += 1;
            entry.1 = job.max_running;
        }
        let slot = Slot {
            running: self.running.clone(),
            owner,
        };
        Ok(Some(Delivery {
            job: QueuedJob {
                id: job.id,
                language: job.language,
                owner: job.owner,
                max_running: job.max_running,
            },
            redelivered,
            handle: Box::new(NatsAck {
                msg: Arc::new(msg),
                _slot: Arc::new(slot),
            }),
        }))
    }
}
