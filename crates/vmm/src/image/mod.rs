//! Kernel and language images: discovery at start-up, and building them.
//!
//! Layout under the image directory:
//! ```text
//! kernel/vmlinux  kernel/kernel.json
//! <language>/rootfs.ext4  <language>/manifest.json
//! ```
//! Discovery never trusts a file just because it is there: a manifest that
//! does not parse, a root filesystem of the wrong size or without an ext4
//! superblock is reported by name and left out.

pub mod build;

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What the image build writes beside each root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub language: String,
    /// What the runtime says of its own version, e.g. "Python 3.11.2".
    pub version: String,
    pub extensions: Vec<String>,
    pub source_file: String,
    pub compiled: bool,
    pub vm_memory_mib: u64,
    pub rootfs_bytes: u64,
    /// Cache key of the build (recipe, packages, agent).
    pub key: String,
}

#[derive(Debug, Clone)]
pub struct LanguageImage {
    pub rootfs: PathBuf,
    pub manifest: Manifest,
}

impl LanguageImage {
    pub fn name(&self) -> &str {
        &self.manifest.language
    }
}

#[derive(Debug, Clone)]
pub struct KernelImage {
    pub path: PathBuf,
    pub key: String,
}

/// Something wrong with one image, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageProblem {
    pub name: String,
    pub problem: String,
}

impl std::fmt::Display for ImageProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "image {:?}: {}", self.name, self.problem)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("no guest kernel: {0}")]
    NoKernel(ImageProblem),
    #[error("unknown language {name:?}; available: {available}")]
    UnknownLanguage { name: String, available: String },
    #[error("cannot tell the language of {file:?} from its extension; pass --language (available: {available})")]
    NoLanguageForFile { file: String, available: String },
    #[error("{0}")]
    Broken(ImageProblem),
}

#[derive(Debug, Clone)]
pub struct Catalog {
    pub dir: PathBuf,
    pub kernel: Result<KernelImage, ImageProblem>,
    pub languages: BTreeMap<String, LanguageImage>,
    /// Language images that were found but cannot be used.
    pub problems: Vec<ImageProblem>,
}

impl Catalog {
    pub fn discover(dir: &Path) -> Catalog {
        let kernel = discover_kernel(&dir.join("kernel"));
        let mut languages = BTreeMap::new();
        let mut problems = Vec::new();
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map(|rd| rd.flatten().collect())
            .unwrap_or_default();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "kernel" || name.starts_with('.') || !e.path().is_dir() {
                continue;
            }
            match load_language(&e.path(), &name) {
                Ok(img) => {
                    languages.insert(name, img);
                }
                Err(problem) => problems.push(ImageProblem { name, problem }),
            }
        }
        for p in &problems {
            tracing::warn!("{p}");
        }
        Catalog {
            dir: dir.to_path_buf(),
            kernel,
            languages,
            problems,
        }
    }

    pub fn kernel(&self) -> Result<&KernelImage, CatalogError> {
        self.kernel
            .as_ref()
            .map_err(|p| CatalogError::NoKernel(p.clone()))
    }

    fn available(&self) -> String {
        let mut text = if self.languages.is_empty() {
            format!("none found in {}", self.dir.display())
        } else {
            self.languages
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        };
        for p in &self.problems {
            text.push_str(&format!("; unusable: {p}"));
        }
        text
    }

    pub fn language(&self, name: &str) -> Result<&LanguageImage, CatalogError> {
        if let Some(img) = self.languages.get(name) {
            return Ok(img);
        }
        if let Some(p) = self.problems.iter().find(|p| p.name == name) {
            return Err(CatalogError::Broken(p.clone()));
        }
        Err(CatalogError::UnknownLanguage {
            name: name.to_owned(),
            available: self.available(),
        })
    }

    /// The language whose recipe claims this file's extension.
    pub fn language_for_file(&self, file: &str) -> Result<&LanguageImage, CatalogError> {
        let ext = Path::new(file)
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        ext.as_deref()
            .and_then(|ext| {
                self.languages
                    .values()
                    .find(|l| l.manifest.extensions.iter().any(|x| x == ext))
            })
            .ok_or_else(|| CatalogError::NoLanguageForFile {
                file: file.to_owned(),
                available: self.available(),
            })
    }
}

