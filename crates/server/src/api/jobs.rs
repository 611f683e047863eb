//! `/v1/jobs` handlers. Each parses, checks the caller, and calls into the
//! store, queue or hub; none of them touches a VM.

use std::sync::atomic::Ordering;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::Deserialize;

use super::auth::Caller;
use super::parsed::CreateJob;
use super::problem::Problem;
use super::view::{JobList, JobView};
use super::AppState;
use crate::events::JobEvent;
use crate::job::{Job, JobId, JobStatus};
use crate::queue::QueuedJob;
use crate::state::Services;
use crate::store::{ListQuery, StoreError};

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
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting-down",
            "Shutting down",
            "the server is shutting down and takes no new jobs",
        ));
    }
    let image = svc
        .pools
        .launcher()
        .catalog
        .language(&body.language)
        .map_err(|e| Problem::unprocessable("unknown-language", e.to_string()))?;
    let (source_file, vm_mib) = (
        image.manifest.source_file.clone(),
        image.manifest.vm_memory_mib,
    );
    let new = body.validate(&svc.config, &source_file, vm_mib)?;
    if let Some(max) = caller.key.as_ref().and_then(|k| k.max_queued) {
        let queued = svc.store.count_queued(&caller.owner).await?;
        if queued >= u64::from(max) {
            return Err(Problem::too_many(
                format!("this key may have {max} queued jobs at once; {queued} are waiting"),
                1,
            ));
        }
    }
    let job = Job::new(caller.owner, new.language, new.request, new.webhook_url);
    svc.store.insert(&job).await?;
    svc.hub.open(job.id);
    svc.hub.publish(
        job.id,
        JobEvent::Status {
            status: JobStatus::Queued,
        },
    );
    // Subscribe before queueing, so a fast job cannot finish unseen.
    let sub = params.wait.then(|| svc.hub.subscribe(job.id)).flatten();
    if let Err(e) = svc
        .queue
        .push(QueuedJob {
            id: job.id,
            language: job.language.clone(),
        })
        .await
    {
        tracing::error!(job = %job.id, "queue: {e}");
        let _ = svc.store.cancel(&job.owner, job.id, Utc::now()).await;
        // Not accepted: close its event channel, but send no webhook.
        svc.hub.finish(
            job.id,
            JobEvent::Status {
                status: JobStatus::Canceled,
            },
        );
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "queue-unavailable",
            "Queue unavailable",
            "the job could not be queued; it was not accepted",
        ));
    }
    svc.metrics.job_submitted();
    svc.metrics.set_queue_depth(svc.queue.depth());
    let location = format!("/v1/jobs/{}", job.id);
    if let Some((_, mut rx)) = sub {
        // A stopping server answers at once (202) rather than holding its
        // own shutdown up for the whole wait.
        let shutdown = svc.shutdown.clone();
        let waited = tokio::time::timeout(svc.config.wait_max, async {
            loop {
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Ok(JobEvent::Result { .. }) | Err(_) => return,
                        Ok(_) => {}
                    },
                    () = shutdown.cancelled() => return,
                }
            }
        })
        .await;
        if waited.is_ok() {
            if let Some(done) = svc.store.get(&job.owner, job.id).await? {
                if done.status.is_final() {
                    return Ok((StatusCode::OK, Json(JobView::from(&done))).into_response());
                }
            }
        }
    }
    let current = svc.store.get(&job.owner, job.id).await?.unwrap_or(job);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(JobView::from(&current)),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/jobs/{id}", params(("id" = String, Path)),
    responses((status = 200, body = JobView), (status = 404, body = Problem), (status = 400, body = Problem)),
    security(("api_key" = [])))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobView>, Problem> {
    let id = parse_id(&id)?;
    let job = owned(&state.svc, &caller, id).await?;
    Ok(Json(JobView::from(&job)))
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
    let jobs: Vec<JobView> = jobs
        .iter()
        .take(limit as usize)
        .map(JobView::from)
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
    let svc = &state.svc;
    match svc.store.cancel(&caller.owner, id, Utc::now()).await {
        Ok(JobStatus::Running) => {
            // The worker running it kills its VM and publishes the end.
            if !svc.stop_running(id) {
                crate::worker::finish(svc, id).await;
            }
        }
        Ok(_) => {
            svc.metrics.job_canceled();
            crate::worker::finish(svc, id).await;
        }
        Err(StoreError::NotFound(_)) => return Err(Problem::not_found(format!("no job {id}"))),
        Err(StoreError::NotAllowed { current, .. }) => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "job-finished",
                "Job already finished",
                format!("job {id} is {}; it was left as it is", current.as_str()),
            ))
        }
        Err(e) => return Err(e.into()),
    }
    let job = owned(svc, &caller, id).await?;
    Ok(Json(JobView::from(&job)))
}
