//! The HTTP API. `app(state)` builds the router; handlers parse and
//! validate (see `parsed`), then act through the shared services.

pub mod auth;
pub mod host;
pub mod jobs;
pub mod judge0;
pub mod misc;
pub mod openapi;
pub mod parsed;
pub mod piston;
pub mod playground;
pub mod problem;
pub mod sse;
pub mod view;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use crate::state::Services;

/// Largest request body accepted (files and stdin travel in it).
pub const BODY_LIMIT: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct AppState {
    pub svc: Arc<Services>,
    pub limiter: Arc<auth::RateLimiter>,
}

impl AppState {
    pub fn new(svc: Arc<Services>) -> AppState {
        AppState {
            svc,
            limiter: Arc::default(),
        }
    }
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/jobs", get(jobs::list).post(jobs::create))
        .route("/v1/jobs/{id}", get(jobs::get).delete(jobs::cancel))
        .route("/v1/jobs/{id}/events", get(sse::events))
        .route("/v1/languages", get(misc::languages))
        .route("/healthz", get(misc::healthz))
        .route("/metrics", get(misc::metrics))
        .route("/openapi.json", get(misc::openapi))
        .nest("/judge0", judge0::routes())
        .nest("/piston", piston::routes())
        .merge(playground::routes())
        .fallback(|| async { problem::Problem::not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_responses,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), host::guard))
        .with_state(state)
}

/// Counts every answer by status class for `ignis_http_requests_total`.
async fn count_responses(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    state.svc.metrics.http_response(res.status().as_u16());
    res
}

#[cfg(test)]
mod tests;
