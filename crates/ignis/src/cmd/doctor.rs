//! `ignis doctor`: what this host offers Ignis, part by part, and whether
//! Ignis can run jobs here. Exit 0 when it can; otherwise non-zero, with
//! the reasons.

use std::process::ExitCode;

use anyhow::Context;
use ignis_vmm::accel;
use ignis_vmm::driver::firecracker::Firecracker;
use ignis_vmm::driver::qemu::{resolve, Qemu};
use ignis_vmm::driver::Accel;
use ignis_vmm::image::Catalog;
use ignis_vmm::jail::{Containment, Jail, Layout};
use ignis_vmm::launcher::firecracker_usable;
use ignis_vmm::paths::Paths;
use ignis_vmm::snapshot::SnapshotStore;

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn main(_: Args) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(doctor())
}

fn line(what: &str, text: impl std::fmt::Display) {
    println!("{what:<12} {text}");
}

fn verdict<T>(r: &Result<T, String>, ok: impl FnOnce(&T) -> String) -> String {
    match r {
        Ok(t) => format!("yes ({})", ok(t)),
        Err(e) => format!("NO: {e}"),
    }
}

async fn doctor() -> anyhow::Result<ExitCode> {
    let paths = Paths::from_env();
    let mut blockers: Vec<String> = Vec::new();

    let catalog = Catalog::discover(&paths.images());
    match &catalog.kernel {
        Ok(k) => line("kernel", format!("{} ({})", k.path.display(), k.key)),
        Err(p) => {
            line("kernel", format!("MISSING: {}", p.problem));
            blockers.push("no guest kernel (run scripts/setup)".into());
        }
    }
    for (name, img) in &catalog.languages {
        line("image", format!("{name}: {}", img.manifest.version));
    }
    for p in &catalog.problems {
        line("image", format!("{}: UNUSABLE: {}", p.name, p.problem));
    }
    if catalog.languages.is_empty() {
        blockers.push("no usable language image (run scripts/setup)".into());
    }
    for (name, snap) in SnapshotStore::new(paths.snapshots()).list() {
        match snap {
            Ok(s) => line(
                "snapshot",
                format!("{name} ({}, {} MiB)", s.meta.driver, s.meta.memory_mib),
            ),
            Err(p) => line("snapshot", format!("{name}: UNUSABLE: {p}")),
        }
    }

    let (jail, report) = Jail::probe(&paths.home, &paths.runtime()).await;
    line(
        "jail user",
        verdict(&report.user, |(u, g)| format!("uid {u}, gid {g}")),
    );
    line(
        "jail cgroups",
        verdict(&report.cgroups, |l| match l {
            Layout::V2(root) => format!("v2 at {}", root.display()),
            Layout::V1(r) => format!(
                "v1: {}",
                r.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    );
    line(
        "jail trial",
        verdict(&report.trial, |_| {
            "namespaces, pivot_root, user and cgroup work".into()
        }),
    );
    let containment = match jail {
        Some(j) => Containment::Jailed(std::sync::Arc::new(j)),
        None => {
            blockers.push(format!(
                "the jail does not work here ({}); only --insecure-no-jail would run",
                report.problems().join("; ")
            ));
            Containment::Insecure
        }
    };

    let kvm = accel::kvm_device_answers();
    line("kvm device", verdict(&kvm, |_| "/dev/kvm answers".into()));
    let probe_image = catalog.languages.values().min_by_key(|l| l.total_bytes());
    let qemu_bin = resolve(std::path::Path::new("qemu-system-x86_64"));
    match &qemu_bin {
        Some(bin) => {
            let version = std::process::Command::new(bin)
                .arg("--version")
                .output()
                .ok()
                .and_then(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .next()
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| "version unknown".into());
            line(
                "qemu",
                format!("{} ({version}); usable with TCG", bin.display()),
            );
        }
        None => {
            line(
                "qemu",
                "NO: qemu-system-x86_64 not on PATH (apt-get install qemu-system-x86)",
            );
        }
    }
    if let (Ok(k), Some(_), Ok(())) = (catalog.kernel(), &qemu_bin, &kvm) {
        let qemu = Qemu::from_path(Accel::Kvm, containment.clone());
        let boots = accel::kvm_boots(&paths, k, probe_image, &qemu).await;
        line(
            "qemu + kvm",
            verdict(&boots, |ms| format!("a guest reached the agent in {ms} ms")),
        );
    }
    let fc = Firecracker::from_env(containment.clone());
    match &fc {
        Ok(f) => line(
            "firecracker",
            format!("found ({})", f.version().unwrap_or_else(|e| e)),
        ),
        Err(e) => line("firecracker", format!("NO: {e}")),
    }
    let fc_ok = match (catalog.kernel(), fc.is_ok()) {
        (Ok(k), true) => firecracker_usable(&paths, k, probe_image, &containment).await,
        _ => Err("not usable without its binary".into()),
    };
    line(
        "firecracker usable",
        verdict(&fc_ok, |(_, ms)| {
            format!("a KVM guest reached the agent in {ms} ms")
        }),
    );

    let chosen = if fc_ok.is_ok() {
        "firecracker (kvm)".to_owned()
    } else if let (Ok(k), Some(_)) = (catalog.kernel(), &qemu_bin) {
        let a = accel::choose(&paths, k, probe_image, &containment).await;
        format!("qemu ({}: {})", a.accel, a.reason)
    } else {
        blockers.push("no usable VMM: install qemu-system-x86".into());
        "none".into()
    };
    line("driver", format!("auto would use {chosen}"));

    if blockers.is_empty() {
        println!("ok: Ignis can run jobs on this host");
        Ok(ExitCode::SUCCESS)
    } else {
        for b in &blockers {
            println!("problem: {b}");
        }
        Ok(ExitCode::FAILURE)
    }
}
