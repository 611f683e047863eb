//! A Piston (v2) compatible API under `/piston`, for clients written
//! against Piston. Those clients send no headers, so a key travels in the
//! path (`/piston/k/<api key>/api/v2/...`); the operator may instead open
//! `/piston/api/v2/...` to anonymous callers (`--piston-anonymous`), for
//! this API alone. Executions are ordinary jobs, submitted and awaited
//! through the service layer.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ignis_protocol::Verdict;
use ignis_vmm::RunReport;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::auth::{self, Caller};
use super::judge0::model::version_number;
use super::parsed::{CreateJob, Encoding, FileBody, LimitsBody};
use super::problem::Problem;
use super::AppState;
use crate::fleet::LanguageInfo;
use crate::job::{Job, JobStatus};
use crate::service::{self, ServiceError};

/// Whose jobs anonymous Piston executions are (no key can see them).
pub const ANONYMOUS_OWNER: &str = "piston-anonymous";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v2/runtimes", get(runtimes_open))
        .route("/api/v2/execute", post(execute_open))
        .route("/k/{key}/api/v2/runtimes", get(runtimes_keyed))
        .route("/k/{key}/api/v2/execute", post(execute_keyed))
}

/// An error as Piston answers one: `{"message": "..."}`.
#[derive(Debug)]
pub struct PistonError(StatusCode, String);

impl From<Problem> for PistonError {
    fn from(p: Problem) -> PistonError {
        let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        PistonError(status, p.detail)
    }
}

impl From<ServiceError> for PistonError {
    fn from(e: ServiceError) -> PistonError {
        Problem::from(e).into()
    }
}

impl From<crate::store::StoreError> for PistonError {
    fn from(e: crate::store::StoreError) -> PistonError {
        Problem::from(e).into()
    }
}

impl IntoResponse for PistonError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"message": self.1}))).into_response()
    }
}

fn bad(message: impl Into<String>) -> PistonError {
    PistonError(StatusCode::BAD_REQUEST, message.into())
}

/// The caller of the keyless paths: a Bearer key if the client can send
/// one, else the anonymous owner when the operator allows it (or `--dev`).
async fn open_caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, PistonError> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let token = auth::bearer(v).ok_or_else(|| {
            PistonError(
                StatusCode::UNAUTHORIZED,
                "Authorization must be `Bearer <api key>`".into(),
            )
        })?;
        return Ok(auth::identify(state, Some(token), "").await?);
    }
    if state.svc.config.piston_anonymous {
        return Ok(Caller {
            owner: ANONYMOUS_OWNER.into(),
            key: None,
        });
    }
    let how = "this server takes Piston requests at /piston/k/<api key>/api/v2/...";
    Ok(auth::identify(state, None, how).await?)
}

async fn keyed_caller(state: &AppState, key: &str) -> Result<Caller, PistonError> {
    Ok(auth::identify(state, Some(key), "").await?)
}

#[derive(Debug, Serialize)]
pub struct Runtime {
    pub language: String,
    pub version: String,
    pub aliases: Vec<String>,
}

/// Other names Piston knows a language by, beside its file extensions.
fn aliases(info: &LanguageInfo) -> Vec<String> {
    let extra: &[&str] = match info.name.as_str() {
        "python" => &["py3", "python3"],
        "go" => &["golang"],
        "javascript" | "node" => &["node-javascript", "node-js", "javascript", "js"],
        "cpp" => &["c++", "g++"],
        "c" => &["gcc"],
        "rust" => &["rs"],
        _ => &[],
    };
    let mut a: Vec<String> = info.extensions.to_vec();
    a.extend(extra.iter().map(|s| (*s).to_owned()));
    a.retain(|x| *x != info.name);
    a.dedup();
    a
}

fn runtimes(state: &AppState) -> Vec<Runtime> {
    state
        .svc
        .fleet
        .languages()
        .into_values()
        .map(|info| Runtime {
            version: version_number(&info.version),
            aliases: aliases(&info),
            language: info.name,
        })
        .collect()
}

