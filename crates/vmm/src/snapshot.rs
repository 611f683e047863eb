//! Snapshots: a guest booted once per language and VM shape, its runtime
//! warmed, paused and saved, so that every later VM of that language is
//! restored from it instead of booted.
//!
//! A snapshot lives in `<snapshots>/<language>-<key>/`: the guest RAM file
//! (sparse; mapped privately by every restore), the driver's device state,
//! and `meta.json`. The key is a hash of everything the saved guest depends
//! on (see [`key`]); anything changed means another directory, so a
//! snapshot is never restored into another shape, kernel, image or VMM.
//!
//! Saving is atomic: everything is written and synced in a temporary
//! directory that is renamed into place last, under a lock shared by every
//! process of this host. A crash while saving leaves only a temporary
//! directory, which is never used and is swept by the next saver.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::driver::{Driver, GuestParams, SnapshotFiles, MEMORY_FILE};
use crate::image::{KernelImage, LanguageImage};
use crate::lock::FileLock;
use crate::vm::{BootError, Origin, SaveError, Vm, VmConfig};

/// Bumped when the snapshot layout or what a restored guest expects changes.
pub const FORMAT: u32 = 1;
const META_FILE: &str = "meta.json";
/// Files up to this size are hashed in `meta.json` and checked on every
/// open (the device state: tens of KiB). The RAM file is only sized.
const HASHED_MAX: u64 = 16 * 1024 * 1024;
/// A snapshot that failed to be made is not tried again before this.
const RETRY_AFTER: Duration = Duration::from_secs(300);
/// Restores of one snapshot that fail in a row before it is thrown away.
const RESTORE_FAILURES_MAX: u32 = 3;

/// What `meta.json` says of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotMeta {
    pub format: u32,
    pub key: String,
    pub language: String,
    pub driver: String,
    pub memory_mib: u64,
    /// What the runtime said of its version when the source booted.
    pub runtime_version: String,
    /// What the source guest was booted with; restores start the same way.
    pub guest: GuestParams,
    /// How long the source took from start to ready.
    pub source_ready_ms: u64,
    pub created_unix: u64,
    /// Every other file of the snapshot, by name.
    pub files: BTreeMap<String, FileMeta>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMeta {
    pub bytes: u64,
    /// For small files: checked on every open.
    pub sha256: Option<String>,
}

/// A snapshot that was checked when it was opened.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub dir: PathBuf,
    pub meta: SnapshotMeta,
}

impl Snapshot {
    pub fn files(&self) -> SnapshotFiles<'_> {
        SnapshotFiles { dir: &self.dir }
    }
}

