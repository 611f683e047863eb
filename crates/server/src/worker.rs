//! Workers: take a job from the queue, run it in a fresh VM, store the result.
//!
//! A job whose VM dies before the program produced anything (a failed boot,
//! a pooled VM that is dead, a channel that breaks before the run started)
//! is retried once on another VM; after that, or once output has been
//! streamed, it ends as an honest `internal_error`.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use ignis_protocol::Phase;
use ignis_vmm::report::host_deadline;
use ignis_vmm::{RunEvent, RunReport};
use tokio_util::sync::CancellationToken;

use crate::events::{JobEvent, Utf8Chunker};
use crate::job::{Job, JobStatus, Timings};
use crate::queue::QueueError;
use crate::state::Services;
use crate::store::StoreError;

/// Runs `n` workers until `stop` is cancelled, then lets running jobs finish
/// until `hard_stop` is cancelled, after which they are requeued.
pub async fn run(
    svc: Arc<Services>,
    n: usize,
    stop: CancellationToken,
    hard_stop: CancellationToken,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n.max(1) {
        tasks.spawn(work(svc.clone(), stop.clone(), hard_stop.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

async fn work(svc: Arc<Services>, stop: CancellationToken, hard_stop: CancellationToken) {
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return,
            j = svc.queue.pop() => j,
        };
        let queued = match next {
            Ok(q) => q,
            Err(QueueError::Closed) => return,
            Err(e) => {
                tracing::error!("queue: {e}");
                // A broken queue backend: do not spin.
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                }
            }
        };
        svc.metrics.set_queue_depth(svc.queue.depth());
        // The cancel handle exists before the job is marked running, so a
        // cancel that sees `running` always finds it.
        let cancel = CancellationToken::new();
        svc.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(queued.id, cancel.clone());
        match svc.store.start(queued.id, Utc::now()).await {
            Ok(job) => process(&svc, job, cancel, &hard_stop).await,
            // Canceled (or finished) while it waited: nothing to do.
            Err(StoreError::NotAllowed { .. } | StoreError::NotFound(_)) => {}
            Err(e) => tracing::error!(job = %queued.id, "store: {e}"),
        }
        svc.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&queued.id);
    }
}

enum Ending {
    Done(Box<RunReport>, Timings),
    Canceled,
    /// Shutdown took the VM away; the job goes back on the queue.
    Requeue,
}

async fn process(
    svc: &Arc<Services>,
    job: Job,
    cancel: CancellationToken,
    hard_stop: &CancellationToken,
) {
    let id = job.id;
    svc.hub.open(id);
    svc.hub.publish(
        id,
        JobEvent::Status {
            status: JobStatus::Running,
        },
    );
    let ending = tokio::select! {
        e = attempt_all(svc, &job) => e,
        () = cancel.cancelled() => Ending::Canceled,
        () = hard_stop.cancelled() => Ending::Requeue,
    };
    // The cancel handle stays registered until `work` removes it after this
    // returns, so a cancel arriving now still leaves the ending to us.
    match ending {
        Ending::Done(report, timings) => {
            let report = *report;
            match svc.store.complete(id, &report, timings, Utc::now()).await {
                Ok(()) => svc.metrics.job_finished(report.status.as_str(), &timings),
                // Canceled at the last moment: the cancel stands.
                Err(e) => {
                    tracing::info!(job = %id, "result not stored: {e}");
                    svc.metrics.job_canceled();
                }
            }
            finish(svc, id).await;
        }
        Ending::Canceled => {
            svc.metrics.job_canceled();
            finish(svc, id).await;
        }
        Ending::Requeue => {
            tracing::info!(job = %id, "shutdown: job requeued");
            if let Err(e) = svc.store.requeue(id).await {
                tracing::warn!(job = %id, "requeue failed: {e}");
            }
        }
    }
}

/// Publishes the final event and sends the webhook, from the stored job.
pub async fn finish(svc: &Services, id: crate::job::JobId) {
    let Ok(Some(job)) = svc.store.get_any(id).await else {
        return;
    };
    let view = crate::api::view::job_json(&job);
    svc.hub.finish(id, JobEvent::Result { job: view.clone() });
    if let Some(url) = &job.webhook_url {
        if let Ok(body) = serde_json::to_vec(&view) {
            svc.webhooks.deliver(url.clone(), body);
        }
    }
}

async fn attempt_all(svc: &Arc<Services>, job: &Job) -> Ending {
    let started = Instant::now();
    let queue_ms = (Utc::now() - job.created_at).num_milliseconds().max(0) as u64;
    let mut last_error = String::new();
    for attempt in 1..=svc.config.max_attempts.max(1) {
        let t0 = Instant::now();
        let mut lease = match svc.pools.acquire(&job.language).await {
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
                        svc.hub.publish(job.id, JobEvent::Output { stream, data });
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
                    return Ending::Done(
                        Box::new(RunReport::internal_error(last_error, Some(&info))),
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
    Ending::Done(
        Box::new(RunReport::internal_error(
            format!("no VM could run the job: {last_error}"),
            None,
        )),
        timings,
    )
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;
