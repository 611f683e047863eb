//! The VM driver seam.
//!
//! A driver knows one VMM: how to start its process for a fresh boot or
//! from a snapshot, how the agent inside reaches the host, and how to save a
//! snapshot. Everything that is the same for every VMM — ids, per-VM
//! directories, the handshake with the agent, deadlines, teardown, console
//! logs — lives in [`crate::vm::Vm`], so a second driver (Firecracker) is a
//! file beside `qemu.rs`, not a copy of `Vm::start`.

pub mod firecracker;
pub mod qemu;
mod qmp;

#[cfg(any(test, feature = "fake"))]
pub mod fake;

use std::fmt::Debug;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::console::Console;

/// How the guest's CPU is provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Accel {
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's software emulation: slower, works everywhere.
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// What the kernel command line tells a guest when it boots. A restored
/// guest never boots, but its VMM is started with the same line as the
/// guest it was saved from, so that nothing guest-visible differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestParams {
    /// The VM id the guest names itself after.
    pub vm_id: String,
    /// Wall-clock time at boot, in seconds since the Unix epoch (the guest
    /// has no RTC driver).
    pub unix_time: u64,
    /// Host TSC frequency, passed to TCG guests so they skip calibration.
    pub tsc_khz: Option<u64>,
}

/// One VM for a driver to start.
#[derive(Debug, Clone, Copy)]
pub struct MachineSpec<'a> {
    /// The per-VM directory: empty, private to this VM, removed after it.
    pub dir: &'a Path,
    pub kernel: &'a Path,
    /// The image drives, attached read-only in this order: the base (the
    /// guest's root) first, then the layers the agent stacks above it.
    pub drives: &'a [PathBuf],
    pub memory_mib: u64,
    pub guest: &'a GuestParams,
}

/// Where a started guest's RAM lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestMemory<'a> {
    /// Private anonymous memory: an ordinary VM.
    Anonymous,
    /// Shared pages of this (sparse, pre-sized) file: the guest whose state
    /// will become a snapshot. Every VM restored from the snapshot maps the
    /// file privately, so its pages are shared until a guest writes them.
    SnapshotSource(&'a Path),
}

/// The files of one saved guest, as a driver wrote them into a directory.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotFiles<'a> {
    pub dir: &'a Path,
}

impl SnapshotFiles<'_> {
    /// Guest RAM, the file the source guest ran on.
    pub fn memory(&self) -> PathBuf {
        self.dir.join(MEMORY_FILE)
    }
}

/// Name of the guest RAM file inside a snapshot directory.
pub const MEMORY_FILE: &str = "memory";

/// A byte stream to the agent.
pub trait AgentIo: AsyncRead + AsyncWrite + Unpin + Send + Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Debug> AgentIo for T {}
pub type AgentStream = Box<dyn AgentIo>;

/// The agent's connection to come. It owns what it needs, so the caller
/// can race it against [`Machine::exited`].
pub type AgentFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<AgentStream, DriverError>> + Send>>;

/// One VMM: starts machines.
#[async_trait::async_trait]
pub trait Driver: Send + Sync + Debug {
    /// Shown to users (`"qemu"`), and part of every snapshot key.
    fn name(&self) -> &'static str;

    fn accel(&self) -> Accel;

    /// Everything a snapshot taken by this driver depends on besides the
    /// kernel, the image and the memory size: the VMM's build, the
    /// accelerator, the CPU model, the device layout. `None` when the driver
    /// cannot take snapshots here.
    fn snapshot_identity(&self) -> Option<String>;

    /// Starts a VMM that boots the kernel. Returns once the process runs;
    /// the agent connects later, through [`Machine::agent`].
    async fn start(
        &self,
        spec: &MachineSpec<'_>,
        memory: GuestMemory<'_>,
    ) -> Result<Box<dyn Machine>, DriverError>;

    /// Starts a VMM that resumes the guest saved in `snapshot`. `spec.guest`
    /// must be what the saved guest was booted with.
    async fn restore(
        &self,
        spec: &MachineSpec<'_>,
        snapshot: SnapshotFiles<'_>,
    ) -> Result<Box<dyn Machine>, DriverError>;
}

/// One running VMM process, as the rest of Ignis sees it.
#[async_trait::async_trait]
pub trait Machine: Send + Debug {
    /// The agent's connection. The guest dials out (virtio-serial, vsock)
    /// and the driver accepts. Asked for once per machine; a second call
    /// never resolves.
    fn agent(&mut self) -> AgentFuture;

    /// Resolves when the VMM process is gone, saying how it ended. Safe to
    /// cancel and to call again.
    async fn exited(&mut self) -> String;

    /// Pauses the guest for good and writes its device state into
    /// `into.dir` (its RAM already lives in `into.memory()`). The machine
    /// must have been started with [`GuestMemory::SnapshotSource`].
    async fn snapshot(&mut self, into: SnapshotFiles<'_>) -> Result<(), DriverError>;

    /// Kills the VMM and waits until it is gone.
    async fn stop(&mut self);

    /// Kills the VMM without waiting (for `Drop`).
    fn kill(&mut self);

    /// The VMM's process id on the host, while it runs.
    fn pid(&self) -> Option<u32>;

    /// What the VMM process costs the host now.
    fn host_memory(&self) -> Option<crate::memory::HostMemory> {
        crate::memory::of_process(self.pid()?).ok()
    }

    /// What the guest printed on its console, and the VMM's own complaints.
    fn console(&self) -> &Console;
}

/// What went wrong in a driver. `Spawn` and `Io` are about the host and may
/// pass; `Refused` and `Unsupported` will not change by trying again.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("cannot start {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// The VMM answered, and said no.
    #[error("the VMM refused: {0}")]
    Refused(String),
    #[error("the {driver} driver cannot {what}")]
    Unsupported {
        driver: &'static str,
        what: &'static str,
    },
    /// An image no VM may start from (see `image::erofs::check_drives`).
    #[error("refusing the image: {0}")]
    Image(String),
}

/// Checks the drives of a VM about to start: see
/// [`crate::image::erofs::check_drives`]. Every driver calls it first.
pub fn check_drives(spec: &MachineSpec<'_>) -> Result<(), DriverError> {
    crate::image::erofs::check_drives(spec.drives).map_err(DriverError::Image)
}

impl DriverError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DriverError {
        let what = what.into();
        move |source| DriverError::Io { what, source }
    }

    /// Whether the same request might succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, DriverError::Spawn { .. } | DriverError::Io { .. })
    }
}

/// The kernel command-line word that names the drives after the root (vdb,
/// vdc, ...) for the agent to stack over it; none with the root alone.
pub fn layers_arg(drives: usize) -> Option<String> {
    if drives < 2 {
        return None;
    }
    let names: Vec<String> = (1..drives)
        .map(|i| format!("vd{}", (b'a' + (i % 26) as u8) as char))
        .collect();
    Some(format!("ignis.layers={}", names.join(",")))
}
