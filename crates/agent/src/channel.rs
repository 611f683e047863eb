//! The agent's end of the host channel: a virtio-serial port under QEMU, a
//! vsock connection to the host under Firecracker. The kernel command line
//! (`ignis.channel=`) says which; both are plain byte streams.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::FromRawFd;
use std::time::Duration;

use ignis_protocol::{SERIAL_PORT_NAME, VSOCK_PORT};

pub fn open() -> io::Result<File> {
    if redials() {
        vsock_connect()
    } else {
        serial_port()
    }
}

/// Whether the channel is one the agent dials (vsock), and so dials again
/// when it breaks: Firecracker resets vsock connections on a restore. A
/// virtio-serial port stays open across a restore.
pub fn redials() -> bool {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    cmdline
        .split_whitespace()
        .any(|w| w == "ignis.channel=vsock")
}

/// Finds the virtio-serial port by name; there is no udev to make the
/// `/dev/virtio-ports/` links.
fn serial_port() -> io::Result<File> {
    // The port may appear a moment after init starts.
    for _ in 0..200 {
        if let Ok(entries) = std::fs::read_dir("/sys/class/virtio-ports") {
            for e in entries.flatten() {
                let name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
                if name.trim() == SERIAL_PORT_NAME {
                    let dev = format!("/dev/{}", e.file_name().to_string_lossy());
                    return OpenOptions::new().read(true).write(true).open(dev);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no virtio-serial port named {SERIAL_PORT_NAME}"),
    ))
}

/// Connects to the host (CID 2); Firecracker forwards it to `<uds>_<port>`.
fn vsock_connect() -> io::Result<File> {
    let mut last = io::Error::from(io::ErrorKind::TimedOut);
    for _ in 0..100 {
        // SAFETY: plain socket syscall; the fd is owned by the File below.
        let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel returned this descriptor; File closes it.
        let sock = unsafe { File::from_raw_fd(fd) };
        // SAFETY: sockaddr_vm is plain old data; zeroed is valid.
        let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_cid = libc::VMADDR_CID_HOST;
        addr.svm_port = VSOCK_PORT;
        // SAFETY: addr is a valid sockaddr_vm of the given length.
        let r = unsafe {
            libc::connect(
                fd,
                (&addr as *const libc::sockaddr_vm).cast(),
                std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return Ok(sock);
        }
        last = io::Error::last_os_error();
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(last)
}
