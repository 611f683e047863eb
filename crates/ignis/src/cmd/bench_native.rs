//! The baselines beside the VMs: the hello world run natively on the host,
//! and the same native command in a cold gVisor sandbox (`runsc do`), the
//! nearest other way to run untrusted code on one box.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use serde::Serialize;

use super::bench_util::{capture, on_path, sample, time_checked, Maybe, Stats};

/// The host's own runtime on the same program.
#[derive(Debug, Serialize)]
pub struct Native {
    /// What the host's toolchain says of its version.
    pub version: Option<String>,
    /// Building the program natively with a warm standard-library cache
    /// (compiled languages only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_ms: Option<Maybe<Stats>>,
    pub run_ms: Maybe<Stats>,
    /// The command `run_ms` timed (the interpreter and the file, or the
    /// built binary), for gVisor to run the same.
    #[serde(skip)]
    pub command: Option<Vec<OsString>>,
}

impl Native {
    /// No baseline at all, for this reason.
    fn without(version: Option<String>, compiled: bool, why: String) -> Native {
        Native {
            version,
            build_ms: compiled.then(|| Maybe::unavailable(why.clone())),
            run_ms: Maybe::unavailable(why),
            command: None,
        }
    }
}

/// A cold gVisor sandbox around the native command.
#[derive(Debug, Serialize)]
pub struct Gvisor {
    pub version: Option<String>,
    /// The command timed, as a shell would show it.
    pub command: Option<String>,
    pub run_ms: Maybe<Stats>,
}

/// The native baseline of `language` for the hello world in `file`; `dir`
/// is scratch space for builds.
pub fn measure(language: &str, file: &Path, dir: &Path, runs: usize) -> Native {
    match language {
        "python" => python(file, runs),
        "go" => go(file, dir, runs),
        _ => Native::without(None, false, "no native baseline".into()),
    }
}

/// The interpreter the guest image runs too: Debian's, which the set-up
/// installs. Comparing against another build (a pyenv one first on PATH,
/// say) would measure that build's start-up, not the sandbox.
const DEBIAN_PYTHON: &str = "/usr/bin/python3";

fn python(file: &Path, runs: usize) -> Native {
    let exe = PathBuf::from(DEBIAN_PYTHON);
    if !exe.is_file() {
        return Native::without(
            None,
            false,
            format!("{DEBIAN_PYTHON} missing (apt-get install python3)"),
        );
    }
    let version = capture(Command::new(&exe).arg("--version")).ok();
    let run_ms = sample(runs, || {
        time_checked(Command::new(&exe).arg(file), "native python3")
    });
    Native {
        version,
        build_ms: None,
        run_ms,
        command: Some(vec![exe.into(), file.into()]),
    }
}

/// Debian's Go, the toolchain of the guest image.
const DEBIAN_GO: &str = "/usr/bin/go";

fn go(file: &Path, dir: &Path, runs: usize) -> Native {
    let version = match capture(Command::new(DEBIAN_GO).arg("version")) {
        Ok(v) => v,
        Err(e) => return Native::without(None, true, format!("go not usable: {e}")),
    };
    let source = match std::fs::read_to_string(file) {
        Ok(s) => s,
        Err(e) => return Native::without(Some(version), true, format!("{}: {e}", file.display())),
    };
    // Like the image, whose build cache holds the standard library but never
    // the program: one untimed build warms the cache, then every timed build
    // gets a source of its own (a unique comment), so none is a cache hit.
    if let Err(e) = go_build(&source, dir, "warm-up") {
        return Native::without(Some(version), true, format!("{e:#}"));
    }
    let (mut n, mut binary) = (0, None);
    let build_ms = sample(runs, || {
        n += 1;
        let (ms, b) = go_build(&source, dir, &format!("build-{n}"))?;
        binary = Some(b);
        Ok(ms)
    });
    let run_ms = match &binary {
        Some(b) => sample(runs, || {
            time_checked(&mut Command::new(b), "native go binary")
        }),
        None => Maybe::unavailable("no native build"),
    };
    Native {
        version: Some(version),
        build_ms: Some(build_ms),
        run_ms,
        command: binary.map(|b| vec![b.into()]),
    }
}

/// Builds `source` in `dir/name` as the image's compile step does; returns
/// the build's wall-clock time in ms and the binary.
fn go_build(source: &str, dir: &Path, name: &str) -> anyhow::Result<(f64, PathBuf)> {
    let nanos = std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_nanos());
    let d = dir.join(name);
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    let src = d.join("hello.go");
    std::fs::write(&src, format!("{source}// {name} {nanos}\n"))
        .with_context(|| format!("writing {}", src.display()))?;
    let binary = d.join("hello");
    // The same flags and settings as the image's compile step.
    let mut cmd = Command::new(DEBIAN_GO);
    cmd.args(["build", "-trimpath", "-o"])
        .arg(&binary)
        .arg(&src)
        .current_dir(&d)
        .env("GO111MODULE", "off")
        .env("CGO_ENABLED", "0")
        .stdin(Stdio::null());
    let started = Instant::now();
    let out = cmd.output().context("starting go build")?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!(
            "go build failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((ms, binary))
}

/// The flags of every sandbox: no network (like the VMs, which have no
/// NIC) and the ptrace platform, which needs no KVM.
const RUNSC_FLAGS: [&str; 3] = ["--network=none", "--platform=ptrace", "do"];

/// Times `runsc ... do <native command>`, a fresh sandbox each run, when
/// runsc is on PATH; "not installed" when it is not.
pub fn gvisor(native: &Native, runs: usize) -> Gvisor {
    let Some(runsc) = on_path("runsc") else {
        return Gvisor {
            version: None,
            command: None,
            run_ms: Maybe::unavailable("not installed"),
        };
    };
    let version = capture(Command::new(&runsc).arg("--version"))
        .ok()
        .and_then(|v| v.lines().next().map(str::to_owned));
    let Some(native_cmd) = &native.command else {
        return Gvisor {
            version,
            command: None,
            run_ms: Maybe::unavailable("no native command to sandbox"),
        };
    };
    let shown = std::iter::once(OsString::from("runsc"))
        .chain(RUNSC_FLAGS.iter().map(OsString::from))
        .chain(native_cmd.iter().cloned())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let run_ms = sample(runs, || {
        let mut cmd = Command::new(&runsc);
        cmd.args(RUNSC_FLAGS).args(native_cmd);
        time_checked(&mut cmd, "runsc do")
    });
    Gvisor {
        version,
        command: Some(shown),
        run_ms,
    }
}
