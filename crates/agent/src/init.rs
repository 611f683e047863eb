//! Guest set-up done once by PID 1, before anything else runs.

use std::io;

use crate::sys;

/// The image is mounted read-only by the kernel. Everything written in the
/// guest lands in a tmpfs overlay instead, so no VM ever copies or changes the
/// golden image, and every VM starts from the same bytes.
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
    sys::mount(
        "overlay",
        "/overlay/root",
        Some("overlay"),
        0,
        "lowerdir=/,upperdir=/overlay/upper,workdir=/overlay/work",
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
    if let Err(e) = sys::loopback_up() {
        crate::log(&format!("loopback stays down: {e}"));
    }
    Ok(())
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
