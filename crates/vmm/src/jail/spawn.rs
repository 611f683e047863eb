//! Starting a VMM process: `clone3` into new namespaces, the jail built in
//! the child, then `execve`.
//!
//! The child is a copy of a multi-threaded process with one thread left:
//! between `clone3` and `execve` it only makes system calls on data
//! prepared before the clone (C strings, pointer arrays, BPF programs) —
//! no allocation, no locks, no Rust I/O, and no libc wrapper that thinks
//! it must coordinate with the parent's other threads (`setresuid` and
//! friends: raw system calls instead). A failing step writes its number
//! and errno to a pipe that `execve` would have closed, and exits.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

use seccompiler::BpfProgram;

/// Steps of the child, as reported on failure.
pub const STEPS: [&str; 13] = [
    "joining the cgroup",
    "making mounts private",
    "bind-mounting",
    "remounting a bind read-only",
    "binding the new root",
    "entering the new root",
    "pivot_root",
    "detaching the old root",
    "remounting the root read-only",
    "setting the host name",
    "dropping to the VMM user",
    "setting up descriptors and the parent-death signal",
    "installing seccomp / exec",
];

/// A bind mount, as prepared C strings.
pub struct PreparedBind {
    pub source: CString,
    pub target: CString,
    /// Remount flags (MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC) or 0.
    pub remount: libc::c_ulong,
}

/// Everything the child needs, built before the clone.
pub struct Prepared {
    pub program: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub cgroup_procs: Vec<CString>,
    /// `None`: no jail (namespaces, mounts, user): `--insecure-no-jail`.
    pub jail: Option<PreparedJail>,
    pub pass_fd: Option<(RawFd, RawFd)>,
    pub seccomp: Vec<BpfProgram>,
}

