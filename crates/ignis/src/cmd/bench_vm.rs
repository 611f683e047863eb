//! The VM side of `ignis bench`: booted and restored VMs side by side, how
//! long each takes to be ready, how long the hello world then takes inside
//! it as the agent measured it, and what an idle one costs the host.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ignis_protocol::{File, Limits, RunRequest, Verdict};
use ignis_vmm::image::LanguageImage;
use ignis_vmm::report;
use ignis_vmm::{HostMemory, Launcher, Vm};
use serde::Serialize;

use super::bench::Hello;
use super::bench_util::{speedup, Stats, EXPECTED};

/// How a VM comes to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Booted,
    Restored,
}

impl Origin {
    fn name(self) -> &'static str {
        match self {
            Origin::Booted => "booted",
            Origin::Restored => "restored",
        }
    }
}

/// The kinds of VM [`timings`] measures, in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Booted,
    Restored,
    Baseline,
}

/// `kinds` started at index `by` (modulo its length), wrapping round.
fn rotated(kinds: &[Kind], by: usize) -> Vec<Kind> {
    let n = kinds.len().max(1);
    let mut v = kinds.to_vec();
    v.rotate_left(by % n);
    v
}

/// A ready VM of `language` that really came to be the way `origin` says:
/// a restore that fell back to a boot would pass a boot off as a restore.
pub async fn start(launcher: &Launcher, language: &str, origin: Origin) -> anyhow::Result<Vm> {
    let vm = match origin {
        Origin::Booted => launcher.boot(language).await,
        Origin::Restored => launcher.start(language).await,
    }
    .with_context(|| format!("starting a {} {language} VM", origin.name()))?;
    if vm.info().restored != (origin == Origin::Restored) {
        vm.destroy().await;
        bail!("a {language} restore fell back to a boot (the log above says why)");
    }
    Ok(vm)
}

/// VMs of one origin: ready, then the hello world inside.
#[derive(Debug, Serialize)]
pub struct VmSide {
    /// From starting the VMM to a guest ready for a run, host-measured.
    pub ready_ms: Stats,
    /// The compile step inside the VM (compiled languages only).
    pub compile_ms: Option<Stats>,
    /// The program's run inside the VM, as the agent measured it.
    pub run_ms: Stats,
}

#[derive(Debug, Serialize)]
pub struct VmTimings {
    pub booted: VmSide,
    pub restored: VmSide,
    /// Booted VMs of the flat image given by `--baseline`, in the same run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<VmSide>,
    /// Its size on disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_bytes: Option<u64>,
    /// The current image's size on disk: its layer, and the shared base
    /// every language's VM also reads.
    pub layer_bytes: u64,
    pub base_bytes: u64,
    /// Boot-to-ready over restore-to-ready, by medians.
    pub ready_speedup: Option<f64>,
    /// What the runtime in the image says of its version (shown once, by
    /// the language's report).
    #[serde(skip)]
    pub runtime_version: String,
}

#[derive(Default)]
struct Samples {
    ready: Vec<f64>,
    compile: Vec<f64>,
    run: Vec<f64>,
}

impl Samples {
    /// Runs the hello world in `vm` and keeps its timings.
    async fn measure(&mut self, vm: Vm, h: &Hello, kind: &str) -> anyhow::Result<()> {
        self.ready.push(vm.info().ready_ms as f64);
        let r = report::execute(vm, hello_request(h), |_| {}).await;
        check_hello(h, kind, &r)?;
        self.run.push(r.duration_ms as f64);
        if let Some(c) = r.compile_ms {
            self.compile.push(c as f64);
        }
        Ok(())
    }

    fn into_side(self, kind: &str) -> anyhow::Result<VmSide> {
        let what = |m: &str| format!("{m} of a {kind} VM");
        Ok(VmSide {
            ready_ms: Stats::required(self.ready, &what("ready time"))?,
            compile_ms: Stats::of(self.compile),
            run_ms: Stats::required(self.run, &what("run time"))?,
        })
    }
}