pub async fn runtimes_open(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<Runtime>>, PistonError> {
    open_caller(&state, &headers).await?;
    Ok(Json(runtimes(&state)))
}

pub async fn runtimes_keyed(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<Json<Vec<Runtime>>, PistonError> {
    keyed_caller(&state, &key).await?;
    Ok(Json(runtimes(&state)))
}

/// A file as Piston takes it; the name is optional.
#[derive(Debug, Deserialize)]
pub struct PistonFile {
    pub name: Option<String>,
    pub content: String,
    pub encoding: Option<String>,
}

/// `POST /api/v2/execute`. Unknown fields are ignored, as Piston does.
#[derive(Debug, Deserialize)]
pub struct ExecuteBody {
    pub language: Option<String>,
    pub version: Option<String>,
    #[serde(default)]
    pub files: Vec<PistonFile>,
    pub stdin: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    /// Milliseconds; -1 or absent: the server's default.
    pub compile_timeout: Option<i64>,
    pub run_timeout: Option<i64>,
    /// Bytes; -1 or absent: the server's default.
    pub compile_memory_limit: Option<i64>,
    pub run_memory_limit: Option<i64>,
}

/// Whether Piston's `version` (exact, a prefix such as `3` or `3.11`, or
/// `*`) selects the one version Ignis runs.
fn version_matches(asked: &str, ours: &str) -> bool {
    let asked = asked.trim().trim_start_matches(['^', '~', '=', 'v']);
    if matches!(asked, "*" | "x" | "latest" | "") {
        return true;
    }
    let (a, o): (Vec<&str>, Vec<&str>) = (asked.split('.').collect(), ours.split('.').collect());
    a.len() <= o.len()
        && a.iter()
            .zip(&o)
            .all(|(a, o)| matches!(*a, "x" | "*") || a == o)
}

fn positive(v: Option<i64>) -> Option<u64> {
    v.filter(|n| *n >= 0).map(|n| n as u64)
}

/// Translates a Piston execution into an Ignis job request.
fn translate(
    body: ExecuteBody,
    info: &LanguageInfo,
) -> Result<(CreateJob, Option<u64>), PistonError> {
    if body.files.is_empty() {
        return Err(bad("files is required as an array"));
    }
    let ext = info.extensions.first().cloned().unwrap_or_default();
    let files = body
        .files
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            let name = match f.name.filter(|n| !n.is_empty()) {
                Some(n) => n,
                None if i == 0 => info.source_file.clone(),
                None => format!("file{i}.{ext}"),
            };
            let (content, encoding) = match f.encoding.as_deref().unwrap_or("utf8") {
                "utf8" => (f.content, Encoding::Utf8),
                "base64" => (f.content, Encoding::Base64),
                "hex" => {
                    let raw = hex::decode(f.content.trim())
                        .map_err(|e| bad(format!("file {name:?} is not valid hex: {e}")))?;
                    (STANDARD.encode(raw), Encoding::Base64)
                }
                other => {
                    return Err(bad(format!(
                        "encoding {other:?} is not one of utf8, base64, hex"
                    )))
                }
            };
            Ok(FileBody {
                name,
                content,
                encoding,
            })
        })
        .collect::<Result<Vec<_>, PistonError>>()?;
    let mib = |bytes: u64| bytes.div_ceil(1024 * 1024);
    let job = CreateJob {
        language: info.name.clone(),
        files: Some(files),
        code: None,
        stdin: body.stdin,
        stdin_encoding: Encoding::Utf8,
        args: body.args,
        env: BTreeMap::new(),
        limits: Some(LimitsBody {
            timeout_ms: positive(body.run_timeout),
            memory_mib: positive(body.run_memory_limit).map(mib),
            max_output_kib: None,
            max_processes: None,
        }),
        webhook_url: None,
    };
    Ok((job, positive(body.compile_timeout)))
}

fn signal_name(n: i32) -> String {
    let name = match n {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        _ => return format!("SIG{n}"),
    };
    name.to_owned()
}

/// Piston's `run` stage of a finished job.
fn run_stage(r: &RunReport) -> Value {
    let (status, message) = match r.status {
        Verdict::Ok => (None, None),
        Verdict::Timeout => (Some("TO"), Some("Timeout")),
        Verdict::OutputLimit => (Some("OL"), Some("Output limit exceeded")),
        Verdict::MemoryLimit => (Some("SG"), Some("Memory limit exceeded")),
        Verdict::RuntimeError if r.signal.is_some() => (Some("SG"), None),
        Verdict::RuntimeError => (Some("RE"), None),
        Verdict::InternalError | Verdict::CompileError => (Some("XX"), r.message.as_deref()),
    };
    // A killed run has no exit code; a timeout is a SIGKILL, as in Piston.
    let signal = match (r.signal, r.status) {
        (Some(s), _) => Some(signal_name(s)),
        (None, Verdict::Timeout | Verdict::MemoryLimit) => Some("SIGKILL".to_owned()),
        _ => None,
    };
    let code = if signal.is_some() { None } else { r.exit_code };
    // Piston speaks text only: bytes that are not UTF-8 are replaced.
    let (stdout, stderr) = (
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr),
    );
    json!({
        "stdout": stdout,
        "stderr": stderr,
        // Ignis keeps the two streams apart; Piston's interleaving is lost.
        "output": format!("{stdout}{stderr}"),
        "code": code,
        "signal": signal,
        "message": message,
        "status": status,
        "cpu_time": r.cpu_ms,
        "wall_time": r.duration_ms,
        "memory": r.memory_kib * 1024,
    })
}

