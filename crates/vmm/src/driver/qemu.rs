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

use std::ffi::OsString;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::net::UnixListener;
use tokio::process::{Child, Command};

use super::{
    qmp, Accel, AgentFuture, AgentStream, Driver, DriverError, GuestMemory, GuestParams, Machine,
    MachineSpec, SnapshotFiles,
};
use crate::console::Console;

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
}

impl Qemu {
    pub fn new(binary: impl Into<PathBuf>, accel: Accel) -> Qemu {
        Qemu {
            binary: binary.into(),
            accel,
        }
    }

    /// `qemu-system-x86_64` from `PATH`.
    pub fn from_path(accel: Accel) -> Qemu {
        Qemu::new("qemu-system-x86_64", accel)
    }

    fn cpu(&self) -> &'static str {
        match self.accel {
            Accel::Kvm => "host",
            Accel::Tcg => "qemu64",
        }
    }

    async fn spawn(
        &self,
        spec: &MachineSpec<'_>,
        mode: Mode<'_>,
    ) -> Result<Box<dyn Machine>, DriverError> {
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
        tracing::debug!(binary = %self.binary.display(), ?args, "spawning QEMU");
        let mut cmd = Command::new(&self.binary);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(state) = &incoming {
            let fd = state.as_raw_fd();
            let filter = crate::seccomp::private_memory_filter()
                .map_err(DriverError::io("building the restore seccomp filter"))?;
            // SAFETY: the closure runs in the child between fork and exec and
            // only makes async-signal-safe system calls (dup2, fcntl, prctl,
            // seccomp) on data prepared before the fork.
            unsafe {
                cmd.pre_exec(move || {
                    pass_fd(fd, INCOMING_FD)?;
                    crate::seccomp::apply(&filter)
                });
            }
        }
        let mut child = cmd.spawn().map_err(|source| DriverError::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        drop(incoming);
        let console = Console::default();
        if let Some(out) = child.stdout.take() {
            console.capture(out);
        }
        if let Some(err) = child.stderr.take() {
            console.capture(err);
        }
        Ok(Box::new(QemuMachine {
            child,
            status: None,
            agent: Some(listener),
            qmp,
            restoring: matches!(mode, Mode::Restore(_)),
            dir: spec.dir.to_path_buf(),
            console,
        }))
    }
}

