//! The system-call filter every program (and compiler) runs under: defence
//! in depth behind the VM. A judge's programs compute, read and write files,
//! make threads and processes; they never load kernel modules, use keyrings,
//! bpf or perf, mount anything, trace other processes, reboot or kexec.
//! Those calls fail with `EPERM` (a clear error, not a kill: a runtime that
//! probes for a feature goes on without it); everything else is allowed.
//!
//! The filter is built once, before any fork, and installed between fork
//! and exec after `PR_SET_NO_NEW_PRIVS`, which also keeps any set-id file
//! (there should be none: images are stripped) from granting privileges.
//! System calls of another architecture (32-bit `int 0x80`) kill the
//! process; the guest kernel has neither IA32 nor x32 emulation anyway.

use std::collections::BTreeMap;
use std::io;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// What user programs are refused, by name (for the tests and the log).
pub const REFUSED: &[(&str, libc::c_long)] = &[
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("reboot", libc::SYS_reboot),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("acct", libc::SYS_acct),
    ("quotactl", libc::SYS_quotactl),
    ("syslog", libc::SYS_syslog),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("sethostname", libc::SYS_sethostname),
    ("setdomainname", libc::SYS_setdomainname),
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("fanotify_init", libc::SYS_fanotify_init),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("vhangup", libc::SYS_vhangup),
];

/// The filter, compiled on first use and kept: spawning a program then
/// needs no allocation for it.
pub fn shared() -> io::Result<&'static BpfProgram> {
    static PROGRAM: std::sync::OnceLock<BpfProgram> = std::sync::OnceLock::new();
    if let Some(p) = PROGRAM.get() {
        return Ok(p);
    }
    let p = program()?;
    Ok(PROGRAM.get_or_init(|| p))
}

/// The compiled filter: `EPERM` for [`REFUSED`], allow for the rest.
pub fn program() -> io::Result<BpfProgram> {
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        REFUSED.iter().map(|&(_, nr)| (nr, Vec::new())).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )
    .map_err(io::Error::other)?;
    BpfProgram::try_from(filter).map_err(io::Error::other)
}

/// Installs `prog` in the calling process, with `PR_SET_NO_NEW_PRIVS`
/// first (which the kernel requires of an unprivileged filter, and which
/// holds for everything the program ever executes).
///
/// # Safety
/// Called between fork and exec: makes only async-signal-safe system calls
/// and reads `prog`, which was built before the fork.
pub unsafe fn install(prog: &BpfProgram) -> io::Result<()> {
    // seccompiler's `sock_filter` is the kernel's (`u16, u8, u8, u32`, C
    // layout), as libc's is; the kernel only reads through the pointer.
    let fprog = libc::sock_fprog {
        len: prog.len() as libc::c_ushort,
        filter: prog.as_ptr().cast::<libc::sock_filter>().cast_mut(),
    };
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fprog points at `prog`'s instructions, alive for the call;
    // the kernel copies the program.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_and_refuses_what_the_brief_names() {
        let prog = program().expect("compiles");
        assert!(!prog.is_empty() && prog.len() < u16::MAX as usize);
        for name in [
            "init_module",
            "finit_module",
            "delete_module",
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "perf_event_open",
            "mount",
            "umount2",
            "pivot_root",
            "swapon",
            "swapoff",
            "ptrace",
            "reboot",
            "kexec_load",
            "kexec_file_load",
        ] {
            assert!(REFUSED.iter().any(|(n, _)| *n == name), "{name} allowed");
        }
    }

    /// Installs the filter in a forked child (the test process keeps its
    /// own freedom) and checks that a refused call fails with EPERM and an
    /// ordinary one still works.
    #[test]
    fn a_filtered_process_gets_eperm_and_keeps_the_rest() {
        let prog = program().expect("compiles");
        // SAFETY: the child only makes async-signal-safe calls, then _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: in the child, before anything else.
            let code = unsafe {
                if install(&prog).is_err() {
                    10
                } else if libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0) != -1
                    || *libc::__errno_location() != libc::EPERM
                {
                    11
                } else if libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0) != -1
                    || *libc::__errno_location() != libc::EPERM
                {
                    12
                } else if libc::getpid() <= 0 {
                    13
                } else if libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1 {
                    14
                } else {
                    0
                }
            };
            // SAFETY: ends the child without running the parent's handlers.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "see the codes above");
    }
}
