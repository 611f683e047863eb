//! What an operator can tune. Every maximum is enforced at submission: a
//! request above it is refused with a 422, never silently clamped.

use std::path::PathBuf;
use std::time::Duration;

use ignis_protocol::Limits;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// No API keys; only allowed on a loopback listener.
    pub dev: bool,
    /// Names a `--dev` server answers to besides `localhost`, `127.0.0.1`
    /// and `[::1]` (the listen address, `--allowed-host`); requests for any
    /// other `Host` get 421 (see `api::host`).
    pub allowed_hosts: Vec<String>,
    /// Anyone may use the Piston compatible API at `/piston/api/v2/...`
    /// without a key (that API alone; its jobs belong to no key).
    pub piston_anonymous: bool,
    pub defaults: Limits,
    pub maxima: Maxima,
    pub pool: PoolConfig,
    /// Longest `?wait=true` hold before answering 202 anyway.
    pub wait_max: Duration,
    /// Webhooks to loopback/private/link-local addresses are refused unless set.
    pub allow_private_webhooks: bool,
    /// Starts of a job (first run plus retries after a dead VM or a restart).
    pub max_attempts: u32,
    /// How long shutdown lets running jobs finish before requeueing them.
    pub shutdown_grace: Duration,
    /// Jobs run at once (each holds one VM).
    pub workers: usize,
    /// Driver, jail and snapshots of the VMs.
    pub launch: ignis_vmm::launcher::LaunchOptions,
    /// How long a distributed queue waits for a worker's word on a job
    /// before it hands the job to another worker; workers say they are
    /// still at it three times per period.
    pub ack_wait: Duration,
    /// What a key may do unless it says otherwise (and what keyless
    /// callers' jobs may do): see [`crate::keys`].
    pub key_defaults: crate::keys::Allowance,
}

#[derive(Debug, Clone, Copy)]
pub struct Maxima {
    pub timeout_ms: u64,
    pub memory_mib: u64,
    pub max_output_kib: u64,
    pub max_processes: u32,
    /// All files of a job together.
    pub code_bytes: usize,
    pub stdin_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Ready VMs kept per language.
    pub warm: usize,
    /// Host-wide budget: VMs alive at once (ready, booting and running).
    pub max_vms: usize,
    /// Host-wide budget: guest memory of those VMs, in MiB.
    pub max_memory_mib: u64,
}

impl ServerConfig {
    pub fn new(data_dir: PathBuf) -> ServerConfig {
        let host_mib = host_memory_mib().unwrap_or(4096);
        ServerConfig {
            data_dir,
            dev: false,
            allowed_hosts: Vec::new(),
            piston_anonymous: false,
            defaults: Limits::default(),
            maxima: Maxima {
                timeout_ms: 60_000,
                memory_mib: 1024,
                max_output_kib: 8 * 1024,
                max_processes: 256,
                code_bytes: 1024 * 1024,
                stdin_bytes: 4 * 1024 * 1024,
            },
            pool: PoolConfig {
                warm: 1,
                max_vms: 8,
                max_memory_mib: host_mib / 2,
            },
            wait_max: Duration::from_secs(60),
            allow_private_webhooks: false,
            max_attempts: 2,
            shutdown_grace: Duration::from_secs(30),
            workers: 8,
            launch: Default::default(),
            ack_wait: Duration::from_secs(30),
            key_defaults: crate::keys::Allowance::DEFAULT,
        }
    }
}

fn host_memory_mib() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024)
}
