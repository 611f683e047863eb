//! `ignis bench`: how long a hello world takes in a microVM, step by step,
//! beside the same program run natively on the host.
//!
//! For every language with an image (of those Ignis has a hello world for) it
//! measures, over `--runs` runs: boot to the agent's Ready, the run (and the
//! compile) inside the VM as the agent timed them, a whole `ignis run` as a
//! subprocess timed by the wall clock, and the native run on the host.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use ignis_protocol::{File, Limits, RunRequest, Verdict};
use ignis_vmm::paths::Paths;
use ignis_vmm::report;
use ignis_vmm::Launcher;
use serde::Serialize;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Runs per measurement.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Languages to measure (repeatable; default: every one with an image).
    #[arg(long = "language", short)]
    pub languages: Vec<String>,
    /// Measure the service instead: an embedded server on loopback, N
    /// concurrent clients submitting hello world through the HTTP API, with
    /// the warm pool full and with it empty.
    #[arg(long)]
    pub api: bool,
    /// Concurrent clients (with --api).
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Jobs submitted in all (with --api).
    #[arg(long, default_value_t = 40)]
    pub jobs: usize,
}

/// A hello world per language Ignis knows how to benchmark.
struct Hello {
    language: &'static str,
    file: &'static str,
    source: &'static str,
}

const HELLOS: [Hello; 2] = [
    Hello {
        language: "python",
        file: "hello.py",
        source: "print(\"hello, world\")\n",
    },
    Hello {
        language: "go",
        file: "hello.go",
        source:
            "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hello, world\")\n}\n",
    },
];

const EXPECTED: &[u8] = b"hello, world\n";

/// Samples of one measurement, in milliseconds.
#[derive(Debug, Clone, Serialize)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
    samples: Vec<f64>,
}

impl Stats {
    fn of(samples: Vec<f64>) -> Option<Stats> {
        // Hundredths of a millisecond are already below the noise.
        let samples: Vec<f64> = samples
            .iter()
            .map(|x| (x * 100.0).round() / 100.0)
            .collect();
        let mut s = samples.clone();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => s[n / 2],
            _ => (s[n / 2 - 1] + s[n / 2]) / 2.0,
        };
        Some(Stats {
            median,
            min: s[0],
            max: s[n - 1],
            samples,
        })
    }
}

/// A native measurement, or why there is none.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Native {
    Measured(Stats),
    Unavailable { unavailable: String },
}

#[derive(Debug, Serialize)]
struct LanguageBench {
    language: String,
    /// What the runtime in the image says of its version.
    vm_runtime_version: String,
    /// The same for the host's toolchain, if there is one.
    native_version: Option<String>,
    boot_to_ready_ms: Stats,
    /// Compile step inside the VM (compiled languages only).
    vm_compile_ms: Option<Stats>,
    /// The program's run inside the VM, as the agent measured it.
    vm_run_ms: Stats,
    /// A whole `ignis run FILE`: start-up, boot, run, teardown.
    end_to_end_ms: Stats,
    /// Building the program natively with a warm standard-library cache
    /// (compiled languages only).
    native_build_ms: Option<Native>,
    native_run_ms: Native,
}

#[derive(Debug, Serialize)]
struct BenchReport {
    runs: usize,
    driver: &'static str,
    accel: String,
    accel_reason: String,
    languages: Vec<LanguageBench>,
}

