//! `ignis serve`: the embedded service — one process, SQLite in the data
//! directory, an in-process queue, warm pools and workers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ignis_server::config::ServerConfig;
use ignis_server::metrics::Metrics;
use ignis_server::pool::Pools;
use ignis_server::queue::memory::MemoryQueue;
use ignis_server::state::Services;
use ignis_server::store::sqlite::SqliteStore;
use ignis_server::webhook::{RetryPolicy, WebhookSender};
use ignis_vmm::paths::Paths;
use ignis_vmm::Launcher;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, env = "IGNIS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the job database, webhook secret and keys live.
    #[arg(long, env = "IGNIS_DATA_DIR", default_value = "/var/lib/ignis/data")]
    pub data_dir: PathBuf,
    /// No API keys (loopback only). Never use this on a shared machine.
    #[arg(long)]
    pub dev: bool,
    /// Ready VMs kept per language.
    #[arg(long, default_value_t = 1)]
    pub warm: usize,
    /// Host-wide budget: VMs alive at once.
    #[arg(long, default_value_t = 8)]
    pub max_vms: usize,
    /// Host-wide budget: guest memory, in MiB (default: half the host's).
    #[arg(long)]
    pub max_memory: Option<u64>,
    /// Jobs run at once (default: --max-vms).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Allow webhooks to loopback, private and link-local addresses.
    #[arg(long)]
    pub allow_private_webhooks: bool,
    /// Seconds running jobs get to finish at shutdown before being requeued.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace: u64,
    /// Largest timeout a job may ask for, in seconds.
    #[arg(long, default_value_t = 60)]
    pub max_timeout: u64,
}

pub fn main(a: Args) -> anyhow::Result<ExitCode> {
    ignis_server::server::check_dev_listener(a.dev, a.listen)?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(serve(a))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(a: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.data_dir).with_context(|| format!("creating {}", a.data_dir.display()))?;
    let mut cfg = ServerConfig::new(a.data_dir.clone());
    cfg.dev = a.dev;
    cfg.pool.warm = a.warm;
    cfg.pool.max_vms = a.max_vms;
    if let Some(m) = a.max_memory {
        cfg.pool.max_memory_mib = m;
    }
    cfg.workers = a.workers.unwrap_or(a.max_vms);
    cfg.allow_private_webhooks = a.allow_private_webhooks;
    cfg.shutdown_grace = Duration::from_secs(a.shutdown_grace);
    cfg.maxima.timeout_ms = a.max_timeout.saturating_mul(1000);

    let svc = build_services(cfg).await?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    if a.dev {
        eprintln!("ignis: *** DEV MODE: NO AUTHENTICATION; anyone on this host can run code ***");
    }
    eprintln!(
        "ignis: serving on http://{} (accelerator {}: {}; languages: {})",
        listener.local_addr()?,
        svc.pools.launcher().accel.accel,
        svc.pools.launcher().accel.reason,
        svc.pools.launcher().catalog.languages.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    ignis_server::server::run(listener, shutdown_signal(), svc).await
}

/// Everything `ignis serve` runs on, from a configuration.
pub async fn build_services(cfg: ServerConfig) -> anyhow::Result<Arc<Services>> {
    let store = SqliteStore::open(&cfg.data_dir.join("ignis.db")).context("opening the job database")?;
    let launcher = Launcher::new(Paths::from_env()).await?;
    let secret = webhook_secret(&cfg.data_dir)?;
    let metrics = Arc::new(Metrics::new());
    let pools = Pools::new(launcher, cfg.pool.clone(), metrics.clone());
    let webhooks = WebhookSender::new(secret, cfg.allow_private_webhooks, RetryPolicy::default());
    Ok(Arc::new(Services::new(
        cfg,
        Arc::new(store),
        Arc::new(MemoryQueue::new()),
        pools,
        metrics,
        webhooks,
    )))
}

/// The key webhooks are signed with: made once, kept in the data directory.
fn webhook_secret(dir: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("webhook-secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        return Ok(s.trim().as_bytes().to_vec());
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("reading /dev/urandom")?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut f, secret.as_bytes())?;
    eprintln!("ignis: webhook signing secret written to {}", path.display());
    Ok(secret.into_bytes())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
