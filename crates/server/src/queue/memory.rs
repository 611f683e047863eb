//! The in-process queue: one FIFO per owner, served in turns.
//!
//! Owners with waiting jobs take turns (round robin): a pop serves the
//! owner at the front of the turn order and sends it to the back, so one
//! key with a thousand queued jobs delays another key's job by at most one
//! job per worker. Within one owner, jobs leave in the order they came.
//!
//! An owner may be capped in jobs running at once
//! ([`QueuedJob::max_running`]): a job counts as running from its pop until
//! its delivery (and every clone of its handle) is dropped, and an owner at
//! its cap keeps its place in the turn order but is passed over, so its
//! next job waits (rather than failing) while other owners' jobs go ahead.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{Acker, Delivery, JobQueue, QueueError, QueuedJob};

#[derive(Debug, Default)]
pub struct MemoryQueue {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    inner: Mutex<Inner>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    /// Each owner's waiting jobs, oldest first.
    waiting: HashMap<String, VecDeque<QueuedJob>>,
    /// The owners with waiting jobs, in turn order: the front goes next.
    turns: VecDeque<String>,
    /// Jobs handed out and not yet done with, per owner.
    running: HashMap<String, u32>,
    /// Jobs waiting, all owners together.
    len: usize,
    closed: bool,
}

impl Inner {
    /// Takes the next job of the first owner in turn that is below its
    /// running cap, and sends that owner to the back of the turn order.
    fn take(&mut self) -> Option<QueuedJob> {
        let pos = self.turns.iter().position(|owner| {
            let running = self.running.get(owner).copied().unwrap_or(0);
            let cap = self
                .waiting
                .get(owner)
                .and_then(|q| q.front())
                .and_then(|j| j.max_running);
            cap.is_none_or(|cap| running < cap)
        })?;
        let owner = self.turns.remove(pos)?;
        let jobs = self.waiting.get_mut(&owner)?;
        let job = jobs.pop_front()?;
        if jobs.is_empty() {
            self.waiting.remove(&owner);
        } else {
            self.turns.push_back(owner.clone());
        }
        self.len -= 1;
        *self.running.entry(owner).or_default() += 1;
        Some(job)
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The lock guards plain data with no invariants a panic could break.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl MemoryQueue {
    pub fn new() -> Self {
        Self::default()
    }
}

/// One owner's running slot, given back when the last handle on its
/// delivery is dropped (the job is done, or given up to recovery).
#[derive(Debug)]
struct Slot {
    shared: Arc<Shared>,
    owner: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.shared.lock();
        if let Some(n) = g.running.get_mut(&self.owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                g.running.remove(&self.owner);
            }
        }
        let waiting = g.len > 0;
        drop(g);
        // The owner may have a job that was held back at its cap.
        if waiting {
            self.shared.notify.notify_one();
        }
    }
}

/// The in-process queue has nothing to acknowledge; the handle only holds
/// the owner's running slot.
#[derive(Debug, Clone)]
struct MemoryAck {
    _slot: Arc<Slot>,
}

#[async_trait]
impl Acker for MemoryAck {
    async fn ack(&self) -> Result<(), QueueError> {
        Ok(())
    }

    async fn progress(&self) -> Result<(), QueueError> {
        Ok(())
    }

    fn clone_box(&self) -> Box<dyn Acker> {
        Box::new(self.clone())
    }

    /// An in-process delivery never comes back by itself: a worker that
    /// could not take it pushes it again.
    fn redelivers(&self) -> bool {
        false
    }
}

#[async_trait]
impl JobQueue for MemoryQueue {
    async fn push(&self, job: QueuedJob) -> Result<(), QueueError> {
        let mut g = self.shared.lock();
        if g.closed {
            return Err(QueueError::Closed);
        }
        let owner = job.owner.clone();
        let jobs = g.waiting.entry(owner.clone()).or_default();
        jobs.push_back(job);
        if jobs.len() == 1 {
            g.turns.push_back(owner);
        }
        g.len += 1;
        drop(g);
        self.shared.notify.notify_one();
        Ok(())
    }

