//! A jail for every VMM, modelled on Firecracker's jailer and used by every
//! driver. Before the VMM executes, in the child:
//! - its own mount, PID, IPC, UTS and network namespaces (no network);
//! - a root of its own: the per-VM directory, holding only bind mounts of
//!   what it needs (the VMM's files, the kernel and image read-only, the
//!   snapshot files, its sockets), pivoted into, the rest read-only;
//! - the unprivileged `ignis-vmm` user, no capabilities, no new privileges,
//!   plus the seccomp filters the driver asks for (on top of the VMM's own);
//! - a cgroup bounding its memory, CPU and processes (v2 or v1);
//! - SIGKILL when the process that started it dies, and a record of its
//!   owner so the next Ignis process kills and removes what a dead one left.
//!
//! Paths are mirrored: a file is bound at the same path inside the jail as
//! outside, so a VMM's command line needs no translation.

pub mod cgroup;
mod process;
mod spawn;

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use seccompiler::BpfProgram;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

pub use cgroup::{Layout, Limits};
pub use process::VmmProcess;
use spawn::{cstring, PreparedBind, PreparedJail};

/// The user every jailed VMM runs as (created by the set-up), unless
/// `IGNIS_VMM_USER` names another.
pub const VMM_USER: &str = "ignis-vmm";

fn vmm_user() -> String {
    std::env::var("IGNIS_VMM_USER").unwrap_or_else(|_| VMM_USER.to_owned())
}

/// How VMMs are contained on this host.
#[derive(Debug, Clone)]
pub enum Containment {
    Jailed(Arc<Jail>),
    /// `--insecure-no-jail`: the VMM runs as this process's user, in its
    /// namespaces; it still dies with its parent.
    Insecure,
}

/// The host-wide part of the jail.
#[derive(Debug, Clone)]
pub struct Jail {
    pub uid: u32,
    pub gid: u32,
    pub layout: Layout,
    /// `ignis/<instance>`: this IGNIS_HOME's VMM cgroups, in every hierarchy.
    instance: PathBuf,
    /// `<instance>/<owner>`: this process's.
    base: PathBuf,
}

/// What this host offers for the jail, part by part (for `ignis doctor`).
#[derive(Debug, Clone)]
pub struct JailReport {
    pub user: Result<(u32, u32), String>,
    pub cgroups: Result<Layout, String>,
    /// A real jailed start of `/bin/true` (namespaces, pivot, user, cgroup).
    pub trial: Result<(), String>,
}

impl JailReport {
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Err(e) = &self.user {
            p.push(format!("user: {e}"));
        }
        if let Err(e) = &self.cgroups {
            p.push(format!("cgroups: {e}"));
        }
        if let Err(e) = &self.trial {
            p.push(format!("namespaces/pivot/uid: {e}"));
        }
        p
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the VMM jail cannot be set up on this host ({}); fix that, or run with --insecure-no-jail", .0.join("; "))]
pub struct JailUnavailable(pub Vec<String>);

impl Jail {
    /// Checks every part of the jail on this host, for real, and returns it
    /// when all work. `home` names this installation (its cgroups).
    pub async fn new(home: &Path, runtime: &Path) -> Result<Jail, JailUnavailable> {
        let (jail, report) = Jail::probe(home, runtime).await;
        jail.ok_or_else(|| JailUnavailable(report.problems()))
    }

    pub async fn probe(home: &Path, runtime: &Path) -> (Option<Jail>, JailReport) {
        let user = lookup_user(&vmm_user());
        let cgroups = Layout::detect();
        let mut report = JailReport {
            user: user.clone(),
            cgroups: cgroups.clone(),
            trial: Err("not tried: the user or the cgroups are missing".into()),
        };
        let (Ok((uid, gid)), Ok(layout)) = (user, cgroups) else {
            return (None, report);
        };
        let instance = PathBuf::from("ignis").join(instance_name(home));
        let jail = Jail {
            uid,
            gid,
            layout,
            base: instance.join(owner_name()),
            instance,
        };
        report.trial = jail.trial(runtime).await.map_err(|e| e.to_string());
        let ok = report.trial.is_ok();
        (ok.then_some(jail), report)
    }

