//! Tests of `worker.rs` over the fake driver, kept apart to keep the module
//! readable. Jobs go the way the API sends them (store, event channel,
//! queue) to one real worker; the test follows each job's events.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use ignis_protocol::{File, Limits, RunRequest, Stream, Verdict};
use ignis_vmm::driver::fake::{Behaviour, Call, FakeDriver};
use tempfile::TempDir;

use super::*;
use crate::config::{PoolConfig, ServerConfig};
use crate::job::JobId;
use crate::queue::QueuedJob;
use crate::store::sqlite::SqliteStore;

const OWNER: &str = "tester";

/// How long a test waits for an event before it gives up (a hang, not a
/// measurement).
const PATIENCE: Duration = Duration::from_secs(60);

/// The services with one worker running, over a fake driver the test keeps
/// a handle on.
struct Harness {
    _dir: TempDir,
    svc: Arc<Services>,
    pools: Pools,
    driver: FakeDriver,
    stop: CancellationToken,
    workers: tokio::task::JoinHandle<()>,
}

/// A submitted job and its event stream (subscribed before it was queued).
struct Submitted {
    id: JobId,
    events: crate::events::EventStream,
}

async fn harness(max_attempts: u32) -> Harness {
    harness_over(max_attempts, |store| store).await
}

/// A harness whose store is SQLite seen through `wrap` (a store that
/// fails on purpose, in `worker_store_tests.rs`).
async fn harness_over(
    max_attempts: u32,
    wrap: impl FnOnce(Arc<dyn crate::store::JobStore>) -> Arc<dyn crate::store::JobStore>,
) -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = ServerConfig::new(dir.path().to_path_buf());
    cfg.pool = PoolConfig {
        warm: 0,
        max_vms: 4,
        max_memory_mib: 4096,
    };
    cfg.max_attempts = max_attempts;
    let store = SqliteStore::open(&dir.path().join("ignis.db")).expect("open store");
    let driver = FakeDriver::default();
    let launcher = crate::test_kit::fake_launcher(dir.path(), driver.clone());
    // Made up front, so that every VM of a job is a restore and the
    // driver's script applies to the jobs' VMs alone.
    launcher
        .snapshot("python")
        .await
        .expect("the fake snapshot");
    let store = wrap(Arc::new(store));
    let svc = crate::embedded::assemble(cfg, launcher, store, b"secret".to_vec());
    let stop = CancellationToken::new();
    let pools = svc.pools.clone().expect("the embedded services have pools");
    let workers = tokio::spawn(run(
        svc.clone(),
        pools.clone(),
        1,
        stop.clone(),
        CancellationToken::new(),
    ));
    Harness {
        _dir: dir,
        svc,
        pools,
        driver,
        stop,
        workers,
    }
}

fn program(stdout: &str) -> RunRequest {
    RunRequest {
        files: vec![File {
            name: "main.py".into(),
            content: stdout.as_bytes().to_vec(),
        }],
        stdin: vec![],
        args: vec![],
        env: BTreeMap::new(),
        limits: Limits::default(),
    }
}

impl Harness {
    /// Submits a program that prints `stdout`, as the API does.
    async fn submit(&self, stdout: &str) -> Submitted {
        let svc = &self.svc;
        let job = Job::new(OWNER.into(), "python".into(), program(stdout), None);
        svc.store.insert(&job).await.expect("insert");
        let queued = JobEvent::Status {
            status: JobStatus::Queued,
        };
        svc.bus.publish(job.id, queued.clone());
        let subscribed = svc.bus.subscribe(job.id).await.expect("the local bus");
        let mut events = subscribed.expect("an event channel");
        assert_eq!(next_event(&mut events).await, queued);
        svc.queue
            .push(QueuedJob {
                id: job.id,
                language: job.language.clone(),
                owner: job.owner.clone(),
                max_running: None,
            })
            .await
            .expect("queued");
        Submitted { id: job.id, events }
    }

    /// Follows a job's events to its end: the stored job, and what its
    /// subscriber saw before the final result.
    async fn outcome(&self, job: &mut Submitted) -> (Job, Vec<JobEvent>) {
        let mut seen = Vec::new();
        loop {
            match next_event(&mut job.events).await {
                JobEvent::Result { .. } => break,
                ev => seen.push(ev),
            }
        }
        let stored = self.svc.store.get_any(job.id).await.expect("store");
        (stored.expect("the job is stored"), seen)
    }

