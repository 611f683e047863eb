//! The worker against a queue that redelivers, over the fake driver: what
//! it acknowledges and when, and what it does with a job whose workers
//! were lost before. (The JetStream queue itself is tested in
//! `queue/nats_tests.rs`; whole processes in `ignis`'s distributed tests.)

use std::sync::Mutex;

use async_trait::async_trait;
use ignis_protocol::{File, Limits, RunRequest, Verdict};
use ignis_vmm::driver::fake::FakeDriver;
use tokio::sync::mpsc;

use super::*;
use crate::config::{PoolConfig, ServerConfig};
use crate::events::{LocalBus, RunningJobs};
use crate::job::{JobId, EXHAUSTED_MESSAGE};
use crate::metrics::Metrics;
use crate::queue::{Acker, JobQueue, QueuedJob};
use crate::store::sqlite::SqliteStore;
use crate::store::JobStore;

const PATIENCE: Duration = Duration::from_secs(60);

/// A queue whose deliveries the test makes, and whose acknowledgements
/// it sees, with the job's stored status at the moment of each.
#[derive(Debug)]
struct Scripted {
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Delivery>>,
    closed: CancellationToken,
}

#[derive(Debug, Clone)]
struct Recorder {
    store: Arc<dyn JobStore>,
    id: JobId,
    acks: Arc<Mutex<Vec<JobStatus>>>,
    done: mpsc::UnboundedSender<JobStatus>,
}

#[async_trait]
impl Acker for Recorder {
    async fn ack(&self) -> Result<(), QueueError> {
        let job = self.store.get_any(self.id).await.expect("store");
        let status = job.expect("the job").status;
        self.acks.lock().expect("acks").push(status);
        let _ = self.done.send(status);
        Ok(())
    }

    async fn progress(&self) -> Result<(), QueueError> {
        Ok(())
    }

    fn clone_box(&self) -> Box<dyn Acker> {
        Box::new(self.clone())
    }
}

#[async_trait]
impl JobQueue for Scripted {
    async fn push(&self, _: QueuedJob) -> Result<(), QueueError> {
        Err(QueueError::Backend("scripted".into()))
    }

    async fn pop(&self) -> Result<Delivery, QueueError> {
        let mut rx = self.rx.lock().await;
        tokio::select! {
            () = self.closed.cancelled() => Err(QueueError::Closed),
            d = rx.recv() => d.ok_or(QueueError::Closed),
        }
    }

    fn depth(&self) -> usize {
        0
    }

    fn close(&self) {
        self.closed.cancel();
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    svc: Arc<Services>,
    deliver: mpsc::UnboundedSender<Delivery>,
    acked: mpsc::UnboundedReceiver<JobStatus>,
    done: mpsc::UnboundedSender<JobStatus>,
    stop: CancellationToken,
    workers: tokio::task::JoinHandle<()>,
    driver: FakeDriver,
}

async fn harness(max_attempts: u32) -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = ServerConfig::new(dir.path().to_path_buf());
    cfg.pool = PoolConfig {
        warm: 0,
        max_vms: 2,
        max_memory_mib: 4096,
    };
    cfg.max_attempts = max_attempts;
    let store = Arc::new(SqliteStore::open(&dir.path().join("ignis.db")).expect("store"));
    let driver = FakeDriver::default();
    let launcher = crate::test_kit::fake_launcher(dir.path(), driver.clone());
    let metrics = Arc::new(Metrics::new());
    let pools = Pools::new(launcher, cfg.pool.clone(), metrics.clone());
    let (deliver, rx) = mpsc::unbounded_channel();
    let queue = Arc::new(Scripted {
        rx: tokio::sync::Mutex::new(rx),
        closed: CancellationToken::new(),
    });
    let running = Arc::new(RunningJobs::default());
    let bus = Arc::new(LocalBus::new(running.clone()));
    let svc = crate::embedded::with_pools(
        cfg,
        pools.clone(),
        store,
        queue,
        bus,
        running,
        metrics,
        b"secret".to_vec(),
    );
    let stop = CancellationToken::new();
    let workers = tokio::spawn(run(
        svc.clone(),
        pools,
        1,
        stop.clone(),
        CancellationToken::new(),
    ));
    let (done, acked) = mpsc::unbounded_channel();
    Harness {
        _dir: dir,
        svc,
        deliver,
        acked,
        done,
        stop,
        workers,
        driver,
    }
}

