//! `ignis api`: an API process of the distributed mode. No images, no VMs:
//! jobs go to NATS JetStream, their state lives in PostgreSQL, and the
//! languages are whatever the workers announce.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use ignis_server::config::ServerConfig;
use ignis_server::distributed::{self, Endpoints};
use ignis_server::queue::nats::NatsQueueConfig;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, env = "IGNIS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// NATS server with JetStream, e.g. nats://127.0.0.1:4222.
    #[arg(long, env = "IGNIS_NATS_URL")]
    pub nats: String,
    /// PostgreSQL, e.g. postgres://ignis@127.0.0.1/ignis.
    #[arg(long, env = "IGNIS_DATABASE_URL")]
    pub database: String,
    /// Where the webhook signing secret lives (the same on every host).
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
    /// Jobs the queue holds at most (waiting and running); beyond, 503.
    #[arg(long, default_value_t = 10_000)]
    pub queue_max: i64,
    /// Allow webhooks to loopback, private and link-local addresses.
    #[arg(long)]
    pub allow_private_webhooks: bool,
    /// Largest timeout a job may ask for, in seconds.
    #[arg(long, default_value_t = 60)]
    pub max_timeout: u64,
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
    cfg.allow_private_webhooks = a.allow_private_webhooks;
    cfg.maxima.timeout_ms = a.max_timeout.saturating_mul(1000);
    cfg.key_defaults = a.keys.allowance();
    let at = Endpoints {
        nats_url: a.nats,
        database_url: a.database,
        queue: NatsQueueConfig {
            max_jobs: a.queue_max,
            ..NatsQueueConfig::default()
        },
    };
    let svc = distributed::api_services(cfg, &at).await?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    if a.dev {
        eprintln!("ignis: *** DEV MODE: NO AUTHENTICATION; anyone on this host can run code ***");
    }
    eprintln!("ignis: API serving on http://{}", listener.local_addr()?);
    distributed::run_api(listener, super::serve::shutdown_signal(), svc).await
}
