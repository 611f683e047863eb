//! What every caller needs before its first VM: the discovered images, the
//! driver and its accelerator, the jail, the paths and the snapshots,
//! bundled so that `ignis run`, the benchmark and the server's pools start
//! VMs the same way: restored from a snapshot when they can, booted when
//! they cannot, jailed unless told otherwise.

use std::sync::Arc;
use std::time::Duration;

use crate::accel::{self, AccelChoice};
use crate::driver::firecracker::Firecracker;
use crate::driver::qemu::Qemu;
use crate::driver::{Accel, Driver};
use crate::image::{Catalog, CatalogError, KernelImage, LanguageImage};
use crate::jail::{self, Containment, Jail, JailUnavailable};
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
    /// How the driver's VMMs are contained.
    pub containment: Containment,
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

/// Which VMM runs the VMs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DriverChoice {
    /// Firecracker where its binary is found and KVM really works, else
    /// QEMU with KVM, else QEMU with TCG.
    #[default]
    Auto,
    Qemu,
    Firecracker,
}

/// How a launcher is set up.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    pub driver: DriverChoice,
    /// Every VMM jailed (off only with `--insecure-no-jail`).
    pub jail: bool,
    pub snapshots: bool,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        LaunchOptions {
            driver: DriverChoice::Auto,
            jail: true,
            snapshots: true,
        }
    }
}

/// Why VMs cannot be launched here; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Jail(#[from] JailUnavailable),
    #[error("--driver firecracker cannot work here: {0}")]
    Firecracker(String),
}

impl Launcher {
    /// Discovers images under `paths`, sets up the jail, chooses the driver
    /// and accelerator, with snapshots on.
    pub async fn new(paths: Paths) -> Result<Launcher, SetupError> {
        Launcher::with_options(paths, LaunchOptions::default()).await
    }

    pub async fn with_options(paths: Paths, opts: LaunchOptions) -> Result<Launcher, SetupError> {
        let catalog = Catalog::discover(&paths.images());
        let kernel = catalog.kernel()?.clone();
        let containment = if opts.jail {
            let jail = Jail::new(&paths.home, &paths.runtime()).await?;
            let reaped = jail.reap_stale();
            if reaped > 0 {
                tracing::warn!(
                    "removed the cgroups of {reaped} VMs a dead Ignis process left, killing any VMM still in them"
                );
            }
            Containment::Jailed(Arc::new(jail))
        } else {
            tracing::warn!("VMMs run without a jail (--insecure-no-jail)");
            Containment::Insecure
        };
        let stale = jail::reap_stale_dirs(&paths.runtime());
        if stale > 0 {
            tracing::warn!("removed {stale} VM directories a dead Ignis process left");
        }
        // The smallest image makes the cheapest probe guest.
        let probe_image = catalog.languages.values().min_by_key(|l| l.total_bytes());
        let (driver, accel) =
            choose_driver(opts.driver, &paths, &kernel, probe_image, &containment).await?;
        let mut launcher = Launcher::with_driver(paths, catalog, kernel, accel, driver);
        launcher.containment = containment;
        Ok(if opts.snapshots {
            launcher
        } else {
            launcher.without_snapshots()
        })
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
            containment: Containment::Insecure,
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

/// Picks the driver and accelerator (see [`DriverChoice`]).
async fn choose_driver(
    choice: DriverChoice,
    paths: &Paths,
    kernel: &KernelImage,
    probe_image: Option<&LanguageImage>,
    containment: &Containment,
) -> Result<(Arc<dyn Driver>, AccelChoice), SetupError> {
    if choice != DriverChoice::Qemu {
        match firecracker_usable(paths, kernel, probe_image, containment).await {
            Ok((fc, ms)) => {
                let accel = AccelChoice {
                    accel: Accel::Kvm,
                    reason: format!("firecracker: a KVM guest reached the agent in {ms} ms"),
                };
                return Ok((Arc::new(fc), accel));
            }
            Err(why) if choice == DriverChoice::Firecracker => {
                return Err(SetupError::Firecracker(why))
            }
            Err(why) => tracing::info!("not using firecracker: {why}"),
        }
    }
    let accel = accel::choose(paths, kernel, probe_image, containment).await;
    let qemu = Qemu::from_path(accel.accel, containment.clone());
    Ok((Arc::new(qemu), accel))
}

/// Firecracker, if its binary is here and a guest really boots on it (the
/// verdict cached like the QEMU KVM probe's), and the boot time.
pub async fn firecracker_usable(
    paths: &Paths,
    kernel: &KernelImage,
    probe_image: Option<&LanguageImage>,
    containment: &Containment,
) -> Result<(Firecracker, u64), String> {
    let fc = Firecracker::from_env(containment.clone())?;
    accel::kvm_device_answers().map_err(|e| format!("KVM unusable: {e}"))?;
    let ms = accel::kvm_boots(paths, kernel, probe_image, &fc).await?;
    Ok((fc, ms))
}