pub struct PreparedJail {
    pub root: CString,
    pub binds: Vec<PreparedBind>,
    pub hostname: CString,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

pub fn cstring(s: impl AsRef<OsStr>) -> io::Result<CString> {
    CString::new(s.as_ref().as_encoded_bytes()).map_err(io::Error::other)
}

/// The kernel's `struct clone_args` (version 0 fields).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

/// The parent's half of a started child.
pub struct Started {
    pub pid: libc::pid_t,
    pub pidfd: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// Readable end of the error pipe: EOF once `execve` succeeded.
    pub errors: OwnedFd,
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A pipe whose write end this process keeps open until it exits: a child
/// that finds it closed knows its parent is gone (the parent-death signal
/// is only armed once the child runs, so a parent that died before that
/// would otherwise go unnoticed).
fn parent_alive_fd() -> io::Result<RawFd> {
    static ALIVE: std::sync::OnceLock<Result<(OwnedFd, OwnedFd), String>> =
        std::sync::OnceLock::new();
    match ALIVE.get_or_init(|| pipe().map_err(|e| e.to_string())) {
        Ok((read, _write)) => Ok(read.as_raw_fd()),
        Err(e) => Err(io::Error::other(e.clone())),
    }
}

/// Clones a child that builds its jail and executes `p.program`.
///
/// The parent-death signal is tied to the *thread* that clones: call this
/// from a thread that lives as long as the VMM should (a runtime worker,
/// not a blocking-pool thread).
pub fn spawn(p: &Prepared) -> io::Result<Started> {
    let alive = parent_alive_fd()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (report_r, report_w) = pipe()?;
    let argv: Vec<*const libc::c_char> = p
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = p
        .envp
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(ptr::null()))
        .collect();
    let mut pidfd: RawFd = -1;
    let mut flags = libc::CLONE_PIDFD as u64;
    if p.jail.is_some() {
        flags |= (libc::CLONE_NEWPID
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWNET) as u64;
    }
    let args = CloneArgs {
        flags,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    let fds = ChildFds {
        stdout: out_w.as_raw_fd(),
        stderr: err_w.as_raw_fd(),
        report: report_w.as_raw_fd(),
        alive,
    };
    // SAFETY: clone3 with no stack and no CLONE_VM behaves like fork: the
    // child gets a copy of this address space and continues here with
    // return value 0; `child` never returns and only makes system calls.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: this is the child of the clone above, as `child` requires.
        unsafe { child(p, &argv, &envp, &fds) }
    }
    drop((out_w, err_w, report_w));
    Ok(Started {
        pid: pid as libc::pid_t,
        // SAFETY: CLONE_PIDFD stored a new descriptor owned by this process.
        pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
        stdout: out_r,
        stderr: err_r,
        errors: report_r,
    })
}

struct ChildFds {
    stdout: RawFd,
    stderr: RawFd,
    report: RawFd,
    alive: RawFd,
}

/// Reports the failed `step` with errno to the parent and exits.
///
/// # Safety
/// Child only: async-signal-safe calls on prepared data.
unsafe fn fail(fds: &ChildFds, step: u32) -> ! {
    // SAFETY: errno is this thread's; write and _exit are async-signal-safe
    // and `msg` lives on this stack.
    unsafe {
        let errno = *libc::__errno_location();
        let mut msg = [0u8; 8];
        msg[..4].copy_from_slice(&step.to_ne_bytes());
        msg[4..].copy_from_slice(&errno.to_ne_bytes());
        libc::write(fds.report, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// The child, from clone to exec.
///
/// # Safety
/// Runs in the child of `clone3` only, and only makes system calls on data
/// prepared before the clone.
unsafe fn child(
    p: &Prepared,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    fds: &ChildFds,
) -> ! {
    // SAFETY: this is the child of clone3 (see the function's contract):
    // every call below is a system call on descriptors, C strings and
    // pointer arrays prepared before the clone and alive in this copy of
    // the address space; nothing allocates or takes a lock.
    unsafe {
        let check = |ok: bool, step: u32| {
            if !ok {
                fail(fds, step)
            }
        };
        // Join the cgroups first, as root: the VMM never runs outside them.
        for procs in &p.cgroup_procs {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            check(fd >= 0 && libc::write(fd, b"0".as_ptr().cast(), 1) == 1, 0);
            libc::close(fd);
        }
        if let Some(j) = &p.jail {
            let null = ptr::null::<libc::c_char>();
            check(
                libc::mount(
                    null,
                    c"/".as_ptr(),
                    null,
                    libc::MS_REC | libc::MS_PRIVATE,
                    ptr::null(),
                ) == 0,
                1,
            );
            for b in &j.binds {
                check(
                    libc::mount(
                        b.source.as_ptr(),
                        b.target.as_ptr(),
                        null,
                        libc::MS_BIND,
                        ptr::null(),
                    ) == 0,
                    2,
                );
                if b.remount != 0 {
                    let flags = libc::MS_BIND | libc::MS_REMOUNT | b.remount;
                    check(
                        libc::mount(null, b.target.as_ptr(), null, flags, ptr::null()) == 0,
                        3,
                    );
                }
            }
            check(
                libc::mount(
                    j.root.as_ptr(),
                    j.root.as_ptr(),
                    null,
                    libc::MS_BIND | libc::MS_REC,
                    ptr::null(),
                ) == 0,
                4,
            );
            check(libc::chdir(j.root.as_ptr()) == 0, 5);
            let dot = c".".as_ptr();
            check(libc::syscall(libc::SYS_pivot_root, dot, dot) == 0, 6);
            check(libc::umount2(dot, libc::MNT_DETACH) == 0, 7);
            check(libc::chdir(c"/".as_ptr()) == 0, 7);
            let ro = libc::MS_BIND
                | libc::MS_REMOUNT
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV;
            check(
                libc::mount(null, c"/".as_ptr(), null, ro, ptr::null()) == 0,
                8,
            );
            check(
                libc::sethostname(j.hostname.as_ptr(), j.hostname.as_bytes().len()) == 0,
                9,
            );
            // Raw system calls: glibc's wrappers would broadcast the change
            // to every thread of the parent, which this copy does not have,
            // and wait for them forever.
            check(
                libc::syscall(libc::SYS_setgroups, 0, ptr::null::<libc::gid_t>()) == 0
                    && libc::syscall(libc::SYS_setresgid, j.gid, j.gid, j.gid) == 0
                    && libc::syscall(libc::SYS_setresuid, j.uid, j.uid, j.uid) == 0,
                10,
            );
        }
        // Armed after the uid change, which would clear it; then make sure the
        // parent did not die before it was armed.
        check(
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == 0,
            11,
        );
        let mut poll = libc::pollfd {
            fd: fds.alive,
            events: 0,
            revents: 0,
        };
        if libc::poll(&mut poll, 1, 0) != 0 {
            libc::_exit(127);
        }
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0, 11);
        let devnull = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        check(
            devnull >= 0
                && libc::dup2(devnull, 0) == 0
                && libc::dup2(fds.stdout, 1) == 1
                && libc::dup2(fds.stderr, 2) == 2,
            11,
        );
        if let Some((fd, target)) = p.pass_fd {
            check(pass_fd(fd, target), 11);
        }
        for prog in &p.seccomp {
            let fprog = libc::sock_fprog {
                len: prog.len() as u16,
                filter: prog.as_ptr() as *mut libc::sock_filter,
            };
            check(
                libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &fprog) == 0,
                12,
            );
        }
        libc::execve(p.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(fds, 12)
    }
}

/// Makes `fd` the child's descriptor `target`, open across exec.
///
/// # Safety
/// Plain descriptor system calls; child or parent alike.
unsafe fn pass_fd(fd: RawFd, target: RawFd) -> bool {
    // SAFETY: fcntl and dup2 on descriptors the caller owns.
    unsafe {
        if fd == target {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            flags >= 0 && libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) == 0
        } else {
            libc::dup2(fd, target) == target
        }
    }
}

/// What the error pipe said: `None` once exec succeeded (EOF).
pub fn decode_report(bytes: &[u8]) -> Option<io::Error> {
    let step = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
    let errno = i32::from_ne_bytes(bytes.get(4..8)?.try_into().ok()?);
    let what = STEPS.get(step as usize).copied().unwrap_or("starting");
    let e = io::Error::from_raw_os_error(errno);
    Some(io::Error::new(e.kind(), format!("{what}: {e}")))
}