/// `runs` booted and `runs` restored VMs (and, with a `baseline` flat
/// image, `runs` booted ones of it). The order of the kinds rotates from one
/// round to the next, so that whatever a VM leaves behind for the next one
/// (its memory being handed back, a busy core) falls on every kind alike:
/// with a fixed order the VM that always came after a booted one was
/// measured up to 20 % slower. The snapshot must exist already.
pub async fn timings(
    launcher: &Launcher,
    h: &Hello,
    baseline: Option<&LanguageImage>,
    runs: usize,
) -> anyhow::Result<VmTimings> {
    let (mut booted, mut restored) = (Samples::default(), Samples::default());
    let mut flat = Samples::default();
    let mut runtime_version = String::new();
    let language = h.language.as_str();
    let image = launcher.catalog.language(language)?;
    let mut kinds = vec![Kind::Booted, Kind::Restored];
    if baseline.is_some() {
        kinds.push(Kind::Baseline);
    }
    for i in 1..=runs {
        for kind in rotated(&kinds, i - 1) {
            let (vm, samples, what) = match kind {
                Kind::Booted | Kind::Restored => {
                    let (origin, samples) = match kind {
                        Kind::Booted => (Origin::Booted, &mut booted),
                        _ => (Origin::Restored, &mut restored),
                    };
                    eprintln!("bench: {language} in a {} VM, {i}/{runs}", origin.name());
                    let vm = start(launcher, language, origin).await?;
                    runtime_version.clone_from(&vm.info().runtime_version);
                    (vm, samples, origin.name())
                }
                Kind::Baseline => {
                    // `kinds` holds Baseline only when there is an image.
                    let Some(image) = baseline else { continue };
                    eprintln!("bench: {language} in a booted VM of the baseline image, {i}/{runs}");
                    let cfg = flat_config(launcher, image);
                    let vm = Vm::start(&*launcher.driver, &cfg, ignis_vmm::Origin::Boot)
                        .await
                        .with_context(|| format!("booting the {language} baseline image"))?;
                    (vm, &mut flat, "baseline")
                }
            };
            samples.measure(vm, h, what).await?;
        }
    }
    let booted = booted.into_side(Origin::Booted.name())?;
    let restored = restored.into_side(Origin::Restored.name())?;
    let baseline_side = match baseline {
        Some(_) => Some(flat.into_side("baseline")?),
        None => None,
    };
    Ok(VmTimings {
        ready_speedup: speedup(&booted.ready_ms, &restored.ready_ms),
        booted,
        restored,
        baseline: baseline_side,
        baseline_bytes: baseline.map(|b| b.base.manifest.bytes),
        layer_bytes: image.manifest.layer_bytes,
        base_bytes: image.base.manifest.bytes,
        runtime_version,
    })
}

/// A VM configuration for the flat image, like the launcher's own.
fn flat_config(launcher: &Launcher, image: &LanguageImage) -> ignis_vmm::VmConfig {
    let mut cfg = ignis_vmm::VmConfig::new(launcher.kernel.clone(), image.clone(), &launcher.paths);
    cfg.boot_timeout = launcher.boot_timeout;
    cfg
}

pub fn hello_request(h: &Hello) -> RunRequest {
    RunRequest {
        files: vec![File {
            name: h.file.clone(),
            content: h.source.as_bytes().to_vec(),
        }],
        stdin: Vec::new(),
        args: Vec::new(),
        env: Default::default(),
        limits: Limits::default(),
    }
}

fn check_hello(h: &Hello, kind: &str, r: &report::RunReport) -> anyhow::Result<()> {
    if r.status == Verdict::Ok && r.stdout == EXPECTED {
        return Ok(());
    }
    bail!(
        "{} hello world in a {} VM did not work: status {}, stdout {:?}, stderr {:?}{}",
        h.language,
        kind,
        r.status,
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr),
        r.message
            .as_ref()
            .map(|m| format!(", {m}"))
            .unwrap_or_default()
    )
}

/// Restored VMs alive at once for the shared-memory figure.
pub const GROUP: usize = 4;

/// What idle VMs cost the host, per VM, in MiB (`/proc/<vmm>/smaps_rollup`).
#[derive(Debug, Serialize)]
pub struct IdleMemory {
    /// VMs alive at once; the figures are means over them.
    pub vms: usize,
    pub pss_mib: Stats,
    pub rss_mib: Stats,
    pub pss_anon_mib: Stats,
    pub pss_file_mib: Stats,
    /// Of the runs, how many settled (two readings 200 ms apart within
    /// 1 MiB) before the bound; the others give their last reading.
    pub settled_runs: usize,
}

#[derive(Debug, Serialize)]
pub struct MemoryBench {
    pub booted: IdleMemory,
    pub restored: IdleMemory,
    /// [`GROUP`] restored VMs idle at once: shared snapshot pages count
    /// 1/N in each, so the mean PSS drops.
    pub restored_group: IdleMemory,
    /// The same VMs once warmed, as `ignis serve` keeps them in a pool.
    pub pooled_group: IdleMemory,
}

/// Reading idle VMs: how often, how close two readings must be, how long
/// at most (a guest still settling after that is reported as it is).
const SETTLE_EVERY: Duration = Duration::from_millis(200);
const SETTLE_WITHIN_KIB: u64 = 1024;
const SETTLE_BOUND: Duration = Duration::from_secs(5);

