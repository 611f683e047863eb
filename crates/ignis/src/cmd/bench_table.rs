//! The table `ignis bench` prints: Markdown, one column per language, ready
//! to paste into a README, with the notes a reader needs beneath it.

use super::bench::{BenchReport, LanguageBench};
use super::bench_util::{Maybe, Stats};
use super::bench_vm::{IdleMemory, MemoryBench, VmSide, GROUP};

/// Milliseconds as a reader wants them: no false precision above 10 ms.
pub fn ms(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// "median (min–max)", or the median alone when every run agreed.
pub fn ms_cell(s: &Stats) -> String {
    if s.min == s.max {
        ms(s.median)
    } else {
        format!("{} ({}–{})", ms(s.median), ms(s.min), ms(s.max))
    }
}

pub fn ratio_cell(r: Option<f64>) -> String {
    r.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.1}×"))
}

pub fn maybe_cell(m: &Maybe<Stats>) -> String {
    match m {
        Maybe::Measured(s) => ms_cell(s),
        // Said as it is: the reader sees at once that nothing failed.
        Maybe::Unavailable { unavailable } if unavailable == "not installed" => unavailable.clone(),
        Maybe::Unavailable { .. } => "n/a".to_owned(),
    }
}

/// "PSS / RSS" medians in MiB.
fn memory_cell(m: &Maybe<MemoryBench>, pick: fn(&MemoryBench) -> &IdleMemory) -> String {
    match m.measured() {
        Some(b) => {
            let i = pick(b);
            format!("{:.1} / {:.0}", i.pss_mib.median, i.rss_mib.median)
        }
        None => "n/a".to_owned(),
    }
}

/// Prints rows as a Markdown table, columns padded to line up.
pub fn markdown(rows: &[Vec<String>]) {
    let Some(header) = rows.first() else {
        return;
    };
    let width = |c: usize| {
        rows.iter()
            .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..header.len()).map(width).collect();
    let line = |r: &[String]| {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (s, w))| match i {
                0 => format!("{s:<w$}"),
                _ => format!("{s:>w$}"),
            })
            .collect();
        println!("| {} |", cells.join(" | "));
    };
    line(header);
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(i, w)| match i {
            0 => "-".repeat(*w),
            _ => format!("{}:", "-".repeat(w.saturating_sub(1))),
        })
        .collect();
    println!("| {} |", rule.join(" | "));
    for r in &rows[1..] {
        line(r);
    }
}

/// One row: a label and a cell per language.
fn row(label: &str, ls: &[LanguageBench], cell: impl Fn(&LanguageBench) -> String) -> Vec<String> {
    std::iter::once(label.to_owned())
        .chain(ls.iter().map(cell))
        .collect()
}

pub fn print(r: &BenchReport) {
    let ls = &r.languages;
    println!(
        "ignis bench: hello world, {} run{} per measurement, driver {}, accel {} ({})",
        r.runs,
        if r.runs == 1 { "" } else { "s" },
        r.driver,
        r.accel,
        r.accel_reason
    );
    for l in ls {
        println!(
            "  {}: VM {}; host {}",
            l.language,
            l.vm_runtime_version,
            l.native.version.as_deref().unwrap_or("n/a")
        );
    }
    println!();
    markdown(&rows(r));
    println!();
    notes(r);
}

