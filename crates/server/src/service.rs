//! Submission, cancellation and waiting: the one implementation that the
//! HTTP handlers of `ignis serve` and `ignis api`, and recovery, call.
//!
//! A handler parses and translates; the service decides; the store
//! persists. Nothing here knows about HTTP, VMs or which queue, store or
//! bus is underneath.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use chrono::Utc;
use futures::StreamExt;

use crate::events::{EventStream, JobEvent};
use crate::fleet::LanguageInfo;
use crate::job::{recover_running, ClaimDecision, Job, JobId, JobStatus, NewJob, Transition};
use crate::keys::Allowance;
use crate::queue::{QueueError, QueuedJob};
use crate::state::Services;
use crate::store::{Admission, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("shutting down; no new jobs are taken")]
    Draining,
    #[error("unknown language {language:?}; available: {}", known.join(", "))]
    UnknownLanguage {
        language: String,
        known: Vec<String>,
    },
    #[error("this key may have {max} queued jobs at once; {queued} are waiting")]
    TooManyQueued { max: u32, queued: u64 },
    #[error("no job {0}")]
    NotFound(JobId),
    #[error("job {id} is {}; it was left as it is", status.as_str())]
    Finished { id: JobId, status: JobStatus },
    /// The queue is at its limit; the job was not created.
    #[error("the queue is full; the job was not accepted ({0})")]
    QueueFull(String),
    /// The store or the queue cannot be reached now; nothing was accepted.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ServiceError {
    /// Worth trying the same request again later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ServiceError::Draining | ServiceError::QueueFull(_) | ServiceError::Unavailable(_)
        )
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> ServiceError {
        match e {
            StoreError::NotFound(id) => ServiceError::NotFound(id),
            StoreError::Unavailable(m) => ServiceError::Unavailable(format!("job store: {m}")),
            other => ServiceError::Internal(format!("job store: {other}")),
        }
    }
}

/// The language a submission names, as the fleet offers it now.
pub fn language(svc: &Services, name: &str) -> Result<LanguageInfo, ServiceError> {
    if let Some(l) = svc.fleet.language(name) {
        return Ok(l);
    }
    let known = svc.fleet.known();
    if known.is_empty() {
        // Nothing can be said about the language before a worker spoke.
        return Err(ServiceError::Unavailable(
            "no worker has announced itself yet".into(),
        ));
    }
    Err(ServiceError::UnknownLanguage {
        language: name.to_owned(),
        known,
    })
}

/// An accepted job, and its events when the caller wants to wait for it.
pub struct Submitted {
    pub job: Job,
    pub events: Option<EventStream>,
}

impl std::fmt::Debug for Submitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submitted")
            .field("job", &self.job.id)
            .finish()
    }
}

/// Accepts a validated job: stores it, announces it `queued` and queues it.
/// A job the queue refuses is deleted again, so it is never half-created.
/// The owner's `max_queued` is checked by the store in the same atomic
/// step as the insert, so parallel submissions cannot exceed it.
pub async fn submit(
    svc: &Services,
    owner: String,
    allowance: Allowance,
    new: NewJob,
    wait: bool,
) -> Result<Submitted, ServiceError> {
    if svc.draining.load(Ordering::SeqCst) {
        return Err(ServiceError::Draining);
    }
    let mut job = Job::new(owner, new.language, new.request, new.webhook_url);
    job.compat = new.compat;
    match svc.store.insert_within(&job, allowance.max_queued).await? {
        Admission::Inserted => {}
        Admission::Refused { queued } => {
            let max = allowance.max_queued.unwrap_or_default();
            return Err(ServiceError::TooManyQueued { max, queued });
        }
    }
    let queued = JobEvent::Status {
        status: JobStatus::Queued,
    };
    svc.bus.publish(job.id, queued);
    // Subscribe before queueing, so a fast job cannot finish unseen.
    let events = match wait {
        true => svc.bus.subscribe(job.id).await.ok().flatten(),
        false => None,
    };
    let queued = QueuedJob {
        id: job.id,
        language: job.language.clone(),
        owner: job.owner.clone(),
        max_running: allowance.max_running,
    };
    if let Err(e) = svc.queue.push(queued).await {
        tracing::warn!(job = %job.id, "not queued: {e}");
        if let Err(e) = svc.store.discard(job.id).await {
            tracing::error!(job = %job.id, "a refused job could not be deleted: {e}");
        }
        // Not accepted: close its event channel, but send no webhook.
        let canceled = JobEvent::Status {
            status: JobStatus::Canceled,
        };
        svc.bus.finish(job.id, canceled);
        return Err(match e {
            QueueError::Full(m) => ServiceError::QueueFull(m),
            other => ServiceError::Unavailable(format!("the job could not be queued: {other}")),
        });
    }
    svc.metrics.job_submitted();
    svc.metrics.set_queue_depth(svc.queue.depth());
    Ok(Submitted { job, events })
}

