//! One microVM, from start to teardown, on any driver.
//!
//! A [`Vm`] is started (booted, or restored from a snapshot), takes exactly
//! one run, and is destroyed. Its state is an enum and asking for something
//! the state does not allow is a typed error. Teardown kills the VMM and
//! removes every per-VM file, whichever way the VM ended; the console log is
//! kept only on failure.

mod collect;
mod error;
mod handshake;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ignis_protocol::{GuestMessage, HostMessage, RunOutcome, RunRequest, Stream};
use serde::Serialize;

use crate::agent::AgentConn;
use crate::driver::{
    qemu::host_tsc_khz, Accel, AgentStream, Driver, DriverError, GuestMemory, GuestParams, Machine,
    MachineSpec, SnapshotFiles,
};
use crate::image::{KernelImage, LanguageImage};
use crate::memory::HostMemory;
use crate::snapshot::Snapshot;
use collect::Collected;
use error::Failure;
pub use error::{BootError, LogRef, RunError, SaveError};
use handshake::{check_ready, expect_ready, kind, resume, unix_now};

/// Everything needed to start one VM, whatever the driver.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: KernelImage,
    pub image: LanguageImage,
    /// How long a boot may take to reach the agent's Ready.
    pub boot_timeout: Duration,
    /// How long a restored guest may take to answer.
    pub restore_timeout: Duration,
    /// Parent of the per-VM directories.
    pub runtime_dir: PathBuf,
    /// Where console logs of failed VMs are kept.
    pub log_dir: PathBuf,
    /// The wall clock a booting guest starts with, in seconds since the
    /// epoch; `None` is now. Tests set it to prove that a restored guest
    /// takes the host's clock rather than the one it was saved with.
    pub guest_time: Option<u64>,
}

impl VmConfig {
    pub fn new(kernel: KernelImage, image: LanguageImage, paths: &crate::paths::Paths) -> Self {
        VmConfig {
            kernel,
            image,
            boot_timeout: Duration::from_secs(60),
            restore_timeout: Duration::from_secs(15),
            runtime_dir: paths.runtime(),
            log_dir: paths.logs(),
            guest_time: None,
        }
    }
}

/// How a VM comes to life.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    /// A fresh boot of the kernel.
    Boot,
    /// A fresh boot whose RAM lives in `memory_file`, to be saved as a
    /// snapshot with [`Vm::save`].
    SnapshotSource { memory_file: &'a Path },
    /// A copy of a saved guest.
    Restore(&'a Snapshot),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// The agent said Ready; a run may start.
    Ready,
    /// A run is under way.
    Running,
    /// The run ended; the VM only waits to be destroyed.
    Finished,
    /// Paused for good and saved as a snapshot; only destroy remains.
    Saved,
    /// Something went wrong; the VM only waits to be destroyed (log kept).
    Failed,
}

/// What a caller may show about the VM that ran a program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmInfo {
    pub id: String,
    pub driver: &'static str,
    pub accel: Accel,
    /// From starting the VMM to a guest ready for a run, host-measured.
    pub ready_ms: u64,
    /// Restored from a snapshot rather than booted.
    pub restored: bool,
    pub language: String,
    pub runtime_version: String,
    /// The language compiles before it runs (the host allows for it).
    pub compiled: bool,
    /// The least time its compile step gets (the recipe's), in ms; 0 if
    /// it names none.
    pub compile_timeout_ms: u64,
}

/// Something that happens during a run, as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEvent {
    Phase(ignis_protocol::Phase),
    Output(Stream, Vec<u8>),
}

/// A finished run: the agent's account plus the output the host collected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution {
    pub outcome: RunOutcome,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

#[derive(Debug)]
pub struct Vm {
    // Field order matters on drop: the VMM dies before its directory goes.
    machine: Box<dyn Machine>,
    conn: AgentConn<AgentStream>,
    _dir: VmDir,
    id: String,
    log_dir: PathBuf,
    guest: GuestParams,
    info: VmInfo,
    state: VmState,
}