fn discover_kernel(dir: &Path) -> Result<KernelImage, ImageProblem> {
    let problem = |p: String| ImageProblem {
        name: "kernel".into(),
        problem: p,
    };
    let path = dir.join("vmlinux");
    let mut f = std::fs::File::open(&path)
        .map_err(|e| problem(format!("{}: {e} (run the set-up script)", path.display())))?;
    let mut magic = [0u8; 4];
    f.read_exact(&mut magic)
        .map_err(|e| problem(format!("{}: {e}", path.display())))?;
    if &magic != b"\x7fELF" {
        return Err(problem(format!("{} is not an ELF vmlinux", path.display())));
    }
    #[derive(Deserialize)]
    struct KernelJson {
        key: String,
    }
    let key = std::fs::read(dir.join("kernel.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<KernelJson>(&b).ok())
        .map(|k| k.key)
        .ok_or_else(|| problem("kernel.json is missing or malformed".into()))?;
    Ok(KernelImage { path, key })
}

fn load_language(dir: &Path, name: &str) -> Result<LanguageImage, String> {
    let manifest_path = dir.join("manifest.json");
    let bytes = std::fs::read(&manifest_path).map_err(|e| format!("manifest.json: {e}"))?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| format!("manifest.json is corrupt: {e}"))?;
    if manifest.language != name {
        return Err(format!(
            "manifest names language {:?}, directory is {name:?}",
            manifest.language
        ));
    }
    let rootfs = dir.join("rootfs.ext4");
    let mut f = std::fs::File::open(&rootfs).map_err(|e| format!("rootfs.ext4: {e}"))?;
    let len = f.metadata().map_err(|e| format!("rootfs.ext4: {e}"))?.len();
    if len != manifest.rootfs_bytes {
        return Err(format!(
            "rootfs.ext4 is {len} bytes, the manifest says {} (truncated or replaced?)",
            manifest.rootfs_bytes
        ));
    }
    // The ext4 superblock starts at 1024; its magic 0xEF53 sits at offset 56.
    let mut magic = [0u8; 2];
    f.seek(SeekFrom::Start(1024 + 56))
        .and_then(|_| f.read_exact(&mut magic))
        .map_err(|e| format!("rootfs.ext4: {e}"))?;
    if magic != [0x53, 0xEF] {
        return Err("rootfs.ext4 has no ext4 superblock (corrupt)".into());
    }
    Ok(LanguageImage { rootfs, manifest })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_image(dir: &Path, name: &str, corrupt: bool) {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        let mut img = vec![0u8; 4096];
        if !corrupt {
            img[1024 + 56] = 0x53;
            img[1024 + 57] = 0xEF;
        }
        std::fs::write(d.join("rootfs.ext4"), &img).expect("write");
        let m = Manifest {
            language: name.into(),
            version: "1".into(),
            extensions: vec![name.into()],
            source_file: format!("main.{name}"),
            compiled: false,
            vm_memory_mib: 256,
            rootfs_bytes: img.len() as u64,
            key: "k".into(),
        };
        std::fs::write(
            d.join("manifest.json"),
            serde_json::to_vec(&m).expect("json"),
        )
        .expect("write");
    }

    #[test]
    fn broken_images_are_reported_by_name() {
        let tmp = tempfile::tempdir().expect("tmp");
        fake_image(tmp.path(), "good", false);
        fake_image(tmp.path(), "bad", true);
        std::fs::create_dir_all(tmp.path().join("nomanifest")).expect("mkdir");
        let c = Catalog::discover(tmp.path());
        assert_eq!(c.languages.keys().collect::<Vec<_>>(), ["good"]);
        let names: Vec<_> = c.problems.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["bad", "nomanifest"]);
        assert!(matches!(c.language("bad"), Err(CatalogError::Broken(_))));
        assert!(matches!(
            c.language("cobol"),
            Err(CatalogError::UnknownLanguage { .. })
        ));
        assert!(c.kernel().is_err());
        assert_eq!(
            c.language_for_file("x/prog.GOOD").expect("by ext").name(),
            "good"
        );
    }
}
