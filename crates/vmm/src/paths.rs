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
