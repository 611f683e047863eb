//! Kernel and language images: discovery at start-up, and building them.
//!
//! Layout under the image directory:
//! ```text
//! kernel/vmlinux  kernel/kernel.json
//! base/<base-id>.erofs  base/<base-id>.json     the shared Debian base, with the agent
//! <language>/layer.erofs  <language>/manifest.json
//! ```
//! A language's VM gets two read-only drives: the base it was built on
//! (the root the kernel mounts) and its own layer, which the agent stacks
//! above it with overlayfs. Every image is EROFS, LZ4-compressed.
//!
//! Discovery never trusts a file just because it is there: a manifest that
//! does not parse, an image of the wrong size or without an EROFS
//! superblock, a layer whose base is missing or broken is reported by name
//! and left out; the other languages are unaffected.

pub mod build;
pub(crate) mod erofs;
pub mod flat;
mod hot;
mod pack;
mod tree;

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use ignis_protocol::Recipe;
use serde::{Deserialize, Serialize};

/// Directory names under the image directory that are not languages.
pub const RESERVED: [&str; 2] = ["kernel", "base"];
/// A language's own layer, beside its manifest.
pub const LAYER_FILE: &str = "layer.erofs";
/// Where bases live, as `<id>.erofs` and `<id>.json`.
pub const BASE_DIR: &str = "base";

/// What the image build writes beside each language layer.
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
    /// The base the layer was built on and is stacked above.
    pub base: String,
    /// Size of `layer.erofs`.
    pub layer_bytes: u64,
    /// Cache key of the build (base tree, packages, recipe).
    pub key: String,
    /// SHA-256 of the recipe as built (its JSON form), in hex.
    pub recipe_sha256: String,
    /// The recipe itself: its conformance programs, its native baseline.
    pub recipe: Recipe,
}

/// What the image build writes beside each base image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseManifest {
    /// `<suite>-<key>`: the file stem, and what layers name.
    pub id: String,
    pub suite: String,
    /// Cache key of the Debian tree it was packed from; a layer fits a base
    /// of the same tree.
    pub tree_key: String,
    /// Size of `<id>.erofs`.
    pub bytes: u64,
}

#[derive(Debug, Clone)]
pub struct BaseImage {
    pub path: PathBuf,
    pub manifest: BaseManifest,
}

#[derive(Debug, Clone)]
pub struct LanguageImage {
    pub base: BaseImage,
    /// The language's own layer; `None` for a flat image (see [`flat`]),
    /// whose "base" holds everything.
    pub layer: Option<PathBuf>,
    pub manifest: Manifest,
}

impl LanguageImage {
    pub fn name(&self) -> &str {
        &self.manifest.language
    }

    /// The drives a VM of this language gets, read-only, in order: the base
    /// (the kernel's root), then the layer.
    pub fn drives(&self) -> Vec<PathBuf> {
        std::iter::once(self.base.path.clone())
            .chain(self.layer.clone())
            .collect()
    }

    /// Bytes on disk for this language alone: its layer.
    pub fn layer_bytes(&self) -> u64 {
        self.manifest.layer_bytes
    }

    /// Bytes a VM of this language reads from: base and layer.
    pub fn total_bytes(&self) -> u64 {
        self.manifest.layer_bytes + self.base.manifest.bytes
    }
}

