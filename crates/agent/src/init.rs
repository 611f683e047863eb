//! Guest set-up done once by PID 1, before anything else runs.

use std::io;

use crate::sys;

/// The base image is mounted read-only by the kernel as the root; the
/// language's layer (and any others, named by `ignis.layers=vdb,...` on the
/// kernel command line, lowest first) is mounted read-only and stacked above
/// it. Everything written in the guest lands in a tmpfs overlay on top, so
/// no VM ever copies or changes an image, and every VM starts from the same
/// bytes. Every mount but `/dev` is `nosuid,nodev`.
pub fn setup() -> io::Result<()> {
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    sys::mount(
        "proc",
        "/proc",
        Some("proc"),
        nosuid_nodev | libc::MS_NOEXEC,
        "",
    )?;
    // The kernel mounts devtmpfs itself when CONFIG_DEVTMPFS_MOUNT is set.
    match sys::mount("devtmpfs", "/dev", Some("devtmpfs"), libc::MS_NOSUID, "") {
        Err(e) if e.raw_os_error() != Some(libc::EBUSY) => return Err(e),
        _ => {}
    }
    sys::mount(
        "sysfs",
        "/sys",
        Some("sysfs"),
        nosuid_nodev | libc::MS_NOEXEC,
        "",
    )?;

    sys::mount(
        "tmpfs",
        "/overlay",
        Some("tmpfs"),
        nosuid_nodev,
        "mode=0755",
    )?;
    for d in ["/overlay/upper", "/overlay/work", "/overlay/root"] {
        std::fs::create_dir(d)?;
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline")?;
    let mut lowers = vec!["/".to_string()];
    let disks = layers(&cmdline)?;
    for (i, disk) in disks.iter().enumerate() {
        let dir = format!("/overlay/layer{i}");
        std::fs::create_dir(&dir)?;
        sys::mount(
            &format!("/dev/{disk}"),
            &dir,
            Some("erofs"),
            libc::MS_RDONLY | nosuid_nodev,
            "",
        )
        .map_err(|e| io::Error::new(e.kind(), format!("mounting layer /dev/{disk}: {e}")))?;
        lowers.insert(0, dir);
    }
    // The root every program sees: no set-id file and no device node on it
    // takes effect (images carry none; this holds should one slip in).
    sys::mount(
        "overlay",
        "/overlay/root",
        Some("overlay"),
        nosuid_nodev,
        &format!(
            "lowerdir={},upperdir=/overlay/upper,workdir=/overlay/work",
            lowers.join(":")
        ),
    )?;
    for m in ["/proc", "/dev", "/sys"] {
        sys::mount(m, &format!("/overlay/root{m}"), None, libc::MS_MOVE, "")?;
    }
    std::env::set_current_dir("/overlay/root")?;
    sys::pivot_to_cwd()?;

    sys::mount(
        "cgroup2",
        "/sys/fs/cgroup",
        Some("cgroup2"),
        nosuid_nodev | libc::MS_NOEXEC,
        "",
    )?;
    std::fs::create_dir_all("/dev/shm")?;
    sys::mount(
        "tmpfs",
        "/dev/shm",
        Some("tmpfs"),
        nosuid_nodev,
        "mode=1777",
    )?;
    crate::cgroup::init_root()?;
    set_identity_from_cmdline();
    restrict_kernel_info();
    // No image this guest can see holds a set-id file: the host walked
    // every drive before it started the VM (`image::erofs::check_drives`),
    // which costs it milliseconds where a walk in here cost the boot a
    // tenth of a second under TCG.
    if let Err(e) = sys::loopback_up() {
        crate::log(&format!("loopback stays down: {e}"));
    }
    Ok(())
}

/// The disks to stack over the root, lowest first, from
/// `ignis.layers=vdb,vdc`. A name that is not a plain `vdX` is refused.
pub fn layers(cmdline: &str) -> io::Result<Vec<String>> {
    let Some(list) = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ignis.layers="))
    else {
        return Ok(Vec::new());
    };
    list.split(',')
        .map(|d| {
            let ok = d.len() == 3 && d.starts_with("vd") && d.as_bytes()[2].is_ascii_lowercase();
            if ok {
                Ok(d.to_owned())
            } else {
                Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("ignis.layers: {d:?} is not a virtio disk"),
                ))
            }
        })
        .collect()
}

/// The guest has no RTC driver; the host passes its wall clock on the kernel
/// command line (`ignis.time=<unix seconds>`) so programs see the real date,
/// and the VM's id (`ignis.vm=<id>`), which becomes the host name.
fn set_identity_from_cmdline() {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let param = |name: &str| {
        cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
    };
    if let Some(secs) = param("ignis.time").and_then(|v| v.parse::<u64>().ok()) {
        if let Err(e) = sys::set_realtime_ms(secs.saturating_mul(1000)) {
            crate::log(&format!("cannot set the clock: {e}"));
        }
    }
    let id = param("ignis.vm").unwrap_or_default();
    if let Err(e) = set_hostname_for(&id) {
        crate::log(&format!("cannot set the host name: {e}"));
    }
}

/// Programs run unprivileged but could otherwise read the kernel's log
/// (`/dev/kmsg`, the host's command line for this VM among it) and kernel
/// addresses: nothing a judged program needs.
fn restrict_kernel_info() {
    for (knob, value) in [("dmesg_restrict", "1"), ("kptr_restrict", "2")] {
        if let Err(e) = std::fs::write(format!("/proc/sys/kernel/{knob}"), value) {
            crate::log(&format!("cannot set kernel.{knob}: {e}"));
        }
    }
}

/// `ignis-<id>` for a valid VM id, plain `ignis` otherwise. An id is short
/// lower-case hex or digits and dashes: it comes from the host, but a host
/// name is no place for anything else.
pub fn set_hostname_for(vm_id: &str) -> std::io::Result<()> {
    if valid_vm_id(vm_id) {
        sys::sethostname(&format!("ignis-{vm_id}"))
    } else {
        sys::sethostname("ignis")
    }
}

pub fn valid_vm_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_come_from_the_command_line_in_order() {
        let line = "console=ttyS0 root=/dev/vda ignis.layers=vdb,vdc ignis.vm=1";
        assert_eq!(layers(line).expect("valid"), ["vdb", "vdc"]);
        assert!(layers("root=/dev/vda").expect("none").is_empty());
        assert!(layers("ignis.layers=../sda").is_err());
        assert!(layers("ignis.layers=vdb,sda1").is_err());
    }
}