/// Waits (at most the configured wait, and never past shutdown) for the
/// submitted job to end; the job as stored then, or `None` if it has not.
pub async fn wait(svc: &Services, submitted: Submitted) -> Result<Option<Job>, ServiceError> {
    wait_at_most(svc, submitted, svc.config.wait_max).await
}

/// As [`wait`], for at most `limit`: for an API that is synchronous by
/// nature (Piston's), which holds on for as long as the job may take.
pub async fn wait_at_most(
    svc: &Services,
    submitted: Submitted,
    limit: std::time::Duration,
) -> Result<Option<Job>, ServiceError> {
    let Submitted { job, events } = submitted;
    let Some(mut events) = events else {
        return Ok(None);
    };
    let shutdown = svc.shutdown.clone();
    let ended = tokio::time::timeout(limit, async {
        loop {
            tokio::select! {
                ev = events.next() => match ev {
                    Some(JobEvent::Result { .. }) | None => return true,
                    Some(_) => {}
                },
                () = shutdown.cancelled() => return false,
            }
        }
    })
    .await;
    if ended != Ok(true) {
        return Ok(None);
    }
    let done = svc.store.get(&job.owner, job.id).await?;
    Ok(done.filter(|j| j.status.is_final()))
}

/// Cancels the caller's job. A running job is stopped by whichever worker
/// runs it, which then publishes its end; a queued one ends here.
pub async fn cancel(svc: &Services, owner: &str, id: JobId) -> Result<Job, ServiceError> {
    match svc.store.cancel(owner, id, Utc::now()).await {
        Ok(JobStatus::Running) => {
            if !svc.bus.stop(id).await {
                // Between workers (its worker was lost): nobody else will.
                svc.metrics.job_canceled();
                finish(svc, id).await;
            }
        }
        Ok(_) => {
            svc.metrics.job_canceled();
            finish(svc, id).await;
        }
        Err(StoreError::NotAllowed { current, .. }) => {
            return Err(ServiceError::Finished {
                id,
                status: current,
            })
        }
        Err(e) => return Err(e.into()),
    }
    svc.store
        .get(owner, id)
        .await?
        .ok_or(ServiceError::NotFound(id))
}

/// Publishes the final event and sends the webhook, from the stored job.
pub async fn finish(svc: &Services, id: JobId) {
    let job = match svc.store.get_any(id).await {
        Ok(Some(job)) => job,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(job = %id, "end not published: {e}");
            return;
        }
    };
    // A final event says how the job ended; a stored status that is not
    // final would be a lie in it (and in the webhook).
    if !job.status.is_final() {
        tracing::error!(job = %id, status = job.status.as_str(), "not ended; no final event");
        return;
    }
    let view = crate::api::view::job_json(&job);
    svc.bus.finish(id, JobEvent::Result { job: view.clone() });
    if let Some(url) = &job.webhook_url {
        if let Ok(body) = serde_json::to_vec(&view) {
            // Recorded before it is sent, so a restart sends it if this
            // process cannot.
            if let Err(e) = svc.store.webhook_pending(id, url, &body).await {
                tracing::warn!(job = %id, "webhook not recorded, sent anyway: {e}");
            }
            send_webhook(svc, id, url.clone(), body);
        }
    }
}

