//! `ignis worker`: a worker of the distributed mode. Pulls the jobs of the
//! languages it has images for from NATS JetStream, as many as it has VMs
//! for, runs each in a fresh microVM and stores the result in PostgreSQL.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use ignis_server::config::ServerConfig;
use ignis_server::distributed::{self, Endpoints};
use ignis_server::queue::nats::NatsQueueConfig;
use ignis_vmm::paths::Paths;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// NATS server with JetStream, e.g. nats://127.0.0.1:4222.
    #[arg(long, env = "IGNIS_NATS_URL")]
    pub nats: String,
    /// PostgreSQL, e.g. postgres://ignis@127.0.0.1/ignis.
    #[arg(long, env = "IGNIS_DATABASE_URL")]
    pub database: String,
    /// Where the webhook signing secret lives (the same on every host).
    #[arg(long, env = "IGNIS_DATA_DIR", default_value = "/var/lib/ignis/data")]
    pub data_dir: PathBuf,
    /// Ready VMs kept per language.
    #[arg(long, default_value_t = 1)]
    pub warm: usize,
    /// Host-wide budget: VMs alive at once.
    #[arg(long, default_value_t = 8)]
    pub max_vms: usize,
    /// Host-wide budget: guest memory, in MiB (default: half the host's).
    #[arg(long)]
    pub max_memory: Option<u64>,
    /// Jobs run at once, and so jobs pulled at once (default: --max-vms).
    #[arg(long)]
    pub capacity: Option<usize>,
    /// Seconds running jobs get to finish at shutdown before going back
    /// to the queue for another worker.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace: u64,
    /// Seconds without word from a worker before its job goes to another.
    #[arg(long, default_value_t = 30)]
    pub ack_wait: u64,
    #[command(flatten)]
    pub vm: super::VmFlags,
}

pub fn main(a: Args) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(work(a))?;
    Ok(ExitCode::SUCCESS)
}

async fn work(a: Args) -> anyhow::Result<()> {
    // 0700, its files 0600: tenants' code and outputs, secrets.
    ignis_vmm::paths::private_dir(&a.data_dir)
        .with_context(|| format!("creating {}", a.data_dir.display()))?;
    let mut cfg = ServerConfig::new(a.data_dir.clone());
    cfg.pool.warm = a.warm;
    cfg.pool.max_vms = a.max_vms;
    if let Some(m) = a.max_memory {
        cfg.pool.max_memory_mib = m;
    }
    cfg.workers = a.capacity.unwrap_or(a.max_vms).max(1);
    cfg.shutdown_grace = Duration::from_secs(a.shutdown_grace);
    cfg.ack_wait = Duration::from_secs(a.ack_wait.max(1));
    cfg.launch = a.vm.options();
    let at = Endpoints {
        nats_url: a.nats,
        database_url: a.database,
        queue: NatsQueueConfig::default(),
    };
    let w = distributed::worker(cfg, Paths::from_env(), &at).await?;
    let l = w.pools.launcher();
    eprintln!(
        "ignis: worker running {} jobs at once ({} {}, accelerator {}; snapshots {}; languages: {})",
        w.svc.config.workers,
        l.driver.name(),
        match l.containment {
            ignis_vmm::jail::Containment::Jailed(_) => "jailed",
            ignis_vmm::jail::Containment::Insecure => "NOT jailed",
        },
        l.accel.accel,
        if l.snapshots.is_some() { "on" } else { "off" },
        l.catalog
            .languages
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    );
    distributed::run_worker(w, super::serve::shutdown_signal()).await
}
