//! The user-facing account of one run, as `ignis run --json` prints it and the
//! API stores it. One type, so the CLI and the service never disagree.

use std::time::Duration;

use ignis_protocol::{RunRequest, Verdict};
use serde::{Deserialize, Serialize};

use crate::driver::Accel;
use crate::vm::{Execution, RunEvent, Vm, VmInfo};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunReport {
    pub status: Verdict,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// The exact bytes the program wrote, so that a store keeps them as
    /// bytes and an API can hand them back exactly. In JSON (`ignis run
    /// --json`) they are text: bytes that are not UTF-8 are replaced
    /// (U+FFFD) there; the server's API says when that happened.
    #[serde(with = "output_text", default)]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub stdout: Vec<u8>,
    #[serde(with = "output_text", default)]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub stderr: Vec<u8>,
    pub compile_output: Option<String>,
    pub compile_ms: Option<u64>,
    pub duration_ms: u64,
    pub cpu_ms: u64,
    pub memory_kib: u64,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// Why, for `internal_error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub vm: Option<VmReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VmReport {
    pub id: String,
    pub driver: String,
    pub accel: Accel,
    /// From starting the VMM to a guest ready for the run.
    pub ready_ms: u64,
    /// Restored from a snapshot rather than booted.
    pub restored: bool,
    pub runtime_version: String,
}

impl From<&VmInfo> for VmReport {
    fn from(i: &VmInfo) -> Self {
        VmReport {
            id: i.id.clone(),
            driver: i.driver.to_string(),
            accel: i.accel,
            ready_ms: i.ready_ms,
            restored: i.restored,
            runtime_version: i.runtime_version.clone(),
        }
    }
}

impl RunReport {
    pub fn from_execution(e: Execution, vm: &VmInfo) -> RunReport {
        let o = e.outcome;
        RunReport {
            status: o.status,
            exit_code: o.exit_code,
            signal: o.signal,
            stdout: e.stdout,
            stderr: e.stderr,
            compile_output: o.compile_output,
            compile_ms: o.compile_ms,
            duration_ms: o.duration_ms,
            cpu_ms: o.cpu_ms,
            memory_kib: o.memory_kib,
            stdout_truncated: o.stdout_truncated,
            stderr_truncated: o.stderr_truncated,
            message: o.message,
            vm: Some(vm.into()),
        }
    }

    /// stdout as text, bytes that are not UTF-8 replaced (U+FFFD).
    pub fn stdout_text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.stdout)
    }

    /// stderr as text, bytes that are not UTF-8 replaced (U+FFFD).
    pub fn stderr_text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.stderr)
    }

    /// A run that Ignis could not carry out, said honestly.
    pub fn internal_error(message: impl Into<String>, vm: Option<&VmInfo>) -> RunReport {
        RunReport {
            status: Verdict::InternalError,
            exit_code: None,
            signal: None,
            stdout: Vec::new(),
            stderr: Vec::new(),
            compile_output: None,
            compile_ms: None,
            duration_ms: 0,
            cpu_ms: 0,
            memory_kib: 0,
            stdout_truncated: false,
            stderr_truncated: false,
            message: Some(message.into()),
            vm: vm.map(Into::into),
        }
    }
}

/// Output bytes as JSON text: UTF-8 as it is, other bytes replaced by
/// U+FFFD on the way out; text read back becomes its UTF-8 bytes.
mod output_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(String::deserialize(d)?.into_bytes())
    }
}

/// Extra time the host grants beyond the program's own limits before it
/// declares the agent hung: transfer of output, cgroup teardown, slow TCG.
pub const HOST_GRACE: Duration = Duration::from_secs(30);

/// How long the host waits for a whole run of `req` on the VM `vm`: its
/// limits, the compile step if the language has one (at least as long as
/// its recipe asks: `Vm::run` raises the request's to that), and grace.
pub fn host_deadline(req: &RunRequest, vm: &VmInfo) -> Duration {
    run_deadline(req, vm.compiled.then_some(vm.compile_timeout_ms))
}

/// [`host_deadline`] before there is a VM: `recipe_compile_ms` is the
/// recipe's own compile timeout (0 when it sets none), `None` for a
/// language without a compile step.
pub fn run_deadline(req: &RunRequest, recipe_compile_ms: Option<u64>) -> Duration {
    let compile = recipe_compile_ms.map_or(0, |r| req.limits.compile_timeout_ms.max(r));
    Duration::from_millis(req.limits.timeout_ms.saturating_add(compile)) + HOST_GRACE
}

/// Runs `req` on `vm` and destroys the VM, whatever happened: a VM is never
/// reused. Failures become an `internal_error` report that says where the
/// console log was kept.
pub async fn execute(mut vm: Vm, req: RunRequest, on_event: impl FnMut(RunEvent)) -> RunReport {
    let deadline = host_deadline(&req, vm.info());
    let info = vm.info().clone();
    let result = vm.run(req, deadline, on_event).await;
    let log = vm.destroy().await;
    match result {
        Ok(exec) => RunReport::from_execution(exec, &info),
        Err(e) => {
            let where_log = log
                .map(|p| format!(" (console log in {})", p.display()))
                .unwrap_or_default();
            RunReport::internal_error(format!("{e}{where_log}"), Some(&info))
        }
    }
}
