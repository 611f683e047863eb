//! The QEMU driver: one `qemu-system-x86_64 -M microvm` process per VM.
//!
//! The command line is a pure function of its inputs ([`qemu_args`]), so
//! what we ask QEMU for is unit-tested without starting it.
//!
//! Snapshots keep guest RAM out of the saved state: the source guest runs
//! on a shared file mapping, saving pauses it and writes only device state
//! (QMP `migrate` with `x-ignore-shared`), and every restore maps that file
//! privately (`share=off`), starts with `-incoming defer`, and is told over
//! QMP to load the device state from descriptor 3 (QEMU 7.2 takes the
//! capability only over QMP). The QMP monitor dials a socket of ours at
//! start-up, as the agent channel does, so nothing waits for QEMU to listen.
//! Untouched pages stay shared in the host page cache between every guest
//! restored from one snapshot; a page a guest writes becomes its own.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

use super::{
    qmp, Accel, AgentFuture, AgentStream, Driver, DriverError, GuestMemory, Machine, MachineSpec,
    SnapshotFiles,
};
mod args;
use crate::console::Console;
use crate::jail::{self, Containment, VmmProcess};
pub use args::{kernel_cmdline, qemu_args, Mode, QemuArgs};

/// Bumped whenever the machine layout (devices, their order or options)
/// changes: a snapshot only restores into the layout it was saved from.
const LAYOUT: u32 = 2;

/// Name of the device-state file QEMU writes into a snapshot directory.
pub const STATE_FILE: &str = "state";

/// The descriptor a restoring QEMU reads its device state from.
const INCOMING_FD: RawFd = 3;

#[derive(Debug, Clone)]
pub struct Qemu {
    binary: PathBuf,
    accel: Accel,
    containment: Containment,
}

/// What a QEMU process may use beyond its guest's memory: its own heap,
/// devices and the translated-code buffer (bounded by `tb-size`).
const OVERHEAD_MIB: u64 = 512;
/// The TCG translated-code buffer, in MiB: enough for any guest we run
/// (a Python start translates ~30 MiB), small enough to bound QEMU.
const TB_SIZE_MIB: u64 = 256;

/// The guest CPU under TCG. `arat` (the local APIC timer keeps running
/// when the CPU idles) is what lets the guest kernel use that timer in
/// one-shot mode: without it, and with no HPET on `microvm`, the kernel
/// falls back to a periodic 250 Hz tick, 4 ms timer resolution, and no
/// tickless idle, so an idle VM still cost its host about 1.5 % of a core
/// in emulated timer interrupts.
const TCG_CPU: &str = "qemu64,+arat";

impl Qemu {
    pub fn new(binary: impl Into<PathBuf>, accel: Accel, containment: Containment) -> Qemu {
        Qemu {
            binary: binary.into(),
            accel,
            containment,
        }
    }

    /// `qemu-system-x86_64` from `PATH`.
    pub fn from_path(accel: Accel, containment: Containment) -> Qemu {
        Qemu::new("qemu-system-x86_64", accel, containment)
    }

