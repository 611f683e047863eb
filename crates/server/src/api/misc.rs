//! Languages, health, metrics and the OpenAPI document.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use utoipa::OpenApi;

use super::auth::Caller;
use super::view::{Health, LanguageView, PoolView};
use super::AppState;

#[utoipa::path(get, path = "/v1/languages",
    responses((status = 200, body = [LanguageView])), security(("api_key" = [])))]
pub async fn languages(State(state): State<AppState>, _caller: Caller) -> Json<Vec<LanguageView>> {
    let pools = &state.svc.pools;
    let target = pools.warm_target();
    let langs = pools
        .launcher()
        .catalog
        .languages
        .values()
        .map(|l| {
            let (ready, booting) = pools.sizes(l.name());
            LanguageView {
                name: l.name().to_owned(),
                version: l.manifest.version.clone(),
                extensions: l.manifest.extensions.clone(),
                compiled: l.manifest.compiled,
                source_file: l.manifest.source_file.clone(),
                pool: PoolView {
                    ready,
                    booting,
                    target,
                    warm: ready > 0,
                },
            }
        })
        .collect();
    Json(langs)
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
pub async fn healthz(State(state): State<AppState>) -> Json<Health> {
    let svc = &state.svc;
    let l = svc.pools.launcher();
    Json(Health {
        status: if svc.draining.load(std::sync::atomic::Ordering::SeqCst) {
            "draining"
        } else {
            "ok"
        },
        driver: l.driver.name(),
        snapshots: l.snapshots.is_some(),
        accel: l.accel.accel.to_string(),
        accel_reason: l.accel.reason.clone(),
        languages: l.catalog.languages.keys().cloned().collect(),
        queue_depth: svc.queue.depth(),
    })
}

#[utoipa::path(get, path = "/metrics",
    responses((status = 200, content_type = "text/plain", description = "Prometheus text format")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let svc = &state.svc;
    svc.metrics.set_queue_depth(svc.queue.depth());
    let (delivered, failed) = svc.webhooks.stats();
    svc.metrics.record_webhook_stats(delivered, failed);
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        svc.metrics.render(),
    )
}

pub async fn openapi() -> impl IntoResponse {
    Json(super::openapi::ApiDoc::openapi())
}
