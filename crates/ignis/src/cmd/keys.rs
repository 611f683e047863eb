//! `ignis keys create`: prints a new API key, alone on stdout, once. In the
//! SQLite database of `ignis serve`, or with `--database` (or
//! `IGNIS_DATABASE_URL`) in the PostgreSQL of the distributed mode.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use ignis_server::store::postgres::PostgresStore;
use ignis_server::store::sqlite::SqliteStore;
use ignis_server::store::JobStore;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Create a key. Only its hash is stored; copy it now.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, env = "IGNIS_DATA_DIR", default_value = "/var/lib/ignis/data")]
        data_dir: PathBuf,
        /// Create it in this PostgreSQL (the distributed mode's store)
        /// instead of the SQLite database in --data-dir.
        #[arg(long, env = "IGNIS_DATABASE_URL")]
        database: Option<String>,
        /// Requests per second allowed (429 beyond).
        #[arg(long)]
        rate_limit: Option<u32>,
        /// Queued jobs allowed at once (429 beyond).
        #[arg(long)]
        max_queued: Option<u32>,
    },
}

pub fn main(cmd: Command) -> anyhow::Result<ExitCode> {
    let Command::Create {
        name,
        data_dir,
        database,
        rate_limit,
        max_queued,
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
    let (key, secret) = rt.block_on(ignis_server::keys::create(
        &*store, &name, rate_limit, max_queued,
    ))?;
    eprintln!("ignis: created key {:?} (id {})", key.name, key.id);
    println!("{secret}");
    Ok(ExitCode::SUCCESS)
}
