//! The in-process queue: a FIFO with a notifier.

use std::collections::VecDeque;
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{Delivery, JobQueue, NoAck, QueueError, QueuedJob};

#[derive(Debug, Default)]
pub struct MemoryQueue {
    inner: Mutex<Inner>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    jobs: VecDeque<QueuedJob>,
    closed: bool,
}

impl MemoryQueue {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The lock guards plain data with no invariants a panic could break.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl JobQueue for MemoryQueue {
    async fn push(&self, job: QueuedJob) -> Result<(), QueueError> {
        let mut g = self.lock();
        if g.closed {
            return Err(QueueError::Closed);
        }
        g.jobs.push_back(job);
        drop(g);
        self.notify.notify_one();
        Ok(())
    }

    async fn pop(&self) -> Result<Delivery, QueueError> {
        loop {
            let notified = self.notify.notified();
            {
                let mut g = self.lock();
                if g.closed {
                    return Err(QueueError::Closed);
                }
                if let Some(j) = g.jobs.pop_front() {
                    // Others may be waiting and more jobs may be queued.
                    if !g.jobs.is_empty() {
                        self.notify.notify_one();
                    }
                    return Ok(Delivery {
                        job: j,
                        redelivered: false,
                        handle: Box::new(NoAck),
                    });
                }
            }
            notified.await;
        }
    }

    fn depth(&self) -> usize {
        self.lock().jobs.len()
    }

    fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: u128) -> QueuedJob {
        QueuedJob {
            id: uuid::Uuid::from_u128(n),
            language: "python".into(),
        }
    }

    #[tokio::test]
    async fn fifo_and_close() {
        let q = MemoryQueue::new();
        q.push(job(1)).await.expect("push");
        q.push(job(2)).await.expect("push");
        assert_eq!(q.depth(), 2);
        assert_eq!(q.pop().await.expect("pop").job.id, job(1).id);
        assert_eq!(q.pop().await.expect("pop").job.id, job(2).id);
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
}
