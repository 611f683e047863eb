//! A Judge0 CE compatible API under `/judge0`, for clients written against
//! Judge0. Handlers parse and translate (see `model`); submissions become
//! ordinary Ignis jobs through the service layer, owned by the caller's
//! API key and visible in `/v1/jobs`. The token of a submission is its
//! job's id.

pub mod model;
pub mod request;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{self, Caller};
use super::problem::Problem;
use super::AppState;
use crate::job::{Job, JobId};
use crate::service::{self, ServiceError};
use request::{FieldErrors, SubmissionBody, Target};

/// Submissions in one batch, as Judge0's default `max_submission_batch_size`.
pub const MAX_BATCH: usize = 20;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/submissions", post(create))
        .route("/submissions/batch", get(get_batch).post(create_batch))
        .route("/submissions/{token}", get(get_one))
        .route("/languages", get(languages))
        .route("/languages/all", get(languages))
        .route("/languages/{id}", get(language))
        .route("/statuses", get(statuses))
        .route("/about", get(about))
        .route("/config_info", get(config_info))
}

/// An error as Judge0 answers one: `{"error": "..."}`, or for a refused
/// submission each field's complaints.
#[derive(Debug)]
pub struct J0Error {
    status: StatusCode,
    body: Value,
    retry_after: Option<u64>,
}

impl J0Error {
    fn new(status: StatusCode, error: impl Into<String>) -> J0Error {
        J0Error {
            status,
            body: json!({"error": error.into()}),
            retry_after: None,
        }
    }

    fn fields(errors: FieldErrors) -> J0Error {
        J0Error {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: json!(errors),
            retry_after: None,
        }
    }
}

impl From<Problem> for J0Error {
    fn from(p: Problem) -> J0Error {
        J0Error {
            status: StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body: json!({"error": p.detail}),
            retry_after: p.retry_after,
        }
    }
}

impl From<ServiceError> for J0Error {
    fn from(e: ServiceError) -> J0Error {
        Problem::from(e).into()
    }
}

impl From<crate::store::StoreError> for J0Error {
    fn from(e: crate::store::StoreError) -> J0Error {
        Problem::from(e).into()
    }
}

