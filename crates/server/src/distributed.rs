//! The distributed mode: `ignis api` processes and `ignis worker`
//! processes, any number of each on any hosts, sharing PostgreSQL (the
//! store) and NATS JetStream (the queue, events, cancels, announcements).
//!
//! An API process has no pools and links no VM: it learns the languages
//! from the workers. A worker serves no HTTP: it pulls jobs of its own
//! languages, runs them in its VMs exactly as `ignis serve` does, and
//! announces itself. Both are built from the same services as `serve`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ignis_vmm::paths::Paths;
use ignis_vmm::Launcher;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::ServerConfig;
use crate::events::RunningJobs;
use crate::metrics::Metrics;
use crate::nats::bus::NatsBus;
use crate::nats::fleet::{announce, RemoteFleet};
use crate::pool::Pools;
use crate::queue::nats::{NatsQueue, NatsQueueConfig};
use crate::state::Services;
use crate::store::postgres::PostgresStore;
use crate::store::JobStore;
use crate::webhook::{RetryPolicy, WebhookSender};

/// Where the shared parts are.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub nats_url: String,
    pub database_url: String,
    pub queue: NatsQueueConfig,
}

/// Connects to PostgreSQL, waiting (and saying so) while it is down: a
/// process started before its database comes up once the database does.
pub async fn store(url: &str) -> anyhow::Result<Arc<dyn JobStore>> {
    let mut said = false;
    loop {
        match PostgresStore::connect(url).await {
            Ok(s) => return Ok(Arc::new(s)),
            Err(e) if e.is_retryable() => {
                if !said {
                    tracing::warn!("waiting for PostgreSQL: {e}");
                    said = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e).context("opening the job database"),
        }
    }
}

/// The services of an API process.
pub async fn api_services(cfg: ServerConfig, at: &Endpoints) -> anyhow::Result<Arc<Services>> {
    let store = store(&at.database_url).await?;
    let client = crate::nats::connect(&at.nats_url, "ignis-api").await?;
    let queue = NatsQueue::publisher(client.clone(), at.queue.clone()).await?;
    let shutdown = CancellationToken::new();
    let fleet = RemoteFleet::listen(&client, shutdown.clone())
        .await
        .context("listening to the workers")?;
    let secret = crate::embedded::webhook_secret(&cfg.data_dir)?;
    let webhooks = WebhookSender::new(secret, cfg.allow_private_webhooks, RetryPolicy::default());
    Ok(Arc::new(Services {
        config: cfg,
        store,
        queue: Arc::new(queue),
        bus: Arc::new(NatsBus::new(client)),
        fleet: Arc::new(fleet),
        pools: None,
        metrics: Arc::new(Metrics::new()),
        webhooks,
        running: Arc::default(),
        draining: Arc::new(AtomicBool::new(false)),
        shutdown,
    }))
}

/// Serves the API until `shutdown` resolves. At start, every job the store
/// holds as queued is queued again (the stream drops duplicates), so a job
/// accepted just before a crash is never stranded.
pub async fn run_api(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    svc: Arc<Services>,
) -> anyhow::Result<()> {
    if let Err(e) = crate::service::requeue_all(&svc).await {
        tracing::warn!("queued jobs not requeued at start: {e}");
    }
    let app = api::app(AppState::new(svc.clone()));
    let done = svc.shutdown.clone();
    let stopping = svc.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            stopping.draining.store(true, Ordering::SeqCst);
            // Ends event streams and waits, so the server can stop.
            done.cancel();
        })
        .await?;
    svc.queue.close();
    tracing::info!("stopped");
    Ok(())
}

/// A worker process: its services, and the NATS side it announces on.
#[derive(Debug)]
pub struct Worker {
    pub svc: Arc<Services>,
    pub pools: Pools,
    client: async_nats::Client,
    bus: Arc<NatsBus>,
}

/// Builds a worker over the images under `paths`; it pulls the languages
/// it has images for, and only those.
pub async fn worker(cfg: ServerConfig, paths: Paths, at: &Endpoints) -> anyhow::Result<Worker> {
    let launcher = Launcher::with_options(paths, cfg.launch.clone()).await?;
    let languages: Vec<String> = launcher.catalog.languages.keys().cloned().collect();
    anyhow::ensure!(!languages.is_empty(), "no language images: nothing to run");
    let store = store(&at.database_url).await?;
    let client = crate::nats::connect(&at.nats_url, "ignis-worker").await?;
    let mut qcfg = at.queue.clone();
    qcfg.ack_wait = cfg.ack_wait;
    let queue = NatsQueue::puller(client.clone(), qcfg, &languages).await?;
    let metrics = Arc::new(Metrics::new());
    for l in &languages {
        metrics.add_language(l);
    }
    let pools = Pools::new(launcher, cfg.pool.clone(), metrics.clone());
    let running = Arc::new(RunningJobs::default());
    let bus = Arc::new(NatsBus::new(client.clone()));
    let secret = crate::embedded::webhook_secret(&cfg.data_dir)?;
    let svc = crate::embedded::with_pools(
        cfg,
        pools.clone(),
        store,
        Arc::new(queue),
        bus.clone(),
        running,
        metrics,
        secret,
    );
    Ok(Worker {
        svc,
        pools,
        client,
        bus,
    })
}

/// Runs the worker until `shutdown` resolves, then: pulls no more jobs,
/// lets running jobs finish for the configured grace (those that do not go
/// back to the queue for another worker), kills every VM and returns.
pub async fn run_worker(
    w: Worker,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Worker {
        svc,
        pools,
        client,
        bus,
    } = w;
    let cancels = bus.serve_cancels(svc.running.clone()).await?;
    // Workers send webhooks; deliveries a stopped or crashed worker left
    // pending are sent again (at least once: a receiver may see one twice).
    if let Err(e) = crate::service::resume_webhooks(&svc).await {
        tracing::warn!("pending webhook deliveries not resumed: {e}");
    }
    let quiet = CancellationToken::new();
    let me = svc.clone();
    let announcer = announce(client.clone(), quiet.clone(), move || {
        me.fleet.workers().into_iter().next()
    });
    pools.start_refill();
    let stop = CancellationToken::new();
    let hard_stop = CancellationToken::new();
    let workers = tokio::spawn(crate::worker::run(
        svc.clone(),
        pools.clone(),
        svc.config.workers,
        stop.clone(),
        hard_stop.clone(),
    ));
    shutdown.await;
    tracing::info!(
        "shutting down: no new jobs; running jobs get {:?}",
        svc.config.shutdown_grace
    );
    svc.draining.store(true, Ordering::SeqCst);
    stop.cancel();
    svc.queue.close();
    let grace = svc.config.shutdown_grace;
    let timer = tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        hard_stop.cancel();
    });
    let _ = workers.await;
    timer.abort();
    pools.shutdown().await;
    quiet.cancel();
    let _ = announcer.await;
    cancels.abort();
    let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
    tracing::info!("stopped");
    Ok(())
}
