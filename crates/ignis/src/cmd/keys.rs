//! `ignis keys create`: prints a new API key, alone on stdout, once. In the
//! SQLite database of `ignis serve`, or with `--database` (or
//! `IGNIS_DATABASE_URL`) in the PostgreSQL of the distributed mode.
//!
//! Also the flags `ignis serve` and `ignis api` take for the limits of keys
//! that do not set their own.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use ignis_server::keys::{parse_default, parse_limit, Allowance, KeyLimits};
use ignis_server::store::postgres::PostgresStore;
use ignis_server::store::sqlite::SqliteStore;
use ignis_server::store::JobStore;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Create a key. Only its hash is stored; copy it now. A limit not
    /// given is the server's default (`ignis serve --key-...`), whatever
    /// that is when the key is used.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, env = "IGNIS_DATA_DIR", default_value = "/var/lib/ignis/data")]
        data_dir: PathBuf,
        /// Create it in this PostgreSQL (the distributed mode's store)
        /// instead of the SQLite database in --data-dir.
        #[arg(long, env = "IGNIS_DATABASE_URL")]
        database: Option<String>,
        /// Requests per second allowed, or `unlimited` (429 beyond).
        #[arg(long, value_parser = parse_limit)]
        rate_limit: Option<u32>,
        /// Queued jobs allowed at once, or `unlimited` (429 beyond).
        #[arg(long, value_parser = parse_limit)]
        max_queued: Option<u32>,
        /// Jobs running at once, or `unlimited` (beyond, the next waits).
        #[arg(long, value_parser = parse_limit)]
        max_running: Option<u32>,
    },
}

/// A server's default limit: a number, or `unlimited`.
#[derive(Debug, Clone, Copy)]
pub struct DefaultLimit(Option<u32>);

fn default_limit(s: &str) -> Result<DefaultLimit, String> {
    parse_default(s).map(DefaultLimit)
}

/// The limits of keys that set none of their own (and of keyless callers'
/// jobs), as `ignis serve` and `ignis api` take them.
#[derive(clap::Args, Debug, Clone)]
pub struct KeyDefaults {
    /// Requests per second a key may make, or `unlimited`.
    #[arg(long, env = "IGNIS_KEY_RATE_LIMIT", default_value = "20", value_parser = default_limit)]
    pub key_rate_limit: DefaultLimit,
    /// Jobs a key may have queued at once, or `unlimited`.
    #[arg(long, env = "IGNIS_KEY_MAX_QUEUED", default_value = "100", value_parser = default_limit)]
    pub key_max_queued: DefaultLimit,
    /// Jobs of one key running at once, or `unlimited`.
    #[arg(long, env = "IGNIS_KEY_MAX_RUNNING", default_value = "unlimited", value_parser = default_limit)]
    pub key_max_running: DefaultLimit,
}

impl KeyDefaults {
    pub fn allowance(&self) -> Allowance {
        Allowance {
            rate_per_sec: self.key_rate_limit.0,
            max_queued: self.key_max_queued.0,
            max_running: self.key_max_running.0,
        }
    }
}

pub fn main(cmd: Command) -> anyhow::Result<ExitCode> {
    let Command::Create {
        name,
        data_dir,
        database,
        rate_limit,
        max_queued,
        max_running,
    } = cmd;
    let rt = tokio::runtime::Runtime::new()?;
    let store: Box<dyn JobStore> = match database {
        Some(url) => Box::new(
            rt.block_on(PostgresStore::connect(&url))
                .context("opening the PostgreSQL job database")?,
        ),
        None => {
            // 0700, its files 0600: tenants' code and outputs, secrets.
            ignis_vmm::paths::private_dir(&data_dir)
                .with_context(|| format!("creating {}", data_dir.display()))?;
            Box::new(
                SqliteStore::open(&data_dir.join("ignis.db"))
                    .context("opening the job database")?,
            )
        }
    };
    let limits = KeyLimits {
        rate_per_sec: rate_limit,
        max_queued,
        max_running,
    };
    let (key, secret) = rt.block_on(ignis_server::keys::create_with(&*store, &name, limits))?;
    eprintln!("ignis: created key {:?} (id {})", key.name, key.id);
    println!("{secret}");
    Ok(ExitCode::SUCCESS)
}