    /// VMs started for jobs (the snapshot's source left out).
    fn job_vms(&self) -> usize {
        self.driver
            .calls()
            .iter()
            .filter(|c| {
                matches!(
                    c,
                    Call::Restore
                        | Call::Start {
                            snapshot_source: false
                        }
                )
            })
            .count()
    }

    fn metric(&self, line: &str) -> bool {
        self.svc.metrics.render().lines().any(|l| l == line)
    }

    /// Stops the worker and the pools; no machine may outlive them.
    async fn stop(self) {
        self.stop.cancel();
        self.svc.queue.close();
        self.workers.await.expect("workers");
        self.pools.shutdown().await;
        assert_eq!(self.driver.live(), 0);
    }
}

async fn next_event(events: &mut crate::events::EventStream) -> JobEvent {
    tokio::time::timeout(PATIENCE, events.next())
        .await
        .expect("timed out waiting for a job event")
        .expect("the event channel stays open until the result")
}

/// Everything the subscriber saw on stdout.
fn stdout_of(events: &[JobEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            JobEvent::Output {
                stream: Stream::Stdout,
                data,
            } => Some(data.as_str()),
            _ => None,
        })
        .collect()
}

/// Waits until `cond` holds, letting every other task run in between: for
/// what no event announces (the fake driver's machines).
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_job_completes_with_the_programs_output() {
    let h = harness(2).await;
    let text = "hello from the job\n";
    let mut job = h.submit(text).await;
    let (stored, events) = h.outcome(&mut job).await;

    assert_eq!(stored.status, JobStatus::Completed);
    assert_eq!(stored.attempts, 1);
    assert!(stored.timings.is_some() && stored.finished_at.is_some());
    let result = stored.result.expect("a result");
    assert_eq!(result.status, Verdict::Ok, "{result:?}");
    assert_eq!(result.exit_code, Some(0));
    assert_eq!(result.stdout, text.as_bytes());
    assert_eq!(result.message, None);
    assert!(result.vm.expect("the VM that ran it").restored);
    assert_eq!(
        events.first(),
        Some(&JobEvent::Status {
            status: JobStatus::Running
        })
    );
    assert_eq!(stdout_of(&events), text, "streamed as it ran");

    assert_eq!(h.job_vms(), 1);
    assert_eq!(h.driver.live(), 0, "the VM was destroyed after the job");
    assert!(h.metric("ignis_jobs_total{verdict=\"ok\"} 1"));
    h.stop().await;
}

#[tokio::test]
async fn a_vm_dying_before_output_is_retried_once_on_another() {
    let h = harness(2).await;
    h.driver.script([Behaviour::DieOnRun]);
    let text = "second time lucky\n";
    let mut job = h.submit(text).await;
    let (stored, events) = h.outcome(&mut job).await;

    assert_eq!(stored.status, JobStatus::Completed);
    let result = stored.result.expect("a result");
    assert_eq!(result.status, Verdict::Ok, "{result:?}");
    assert_eq!(result.stdout, text.as_bytes());
    assert_eq!(stdout_of(&events), text);
    assert_eq!(h.job_vms(), 2, "one VM died, another ran the job");
    assert_eq!(stored.attempts, 1, "a retry inside one start of the job");
    assert!(h.metric("ignis_vm_failures_total{kind=\"run\",language=\"python\"} 1"));
    assert_eq!(h.driver.live(), 0);
    h.stop().await;
}

/// A VM that dies once the program printed is never replaced under a
/// subscriber who saw that output. Whether the host reads the output before
/// it notices the death is a race inside `Vm::run` (its select between the
/// agent channel and the VMM's exit is unbiased, and the fake dies right
/// after printing): when the exit wins, the output is dropped unseen and
/// the job is retried, which the worker's rule allows. So each job is
/// checked against what its subscriber saw, over enough jobs that both
/// orders occur (each about half the time here).
#[tokio::test]
async fn a_vm_dying_after_output_is_never_retried() {
    let h = harness(2).await;
    // Many times over: the output sent before the death must always be
    // read first, never lost to the race with the VMM's exit.
    for i in 0..20 {
        h.driver.script([Behaviour::DieAfterOutput]);
        let before = h.job_vms();
        let mut job = h.submit(&format!("job {i} in full\n")).await;
        let (stored, events) = h.outcome(&mut job).await;
        assert_eq!(stored.status, JobStatus::Completed);
        let result = stored.result.expect("a result");
        assert_eq!(stdout_of(&events), "partial\n", "the output was streamed");
        assert_eq!(result.status, Verdict::InternalError, "{result:?}");
        assert!(
            result
                .message
                .as_deref()
                .is_some_and(|m| !m.is_empty() && !m.contains('/')),
            "empty, or a host path reached the tenant: {result:?}"
        );
        assert!(result.vm.is_some(), "the VM that failed is named");
        assert_eq!(h.job_vms() - before, 1, "no retry once output was streamed");
    }
    assert!(h.metric("ignis_vm_failures_total{kind=\"run\",language=\"python\"} 20"));
    assert!(h.metric("ignis_jobs_total{verdict=\"internal_error\"} 20"));
    assert_eq!(h.driver.live(), 0);
    h.stop().await;
}

