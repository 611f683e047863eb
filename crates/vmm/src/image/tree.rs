//! The trees images are packed from, made once and cached.
//!
//! The base tree is a debootstrap of Debian (minbase) with the runner user
//! and apt set up for layers. A language's tree is only what it adds: the
//! base tree is the lower directory of an overlayfs on the host, the
//! recipe's packages are installed and its `prepare` lines run in a chroot
//! of the merged view, and the overlay's upper directory — new and changed
//! files, whiteouts for removed ones — is the layer. No second debootstrap,
//! and no copy of the base in any layer.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ignis_protocol::Recipe;

use super::build::{BuildError, BuildHost, BuildOptions, SUITE};

/// Apt in the base tree: nothing recommended, no documentation unpacked
/// (the images would leave it out anyway), no daemons started.
const APT_CONF: &str = "APT::Install-Recommends \"false\";\n\
APT::Install-Suggests \"false\";\n\
APT::Sandbox::User \"root\";\n\
Acquire::Retries \"3\";\n\
Dpkg::Use-Pty \"false\";\n";
const DPKG_CFG: &str = "path-exclude=/usr/share/doc/*\n\
path-exclude=/usr/share/man/*\n\
path-exclude=/usr/share/info/*\n\
path-exclude=/usr/share/locale/*\n\
path-exclude=/usr/share/lintian/*\n";
const POLICY_RC: &str = "#!/bin/sh\nexit 101\n";

/// Where a tree's completion marker sits: beside it, never in an image.
pub fn marker(tree: &Path) -> PathBuf {
    tree.with_extension("complete")
}

fn fresh_dir(p: &Path) -> Result<(), BuildError> {
    if p.exists() {
        std::fs::remove_dir_all(p)?;
    }
    std::fs::create_dir_all(p)?;
    Ok(())
}

/// Moves a finished `tmp` into `tree` and marks it complete.
fn finish(tmp: &Path, tree: &Path) -> Result<(), BuildError> {
    if tree.exists() {
        std::fs::remove_dir_all(tree)?;
    }
    std::fs::rename(tmp, tree)?;
    std::fs::write(marker(tree), b"")?;
    Ok(())
}

/// Saves a step's output beside the trees, for a post-mortem.
fn keep_log(opts: &BuildOptions, name: &str, text: &str) {
    let log = opts.cache_dir.join(format!("{name}.log"));
    let _ = std::fs::write(log, text);
}

pub fn make_base(host: &dyn BuildHost, tree: &Path, opts: &BuildOptions) -> Result<(), BuildError> {
    let tmp = tree.with_extension("tmp");
    fresh_dir(&tmp)?;
    let debs = opts.cache_dir.join("debs");
    std::fs::create_dir_all(&debs)?;
    eprintln!("image base: debootstrap {SUITE} (about a minute)");
    let mut cmd = Command::new("debootstrap");
    cmd.args(["--variant=minbase", "--merged-usr"])
        .arg(format!("--cache-dir={}", debs.display()))
        .arg(SUITE)
        .arg(&tmp)
        .arg(&opts.mirror);
    let out = host.exec(&mut cmd, "debootstrap")?;
    keep_log(opts, "debootstrap", &out);

    std::fs::create_dir_all(tmp.join("etc/apt/apt.conf.d"))?;
    std::fs::write(tmp.join("etc/apt/apt.conf.d/90ignis"), APT_CONF)?;
    std::fs::create_dir_all(tmp.join("etc/dpkg/dpkg.cfg.d"))?;
    std::fs::write(tmp.join("etc/dpkg/dpkg.cfg.d/90ignis"), DPKG_CFG)?;
    let policy = tmp.join("usr/sbin/policy-rc.d");
    std::fs::write(&policy, POLICY_RC)?;
    set_mode(&policy, 0o755)?;
    // The unprivileged user every program runs as, and the mount points the
    // agent needs on a read-only root.
    append(
        &tmp.join("etc/passwd"),
        "runner:x:1000:1000:ignis runner:/home/runner:/usr/sbin/nologin\n",
    )?;
    append(&tmp.join("etc/group"), "runner:x:1000:\n")?;
    for d in ["home/runner", "overlay", "sys/fs/cgroup", "etc/ignis"] {
        std::fs::create_dir_all(tmp.join(d))?;
    }
    finish(&tmp, tree)
}

/// Makes the layer of `recipe` over the base tree `base`: its packages and
/// prepare lines, run in a chroot of the two stacked.
pub fn make_layer(
    host: &dyn BuildHost,
    recipe: &Recipe,
    base: &Path,
    tree: &Path,
    opts: &BuildOptions,
) -> Result<(), BuildError> {
    let upper = tree.with_extension("tmp");
    let scratch = tree.with_extension("mnt");
    fresh_dir(&upper)?;
    fresh_dir(&scratch)?;
    let name = &recipe.name;
    let debs = opts.cache_dir.join("debs");
    std::fs::create_dir_all(&debs)?;
    let result = with_overlay(host, &[base], Some(&upper), &scratch, |root| {
        with_system_mounts(host, root, Some(&debs), || {
            if !recipe.packages.is_empty() {
                eprintln!(
                    "image {name}: apt-get install {}",
                    recipe.packages.join(" ")
                );
                let out = install(host, root, &recipe.packages)?;
                keep_log(opts, &format!("apt-{name}"), &out);
            }
            for line in &recipe.prepare {
                eprintln!(
                    "image {name}: prepare: {}",
                    line.trim().lines().next().unwrap_or("")
                );
                chroot(host, root, &["/bin/sh".into(), "-c".into(), line.clone()])?;
            }
            Ok(())
        })
    });
    let _ = std::fs::remove_dir_all(&scratch);
    result?;
    finish(&upper, tree)
}