/// The VMs' memory once it stopped moving: read every [`SETTLE_EVERY`]
/// until every VM's PSS agrees with its previous reading within 1 MiB, or
/// [`SETTLE_BOUND`] passed. Returns the mean per VM and whether it settled.
async fn settled(vms: &[Vm]) -> anyhow::Result<(Mean, bool)> {
    let read = || -> anyhow::Result<Vec<HostMemory>> {
        vms.iter()
            .map(|vm| {
                vm.host_memory()
                    .with_context(|| format!("reading the memory of VM {}", vm.info().id))
            })
            .collect()
    };
    let deadline = Instant::now() + SETTLE_BOUND;
    let mut last = read()?;
    loop {
        tokio::time::sleep(SETTLE_EVERY).await;
        let now = read()?;
        let stable = last
            .iter()
            .zip(&now)
            .all(|(a, b)| a.pss_kib.abs_diff(b.pss_kib) <= SETTLE_WITHIN_KIB);
        if stable || Instant::now() >= deadline {
            return Ok((Mean::of(&now), stable));
        }
        last = now;
    }
}

/// Mean memory per VM, in MiB.
#[derive(Debug, Clone, Copy)]
struct Mean {
    pss: f64,
    rss: f64,
    anon: f64,
    file: f64,
}

impl Mean {
    fn of(m: &[HostMemory]) -> Mean {
        let n = m.len().max(1) as f64 * 1024.0;
        let sum = |f: fn(&HostMemory) -> u64| m.iter().map(f).sum::<u64>() as f64 / n;
        Mean {
            pss: sum(|m| m.pss_kib),
            rss: sum(|m| m.rss_kib),
            anon: sum(|m| m.pss_anon_kib),
            file: sum(|m| m.pss_file_kib),
        }
    }
}

/// Settled readings of one kind of idle VM over the runs.
#[derive(Default)]
struct Readings(Vec<(Mean, bool)>);

impl Readings {
    fn into_idle(self, vms: usize) -> anyhow::Result<IdleMemory> {
        let col = |f: fn(&Mean) -> f64| self.0.iter().map(|(m, _)| f(m)).collect::<Vec<_>>();
        Ok(IdleMemory {
            vms,
            pss_mib: Stats::required(col(|m| m.pss), "PSS")?,
            rss_mib: Stats::required(col(|m| m.rss), "RSS")?,
            pss_anon_mib: Stats::required(col(|m| m.anon), "anonymous PSS")?,
            pss_file_mib: Stats::required(col(|m| m.file), "file PSS")?,
            settled_runs: self.0.iter().filter(|(_, s)| *s).count(),
        })
    }
}

/// Per run: an idle booted VM alone; an idle restored VM alone; then
/// [`GROUP`] idle restored VMs at once (the first one and more beside it).
/// Separate from [`timings`] so that waiting for memory to settle never
/// delays a timed run.
pub async fn memory(
    launcher: &Launcher,
    language: &str,
    runs: usize,
) -> anyhow::Result<MemoryBench> {
    let (mut booted, mut alone, mut group, mut pooled) = (
        Readings::default(),
        Readings::default(),
        Readings::default(),
        Readings::default(),
    );
    for i in 1..=runs {
        eprintln!("bench: {language} idle VM memory, {i}/{runs}");
        // On an error the VMs are dropped, which kills them.
        let vm = start(launcher, language, Origin::Booted).await?;
        booted.0.push(settled(std::slice::from_ref(&vm)).await?);
        vm.destroy().await;

        let mut vms = vec![start(launcher, language, Origin::Restored).await?];
        alone.0.push(settled(&vms).await?);
        while vms.len() < GROUP {
            vms.push(start(launcher, language, Origin::Restored).await?);
        }
        group.0.push(settled(&vms).await?);
        // As `ignis serve` pools them: warmed after the restore, which
        // fills the VMM's translated-code cache.
        for vm in &mut vms {
            vm.warm(Duration::from_secs(60))
                .await
                .context("warming a restored VM")?;
        }
        pooled.0.push(settled(&vms).await?);
        for vm in vms {
            vm.destroy().await;
        }
    }
    let restored = alone.into_idle(1)?;
    let restored_group = group.into_idle(GROUP)?;
    Ok(MemoryBench {
        booted: booted.into_idle(1)?,
        restored,
        restored_group,
        pooled_group: pooled.into_idle(GROUP)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_takes_every_place_in_turn() {
        let kinds = [Kind::Booted, Kind::Restored, Kind::Baseline];
        let rounds: Vec<_> = (0..3).map(|i| rotated(&kinds, i)).collect();
        for place in 0..3 {
            let seen: Vec<_> = rounds.iter().map(|r| r[place]).collect();
            for k in kinds {
                assert!(
                    seen.contains(&k),
                    "{k:?} never in place {place}: {rounds:?}"
                );
            }
        }
        assert_eq!(rotated(&kinds, 3), kinds);
        assert!(rotated(&[], 2).is_empty());
    }
}