#[tokio::test]
async fn every_run_failing_ends_internal_error_with_a_message() {
    let h = harness(2).await;
    h.driver.script([Behaviour::DieOnRun, Behaviour::DieOnRun]);
    let mut job = h.submit("never printed\n").await;
    let (stored, events) = h.outcome(&mut job).await;

    let result = stored.result.expect("a result");
    assert_eq!(result.status, Verdict::InternalError, "{result:?}");
    let message = result.message.expect("a message");
    assert!(
        message.starts_with("no VM could run the job: the "),
        "{message}"
    );
    // The console log was kept, and named in the server log, not here.
    assert!(
        !message.contains('/'),
        "a host path reached the tenant: {message}"
    );
    assert_eq!(stdout_of(&events), "");
    assert_eq!(h.job_vms(), 2, "the job was tried once more, and no more");
    assert!(h.metric("ignis_vm_failures_total{kind=\"run\",language=\"python\"} 2"));
    assert_eq!(h.driver.live(), 0);
    h.stop().await;
}

#[tokio::test]
async fn no_vm_starting_ends_internal_error_with_a_message() {
    let h = harness(2).await;
    // Each attempt: the restore fails, then the boot instead.
    h.driver.script([Behaviour::FailStart; 4]);
    let mut job = h.submit("never printed\n").await;
    let (stored, _) = h.outcome(&mut job).await;

    assert_eq!(stored.status, JobStatus::Completed);
    let result = stored.result.expect("a result");
    assert_eq!(result.status, Verdict::InternalError, "{result:?}");
    assert_eq!(result.vm, None);
    let message = result.message.expect("a message");
    assert!(
        message.starts_with("no VM could run the job: booting a python VM failed"),
        "{message}"
    );
    assert!(
        !message.contains('/'),
        "a host path reached the tenant: {message}"
    );
    assert_eq!(h.job_vms(), 4);
    assert!(h.metric("ignis_vm_failures_total{kind=\"boot\",language=\"python\"} 2"));
    assert_eq!(h.driver.live(), 0);
    h.stop().await;
}

#[tokio::test]
async fn a_job_cancelled_while_running_ends_canceled_and_its_vm_is_gone() {
    let h = harness(2).await;
    // The job's VM stays half-started until released.
    h.driver.hold_boots();
    let mut job = h.submit("never printed\n").await;
    assert_eq!(
        next_event(&mut job.events).await,
        JobEvent::Status {
            status: JobStatus::Running
        }
    );
    until("the job's VM to start", || h.driver.live() == 1).await;

    // What `DELETE /v1/jobs/{id}` does with a running job.
    let was = h.svc.store.cancel(OWNER, job.id, chrono::Utc::now()).await;
    assert_eq!(was.expect("cancel"), JobStatus::Running);
    assert!(h.svc.running.stop(job.id));
    let (stored, _) = h.outcome(&mut job).await;

    assert_eq!(stored.status, JobStatus::Canceled);
    assert_eq!(stored.result, None);
    assert_eq!(h.driver.live(), 0, "the job's VM is gone");
    assert_eq!(h.pools.sizes("python"), (0, 0));
    assert!(h.metric("ignis_jobs_total{verdict=\"canceled\"} 1"));

    // The worker goes on with the next job.
    h.driver.release_boots();
    let mut next = h.submit("next\n").await;
    let (stored, _) = h.outcome(&mut next).await;
    assert_eq!(stored.result.expect("a result").stdout, b"next\n");
    h.stop().await;
}

#[path = "worker_store_tests.rs"]
mod store_failures;
