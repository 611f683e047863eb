//! The QEMU `-M microvm` command line. Kept a pure function of its inputs so
//! that what we ask QEMU for is unit-tested without starting it.

use std::ffi::OsString;
use std::path::Path;

use serde::Serialize;

/// How the guest's CPU is provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Accel {
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's software emulation: slower, works everywhere.
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

#[derive(Debug, Clone)]
pub struct QemuConfig<'a> {
    pub kernel: &'a Path,
    pub rootfs: &'a Path,
    pub memory_mib: u64,
    pub accel: Accel,
    /// The host listens here; QEMU connects and carries the virtio-serial port.
    pub agent_socket: &'a Path,
    /// Host TSC frequency, passed to TCG guests so they skip calibration.
    pub tsc_khz: Option<u64>,
    /// Wall-clock time for the guest, which has no RTC driver.
    pub unix_time: u64,
}

/// QEMU's option syntax splits on commas; a literal comma is written twice.
fn opt_path(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

pub fn kernel_cmdline(cfg: &QemuConfig<'_>) -> String {
    let mut words = vec![
        "console=ttyS0".to_string(),
        "quiet".into(),
        "root=/dev/vda".into(),
        "ro".into(),
        "rootfstype=ext4".into(),
        "init=/sbin/ignis-agent".into(),
        // A panic, or the agent's deliberate reboot, ends the VM at once
        // (QEMU runs with -no-reboot).
        "panic=-1".into(),
        "reboot=t".into(),
        "ignis.channel=serial".into(),
        format!("ignis.time={}", cfg.unix_time),
    ];
    if cfg.accel == Accel::Tcg {
        // Without these, about one TCG boot in ten hangs calibrating the TSC.
        if let Some(khz) = cfg.tsc_khz {
            words.push(format!("tsc_early_khz={khz}"));
        }
        words.push("tsc=reliable".into());
    }
    words.join(" ")
}

pub fn qemu_args(cfg: &QemuConfig<'_>) -> Vec<OsString> {
    let accel = match cfg.accel {
        Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
        Accel::Tcg => ["-accel", "tcg", "-cpu", "qemu64"],
    };
    let mut args: Vec<String> = vec![
        "-M".into(),
        "microvm".into(),
        "-m".into(),
        cfg.memory_mib.to_string(),
        "-smp".into(),
        "1".into(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-nographic".into(),
        "-no-reboot".into(),
        // QEMU's own seccomp filter: no new processes, no privilege games.
        "-sandbox".into(),
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
    ];
    args.extend(accel.map(String::from));
    args.extend([
        "-kernel".into(),
        cfg.kernel.to_string_lossy().into_owned(),
        "-append".into(),
        kernel_cmdline(cfg),
        "-drive".into(),
        format!(
            "id=root,file={},format=raw,if=none,readonly=on",
            opt_path(cfg.rootfs)
        ),
        "-device".into(),
        "virtio-blk-device,drive=root".into(),
        "-device".into(),
        "virtio-rng-device".into(),
        "-device".into(),
        "virtio-serial-device,max_ports=2".into(),
        "-chardev".into(),
        format!("socket,id=agent,path={}", opt_path(cfg.agent_socket)),
        "-device".into(),
        format!(
            "virtserialport,chardev=agent,name={}",
            ignis_protocol::SERIAL_PORT_NAME
        ),
        "-serial".into(),
        "stdio".into(),
    ]);
    args.into_iter().map(OsString::from).collect()
}

/// The host's TSC frequency, from the kernel's own record of it.
pub fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(accel: Accel) -> QemuConfig<'static> {
        QemuConfig {
            kernel: Path::new("/k/vmlinux"),
            rootfs: Path::new("/images/we,ird/rootfs.ext4"),
            memory_mib: 512,
            accel,
            agent_socket: Path::new("/run/ignis/vm-1/agent.sock"),
            tsc_khz: Some(2_596_124),
            unix_time: 1_800_000_000,
        }
    }

    fn joined(c: &QemuConfig<'_>) -> String {
        qemu_args(c)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn tcg_gets_tsc_hints_and_no_nic() {
        let c = cfg(Accel::Tcg);
        let line = joined(&c);
        assert!(line.contains("-accel tcg"));
        assert!(line.contains("tsc_early_khz=2596124 tsc=reliable"));
        assert!(line.contains("readonly=on"));
        assert!(!line.contains("netdev") && !line.contains("-nic"));
        assert!(line.contains("-nodefaults"));
    }

    #[test]
    fn kvm_uses_host_cpu_without_tsc_hints() {
        let c = cfg(Accel::Kvm);
        let line = joined(&c);
        assert!(line.contains("-accel kvm -cpu host"));
        assert!(!line.contains("tsc_early_khz"));
    }

    #[test]
    fn commas_in_paths_are_escaped() {
        let line = joined(&cfg(Accel::Tcg));
        assert!(line.contains("file=/images/we,,ird/rootfs.ext4,format=raw"));
    }
}
