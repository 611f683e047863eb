//! Builds one language image from its recipe: Debian bookworm (debootstrap
//! minbase plus the recipe's packages), the agent as `/sbin/ignis-agent`, the
//! recipe as `/etc/ignis/recipe.json`, packed read-only into ext4.
//!
//! Two caches make a second run cheap: the debootstrap tree is keyed by what
//! goes into it (suite, packages, prepare lines), and the final image by the
//! tree, the recipe and the agent binary. Nothing is rebuilt that did not
//! change; an agent change costs one `mkfs.ext4` (seconds), not a debootstrap.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ignis_protocol::Recipe;
use sha2::{Digest, Sha256};

use super::Manifest;

/// Bumped when the way trees are made changes, to invalidate caches.
const BUILDER_VERSION: &str = "2";
const SUITE: &str = "bookworm";

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
    if recipe.run.is_empty() || recipe.version.is_empty() || recipe.extensions.is_empty() {
        return Err(err("run, version and extensions must not be empty".into()));
    }
    ignis_protocol::validate_file_name(&recipe.source_file).map_err(|e| err(e.to_string()))?;
    Ok(recipe)
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

impl BuildHost for RealHost {
    fn exec(&self, cmd: &mut Command, what: &str) -> Result<String, BuildError> {
        let out = cmd.output().map_err(|e| BuildError::Command {
            what: what.into(),
            detail: e.to_string(),
        })?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            return Err(BuildError::Command {
                what: what.into(),
                detail: format!("{}: {}", out.status, text.trim()),
            });
        }
        Ok(text)
    }
}

pub fn build(recipe: &Recipe, opts: &BuildOptions) -> Result<Built, BuildError> {
    build_on(&RealHost, recipe, opts)
}

pub fn build_on(
    host: &dyn BuildHost,
    recipe: &Recipe,
    opts: &BuildOptions,
) -> Result<Built, BuildError> {
    let agent = std::fs::read(&opts.agent).map_err(|source| BuildError::Agent {
        path: opts.agent.clone(),
        source,
    })?;
    let recipe_json = serde_json::to_vec_pretty(recipe).map_err(std::io::Error::other)?;
    let tree_key = hash(&[
        BUILDER_VERSION.as_bytes(),
        SUITE.as_bytes(),
        recipe.packages.join(",").as_bytes(),
        recipe.prepare.join("\n").as_bytes(),
    ]);
    let key = hash(&[tree_key.as_bytes(), &recipe_json, &agent]);
    let out_dir = opts.images_dir.join(&recipe.name);
    if let Some(m) = current_manifest(&out_dir) {
        if m.key == key {
            return Ok(Built::UpToDate(m));
        }
    }

    let tree = opts
        .cache_dir
        .join("trees")
        .join(format!("{}-{tree_key}", recipe.name));
    // The marker sits beside the tree, not in it, so it never reaches the image.
    if !tree.with_extension("complete").exists() {
        make_tree(host, recipe, &tree, opts)?;
    }
    std::fs::create_dir_all(tree.join("etc/ignis"))?;
    std::fs::write(tree.join("etc/ignis/recipe.json"), &recipe_json)?;
    let agent_path = tree.join("sbin/ignis-agent");
    std::fs::write(&agent_path, &agent)?;
    set_mode(&agent_path, 0o755)?;
    let version = chroot_output(host, &tree, &recipe.version)?
        .trim()
        .to_string();

    std::fs::create_dir_all(&out_dir)?;
    let tmp = out_dir.join("rootfs.ext4.tmp");
    let size_mib = tree_bytes(host, &tree)? * 115 / 100 / (1024 * 1024) + 64;
    host.exec(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-O", "^has_journal", "-L"])
            .arg(format!("ignis-{}", recipe.name))
            .arg("-d")
            .arg(&tree)
            .arg(&tmp)
            .arg(format!("{size_mib}M")),
        "mkfs.ext4",
    )?;
    let rootfs_bytes = std::fs::metadata(&tmp)?.len();
    std::fs::rename(&tmp, out_dir.join("rootfs.ext4"))?;
    let manifest = Manifest {
        language: recipe.name.clone(),
        version,
        extensions: recipe.extensions.clone(),
        source_file: recipe.source_file.clone(),
        compiled: recipe.compile.is_some(),
        vm_memory_mib: recipe.vm_memory_mib,
        rootfs_bytes,
        key,
    };
    let mtmp = out_dir.join("manifest.json.tmp");
    std::fs::write(
        &mtmp,
        serde_json::to_vec_pretty(&manifest).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&mtmp, out_dir.join("manifest.json"))?;
    Ok(Built::Fresh(manifest))
}

