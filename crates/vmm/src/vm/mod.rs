//! One microVM, from boot to teardown.
//!
//! A [`Vm`] is booted, takes exactly one run, and is destroyed. Its state is
//! an enum and asking for something the state does not allow is a typed
//! error. Teardown kills the monitor process and removes every per-VM file,
//! whichever way the VM ended; the console log is kept only on failure.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ignis_protocol::{
    FrameError, GuestMessage, HostMessage, Phase, Ready, RunOutcome, RunRequest, Stream,
};
use serde::Serialize;
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};

use crate::agent::AgentConn;
use crate::console::Console;
use crate::image::{KernelImage, LanguageImage};
use crate::qemu::{self, Accel, QemuConfig};

/// Everything needed to boot one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: KernelImage,
    pub image: LanguageImage,
    pub accel: Accel,
    pub boot_timeout: Duration,
    /// Parent of the per-VM directories.
    pub runtime_dir: PathBuf,
    /// Where console logs of failed VMs are kept.
    pub log_dir: PathBuf,
    pub qemu_binary: PathBuf,
}

impl VmConfig {
    pub fn new(
        kernel: KernelImage,
        image: LanguageImage,
        accel: Accel,
        paths: &crate::paths::Paths,
    ) -> Self {
        VmConfig {
            kernel,
            image,
            accel,
            boot_timeout: Duration::from_secs(60),
            runtime_dir: paths.runtime(),
            log_dir: paths.logs(),
            qemu_binary: PathBuf::from("qemu-system-x86_64"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// The agent said Ready; a run may start.
    Ready,
    /// A run is under way.
    Running,
    /// The run ended; the VM only waits to be destroyed.
    Finished,
    /// Something went wrong; the VM only waits to be destroyed (log kept).
    Failed,
}

/// What a caller may show about the VM that ran a program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmInfo {
    pub id: String,
    pub driver: &'static str,
    pub accel: Accel,
    /// From starting the monitor process to the agent's Ready, host-measured.
    pub boot_ms: u64,
    pub language: String,
    pub runtime_version: String,
    /// The language compiles before it runs (the host allows for it).
    pub compiled: bool,
}

/// Something that happens during a run, as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEvent {
    Phase(Phase),
    Output(Stream, Vec<u8>),
}

/// A finished run: the agent's account plus the output the host collected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution {
    pub outcome: RunOutcome,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct LogRef(pub Option<PathBuf>);

impl std::fmt::Display for LogRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(p) => write!(f, "console log in {}", p.display()),
            None => f.write_str("console log could not be kept"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot prepare the VM directory {path}: {source}")]
    Setup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("the VM monitor exited during boot ({status}); {log}")]
    Exited { status: String, log: LogRef },
    #[error("the agent did not become ready within {ms} ms; {log}")]
    Timeout { ms: u64, log: LogRef },
    #[error("the agent misbehaved during boot: {detail}; {log}")]
    Protocol { detail: String, log: LogRef },
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the VM is {0:?}; a run needs a ready VM")]
    NotReady(VmState),
    #[error("the agent did not finish within {ms} ms")]
    Timeout { ms: u64 },
    #[error("the VM died during the run ({status})")]
    Exited { status: String },
    #[error("the agent broke the protocol: {0}")]
    Protocol(String),
    #[error("the agent channel failed: {0}")]
    Channel(FrameError),
}

#[derive(Debug)]
pub struct Vm {
    id: String,
    dir: PathBuf,
    log_dir: PathBuf,
    child: Child,
    conn: AgentConn<UnixStream>,
    console: Console,
    info: VmInfo,
    state: VmState,
}

/// Longest runtime version string accepted from a guest.
const VERSION_MAX: usize = 200;

impl Vm {
    pub async fn boot(cfg: &VmConfig) -> Result<Vm, BootError> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let dir = cfg.runtime_dir.join(format!("vm-{id}"));
        let setup = |source| BootError::Setup {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&cfg.runtime_dir).map_err(setup)?;
        std::fs::create_dir(&dir).map_err(setup)?;
        let mut guard = DirGuard(Some(dir.clone()));
        let socket = dir.join("agent.sock");
        let listener = UnixListener::bind(&socket).map_err(setup)?;

        let qcfg = QemuConfig {
            kernel: &cfg.kernel.path,
            rootfs: &cfg.image.rootfs,
            memory_mib: cfg.image.manifest.vm_memory_mib,
            accel: cfg.accel,
            agent_socket: &socket,
            tsc_khz: qemu::host_tsc_khz(),
            unix_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let started = Instant::now();
        let mut child = Command::new(&cfg.qemu_binary)
            .args(qemu::qemu_args(&qcfg))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| BootError::Spawn {
                binary: cfg.qemu_binary.clone(),
                source,
            })?;
        let console = Console::default();
        if let Some(out) = child.stdout.take() {
            console.capture(out);
        }
        if let Some(err) = child.stderr.take() {
            console.capture(err);
        }
        tracing::info!(vm = %id, accel = %cfg.accel, language = cfg.image.name(), "booting VM with qemu");