pub fn main(a: Args) -> anyhow::Result<ExitCode> {
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    for l in &a.languages {
        if !HELLOS.iter().any(|h| h.language == l) {
            let known: Vec<_> = HELLOS.iter().map(|h| h.language).collect();
            bail!(
                "no benchmark for language {l:?} (known: {})",
                known.join(", ")
            );
        }
    }
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let launcher = rt.block_on(Launcher::new(Paths::from_env()))?;
    let hellos: Vec<&Hello> = HELLOS
        .iter()
        .filter(|h| a.languages.is_empty() || a.languages.iter().any(|l| l == h.language))
        .filter(|h| {
            let have = launcher.catalog.languages.contains_key(h.language);
            if !have {
                eprintln!("bench: no {} image, skipped", h.language);
            }
            have
        })
        .collect();
    if hellos.is_empty() {
        bail!(
            "no image to benchmark in {} (run scripts/setup)",
            launcher.paths.images().display()
        );
    }
    let work = WorkDir::create()?;
    if a.api {
        return bench_api(&rt, &a, &hellos, &work.0);
    }
    let mut languages = Vec::new();
    for h in hellos {
        languages.push(bench_language(&rt, &launcher, h, &work.0, a.runs)?);
    }
    let report = BenchReport {
        runs: a.runs,
        driver: "qemu",
        accel: launcher.accel.accel.to_string(),
        accel_reason: launcher.accel.reason.clone(),
        languages,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// The service under load, per language, with the native run beside it.
fn bench_api(
    rt: &tokio::runtime::Runtime,
    a: &Args,
    hellos: &[&Hello],
    work: &Path,
) -> anyhow::Result<ExitCode> {
    if a.clients == 0 || a.jobs == 0 {
        bail!("--clients and --jobs must be at least 1");
    }
    let b = super::bench_api::ApiBench {
        clients: a.clients,
        jobs: a.jobs,
    };
    let mut all = Vec::new();
    for h in hellos {
        let file = work.join(h.file);
        std::fs::write(&file, h.source)?;
        let native = match h.language {
            "python" => native_python(&file, a.runs).2,
            _ => native_go(&file, work, a.runs).2,
        };
        let results = rt.block_on(super::bench_api::run(b, h.language, h.source))?;
        if !a.json {
            super::bench_api::print(&results);
            native_row(&format!("native {} run (ms)", h.language), &native);
        }
        all.push(serde_json::json!({
            "language": h.language,
            "api": results,
            "native_run_ms": native,
        }));
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_language(
    rt: &tokio::runtime::Runtime,
    launcher: &Launcher,
    h: &Hello,
    work: &Path,
    runs: usize,
) -> anyhow::Result<LanguageBench> {
    let dir = work.join(h.language);
    std::fs::create_dir_all(&dir)?;
    let file = dir.join(h.file);
    std::fs::write(&file, h.source)?;

    let (mut boot, mut compile, mut run) = (Vec::new(), Vec::new(), Vec::new());
    let mut vm_runtime_version = String::new();
    for i in 1..=runs {
        eprintln!("bench: {} in a VM, {i}/{runs}", h.language);
        let vm = rt.block_on(launcher.boot(h.language))?;
        let info = vm.info().clone();
        let req = RunRequest {
            files: vec![File {
                name: h.file.to_owned(),
                content: h.source.as_bytes().to_vec(),
            }],
            stdin: Vec::new(),
            args: Vec::new(),
            env: Default::default(),
            limits: Limits::default(),
        };
        let r = rt.block_on(report::execute(vm, req, |_| {}));
        if r.status != Verdict::Ok || r.stdout.as_bytes() != EXPECTED {
            bail!(
                "{} hello world in the VM did not work: status {}, stdout {:?}, stderr {:?}{}",
                h.language,
                r.status,
                r.stdout,
                r.stderr,
                r.message.map(|m| format!(", {m}")).unwrap_or_default()
            );
        }
        boot.push(info.ready_ms as f64);
        run.push(r.duration_ms as f64);
        if let Some(c) = r.compile_ms {
            compile.push(c as f64);
        }
        vm_runtime_version = info.runtime_version;
    }

    let exe = std::env::current_exe().context("finding the ignis executable")?;
    let mut e2e = Vec::new();
    for i in 1..=runs {
        eprintln!("bench: {} via `ignis run`, {i}/{runs}", h.language);
        let mut cmd = Command::new(&exe);
        cmd.arg("run").arg(&file);
        e2e.push(time_checked(&mut cmd, "ignis run")?);
    }

    eprintln!("bench: {} natively", h.language);
    let (native_version, native_build_ms, native_run_ms) = match h.language {
        "python" => native_python(&file, runs),
        "go" => native_go(&file, &dir, runs),
        _ => (None, None, unavailable("no native baseline")),
    };
    let stats = |v: Vec<f64>, what: &str| {
        Stats::of(v).with_context(|| format!("no {what} measured for {}", h.language))
    };
    Ok(LanguageBench {
        language: h.language.to_owned(),
        vm_runtime_version,
        native_version,
        boot_to_ready_ms: stats(boot, "boot time")?,
        vm_compile_ms: Stats::of(compile),
        vm_run_ms: stats(run, "run time")?,
        end_to_end_ms: stats(e2e, "end-to-end time")?,
        native_build_ms,
        native_run_ms,
    })
}

fn unavailable(why: impl Into<String>) -> Native {
    Native::Unavailable {
        unavailable: why.into(),
    }
}

/// Runs `cmd` to completion and returns its wall-clock time in ms; the
/// program must succeed and print the hello line.
fn time_checked(cmd: &mut Command, what: &str) -> anyhow::Result<f64> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let out = cmd.output().with_context(|| format!("starting {what}"))?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() || out.stdout != EXPECTED {
        bail!(
            "{what} did not print the hello line ({}): stdout {:?}, stderr {:?}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(ms)
}

/// Output of a short command, or why it could not run.
fn capture(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text.trim().to_owned())
    } else {
        Err(format!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            text.trim()
        ))
    }
}

fn sample(runs: usize, mut f: impl FnMut() -> anyhow::Result<f64>) -> Native {
    let mut v = Vec::with_capacity(runs);
    for _ in 0..runs {
        match f() {
            Ok(ms) => v.push(ms),
            Err(e) => return unavailable(format!("{e:#}")),
        }
    }
    Stats::of(v).map_or_else(|| unavailable("no runs"), Native::Measured)
}

type NativeResult = (Option<String>, Option<Native>, Native);

fn native_python(file: &Path, runs: usize) -> NativeResult {
    // Time the interpreter itself, not a wrapper (a pyenv shim, say) that
    // `python3` on PATH may be.
    let exe =
        match capture(Command::new("python3").args(["-c", "import sys; print(sys.executable)"])) {
            Ok(p) if !p.is_empty() => PathBuf::from(p),
            Ok(_) => return (None, None, unavailable("python3 has no sys.executable")),
            Err(e) => return (None, None, unavailable(format!("python3 not usable: {e}"))),
        };
    let version = capture(Command::new(&exe).arg("--version")).ok();
    let run = sample(runs, || {
        time_checked(Command::new(&exe).arg(file), "native python3")
    });
    (version, None, run)
}

fn native_go(file: &Path, dir: &Path, runs: usize) -> NativeResult {
    let version = match capture(Command::new("go").arg("version")) {
        Ok(v) => v,
        Err(e) => {
            let why = format!("go not usable: {e}");
            return (None, Some(unavailable(why.clone())), unavailable(why));
        }
    };
    let source = match std::fs::read_to_string(file) {
        Ok(s) => s,
        Err(e) => {
            let why = format!("{}: {e}", file.display());
            return (
                Some(version),
                Some(unavailable(why.clone())),
                unavailable(why),
            );
        }
    };
    let nanos = std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_nanos());
    // Like the image, whose build cache holds the standard library but never
    // the program: one untimed build warms the cache, then every timed build
    // gets a source of its own (a unique comment), so none is a cache hit.
    let build = |name: &str| -> anyhow::Result<(f64, PathBuf)> {
        let d = dir.join(name);
        std::fs::create_dir_all(&d)?;
        let src = d.join("hello.go");
        std::fs::write(&src, format!("{source}// {name} {nanos}\n"))?;
        let binary = d.join("hello");
        // The same flags and settings as the image's compile step.
        let mut cmd = Command::new("go");
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
    };
    if let Err(e) = build("warm-up") {
        let why = format!("{e:#}");
        return (
            Some(version),
            Some(unavailable(why.clone())),
            unavailable(why),
        );
    }
    let (mut n, mut binary) = (0, None);
    let builds = sample(runs, || {
        n += 1;
        let (ms, b) = build(&format!("build-{n}"))?;
        binary = Some(b);
        Ok(ms)
    });
    let run = match &binary {
        Some(b) => sample(runs, || {
            time_checked(&mut Command::new(b), "native go binary")
        }),
        None => unavailable("no native build"),
    };
    (Some(version), Some(builds), run)
}

/// A scratch directory for the programs, removed at the end.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create() -> anyhow::Result<WorkDir> {
        let dir = std::env::temp_dir().join(format!("ignis-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(WorkDir(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn print_table(r: &BenchReport) {
    println!(
        "ignis bench: hello world, {} run{} per measurement, driver {}, accel {} ({})",
        r.runs,
        if r.runs == 1 { "" } else { "s" },
        r.driver,
        r.accel,
        r.accel_reason
    );
    println!();
    println!(
        "{:<36} {:>10} {:>10} {:>10}",
        "milliseconds", "median", "min", "max"
    );
    for l in &r.languages {
        println!();
        let native = l.native_version.as_deref().unwrap_or("n/a");
        println!(
            "{} (VM: {}; host: {native})",
            l.language, l.vm_runtime_version
        );
        row("VM boot to ready", Some(&l.boot_to_ready_ms));
        if let Some(c) = &l.vm_compile_ms {
            row("compile inside the VM", Some(c));
        }
        row("run inside the VM", Some(&l.vm_run_ms));
        row("`ignis run` end to end", Some(&l.end_to_end_ms));
        if let Some(b) = &l.native_build_ms {
            native_row("native go build", b);
        }
        native_row("native run", &l.native_run_ms);
    }
}

fn native_row(label: &str, n: &Native) {
    match n {
        Native::Measured(s) => row(label, Some(s)),
        Native::Unavailable { unavailable } => {
            row(label, None);
            println!("    ({unavailable})");
        }
    }
}

fn row(label: &str, s: Option<&Stats>) {
    match s {
        Some(s) => println!(
            "  {label:<34} {:>10.1} {:>10.1} {:>10.1}",
            s.median, s.min, s.max
        ),
        None => println!("  {label:<34} {:>10} {:>10} {:>10}", "n/a", "n/a", "n/a"),
    }
}
