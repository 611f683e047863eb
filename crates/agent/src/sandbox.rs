//! Runs one command as the unprivileged user, in its own session and cgroup,
//! with no new privileges and under the system-call filter (see
//! [`crate::seccomp`]), under a wall-clock deadline and an output cap, and
//! measures it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ignis_protocol::{Stream, OUTPUT_CHUNK_MAX};

use crate::cgroup::Cgroup;
use crate::sys;

pub struct Spec<'a> {
    pub argv: &'a [String],
    pub env: &'a BTreeMap<String, String>,
    pub cwd: &'a Path,
    pub stdin: Option<File>,
    pub timeout: Duration,
    pub memory_bytes: u64,
    pub max_pids: u32,
    /// Per stream; output past it is dropped and the program is stopped.
    pub output_cap: usize,
    pub cgroup_name: &'a str,
}

#[derive(Debug, Default)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub output_exceeded: bool,
    pub oom_killed: bool,
    pub duration: Duration,
    pub cpu_ms: u64,
    pub peak_kib: u64,
    pub truncated: [bool; 2],
}

impl Exit {
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out && !self.output_exceeded && !self.oom_killed
    }
}

/// Where output goes as it arrives. An error (the host went away) stops the run.
pub type Sink<'a> = dyn FnMut(Stream, &[u8]) -> io::Result<()> + 'a;

pub fn run(spec: Spec<'_>, sink: &mut Sink<'_>) -> io::Result<Exit> {
    let cg = Cgroup::create(spec.cgroup_name)?;
    let result = supervise(&spec, &cg, sink);
    let (peak_kib, oom, cpu_ms) = (cg.peak_kib(), cg.oom_kills(), cg.cpu_ms());
    cg.destroy();
    let mut exit = result?;
    exit.peak_kib = peak_kib;
    exit.oom_killed = oom > 0;
    exit.cpu_ms = cpu_ms;
    Ok(exit)
}

fn spawn(spec: &Spec<'_>, cg: &Cgroup) -> io::Result<Child> {
    cg.limit(spec.memory_bytes, spec.max_pids)?;
    let procs = cg.procs_path()?;
    let (program, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let stdin = match &spec.stdin {
        Some(f) => Stdio::from(f.try_clone()?),
        None => Stdio::null(),
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(spec.env)
        .current_dir(spec.cwd)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (uid, gid) = (crate::RUNNER_UID, crate::RUNNER_GID);
    // Built before the fork: the child only installs it.
    let filter = crate::seccomp::shared()?;
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            // Join the cgroup first, while still root, so every process the
            // program ever makes is inside the limits.
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
            libc::close(fd);
            if libc::setsid() < 0
                || libc::setgroups(0, std::ptr::null()) < 0
                || libc::setgid(gid) < 0
                || libc::setuid(uid) < 0
            {
                return Err(io::Error::last_os_error());
            }
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            // Last, so that the steps above are not filtered: no new
            // privileges through any exec, and the system-call filter.
            crate::seccomp::install(filter)
        });
    }
    cmd.spawn()
}

fn supervise(spec: &Spec<'_>, cg: &Cgroup, sink: &mut Sink<'_>) -> io::Result<Exit> {
    let mut child = spawn(spec, cg)?;
    let started = Instant::now();
    let deadline = started + spec.timeout;
    let mut exit = Exit::default();
    let mut pipes: [Option<File>; 2] = [
        child
            .stdout
            .take()
            .map(|p| File::from(std::os::fd::OwnedFd::from(p))),
        child
            .stderr
            .take()
            .map(|p| File::from(std::os::fd::OwnedFd::from(p))),
    ];
    for p in pipes.iter().flatten() {
        sys::set_nonblocking(p.as_raw_fd())?;
    }
    let pidfd = sys::pidfd_open(child.id())?;
    let mut main_done: Option<Instant> = None;
    let mut written = [0usize; 2];
    let mut buf = vec![0u8; OUTPUT_CHUNK_MAX];
    let mut killed = false;

    while pipes.iter().any(Option::is_some) || main_done.is_none() {
        let now = Instant::now();
        if now >= deadline && !killed {
            exit.timed_out = main_done.is_none();
            cg.kill();
            killed = true;
        }
        // After a kill or the main process's end, the pipes close within
        // moments; a bound keeps a stuck descendant from holding us here.
        let wait = if killed || main_done.is_some() {
            Duration::from_millis(100)
        } else {
            deadline.saturating_duration_since(now)
        };
        let mut fds = vec![libc::pollfd {
            fd: pidfd_raw(&pidfd, main_done.is_some()),
            events: libc::POLLIN,
            revents: 0,
        }];
        for p in &pipes {
            fds.push(libc::pollfd {
                fd: p.as_ref().map_or(-1, AsRawFd::as_raw_fd),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let ms = wait.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
        // SAFETY: fds is a valid array of pollfd for its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            cg.kill();
            return Err(e);
        }
        if n == 0 && (killed || main_done.is_some()) {
            // Nothing more is coming: stop waiting for stragglers.
            pipes = [None, None];
        }
        if fds[0].revents != 0 && main_done.is_none() {
            main_done = Some(Instant::now());
            // The program is over when its main process is; anything it left
            // behind dies with it.
            cg.kill();
        }
        for (i, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
            if fds[i + 1].revents == 0 {
                continue;
            }
            let Some(pipe) = pipes[i].as_mut() else {
                continue;
            };
            match pipe.read(&mut buf) {
                Ok(0) => pipes[i] = None,
                Ok(n) => {
                    let room = spec.output_cap.saturating_sub(written[i]);
                    let keep = n.min(room);
                    if keep > 0 {
                        if let Err(e) = sink(stream, &buf[..keep]) {
                            cg.kill();
                            return Err(e);
                        }
                        written[i] += keep;
                    }
                    if keep < n && !exit.truncated[i] {
                        exit.truncated[i] = true;
                        if main_done.is_none() && !killed {
                            exit.output_exceeded = true;
                            cg.kill();
                            killed = true;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => pipes[i] = None,
            }
        }
    }
    let status = child.wait()?;
    exit.duration = main_done.unwrap_or_else(Instant::now) - started;
    exit.code = status.code();
    exit.signal = status.signal();
    Ok(exit)
}

/// Once the main process is known to be done, stop polling its pidfd (it
/// stays readable and would spin the loop).
fn pidfd_raw(fd: &std::os::fd::OwnedFd, done: bool) -> libc::c_int {
    if done {
        -1
    } else {
        let b: BorrowedFd<'_> = std::os::fd::AsFd::as_fd(fd);
        b.as_raw_fd()
    }
}