        let waited = tokio::time::timeout(cfg.boot_timeout, async {
            tokio::select! {
                status = child.wait() => Err(BootFailure::Exited(
                    status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                )),
                ready = accept_ready(&listener) => ready,
            }
        })
        .await;
        let failure = match waited {
            Ok(Ok((conn, ready))) => match check_ready(&ready, cfg.image.name()) {
                Ok(()) => {
                    guard.0 = None;
                    let boot_ms = started.elapsed().as_millis() as u64;
                    tracing::info!(vm = %id, boot_ms, guest_uptime_ms = ready.uptime_ms, "VM ready");
                    return Ok(Vm {
                        info: VmInfo {
                            id: id.clone(),
                            driver: "qemu",
                            accel: cfg.accel,
                            boot_ms,
                            language: ready.language,
                            runtime_version: ready.runtime_version,
                            compiled: cfg.image.manifest.compiled,
                        },
                        id,
                        dir,
                        log_dir: cfg.log_dir.clone(),
                        child,
                        conn,
                        console,
                        state: VmState::Ready,
                    });
                }
                Err(detail) => BootFailure::Protocol(detail),
            },
            Ok(Err(f)) => f,
            Err(_) => BootFailure::Timeout,
        };
        let _ = child.start_kill();
        let _ = child.wait().await;
        let log = LogRef(keep_log(&cfg.log_dir, &id, &console, &failure.to_string()));
        drop(guard);
        Err(match failure {
            BootFailure::Exited(status) => BootError::Exited { status, log },
            BootFailure::Timeout => BootError::Timeout {
                ms: cfg.boot_timeout.as_millis() as u64,
                log,
            },
            BootFailure::Protocol(detail) => BootError::Protocol { detail, log },
        })
    }

    pub fn info(&self) -> &VmInfo {
        &self.info
    }

    pub fn state(&self) -> VmState {
        self.state
    }

    /// Liveness check: the agent answers a ping.
    pub async fn ping(&mut self, timeout: Duration) -> Result<(), RunError> {
        if !matches!(self.state, VmState::Ready | VmState::Finished) {
            return Err(RunError::NotReady(self.state));
        }
        let r = tokio::time::timeout(timeout, async {
            self.conn
                .send(&HostMessage::Ping)
                .await
                .map_err(RunError::Channel)?;
            match self.conn.recv().await.map_err(RunError::Channel)? {
                GuestMessage::Pong => Ok(()),
                other => Err(RunError::Protocol(format!(
                    "expected pong, got {}",
                    kind(&other)
                ))),
            }
        })
        .await
        .unwrap_or(Err(RunError::Timeout {
            ms: timeout.as_millis() as u64,
        }));
        if r.is_err() {
            self.state = VmState::Failed;
        }
        r
    }

    /// Runs one program. `deadline` bounds the whole exchange on the host side
    /// (the agent enforces the program's own limits); past it the VM is
    /// considered hung. `on_event` sees phases and output as they arrive.
    pub async fn run(
        &mut self,
        req: RunRequest,
        deadline: Duration,
        mut on_event: impl FnMut(RunEvent),
    ) -> Result<Execution, RunError> {
        if self.state != VmState::Ready {
            return Err(RunError::NotReady(self.state));
        }
        self.state = VmState::Running;
        let cap = req.limits.max_output_kib.saturating_mul(1024) as usize;
        let (conn, child) = (&mut self.conn, &mut self.child);
        let exchange = async {
            conn.send(&HostMessage::Run(req))
                .await
                .map_err(RunError::Channel)?;
            let mut out = Collected::new(cap);
            loop {
                let msg = conn.recv().await.map_err(RunError::Channel)?;
                match msg {
                    GuestMessage::Phase { phase } => {
                        out.phase(phase)?;
                        on_event(RunEvent::Phase(phase));
                    }
                    GuestMessage::Output { stream, data } => {
                        out.output(stream, &data)?;
                        on_event(RunEvent::Output(stream, data));
                    }
                    GuestMessage::Result(outcome) => return out.finish(outcome),
                    other => {
                        return Err(RunError::Protocol(format!(
                            "unexpected {} during a run",
                            kind(&other)
                        )))
                    }
                }
            }
        };
        let result = tokio::select! {
            r = tokio::time::timeout(deadline, exchange) => r.unwrap_or(Err(RunError::Timeout { ms: deadline.as_millis() as u64 })),
            status = child.wait() => Err(RunError::Exited {
                status: status.map_or_else(|e| e.to_string(), |s| s.to_string()),
            }),
        };
        self.state = if result.is_ok() {
            VmState::Finished
        } else {
            VmState::Failed
        };
        result
    }

    /// Kills the VM and removes its files. Returns where the console log was
    /// kept, if the VM had failed.
    pub async fn destroy(mut self) -> Option<PathBuf> {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let log = (self.state == VmState::Failed)
            .then(|| keep_log(&self.log_dir, &self.id, &self.console, "the VM failed"))
            .flatten();
        let _ = std::fs::remove_dir_all(&self.dir);
        tracing::debug!(vm = %self.id, "VM destroyed");
        log
    }
}

