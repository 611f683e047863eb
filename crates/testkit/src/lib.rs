//! Real services for tests: PostgreSQL and `nats-server -js`, each in a
//! temporary directory, listening on a free loopback port, started and
//! stopped by the test that owns it.
//!
//! A missing prerequisite fails the test with the reason; nothing here
//! skips. Readiness is a condition waited on with a deadline (the server
//! answers), never a fixed sleep. Each child gets a parent-death signal, so
//! a test process that dies leaves no server behind.

#![allow(clippy::expect_used, clippy::unwrap_used)] // Test support: a failure is the test's failure.

mod nats;
mod postgres;

pub use nats::Nats;
pub use postgres::Postgres;

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

/// How long a server may take to answer after it was started.
pub const START_DEADLINE: Duration = Duration::from_secs(60);

/// A loopback port nobody listens on now (the kernel's pick).
pub fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Waits until `ready()` holds, failing the test with `what` after the
/// deadline or when the child exited.
pub(crate) fn wait_until(what: &str, child: &mut Child, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if ready() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before it was ready ({status})");
        }
        assert!(
            Instant::now() < deadline,
            "{what} not ready after {START_DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether something accepts connections on the loopback port.
pub(crate) fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(1)).is_ok()
}

/// The first of `candidates` that exists, or a failure that says what to
/// install.
pub(crate) fn require(what: &str, candidates: &[PathBuf]) -> PathBuf {
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!("prerequisite missing: {what} (looked in {candidates:?}); run scripts/setup")
        })
}

/// Stops a child: `sig`, then a wait; SIGKILL if it lingers.
pub(crate) fn stop(child: &mut Child, sig: libc::c_int) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill takes a pid and a signal number and touches no memory.
    unsafe { libc::kill(pid, sig) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs in the child before exec: drops to `user` (when given) and asks for
/// `sig` when the parent thread goes. The death signal is set after the
/// uid change, which would clear it.
pub(crate) fn child_setup(
    cmd: &mut std::process::Command,
    user: Option<(libc::uid_t, libc::gid_t)>,
    sig: libc::c_int,
) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe calls (setgid, setuid, prctl) run
    // between fork and exec, on values copied in before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if let Some((uid, gid)) = user {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Starts `cmd` as a child that is killed (SIGKILL) if this test process
/// dies first, so a crashed test leaves no process behind.
pub fn spawn_owned(mut cmd: std::process::Command) -> std::io::Result<Child> {
    child_setup(&mut cmd, None, libc::SIGKILL);
    spawn_from_keeper(cmd)
}

/// Starts children from one thread that lives as long as the process: a
/// parent-death signal fires when the *thread* that forked a child ends,
/// and test threads end with each test.
pub(crate) fn spawn_from_keeper(mut cmd: std::process::Command) -> std::io::Result<Child> {
    use std::sync::mpsc;
    use std::sync::{Mutex, OnceLock};
    type Job = (std::process::Command, mpsc::Sender<std::io::Result<Child>>);
    static KEEPER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("testkit-keeper".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // The senders live in a static: this loop never ends.
            })
            .expect("keeper thread");
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    cmd.stdin(std::process::Stdio::null());
    keeper
        .lock()
        .unwrap()
        .send((cmd, tx))
        .expect("keeper thread alive");
    rx.recv().expect("keeper thread answers")
}
