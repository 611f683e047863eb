//! Seccomp filters Ignis puts on VMM processes, compiled with Firecracker's
//! `seccompiler`. They stack on top of the VMM's own filter (QEMU's
//! `-sandbox`): where both decide, the stricter action wins.

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// For a VMM whose guest RAM is a private mapping of a snapshot's memory
/// file: `fallocate` succeeds without doing anything.
///
/// When a guest hands free pages back (virtio-balloon free page
/// reporting), QEMU 7.2 discards them with `fallocate(PUNCH_HOLE)` on the
/// RAM file before `madvise(DONTNEED)`, whatever the mapping. On a shared
/// snapshot that would zero pages under every other VM restored from it.
/// With this filter the hole is never punched and the `madvise` that
/// follows drops only this VM's private copies, which is the reclaim we
/// want. QEMU has no other use for `fallocate` here: the root drive is
/// read-only.
pub fn private_memory_filter() -> std::io::Result<BpfProgram> {
    let filter = SeccompFilter::new(
        [(libc::SYS_fallocate, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(0),
        TargetArch::x86_64,
    )
    .map_err(std::io::Error::other)?;
    filter.try_into().map_err(std::io::Error::other)
}

/// For a VMM whose guest RAM is a private mapping of a snapshot's memory
/// file, which QEMU 7.2 opens read-write although it only maps it
/// privately: besides `fallocate` made a no-op ([`private_memory_filter`]),
/// the writes QEMU never needs here fail with EPERM (`pwrite64`, `pwritev`,
/// `pwritev2`, `ftruncate`: its only drive is read-only), so a VMM that a
/// guest took over cannot write the file every other VM is restored from
/// through them.
pub fn restored_vmm_filters() -> std::io::Result<Vec<BpfProgram>> {
    let deny = SeccompFilter::new(
        [
            libc::SYS_pwrite64,
            libc::SYS_pwritev,
            libc::SYS_pwritev2,
            libc::SYS_ftruncate,
        ]
        .into_iter()
        .map(|nr| (nr, vec![]))
        .collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )
    .map_err(std::io::Error::other)?;
    Ok(vec![
        private_memory_filter()?,
        deny.try_into().map_err(std::io::Error::other)?,
    ])
}

#[cfg(test)]
/// Installs `filter` on the calling thread (with `PR_SET_NO_NEW_PRIVS`).
/// Safe to call between fork and exec: it only makes system calls on data
/// prepared before.
pub fn apply(filter: &BpfProgram) -> std::io::Result<()> {
    seccompiler::apply_filter(filter).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The filter is real: a thread that installs it gets success from
    /// `fallocate(PUNCH_HOLE)` while the file's bytes stay where they were.
    #[test]
    fn punch_hole_succeeds_and_changes_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("memory");
        std::fs::write(&path, vec![0xAB; 64 * 1024]).expect("write");
        let filter = private_memory_filter().expect("filter");
        let p = path.clone();
        let rc = std::thread::spawn(move || {
            apply(&filter).expect("apply");
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&p)
                .expect("open");
            use std::os::fd::AsRawFd;
            // SAFETY: fallocate on a descriptor this thread owns.
            unsafe {
                libc::fallocate(
                    f.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    0,
                    64 * 1024,
                )
            }
        })
        .join()
        .expect("thread");
        assert_eq!(rc, 0, "fallocate reports success");
        let bytes = std::fs::read(&path).expect("read");
        assert!(bytes.iter().all(|b| *b == 0xAB), "no hole was punched");
    }
}