/// Piston's answer for a finished job: `compile` for compiled languages,
/// and `run` unless compilation failed (as Piston leaves it out then).
fn answer(job: &Job, info: &LanguageInfo, version: &str) -> Result<Value, PistonError> {
    let r = match (&job.status, &job.result) {
        (JobStatus::Completed, Some(r)) => r,
        _ => {
            return Err(PistonError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("job {} was {}", job.id, job.status.as_str()),
            ))
        }
    };
    let mut out = json!({"language": info.name, "version": version});
    if info.compiled {
        let text = r.compile_output.clone().unwrap_or_default();
        let failed = r.status == Verdict::CompileError;
        out["compile"] = json!({
            "stdout": "",
            "stderr": text,
            "output": text,
            "code": if failed { 1 } else { 0 },
            "signal": null,
            "message": if failed { json!("Compilation failed") } else { Value::Null },
            "status": if failed { json!("RE") } else { Value::Null },
            "wall_time": r.compile_ms,
        });
        if failed {
            return Ok(out);
        }
    }
    if r.status == Verdict::InternalError {
        let m = r.message.clone().unwrap_or_else(|| "the run failed".into());
        return Err(PistonError(StatusCode::INTERNAL_SERVER_ERROR, m));
    }
    out["run"] = run_stage(r);
    Ok(out)
}

async fn execute(
    state: &AppState,
    caller: Caller,
    body: &[u8],
) -> Result<Json<Value>, PistonError> {
    let body: ExecuteBody = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let svc = &state.svc;
    let language = body
        .language
        .clone()
        .ok_or_else(|| bad("language is required as a string"))?;
    let asked = body
        .version
        .clone()
        .ok_or_else(|| bad("version is required as a string"))?;
    let info = svc
        .fleet
        .languages()
        .into_values()
        .find(|l| l.name == language || aliases(l).contains(&language))
        .filter(|l| version_matches(&asked, &version_number(&l.version)))
        .ok_or_else(|| bad(format!("{language}-{asked} runtime is unknown")))?;
    let version = version_number(&info.version);
    let (create, compile_timeout) = translate(body, &info)?;
    let mut new = create.validate(&svc.config, &info.source_file, info.vm_memory_mib)?;
    if let Some(ms) = compile_timeout {
        let max = svc.config.defaults.compile_timeout_ms;
        if ms > max {
            return Err(bad(format!(
                "compile_timeout cannot exceed the configured limit of {max}"
            )));
        }
        new.request.limits.compile_timeout_ms = ms.max(1);
    }
    let allowance = caller.allowance(&svc.config);
    let owner = caller.owner.clone();
    // Piston answers only once the run ended: hold on for as long as the
    // job may run once started, and at least the server's usual wait.
    let compile = info.compiled.then_some(info.compile_timeout_ms);
    let limit = ignis_vmm::report::run_deadline(&new.request, compile).max(svc.config.wait_max);
    let submitted = service::submit(svc, caller.owner, allowance, new, true).await?;
    let id = submitted.job.id;
    match service::wait_at_most(svc, submitted, limit).await? {
        Some(done) => answer(&done, &info, &version).map(Json),
        None => {
            // Nobody will collect it: stop it rather than run it for naught.
            if let Err(e) = service::cancel(svc, &owner, id).await {
                tracing::debug!(job = %id, "not canceled after the wait: {e}");
            }
            Err(PistonError(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "job {id} did not end within {}s; it was canceled",
                    limit.as_secs()
                ),
            ))
        }
    }
}

pub async fn execute_open(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, PistonError> {
    let caller = open_caller(&state, &headers).await?;
    execute(&state, caller, &body).await
}

pub async fn execute_keyed(
    State(state): State<AppState>,
    Path(key): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, PistonError> {
    let caller = keyed_caller(&state, &key).await?;
    execute(&state, caller, &body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_match_as_piston_selects_them() {
        for asked in ["3.11.2", "3", "3.11", "*", "3.x", "^3.11.2"] {
            assert!(version_matches(asked, "3.11.2"), "{asked}");
        }
        for asked in ["3.10.0", "2", "3.11.2.1", "3.1"] {
            assert!(!version_matches(asked, "3.11.2"), "{asked}");
        }
    }

    #[test]
    fn signals_are_named() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(40), "SIG40");
    }
}
