//! The baselines beside the VMs: the hello world run natively on the host,
//! and the same native command in a cold gVisor sandbox (`runsc do`), the
//! nearest other way to run untrusted code on one box.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use ignis_protocol::{recipe, version_line, Recipe};
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

/// The native baseline of the hello world in `file`, as the recipe's
/// `[native]` section says to build and run it on the host; `dir` is
/// scratch space for builds. Nothing is installed for it: a toolchain
/// missing on the host is reported as "not installed".
pub fn measure(native: Option<&recipe::Native>, file: &Path, dir: &Path, runs: usize) -> Native {
    let Some(n) = native else {
        return Native::without(None, false, "the recipe has no native baseline".into());
    };
    let compiled = n.build.is_some();
    // Every program the recipe names by path must be on the host.
    for argv in [Some(&n.run), Some(&n.version), n.build.as_ref()]
        .into_iter()
        .flatten()
    {
        let program = argv.first().map(String::as_str).unwrap_or_default();
        if program.starts_with('/') && !Path::new(program).is_file() {
            return Native::without(None, compiled, "not installed".into());
        }
    }
    let version = capture(command(&n.version, n).current_dir(dir))
        .ok()
        .map(|v| version_line(&v));
    let Some(name) = file.file_name().map(|f| f.to_string_lossy().into_owned()) else {
        return Native::without(
            version,
            compiled,
            format!("{}: no file name", file.display()),
        );
    };
    let (build_ms, run_argv, run_dir) = match &n.build {
        // The program by its absolute path: gVisor runs this same command
        // from another working directory.
        None => {
            let entry = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
            let entry = entry.to_string_lossy().into_owned();
            (
                None,
                Recipe::expand(&n.run, &[entry], ""),
                dir.to_path_buf(),
            )
        }
        Some(build) => {
            let source = match std::fs::read_to_string(file) {
                Ok(s) => s,
                Err(e) => {
                    return Native::without(version, true, format!("{}: {e}", file.display()))
                }
            };
            // Like the image, whose caches hold the standard library but never
            // the program: one untimed build warms them, then every timed
            // build gets a source of its own (a unique comment), so none is a
            // cache hit.
            let b = Builder {
                n,
                build,
                source: &source,
                name: &name,
                dir,
            };
            if let Err(e) = b.build("warm-up") {
                return Native::without(version, true, format!("{e:#}"));
            }
            let mut last = None;
            let mut i = 0;
            let build_ms = sample(runs, || {
                i += 1;
                let (ms, d) = b.build(&format!("build-{i}"))?;
                last = Some(d);
                Ok(ms)
            });
            let Some(d) = last else {
                return Native {
                    version,
                    build_ms: Some(build_ms),
                    run_ms: Maybe::unavailable("no native build"),
                    command: None,
                };
            };
            let binary = d.join(BINARY).to_string_lossy().into_owned();
            (Some(build_ms), Recipe::expand(&n.run, &[name], &binary), d)
        }
    };
    let run_ms = sample(runs, || {
        time_checked(
            command(&run_argv, n).current_dir(&run_dir),
            "the native run",
        )
    });
    Native {
        version,
        build_ms,
        run_ms,
        command: Some(run_argv.iter().map(OsString::from).collect()),
    }
}

/// Where a native build puts the program, inside its own directory.
const BINARY: &str = "program";

/// `argv` with the recipe's environment beside the host's, stdin closed.
fn command(argv: &[String], n: &recipe::Native) -> Command {
    let mut cmd = Command::new(argv.first().map(String::as_str).unwrap_or_default());
    cmd.args(argv.iter().skip(1))
        .envs(&n.env)
        .stdin(Stdio::null());
    cmd
}

struct Builder<'a> {
    n: &'a recipe::Native,
    build: &'a [String],
    source: &'a str,
    name: &'a str,
    dir: &'a Path,
}

impl Builder<'_> {
    /// Builds the source in `dir/<tag>` as the recipe says; returns the
    /// build's wall-clock time in ms and its directory.
    fn build(&self, tag: &str) -> anyhow::Result<(f64, PathBuf)> {
        let nanos = std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_nanos());
        let d = self.dir.join(tag);
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        let src = d.join(self.name);
        let comment = self.n.line_comment.as_deref().unwrap_or("//");
        std::fs::write(&src, format!("{}\n{comment} {tag} {nanos}\n", self.source))
            .with_context(|| format!("writing {}", src.display()))?;
        let binary = d.join(BINARY).to_string_lossy().into_owned();
        let argv = Recipe::expand(self.build, &[self.name.to_owned()], &binary);
        let mut cmd = command(&argv, self.n);
        cmd.current_dir(&d);
        let started = Instant::now();
        let out = cmd.output().context("starting the native build")?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if !out.status.success() {
            bail!(
                "native build failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok((ms, d))
    }
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
