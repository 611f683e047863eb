//! `/v1/jobs` handlers. Each parses, checks the caller, and calls the
//! service (`crate::service`); none of them decides more than HTTP.

use std::sync::atomic::Ordering;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::auth::Caller;
use super::parsed::CreateJob;
use super::parsed::Encoding;
use super::problem::Problem;
use super::view::{JobList, JobSummary, JobView};
use super::AppState;
use crate::job::{Job, JobId, JobStatus};
use crate::service::{self, ServiceError};
use crate::state::Services;
use crate::store::ListQuery;

/// The caller's job `id`; another caller's job is as absent as a missing one.
pub async fn owned(svc: &Services, caller: &Caller, id: JobId) -> Result<Job, Problem> {
    svc.store
        .get(&caller.owner, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no job {id}")))
}

pub fn parse_id(raw: &str) -> Result<JobId, Problem> {
    JobId::parse_str(raw)
        .map_err(|_| Problem::bad_request("invalid-id", format!("{raw:?} is not a job id")))
}

/// Turns axum's JSON rejections into problem details.
pub fn json_problem(e: JsonRejection) -> Problem {
    match e {
        JsonRejection::MissingJsonContentType(_) => Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "send the body as `Content-Type: application/json`",
        ),
        JsonRejection::JsonDataError(e) => Problem::unprocessable("invalid-body", e.body_text()),
        JsonRejection::JsonSyntaxError(e) => Problem::bad_request("malformed-json", e.body_text()),
        JsonRejection::BytesRejection(e) => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Body too large",
            e.body_text(),
        ),
        other => Problem::bad_request("invalid-body", other.body_text()),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    /// Hold the answer until the job ends (at most the server's wait limit).
    #[serde(default)]
    pub wait: bool,
    /// How a finished job's stdout and stderr come back: `utf8` (default)
    /// or `base64` for the exact bytes.
    #[serde(default)]
    pub encoding: Encoding,
}

#[utoipa::path(post, path = "/v1/jobs", request_body = CreateJob, params(CreateParams),
    responses((status = 202, body = JobView, description = "queued"),
              (status = 200, body = JobView, description = "finished (with ?wait=true)"),
              (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<CreateParams>, axum::extract::rejection::QueryRejection>,
    body: Result<Json<CreateJob>, JsonRejection>,
) -> Result<Response, Problem> {
    let svc = &state.svc;
    let Query(params) = params.map_err(|e| Problem::bad_request("invalid-query", e.body_text()))?;
    let Json(body) = body.map_err(json_problem)?;
    if svc.draining.load(Ordering::SeqCst) {
        return Err(ServiceError::Draining.into());
    }
    let lang = service::language(svc, &body.language)?;
    let new = body.validate(&svc.config, &lang.source_file, lang.vm_memory_mib)?;
    let allowance = caller.allowance(&svc.config);
    let submitted = service::submit(svc, caller.owner, allowance, new, params.wait).await?;
    let (id, owner) = (submitted.job.id, submitted.job.owner.clone());
    let first = submitted.job.clone();
    if let Some(done) = service::wait(svc, submitted).await? {
        let view = JobView::new(&done, params.encoding);
        return Ok((StatusCode::OK, Json(view)).into_response());
    }
    let current = svc.store.get(&owner, id).await?.unwrap_or(first);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/v1/jobs/{id}"))],
        Json(JobView::new(&current, params.encoding)),
    )
        .into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct GetParams {
    /// How stdout and stderr come back: `utf8` (default; text, with
    /// `stdout_lossy` set when the bytes were not UTF-8) or `base64` (the
    /// exact bytes).
    #[serde(default)]
    pub encoding: Encoding,
}

#[utoipa::path(get, path = "/v1/jobs/{id}", params(("id" = String, Path), GetParams),
    responses((status = 200, body = JobView), (status = 404, body = Problem), (status = 400, body = Problem)),
    security(("api_key" = [])))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    params: Result<Query<GetParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<JobView>, Problem> {
    let Query(params) = params.map_err(|e| Problem::bad_request("invalid-query", e.body_text()))?;
    let id = parse_id(&id)?;
    let job = owned(&state.svc, &caller, id).await?;
    Ok(Json(JobView::new(&job, params.encoding)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// queued, running, completed or canceled.
    pub status: Option<String>,
    pub language: Option<String>,
    /// 1 to 100 (default 20).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/jobs", params(ListParams),
    responses((status = 200, body = JobList), (status = 400, body = Problem)),
    security(("api_key" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<JobList>, Problem> {
    let Query(p) = params.map_err(|e| Problem::bad_request("invalid-query", e.body_text()))?;
    let status = p
        .status
        .as_deref()
        .map(|s| {
            JobStatus::parse(s).ok_or_else(|| {
                Problem::bad_request("invalid-query", format!("unknown status {s:?}"))
            })
        })
        .transpose()?;
    let limit = p.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(Problem::bad_request(
            "invalid-query",
            "limit must be between 1 and 100",
        ));
    }
    let before = p.cursor.as_deref().map(parse_id).transpose()?;
    let jobs = state
        .svc
        .store
        .list(
            &caller.owner,
            &ListQuery {
                status,
                language: p.language,
                limit: limit + 1,
                before,
            },
        )
        .await?;
    let more = jobs.len() > limit as usize;
    let jobs: Vec<JobSummary> = jobs
        .iter()
        .take(limit as usize)
        .map(JobSummary::from)
        .collect();
    let next_cursor = if more {
        jobs.last().map(|j| j.id)
    } else {
        None
    };
    Ok(Json(JobList { jobs, next_cursor }))
}

#[utoipa::path(delete, path = "/v1/jobs/{id}", params(("id" = String, Path)),
    responses((status = 200, body = JobView, description = "canceled"),
              (status = 409, body = Problem, description = "already finished; left as it is"),
              (status = 404, body = Problem)),
    security(("api_key" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobView>, Problem> {
    let id = parse_id(&id)?;
    let job = service::cancel(&state.svc, &caller.owner, id).await?;
    Ok(Json(JobView::from(&job)))
}
