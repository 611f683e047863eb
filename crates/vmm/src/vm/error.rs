//! What can go wrong with a VM: typed errors for start, run and save, and
//! the console log a failure keeps.

use std::path::PathBuf;
use std::time::Duration;

use ignis_protocol::FrameError;

use super::VmState;
use crate::driver::DriverError;

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
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error("the VM monitor exited during start-up ({status}); {log}")]
    Exited { status: String, log: LogRef },
    #[error("the agent did not become ready within {ms} ms; {log}")]
    Timeout { ms: u64, log: LogRef },
    #[error("the agent misbehaved during start-up: {detail}; {log}")]
    Protocol { detail: String, log: LogRef },
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the VM is {0:?}; this needs a ready VM")]
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

#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("the VM is {0:?}; only a ready VM that never ran a program can be saved")]
    NotAllowed(VmState),
    #[error(transparent)]
    Driver(#[from] DriverError),
}

/// Why a start failed, before it becomes a [`BootError`] with its log.
pub(super) enum Failure {
    Exited(String),
    Timeout,
    Protocol(String),
    /// The channel closed or failed: often the VMM is dying.
    Channel(String),
}

impl Failure {
    pub(super) fn into_error(self, timeout: Duration, log: LogRef) -> BootError {
        match self {
            Failure::Exited(status) => BootError::Exited { status, log },
            Failure::Timeout => BootError::Timeout {
                ms: timeout.as_millis() as u64,
                log,
            },
            Failure::Protocol(detail) | Failure::Channel(detail) => {
                BootError::Protocol { detail, log }
            }
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Exited(s) => write!(f, "VMM exited during start-up: {s}"),
            Failure::Timeout => f.write_str("agent not ready before the deadline"),
            Failure::Protocol(d) | Failure::Channel(d) => write!(f, "protocol: {d}"),
        }
    }
}

impl From<FrameError> for Failure {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Closed | FrameError::Io(_) => Failure::Channel(e.to_string()),
            _ => Failure::Protocol(e.to_string()),
        }
    }
}
