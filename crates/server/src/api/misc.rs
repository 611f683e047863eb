//! Languages, health, metrics and the OpenAPI document, all of the whole
//! fleet of workers (under `ignis serve`, this process).

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use utoipa::OpenApi;

use super::auth::Caller;
use super::view::{Health, LanguageView, PoolView, WorkerHealth};
use super::AppState;

#[utoipa::path(get, path = "/v1/languages",
    responses((status = 200, body = [LanguageView])), security(("api_key" = [])))]
pub async fn languages(State(state): State<AppState>, _caller: Caller) -> Json<Vec<LanguageView>> {
    let langs = state
        .svc
        .fleet
        .languages()
        .into_values()
        .map(|l| LanguageView {
            pool: PoolView {
                ready: l.ready,
                booting: l.booting,
                target: l.target,
                warm: l.ready > 0,
            },
            name: l.name,
            version: l.version,
            extensions: l.extensions,
            compiled: l.compiled,
            source_file: l.source_file,
        })
        .collect();
    Json(langs)
}

#[utoipa::path(get, path = "/healthz",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let svc = &state.svc;
    let workers = svc.fleet.workers();
    let problem = match (svc.store.ping().await, svc.queue.ping().await) {
        (Err(e), _) => Some(e.to_string()),
        (_, Err(e)) => Some(e.to_string()),
        _ if workers.is_empty() => Some("no worker announces itself".to_owned()),
        _ => None,
    };
    let status = match (&problem, svc.draining.load(Ordering::SeqCst)) {
        (Some(_), _) => "unavailable",
        (None, true) => "draining",
        (None, false) => "ok",
    };
    let first = workers.first();
    let health = Health {
        status,
        driver: first.map_or("none".into(), |w| w.driver.clone()),
        snapshots: first.is_some_and(|w| w.snapshots),
        accel: first.map_or("none".into(), |w| w.accel.clone()),
        accel_reason: first.map_or(String::new(), |w| w.accel_reason.clone()),
        languages: svc.fleet.languages().into_keys().collect(),
        queue_depth: svc.queue.depth(),
        workers: workers
            .iter()
            .map(|w| WorkerHealth {
                id: w.id.clone(),
                languages: w.languages.iter().map(|l| l.name.clone()).collect(),
                capacity: w.capacity,
                running: w.running,
                draining: w.draining,
                accel: w.accel.clone(),
                jobs: w.jobs.values().sum(),
            })
            .collect(),
        problem,
    };
    let code = match health.status {
        "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::OK,
    };
    (code, Json(health))
}

#[utoipa::path(get, path = "/metrics",
    responses((status = 200, content_type = "text/plain", description = "Prometheus text format")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let svc = &state.svc;
    let m = &svc.metrics;
    m.set_queue_depth(svc.queue.depth());
    let (delivered, failed) = svc.webhooks.stats();
    m.record_webhook_stats(delivered, failed);
    let workers = svc.fleet.workers();
    let mut jobs = std::collections::BTreeMap::new();
    for w in &workers {
        for (verdict, n) in &w.jobs {
            *jobs.entry(verdict.clone()).or_insert(0) += n;
        }
    }
    let capacity = workers.iter().map(|w| w.capacity).sum();
    m.set_fleet(workers.len(), capacity, &jobs);
    if svc.pools.is_none() {
        // No pools here: show the fleet's, added up.
        for l in svc.fleet.languages().values() {
            m.add_language(&l.name);
            m.set_pool(&l.name, l.ready, l.booting);
        }
        m.set_vms_running(workers.iter().map(|w| w.running).sum());
    }
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        m.render(),
    )
}

pub async fn openapi() -> impl IntoResponse {
    Json(super::openapi::ApiDoc::openapi())
}
