//! The services every handler and worker shares.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::events::{Bus, RunningJobs};
use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::pool::Pools;
use crate::queue::JobQueue;
use crate::store::JobStore;
use crate::webhook::WebhookSender;

/// Everything a process of Ignis runs on. `ignis serve` has all of it;
/// `ignis api` has no pools (no images, no VMs) and learns the languages
/// from the workers' announcements; `ignis worker` serves no HTTP.
#[derive(Debug)]
pub struct Services {
    pub config: ServerConfig,
    pub store: Arc<dyn JobStore>,
    pub queue: Arc<dyn JobQueue>,
    pub bus: Arc<dyn Bus>,
    pub fleet: Arc<dyn Fleet>,
    /// This process's VMs; `None` on an API-only host.
    pub pools: Option<Pools>,
    pub metrics: Arc<Metrics>,
    pub webhooks: WebhookSender,
    /// Cancellation handles of the jobs running in this process.
    pub running: Arc<RunningJobs>,
    /// Set when shutdown begins: no new jobs are taken.
    pub draining: Arc<AtomicBool>,
    /// Cancelled when the server stops; ends long-lived responses (SSE).
    pub shutdown: CancellationToken,
}
