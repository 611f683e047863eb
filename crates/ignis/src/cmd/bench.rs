//! `ignis bench`: what a hello world costs in a microVM, booted and
//! restored from its language's snapshot side by side, beside the same
//! program run natively on the host and in a gVisor sandbox.
//!
//! For every language with an image (of those Ignis has a hello world for)
//! it measures, over `--runs` runs:
//! - boot to the agent's Ready and restore to Ready, and their ratio;
//! - the run (and the compile) inside a booted and inside a restored VM, as
//!   the agent timed them — a restored guest's first run may be slower
//!   (under TCG its translated-code cache starts cold), and the table says so;
//! - a whole `ignis run FILE` as a subprocess by the wall clock, restoring
//!   (the default) and booting (`--no-snapshot`);
//! - what an idle VM costs the host (PSS and RSS of its VMM), booted,
//!   restored alone, and restored beside others that share its pages;
//! - the native run on the host and a cold `runsc do` of the same command.
//!
//! `--api` measures the service instead (see `bench_api`), `--distributed`
//! the multi-process set-up beside `ignis serve` (see `bench_dist`).

use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context};
use ignis_vmm::paths::Paths;
use ignis_vmm::Launcher;
use serde::Serialize;

use super::bench_native::{self as native, Gvisor, Native};
use super::bench_util::{speedup, time_checked, Maybe, Stats, WorkDir};
use super::bench_vm::{self as vm, MemoryBench, VmTimings};

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
    /// the warm pool full, and with no pool restoring or booting every VM.
    #[arg(long)]
    pub api: bool,
    /// Measure the distributed mode instead: a throw-away nats-server and
    /// PostgreSQL, `ignis api` and `ignis worker` processes, beside
    /// `ignis serve` (see `bench_dist`).
    #[arg(long)]
    pub distributed: bool,
    /// Concurrent clients (with --api or --distributed).
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// An image directory of flat images as Ignis built them before (one
    /// uncompressed ext4 root per language): boot them beside the current
    /// images, alternating, and show both.
    #[arg(long)]
    pub baseline: Option<std::path::PathBuf>,
    /// Jobs submitted in all, per scenario (with --api or --distributed).
    #[arg(long, default_value_t = 40)]
    pub jobs: usize,
}

/// A language to benchmark, as its image's recipe describes it: the hello
/// world of its conformance programs, and how the host runs it natively.
#[derive(Debug, Clone)]
pub struct Hello {
    pub language: String,
    /// The recipe's `source_file`: the name a program is given.
    pub file: String,
    pub source: String,
    pub native: Option<ignis_protocol::Native>,
}

impl Hello {
    pub fn of(image: &ignis_vmm::image::LanguageImage) -> Hello {
        let r = &image.manifest.recipe;
        Hello {
            language: image.name().to_owned(),
            file: r.source_file.clone(),
            source: r.conformance.hello.clone(),
            native: r.native.clone(),
        }
    }
}

/// The snapshot every restored VM of a language comes from.
#[derive(Debug, Serialize)]
pub struct SnapshotInfo {
    /// Boot-to-ready of the VM it was saved from.
    pub source_ready_ms: u64,
    /// The guest's memory size.
    pub memory_mib: u64,
}

