//! The embedded default: everything in one process, SQLite in the data
//! directory and an in-process queue. `ignis serve` and the tests build the
//! service the same way, through here.

use std::sync::Arc;

use anyhow::Context;
use ignis_vmm::paths::Paths;
use ignis_vmm::Launcher;

use std::sync::atomic::AtomicBool;

use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::events::{Bus, LocalBus, RunningJobs};
use crate::fleet::LocalFleet;
use crate::metrics::Metrics;
use crate::pool::Pools;
use crate::queue::memory::MemoryQueue;
use crate::queue::JobQueue;
use crate::state::Services;
use crate::store::sqlite::SqliteStore;
use crate::store::JobStore;
use crate::webhook::{RetryPolicy, WebhookSender};

/// Everything `ignis serve` runs on, from a configuration.
pub async fn services(cfg: ServerConfig, paths: Paths) -> anyhow::Result<Arc<Services>> {
    let store =
        SqliteStore::open(&cfg.data_dir.join("ignis.db")).context("opening the job database")?;
    let launcher = Launcher::with_options(paths, cfg.launch.clone()).await?;
    let secret = webhook_secret(&cfg.data_dir)?;
    Ok(assemble(cfg, launcher, Arc::new(store), secret))
}

/// The services over a given launcher and store, with the in-process queue.
pub fn assemble(
    cfg: ServerConfig,
    launcher: Launcher,
    store: Arc<dyn JobStore>,
    webhook_secret: Vec<u8>,
) -> Arc<Services> {
    let metrics = Arc::new(Metrics::new());
    for language in launcher.catalog.languages.keys() {
        metrics.add_language(language);
    }
    let pools = Pools::new(launcher, cfg.pool.clone(), metrics.clone());
    let running = Arc::new(RunningJobs::default());
    let bus = Arc::new(LocalBus::new(running.clone()));
    with_pools(
        cfg,
        pools,
        store,
        Arc::new(MemoryQueue::new()),
        bus,
        running,
        metrics,
        webhook_secret,
    )
}

/// The services of a process that runs VMs (`serve`, `worker`) over the
/// given store, queue and bus; its fleet is itself.
#[allow(clippy::too_many_arguments)]
pub fn with_pools(
    cfg: ServerConfig,
    pools: Pools,
    store: Arc<dyn JobStore>,
    queue: Arc<dyn JobQueue>,
    bus: Arc<dyn Bus>,
    running: Arc<RunningJobs>,
    metrics: Arc<Metrics>,
    webhook_secret: Vec<u8>,
) -> Arc<Services> {
    let draining = Arc::new(AtomicBool::new(false));
    let fleet = Arc::new(LocalFleet {
        id: worker_id(),
        pools: pools.clone(),
        capacity: cfg.workers.max(1),
        running: running.clone(),
        metrics: metrics.clone(),
        draining: draining.clone(),
    });
    let webhooks = WebhookSender::new(
        webhook_secret,
        cfg.allow_private_webhooks,
        RetryPolicy::default(),
    );
    Arc::new(Services {
        config: cfg,
        store,
        queue,
        bus,
        fleet,
        pools: Some(pools),
        metrics,
        webhooks,
        running,
        draining,
        shutdown: CancellationToken::new(),
    })
}

/// This process on this host, as workers announce themselves.
pub fn worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

/// The key webhooks are signed with: made once, kept in the data directory.
pub fn webhook_secret(dir: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("webhook-secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        return Ok(s.trim().as_bytes().to_vec());
    }
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    let secret = hex::encode(bytes);
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut f, secret.as_bytes())?;
    eprintln!(
        "ignis: webhook signing secret written to {}",
        path.display()
    );
    Ok(secret.into_bytes())
}
