//! What every caller needs before its first VM: the discovered images, the
//! driver and its accelerator, the paths and the snapshots, bundled so that
//! `ignis run`, the benchmark and the server's pools start VMs the same
//! way: restored from a snapshot when they can, booted when they cannot.

use std::sync::Arc;
use std::time::Duration;

use crate::accel::{self, AccelChoice};
use crate::driver::qemu::Qemu;
use crate::driver::Driver;
use crate::image::{Catalog, CatalogError, KernelImage};
use crate::paths::Paths;
use crate::snapshot::{Snapshot, SnapshotError, SnapshotStore, Snapshots};
use crate::vm::{BootError, Origin, Vm, VmConfig};

#[derive(Debug, Clone)]
pub struct Launcher {
    pub paths: Paths,
    pub catalog: Catalog,
    pub kernel: KernelImage,
    pub accel: AccelChoice,
    pub driver: Arc<dyn Driver>,
    pub boot_timeout: Duration,
    pub restore_timeout: Duration,
    /// `None`: every VM boots (`--no-snapshot`).
    pub snapshots: Option<Arc<Snapshots>>,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("booting a {language} VM failed: {source}")]
    Boot { language: String, source: BootError },
    #[error("the {language} snapshot: {source}")]
    Snapshot {
        language: String,
        source: SnapshotError,
    },
    #[error("snapshots are off")]
    SnapshotsOff,
}

impl Launcher {
    /// Discovers images under `paths`, chooses the accelerator and drives
    /// QEMU, with snapshots on.
    pub async fn new(paths: Paths) -> Result<Launcher, CatalogError> {
        let catalog = Catalog::discover(&paths.images());
        let kernel = catalog.kernel()?.clone();
        // The smallest image makes the cheapest probe guest.
        let probe_image = catalog.languages.values().min_by_key(|l| l.total_bytes());
        let accel = accel::choose(&paths, &kernel, probe_image).await;
        let driver = Arc::new(Qemu::from_path(accel.accel));
        Ok(Launcher::with_driver(paths, catalog, kernel, accel, driver))
    }

    /// A launcher over any driver (tests use the fake one).
    pub fn with_driver(
        paths: Paths,
        catalog: Catalog,
        kernel: KernelImage,
        accel: AccelChoice,
        driver: Arc<dyn Driver>,
    ) -> Launcher {
        let snapshots = Arc::new(Snapshots::new(SnapshotStore::new(paths.snapshots())));
        Launcher {
            paths,
            catalog,
            kernel,
            accel,
            driver,
            boot_timeout: Duration::from_secs(60),
            restore_timeout: Duration::from_secs(15),
            snapshots: Some(snapshots),
        }
    }

    /// Every VM boots from now on; no snapshot is read or made.
    pub fn without_snapshots(mut self) -> Launcher {
        self.snapshots = None;
        self
    }

    pub fn config(&self, language: &str) -> Result<VmConfig, CatalogError> {
        let image = self.catalog.language(language)?.clone();
        let mut cfg = VmConfig::new(self.kernel.clone(), image, &self.paths);
        cfg.boot_timeout = self.boot_timeout;
        cfg.restore_timeout = self.restore_timeout;
        Ok(cfg)
    }

    /// A VM of `language` for one job: restored from its snapshot (made
    /// first if there is none yet), or booted when snapshots are off, the
    /// snapshot cannot be had, or the restore fails — said in one log line.
    pub async fn start(&self, language: &str) -> Result<Vm, LaunchError> {
        let cfg = self.config(language)?;
        if let Some(snapshots) = &self.snapshots {
            match snapshots.get(&*self.driver, &cfg).await {
                Ok(snap) => {
                    let restored = Vm::start(&*self.driver, &cfg, Origin::Restore(&snap)).await;
                    snapshots.restored(&snap, restored.is_ok()).await;
                    match restored {
                        Ok(vm) => return Ok(vm),
                        Err(e) => tracing::warn!(language, "restore failed, booting instead: {e}"),
                    }
                }
                // The failure itself was said when it happened.
                Err(e @ SnapshotError::Backoff { .. }) => {
                    tracing::debug!(language, "no snapshot, booting: {e}")
                }
                Err(e) => tracing::warn!(language, "no snapshot, booting instead: {e}"),
            }
        }
        self.start_with(&cfg, Origin::Boot).await
    }

    /// A freshly booted VM of `language`, snapshots or not.
    pub async fn boot(&self, language: &str) -> Result<Vm, LaunchError> {
        let cfg = self.config(language)?;
        self.start_with(&cfg, Origin::Boot).await
    }

    async fn start_with(&self, cfg: &VmConfig, origin: Origin<'_>) -> Result<Vm, LaunchError> {
        Vm::start(&*self.driver, cfg, origin)
            .await
            .map_err(|source| LaunchError::Boot {
                language: cfg.image.name().to_owned(),
                source,
            })
    }

    /// The snapshot of `language`, made now if it is missing or unsound.
    pub async fn snapshot(&self, language: &str) -> Result<Arc<Snapshot>, LaunchError> {
        let snapshots = self.snapshots.as_ref().ok_or(LaunchError::SnapshotsOff)?;
        let cfg = self.config(language)?;
        snapshots
            .get(&*self.driver, &cfg)
            .await
            .map_err(|source| LaunchError::Snapshot {
                language: language.to_owned(),
                source,
            })
    }
}
