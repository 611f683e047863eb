//! Thin wrappers over the system calls the agent needs and std lacks.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub fn mount(
    src: &str,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let (src, target, data) = (cstr(src)?, cstr(target)?, cstr(data)?);
    let fstype = fstype.map(cstr).transpose()?;
    // SAFETY: every pointer is a valid NUL-terminated string or null.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.as_ptr().cast(),
        )
    })
    .map(drop)
}

/// Makes `.` the new root; the old one is stacked underneath and detached.
pub fn pivot_to_cwd() -> io::Result<()> {
    let dot = cstr(".")?;
    // SAFETY: plain syscalls with valid strings.
    unsafe {
        check(libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as libc::c_int)?;
        check(libc::umount2(dot.as_ptr(), libc::MNT_DETACH))?;
    }
    std::env::set_current_dir("/")
}

pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags; the result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just handed us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = check(libc::fcntl(fd, libc::F_GETFL))?;
        check(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK))?;
    }
    Ok(())
}

/// Reaps every exited child without blocking (PID 1 inherits all orphans).
pub fn reap_zombies() {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with WNOHANG and a valid status pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
    }
}

pub fn chown(path: &std::path::Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
}

pub fn uptime_ms() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some((secs * 1000.0) as u64)
}

pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: pointer and length describe `name`.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// Brings the loopback interface up, so programs may talk to themselves.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain socket for interface ioctls, closed by OwnedFd.
    let sock = unsafe { check(libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0))? };
    // SAFETY: the kernel returned this descriptor.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    use std::os::fd::AsRawFd;
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we pass.
    unsafe {
        check(libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req))?;
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        check(libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req))?;
    }
    Ok(())
}

pub fn reboot() -> ! {
    // SAFETY: sync and reboot take no pointers; PID 1 may reboot.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    // reboot only returns on failure; nothing is left to do but stop.
    std::process::abort()
}

pub fn set_realtime_ms(ms: u64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: a valid timespec for CLOCK_REALTIME.
    check(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) }).map(drop)
}

/// `_IOW('R', 0x03, int[2])` and `_IO('R', 0x07)` from <linux/random.h>.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Mixes `bytes` into the kernel's input pool, credited as entropy, then
/// makes the kernel reseed its random generator from that pool at once.
/// A guest restored from a snapshot would otherwise hand out the same
/// "random" bytes as every other guest restored from it until its next
/// scheduled reseed, up to a minute later.
pub fn reseed_kernel_rng(bytes: &[u8]) -> io::Result<()> {
    let words = bytes.len().div_ceil(4);
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = vec![0u32; 2 + words];
    info[0] = (bytes.len() * 8) as u32;
    info[1] = bytes.len() as u32;
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        info[2 + i] = u32::from_ne_bytes(w);
    }
    let random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")?;
    use std::os::fd::AsRawFd;
    // SAFETY: RNDADDENTROPY reads a rand_pool_info whose buf_size bytes
    // follow the two ints; `info` holds exactly that and outlives the call.
    check(unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) })?;
    // SAFETY: RNDRESEEDCRNG takes no argument.
    check(unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG, 0) })?;
    Ok(())
}
