//! An exclusive lock on a file, across processes (`flock`), taken without
//! blocking the async runtime: parallel tests, a server and `ignis run` all
//! share one accelerator probe and one snapshot per key.

use std::os::fd::AsRawFd;
use std::path::Path;

/// Held until dropped.
#[derive(Debug)]
pub struct FileLock(std::fs::File);

impl FileLock {
    pub async fn exclusive(path: &Path) -> std::io::Result<FileLock> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        tokio::task::spawn_blocking(move || {
            // SAFETY: flock on a descriptor this closure owns; blocks until granted.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
                Ok(FileLock(f))
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: unlocking a descriptor we own (closing it would too).
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn try_lock(path: &Path) -> bool {
        let f = std::fs::File::open(path).expect("open");
        // SAFETY: a non-blocking flock on a descriptor this test owns.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
    }

    #[tokio::test]
    async fn held_until_dropped() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("x.lock");
        let lock = FileLock::exclusive(&path).await.expect("lock");
        assert!(
            !try_lock(&path),
            "another holder is refused while it is held"
        );
        drop(lock);
        assert!(try_lock(&path), "free once dropped");
    }
}