impl IntoResponse for J0Error {
    fn into_response(self) -> Response {
        let mut res = (self.status, Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

/// The caller, by `X-Auth-Token` (Judge0's header) or `Authorization:
/// Bearer`, holding an Ignis API key; keyless under `--dev`.
#[derive(Debug)]
pub struct J0Caller(pub Caller);

impl FromRequestParts<AppState> for J0Caller {
    type Rejection = J0Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, J0Error> {
        let unauthorized = |m: &str| J0Error::new(StatusCode::UNAUTHORIZED, m);
        let h = &parts.headers;
        let token = match (h.get("x-auth-token"), h.get(header::AUTHORIZATION)) {
            (Some(v), _) => Some(
                v.to_str()
                    .map_err(|_| unauthorized("X-Auth-Token is not text"))?
                    .trim()
                    .to_owned(),
            ),
            (None, Some(v)) => Some(
                auth::bearer(v)
                    .ok_or_else(|| unauthorized("Authorization must be `Bearer <api key>`"))?
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let how = "send an Ignis API key as `X-Auth-Token` or `Authorization: Bearer`";
        let caller = auth::identify(state, token.as_deref(), how).await?;
        Ok(J0Caller(caller))
    }
}

/// Query parameters Judge0 takes; others are ignored, as Judge0 does.
#[derive(Debug, Default, Deserialize)]
pub struct Params {
    pub base64_encoded: Option<String>,
    pub wait: Option<String>,
    pub fields: Option<String>,
    pub tokens: Option<String>,
}

fn flag(v: &Option<String>) -> bool {
    matches!(v.as_deref().map(str::trim), Some("true" | "1" | "yes"))
}

fn params(q: Result<Query<Params>, axum::extract::rejection::QueryRejection>) -> Params {
    q.map(|Query(p)| p).unwrap_or_default()
}

/// The Ignis language (on this fleet now) that Judge0 id `id` names.
fn target(state: &AppState, id: i64) -> Result<Target, J0Error> {
    for l in model::by_id(id) {
        if let Some(info) = state.svc.fleet.language(l.ignis) {
            return Ok(Target {
                ignis: info.name,
                source_file: info.source_file,
                vm_memory_mib: info.vm_memory_mib,
            });
        }
    }
    if state.svc.fleet.known().is_empty() {
        return Err(ServiceError::Unavailable("no worker has announced itself yet".into()).into());
    }
    let mut e = FieldErrors::new();
    e.insert(
        "language_id",
        vec![format!("language with id {id} doesn't exist")],
    );
    Err(J0Error::fields(e))
}

/// The display name of a job's language, if this fleet runs it.
fn name_of(state: &AppState, job: &Job) -> Option<String> {
    let info = state.svc.fleet.language(&job.language)?;
    let l = model::by_ignis(&info.name)?;
    Some(model::display_name(l, &info.version))
}

/// Parses, translates and submits one submission through the service.
async fn submit(
    state: &AppState,
    caller: &Caller,
    body: SubmissionBody,
    base64: bool,
    wait: bool,
) -> Result<service::Submitted, J0Error> {
    let id = request::language_id(&body).map_err(J0Error::fields)?;
    let target = target(state, id)?;
    let svc = &state.svc;
    let (create, kept) =
        request::translate(body, id, &target, &svc.config, base64).map_err(J0Error::fields)?;
    let mut new = create.validate(&svc.config, &target.source_file, target.vm_memory_mib)?;
    new.compat = serde_json::to_string(&kept).ok();
    let allowance = caller.allowance(&svc.config);
    Ok(service::submit(svc, caller.owner.clone(), allowance, new, wait).await?)
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, J0Error> {
    serde_json::from_slice(body).map_err(|e| J0Error::new(StatusCode::BAD_REQUEST, e.to_string()))
}

fn fields_of(p: &Params) -> Result<Vec<&'static str>, J0Error> {
    model::parse_fields(p.fields.as_deref()).map_err(|e| J0Error::new(StatusCode::BAD_REQUEST, e))
}

pub async fn create(
    State(state): State<AppState>,
    J0Caller(caller): J0Caller,
    q: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Result<Response, J0Error> {
    let p = params(q);
    let (base64, wait) = (flag(&p.base64_encoded), flag(&p.wait));
    let fields = fields_of(&p)?;
    let body: SubmissionBody = parse_body(&body)?;
    let submitted = submit(&state, &caller, body, base64, wait).await?;
    let (id, first) = (submitted.job.id, submitted.job.clone());
    if !wait {
        return Ok((StatusCode::CREATED, Json(json!({"token": id}))).into_response());
    }
    let job = match service::wait(&state.svc, submitted).await? {
        Some(done) => done,
        None => state
            .svc
            .store
            .get(&caller.owner, id)
            .await?
            .unwrap_or(first),
    };
    let view = model::submission(&job, &fields, base64, name_of(&state, &job));
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Debug, Deserialize)]
pub struct BatchBody {
    pub submissions: Vec<Value>,
}

pub async fn create_batch(
    State(state): State<AppState>,
    J0Caller(caller): J0Caller,
    q: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Result<Response, J0Error> {
    let p = params(q);
    let base64 = flag(&p.base64_encoded);
    let BatchBody { submissions } = parse_body(&body)?;
    if submissions.is_empty() || submissions.len() > MAX_BATCH {
        let m = format!("number of submissions in a batch should be between 1 and {MAX_BATCH}");
        return Err(J0Error::new(StatusCode::BAD_REQUEST, m));
    }
    let mut out = Vec::with_capacity(submissions.len());
    for s in submissions {
        let one = match serde_json::from_value::<SubmissionBody>(s) {
            Ok(body) => submit(&state, &caller, body, base64, false).await,
            Err(e) => Err(J0Error::new(StatusCode::BAD_REQUEST, e.to_string())),
        };
        out.push(match one {
            Ok(s) => json!({"token": s.job.id}),
            Err(e) => e.body,
        });
    }
    Ok((StatusCode::CREATED, Json(Value::Array(out))).into_response())
}

fn token(raw: &str) -> Option<JobId> {
    JobId::parse_str(raw.trim()).ok()
}

pub async fn get_one(
    State(state): State<AppState>,
    J0Caller(caller): J0Caller,
    Path(raw): Path<String>,
    q: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, J0Error> {
    let p = params(q);
    let fields = fields_of(&p)?;
    let not_found = || J0Error::new(StatusCode::NOT_FOUND, "submission not found");
    let id = token(&raw).ok_or_else(not_found)?;
    // Another key's job is as absent as a missing one.
    let job = state
        .svc
        .store
        .get(&caller.owner, id)
        .await?
        .ok_or_else(not_found)?;
    let base64 = flag(&p.base64_encoded);
    Ok(Json(model::submission(
        &job,
        &fields,
        base64,
        name_of(&state, &job),
    )))
}

pub async fn get_batch(
    State(state): State<AppState>,
    J0Caller(caller): J0Caller,
    q: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, J0Error> {
    let p = params(q);
    let fields = fields_of(&p)?;
    let base64 = flag(&p.base64_encoded);
    let tokens: Vec<&str> = p
        .tokens
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if tokens.is_empty() || tokens.len() > MAX_BATCH {
        let m = format!("give between 1 and {MAX_BATCH} comma-separated `tokens`");
        return Err(J0Error::new(StatusCode::BAD_REQUEST, m));
    }
    let mut out = Vec::with_capacity(tokens.len());
    for t in tokens {
        let job = match token(t) {
            Some(id) => state.svc.store.get(&caller.owner, id).await?,
            None => None,
        };
        out.push(job.map_or(Value::Null, |j| {
            model::submission(&j, &fields, base64, name_of(&state, &j))
        }));
    }
    Ok(Json(json!({"submissions": out})))
}

/// The languages this fleet runs that Judge0 has an id for.
fn fleet_languages(state: &AppState) -> Vec<(i64, Value)> {
    let mut out: Vec<(i64, Value)> = state
        .svc
        .fleet
        .languages()
        .into_values()
        .filter_map(|info| {
            let l = model::by_ignis(&info.name)?;
            let lang = json!({
                "id": l.id,
                "name": model::display_name(l, &info.version),
                "is_archived": false,
                "source_file": info.source_file,
                "compile_cmd": null,
                "run_cmd": null,
            });
            Some((l.id, lang))
        })
        .collect();
    out.sort_by_key(|(id, _)| *id);
    out.dedup_by_key(|(id, _)| *id);
    out
}

pub async fn languages(State(state): State<AppState>, _caller: J0Caller) -> Json<Value> {
    let list: Vec<Value> = fleet_languages(&state)
        .into_iter()
        .map(|(id, l)| json!({"id": id, "name": l["name"]}))
        .collect();
    Json(Value::Array(list))
}

pub async fn language(
    State(state): State<AppState>,
    _caller: J0Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, J0Error> {
    let not_found = || J0Error::new(StatusCode::NOT_FOUND, "language not found");
    let id: i64 = id.trim().parse().map_err(|_| not_found())?;
    let primary = model::by_id(id).map(|l| l.id).collect::<Vec<_>>();
    fleet_languages(&state)
        .into_iter()
        .find(|(lid, _)| primary.contains(lid))
        .map(|(_, mut l)| {
            l["id"] = json!(id);
            Json(l)
        })
        .ok_or_else(not_found)
}

pub async fn statuses(_caller: J0Caller) -> Json<Value> {
    Json(Value::Array(
        model::STATUSES
            .iter()
            .map(|(id, _)| model::status_json(*id))
            .collect(),
    ))
}

pub async fn about(_caller: J0Caller) -> Json<Value> {
    Json(json!({
        "version": model::VERSION,
        "homepage": null,
        "source_code": null,
        "maintainer": "Ignis (a Judge0 CE compatible API)",
        "ignis_version": env!("CARGO_PKG_VERSION"),
    }))
}

pub async fn config_info(State(state): State<AppState>, _caller: J0Caller) -> Json<Value> {
    let cfg = &state.svc.config;
    let (d, m) = (cfg.defaults, cfg.maxima);
    let secs = |ms: u64| ms as f64 / 1000.0;
    // The most memory any language here allows (its guest minus headroom).
    let memory_max_mib = state
        .svc
        .fleet
        .languages()
        .values()
        .map(|l| m.memory_mib.min(l.vm_memory_mib.saturating_sub(64)))
        .max()
        .unwrap_or(m.memory_mib);
    Json(json!({
        "maintenance_mode": false,
        "enable_wait_result": true,
        "enable_compiler_options": false,
        "allowed_languages_for_compile_options": [],
        "enable_command_line_arguments": true,
        "enable_submission_delete": false,
        "enable_callbacks": false,
        "callbacks_max_tries": 0,
        "callbacks_timeout": 0.0,
        "enable_additional_files": false,
        "max_queue_size": 0,
        "cpu_time_limit": secs(d.timeout_ms),
        "max_cpu_time_limit": secs(m.timeout_ms),
        "cpu_extra_time": 0.0,
        "max_cpu_extra_time": secs(m.timeout_ms),
        "wall_time_limit": secs(d.timeout_ms),
        "max_wall_time_limit": secs(m.timeout_ms),
        "memory_limit": d.memory_mib.min(memory_max_mib) * 1024,
        "max_memory_limit": memory_max_mib * 1024,
        "stack_limit": 0,
        "max_stack_limit": 0,
        "max_processes_and_or_threads": d.max_processes,
        "max_max_processes_and_or_threads": m.max_processes,
        "enable_per_process_and_thread_time_limit": false,
        "allow_enable_per_process_and_thread_time_limit": false,
        "enable_per_process_and_thread_memory_limit": false,
        "allow_enable_per_process_and_thread_memory_limit": false,
        "max_file_size": d.max_output_kib,
        "max_max_file_size": m.max_output_kib,
        "number_of_runs": 1,
        "max_number_of_runs": 1,
        "redirect_stderr_to_stdout": false,
        "max_extract_size": 0,
        "enable_batched_submissions": true,
        "max_submission_batch_size": MAX_BATCH,
        "submission_cache_duration": 0.0,
        "use_docs_as_homepage": false,
        "enable_network": false,
        "allow_enable_network": false,
    }))
}