#[cfg(any(test, feature = "fake"))]
impl LanguageImage {
    /// An image for the fake driver and unit tests: its paths under `dir`
    /// are never read; its recipe is a stub.
    pub fn fake(dir: &Path, language: &str, vm_memory_mib: u64) -> LanguageImage {
        let recipe: Recipe = serde_json::from_value(serde_json::json!({
            "name": language, "extensions": [language], "packages": [],
            "source_file": format!("main.{language}"),
            "run": ["/bin/false"], "version": ["/bin/false"], "vm_memory_mib": vm_memory_mib,
            "conformance": {"hello": "", "echo_stdin": "", "args": "",
                            "runtime_error": "", "version": ""}
        }))
        .unwrap_or_else(|e| panic!("the stub recipe is valid: {e}"));
        LanguageImage {
            base: BaseImage {
                path: dir.join(BASE_DIR).join("fake-base.erofs"),
                manifest: BaseManifest {
                    id: "fake-base".into(),
                    suite: "bookworm".into(),
                    tree_key: "test".into(),
                    bytes: 0,
                },
            },
            layer: Some(dir.join(language).join(LAYER_FILE)),
            manifest: Manifest {
                language: language.into(),
                version: format!("{language} 1"),
                extensions: vec![language.into()],
                source_file: format!("main.{language}"),
                compiled: false,
                vm_memory_mib,
                base: "fake-base".into(),
                layer_bytes: 0,
                key: "test".into(),
                recipe_sha256: "test".into(),
                recipe,
            },
        }
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
    /// Sound bases, by id.
    pub bases: BTreeMap<String, BaseImage>,
    /// Language images (and bases, by `base/<id>`) that were found but
    /// cannot be used.
    pub problems: Vec<ImageProblem>,
}

impl Catalog {
    pub fn discover(dir: &Path) -> Catalog {
        let kernel = discover_kernel(&dir.join("kernel"));
        let (bases, mut problems) = discover_bases(&dir.join(BASE_DIR));
        let mut languages = BTreeMap::new();
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map(|rd| rd.flatten().collect())
            .unwrap_or_default();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            if RESERVED.contains(&name.as_str()) || name.starts_with('.') || !e.path().is_dir() {
                continue;
            }
            match load_language(&e.path(), &name, &bases, &problems) {
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
            bases,
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

/// The EROFS superblock starts at 1024; its magic, little-endian, first.
const EROFS_MAGIC: [u8; 4] = 0xE0F5_E1E2u32.to_le_bytes();

/// Checks that `path` is `bytes` long and has an EROFS superblock.
pub(crate) fn check_erofs(path: &Path, bytes: u64) -> Result<(), String> {
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let mut f = std::fs::File::open(path).map_err(|e| format!("{name}: {e}"))?;
    let len = f.metadata().map_err(|e| format!("{name}: {e}"))?.len();
    if len != bytes {
        return Err(format!(
            "{name} is {len} bytes, the manifest says {bytes} (truncated or replaced?)"
        ));
    }
    let mut magic = [0u8; 4];
    f.seek(SeekFrom::Start(1024))
        .and_then(|_| f.read_exact(&mut magic))
        .map_err(|e| format!("{name}: {e}"))?;
    if magic != EROFS_MAGIC {
        return Err(format!("{name} has no EROFS superblock (corrupt)"));
    }
    Ok(())
}

fn discover_bases(dir: &Path) -> (BTreeMap<String, BaseImage>, Vec<ImageProblem>) {
    let mut bases = BTreeMap::new();
    let mut problems = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().collect())
        .unwrap_or_default();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(id) = file.strip_suffix(".json") else {
            continue;
        };
        match load_base(dir, id) {
            Ok(b) => {
                bases.insert(id.to_owned(), b);
            }
            Err(problem) => problems.push(ImageProblem {
                name: format!("{BASE_DIR}/{id}"),
                problem,
            }),
        }
    }
    (bases, problems)
}

fn load_base(dir: &Path, id: &str) -> Result<BaseImage, String> {
    let bytes =
        std::fs::read(dir.join(format!("{id}.json"))).map_err(|e| format!("{id}.json: {e}"))?;
    let manifest: BaseManifest =
        serde_json::from_slice(&bytes).map_err(|e| format!("{id}.json is corrupt: {e}"))?;
    if manifest.id != id {
        return Err(format!("{id}.json names base {:?}", manifest.id));
    }
    let path = dir.join(format!("{id}.erofs"));
    check_erofs(&path, manifest.bytes)?;
    Ok(BaseImage { path, manifest })
}

fn load_language(
    dir: &Path,
    name: &str,
    bases: &BTreeMap<String, BaseImage>,
    base_problems: &[ImageProblem],
) -> Result<LanguageImage, String> {
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
    let layer = dir.join(LAYER_FILE);
    check_erofs(&layer, manifest.layer_bytes)?;
    let base_name = format!("{BASE_DIR}/{}", manifest.base);
    let base = match bases.get(&manifest.base) {
        Some(b) => b.clone(),
        None => {
            return Err(match base_problems.iter().find(|p| p.name == base_name) {
                Some(p) => format!("its base {}: {}", manifest.base, p.problem),
                None => format!("its base {} is missing (rebuild the images)", manifest.base),
            })
        }
    };
    Ok(LanguageImage {
        base,
        layer: Some(layer),
        manifest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn erofs_bytes(corrupt: bool) -> Vec<u8> {
        let mut img = vec![0u8; 4096];
        if !corrupt {
            img[1024..1028].copy_from_slice(&EROFS_MAGIC);
        }
        img
    }

    fn fake_base(dir: &Path, id: &str, corrupt: bool) {
        let d = dir.join(BASE_DIR);
        std::fs::create_dir_all(&d).expect("mkdir");
        let img = erofs_bytes(corrupt);
        std::fs::write(d.join(format!("{id}.erofs")), &img).expect("write");
        let m = BaseManifest {
            id: id.into(),
            suite: "bookworm".into(),
            tree_key: "t".into(),
            bytes: img.len() as u64,
        };
        std::fs::write(
            d.join(format!("{id}.json")),
            serde_json::to_vec(&m).expect("json"),
        )
        .expect("write");
    }

    fn fake_image(dir: &Path, name: &str, base: &str, corrupt: bool) {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        let img = erofs_bytes(corrupt);
        std::fs::write(d.join(LAYER_FILE), &img).expect("write");
        let recipe: Recipe = serde_json::from_value(serde_json::json!({
            "name": name, "extensions": [name], "packages": [],
            "source_file": format!("main.{name}"), "run": ["/bin/x"], "version": ["/bin/x"],
            "conformance": {"hello": "h", "echo_stdin": "e", "args": "a",
                            "runtime_error": "r", "version": "v"}
        }))
        .expect("recipe");
        let m = Manifest {
            language: name.into(),
            version: "1".into(),
            extensions: vec![name.into()],
            source_file: format!("main.{name}"),
            compiled: false,
            vm_memory_mib: 256,
            base: base.into(),
            layer_bytes: img.len() as u64,
            key: "k".into(),
            recipe_sha256: "s".into(),
            recipe,
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
        fake_base(tmp.path(), "bookworm-1", false);
        fake_base(tmp.path(), "bookworm-2", true);
        fake_image(tmp.path(), "good", "bookworm-1", false);
        fake_image(tmp.path(), "bad", "bookworm-1", true);
        fake_image(tmp.path(), "badbase", "bookworm-2", false);
        fake_image(tmp.path(), "nobase", "bookworm-3", false);
        std::fs::create_dir_all(tmp.path().join("nomanifest")).expect("mkdir");
        let c = Catalog::discover(tmp.path());
        assert_eq!(c.languages.keys().collect::<Vec<_>>(), ["good"]);
        assert_eq!(c.bases.keys().collect::<Vec<_>>(), ["bookworm-1"]);
        let names: Vec<_> = c.problems.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["base/bookworm-2", "bad", "badbase", "nobase", "nomanifest"]
        );
        let why = |n: &str| {
            c.problems
                .iter()
                .find(|p| p.name == n)
                .map(|p| p.problem.clone())
                .unwrap_or_default()
        };
        assert!(why("bad").contains("no EROFS superblock"), "{}", why("bad"));
        assert!(
            why("badbase").contains("its base bookworm-2"),
            "{}",
            why("badbase")
        );
        assert!(why("nobase").contains("missing"), "{}", why("nobase"));
        assert!(matches!(c.language("bad"), Err(CatalogError::Broken(_))));
        assert!(matches!(
            c.language("cobol"),
            Err(CatalogError::UnknownLanguage { .. })
        ));
        assert!(c.kernel().is_err());
        let good = c.language_for_file("x/prog.GOOD").expect("by ext");
        assert_eq!(good.name(), "good");
        assert_eq!(
            good.drives(),
            [
                tmp.path().join("base/bookworm-1.erofs"),
                tmp.path().join("good").join(LAYER_FILE)
            ]
        );
    }

    #[test]
    fn a_truncated_layer_is_reported() {
        let tmp = tempfile::tempdir().expect("tmp");
        fake_base(tmp.path(), "bookworm-1", false);
        fake_image(tmp.path(), "lang", "bookworm-1", false);
        std::fs::write(tmp.path().join("lang").join(LAYER_FILE), b"short").expect("truncate");
        let c = Catalog::discover(tmp.path());
        assert!(c.languages.is_empty());
        assert!(
            c.problems[0].problem.contains("truncated"),
            "{:?}",
            c.problems
        );
    }
}
