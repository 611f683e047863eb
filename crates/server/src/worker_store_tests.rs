//! The worker over a store that fails on purpose (a wrapper around the real
//! SQLite store that fails a call N times): results are retried until
//! stored, a result refused for good becomes an honest `internal_error`, a
//! claim that fails puts the job back, and no final event says `running`.

use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::*;
use crate::store::{
    Admission, ApiKey, Claimed, JobStore, ListQuery, StoreError, StoreResult, Waiting,
};

/// Fails the next `n` calls of one kind with what `error` makes.
#[derive(Debug)]
struct Failures {
    n: AtomicU32,
    error: fn() -> StoreError,
}

impl Failures {
    fn none() -> Failures {
        Failures::new(0, busy)
    }

    fn new(n: u32, error: fn() -> StoreError) -> Failures {
        Failures {
            n: AtomicU32::new(n),
            error,
        }
    }

    fn check(&self) -> StoreResult<()> {
        let took = self
            .n
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        match took {
            Ok(_) => Err((self.error)()),
            Err(_) => Ok(()),
        }
    }

    fn left(&self) -> u32 {
        self.n.load(Ordering::SeqCst)
    }
}

fn busy() -> StoreError {
    StoreError::Unavailable("database is locked (injected)".into())
}

fn broken() -> StoreError {
    StoreError::Backend("disk I/O error, for good (injected)".into())
}

#[derive(Debug)]
struct Flaky {
    inner: Arc<dyn JobStore>,
    claim: Failures,
    complete: Failures,
}

#[async_trait]
impl JobStore for Flaky {
    async fn insert(&self, job: &Job) -> StoreResult<()> {
        self.inner.insert(job).await
    }
    async fn get(&self, owner: &str, id: JobId) -> StoreResult<Option<Job>> {
        self.inner.get(owner, id).await
    }
    async fn get_any(&self, id: JobId) -> StoreResult<Option<Job>> {
        self.inner.get_any(id).await
    }
    async fn list(&self, owner: &str, q: &ListQuery) -> StoreResult<Vec<Job>> {
        self.inner.list(owner, q).await
    }
    async fn count_queued(&self, owner: &str) -> StoreResult<u64> {
        self.inner.count_queued(owner).await
    }
    async fn insert_within(&self, job: &Job, max_queued: Option<u32>) -> StoreResult<Admission> {
        self.inner.insert_within(job, max_queued).await
    }
    async fn waiting(&self) -> StoreResult<Vec<Waiting>> {
        self.inner.waiting().await
    }
    async fn claim(
        &self,
        id: JobId,
        redelivered: bool,
        max_attempts: u32,
        at: DateTime<Utc>,
    ) -> StoreResult<Claimed> {
        self.claim.check()?;
        self.inner.claim(id, redelivered, max_attempts, at).await
    }
    async fn complete(
        &self,
        id: JobId,
        attempt: u32,
        result: &RunReport,
        timings: Timings,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.complete.check()?;
        self.inner.complete(id, attempt, result, timings, at).await
    }
    async fn requeue(&self, id: JobId) -> StoreResult<()> {
        self.inner.requeue(id).await
    }
    async fn cancel(&self, owner: &str, id: JobId, at: DateTime<Utc>) -> StoreResult<JobStatus> {
        self.inner.cancel(owner, id, at).await
    }
    async fn discard(&self, id: JobId) -> StoreResult<()> {
        self.inner.discard(id).await
    }
    async fn in_status(&self, status: JobStatus) -> StoreResult<Vec<(JobId, String, u32)>> {
        self.inner.in_status(status).await
    }
    async fn webhook_pending(&self, id: JobId, url: &str, body: &[u8]) -> StoreResult<()> {
        self.inner.webhook_pending(id, url, body).await
    }
    async fn webhook_done(&self, id: JobId) -> StoreResult<()> {
        self.inner.webhook_done(id).await
    }
    async fn webhooks_pending(&self) -> StoreResult<Vec<crate::store::PendingWebhook>> {
        self.inner.webhooks_pending().await
    }
    async fn create_key(&self, key: &ApiKey, secret_hash: &str) -> StoreResult<()> {
        self.inner.create_key(key, secret_hash).await
    }
    async fn key_by_hash(&self, secret_hash: &str) -> StoreResult<Option<ApiKey>> {
        self.inner.key_by_hash(secret_hash).await
    }
    async fn key_by_id(&self, id: &str) -> StoreResult<Option<ApiKey>> {
        self.inner.key_by_id(id).await
    }
}

/// A harness over SQLite behind a [`Flaky`] with these failures, and the
/// wrapper to ask how many are left.
async fn flaky_harness(claim: Failures, complete: Failures) -> (Harness, Arc<Flaky>) {
    let mut kept = None;
    let h = harness_over(2, |inner| {
        let flaky = Arc::new(Flaky {
            inner,
            claim,
            complete,
        });
        kept = Some(flaky.clone());
        flaky
    })
    .await;
    (h, kept.expect("the harness wrapped its store"))
}

/// Follows a job to its final event: the job as that event shows it.
async fn final_event(job: &mut Submitted) -> serde_json::Value {
    loop {
        if let JobEvent::Result { job } = next_event(&mut job.events).await {
            return job;
        }
    }
}

#[tokio::test]
async fn a_result_the_store_cannot_take_yet_is_retried_until_stored() {
    let (h, flaky) = flaky_harness(Failures::none(), Failures::new(3, busy)).await;
    let mut job = h.submit("kept\n").await;
    let ended = final_event(&mut job).await;
    assert_eq!(ended["status"], "completed", "{ended}");
    assert_eq!(ended["result"]["stdout"], "kept\n");
    assert_eq!(flaky.complete.left(), 0, "every injected failure was met");
    let stored = h.svc.store.get_any(job.id).await.expect("store");
    let stored = stored.expect("the job");
    assert_eq!((stored.status, stored.attempts), (JobStatus::Completed, 1));
    assert_eq!(stored.result.expect("a result").stdout, b"kept\n");
    assert_eq!(h.job_vms(), 1, "run once");
    h.stop().await;
}

#[tokio::test]
async fn a_result_the_store_refuses_becomes_an_honest_internal_error() {
    let (h, _flaky) = flaky_harness(Failures::none(), Failures::new(1, broken)).await;
    let mut job = h.submit("refused\n").await;
    let ended = final_event(&mut job).await;
    assert_eq!(ended["status"], "completed", "{ended}");
    assert_eq!(ended["result"]["status"], "internal_error", "{ended}");
    let stored = h.svc.store.get_any(job.id).await.expect("store");
    let result = stored.expect("the job").result.expect("a result");
    assert_eq!(result.status, Verdict::InternalError);
    let message = result.message.expect("a message");
    assert!(message.contains("could not be stored"), "{message}");
    assert_eq!(h.job_vms(), 1, "not run again");
    h.stop().await;
}

#[tokio::test]
async fn a_claim_that_fails_puts_the_job_back_on_the_queue() {
    for error in [busy as fn() -> StoreError, broken] {
        let (h, flaky) = flaky_harness(Failures::new(2, error), Failures::none()).await;
        let mut job = h.submit("taken at last\n").await;
        let ended = final_event(&mut job).await;
        assert_eq!(ended["status"], "completed", "{ended}");
        assert_eq!(flaky.claim.left(), 0);
        let stored = h.svc.store.get_any(job.id).await.expect("store");
        let stored = stored.expect("the job");
        assert_eq!((stored.status, stored.attempts), (JobStatus::Completed, 1));
        assert_eq!(h.job_vms(), 1, "run once, not lost, not twice");
        h.stop().await;
    }
}