/// Makes `fd` the child's descriptor `target`, open across exec.
fn pass_fd(fd: RawFd, target: RawFd) -> std::io::Result<()> {
    // SAFETY: plain descriptor syscalls on descriptors this process owns.
    unsafe {
        if fd == target {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        } else if libc::dup2(fd, target) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
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
    child: Child,
    /// How the process ended, once it has.
    status: Option<String>,
    /// Where the agent's connection arrives, until it is asked for.
    agent: Option<UnixListener>,
    /// Where QEMU's QMP monitor connects, until it is used.
    qmp: Option<UnixListener>,
    /// Started with `-incoming defer`: waits to be told to load its state.
    restoring: bool,
    dir: PathBuf,
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
        if let Some(s) = &self.status {
            return s.clone();
        }
        let s = self
            .child
            .wait()
            .await
            .map_or_else(|e| e.to_string(), |s| s.to_string());
        self.status = Some(s.clone());
        s
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
        qmp::save(&qmp_listener, &self.dir, &into.dir.join(STATE_FILE)).await
    }

    async fn stop(&mut self) {
        let _ = self.child.start_kill();
        self.exited().await;
    }

    fn kill(&mut self) {
        let _ = self.child.start_kill();
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    fn console(&self) -> &Console {
        &self.console
    }
}

/// How the VMM starts.
#[derive(Debug, Clone, Copy)]
pub enum Mode<'a> {
    Boot(GuestMemory<'a>),
    Restore(SnapshotFiles<'a>),
}

/// Everything the command line depends on.
#[derive(Debug, Clone, Copy)]
pub struct QemuArgs<'a> {
    pub spec: &'a MachineSpec<'a>,
    pub accel: Accel,
    pub cpu: &'a str,
    pub mode: Mode<'a>,
    /// The host listens here; QEMU connects and carries the virtio-serial port.
    pub agent_socket: &'a Path,
    pub qmp_socket: Option<&'a Path>,
}

/// QEMU's option syntax splits on commas; a literal comma is written twice.
fn opt_path(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// The guest's name of the `i`th virtio block device: vda, vdb, ...
fn guest_disk(i: usize) -> String {
    let letter = (b'a' + (i % 26) as u8) as char;
    format!("vd{letter}")
}

pub fn kernel_cmdline(guest: &GuestParams, accel: Accel, drives: usize) -> String {
    let mut words = vec![
        "console=ttyS0".to_string(),
        "quiet".into(),
        // No rootfstype: the kernel finds the root's file system itself
        // (EROFS images, and the flat ext4 ones `ignis bench --baseline`
        // compares against).
        "root=/dev/vda".into(),
        "ro".into(),
        "init=/sbin/ignis-agent".into(),
        // A panic, or the agent's deliberate reboot, ends the VM at once
        // (QEMU runs with -no-reboot).
        "panic=-1".into(),
        "reboot=t".into(),
        "ignis.channel=serial".into(),
        format!("ignis.time={}", guest.unix_time),
        format!("ignis.vm={}", guest.vm_id),
    ];
    if drives > 1 {
        // The drives after the root, which the agent stacks over it.
        let layers: Vec<String> = (1..drives).map(guest_disk).collect();
        words.push(format!("ignis.layers={}", layers.join(",")));
    }
    if accel == Accel::Tcg {
        // Without these, about one TCG boot in ten hangs calibrating the TSC.
        if let Some(khz) = guest.tsc_khz {
            words.push(format!("tsc_early_khz={khz}"));
        }
        words.push("tsc=reliable".into());
    }
    words.join(" ")
}

pub fn qemu_args(a: &QemuArgs<'_>) -> Vec<OsString> {
    let spec = a.spec;
    let memory_file = match a.mode {
        Mode::Boot(GuestMemory::Anonymous) => None,
        Mode::Boot(GuestMemory::SnapshotSource(file)) => Some((file.to_path_buf(), "on")),
        Mode::Restore(snap) => Some((snap.memory(), "off")),
    };
    let machine = match &memory_file {
        Some(_) => "microvm,memory-backend=mem",
        None => "microvm",
    };
    let mut args: Vec<String> = vec![
        "-M".into(),
        machine.into(),
        "-m".into(),
        format!("{}M", spec.memory_mib),
        "-smp".into(),
        "1".into(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-nographic".into(),
        "-no-reboot".into(),
        // QEMU's own seccomp filter: no new processes, no privilege games.
        "-sandbox".into(),
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
        "-accel".into(),
        a.accel.to_string(),
        "-cpu".into(),
        a.cpu.into(),
    ];
    if let Some((file, share)) = &memory_file {
        args.extend([
            "-object".into(),
            format!(
                "memory-backend-file,id=mem,size={}M,mem-path={},share={share}",
                spec.memory_mib,
                opt_path(file)
            ),
        ]);
    }
    args.extend([
        "-kernel".into(),
        spec.kernel.to_string_lossy().into_owned(),
        "-append".into(),
        kernel_cmdline(spec.guest, a.accel, spec.drives.len()),
    ]);
    for (i, drive) in spec.drives.iter().enumerate() {
        args.extend([
            "-drive".into(),
            format!(
                "id=disk{i},file={},format=raw,if=none,readonly=on",
                opt_path(drive)
            ),
            "-device".into(),
            format!("virtio-blk-device,drive=disk{i}"),
        ]);
    }
    args.extend([
        "-device".into(),
        "virtio-rng-device".into(),
        // Pages the guest frees go back to the host while it runs.
        "-device".into(),
        "virtio-balloon-device,free-page-reporting=on".into(),
        "-device".into(),
        "virtio-serial-device,max_ports=2".into(),
        "-chardev".into(),
        format!("socket,id=agent,path={}", opt_path(a.agent_socket)),
        "-device".into(),
        format!(
            "virtserialport,chardev=agent,name={}",
            ignis_protocol::SERIAL_PORT_NAME
        ),
        "-serial".into(),
        "stdio".into(),
    ]);
    if let Some(qmp) = a.qmp_socket {
        args.extend([
            "-chardev".into(),
            format!("socket,id=qmp,path={}", opt_path(qmp)),
            "-mon".into(),
            "chardev=qmp,mode=control".into(),
        ]);
    }
    if let Mode::Restore(_) = a.mode {
        args.extend(["-incoming".into(), "defer".into()]);
    }
    args.into_iter().map(OsString::from).collect()
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

fn host_cpu_model() -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn guest() -> GuestParams {
        GuestParams {
            vm_id: "0123456789ab".into(),
            unix_time: 1_800_000_000,
            tsc_khz: Some(2_596_124),
        }
    }

    fn line(accel: Accel, mode: Mode<'_>, qmp: Option<&Path>) -> String {
        let g = guest();
        let drives = [
            PathBuf::from("/images/base/bookworm-1.erofs"),
            PathBuf::from("/images/we,ird/layer.erofs"),
        ];
        let spec = MachineSpec {
            dir: Path::new("/run/ignis/vm-1"),
            kernel: Path::new("/k/vmlinux"),
            drives: &drives,
            memory_mib: 512,
            guest: &g,
        };
        qemu_args(&QemuArgs {
            spec: &spec,
            accel,
            cpu: if accel == Accel::Kvm {
                "host"
            } else {
                "qemu64"
            },
            mode,
            agent_socket: Path::new("/run/ignis/vm-1/agent.sock"),
            qmp_socket: qmp,
        })
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
    }

    #[test]
    fn tcg_gets_tsc_hints_and_no_nic() {
        let l = line(Accel::Tcg, Mode::Boot(GuestMemory::Anonymous), None);
        assert!(l.contains("-accel tcg -cpu qemu64"));
        assert!(l.contains("tsc_early_khz=2596124 tsc=reliable"));
        assert!(l.contains("ignis.vm=0123456789ab"));
        assert!(l.contains("readonly=on"));
        assert!(!l.contains("netdev") && !l.contains("-nic"));
        assert!(l.contains("-nodefaults"));
        assert!(!l.contains("memory-backend") && !l.contains("-incoming"));
        assert!(!l.contains("-mon"), "only a snapshot source has a monitor");
    }

    #[test]
    fn kvm_uses_host_cpu_without_tsc_hints() {
        let l = line(Accel::Kvm, Mode::Boot(GuestMemory::Anonymous), None);
        assert!(l.contains("-accel kvm -cpu host"));
        assert!(!l.contains("tsc_early_khz"));
    }

    #[test]
    fn commas_in_paths_are_escaped() {
        let l = line(Accel::Tcg, Mode::Boot(GuestMemory::Anonymous), None);
        assert!(l.contains("file=/images/we,,ird/layer.erofs,format=raw"));
    }

    #[test]
    fn the_base_is_the_root_and_the_layer_is_named_to_the_agent() {
        let l = line(Accel::Tcg, Mode::Boot(GuestMemory::Anonymous), None);
        let base =
            l.find("id=disk0,file=/images/base/bookworm-1.erofs,format=raw,if=none,readonly=on");
        let layer =
            l.find("id=disk1,file=/images/we,,ird/layer.erofs,format=raw,if=none,readonly=on");
        assert!(base.is_some() && layer.is_some() && base < layer, "{l}");
        assert!(l.contains("root=/dev/vda ro"), "{l}");
        assert!(l.contains("ignis.layers=vdb"), "{l}");
    }

    #[test]
    fn a_snapshot_source_shares_its_ram_file_and_has_a_monitor() {
        let l = line(
            Accel::Tcg,
            Mode::Boot(GuestMemory::SnapshotSource(Path::new("/s/tmp/memory"))),
            Some(Path::new("/run/ignis/vm-1/qmp.sock")),
        );
        assert!(l.contains("-M microvm,memory-backend=mem"));
        assert!(l.contains("memory-backend-file,id=mem,size=512M,mem-path=/s/tmp/memory,share=on"));
        assert!(l.contains("-mon chardev=qmp,mode=control"));
        assert!(!l.contains("-incoming"));
    }

    #[test]
    fn a_restore_maps_the_ram_file_privately_and_reads_state_from_fd_3() {
        let l = line(
            Accel::Tcg,
            Mode::Restore(SnapshotFiles {
                dir: Path::new("/s/python-abc"),
            }),
            Some(Path::new("/run/ignis/vm-1/qmp.sock")),
        );
        assert!(l.contains("mem-path=/s/python-abc/memory,share=off"));
        assert!(l.contains("-incoming defer"));
        assert!(l.contains("-mon chardev=qmp,mode=control"));
    }

    #[test]
    fn source_and_restore_have_the_same_devices() {
        let devices = |l: String| {
            l.split(" -device ")
                .skip(1)
                .map(|d| d.split(' ').next().unwrap_or_default().to_owned())
                .collect::<Vec<_>>()
        };
        let source = line(
            Accel::Tcg,
            Mode::Boot(GuestMemory::SnapshotSource(Path::new("/s/memory"))),
            Some(Path::new("/q")),
        );
        let restore = line(
            Accel::Tcg,
            Mode::Restore(SnapshotFiles {
                dir: Path::new("/s"),
            }),
            Some(Path::new("/q")),
        );
        assert_eq!(devices(source), devices(restore));
    }
}