/// Sends a recorded webhook delivery in the background and clears its
/// record once it is over (delivered, or given up after the retries).
fn send_webhook(svc: &Services, id: JobId, url: String, body: Vec<u8>) {
    let (hooks, store) = (svc.webhooks.clone(), svc.store.clone());
    tokio::spawn(async move {
        hooks.deliver_with_retries(&url, &body).await;
        if let Err(e) = store.webhook_done(id).await {
            tracing::warn!(job = %id, "webhook record not cleared; a restart sends it again: {e}");
        }
    });
}

/// Sends the webhook deliveries a previous process recorded and did not
/// finish (it stopped, or crashed, first).
pub async fn resume_webhooks(svc: &Services) -> Result<(), ServiceError> {
    let pending = svc.store.webhooks_pending().await?;
    if !pending.is_empty() {
        tracing::info!("{} pending webhook deliveries resumed", pending.len());
    }
    for p in pending {
        send_webhook(svc, p.job, p.url, p.body);
    }
    Ok(())
}

/// Publishes the end of a job whose result could not be stored, from what
/// the worker knows: `completed` as `internal_error` saying `why`, never
/// the `running` that the store still holds.
pub fn finish_unstored(svc: &Services, job: &Job, why: String) {
    let mut ended = job.clone();
    ended.status = JobStatus::Completed;
    ended.finished_at = Some(Utc::now());
    ended.result = Some(ignis_vmm::RunReport::internal_error(why, None));
    let view = crate::api::view::job_json(&ended);
    svc.bus
        .finish(job.id, JobEvent::Result { job: view.clone() });
    if let Some(url) = &ended.webhook_url {
        if let Ok(body) = serde_json::to_vec(&view) {
            // The store is failing: not recorded, only sent.
            svc.webhooks.deliver(url.clone(), body);
        }
    }
}

/// After a restart of the one-process server: jobs that were running get
/// another attempt while they have attempts left (else an honest
/// `internal_error`), every queued job is queued again, and webhook
/// deliveries left pending are sent.
pub async fn recover(svc: &Services) -> Result<(), ServiceError> {
    let max = svc.config.max_attempts;
    for (id, _, attempts) in svc.store.in_status(JobStatus::Running).await? {
        match recover_running(attempts, max) {
            ClaimDecision::Run(Transition::Requeue) => svc.store.requeue(id).await?,
            _ => {
                tracing::warn!(job = %id, "was running when the server stopped; marked internal_error");
                let report = ignis_vmm::RunReport::internal_error(
                    "the server stopped while this job was running; it was not retried again",
                    None,
                );
                let t = crate::job::Timings::default();
                svc.store
                    .complete(id, attempts, &report, t, Utc::now())
                    .await?;
                finish(svc, id).await;
            }
        }
    }
    requeue_all(svc).await?;
    resume_webhooks(svc).await
}

/// Queues every stored `queued` job again (the distributed queue drops a
/// duplicate of a message it still holds, and a worker skips a job that is
/// no longer queued), so no accepted job is ever stranded.
pub async fn requeue_all(svc: &Services) -> Result<(), ServiceError> {
    let queued = svc.store.waiting().await?;
    // Each owner's cap on running jobs, looked up once per owner.
    let mut caps: HashMap<String, Option<u32>> = HashMap::new();
    for w in &queued {
        let max_running = match caps.get(&w.owner) {
            Some(cap) => *cap,
            None => {
                let key = svc.store.key_by_id(&w.owner).await?;
                let cap = Allowance::of(key.as_ref(), &svc.config.key_defaults).max_running;
                caps.insert(w.owner.clone(), cap);
                cap
            }
        };
        let ev = JobEvent::Status {
            status: JobStatus::Queued,
        };
        svc.bus.publish(w.id, ev);
        let job = QueuedJob {
            id: w.id,
            language: w.language.clone(),
            owner: w.owner.clone(),
            max_running,
        };
        let id = w.id;
        svc.queue
            .push(job)
            .await
            .map_err(|e| ServiceError::Unavailable(format!("requeueing job {id}: {e}")))?;
    }
    if !queued.is_empty() {
        tracing::info!("{} queued jobs recovered", queued.len());
    }
    Ok(())
}