    fn cpu(&self) -> &'static str {
        match self.accel {
            Accel::Kvm => "host",
            Accel::Tcg => TCG_CPU,
        }
    }

    async fn spawn(
        &self,
        spec: &MachineSpec<'_>,
        mode: Mode<'_>,
    ) -> Result<Box<dyn Machine>, DriverError> {
        super::check_drives(spec)?;
        let binary = resolve(&self.binary).ok_or_else(|| DriverError::Spawn {
            binary: self.binary.clone(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        let agent_socket = spec.dir.join("agent.sock");
        let listener = UnixListener::bind(&agent_socket)
            .map_err(DriverError::io("binding the agent socket"))?;
        // Only a snapshot source (to save) and a restore (to load) need QMP.
        let qmp_socket = match mode {
            Mode::Boot(GuestMemory::Anonymous) => None,
            Mode::Boot(GuestMemory::SnapshotSource(_)) | Mode::Restore(_) => {
                Some(spec.dir.join("qmp.sock"))
            }
        };
        let qmp = qmp_socket
            .as_deref()
            .map(UnixListener::bind)
            .transpose()
            .map_err(DriverError::io("binding the QMP socket"))?;
        let incoming = match mode {
            Mode::Restore(snap) => Some(
                std::fs::File::open(snap.dir.join(STATE_FILE))
                    .map_err(DriverError::io("opening the snapshot's device state"))?,
            ),
            Mode::Boot(_) => None,
        };
        let args = qemu_args(&QemuArgs {
            spec,
            accel: self.accel,
            cpu: self.cpu(),
            mode,
            agent_socket: &agent_socket,
            qmp_socket: qmp_socket.as_deref(),
        });
        let memory_file = match mode {
            Mode::Boot(GuestMemory::Anonymous) => None,
            Mode::Boot(GuestMemory::SnapshotSource(f)) => Some(f.to_path_buf()),
            Mode::Restore(snap) => Some(snap.memory()),
        };
        if let Containment::Jailed(j) = &self.containment {
            // The jailed QEMU reaches its sockets and (QEMU 7.2 opens it
            // read-write even to map it privately) the RAM file as its user.
            let owned = [spec.dir, &agent_socket]
                .into_iter()
                .chain(qmp_socket.as_deref())
                .chain(memory_file.as_deref());
            for p in owned {
                std::os::unix::fs::chown(p, Some(j.uid), Some(j.gid)).map_err(DriverError::io(
                    format!("handing {} to the VMM user", p.display()),
                ))?;
            }
        }
        let mut mounts = jail::system_mounts();
        mounts.extend([
            jail::Mount::ro(spec.kernel),
            // The VM's own directory (its sockets), not the jail inside it.
            jail::Mount::rw(spec.dir),
        ]);
        // Every image drive: the base and each layer above it.
        mounts.extend(spec.drives.iter().map(jail::Mount::ro));
        mounts.extend(memory_file.map(jail::Mount::rw));
        if self.accel == Accel::Kvm {
            mounts.push(jail::Mount::Device("/dev/kvm".into()));
        }
        let seccomp = match mode {
            Mode::Restore(_) => crate::seccomp::restored_vmm_filters()
                .map_err(DriverError::io("building the restore seccomp filters"))?,
            Mode::Boot(_) => Vec::new(),
        };
        tracing::debug!(binary = %binary.display(), ?args, "spawning QEMU");
        let dir_name = spec.dir.file_name().unwrap_or_default().to_string_lossy();
        let spawned = jail::spawn(
            &self.containment,
            jail::Spawn {
                id: dir_name.trim_start_matches("vm-"),
                root: &spec.dir.join("root"),
                program: &binary,
                args: &args,
                mounts,
                limits: jail::Limits {
                    memory_bytes: (spec.memory_mib + OVERHEAD_MIB) << 20,
                    cpu_quota_us: 100_000,
                    pids: 128,
                },
                pass_fd: incoming.as_ref().map(|f| (f.as_raw_fd(), INCOMING_FD)),
                seccomp,
            },
        )
        .await
        .map_err(|source| DriverError::Spawn {
            binary: binary.clone(),
            source,
        })?;
        drop(incoming);
        let console = Console::default();
        console.capture(spawned.stdout);
        console.capture(spawned.stderr);
        let process = spawned.process;
        if let Some(name) = process.pid().and_then(jail::process_name) {
            // Lets a later Ignis process find and kill it if this one dies.
            let _ = std::fs::write(spec.dir.join(jail::VMM_FILE), name);
        }
        Ok(Box::new(QemuMachine {
            process,
            agent: Some(listener),
            qmp,
            restoring: matches!(mode, Mode::Restore(_)),
            dir: spec.dir.to_path_buf(),
            vmm_owner: match &self.containment {
                Containment::Jailed(j) => Some((j.uid, j.gid)),
                Containment::Insecure => None,
            },
            console,
        }))
    }
}

#[async_trait::async_trait]
impl Driver for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn accel(&self) -> Accel {
        self.accel
    }

    fn snapshot_identity(&self) -> Option<String> {
        let binary = binary_identity(&self.binary)?;
        let mut id = format!(
            "qemu {binary}; accel {}; cpu {}; layout {LAYOUT}",
            self.accel,
            self.cpu()
        );
        if self.accel == Accel::Kvm {
            // `-cpu host` is the host's CPU: another model, another snapshot.
            id.push_str(&format!("; host cpu {}", host_cpu_model()));
        }
        Some(id)
    }

    async fn start(
        &self,
        spec: &MachineSpec<'_>,
        memory: GuestMemory<'_>,
    ) -> Result<Box<dyn Machine>, DriverError> {
        self.spawn(spec, Mode::Boot(memory)).await
    }

    async fn restore(
        &self,
        spec: &MachineSpec<'_>,
        snapshot: SnapshotFiles<'_>,
    ) -> Result<Box<dyn Machine>, DriverError> {
        self.spawn(spec, Mode::Restore(snapshot)).await
    }
}

#[derive(Debug)]
struct QemuMachine {
    process: VmmProcess,
    /// Where the agent's connection arrives, until it is asked for.
    agent: Option<UnixListener>,
    /// Where QEMU's QMP monitor connects, until it is used.
    qmp: Option<UnixListener>,
    /// Started with `-incoming defer`: waits to be told to load its state.
    restoring: bool,
    dir: PathBuf,
    /// The jailed QEMU's (uid, gid): sockets Ignis binds must be its.
    vmm_owner: Option<(u32, u32)>,
    console: Console,
}

#[async_trait::async_trait]
impl Machine for QemuMachine {
    fn agent(&mut self) -> AgentFuture {
        let listener = self.agent.take();
        let incoming = if self.restoring {
            self.qmp.take()
        } else {
            None
        };
        Box::pin(async move {
            let Some(listener) = listener else {
                return std::future::pending().await;
            };
            // A restore resumes the guest first; its agent then answers on
            // the channel it already had open.
            if let Some(qmp_listener) = incoming {
                qmp::load(&qmp_listener, INCOMING_FD).await?;
            }
            let (stream, _) = listener
                .accept()
                .await
                .map_err(DriverError::io("accepting the agent connection"))?;
            Ok(Box::new(stream) as AgentStream)
        })
    }

    async fn exited(&mut self) -> String {
        self.process.wait().await
    }

    async fn snapshot(&mut self, into: SnapshotFiles<'_>) -> Result<(), DriverError> {
        let qmp = if self.restoring {
            None
        } else {
            self.qmp.take()
        };
        let Some(qmp_listener) = qmp else {
            return Err(DriverError::Unsupported {
                driver: "qemu",
                what: "snapshot a VM that was not started as a snapshot source",
            });
        };
        qmp::save(
            &qmp_listener,
            &self.dir,
            self.vmm_owner,
            &into.dir.join(STATE_FILE),
        )
        .await
    }

    async fn stop(&mut self) {
        self.process.kill();
        self.process.wait().await;
    }

    fn kill(&mut self) {
        self.process.kill();
    }

    fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    fn console(&self) -> &Console {
        &self.console
    }
}

/// The host's TSC frequency, from the kernel's own record of it.
pub fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

/// Which build of the VMM `binary` is, cheaply: its resolved path, size,
/// modification time and inode. An upgrade changes at least one of them.
/// `None` when the binary cannot be found.
fn binary_identity(binary: &Path) -> Option<String> {
    let path = resolve(binary)?;
    let m = std::fs::metadata(&path).ok()?;
    Some(format!(
        "{} {} bytes mtime {}.{} inode {}",
        path.display(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ino()
    ))
}

/// `binary` itself if it names a path, else its first match on `PATH`.
pub fn resolve(binary: &Path) -> Option<PathBuf> {
    if binary.components().count() > 1 {
        return binary.is_file().then(|| binary.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(binary))
        .find(|p| p.is_file())
}

pub(crate) fn host_cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    format!("{} [{}]", field("model name"), field("flags"))
}
