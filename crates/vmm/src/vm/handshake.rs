//! The first words with an agent: a booted one says Ready on its own; a
//! restored one is told to become unique first and says Resumed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ignis_protocol::{GuestMessage, HostMessage, Ready, Resume, RESUME_ENTROPY_BYTES};

use super::Failure;
use crate::agent::AgentConn;
use crate::driver::AgentStream;

/// Longest runtime version string accepted from a guest.
const VERSION_MAX: usize = 200;

pub(super) async fn expect_ready(conn: &mut AgentConn<AgentStream>) -> Result<Ready, Failure> {
    match conn.recv().await? {
        GuestMessage::Ready(r) => Ok(r),
        other => Err(Failure::Protocol(format!(
            "expected ready, got {}",
            kind(&other)
        ))),
    }
}

/// Makes a restored guest unique before it takes a job: fresh entropy, the
/// host's clock, its own id. A guest that cannot reseed is refused: it
/// would hand out the same random numbers as its siblings.
pub(super) async fn resume(conn: &mut AgentConn<AgentStream>, vm_id: &str) -> Result<(), Failure> {
    let mut entropy = vec![0u8; RESUME_ENTROPY_BYTES];
    host_random(&mut entropy).map_err(|e| Failure::Protocol(format!("host entropy: {e}")))?;
    conn.send(&HostMessage::Resume(Resume {
        entropy,
        unix_time_ms: unix_now().as_millis() as u64,
        vm_id: vm_id.to_owned(),
    }))
    .await?;
    match conn.recv().await? {
        GuestMessage::Resumed(r) if r.vm_id != vm_id => Err(Failure::Protocol(format!(
            "the guest answered for VM {:?}",
            r.vm_id
        ))),
        GuestMessage::Resumed(r) if !r.reseeded => Err(Failure::Protocol(
            "the guest could not reseed its random generator".into(),
        )),
        GuestMessage::Resumed(_) => Ok(()),
        other => Err(Failure::Protocol(format!(
            "expected resumed, got {}",
            kind(&other)
        ))),
    }
}

/// Fills `buf` from the host kernel's random generator.
fn host_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
            continue;
        }
        filled += n as usize;
    }
    Ok(())
}

pub(super) fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

pub(super) fn check_ready(r: &Ready, language: &str) -> Result<(), String> {
    if r.language != language {
        return Err(format!(
            "agent says language {:?}, image is {language:?}",
            r.language
        ));
    }
    if r.runtime_version.len() > VERSION_MAX || r.agent_version.len() > VERSION_MAX {
        return Err("version strings too long".into());
    }
    Ok(())
}

pub(super) fn kind(m: &GuestMessage) -> &'static str {
    match m {
        GuestMessage::Ready(_) => "ready",
        GuestMessage::Phase { .. } => "phase",
        GuestMessage::Output { .. } => "output",
        GuestMessage::Result(_) => "result",
        GuestMessage::Pong => "pong",
        GuestMessage::Resumed(_) => "resumed",
        GuestMessage::Warmed { .. } => "warmed",
    }
}
