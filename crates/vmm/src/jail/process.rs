//! A VMM process started by [`super::Jail::spawn`], watched through its
//! pidfd: waiting is async and cancel-safe, killing never hits a recycled
//! pid, and its cgroup is removed once it is gone.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

use super::cgroup::VmCgroup;

#[derive(Debug)]
pub struct VmmProcess {
    pid: libc::pid_t,
    pidfd: AsyncFd<OwnedFd>,
    /// How it ended, once reaped.
    status: Option<String>,
    cgroup: Option<VmCgroup>,
}

impl VmmProcess {
    pub(super) fn new(
        pid: libc::pid_t,
        pidfd: OwnedFd,
        cgroup: Option<VmCgroup>,
    ) -> io::Result<VmmProcess> {
        Ok(VmmProcess {
            pid,
            // SAFETY: the pidfd is owned by the AsyncFd, which keeps it
            // open and unchanged until it is dropped.
            pidfd: unsafe { AsyncFd::register(pidfd) }?,
            status: None,
            cgroup,
        })
    }

    /// The process id on the host while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.status.is_none().then_some(self.pid as u32)
    }

    /// Sends SIGKILL (idempotent; nothing once it is reaped).
    pub fn kill(&self) {
        if self.status.is_none() {
            // SAFETY: pidfd_send_signal on a pidfd this struct owns; a
            // process that already exited makes it fail harmlessly.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    self.pidfd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
            }
        }
    }

    /// Resolves when the process has exited (and reaps it), saying how.
    /// Cancel-safe; repeatable.
    pub async fn wait(&mut self) -> String {
        loop {
            if let Some(s) = &self.status {
                return s.clone();
            }
            match self.pidfd.readable().await {
                Ok(mut guard) => {
                    if let Some(s) = reap(self.pidfd.get_ref(), false) {
                        self.finish(s);
                    } else {
                        guard.clear_ready();
                    }
                }
                Err(e) => {
                    let s = format!("cannot watch the VMM: {e}");
                    self.finish(s);
                }
            }
        }
    }

    fn finish(&mut self, status: String) {
        self.status = Some(status);
        if let Some(cg) = self.cgroup.take() {
            cg.remove();
        }
    }
}

impl Drop for VmmProcess {
    /// A process dropped before it was reaped is killed, and reaped in the
    /// background so it never lingers as a zombie.
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        self.kill();
        let Ok(fd) = self.pidfd.get_ref().try_clone() else {
            return;
        };
        let cgroup = self.cgroup.take();
        let reap_later = move || {
            if reap(&fd, true).is_some() {
                if let Some(cg) = cgroup {
                    cg.remove();
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            // SIGKILL was sent: the blocking wait ends within moments.
            Ok(rt) => drop(rt.spawn_blocking(reap_later)),
            Err(_) => reap_later(),
        }
    }
}

/// Reaps the process behind `pidfd` if it has exited (or waits for it if
/// `block`), and describes how it ended.
fn reap(pidfd: &OwnedFd, block: bool) -> Option<String> {
    // SAFETY: siginfo_t is plain data; zeroed is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | if block { 0 } else { libc::WNOHANG };
    // SAFETY: waitid on a pidfd we own, writing into `info`.
    let r = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            flags,
        )
    };
    if r != 0 {
        return Some(format!("wait failed: {}", io::Error::last_os_error()));
    }
    // SAFETY: waitid filled `info` for an exited child (or left si_pid 0).
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return None;
    }
    Some(match info.si_code {
        libc::CLD_EXITED => format!("exit status: {status}"),
        _ => format!("signal: {status} ({})", signal_name(status)),
    })
}

/// Like std's ExitStatus display, which callers match on (e.g. SIGBUS).
fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGABRT => "SIGABRT",
        libc::SIGSYS => "SIGSYS",
        libc::SIGINT => "SIGINT",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGPIPE => "SIGPIPE",
        _ => "?",
    }
}
