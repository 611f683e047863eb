//! The QEMU `-M microvm` command line: a pure function of its inputs, so
//! what we ask QEMU for is unit-tested without starting it.

use std::ffi::OsString;
use std::path::Path;

use super::TB_SIZE_MIB;
use crate::driver::{Accel, GuestMemory, GuestParams, MachineSpec, SnapshotFiles};

/// How the VMM starts.
#[derive(Debug, Clone, Copy)]
pub enum Mode<'a> {
    Boot(GuestMemory<'a>),
    Restore(SnapshotFiles<'a>),
}

/// Everything the command line depends on.
#[derive(Debug, Clone, Copy)]
pub struct QemuArgs<'a> {
    pub spec: &'a MachineSpec<'a>,
    pub accel: Accel,
    pub cpu: &'a str,
    pub mode: Mode<'a>,
    /// The host listens here; QEMU connects and carries the virtio-serial port.
    pub agent_socket: &'a Path,
    pub qmp_socket: Option<&'a Path>,
}

/// QEMU's option syntax splits on commas; a literal comma is written twice.
fn opt_path(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

pub fn kernel_cmdline(guest: &GuestParams, accel: Accel, drives: usize) -> String {
    let mut words = vec![
        "console=ttyS0".to_string(),
        "quiet".into(),
        // No rootfstype: the kernel finds the root's file system itself
        // (EROFS images, and the flat ext4 ones `ignis bench --baseline`
        // compares against).
        "root=/dev/vda".into(),
        "ro".into(),
        "init=/sbin/ignis-agent".into(),
        // A panic, or the agent's deliberate reboot, ends the VM at once
        // (QEMU runs with -no-reboot).
        "panic=-1".into(),
        "reboot=t".into(),
        "ignis.channel=serial".into(),
        format!("ignis.time={}", guest.unix_time),
        format!("ignis.vm={}", guest.vm_id),
    ];
    // The drives after the root, which the agent stacks over it.
    words.extend(crate::driver::layers_arg(drives));
    if accel == Accel::Tcg {
        // Without these, about one TCG boot in ten hangs calibrating the TSC.
        if let Some(khz) = guest.tsc_khz {
            words.push(format!("tsc_early_khz={khz}"));
        }
        words.push("tsc=reliable".into());
    }
    words.join(" ")
}

pub fn qemu_args(a: &QemuArgs<'_>) -> Vec<OsString> {
    let spec = a.spec;
    let memory_file = match a.mode {
        Mode::Boot(GuestMemory::Anonymous) => None,
        Mode::Boot(GuestMemory::SnapshotSource(file)) => Some((file.to_path_buf(), "on")),
        Mode::Restore(snap) => Some((snap.memory(), "off")),
    };
    let machine = match &memory_file {
        Some(_) => "microvm,memory-backend=mem",
        None => "microvm",
    };
    let mut args: Vec<String> = vec![
        "-M".into(),
        machine.into(),
        "-m".into(),
        format!("{}M", spec.memory_mib),
        "-smp".into(),
        "1".into(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-nographic".into(),
        "-no-reboot".into(),
        // QEMU's own seccomp filter: no new processes, no privilege games.
        "-sandbox".into(),
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
        "-accel".into(),
        match a.accel {
            Accel::Tcg => format!("tcg,tb-size={TB_SIZE_MIB}"),
            Accel::Kvm => "kvm".into(),
        },
        "-cpu".into(),
        a.cpu.into(),
    ];
    if let Some((file, share)) = &memory_file {
        args.extend([
            "-object".into(),
            format!(
                "memory-backend-file,id=mem,size={}M,mem-path={},share={share}",
                spec.memory_mib,
                opt_path(file)
            ),
        ]);
    }
    args.extend([
        "-kernel".into(),
        spec.kernel.to_string_lossy().into_owned(),
        "-append".into(),
        kernel_cmdline(spec.guest, a.accel, spec.drives.len()),
    ]);
    for (i, drive) in spec.drives.iter().enumerate() {
        args.extend([
            "-drive".into(),
            format!(
                "id=disk{i},file={},format=raw,if=none,readonly=on",
                opt_path(drive)
            ),
            "-device".into(),
            format!("virtio-blk-device,drive=disk{i}"),
        ]);
    }
    args.extend([
        "-device".into(),
        "virtio-rng-device".into(),
        // Pages the guest frees go back to the host while it runs.
        "-device".into(),
        "virtio-balloon-device,free-page-reporting=on".into(),
        "-device".into(),
        "virtio-serial-device,max_ports=2".into(),
        "-chardev".into(),
        format!("socket,id=agent,path={}", opt_path(a.agent_socket)),
        "-device".into(),
        format!(
            "virtserialport,chardev=agent,name={}",
            ignis_protocol::SERIAL_PORT_NAME
        ),
        "-serial".into(),
        "stdio".into(),
    ]);
    if let Some(qmp) = a.qmp_socket {
        args.extend([
            "-chardev".into(),
            format!("socket,id=qmp,path={}", opt_path(qmp)),
            "-mon".into(),
            "chardev=qmp,mode=control".into(),
        ]);
    }
    if let Mode::Restore(_) = a.mode {
        args.extend(["-incoming".into(), "defer".into()]);
    }
    args.into_iter().map(OsString::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn guest() -> GuestParams {
        GuestParams {
            vm_id: "0123456789ab".into(),
            unix_time: 1_800_000_000,
            tsc_khz: Some(2_596_124),
        }
    }

    fn line(accel: Accel, mode: Mode<'_>, qmp: Option<&Path>) -> String {
        let g = guest();
        let drives = [
            PathBuf::from("/images/base/bookworm-1.erofs"),
            PathBuf::from("/images/we,ird/layer.erofs"),
        ];
        let spec = MachineSpec {
            dir: Path::new("/run/ignis/vm-1"),
            kernel: Path::new("/k/vmlinux"),
            drives: &drives,
            memory_mib: 512,
            guest: &g,
        };
        qemu_args(&QemuArgs {
            spec: &spec,
            accel,
            cpu: if accel == Accel::Kvm {
                "host"
            } else {
                super::super::TCG_CPU
            },
            mode,
            agent_socket: Path::new("/run/ignis/vm-1/agent.sock"),
            qmp_socket: qmp,
        })
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
    }

    #[test]
    fn tcg_gets_tsc_hints_and_no_nic() {
        let l = line(Accel::Tcg, Mode::Boot(GuestMemory::Anonymous), None);
        assert!(l.contains("-accel tcg,tb-size=256 -cpu qemu64,+arat "));
        assert!(l.contains("tsc_early_khz=2596124 tsc=reliable"));
        assert!(l.contains("ignis.vm=0123456789ab"));
        assert!(l.contains("readonly=on"));
        assert!(!l.contains("netdev") && !l.contains("-nic"));
        assert!(l.contains("-nodefaults"));
        assert!(!l.contains("memory-backend") && !l.contains("-incoming"));
        assert!(!l.contains("-mon"), "only a snapshot source has a monitor");
    }

    #[test]
    fn kvm_uses_host_cpu_without_tsc_hints() {
        let l = line(Accel::Kvm, Mode::Boot(GuestMemory::Anonymous), None);
        assert!(l.contains("-accel kvm -cpu host"));
        assert!(!l.contains("tsc_early_khz"));
    }

    #[test]
    fn commas_in_paths_are_escaped() {
        let l = line(Accel::Tcg, Mode::Boot(GuestMemory::Anonymous), None);
        assert!(l.contains("file=/images/we,,ird/layer.erofs,format=raw"));
    }

    #[test]
    fn the_base_is_the_root_and_the_layer_is_named_to_the_agent() {
        let l = line(Accel::Tcg, Mode::Boot(GuestMemory::Anonymous), None);
        let base =
            l.find("id=disk0,file=/images/base/bookworm-1.erofs,format=raw,if=none,readonly=on");
        let layer =
            l.find("id=disk1,file=/images/we,,ird/layer.erofs,format=raw,if=none,readonly=on");
        assert!(base.is_some() && layer.is_some() && base < layer, "{l}");
        assert!(l.contains("root=/dev/vda ro"), "{l}");
        assert!(l.contains("ignis.layers=vdb"), "{l}");
    }

    #[test]
    fn a_snapshot_source_shares_its_ram_file_and_has_a_monitor() {
        let l = line(
            Accel::Tcg,
            Mode::Boot(GuestMemory::SnapshotSource(Path::new("/s/tmp/memory"))),
            Some(Path::new("/run/ignis/vm-1/qmp.sock")),
        );
        assert!(l.contains("-M microvm,memory-backend=mem"));
        assert!(l.contains("memory-backend-file,id=mem,size=512M,mem-path=/s/tmp/memory,share=on"));
        assert!(l.contains("-mon chardev=qmp,mode=control"));
        assert!(!l.contains("-incoming"));
    }

    #[test]
    fn a_restore_maps_the_ram_file_privately_and_reads_state_from_fd_3() {
        let l = line(
            Accel::Tcg,
            Mode::Restore(SnapshotFiles {
                dir: Path::new("/s/python-abc"),
            }),
            Some(Path::new("/run/ignis/vm-1/qmp.sock")),
        );
        assert!(l.contains("mem-path=/s/python-abc/memory,share=off"));
        assert!(l.contains("-incoming defer"));
        assert!(l.contains("-mon chardev=qmp,mode=control"));
    }

    #[test]
    fn source_and_restore_have_the_same_devices() {
        let devices = |l: String| {
            l.split(" -device ")
                .skip(1)
                .map(|d| d.split(' ').next().unwrap_or_default().to_owned())
                .collect::<Vec<_>>()
        };
        let source = line(
            Accel::Tcg,
            Mode::Boot(GuestMemory::SnapshotSource(Path::new("/s/memory"))),
            Some(Path::new("/q")),
        );
        let restore = line(
            Accel::Tcg,
            Mode::Restore(SnapshotFiles {
                dir: Path::new("/s"),
            }),
            Some(Path::new("/q")),
        );
        assert_eq!(devices(source), devices(restore));
    }
}