/// `apt-get install`; if that fails, the package lists may be older than
/// the mirror: updated once and tried again. The last failure is reported.
fn install(host: &dyn BuildHost, root: &Path, packages: &[String]) -> Result<String, BuildError> {
    let apt = |args: &[&str]| {
        let mut argv: Vec<String> = ["/usr/bin/apt-get", "-q", "-y"].map(String::from).to_vec();
        argv.extend(args.iter().map(|a| a.to_string()));
        argv
    };
    let mut install_argv = apt(&["install", "--no-install-recommends"]);
    install_argv.extend(packages.iter().cloned());
    match chroot(host, root, &install_argv) {
        Ok(out) => Ok(out),
        Err(first) => {
            eprintln!("apt-get install failed; updating the package lists and trying again");
            if chroot(host, root, &apt(&["update"])).is_err() {
                return Err(first);
            }
            chroot(host, root, &install_argv)
        }
    }
}

/// Runs `f` with an overlay of `lowers` (first on top) mounted in
/// `scratch/root`: writes go to `upper`, or to a throw-away directory when
/// there is none. Unmounted whatever happens.
pub fn with_overlay<T>(
    host: &dyn BuildHost,
    lowers: &[&Path],
    upper: Option<&Path>,
    scratch: &Path,
    f: impl FnOnce(&Path) -> Result<T, BuildError>,
) -> Result<T, BuildError> {
    let root = scratch.join("root");
    let work = scratch.join("work");
    let upper = match upper {
        Some(u) => u.to_path_buf(),
        None => scratch.join("upper"),
    };
    for d in [&root, &work, &upper] {
        std::fs::create_dir_all(d)?;
    }
    let lowerdir = lowers
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(":");
    // Plain copy-up only: no redirects, no metadata-only copies, no index,
    // so that the upper directory stands on its own as a lower layer later.
    let options = format!(
        "lowerdir={lowerdir},upperdir={},workdir={},redirect_dir=off,index=off,metacopy=off,xino=off",
        upper.display(),
        work.display()
    );
    host.exec(
        Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(options)
            .arg(&root),
        "mount overlay",
    )?;
    let result = f(&root);
    unmount(host, &root);
    result
}

/// Mounts /proc, /dev and (to install packages) the package cache into
/// `root` for `f`, and unmounts them whatever happens.
pub fn with_system_mounts<T>(
    host: &dyn BuildHost,
    root: &Path,
    debs: Option<&Path>,
    f: impl FnOnce() -> Result<T, BuildError>,
) -> Result<T, BuildError> {
    let mut mounts: Vec<(&str, Vec<&std::ffi::OsStr>, PathBuf)> = vec![
        (
            "mount proc",
            vec!["-t".as_ref(), "proc".as_ref(), "proc".as_ref()],
            root.join("proc"),
        ),
        (
            "mount dev",
            vec!["--bind".as_ref(), "/dev".as_ref()],
            root.join("dev"),
        ),
    ];
    if let Some(debs) = debs {
        let archives = root.join("var/cache/apt/archives");
        std::fs::create_dir_all(&archives)?;
        mounts.push((
            "mount the package cache",
            vec!["--bind".as_ref(), debs.as_os_str()],
            archives,
        ));
    }
    let mut mounted = Vec::new();
    let mut result = Ok(());
    for (what, args, target) in &mounts {
        match host.exec(Command::new("mount").args(args).arg(target), what) {
            Ok(_) => mounted.push(target.clone()),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let result = result.and_then(|()| f());
    for target in mounted.iter().rev() {
        unmount(host, target);
    }
    result
}

fn unmount(host: &dyn BuildHost, target: &Path) {
    if host
        .exec(Command::new("umount").arg(target), "umount")
        .is_err()
    {
        // Something still holds it (a process a package left behind):
        // detach it so that the build can go on or report.
        let _ = host.exec(Command::new("umount").arg("-l").arg(target), "umount -l");
    }
}

/// Runs `argv` in a chroot of `root` with a clean environment; its output.
pub fn chroot(host: &dyn BuildHost, root: &Path, argv: &[String]) -> Result<String, BuildError> {
    host.exec(
        Command::new("chroot")
            .arg(root)
            .args(argv)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/root")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("LC_ALL", "C.UTF-8")
            .stdin(Stdio::null()),
        &format!("{argv:?}"),
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

pub fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}