impl Vm {
    /// Starts a VM: prepare its directory, spawn the VMM, shake hands with
    /// the agent, ready. Any failure kills the VMM, keeps its console log
    /// and removes the directory.
    pub async fn start(
        driver: &dyn Driver,
        cfg: &VmConfig,
        origin: Origin<'_>,
    ) -> Result<Vm, BootError> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let dir = VmDir::create(&cfg.runtime_dir, &id)?;
        let guest = match origin {
            Origin::Restore(snap) => snap.meta.guest.clone(),
            Origin::Boot | Origin::SnapshotSource { .. } => GuestParams {
                vm_id: id.clone(),
                unix_time: cfg.guest_time.unwrap_or_else(|| unix_now().as_secs()),
                tsc_khz: host_tsc_khz(),
            },
        };
        let drives = cfg.image.drives();
        let spec = MachineSpec {
            dir: &dir.0,
            kernel: &cfg.kernel.path,
            drives: &drives,
            memory_mib: cfg.image.manifest.vm_memory_mib,
            guest: &guest,
        };
        let started = Instant::now();
        let mut machine = match origin {
            Origin::Boot => driver.start(&spec, GuestMemory::Anonymous).await?,
            Origin::SnapshotSource { memory_file } => {
                driver
                    .start(&spec, GuestMemory::SnapshotSource(memory_file))
                    .await?
            }
            Origin::Restore(snap) => driver.restore(&spec, snap.files()).await?,
        };
        let restored = matches!(origin, Origin::Restore(_));
        tracing::info!(vm = %id, driver = driver.name(), restored, language = cfg.image.name(), "starting VM");