    /// Starts `/bin/true` in a jail like a VMM's, and waits for it.
    async fn trial(&self, runtime: &Path) -> io::Result<()> {
        // Several launchers of one process (parallel tests, a server and
        // its bench) may try at once: each trial needs a directory and a
        // cgroup of its own (removing a cgroup kills what is in it).
        static TRIALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = TRIALS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = runtime.join(format!("jail-trial-{}-{n}", std::process::id()));
        let id = format!("trial-{n}");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let r = async {
            let program = Path::new("/bin/true");
            let spawned = spawn(
                &Containment::Jailed(Arc::new(self.clone())),
                Spawn {
                    id: &id,
                    root: &dir.join("root"),
                    program,
                    args: &[],
                    mounts: system_mounts(),
                    limits: Limits {
                        memory_bytes: 64 << 20,
                        cpu_quota_us: 100_000,
                        pids: 8,
                    },
                    pass_fd: None,
                    seccomp: Vec::new(),
                },
            )
            .await?;
            let mut p = spawned.process;
            let status = p.wait().await;
            if status == "exit status: 0" {
                Ok(())
            } else {
                Err(io::Error::other(format!("/bin/true in the jail: {status}")))
            }
        }
        .await;
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    /// Kills and removes the VMM cgroups that dead Ignis processes of this
    /// installation left behind.
    pub fn reap_stale(&self) -> usize {
        cgroup::reap_dead_owners(&self.layout, &self.instance, owner_alive)
    }
}

/// What a VMM needs from the host beside its own files: its libraries and
/// data (under /usr, read-only), the loader cache and /dev/null.
pub fn system_mounts() -> Vec<Mount> {
    let mut m = vec![
        Mount::ro("/usr"),
        Mount::ro("/etc/ld.so.cache"),
        Mount::Device("/dev/null".into()),
        Mount::Device("/dev/urandom".into()),
    ];
    // Debian's merged /usr: /lib and friends are symlinks into /usr.
    for top in ["/bin", "/sbin", "/lib", "/lib64"] {
        match std::fs::read_link(top) {
            Ok(target) => m.push(Mount::Symlink(top.into(), target)),
            Err(_) if Path::new(top).is_dir() => m.push(Mount::ro(top)),
            Err(_) => {}
        }
    }
    m
}

/// One thing made visible inside a jail, at the same path as outside.
#[derive(Debug, Clone)]
pub enum Mount {
    /// A file or directory, bound read-only or writable.
    Bind { path: PathBuf, writable: bool },
    /// A device node, usable (read and write) inside.
    Device(PathBuf),
    /// A symbolic link `path` -> `target`, made inside.
    Symlink(PathBuf, PathBuf),
}

impl Mount {
    pub fn ro(path: impl Into<PathBuf>) -> Mount {
        Mount::Bind {
            path: path.into(),
            writable: false,
        }
    }

    pub fn rw(path: impl Into<PathBuf>) -> Mount {
        Mount::Bind {
            path: path.into(),
            writable: true,
        }
    }
}

/// One VMM to start.
#[derive(Debug)]
pub struct Spawn<'a> {
    /// The VM id: cgroup and host name.
    pub id: &'a str,
    /// An empty directory that becomes the VMM's `/` (jailed only).
    pub root: &'a Path,
    pub program: &'a Path,
    pub args: &'a [OsString],
    pub mounts: Vec<Mount>,
    pub limits: Limits,
    /// Passed to the VMM as descriptor `.1`.
    pub pass_fd: Option<(RawFd, RawFd)>,
    pub seccomp: Vec<BpfProgram>,
}

/// A started VMM and its output.
#[derive(Debug)]
pub struct Spawned {
    pub process: VmmProcess,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
}

/// Starts a VMM, jailed unless `containment` says otherwise. Returns once
/// it executes (or why the jail could not be built). Call from a runtime
/// worker thread: the VMM's parent-death signal is tied to it.
pub async fn spawn(containment: &Containment, s: Spawn<'_>) -> io::Result<Spawned> {
    let (jail, cgroup) = match containment {
        Containment::Jailed(j) => {
            let jail = prepare_root(&s, j)?;
            let cg = cgroup::VmCgroup::create(&j.layout, &j.base, s.id, s.limits)?;
            (Some(jail), Some(cg))
        }
        Containment::Insecure => (None, None),
    };
    let prepared = spawn::Prepared {
        program: cstring(s.program)?,
        argv: std::iter::once(s.program.as_os_str())
            .chain(s.args.iter().map(OsString::as_os_str))
            .map(cstring)
            .collect::<io::Result<_>>()?,
        envp: vec![cstring("PATH=/usr/bin:/bin")?],
        cgroup_procs: cgroup.as_ref().map(|c| c.procs.clone()).unwrap_or_default(),
        jail,
        pass_fd: s.pass_fd,
        seccomp: s.seccomp,
    };
    let started = match spawn::spawn(&prepared) {
        Ok(s) => s,
        Err(e) => {
            if let Some(cg) = &cgroup {
                cg.remove();
            }
            return Err(e);
        }
    };
    let mut process = VmmProcess::new(started.pid, started.pidfd, cgroup)?;
    if let Some(e) = exec_report(started.errors).await? {
        process.kill();
        process.wait().await;
        return Err(io::Error::new(e.kind(), format!("jail: {e}")));
    }
    Ok(Spawned {
        process,
        stdout: pipe::Receiver::from_owned_fd(nonblocking(started.stdout)?)?,
        stderr: pipe::Receiver::from_owned_fd(nonblocking(started.stderr)?)?,
    })
}

fn nonblocking(fd: std::os::fd::OwnedFd) -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(fd)
}