impl Drop for Vm {
    /// A VM dropped without `destroy` (a cancelled task, a panic) still dies:
    /// the child is killed and its directory removed.
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

enum BootFailure {
    Exited(String),
    Timeout,
    Protocol(String),
}

impl std::fmt::Display for BootFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BootFailure::Exited(s) => write!(f, "monitor exited during boot: {s}"),
            BootFailure::Timeout => f.write_str("agent not ready before the boot timeout"),
            BootFailure::Protocol(d) => write!(f, "protocol: {d}"),
        }
    }
}

async fn accept_ready(
    listener: &UnixListener,
) -> Result<(AgentConn<UnixStream>, Ready), BootFailure> {
    let (stream, _) = listener
        .accept()
        .await
        .map_err(|e| BootFailure::Protocol(format!("accept: {e}")))?;
    let mut conn = AgentConn::new(stream);
    match conn.recv().await {
        Ok(GuestMessage::Ready(r)) => Ok((conn, r)),
        Ok(other) => Err(BootFailure::Protocol(format!(
            "expected ready, got {}",
            kind(&other)
        ))),
        Err(e) => Err(BootFailure::Protocol(e.to_string())),
    }
}

fn check_ready(r: &Ready, language: &str) -> Result<(), String> {
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

fn kind(m: &GuestMessage) -> &'static str {
    match m {
        GuestMessage::Ready(_) => "ready",
        GuestMessage::Phase { .. } => "phase",
        GuestMessage::Output { .. } => "output",
        GuestMessage::Result(_) => "result",
        GuestMessage::Pong => "pong",
    }
}

/// Output and phases of one run as the host saw them, checked as they come.
struct Collected {
    cap: usize,
    phase: Option<Phase>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Collected {
    fn new(cap: usize) -> Self {
        Collected {
            cap,
            phase: None,
            stdout: Vec::new(),
            stderr: Vec::new(),
        }
    }

    fn phase(&mut self, p: Phase) -> Result<(), RunError> {
        let ok = matches!(
            (self.phase, p),
            (None, Phase::Compiling)
                | (None, Phase::Running)
                | (Some(Phase::Compiling), Phase::Running)
        );
        if !ok {
            return Err(RunError::Protocol(format!(
                "phase {p:?} after {:?}",
                self.phase
            )));
        }
        self.phase = Some(p);
        Ok(())
    }

    fn output(&mut self, stream: Stream, data: &[u8]) -> Result<(), RunError> {
        if self.phase != Some(Phase::Running) {
            return Err(RunError::Protocol("output before the program ran".into()));
        }
        let buf = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        if buf.len() + data.len() > self.cap {
            return Err(RunError::Protocol(format!(
                "{stream:?} exceeds the {} byte cap the agent was given",
                self.cap
            )));
        }
        buf.extend_from_slice(data);
        Ok(())
    }

    fn finish(self, outcome: RunOutcome) -> Result<Execution, RunError> {
        if outcome
            .compile_output
            .as_ref()
            .is_some_and(|c| c.len() > 1024 * 1024)
        {
            return Err(RunError::Protocol("compile output too large".into()));
        }
        if outcome
            .message
            .as_ref()
            .is_some_and(|m| m.len() > 64 * 1024)
        {
            return Err(RunError::Protocol("message too large".into()));
        }
        Ok(Execution {
            outcome,
            stdout: self.stdout,
            stderr: self.stderr,
        })
    }
}

/// Removes the per-VM directory when boot fails half-way.
struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn keep_log(log_dir: &Path, id: &str, console: &Console, why: &str) -> Option<PathBuf> {
    std::fs::create_dir_all(log_dir).ok()?;
    let path = log_dir.join(format!("vm-{id}.log"));
    let mut text = console.contents();
    text.extend_from_slice(format!("\n--- ignis: {why}\n").as_bytes());
    std::fs::write(&path, text).ok()?;
    tracing::warn!(vm = %id, log = %path.display(), "{why}; console log kept");
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_past_the_cap_is_a_protocol_violation() {
        let mut c = Collected::new(4);
        c.phase(Phase::Running).expect("phase");
        c.output(Stream::Stdout, b"abcd").expect("within cap");
        assert!(matches!(
            c.output(Stream::Stdout, b"e"),
            Err(RunError::Protocol(_))
        ));
        c.output(Stream::Stderr, b"ab")
            .expect("stderr has its own cap");
    }

    #[test]
    fn phases_only_move_forward() {
        let mut c = Collected::new(1);
        assert!(c.output(Stream::Stdout, b"x").is_err());
        c.phase(Phase::Compiling).expect("compile");
        c.phase(Phase::Running).expect("run");
        assert!(c.phase(Phase::Compiling).is_err());
    }
}