fn current_manifest(dir: &Path) -> Option<Manifest> {
    let m: Manifest =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).ok()?).ok()?;
    let len = std::fs::metadata(dir.join("rootfs.ext4")).ok()?.len();
    (len == m.rootfs_bytes).then_some(m)
}

fn make_tree(
    host: &dyn BuildHost,
    recipe: &Recipe,
    tree: &Path,
    opts: &BuildOptions,
) -> Result<(), BuildError> {
    let tmp = tree.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    let debs = opts.cache_dir.join("debs");
    std::fs::create_dir_all(&debs)?;
    let log = opts
        .cache_dir
        .join(format!("debootstrap-{}.log", recipe.name));
    eprintln!(
        "image {}: debootstrap {SUITE} with {} (a few minutes; log in {})",
        recipe.name,
        recipe.packages.join(" "),
        log.display()
    );
    let mut cmd = Command::new("debootstrap");
    cmd.args(["--variant=minbase", "--merged-usr"])
        .arg(format!("--cache-dir={}", debs.display()));
    if !recipe.packages.is_empty() {
        cmd.arg(format!("--include={}", recipe.packages.join(",")));
    }
    cmd.arg(SUITE).arg(&tmp).arg(&opts.mirror);
    cmd.stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::options().append(true).open(&log)?);
    host.exec(&mut cmd, "debootstrap")?;

    // The unprivileged user every program runs as, and the mount points the
    // agent needs on a read-only root.
    append(
        &tmp.join("etc/passwd"),
        "runner:x:1000:1000:ignis runner:/home/runner:/usr/sbin/nologin\n",
    )?;
    append(&tmp.join("etc/group"), "runner:x:1000:\n")?;
    for d in ["home/runner", "overlay", "sys/fs/cgroup"] {
        std::fs::create_dir_all(tmp.join(d))?;
    }
    for line in &recipe.prepare {
        eprintln!(
            "image {}: prepare: {}",
            recipe.name,
            line.trim().lines().next().unwrap_or("")
        );
        with_mounts(host, &tmp, || {
            chroot_output(host, &tmp, &["/bin/sh".into(), "-c".into(), line.clone()]).map(drop)
        })?;
    }
    // Nothing in the guest reads these; leaving them out shrinks the image.
    for d in [
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
        "var/lib/apt/lists",
        "var/cache/apt",
        "var/log",
    ] {
        let p = tmp.join(d);
        if p.exists() {
            std::fs::remove_dir_all(&p)?;
            std::fs::create_dir_all(&p)?;
        }
    }
    if tree.exists() {
        std::fs::remove_dir_all(tree)?;
    }
    std::fs::rename(&tmp, tree)?;
    std::fs::write(tree.with_extension("complete"), b"")?;
    Ok(())
}

/// Mounts /proc and /dev into the tree for `f`, and unmounts them whatever happens.
fn with_mounts<T>(
    host: &dyn BuildHost,
    tree: &Path,
    f: impl FnOnce() -> Result<T, BuildError>,
) -> Result<T, BuildError> {
    let proc_dir = tree.join("proc");
    let dev_dir = tree.join("dev");
    host.exec(
        Command::new("mount")
            .args(["-t", "proc", "proc"])
            .arg(&proc_dir),
        "mount proc",
    )?;
    if let Err(e) = host.exec(
        Command::new("mount")
            .arg("--bind")
            .arg("/dev")
            .arg(&dev_dir),
        "mount dev",
    ) {
        let _ = host.exec(Command::new("umount").arg(&proc_dir), "umount proc");
        return Err(e);
    }
    let result = f();
    let _ = host.exec(Command::new("umount").arg("-l").arg(&dev_dir), "umount dev");
    let _ = host.exec(
        Command::new("umount").arg("-l").arg(&proc_dir),
        "umount proc",
    );
    result
}

fn chroot_output(host: &dyn BuildHost, tree: &Path, argv: &[String]) -> Result<String, BuildError> {
    host.exec(
        Command::new("chroot")
            .arg(tree)
            .args(argv)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/root")
            .stdin(Stdio::null()),
        &format!("chroot {argv:?}"),
    )
}

fn append(path: &Path, line: &str) -> std::io::Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    if text.lines().any(|l| Some(l) == line.lines().next()) {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)?
        .write_all(line.as_bytes())
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

fn tree_bytes(host: &dyn BuildHost, tree: &Path) -> Result<u64, BuildError> {
    let out = host.exec(Command::new("du").arg("-sb").arg(tree), "du")?;
    out.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| BuildError::Command {
            what: "du".into(),
            detail: format!("no size in {out:?}"),
        })
}

#[cfg(test)]
#[path = "build_tests.rs"]
mod tests;