/// A whole `ignis run FILE`, restoring and booting.
#[derive(Debug, Serialize)]
pub struct EndToEnd {
    /// `ignis run FILE` (restores from the snapshot).
    pub snapshot_ms: Stats,
    /// `ignis run --no-snapshot FILE` (boots).
    pub no_snapshot_ms: Stats,
    /// `--no-snapshot` over the default, by medians.
    pub speedup: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct LanguageBench {
    pub language: String,
    /// What the runtime in the image says of its version.
    pub vm_runtime_version: String,
    pub snapshot: SnapshotInfo,
    pub vm: VmTimings,
    pub end_to_end: EndToEnd,
    pub memory: Maybe<MemoryBench>,
    pub native: Native,
    /// The native command in a cold gVisor sandbox.
    pub gvisor: Gvisor,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub runs: usize,
    pub driver: &'static str,
    pub accel: String,
    pub accel_reason: String,
    pub languages: Vec<LanguageBench>,
}

pub fn main(a: Args) -> anyhow::Result<ExitCode> {
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let launcher = rt.block_on(Launcher::new(Paths::from_env()))?;
    if a.distributed {
        // One language for the whole cluster: the first asked for, else
        // python; its hello world comes from its recipe like any other.
        let language = a.languages.first().map_or("python", String::as_str);
        let hello = Hello::of(launcher.catalog.language(language)?);
        super::bench_dist::main(&rt, &a, &hello)?;
        return Ok(ExitCode::SUCCESS);
    }
    let hellos = chosen(&a, &launcher)?;
    let work = WorkDir::create()?;
    if a.api {
        let hellos: Vec<&Hello> = hellos.iter().collect();
        super::bench_api::main(&rt, &launcher, &a, &hellos, work.path())?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut languages = Vec::new();
    for h in &hellos {
        languages.push(bench_language(&rt, &launcher, h, work.path(), &a)?);
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
        super::bench_table::print(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// The languages asked for (every one with an image by default), as their
/// recipes describe them. One asked for by name must have a usable image.
fn chosen(a: &Args, launcher: &Launcher) -> anyhow::Result<Vec<Hello>> {
    let catalog = &launcher.catalog;
    let hellos: Vec<Hello> = if a.languages.is_empty() {
        catalog.languages.values().map(Hello::of).collect()
    } else {
        a.languages
            .iter()
            .map(|l| catalog.language(l).map(Hello::of))
            .collect::<Result<_, _>>()?
    };
    if hellos.is_empty() {
        bail!(
            "no image to benchmark in {} (run scripts/setup)",
            launcher.paths.images().display()
        );
    }
    Ok(hellos)
}

/// Writes the hello world of `h` into its own directory under `work`.
pub fn write_hello(h: &Hello, work: &Path) -> anyhow::Result<std::path::PathBuf> {
    let dir = work.join(&h.language);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join(&h.file);
    std::fs::write(&file, &h.source).with_context(|| format!("writing {}", file.display()))?;
    Ok(file)
}

fn bench_language(
    rt: &tokio::runtime::Runtime,
    launcher: &Launcher,
    h: &Hello,
    work: &Path,
    a: &Args,
) -> anyhow::Result<LanguageBench> {
    let runs = a.runs;
    let file = write_hello(h, work)?;
    let dir = file.parent().unwrap_or(work);
    let language = h.language.as_str();

    // Made now if missing, so that no timed restore pays for making it.
    eprintln!("bench: {language} snapshot");
    let snap = rt
        .block_on(launcher.snapshot(language))
        .with_context(|| format!("the {language} snapshot"))?;
    let snapshot = SnapshotInfo {
        source_ready_ms: snap.meta.source_ready_ms,
        memory_mib: snap.meta.memory_mib,
    };

    let baseline = match &a.baseline {
        None => None,
        Some(d) => {
            let current = launcher.catalog.language(language)?;
            match ignis_vmm::image::flat::load(d, current) {
                Ok(img) => Some(img),
                Err(e) => {
                    eprintln!("bench: no {language} baseline: {e}");
                    None
                }
            }
        }
    };
    let vm = rt.block_on(vm::timings(launcher, h, baseline.as_ref(), runs))?;
    let end_to_end = end_to_end(h, &file, runs)?;
    let memory = Maybe::from_result(rt.block_on(vm::memory(launcher, language, runs)));

    eprintln!("bench: {language} natively");
    let native = native::measure(h.native.as_ref(), &file, dir, runs);
    eprintln!("bench: {language} in gVisor");
    let gvisor = native::gvisor(&native, runs);
    Ok(LanguageBench {
        language: language.to_owned(),
        vm_runtime_version: vm.runtime_version.clone(),
        snapshot,
        vm,
        end_to_end,
        memory,
        native,
        gvisor,
    })
}

/// `ignis run FILE` and `ignis run --no-snapshot FILE` as subprocesses,
/// alternating, stdout to a pipe, timed by the wall clock.
fn end_to_end(h: &Hello, file: &Path, runs: usize) -> anyhow::Result<EndToEnd> {
    let exe = std::env::current_exe().context("finding the ignis executable")?;
    let (mut restored, mut booted) = (Vec::new(), Vec::new());
    for i in 1..=runs {
        eprintln!("bench: {} via `ignis run`, {i}/{runs}", h.language);
        let mut cmd = Command::new(&exe);
        cmd.arg("run").arg(file);
        restored.push(time_checked(&mut cmd, "ignis run")?);
        let mut cmd = Command::new(&exe);
        cmd.args(["run", "--no-snapshot"]).arg(file);
        booted.push(time_checked(&mut cmd, "ignis run --no-snapshot")?);
    }
    let snapshot_ms = Stats::required(restored, "`ignis run` time")?;
    let no_snapshot_ms = Stats::required(booted, "`ignis run --no-snapshot` time")?;
    Ok(EndToEnd {
        speedup: speedup(&no_snapshot_ms, &snapshot_ms),
        snapshot_ms,
        no_snapshot_ms,
    })
}