/// Reads the child's error pipe until exec closed it.
async fn exec_report(fd: std::os::fd::OwnedFd) -> io::Result<Option<io::Error>> {
    // SAFETY: the AsyncFd owns the descriptor and keeps it open until dropped.
    let fd = unsafe { AsyncFd::register(nonblocking(fd)?) }?;
    let mut buf = [0u8; 8];
    let mut got = 0;
    loop {
        let mut guard = fd.readable().await?;
        // SAFETY: read into the unfilled rest of `buf` from a descriptor we own.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
            )
        };
        match n {
            0 => return Ok(spawn::decode_report(&buf[..got])),
            n if n > 0 => got += n as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    guard.clear_ready();
                } else if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
        if got == buf.len() {
            return Ok(spawn::decode_report(&buf));
        }
    }
}

/// Makes the mount points inside the root and prepares the binds.
fn prepare_root(s: &Spawn<'_>, j: &Jail) -> io::Result<PreparedJail> {
    std::fs::create_dir_all(s.root)?;
    let inside = |p: &Path| s.root.join(p.strip_prefix("/").unwrap_or(p));
    let mut binds = Vec::new();
    for m in &s.mounts {
        match m {
            Mount::Symlink(path, target) => {
                let at = inside(path);
                if let Some(parent) = at.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let _ = std::fs::remove_file(&at);
                std::os::unix::fs::symlink(target, &at)?;
            }
            Mount::Bind { path, .. } | Mount::Device(path) => {
                let source = match m {
                    Mount::Device(_) => private_node(path, s.root, j)?,
                    _ => std::fs::canonicalize(path).map_err(|e| {
                        io::Error::new(e.kind(), format!("{}: {e}", path.display()))
                    })?,
                };
                let at = inside(path);
                if let Some(parent) = at.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                if source.is_dir() {
                    std::fs::create_dir_all(&at)?;
                } else if !at.exists() {
                    std::fs::File::create(&at)?;
                }
                let remount = match m {
                    Mount::Device(_) => libc::MS_NOSUID | libc::MS_NOEXEC,
                    Mount::Bind { writable: true, .. } => libc::MS_NOSUID | libc::MS_NODEV,
                    _ => libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
                };
                binds.push(PreparedBind {
                    source: cstring(&source)?,
                    target: cstring(&at)?,
                    remount,
                });
            }
        }
    }
    Ok(PreparedJail {
        root: cstring(s.root)?,
        binds,
        hostname: cstring(format!("vmm-{}", s.id))?,
        uid: j.uid,
        gid: j.gid,
    })
}

/// A device node of the VMM's own, beside its root: the host's node may
/// be `root:kvm 0660` or `root 0600`, and the jailed user is in no group.
/// Like Firecracker's jailer, the jail gets a node with the same device
/// numbers owned by its user; it is bound at the device's path (a bind
/// mount carries its own `nodev`, so the node works there only).
fn private_node(device: &Path, root: &Path, j: &Jail) -> io::Result<PathBuf> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(device)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", device.display())))?;
    let kind = if meta.file_type().is_char_device() {
        libc::S_IFCHR
    } else if meta.file_type().is_block_device() {
        libc::S_IFBLK
    } else {
        return Err(io::Error::other(format!(
            "{} is not a device",
            device.display()
        )));
    };
    let dir = root.with_file_name("devices");
    std::fs::create_dir_all(&dir)?;
    let name = device.file_name().unwrap_or_default();
    let node = dir.join(name);
    let _ = std::fs::remove_file(&node);
    let c = cstring(&node)?;
    // SAFETY: mknod with a valid path, a device type and the host device's numbers.
    if unsafe { libc::mknod(c.as_ptr(), kind | 0o600, meta.rdev()) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("creating {}: {e}", node.display()),
        ));
    }
    std::os::unix::fs::chown(&node, Some(j.uid), Some(j.gid))?;
    Ok(node)
}