impl Harness {
    async fn job(&self) -> Job {
        let request = RunRequest {
            files: vec![File {
                name: "main.py".into(),
                content: b"hi\n".to_vec(),
            }],
            stdin: vec![],
            args: vec![],
            env: Default::default(),
            limits: Limits::default(),
        };
        let job = Job::new("tester".into(), "python".into(), request, None);
        self.svc.store.insert(&job).await.expect("insert");
        job
    }

    fn deliver(&self, job: &Job, redelivered: bool) {
        let recorder = Recorder {
            store: self.svc.store.clone(),
            id: job.id,
            acks: Arc::default(),
            done: self.done.clone(),
        };
        let d = Delivery {
            job: QueuedJob {
                id: job.id,
                language: job.language.clone(),
                owner: job.owner.clone(),
                max_running: None,
            },
            redelivered,
            handle: Box::new(recorder),
        };
        self.deliver.send(d).expect("worker listening");
    }

    /// The job's status when the worker acknowledged its delivery.
    async fn acked(&mut self) -> JobStatus {
        tokio::time::timeout(PATIENCE, self.acked.recv())
            .await
            .expect("an acknowledgement within the hang guard")
            .expect("ack channel")
    }

    async fn stored(&self, id: JobId) -> Job {
        self.svc
            .store
            .get_any(id)
            .await
            .expect("store")
            .expect("job")
    }

    async fn stop(self) {
        self.stop.cancel();
        self.svc.queue.close();
        self.workers.await.expect("workers");
        if let Some(p) = &self.svc.pools {
            p.shutdown().await;
        }
        assert_eq!(self.driver.live(), 0);
    }
}

#[tokio::test]
async fn a_delivery_is_acknowledged_only_once_its_result_is_stored() {
    let mut h = harness(2).await;
    let job = h.job().await;
    h.deliver(&job, false);
    assert_eq!(h.acked().await, JobStatus::Completed);
    let stored = h.stored(job.id).await;
    assert_eq!(stored.attempts, 1);
    assert_eq!(stored.result.expect("result").status, Verdict::Ok);
    // The same delivery again (an ack lost on the way): acknowledged and
    // skipped, the result left as it was.
    h.deliver(&job, true);
    assert_eq!(h.acked().await, JobStatus::Completed);
    assert_eq!(h.stored(job.id).await.attempts, 1);
    h.stop().await;
}

#[tokio::test]
async fn a_lost_workers_job_runs_again_on_a_new_attempt() {
    let mut h = harness(2).await;
    let job = h.job().await;
    // A worker took it and died without a word.
    let first = h.svc.store.claim(job.id, false, 2, Utc::now()).await;
    assert!(matches!(first, Ok(Claimed::Run(_))));
    h.deliver(&job, true);
    assert_eq!(h.acked().await, JobStatus::Completed);
    let stored = h.stored(job.id).await;
    assert_eq!(stored.attempts, 2);
    assert_eq!(stored.result.expect("result").status, Verdict::Ok);
    h.stop().await;
}

#[tokio::test]
async fn a_job_that_keeps_losing_its_workers_ends_as_internal_error() {
    let mut h = harness(2).await;
    let job = h.job().await;
    for _ in 0..2 {
        // Taken, and its worker lost, twice.
        let claimed = h.svc.store.claim(job.id, true, 2, Utc::now()).await;
        assert!(matches!(claimed, Ok(Claimed::Run(_))), "{claimed:?}");
    }
    let vms_before = h.driver.calls().len();
    h.deliver(&job, true);
    assert_eq!(h.acked().await, JobStatus::Completed);
    let stored = h.stored(job.id).await;
    let result = stored.result.expect("result");
    assert_eq!(result.status, Verdict::InternalError);
    assert_eq!(result.message.as_deref(), Some(EXHAUSTED_MESSAGE));
    assert_eq!(h.driver.calls().len(), vms_before, "no VM for it again");
    h.stop().await;
}
