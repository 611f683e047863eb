//! Where Ignis keeps things on the host. Everything hangs off `IGNIS_HOME`
//! (default `/var/lib/ignis`), so a test or a second installation can move
//! the whole tree with one variable.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Paths {
    pub home: PathBuf,
    /// Kernel and language images (`IGNIS_IMAGE_DIR`, default `<home>/images`).
    pub images: PathBuf,
    /// Parent of per-VM directories (`IGNIS_RUN_DIR`, default `/run/ignis`).
    pub runtime: PathBuf,
    /// Saved guests (`IGNIS_SNAPSHOT_DIR`, default `<home>/snapshots`).
    pub snapshots: PathBuf,
}

impl Paths {
    pub fn from_env() -> Paths {
        let home = std::env::var_os("IGNIS_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/ignis"));
        let mut p = Paths::new(home);
        if let Some(dir) = std::env::var_os("IGNIS_IMAGE_DIR") {
            p.images = PathBuf::from(dir);
        }
        if let Some(dir) = std::env::var_os("IGNIS_RUN_DIR") {
            p.runtime = PathBuf::from(dir);
        }
        if let Some(dir) = std::env::var_os("IGNIS_SNAPSHOT_DIR") {
            p.snapshots = PathBuf::from(dir);
        }
        p
    }

    pub fn new(home: impl Into<PathBuf>) -> Paths {
        let home = home.into();
        Paths {
            images: home.join("images"),
            runtime: default_runtime(),
            snapshots: home.join("snapshots"),
            home,
        }
    }

    /// Kernel and language images, discovered at start-up.
    pub fn images(&self) -> PathBuf {
        self.images.clone()
    }

    /// Build caches (kernel trees, debootstrap trees, the accelerator probe).
    pub fn cache(&self) -> PathBuf {
        self.home.join("cache")
    }

    /// Console logs of VMs that failed, kept for a post-mortem.
    pub fn logs(&self) -> PathBuf {
        self.home.join("logs")
    }

    /// Snapshots of warmed guests, one per language and VM shape.
    pub fn snapshots(&self) -> PathBuf {
        self.snapshots.clone()
    }

    /// Per-VM directories (sockets).
    pub fn runtime(&self) -> PathBuf {
        self.runtime.clone()
    }
}

/// Short, because Unix socket paths are limited to 107 bytes.
fn default_runtime() -> PathBuf {
    let run = Path::new("/run");
    if is_writable_dir(run) {
        run.join("ignis")
    } else {
        std::env::temp_dir().join("ignis-run")
    }
}

fn is_writable_dir(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: access() with a valid NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// Creates `dir` (and its parents) readable by its owner alone, and makes
/// an existing one so: `0700`, and every file directly in it `0600` at
/// most. The job database (every tenant's code, input and output), the
/// webhook secret and the console logs of failed VMs live in such
/// directories; no other local user may read them.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for e in std::fs::read_dir(dir)? {
        let path = e?.path();
        if std::fs::symlink_metadata(&path)?.is_file() {
            private_file(&path)?;
        }
    }
    Ok(())
}

/// Takes every permission but the owner's read and write from `path`, if
/// it exists (a database's `-wal` and `-shm` come and go).
pub fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => m.permissions().mode(),
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if mode & 0o177 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o600))?;
    }
    Ok(())
}

/// Makes an SQLite database at `path` private before it is opened: its
/// directory as [`private_dir`], the file created `0600` when it is new,
/// and an existing one with its `-wal` and `-shm` tightened. SQLite gives
/// the `-wal` and `-shm` files it makes later the database's own mode.
pub fn private_database(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        private_dir(dir)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        private_file(Path::new(&p))?;
    }
    Ok(())
}

/// Writes `bytes` to a new or truncated file at `path`, `0600` from the start.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    // An existing file keeps its mode through open: tighten it too.
    private_file(path)
}

#[cfg(test)]
mod private_tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777
    }

    #[test]
    fn private_dirs_and_files_are_the_owners_alone() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("a/data");
        private_dir(&dir).expect("create");
        assert_eq!(mode(&dir), 0o700);
        // Existing ones are fixed: a world-readable dir and database.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let db = dir.join("ignis.db");
        std::fs::write(&db, b"x").expect("write");
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        private_dir(&dir).expect("fix");
        assert_eq!((mode(&dir), mode(&db)), (0o700, 0o600));
        let log = dir.join("vm-1.log");
        write_private(&log, b"console").expect("write");
        assert_eq!(mode(&log), 0o600);
        private_file(&dir.join("absent-wal")).expect("a missing file is no error");
    }
}