    async fn pop(&self) -> Result<Delivery, QueueError> {
        loop {
            let notified = self.shared.notify.notified();
            {
                let mut g = self.shared.lock();
                if g.closed {
                    return Err(QueueError::Closed);
                }
                if let Some(job) = g.take() {
                    // Others may be waiting and more jobs may be queued.
                    if g.len > 0 {
                        self.shared.notify.notify_one();
                    }
                    let slot = Slot {
                        shared: self.shared.clone(),
                        owner: job.owner.clone(),
                    };
                    return Ok(Delivery {
                        job,
                        redelivered: false,
                        handle: Box::new(MemoryAck {
                            _slot: Arc::new(slot),
                        }),
                    });
                }
            }
            notified.await;
        }
    }

    fn depth(&self) -> usize {
        self.shared.lock().len
    }

    fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    fn job_of(owner: &str, n: u128, max_running: Option<u32>) -> QueuedJob {
        QueuedJob {
            id: uuid::Uuid::from_u128(n),
            language: "python".into(),
            owner: owner.into(),
            max_running,
        }
    }

    fn job(n: u128) -> QueuedJob {
        job_of("alice", n, None)
    }

    async fn pop(q: &MemoryQueue) -> Delivery {
        q.pop().await.expect("pop")
    }

    #[tokio::test]
    async fn fifo_and_close() {
        let q = MemoryQueue::new();
        q.push(job(1)).await.expect("push");
        q.push(job(2)).await.expect("push");
        assert_eq!(q.depth(), 2);
        assert_eq!(pop(&q).await.job.id, job(1).id);
        assert_eq!(pop(&q).await.job.id, job(2).id);
        q.close();
        assert!(matches!(q.pop().await, Err(QueueError::Closed)));
        assert!(matches!(q.push(job(3)).await, Err(QueueError::Closed)));
    }

    #[tokio::test]
    async fn a_waiting_pop_wakes_on_push() {
        let q = std::sync::Arc::new(MemoryQueue::new());
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.pop().await });
        tokio::task::yield_now().await;
        q.push(job(7)).await.expect("push");
        assert_eq!(waiter.await.expect("join").expect("pop").job.id, job(7).id);
    }

    #[tokio::test]
    async fn a_key_with_fifty_queued_jobs_delays_another_by_one_at_most() {
        let q = MemoryQueue::new();
        for n in 0..50 {
            q.push(job_of("a", n, None)).await.expect("push");
        }
        q.push(job_of("b", 1000, None)).await.expect("push");
        let first: Vec<_> = [pop(&q).await, pop(&q).await]
            .iter()
            .map(|d| d.job.clone())
            .collect();
        assert!(
            first.contains(&job_of("b", 1000, None)),
            "b's job was not among the first two pops: {first:?}"
        );
        // Then turns alternate while both wait, and each owner's jobs keep
        // their order.
        q.push(job_of("b", 1001, None)).await.expect("push");
        q.push(job_of("b", 1002, None)).await.expect("push");
        let mut order = vec![];
        for _ in 0..6 {
            let d = pop(&q).await;
            order.push((d.job.owner.clone(), d.job.id.as_u128()));
        }
        let want = [
            ("a", 1),
            ("b", 1001),
            ("a", 2),
            ("b", 1002),
            ("a", 3),
            ("a", 4),
        ];
        let want: Vec<_> = want.iter().map(|(o, n)| (o.to_string(), *n)).collect();
        assert_eq!(order, want);
        assert_eq!(q.depth(), 50 - 5);
    }

    #[tokio::test]
    async fn an_owner_at_its_running_cap_waits_while_others_go_ahead() {
        let q = MemoryQueue::new();
        q.push(job_of("a", 1, Some(1))).await.expect("push");
        q.push(job_of("a", 2, Some(1))).await.expect("push");
        q.push(job_of("b", 3, None)).await.expect("push");
        let a1 = pop(&q).await;
        assert_eq!(a1.job.id.as_u128(), 1);
        // a is at its cap: b goes ahead although a was first in turn.
        assert_eq!(pop(&q).await.job.id.as_u128(), 3);
        // Nothing else may start: a pop waits rather than fail.
        let mut next = Box::pin(q.pop());
        assert!(
            (&mut next).now_or_never().is_none(),
            "a's second job started"
        );
        assert_eq!(q.depth(), 1);
        // a's running job ends (its handle, and a clone of it, are dropped):
        // the waiting pop gets a's next job.
        let keep_alive = a1.handle.clone_box();
        drop(a1);
        assert!((&mut next).now_or_never().is_none(), "a clone still runs");
        drop(keep_alive);
        let a2 = next.await.expect("pop");
        assert_eq!(a2.job.id.as_u128(), 2);
    }
}
