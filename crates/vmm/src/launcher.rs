//! What every caller needs before its first VM: the discovered images, the
//! accelerator verdict and the paths, bundled so that `ignis run`, the
//! benchmark and the server's pools boot VMs the same way.

use std::time::Duration;

use crate::accel::{self, AccelChoice};
use crate::image::{Catalog, CatalogError, KernelImage};
use crate::paths::Paths;
use crate::vm::{BootError, Vm, VmConfig};

#[derive(Debug, Clone)]
pub struct Launcher {
    pub paths: Paths,
    pub catalog: Catalog,
    pub kernel: KernelImage,
    pub accel: AccelChoice,
    pub boot_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("booting a {language} VM failed: {source}")]
    Boot { language: String, source: BootError },
}

impl Launcher {
    /// Discovers images under `paths` and chooses the accelerator.
    pub async fn new(paths: Paths) -> Result<Launcher, CatalogError> {
        let catalog = Catalog::discover(&paths.images());
        let kernel = catalog.kernel()?.clone();
        // The smallest image makes the cheapest probe guest.
        let probe_image = catalog
            .languages
            .values()
            .min_by_key(|l| l.manifest.rootfs_bytes);
        let accel = accel::choose(&paths, &kernel, probe_image).await;
        Ok(Launcher {
            paths,
            catalog,
            kernel,
            accel,
            boot_timeout: Duration::from_secs(60),
        })
    }

    pub fn config(&self, language: &str) -> Result<VmConfig, CatalogError> {
        let image = self.catalog.language(language)?.clone();
        let mut cfg = VmConfig::new(self.kernel.clone(), image, self.accel.accel, &self.paths);
        cfg.boot_timeout = self.boot_timeout;
        Ok(cfg)
    }

    pub async fn boot(&self, language: &str) -> Result<Vm, LaunchError> {
        let cfg = self.config(language)?;
        Vm::boot(&cfg).await.map_err(|source| LaunchError::Boot {
            language: language.to_owned(),
            source,
        })
    }
}
