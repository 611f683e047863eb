//! `ignis serve`: the embedded service — one process, SQLite in the data
//! directory, an in-process queue, warm pools and workers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use ignis_server::config::ServerConfig;
use ignis_vmm::paths::Paths;

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
    /// A host name (or address) a `--dev` server answers to besides
    /// localhost, 127.0.0.1, [::1] and the listen address; repeatable.
    /// Requests naming any other `Host` get 421, so no web page can reach
    /// the server through DNS rebinding.
    #[arg(
        long = "allowed-host",
        env = "IGNIS_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,
    /// Let callers without an API key use the Piston compatible API
    /// (`/piston/api/v2/...`), and only that API. Keyed callers use
    /// `/piston/k/<api key>/api/v2/...` either way.
    #[arg(long, env = "IGNIS_PISTON_ANONYMOUS")]
    pub piston_anonymous: bool,
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
    #[command(flatten)]
    pub vm: super::VmFlags,
    #[command(flatten)]
    pub keys: super::keys::KeyDefaults,
}

pub fn main(a: Args) -> anyhow::Result<ExitCode> {
    ignis_server::server::check_dev_listener(a.dev, a.listen)?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(serve(a))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(a: Args) -> anyhow::Result<()> {
    // 0700, its files 0600: tenants' code and outputs, secrets.
    ignis_vmm::paths::private_dir(&a.data_dir)
        .with_context(|| format!("creating {}", a.data_dir.display()))?;
    let mut cfg = ServerConfig::new(a.data_dir.clone());
    cfg.dev = a.dev;
    cfg.allowed_hosts = a.allowed_hosts.clone();
    cfg.allowed_hosts.push(a.listen.to_string());
    cfg.piston_anonymous = a.piston_anonymous;
    cfg.pool.warm = a.warm;
    cfg.pool.max_vms = a.max_vms;
    if let Some(m) = a.max_memory {
        cfg.pool.max_memory_mib = m;
    }
    cfg.workers = a.workers.unwrap_or(a.max_vms);
    cfg.allow_private_webhooks = a.allow_private_webhooks;
    cfg.shutdown_grace = Duration::from_secs(a.shutdown_grace);
    cfg.maxima.timeout_ms = a.max_timeout.saturating_mul(1000);
    cfg.launch = a.vm.options();
    cfg.key_defaults = a.keys.allowance();

    let svc = ignis_server::embedded::services(cfg, Paths::from_env()).await?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    if a.dev {
        eprintln!("ignis: *** DEV MODE: NO AUTHENTICATION; anyone on this host can run code ***");
    }
    let pools = svc
        .pools
        .as_ref()
        .context("the embedded service has pools")?;
    let l = pools.launcher();
    let jail = match l.containment {
        ignis_vmm::jail::Containment::Jailed(_) => "jailed",
        ignis_vmm::jail::Containment::Insecure => "NOT jailed",
    };
    let languages: Vec<&str> = l.catalog.languages.keys().map(String::as_str).collect();
    eprintln!(
        "ignis: serving on http://{} ({} {jail}, accelerator {}: {}; snapshots {}; languages: {})",
        listener.local_addr()?,
        l.driver.name(),
        l.accel.accel,
        l.accel.reason,
        if l.snapshots.is_some() { "on" } else { "off" },
        languages.join(", ")
    );
    ignis_server::server::run(listener, shutdown_signal(), svc).await
}

pub async fn shutdown_signal() {
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
