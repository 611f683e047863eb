//! Workers: take a job from the queue, run it in a fresh VM, store the result.
//!
//! A job whose VM dies before the program produced anything (a failed boot,
//! a pooled VM that is dead, a channel that breaks before the run started)
//! is retried once on another VM; after that, or once output has been
//! streamed, it ends as an honest `internal_error`.
//!
//! A delivery is acknowledged only once its result is stored (or there was
//! nothing to do); a worker that dies leaves its delivery to come back to
//! another worker, and the store's claim decides what that one does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use ignis_protocol::Phase;
use ignis_vmm::report::host_deadline;
use ignis_vmm::{RunEvent, RunReport};
use tokio_util::sync::CancellationToken;

use crate::events::{JobEvent, Utf8Chunker};
use crate::job::{Job, JobStatus, Timings};
use crate::pool::Pools;
use crate::queue::{Delivery, QueueError};
use crate::service;
use crate::state::Services;
use crate::store::{Claimed, StoreError, StoreResult};

/// Runs `n` workers until `stop` is cancelled, then lets running jobs finish
/// until `hard_stop` is cancelled, after which they are requeued.
pub async fn run(
    svc: Arc<Services>,
    pools: Pools,
    n: usize,
    stop: CancellationToken,
    hard_stop: CancellationToken,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n.max(1) {
        let w = Worker {
            svc: svc.clone(),
            pools: pools.clone(),
        };
        tasks.spawn(w.work(stop.clone(), hard_stop.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

/// How long a worker keeps trying to store a result while the store is
/// unreachable, before it gives the job up to redelivery.
const STORE_RETRY_FOR: Duration = Duration::from_secs(120);

/// The longest pause between two tries of a failing store.
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(5);

/// How long a worker waits before it puts back a job it could not claim,
/// so that a store that fails at once is not asked again in a tight loop.
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

struct Worker {
    svc: Arc<Services>,
    pools: Pools,
}

enum Ending {
    Done(Box<RunReport>, Timings),
    Canceled,
    /// Shutdown took the VM away; the job goes back on the queue.
    Requeue,
}

impl Worker {
    /// Pops a job only when it is free to run one, so it never holds more
    /// jobs than it can run.
    async fn work(self, stop: CancellationToken, hard_stop: CancellationToken) {
        let svc = &self.svc;
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => return,
                j = svc.queue.pop() => j,
            };
            let delivery = match next {
                Ok(d) => d,
                Err(QueueError::Closed) => return,
                Err(e) => {
                    tracing::warn!("queue: {e}");
                    // The queue's server is away: do not spin.
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            svc.metrics.set_queue_depth(svc.queue.depth());
            let id = delivery.job.id;
            // The cancel handle exists before the job is marked running, so a
            // cancel that sees `running` always finds it.
            let cancel = CancellationToken::new();
            svc.running.insert(id, cancel.clone());
            let keep_alive = keep_alive(&delivery, svc.config.ack_wait);
            let acked = self.deliver(&delivery, cancel, &hard_stop).await;
            keep_alive.abort();
            svc.running.remove(id);
            if acked {
                if let Err(e) = delivery.handle.ack().await {
                    // The result is stored: a redelivery finds it ended.
                    tracing::warn!(job = %id, "acknowledgement lost: {e}");
                }
            }
        }
    }

    /// Claims and runs one delivered job; true when the delivery is done
    /// with (acknowledge it), false to leave it to redelivery.
    async fn deliver(
        &self,
        d: &Delivery,
        cancel: CancellationToken,
        hard_stop: &CancellationToken,
    ) -> bool {
        let (svc, id) = (&self.svc, d.job.id);
        let max = svc.config.max_attempts;
        let claimed = retry_store(hard_stop, || {
            svc.store.claim(id, d.redelivered, max, Utc::now())
        });
        match claimed.await {
            Ok(Claimed::Run(job)) => self.process(job, cancel, hard_stop).await,
            Ok(Claimed::Exhausted(job)) => {
                tracing::warn!(job = %id, attempts = job.attempts, "out of attempts");
                svc.metrics
                    .job_finished("internal_error", &Timings::default());
                service::finish(svc, id).await;
                true
            }
            // Ended (canceled, finished) or a duplicate: nothing to do.
            Ok(Claimed::Skipped(_)) | Err(StoreError::NotFound(_)) => true,
            Err(e) => {
                // Nothing ran: the job is still `queued` (or, at worst,
                // `running` on an attempt that a later claim skips or
                // retakes), so it goes back on the queue rather than being
                // lost. Not acknowledged either: a distributed queue
                // delivers it again itself.
                tracing::error!(job = %id, "claim failed, job put back on the queue: {e}");
                tokio::select! {
                    () = hard_stop.cancelled() => {}
                    () = tokio::time::sleep(REQUEUE_PAUSE) => {}
                }
                if !d.handle.redelivers() {
                    if let Err(e) = svc.queue.push(d.job.clone()).await {
                        tracing::error!(job = %id, "not queued again: {e}");
                    }
                }
                false
            }
        }
    }

    async fn process(
        &self,
        job: Job,
        cancel: CancellationToken,
        hard_stop: &CancellationToken,
    ) -> bool {
        let (svc, id) = (&self.svc, job.id);
        let running = JobEvent::Status {
            status: JobStatus::Running,
        };
        svc.bus.publish(id, running);
        let ending = tokio::select! {
            e = self.attempt_all(&job) => e,
            () = cancel.cancelled() => Ending::Canceled,
            () = hard_stop.cancelled() => Ending::Requeue,
        };
        // The cancel handle stays registered until `work` removes it after
        // this returns, so a cancel arriving now still leaves the ending to us.
        match ending {
            Ending::Done(report, timings) => {
                match self.store_result(&job, *report, timings, hard_stop).await {
                    Ok(verdict) => svc.metrics.job_finished(verdict.as_str(), &timings),
                    // Another attempt runs it now: leave the delivery to it.
                    Err(e @ StoreError::Stale { .. }) => {
                        tracing::info!(job = %id, "result not stored: {e}");
                        return false;
                    }
                    // Canceled at the last moment: the cancel stands.
                    Err(e @ StoreError::NotAllowed { .. }) => {
                        tracing::info!(job = %id, "result not stored: {e}");
                        svc.metrics.job_canceled();
                    }
                    Err(e) => {
                        // Shutting down with the store still failing: the
                        // row stays `running`, so a restart runs the job
                        // again, and the final event says so rather than
                        // `running`.
                        tracing::error!(job = %id, "result not stored, left to redelivery: {e}");
                        let why = format!(
                            "the result could not be stored ({e}); the job runs again after a restart"
                        );
                        service::finish_unstored(svc, &job, why);
                        return false;
                    }
                }
                service::finish(svc, id).await;
            }
            Ending::Canceled => {
                svc.metrics.job_canceled();
                service::finish(svc, id).await;
            }
            Ending::Requeue => {
                tracing::info!(job = %id, "shutdown: job requeued");
                if let Err(e) = svc.store.requeue(id).await {
                    tracing::warn!(job = %id, "requeue failed: {e}");
                }
                // Not acknowledged: a distributed queue delivers it again
                // to another worker; in one process, recovery queues it.
                return false;
            }
        }
        true
    }

    /// Stores the result of `job`'s attempt: what may pass (a busy
    /// database, a full disk, an I/O error) is retried with backoff until
    /// it is stored or a hard stop; a result the store refuses for good is
    /// replaced by an honest `internal_error` that says why. The verdict
    /// stored, or why nothing was.
    async fn store_result(
        &self,
        job: &Job,
        report: RunReport,
        timings: Timings,
        hard_stop: &CancellationToken,
    ) -> StoreResult<ignis_protocol::Verdict> {
        let (svc, id, attempt) = (&self.svc, job.id, job.attempts);
        let complete = |r: &RunReport| {
            let r = r.clone();
            retry_until(hard_stop, None, move || {
                let r = r.clone();
                async move {
                    svc.store
                        .complete(id, attempt, &r, timings, Utc::now())
                        .await
                }
            })
        };
        match complete(&report).await {
            Ok(()) => Ok(report.status),
            Err(e) if e.is_retryable() || !matches!(e, StoreError::Backend(_)) => Err(e),
            Err(e) => {
                tracing::error!(job = %id, "the store refused the result: {e}");
                let message = format!("the result could not be stored: {e}");
                let vm = report.vm.clone();
                let mut failed = RunReport::internal_error(message, None);
                failed.vm = vm;
                complete(&failed).await.map(|()| failed.status)
            }
        }
    }

    async fn attempt_all(&self, job: &Job) -> Ending {
        let svc = &self.svc;
        let started = Instant::now();
        let queue_ms = (Utc::now() - job.created_at).num_milliseconds().max(0) as u64;
        let mut last_error = String::new();
        for attempt in 1..=svc.config.max_attempts.max(1) {
            let t0 = Instant::now();
            let mut lease = match self.pools.acquire(&job.language).await {
                Ok(l) => l,
                Err(crate::pool::AcquireError::ShuttingDown) => return Ending::Requeue,
                Err(e) => {
                    last_error = e.to_string();
                    tracing::warn!(job = %job.id, attempt, "no VM: {e}");
                    continue;
                }
            };
            let acquire_ms = t0.elapsed().as_millis() as u64;
            let Some(mut vm) = lease.take() else { continue };
            let info = vm.info().clone();
            let t1 = Instant::now();
            let mut streamed = false;
            let mut chunkers = [Utf8Chunker::default(), Utf8Chunker::default()];
            let result = vm
                .run(
                    job.request.clone(),
                    host_deadline(&job.request, &info),
                    |ev| match ev {
                        RunEvent::Phase(Phase::Compiling | Phase::Running) => {}
                        RunEvent::Output(stream, data) => {
                            streamed = true;
                            let data = chunkers[stream as usize].push(&data);
                            svc.bus.publish(job.id, JobEvent::Output { stream, data });
                        }
                    },
                )
                .await;
            let run_ms = t1.elapsed().as_millis() as u64;
            let log = vm.destroy().await;
            drop(lease);
            let timings = |run_ms| Timings {
                queue_ms,
                acquire_ms,
                run_ms,
                total_ms: queue_ms + started.elapsed().as_millis() as u64,
            };
            match result {
                Ok(exec) => {
                    return Ending::Done(
                        Box::new(RunReport::from_execution(exec, &info)),
                        timings(run_ms),
                    )
                }
                Err(e) => {
                    svc.metrics.vm_failure(&job.language, "run");
                    let where_log = log
                        .map(|p| format!(" (console log in {})", p.display()))
                        .unwrap_or_default();
                    last_error = format!("{e}{where_log}");
                    tracing::warn!(job = %job.id, attempt, "VM failed during the run: {last_error}");
                    if streamed {
                        let message = crate::redact::host_paths(&last_error);
                        return Ending::Done(
                            Box::new(RunReport::internal_error(message, Some(&info))),
                            timings(run_ms),
                        );
                    }
                }
            }
        }
        let timings = Timings {
            queue_ms,
            acquire_ms: 0,
            run_ms: 0,
            total_ms: queue_ms + started.elapsed().as_millis() as u64,
        };
        // The full error (with host paths) goes to the log; the tenant is
        // told what failed, not where.
        tracing::error!(job = %job.id, "no VM could run the job: {last_error}");
        Ending::Done(
            Box::new(RunReport::internal_error(
                format!(
                    "no VM could run the job: {}",
                    crate::redact::host_paths(&last_error)
                ),
                None,
            )),
            timings,
        )
    }
}

/// Tells the queue, at a third of its acknowledgement deadline, that the
/// job is still being worked on, so a long job is not redelivered.
fn keep_alive(d: &Delivery, ack_wait: Duration) -> tokio::task::JoinHandle<()> {
    let handle = d.handle.clone_box();
    let every = (ack_wait / 3).max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = handle.progress().await {
                tracing::debug!("progress not sent: {e}");
            }
        }
    })
}

/// Calls the store until it answers, while its errors are retryable, for
/// at most [`STORE_RETRY_FOR`] or until a hard stop.
async fn retry_store<T, F, Fut>(hard_stop: &CancellationToken, call: F) -> StoreResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StoreResult<T>>,
{
    retry_until(hard_stop, Some(STORE_RETRY_FOR), call).await
}

/// Calls the store until it answers, while its errors are retryable, with
/// a pause that doubles up to [`RETRY_PAUSE_MAX`], for at most `limit`
/// (None: until a hard stop).
async fn retry_until<T, F, Fut>(
    hard_stop: &CancellationToken,
    limit: Option<Duration>,
    mut call: F,
) -> StoreResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StoreResult<T>>,
{
    let deadline = limit.map(|l| tokio::time::Instant::now() + l);
    let mut pause = Duration::from_millis(100);
    loop {
        match call().await {
            Err(e)
                if e.is_retryable() && deadline.is_none_or(|d| tokio::time::Instant::now() < d) =>
            {
                tracing::warn!("store unavailable, retrying in {pause:?}: {e}");
                tokio::select! {
                    () = hard_stop.cancelled() => return Err(e),
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(RETRY_PAUSE_MAX);
            }
            other => return other,
        }
    }
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "worker_delivery_tests.rs"]
mod delivery_tests;