        let timeout = if restored {
            cfg.restore_timeout
        } else {
            cfg.boot_timeout
        };
        let agent = machine.agent();
        let handshake = async {
            let stream = agent.await.map_err(|e| Failure::Protocol(e.to_string()))?;
            let mut conn = AgentConn::new(stream);
            let version = match origin {
                Origin::Restore(snap) => {
                    resume(&mut conn, &id).await?;
                    snap.meta.runtime_version.clone()
                }
                Origin::Boot | Origin::SnapshotSource { .. } => {
                    let ready = expect_ready(&mut conn).await?;
                    check_ready(&ready, cfg.image.name()).map_err(Failure::Protocol)?;
                    ready.runtime_version
                }
            };
            Ok((conn, version))
        };
        // Biased: what the guest already sent is read before its death counts.
        let outcome = tokio::select! {
            biased;
            r = tokio::time::timeout(timeout, handshake) => r.unwrap_or(Err(Failure::Timeout)),
            status = machine.exited() => Err(Failure::Exited(status)),
        };
        // A channel that closed usually means the VMM died: say how.
        let outcome = match outcome {
            Err(Failure::Channel(detail)) => Err(
                match tokio::time::timeout(EXIT_GRACE, machine.exited()).await {
                    Ok(status) => Failure::Exited(status),
                    Err(_) => Failure::Protocol(detail),
                },
            ),
            other => other,
        };
        let (conn, runtime_version) = match outcome {
            Ok(ok) => ok,
            Err(failure) => {
                machine.stop().await;
                let log = LogRef(keep_log(
                    &cfg.log_dir,
                    &id,
                    machine.as_ref(),
                    &failure.to_string(),
                ));
                return Err(failure.into_error(timeout, log));
            }
        };
        let ready_ms = started.elapsed().as_millis() as u64;
        tracing::info!(vm = %id, ready_ms, restored, "VM ready");
        Ok(Vm {
            info: VmInfo {
                id: id.clone(),
                driver: driver.name(),
                accel: driver.accel(),
                ready_ms,
                restored,
                language: cfg.image.name().to_owned(),
                runtime_version,
                compiled: cfg.image.manifest.compiled,
                compile_timeout_ms: cfg
                    .image
                    .manifest
                    .recipe
                    .compile
                    .as_ref()
                    .and_then(|c| c.timeout_ms)
                    .unwrap_or(0),
            },
            machine,
            conn,
            _dir: dir,
            id,
            log_dir: cfg.log_dir.clone(),
            guest,
            state: VmState::Ready,
        })
    }

    pub fn info(&self) -> &VmInfo {
        &self.info
    }

    pub fn state(&self) -> VmState {
        self.state
    }

    /// What the guest's kernel command line said at boot (for a restored
    /// VM: at the boot of the guest it was saved from).
    pub fn guest(&self) -> &GuestParams {
        &self.guest
    }

    /// The VMM's process id on the host, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.machine.pid()
    }

    /// What the VMM process costs the host right now.
    pub fn host_memory(&self) -> Option<HostMemory> {
        self.machine.host_memory()
    }

    /// Liveness check: the agent answers a ping.
    pub async fn ping(&mut self, timeout: Duration) -> Result<(), RunError> {
        if !matches!(self.state, VmState::Ready | VmState::Finished) {
            return Err(RunError::NotReady(self.state));
        }
        let (conn, machine) = (&mut self.conn, &mut self.machine);
        let exchange = tokio::time::timeout(timeout, async {
            conn.send(&HostMessage::Ping)
                .await
                .map_err(RunError::Channel)?;
            match conn.recv().await.map_err(RunError::Channel)? {
                GuestMessage::Pong => Ok(()),
                other => Err(RunError::Protocol(format!(
                    "expected pong, got {}",
                    kind(&other)
                ))),
            }
        });
        // Biased the other way: a VMM that is gone fails the check even if
        // a stale answer is still in flight.
        let r = tokio::select! {
            biased;
            status = machine.exited() => Err(RunError::Exited { status }),
            r = exchange => r.unwrap_or(Err(RunError::Timeout {
                ms: timeout.as_millis() as u64,
            })),
        };
        if r.is_err() {
            self.state = VmState::Failed;
        }
        r
    }

    /// Runs the image's warm-up inside the guest, the way programs run, so
    /// that the first job does not pay for a cold VMM: under TCG a restored
    /// guest has nothing translated yet. Allowed only on a ready VM that
    /// ran nothing; it stays ready. Returns the guest's own timing.
    pub async fn warm(&mut self, timeout: Duration) -> Result<Duration, RunError> {
        if self.state != VmState::Ready {
            return Err(RunError::NotReady(self.state));
        }
        let (conn, machine) = (&mut self.conn, &mut self.machine);
        let exchange = tokio::time::timeout(timeout, async {
            conn.send(&HostMessage::Warm)
                .await
                .map_err(RunError::Channel)?;
            match conn.recv().await.map_err(RunError::Channel)? {
                GuestMessage::Warmed { duration_ms } => Ok(Duration::from_millis(duration_ms)),
                other => Err(RunError::Protocol(format!(
                    "expected warmed, got {}",
                    kind(&other)
                ))),
            }
        });
        let r = tokio::select! {
            biased;
            r = exchange => r.unwrap_or(Err(RunError::Timeout {
                ms: timeout.as_millis() as u64,
            })),
            status = machine.exited() => Err(RunError::Exited { status }),
        };
        if r.is_err() {
            self.state = VmState::Failed;
        }
        r
    }

    /// Runs one program. `deadline` bounds the whole exchange on the host side
    /// (the agent enforces the program's own limits); past it the VM is
    /// considered hung. `on_event` sees phases and output as they arrive.
    pub async fn run(
        &mut self,
        mut req: RunRequest,
        deadline: Duration,
        mut on_event: impl FnMut(RunEvent),
    ) -> Result<Execution, RunError> {
        if self.state != VmState::Ready {
            return Err(RunError::NotReady(self.state));
        }
        // The language's own floor (see `report::host_deadline`).
        let l = &mut req.limits;
        l.compile_timeout_ms = l.compile_timeout_ms.max(self.info.compile_timeout_ms);
        self.state = VmState::Running;
        let cap = req.limits.max_output_kib.saturating_mul(1024) as usize;
        let (conn, machine) = (&mut self.conn, &mut self.machine);
        let exchange = async {
            conn.send(&HostMessage::Run(req))
                .await
                .map_err(RunError::Channel)?;
            let mut out = Collected::new(cap);
            loop {
                match conn.recv().await.map_err(RunError::Channel)? {
                    GuestMessage::Phase { phase } => {
                        out.phase(phase)?;
                        on_event(RunEvent::Phase(phase));
                    }
                    GuestMessage::Output { stream, data } => {
                        out.output(stream, &data)?;
                        on_event(RunEvent::Output(stream, data));
                    }
                    GuestMessage::Result(outcome) => return out.finish(outcome),
                    other => {
                        return Err(RunError::Protocol(format!(
                            "unexpected {} during a run",
                            kind(&other)
                        )))
                    }
                }
            }
        };
        // Biased: output the guest sent before its VMM died is read (and
        // streamed) before the death ends the run, so a caller never retries
        // a program whose output someone already saw.
        let result = tokio::select! {
            biased;
            r = tokio::time::timeout(deadline, exchange) => r.unwrap_or(Err(RunError::Timeout { ms: deadline.as_millis() as u64 })),
            status = machine.exited() => Err(RunError::Exited { status }),
        };
        self.state = if result.is_ok() {
            VmState::Finished
        } else {
            VmState::Failed
        };
        result
    }

    /// Pauses the guest for good and has the driver write its state into
    /// `into` (the snapshot being built). Only a VM started as a snapshot
    /// source that never ran a program can be saved; afterwards it can only
    /// be destroyed.
    pub async fn save(&mut self, into: SnapshotFiles<'_>) -> Result<(), SaveError> {
        if self.state != VmState::Ready {
            return Err(SaveError::NotAllowed(self.state));
        }
        // A VMM that stops answering mid-save must not hang `ignis images
        // snapshot` (and with it set-up and CI) forever.
        let r = match tokio::time::timeout(SAVE_TIMEOUT, self.machine.snapshot(into)).await {
            Ok(r) => r,
            Err(_) => Err(DriverError::Refused(format!(
                "the snapshot was not saved within {} s",
                SAVE_TIMEOUT.as_secs()
            ))),
        };
        self.state = if r.is_ok() {
            VmState::Saved
        } else {
            VmState::Failed
        };
        Ok(r?)
    }

    /// Kills the VM and removes its files. Returns where the console log was
    /// kept, if the VM had failed.
    pub async fn destroy(mut self) -> Option<PathBuf> {
        self.machine.stop().await;
        let log = (self.state == VmState::Failed)
            .then(|| {
                keep_log(
                    &self.log_dir,
                    &self.id,
                    self.machine.as_ref(),
                    "the VM failed",
                )
            })
            .flatten();
        tracing::debug!(vm = %self.id, "VM destroyed");
        log
    }
}

