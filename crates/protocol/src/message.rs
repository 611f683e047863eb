//! The messages themselves. Host → guest: [`HostMessage`]; guest → host:
//! [`GuestMessage`]. Every struct refuses unknown fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What travels in a frame: the protocol version and one message.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope<T> {
    pub v: u32,
    pub msg: T,
}

/// Messages from the host to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum HostMessage {
    /// Compile (if the language needs it) and run one program.
    Run(RunRequest),
    /// Liveness check; the agent answers `Pong`.
    Ping,
    /// The first message to a guest restored from a snapshot, before any
    /// run. Every VM restored from one snapshot wakes up with the same
    /// kernel random state, clock and name; this makes it unique. The agent
    /// answers `Resumed`.
    Resume(Resume),
    /// Runs the image's warm-up commands the way programs run (unprivileged,
    /// in a cgroup of their own), output discarded; the agent answers
    /// `Warmed`. A VM restored from a snapshot starts with everything in
    /// its page cache but with a cold VMM (under TCG, nothing translated
    /// yet): a pooled VM is warmed before it waits for a job.
    Warm,
}

/// What a restored guest needs from the host to stop being a copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resume {
    /// Fresh random bytes from the host, mixed into the guest kernel's
    /// entropy pool, after which its random generator is reseeded.
    #[serde(with = "crate::bytes")]
    pub entropy: Vec<u8>,
    /// The host's wall clock, in milliseconds since the Unix epoch.
    pub unix_time_ms: u64,
    /// This VM's own id; the guest takes it as its host name.
    pub vm_id: String,
}

/// One program to run. The first file is the entry point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    pub files: Vec<File>,
    #[serde(with = "crate::bytes", default)]
    pub stdin: Vec<u8>,
    #[serde(default)]
    pub args: Vec<String>,
    /// The program's whole environment; empty unless the caller sets one.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub limits: Limits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub name: String,
    #[serde(with = "crate::bytes")]
    pub content: Vec<u8>,
}

/// Limits the agent enforces on the program (and, where noted, the compiler).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Limits {
    /// Wall-clock limit of the run, in milliseconds.
    pub timeout_ms: u64,
    /// Memory limit of the run (all its processes together), in MiB.
    pub memory_mib: u64,
    /// Cap on stdout and stderr, each, in KiB.
    pub max_output_kib: u64,
    /// Cap on processes and threads of the run together.
    pub max_processes: u32,
    /// Wall-clock limit of the compile step, in milliseconds.
    pub compile_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout_ms: 10_000,
            memory_mib: 256,
            max_output_kib: 1024,
            max_processes: 64,
            compile_timeout_ms: 60_000,
        }
    }
}

/// Messages from the agent to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum GuestMessage {
    /// Sent once, unprompted, when the agent is ready to take a run.
    Ready(Ready),
    /// The run moved to another phase.
    Phase { phase: Phase },
    /// A piece of the program's output, as it was written.
    Output {
        stream: Stream,
        #[serde(with = "crate::bytes")]
        data: Vec<u8>,
    },
    /// The run is over; always the last message for a run.
    Result(RunOutcome),
    /// Answer to `Ping`.
    Pong,
    /// Answer to `Resume`: the guest took the entropy, clock and id.
    Resumed(Resumed),
    /// Answer to `Warm`.
    Warmed { duration_ms: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resumed {
    /// The id the host sent, echoed: proof the message reached this guest.
    pub vm_id: String,
    /// Whether the guest kernel's random generator was reseeded.
    pub reseeded: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ready {
    pub agent_version: String,
    pub language: String,
    /// What the language's version command printed, e.g. "Python 3.11.2".
    pub runtime_version: String,
    /// Guest uptime when the agent became ready, in milliseconds.
    pub uptime_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Compiling,
    Running,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How a run ended, in the vocabulary users see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Verdict {
    Ok,
    RuntimeError,
    CompileError,
    Timeout,
    MemoryLimit,
    OutputLimit,
    InternalError,
}

impl Verdict {
    pub const ALL: [Verdict; 7] = [
        Verdict::Ok,
        Verdict::RuntimeError,
        Verdict::CompileError,
        Verdict::Timeout,
        Verdict::MemoryLimit,
        Verdict::OutputLimit,
        Verdict::InternalError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::RuntimeError => "runtime_error",
            Verdict::CompileError => "compile_error",
            Verdict::Timeout => "timeout",
            Verdict::MemoryLimit => "memory_limit",
            Verdict::OutputLimit => "output_limit",
            Verdict::InternalError => "internal_error",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The agent's account of a run. Output itself arrives in `Output` messages;
/// the host assembles it and checks it against these flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunOutcome {
    pub status: Verdict,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Compiler messages; set when compilation failed (or warned).
    pub compile_output: Option<String>,
    pub compile_ms: Option<u64>,
    pub duration_ms: u64,
    pub cpu_ms: u64,
    pub memory_kib: u64,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// For `internal_error`: what went wrong inside the guest.
    pub message: Option<String>,
}