fn lookup_user(name: &str) -> Result<(u32, u32), String> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| format!("/etc/passwd: {e}"))?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&name))
        .and_then(|f| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))
        .ok_or_else(|| format!("no user {name:?} (scripts/setup creates it)"))
}

/// A short, stable name for an installation.
fn instance_name(home: &Path) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(home.as_os_str().as_encoded_bytes());
    h[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// This process, as `<pid>-<start time>`: a pid alone may be reused.
pub fn owner_name() -> String {
    process_name(std::process::id()).unwrap_or_else(|| format!("{}-0", std::process::id()))
}

/// `<pid>-<start time>` of a live process.
pub fn process_name(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may contain spaces and parentheses; fields follow the last ')'.
    let start = stat.rsplit_once(')')?.1.split_whitespace().nth(19)?;
    Some(format!("{pid}-{start}"))
}

/// Whether the process a `<pid>-<start time>` name refers to still runs.
pub fn owner_alive(name: &str) -> bool {
    let Some(pid) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    process_name(pid).as_deref() == Some(name)
}

/// Kills the VMMs and removes the VM directories under `runtime` that dead
/// Ignis processes left (each VM directory names its owner and its VMM).
pub fn reap_stale_dirs(runtime: &Path) -> usize {
    let mut cleaned = 0;
    for e in std::fs::read_dir(runtime).into_iter().flatten().flatten() {
        let dir = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("vm-") || name.starts_with("jail-trial-")) || !dir.is_dir() {
            continue;
        }
        let owner = match std::fs::read_to_string(dir.join(OWNER_FILE)) {
            Ok(o) => o,
            // Made a moment ago, its owner not written yet; or left by an
            // Ignis that wrote none: stale once it is old enough.
            Err(_) if younger_than(&dir, OWNERLESS_GRACE) => continue,
            Err(_) => String::new(),
        };
        if owner_alive(owner.trim()) {
            continue;
        }
        let vmm = std::fs::read_to_string(dir.join(VMM_FILE)).unwrap_or_default();
        if owner_alive(vmm.trim()) {
            if let Some(pid) = vmm
                .split('-')
                .next()
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                // SAFETY: kill of a pid whose start time we just matched.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if std::fs::remove_dir_all(&dir).is_ok() {
            cleaned += 1;
        }
    }
    cleaned
}

/// How old a VM directory without an owner file must be to count as stale.
const OWNERLESS_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

fn younger_than(p: &Path, age: std::time::Duration) -> bool {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().is_ok_and(|e| e < age))
}

/// In a VM directory: the Ignis process that owns it.
pub const OWNER_FILE: &str = "owner";
/// In a VM directory: its VMM process.
pub const VMM_FILE: &str = "vmm";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_made_up_one_is_not() {
        let me = owner_name();
        assert!(owner_alive(&me), "{me}");
        let (pid, start) = me.split_once('-').expect("pid-start");
        assert!(!owner_alive(&format!("{pid}-{}9", start)));
        assert!(!owner_alive("not-a-pid"));
    }

    /// The whole jail, for real: this needs root and the ignis-vmm user
    /// (scripts/setup), and fails saying which part is missing otherwise.
    #[tokio::test]
    async fn a_jailed_process_starts_on_this_host() {
        let home = tempfile::tempdir().expect("tmp");
        let (jail, report) = Jail::probe(home.path(), home.path()).await;
        assert!(jail.is_some(), "jail unavailable: {:?}", report.problems());
        let layout = report.cgroups.expect("cgroups");
        assert!(
            !layout_dir(&layout)
                .join("ignis")
                .join(instance_name(home.path()))
                .join(owner_name())
                .join("vm-trial")
                .exists(),
            "the trial's cgroup was removed"
        );
    }

    fn layout_dir(l: &Layout) -> PathBuf {
        match l {
            Layout::V2(r) => r.clone(),
            Layout::V1(r) => r[0].clone(),
        }
    }

    #[test]
    fn stale_directories_of_dead_owners_go_and_live_ones_stay() {
        let run = tempfile::tempdir().expect("tmp");
        let live = run.path().join("vm-live");
        let dead = run.path().join("vm-dead");
        for (d, owner) in [(&live, owner_name()), (&dead, "1-1".to_owned())] {
            std::fs::create_dir_all(d).expect("mkdir");
            std::fs::write(d.join(OWNER_FILE), owner).expect("write");
        }
        // A directory being made, its owner not written yet.
        let new = run.path().join("vm-new");
        std::fs::create_dir_all(&new).expect("mkdir");
        assert_eq!(reap_stale_dirs(run.path()), 1);
        assert!(live.exists() && !dead.exists() && new.exists());
    }
}
