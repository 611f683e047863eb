//! The services every handler and worker shares.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::events::EventHub;
use crate::job::JobId;
use crate::metrics::Metrics;
use crate::pool::Pools;
use crate::queue::JobQueue;
use crate::store::JobStore;
use crate::webhook::WebhookSender;

#[derive(Debug)]
pub struct Services {
    pub config: ServerConfig,
    pub store: Arc<dyn JobStore>,
    pub queue: Arc<dyn JobQueue>,
    pub pools: Pools,
    pub hub: EventHub,
    pub metrics: Arc<Metrics>,
    pub webhooks: WebhookSender,
    /// Cancellation handles of the jobs running in this process.
    pub running: Mutex<HashMap<JobId, CancellationToken>>,
    /// Set when shutdown begins: no new jobs are taken.
    pub draining: AtomicBool,
    /// Cancelled when the server stops; ends long-lived responses (SSE).
    pub shutdown: CancellationToken,
}

impl Services {
    pub fn new(
        config: ServerConfig,
        store: Arc<dyn JobStore>,
        queue: Arc<dyn JobQueue>,
        pools: Pools,
        metrics: Arc<Metrics>,
        webhooks: WebhookSender,
    ) -> Services {
        Services {
            config,
            store,
            queue,
            pools,
            hub: EventHub::default(),
            metrics,
            webhooks,
            running: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
        }
    }

    /// Stops a job running in this process; false if it is not running here.
    pub fn stop_running(&self, id: JobId) -> bool {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.get(&id).map(CancellationToken::cancel).is_some()
    }
}
