//! What unit tests across the server share: a launcher over the fake
//! driver, which plays real agents over in-memory pipes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use ignis_vmm::accel::AccelChoice;
use ignis_vmm::driver::fake::FakeDriver;
use ignis_vmm::image::{Catalog, ImageProblem, KernelImage, LanguageImage};
use ignis_vmm::paths::Paths;
use ignis_vmm::{Accel, Launcher};

/// A language image for the fake driver: nothing is read from its paths.
pub fn fake_image(dir: &Path, language: &str, vm_memory_mib: u64) -> LanguageImage {
    LanguageImage::fake(dir, language, vm_memory_mib)
}

/// Python as the real image describes itself (512 MiB guests).
pub fn python_image(dir: &Path) -> LanguageImage {
    let mut image = fake_image(dir, "python", 512);
    let m = &mut image.manifest;
    m.version = "Python 3.11.2".into();
    m.extensions = vec!["py".into()];
    m.source_file = "main.py".into();
    image
}

/// Go as the real image describes itself (1 GiB guests, compiled).
pub fn go_image(dir: &Path) -> LanguageImage {
    let mut image = fake_image(dir, "go", 1024);
    let m = &mut image.manifest;
    m.version = "go version go1.19.8 linux/amd64".into();
    m.extensions = vec!["go".into()];
    m.source_file = "main.go".into();
    m.compiled = true;
    image
}

/// A launcher over `driver` that knows Python. Its snapshots live under
/// `dir`.
pub fn fake_launcher(dir: &Path, driver: FakeDriver) -> Launcher {
    fake_launcher_with(dir, driver, vec![python_image(dir)])
}

pub fn fake_launcher_with(dir: &Path, driver: FakeDriver, images: Vec<LanguageImage>) -> Launcher {
    let languages = images
        .into_iter()
        .map(|i| (i.manifest.language.clone(), i))
        .collect::<BTreeMap<_, _>>();
    Launcher::with_driver(
        Paths::new(dir),
        Catalog {
            dir: dir.join("images"),
            kernel: Err(ImageProblem {
                name: "kernel".into(),
                problem: "not built in unit tests".into(),
            }),
            languages,
            bases: Default::default(),
            problems: vec![],
        },
        KernelImage {
            path: dir.join("vmlinux"),
            key: "test".into(),
        },
        AccelChoice {
            accel: Accel::Tcg,
            reason: "unit test".into(),
        },
        Arc::new(driver),
    )
}
