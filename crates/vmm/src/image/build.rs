//! Builds the images from recipes: one shared Debian base (bookworm
//! minbase, the runner user, the agent as `/sbin/ignis-agent`) and, per
//! language, a thin layer with the recipe's packages and
//! `/etc/ignis/recipe.json`. Both are packed into read-only,
//! LZ4-compressed EROFS without documentation, translations or package
//! manager state (see `pack`); a VM stacks the layer over the base.
//!
//! Caches make a second run cheap. Trees are keyed by what goes into them:
//! the base tree by the suite and how it is set up, a layer tree by the
//! base tree, its packages and prepare lines. Images are keyed by their
//! tree and what is written into them (the agent for the base, the recipe
//! for a layer). An agent change repacks the base alone (seconds); a new
//! language installs its packages over the cached base tree, never running
//! a second debootstrap.
//!
//! A build that fails leaves every image as it was: new files are written
//! beside the old ones and renamed over them last.

use std::path::{Path, PathBuf};
use std::process::Command;

use ignis_protocol::Recipe;
use sha2::{Digest, Sha256};

use super::pack::{self, Kind};
use super::{hot, tree};
use super::{BaseImage, BaseManifest, Manifest, BASE_DIR, LAYER_FILE, RESERVED};

/// Bumped when the way trees are made changes, to invalidate caches.
const BUILDER_VERSION: &str = "3";
pub const SUITE: &str = "bookworm";

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub images_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub agent: PathBuf,
    pub mirror: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("recipe {path}: {msg}")]
    Recipe { path: PathBuf, msg: String },
    #[error("agent binary {path}: {source}")]
    Agent {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Built {
    UpToDate(Manifest),
    Fresh(Manifest),
}

/// Reads and checks a recipe: its syntax, every required field, and that
/// its name is the file's.
pub fn read_recipe(path: &Path) -> Result<Recipe, BuildError> {
    let err = |msg: String| BuildError::Recipe {
        path: path.to_path_buf(),
        msg,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let recipe: Recipe = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    if stem.as_deref() != Some(recipe.name.as_str()) {
        return Err(err(format!(
            "name {:?} must match the file name",
            recipe.name
        )));
    }
    if RESERVED.contains(&recipe.name.as_str()) {
        return Err(err(format!("{:?} is a reserved name", recipe.name)));
    }
    let problems = recipe.problems();
    if !problems.is_empty() {
        return Err(err(problems.join("; ")));
    }
    ignis_protocol::validate_file_name(&recipe.source_file).map_err(|e| err(e.to_string()))?;
    Ok(recipe)
}

/// Every recipe file (`*.toml`) in `dir`, sorted by name.
pub fn recipe_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

fn hash(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every command an image build runs goes through here, so that the build's
/// caching can be tested with a recording fake instead of debootstrap.
pub trait BuildHost {
    /// Runs `cmd` to completion; its stdout and stderr on success.
    fn exec(&self, cmd: &mut Command, what: &str) -> Result<String, BuildError>;
}

/// The real thing: runs the commands.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealHost;

/// Lines of a failed command's output kept in its error.
const ERROR_LINES: usize = 15;

impl BuildHost for RealHost {
    fn exec(&self, cmd: &mut Command, what: &str) -> Result<String, BuildError> {
        let out = cmd.output().map_err(|e| BuildError::Command {
            what: what.into(),
            detail: e.to_string(),
        })?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            let lines: Vec<&str> = text.trim().lines().collect();
            let tail = lines[lines.len().saturating_sub(ERROR_LINES)..].join("\n");
            return Err(BuildError::Command {
                what: what.into(),
                detail: format!("{}: {tail}", out.status),
            });
        }
        Ok(text)
    }
}

/// The base image every layer is stacked on: built (or found up to date)
/// from the cached base tree and the agent.
pub fn build_base(host: &dyn BuildHost, opts: &BuildOptions) -> Result<BaseImage, BuildError> {
    let agent = std::fs::read(&opts.agent).map_err(|source| BuildError::Agent {
        path: opts.agent.clone(),
        source,
    })?;
    let tree_key = base_tree_key();
    let key = hash(&[
        tree_key.as_bytes(),
        &agent,
        Kind::Base.fingerprint().as_bytes(),
    ]);
    let id = format!("{SUITE}-{key}");
    let dir = opts.images_dir.join(BASE_DIR);
    let path = dir.join(format!("{id}.erofs"));
    let json = dir.join(format!("{id}.json"));
    if let Some(manifest) = std::fs::read(&json)
        .ok()
        .and_then(|b| serde_json::from_slice::<BaseManifest>(&b).ok())
    {
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == manifest.bytes) {
            return Ok(BaseImage { path, manifest });
        }
    }
    let tree = base_tree(opts, &tree_key);
    if !tree::marker(&tree).exists() {
        tree::make_base(host, &tree, opts)?;
    }
    let agent_path = tree.join("sbin/ignis-agent");
    std::fs::write(&agent_path, &agent)?;
    tree::set_mode(&agent_path, 0o755)?;
    std::fs::create_dir_all(&dir)?;
    eprintln!("image base: packing {id}");
    let tmp = dir.join(format!(".{id}.erofs.tmp"));
    let bytes = pack::pack(host, &tree, &tmp, Kind::Base, &[])?;
    std::fs::rename(&tmp, &path)?;
    let manifest = BaseManifest {
        id,
        suite: SUITE.into(),
        tree_key,
        bytes,
    };
    write_json(&json, &manifest)?;
    Ok(BaseImage { path, manifest })
}

fn base_tree_key() -> String {
    hash(&[BUILDER_VERSION.as_bytes(), SUITE.as_bytes()])
}

fn base_tree(opts: &BuildOptions, tree_key: &str) -> PathBuf {
    opts.cache_dir
        .join("trees")
        .join(format!("base-{SUITE}-{tree_key}"))
}

pub fn build(recipe: &Recipe, base: &BaseImage, opts: &BuildOptions) -> Result<Built, BuildError> {
    build_on(&RealHost, recipe, base, opts)
}

/// Builds the layer of `recipe` over `base`, unless it is up to date.
pub fn build_on(
    host: &dyn BuildHost,
    recipe: &Recipe,
    base: &BaseImage,
    opts: &BuildOptions,
) -> Result<Built, BuildError> {
    let recipe_json = serde_json::to_vec_pretty(recipe).map_err(std::io::Error::other)?;
    let kind = Kind::Layer {
        compiled: recipe.compile.is_some(),
    };
    let tree_key = hash(&[
        BUILDER_VERSION.as_bytes(),
        base.manifest.tree_key.as_bytes(),
        recipe.packages.join(",").as_bytes(),
        recipe.prepare.join("\n").as_bytes(),
    ]);
    let key = hash(&[
        tree_key.as_bytes(),
        &recipe_json,
        kind.fingerprint().as_bytes(),
    ]);
    let out_dir = opts.images_dir.join(&recipe.name);
    if let Some(mut m) = current_manifest(&out_dir) {
        if m.key == key {
            // Same layer; a new base of the same tree (a new agent) only
            // changes which base the manifest names.
            if m.base != base.manifest.id {
                m.base = base.manifest.id.clone();
                write_json(&out_dir.join("manifest.json"), &m)?;
            }
            return Ok(Built::UpToDate(m));
        }
    }

    let base_tree = base_tree(opts, &base.manifest.tree_key);
    let layer = opts
        .cache_dir
        .join("trees")
        .join(format!("{}-{tree_key}", recipe.name));
    if !tree::marker(&layer).exists() {
        tree::make_layer(host, recipe, &base_tree, &layer, opts)?;
    }
    std::fs::create_dir_all(layer.join("etc/ignis"))?;
    std::fs::write(layer.join("etc/ignis/recipe.json"), &recipe_json)?;
    // The version as a guest will see it: the layer over the base. A
    // version command that fails fails the build. Then what a guest runs
    // before it is ready, under strace, for the files to keep uncompressed.
    let scratch = layer.with_extension("mnt");
    let probed = tree::with_overlay(host, &[&layer, &base_tree], None, &scratch, |root| {
        tree::with_system_mounts(host, root, None, || {
            let version = tree::chroot(host, root, &recipe.version)?;
            let mut start = recipe.warmup.clone();
            start.push(recipe.version.clone());
            let hot = match hot::profile(host, root, &scratch.join("profile"), &start) {
                Ok(opened) => hot::in_layer(root, &layer, &opened),
                Err(e) => {
                    eprintln!(
                        "image {}: cannot profile its start ({e}); every file stays compressed",
                        recipe.name
                    );
                    Vec::new()
                }
            };
            Ok((version, hot))
        })
    });
    let _ = std::fs::remove_dir_all(&scratch);
    let (version, hot) = probed?;
    let version = ignis_protocol::version_line(&version);

    std::fs::create_dir_all(&out_dir)?;
    let hot_bytes: u64 = hot
        .iter()
        .filter_map(|p| std::fs::metadata(layer.join(p)).ok())
        .map(|m| m.len())
        .sum();
    eprintln!(
        "image {}: packing its layer ({} files its start reads, {:.1} MiB, uncompressed)",
        recipe.name,
        hot.len(),
        hot_bytes as f64 / f64::from(1 << 20)
    );
    let tmp = out_dir.join(format!(".{LAYER_FILE}.tmp"));
    let patterns: Vec<String> = hot.iter().filter_map(|p| hot::exact_pattern(p)).collect();
    let layer_bytes = pack::pack(host, &layer, &tmp, kind, &patterns)?;
    let manifest = Manifest {
        language: recipe.name.clone(),
        version,
        extensions: recipe.extensions.clone(),
        source_file: recipe.source_file.clone(),
        compiled: recipe.compile.is_some(),
        vm_memory_mib: recipe.vm_memory_mib,
        base: base.manifest.id.clone(),
        layer_bytes,
        key,
        recipe_sha256: format!("{:x}", Sha256::digest(&recipe_json)),
        recipe: recipe.clone(),
    };
    std::fs::rename(&tmp, out_dir.join(LAYER_FILE))?;
    write_json(&out_dir.join("manifest.json"), &manifest)?;
    Ok(Built::Fresh(manifest))
}

/// Removes bases that no language's manifest names any more, except `keep`.
/// Returns the ids removed.
pub fn prune_bases(images_dir: &Path, keep: &str) -> std::io::Result<Vec<String>> {
    let mut used = vec![keep.to_owned()];
    for e in std::fs::read_dir(images_dir)?.flatten() {
        if let Some(m) = current_manifest(&e.path()) {
            used.push(m.base);
        }
    }
    let mut removed = Vec::new();
    let dir = images_dir.join(BASE_DIR);
    for e in std::fs::read_dir(&dir)?.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(id) = file.strip_suffix(".json") else {
            continue;
        };
        if !used.iter().any(|u| u == id) {
            std::fs::remove_file(dir.join(format!("{id}.erofs"))).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })?;
            std::fs::remove_file(e.path())?;
            removed.push(id.to_owned());
        }
    }
    Ok(removed)
}

fn current_manifest(dir: &Path) -> Option<Manifest> {
    let m: Manifest =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).ok()?).ok()?;
    let len = std::fs::metadata(dir.join(LAYER_FILE)).ok()?.len();
    (len == m.layer_bytes).then_some(m)
}

/// Writes `value` as JSON beside `path` and renames it into place.
fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), BuildError> {
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
#[path = "build_tests.rs"]
mod tests;
