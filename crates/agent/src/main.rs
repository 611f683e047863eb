//! The Ignis agent: PID 1 of every guest.
//!
//! It turns the read-only language image into a usable system (proc, sys,
//! dev, a tmpfs overlay over `/`, cgroup v2), warms the language runtime,
//! connects to the host over the VM's channel and says `Ready` on its own.
//! Then it serves run requests until the host kills the VM.
//!
//! The agent never exits on purpose: if PID 1 dies the kernel panics, and the
//! host sees a dead VM. On a fatal error it says why on the console (which the
//! host keeps when something fails) and reboots, which ends the VM at once.

mod cgroup;
mod channel;
mod init;
mod run;
mod sandbox;
mod seccomp;
mod sys;

use std::io::Write;
use std::time::Instant;

use ignis_protocol::{
    read_frame, write_frame, FrameError, GuestMessage, HostMessage, Ready, Recipe, Resume, Resumed,
    GUEST_FRAME_MAX, HOST_FRAME_MAX, RECIPE_PATH, RESUME_ENTROPY_BYTES,
};

/// The unprivileged user programs run as; created in every image.
pub const RUNNER_UID: u32 = 1000;
pub const RUNNER_GID: u32 = 1000;

fn main() {
    let started = Instant::now();
    if let Err(e) = serve(started) {
        log(&format!("fatal: {e}"));
    }
    if std::process::id() == 1 {
        sys::reboot();
    }
    std::process::exit(1);
}

/// Makes a guest restored from a snapshot unique: fresh kernel randomness,
/// the host's clock, its own name. Programs start after this, so runtimes
/// that seed themselves at start-up (Python's `random`, hash seeds, Go's
/// runtime) seed from the new state. A guest that cannot reseed says so and
/// the host refuses it; one that cannot get a valid request gives up.
fn resume(r: Resume) -> Result<Resumed, String> {
    if r.entropy.len() < RESUME_ENTROPY_BYTES || !init::valid_vm_id(&r.vm_id) {
        return Err("malformed resume request".into());
    }
    let reseeded = match sys::reseed_kernel_rng(&r.entropy) {
        Ok(()) => true,
        Err(e) => {
            log(&format!("cannot reseed the kernel random generator: {e}"));
            false
        }
    };
    if let Err(e) = sys::set_realtime_ms(r.unix_time_ms) {
        log(&format!("cannot set the clock: {e}"));
    }
    if let Err(e) = init::set_hostname_for(&r.vm_id) {
        log(&format!("cannot set the host name: {e}"));
    }
    Ok(Resumed {
        vm_id: r.vm_id,
        reseeded,
    })
}

/// Console logging: stderr is the serial console for PID 1.
pub fn log(msg: &str) {
    let _ = writeln!(std::io::stderr(), "ignis-agent: {msg}");
}

fn serve(started: Instant) -> Result<(), String> {
    if std::process::id() == 1 {
        init::setup().map_err(|e| format!("guest setup failed: {e}"))?;
    }
    let recipe: Recipe = std::fs::read(RECIPE_PATH)
        .map_err(|e| format!("cannot read {RECIPE_PATH}: {e}"))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| format!("bad {RECIPE_PATH}: {e}")))?;
    let runtime_version = run::warm_up(&recipe);
    let mut chan = channel::open().map_err(|e| format!("cannot open the host channel: {e}"))?;
    let ready = GuestMessage::Ready(Ready {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        language: recipe.name.clone(),
        runtime_version,
        uptime_ms: sys::uptime_ms().unwrap_or(started.elapsed().as_millis() as u64),
    });
    write_frame(&mut chan, &ready, GUEST_FRAME_MAX).map_err(|e| e.to_string())?;
    let mut runner = run::Runner::new(recipe);
    loop {
        let msg: HostMessage = match read_frame(&mut chan, HOST_FRAME_MAX) {
            Ok(m) => m,
            // A vsock connection is reset when the VM is restored from a
            // snapshot: dial again; the host's first word will be Resume.
            Err(FrameError::Closed | FrameError::Io(_)) if channel::redials() => {
                chan =
                    channel::open().map_err(|e| format!("cannot reopen the host channel: {e}"))?;
                continue;
            }
            // A stream cannot be resynchronised after a bad frame: give up the VM.
            Err(FrameError::Closed) => return Err("host closed the channel".into()),
            Err(e) => return Err(format!("bad request from host: {e}")),
        };
        let reply = match msg {
            HostMessage::Ping => GuestMessage::Pong,
            HostMessage::Resume(r) => GuestMessage::Resumed(resume(r)?),
            HostMessage::Warm => GuestMessage::Warmed {
                duration_ms: runner.warm(),
            },
            HostMessage::Run(req) => {
                let mut send = |m: GuestMessage| {
                    write_frame(&mut chan, &m, GUEST_FRAME_MAX)
                        .map_err(|e| std::io::Error::other(e.to_string()))
                };
                GuestMessage::Result(runner.run(req, &mut send))
            }
        };
        write_frame(&mut chan, &reply, GUEST_FRAME_MAX).map_err(|e| e.to_string())?;
    }
}