fn rows(r: &BenchReport) -> Vec<Vec<String>> {
    let ls = &r.languages;
    let compiled = ls.iter().any(|l| l.vm.booted.compile_ms.is_some());
    let opt = |s: &Option<Stats>| s.as_ref().map_or_else(|| "—".to_owned(), ms_cell);
    let mut rows = vec![row(
        &format!("ms, median (min–max) of {}", r.runs),
        ls,
        |l| l.language.clone(),
    )];
    rows.push(row("VM boot to ready", ls, |l| {
        ms_cell(&l.vm.booted.ready_ms)
    }));
    let base = ls.iter().any(|l| l.vm.baseline.is_some());
    let flat = |l: &LanguageBench, f: fn(&VmSide) -> String| {
        l.vm.baseline.as_ref().map_or_else(|| "—".to_owned(), f)
    };
    if base {
        rows.push(row(
            "VM boot to ready, flat ext4 image (--baseline)",
            ls,
            |l| flat(l, |s| ms_cell(&s.ready_ms)),
        ));
    }
    rows.push(row("VM restore to ready (snapshot)", ls, |l| {
        ms_cell(&l.vm.restored.ready_ms)
    }));
    rows.push(row("boot ÷ restore", ls, |l| {
        ratio_cell(l.vm.ready_speedup)
    }));
    if compiled {
        rows.push(row("compile inside a booted VM", ls, |l| {
            opt(&l.vm.booted.compile_ms)
        }));
        rows.push(row("compile inside a restored VM", ls, |l| {
            opt(&l.vm.restored.compile_ms)
        }));
        if base {
            rows.push(row(
                "compile inside a booted VM, flat ext4 image",
                ls,
                |l| {
                    flat(l, |s| {
                        s.compile_ms
                            .as_ref()
                            .map_or_else(|| "—".to_owned(), ms_cell)
                    })
                },
            ));
        }
    }
    rows.push(row("run inside a booted VM", ls, |l| {
        ms_cell(&l.vm.booted.run_ms)
    }));
    if base {
        rows.push(row("run inside a booted VM, flat ext4 image", ls, |l| {
            flat(l, |s| ms_cell(&s.run_ms))
        }));
    }
    rows.push(row("run inside a restored VM (its first)", ls, |l| {
        ms_cell(&l.vm.restored.run_ms)
    }));
    rows.push(row("`ignis run FILE` (restores)", ls, |l| {
        ms_cell(&l.end_to_end.snapshot_ms)
    }));
    rows.push(row("`ignis run --no-snapshot FILE` (boots)", ls, |l| {
        ms_cell(&l.end_to_end.no_snapshot_ms)
    }));
    rows.push(row("`--no-snapshot` ÷ default", ls, |l| {
        ratio_cell(l.end_to_end.speedup)
    }));
    if ls.iter().any(|l| l.native.build_ms.is_some()) {
        rows.push(row("native build on the host", ls, |l| {
            l.native
                .build_ms
                .as_ref()
                .map_or_else(|| "—".to_owned(), maybe_cell)
        }));
    }
    rows.push(row("native run on the host", ls, |l| {
        maybe_cell(&l.native.run_ms)
    }));
    rows.push(row("gVisor, cold `runsc do` of the native run", ls, |l| {
        maybe_cell(&l.gvisor.run_ms)
    }));
    let mib = |b: u64| format!("{:.1}", b as f64 / (1 << 20) as f64);
    rows.push(row(
        "image on disk, MiB: language layer + shared base",
        ls,
        |l| format!("{} + {}", mib(l.vm.layer_bytes), mib(l.vm.base_bytes)),
    ));
    if base {
        rows.push(row("flat ext4 image on disk, MiB (--baseline)", ls, |l| {
            l.vm.baseline_bytes.map_or_else(|| "—".to_owned(), mib)
        }));
    }
    rows.push(row("idle booted VM, PSS / RSS MiB", ls, |l| {
        memory_cell(&l.memory, |m| &m.booted)
    }));
    rows.push(row("idle restored VM, PSS / RSS MiB", ls, |l| {
        memory_cell(&l.memory, |m| &m.restored)
    }));
    rows.push(row(
        &format!("{GROUP} idle restored VMs, per VM PSS / RSS MiB"),
        ls,
        |l| memory_cell(&l.memory, |m| &m.restored_group),
    ));
    rows.push(row(
        &format!("{GROUP} pooled VMs (restored, warmed), per VM PSS / RSS MiB"),
        ls,
        |l| memory_cell(&l.memory, |m| &m.pooled_group),
    ));
    rows
}

fn notes(r: &BenchReport) {
    let ls = &r.languages;
    println!(
        "Memory: medians of the VMM's PSS / RSS (/proc/<pid>/smaps_rollup), read once the \
         VM is ready and its PSS settled (two readings 200 ms apart within 1 MiB, at most 5 s)."
    );
    for l in ls {
        let m = match &l.memory {
            Maybe::Measured(m) => m,
            Maybe::Unavailable { unavailable } => {
                println!("{}: memory not measured: {unavailable}", l.language);
                continue;
            }
        };
        println!(
            "{}: idle restored VM, PSS {:.1} MiB alone and {:.1} MiB each with {GROUP} alive \
             (QEMU's binary, libraries and the snapshot's untouched pages are shared); \
             {:.1} MiB each once warmed for a pool (the VMM's translated code).",
            l.language,
            m.restored.pss_mib.median,
            m.restored_group.pss_mib.median,
            m.pooled_group.pss_mib.median,
        );
        for (what, i) in [
            ("booted", &m.booted),
            ("restored", &m.restored),
            ("group", &m.restored_group),
            ("pooled", &m.pooled_group),
        ] {
            if i.settled_runs < r.runs {
                println!(
                    "{}: {what} VM memory settled in {} of {} runs (the rest: last reading)",
                    l.language, i.settled_runs, r.runs
                );
            }
        }
    }
    for l in ls {
        let (booted, restored) = (&l.vm.booted.run_ms, &l.vm.restored.run_ms);
        if restored.median > booted.median && r.accel == "tcg" {
            println!(
                "{}: the first run in a restored VM is slower than in a booted one ({} vs {} ms): \
                 under TCG, QEMU's translated-code cache is not part of a snapshot and starts empty.",
                l.language,
                ms(restored.median),
                ms(booted.median)
            );
        }
    }
    let runsc = ls.iter().find_map(|l| l.gvisor.version.as_deref());
    println!(
        "gVisor: `runsc --network=none --platform=ptrace do <native command>`, a fresh sandbox \
         each run, stdout to a pipe ({}); for compiled languages it runs the natively built \
         binary, like the native baseline.",
        runsc.unwrap_or("runsc not installed")
    );
    for l in ls {
        let mut unavailable = vec![
            ("native run", &l.native.run_ms),
            ("gVisor run", &l.gvisor.run_ms),
        ];
        if let Some(b) = &l.native.build_ms {
            unavailable.push(("native build", b));
        }
        for (what, m) in unavailable {
            if let Maybe::Unavailable { unavailable } = m {
                if unavailable != "not installed" {
                    println!("{}: {what} n/a: {unavailable}", l.language);
                }
            }
        }
    }
}