/// Why there is no usable snapshot in a place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("no snapshot")]
    Missing,
    #[error("corrupt snapshot: {0}")]
    Corrupt(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("the {0} driver cannot take snapshots here")]
    Unsupported(&'static str),
    #[error("the source VM did not start: {0}")]
    Boot(#[from] BootError),
    #[error("saving the source VM failed: {0}")]
    Save(#[from] SaveError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("making it failed {ago_s} s ago ({why}); not tried again yet")]
    Backoff { why: String, ago_s: u64 },
    /// The source's RAM file could not grow: its VMM died of SIGBUS.
    #[error("no room for the guest's RAM in {dir} ({free_mib} MiB free): {source}")]
    NoSpace {
        dir: PathBuf,
        free_mib: u64,
        source: BootError,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let what = what.into();
    move |source| SnapshotError::Io { what, source }
}

/// The key of the snapshot of `image` on `driver`: a hash of the snapshot
/// format, the driver and what it says the saved state depends on (VMM
/// build, accelerator, CPU model, device layout), the kernel, the base
/// (which covers the agent) and the language's layer (which covers the
/// recipe), and the guest's memory size.
/// `None` when the driver cannot take snapshots here.
pub fn key(driver: &dyn Driver, kernel: &KernelImage, image: &LanguageImage) -> Option<String> {
    let identity = driver.snapshot_identity()?;
    let mut h = Sha256::new();
    for part in [
        format!("format {FORMAT}"),
        format!("driver {}: {identity}", driver.name()),
        format!("kernel {}", kernel.key),
        format!(
            "base {} {} bytes",
            image.base.manifest.id, image.base.manifest.bytes
        ),
        format!(
            "image {} {} {} bytes",
            image.name(),
            image.manifest.key,
            image.manifest.layer_bytes
        ),
        format!("memory {} MiB", image.manifest.vm_memory_mib),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    Some(hex(&h.finalize())[..16].to_owned())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The snapshots on disk.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    pub dir: PathBuf,
}

impl SnapshotStore {
    pub fn new(dir: impl Into<PathBuf>) -> SnapshotStore {
        SnapshotStore { dir: dir.into() }
    }

    pub fn path(&self, language: &str, key: &str) -> PathBuf {
        self.dir.join(format!("{language}-{key}"))
    }

    /// The snapshot of `language` under `key`, checked: meta, sizes, and the
    /// hashes of its small files.
    pub fn open(&self, language: &str, key: &str) -> Result<Snapshot, Problem> {
        let dir = self.path(language, key);
        let bytes = match std::fs::read(dir.join(META_FILE)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !dir.exists() => {
                return Err(Problem::Missing)
            }
            Err(e) => return Err(Problem::Corrupt(format!("{META_FILE}: {e}"))),
        };
        let meta: SnapshotMeta = serde_json::from_slice(&bytes)
            .map_err(|e| Problem::Corrupt(format!("{META_FILE}: {e}")))?;
        let corrupt = |why: String| Err(Problem::Corrupt(why));
        if meta.format != FORMAT || meta.key != key || meta.language != language {
            return corrupt(format!(
                "{META_FILE} is for format {} key {} language {}",
                meta.format, meta.key, meta.language
            ));
        }
        match meta.files.get(MEMORY_FILE) {
            Some(m) if m.bytes == meta.memory_mib * 1024 * 1024 => {}
            _ => {
                return corrupt(format!(
                    "{MEMORY_FILE} is missing from {META_FILE} or mis-sized"
                ))
            }
        }
        for (name, want) in &meta.files {
            let path = dir.join(name);
            let got = std::fs::metadata(&path).map(|m| m.len());
            if got.as_ref().ok() != Some(&want.bytes) {
                return corrupt(format!(
                    "{name}: expected {} bytes, found {got:?}",
                    want.bytes
                ));
            }
            if let Some(sum) = &want.sha256 {
                let actual =
                    sha256_file(&path).map_err(|e| Problem::Corrupt(format!("{name}: {e}")))?;
                if &actual != sum {
                    return corrupt(format!("{name}: checksum mismatch"));
                }
            }
        }
        Ok(Snapshot { dir, meta })
    }

    /// Boots a source VM with `driver`, saves it under `key` and returns the
    /// snapshot, opened and checked. Another process making the same
    /// snapshot meanwhile is waited for, and its result used.
    pub async fn create(
        &self,
        driver: &dyn Driver,
        cfg: &VmConfig,
        key: &str,
    ) -> Result<Snapshot, SnapshotError> {
        let language = cfg.image.name();
        std::fs::create_dir_all(&self.dir)
            .map_err(io(format!("creating {}", self.dir.display())))?;
        let _lock = FileLock::exclusive(&self.dir.join(format!(".{language}-{key}.lock")))
            .await
            .map_err(io("locking the snapshot"))?;
        match self.open(language, key) {
            Ok(s) => return Ok(s),
            Err(Problem::Missing) => {}
            Err(Problem::Corrupt(why)) => {
                tracing::warn!(language, key, "snapshot unusable ({why}); making it anew");
                let _ = std::fs::remove_dir_all(self.path(language, key));
            }
        }
        // Leftovers of a saver of this key that died: nobody else can be
        // saving it while we hold its lock.
        let tmp_prefix = format!(".{language}-{key}.tmp-");
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(&tmp_prefix) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let tmp = TmpDir::create(self.dir.join(format!("{tmp_prefix}{}", std::process::id())))?;
        self.save_into(driver, cfg, key, &tmp.0).await?;
        let dest = self.path(language, key);
        std::fs::rename(&tmp.0, &dest).map_err(io("moving the snapshot into place"))?;
        tmp.disarm();
        sync_dir(&self.dir).map_err(io("syncing the snapshot directory"))?;
        tracing::info!(language, key, dir = %dest.display(), "snapshot saved");
        self.prune(language, key);
        self.open(language, key)
            .map_err(|p| io("reading back the snapshot just saved")(std::io::Error::other(p)))
    }

    async fn save_into(
        &self,
        driver: &dyn Driver,
        cfg: &VmConfig,
        key: &str,
        dir: &Path,
    ) -> Result<(), SnapshotError> {
        let memory_mib = cfg.image.manifest.vm_memory_mib;
        let memory = dir.join(MEMORY_FILE);
        std::fs::File::create(&memory)
            .and_then(|f| f.set_len(memory_mib * 1024 * 1024))
            .map_err(io("creating the guest RAM file"))?;
        let started = Vm::start(
            driver,
            cfg,
            Origin::SnapshotSource {
                memory_file: &memory,
            },
        )
        .await;
        let mut vm = match started {
            Ok(vm) => vm,
            // A write to a shared file mapping that the file system cannot
            // back kills the writer with SIGBUS: the disk is full.
            Err(source @ BootError::Exited { .. }) if source.to_string().contains("SIGBUS") => {
                return Err(SnapshotError::NoSpace {
                    dir: self.dir.clone(),
                    free_mib: free_mib(&self.dir),
                    source,
                })
            }
            Err(e) => return Err(e.into()),
        };
        let info = vm.info().clone();
        let guest = vm.guest().clone();
        let saved = vm.save(SnapshotFiles { dir }).await;
        // The source must be gone before its RAM file is synced and used.
        vm.destroy().await;
        saved?;
        let mut files = BTreeMap::new();
        for e in std::fs::read_dir(dir)
            .map_err(io("listing the snapshot"))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let f = std::fs::File::open(&path).map_err(io(format!("opening {name}")))?;
            f.sync_all().map_err(io(format!("syncing {name}")))?;
            let bytes = f.metadata().map_err(io(format!("sizing {name}")))?.len();
            let sha256 = (bytes <= HASHED_MAX && name != MEMORY_FILE)
                .then(|| sha256_file(&path))
                .transpose()
                .map_err(io(format!("hashing {name}")))?;
            files.insert(name, FileMeta { bytes, sha256 });
        }
        let meta = SnapshotMeta {
            format: FORMAT,
            key: key.to_owned(),
            language: info.language,
            driver: driver.name().to_owned(),
            memory_mib,
            runtime_version: info.runtime_version,
            guest,
            source_ready_ms: info.ready_ms,
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            files,
        };
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| io("encoding meta")(e.into()))?;
        let meta_path = dir.join(META_FILE);
        std::fs::write(&meta_path, json)
            .and_then(|()| std::fs::File::open(&meta_path)?.sync_all())
            .map_err(io("writing meta.json"))?;
        sync_dir(dir).map_err(io("syncing the snapshot"))
    }

    /// Removes this language's snapshots under other keys: made for an
    /// earlier kernel, image, VMM or shape, they will never be used again.
    /// A VM still running from one keeps its mapping.
    fn prune(&self, language: &str, keep: &str) {
        let prefix = format!("{language}-");
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(&prefix) else {
                continue;
            };
            if rest != keep && rest.len() == keep.len() && e.path().join(META_FILE).exists() {
                tracing::info!(snapshot = %name, "removing an outdated snapshot");
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// Every snapshot directory here, opened and checked.
    pub fn list(&self) -> Vec<(String, Result<Snapshot, Problem>)> {
        let mut out = Vec::new();
        let mut entries: Vec<_> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !e.path().is_dir() {
                continue;
            }
            let Some((language, key)) = name.rsplit_once('-') else {
                continue;
            };
            out.push((name.clone(), self.open(language, key)));
        }
        out
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    Ok(hex(&Sha256::digest(std::fs::read(path)?)))
}

/// Space left for unprivileged writers under `dir`, in MiB (0 if unknown).
fn free_mib(dir: &Path) -> u64 {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return 0;
    };
    // SAFETY: statvfs fills the zeroed struct for a valid NUL-terminated path.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return 0;
        }
        (st.f_bavail as u64).saturating_mul(st.f_frsize as u64) / (1024 * 1024)
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// A directory removed when dropped, unless disarmed.
struct TmpDir(PathBuf);

impl TmpDir {
    fn create(path: PathBuf) -> Result<TmpDir, SnapshotError> {
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).map_err(io(format!("creating {}", path.display())))?;
        Ok(TmpDir(path))
    }

    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// This process's view of the snapshots: at most one save per snapshot at
/// a time, a failed save not retried for a while, a snapshot that keeps
/// failing to restore thrown away.
#[derive(Debug)]
pub struct Snapshots {
    pub store: SnapshotStore,
    slots: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<Slot>>>>,
}

#[derive(Debug, Default)]
enum Slot {
    #[default]
    Unknown,
    Ready {
        snapshot: Arc<Snapshot>,
        restore_failures: u32,
    },
    Failed {
        at: Instant,
        why: String,
    },
}

impl Snapshots {
    pub fn new(store: SnapshotStore) -> Snapshots {
        Snapshots {
            store,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, path: PathBuf) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(path).or_default().clone()
    }

    /// The snapshot for VMs of `cfg` on `driver`: opened if it is on disk
    /// and sound, else made now (which costs one boot).
    pub async fn get(
        &self,
        driver: &dyn Driver,
        cfg: &VmConfig,
    ) -> Result<Arc<Snapshot>, SnapshotError> {
        let language = cfg.image.name();
        let key = key(driver, &cfg.kernel, &cfg.image)
            .ok_or(SnapshotError::Unsupported(driver.name()))?;
        let slot = self.slot(self.store.path(language, &key));
        let mut s = slot.lock().await;
        match &*s {
            Slot::Ready { snapshot, .. } => return Ok(snapshot.clone()),
            Slot::Failed { at, why } if at.elapsed() < RETRY_AFTER => {
                return Err(SnapshotError::Backoff {
                    why: why.clone(),
                    ago_s: at.elapsed().as_secs(),
                })
            }
            _ => {}
        }
        // A corrupt one is replaced (and said so) under the creation lock.
        let made = match self.store.open(language, &key) {
            Ok(snap) => Ok(snap),
            Err(_) => self.store.create(driver, cfg, &key).await,
        };
        match made {
            Ok(snap) => {
                let snapshot = Arc::new(snap);
                *s = Slot::Ready {
                    snapshot: snapshot.clone(),
                    restore_failures: 0,
                };
                Ok(snapshot)
            }
            Err(e) => {
                *s = Slot::Failed {
                    at: Instant::now(),
                    why: e.to_string(),
                };
                Err(e)
            }
        }
    }

    /// Records how a restore from `snap` went. After several failures in a
    /// row the snapshot is removed, to be made anew when next asked for.
    pub async fn restored(&self, snap: &Snapshot, ok: bool) {
        let slot = self.slot(snap.dir.clone());
        let mut s = slot.lock().await;
        let Slot::Ready {
            restore_failures, ..
        } = &mut *s
        else {
            return;
        };
        if ok {
            *restore_failures = 0;
            return;
        }
        *restore_failures += 1;
        if *restore_failures >= RESTORE_FAILURES_MAX {
            tracing::warn!(
                snapshot = %snap.dir.display(),
                "{RESTORE_FAILURES_MAX} restores in a row failed; removing the snapshot"
            );
            let _ = std::fs::remove_dir_all(&snap.dir);
            *s = Slot::Unknown;
        }
    }
}

#[cfg(test)]
#[path = "snapshot_tests.rs"]
mod tests;
