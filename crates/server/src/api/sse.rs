//! `GET /v1/jobs/{id}/events`: Server-Sent Events of one job — status
//! changes, output chunks in the order the program wrote them, and a final
//! `result` event carrying the whole job, after which the stream ends.

use std::convert::Infallible;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, BoxStream, StreamExt};

use super::auth::Caller;
use super::jobs::{owned, parse_id};
use super::problem::Problem;
use super::AppState;
use crate::events::{BusError, JobEvent};
use crate::job::Job;

fn to_sse(ev: &JobEvent) -> Event {
    let data = match ev {
        JobEvent::Status { status } => serde_json::json!({ "status": status }),
        JobEvent::Output { data, .. } => serde_json::json!({ "data": data }),
        JobEvent::Result { job } => job.clone(),
        JobEvent::Trimmed { limit } => serde_json::json!({ "limit": limit }),
    };
    Event::default().event(ev.name()).data(data.to_string())
}

fn finished(job: &Job) -> Vec<JobEvent> {
    vec![
        JobEvent::Status { status: job.status },
        JobEvent::Result {
            job: super::view::job_json(job),
        },
    ]
}

#[utoipa::path(get, path = "/v1/jobs/{id}/events", params(("id" = String, Path)),
    responses((status = 200, content_type = "text/event-stream",
               description = "events `status`, `stdout`, `stderr`, `trimmed` (the history \
               kept for late subscribers was full; later output was live only) and a final `result`"),
              (status = 404, body = Problem),
              (status = 429, body = Problem, description = "the job has as many subscribers as it may")),
    security(("api_key" = [])))]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let id = parse_id(&id)?;
    let svc = &state.svc;
    let job = owned(svc, &caller, id).await?;
    // Subscribed before the store is read again, so an end between the
    // two is seen one way or the other.
    let live = svc.bus.subscribe(id).await.map_err(|e| match e {
        BusError::TooManySubscribers { .. } => Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-subscribers",
            "Too many subscribers",
            e.to_string(),
        ),
        BusError::Unavailable(_) => {
            Problem::unavailable("unavailable", "Service unavailable", e.to_string())
        }
    })?;
    let now = svc.store.get(&caller.owner, id).await?.unwrap_or(job);
    let events: BoxStream<'static, JobEvent> = match live {
        Some(live) if !now.status.is_final() => live,
        // Ended (perhaps a moment ago), or not live here: the store has the
        // final word.
        _ => stream::iter(finished(&now)).boxed(),
    };
    let shutdown = svc.shutdown.clone();
    let stream = events
        .scan(false, |done, ev| {
            let out = (!*done).then(|| {
                *done = matches!(ev, JobEvent::Result { .. });
                Ok(to_sse(&ev))
            });
            futures::future::ready(out)
        })
        .take_until(async move { shutdown.cancelled().await })
        .boxed::<'static>();
    let stream: BoxStream<'static, Result<Event, Infallible>> = stream;
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