impl Drop for Vm {
    /// A VM dropped without `destroy` (a cancelled task, a panic) still dies:
    /// the VMM is killed here and its directory removed right after.
    fn drop(&mut self) {
        self.machine.kill();
    }
}

/// How long a VMM whose channel closed gets to show it has exited.
const EXIT_GRACE: Duration = Duration::from_millis(500);
/// How long saving a snapshot may take: the device state is tens of KB
/// (guest RAM stays in its shared file), so this is generous.
const SAVE_TIMEOUT: Duration = Duration::from_secs(60);

/// The per-VM directory, removed when dropped.
#[derive(Debug)]
struct VmDir(PathBuf);

impl VmDir {
    fn create(parent: &Path, id: &str) -> Result<VmDir, BootError> {
        let path = parent.join(format!("vm-{id}"));
        let setup = |source| BootError::Setup {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(parent).map_err(setup)?;
        std::fs::create_dir(&path).map_err(setup)?;
        let dir = VmDir(path);
        // Whose VM this is: a later Ignis process removes it once we are gone.
        std::fs::write(
            dir.0.join(crate::jail::OWNER_FILE),
            crate::jail::owner_name(),
        )
        .map_err(|source| BootError::Setup {
            path: dir.0.clone(),
            source,
        })?;
        Ok(dir)
    }
}

impl Drop for VmDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn keep_log(log_dir: &Path, id: &str, machine: &dyn Machine, why: &str) -> Option<PathBuf> {
    crate::paths::private_dir(log_dir).ok()?; // A guest's output: 0700, 0600.
    let path = log_dir.join(format!("vm-{id}.log"));
    let mut text = machine.console().contents();
    text.extend_from_slice(format!("\n--- ignis: {why}\n").as_bytes());
    crate::paths::write_private(&path, &text).ok()?;
    // The caller says what failed, naming this log; no second line here.
    tracing::debug!(vm = %id, log = %path.display(), "{why}; console log kept");
    Some(path)
}
