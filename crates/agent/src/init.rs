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
    let _ = sys::sethostname("ignis");
    set_clock_from_cmdline();
    if let Err(e) = sys::loopback_up() {
        crate::log(&format!("loopback stays down: {e}"));
    }
    Ok(())
}

/// The guest has no RTC driver; the host passes its wall clock on the kernel
/// command line (`ignis.time=<unix seconds>`) so programs see the real date.
fn set_clock_from_cmdline() {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let secs = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ignis.time="))
        .and_then(|v| v.parse::<i64>().ok());
    if let Some(secs) = secs {
        if let Err(e) = sys::set_realtime(secs) {
            crate::log(&format!("cannot set the clock: {e}"));
        }
    }
}
