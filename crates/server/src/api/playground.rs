//! The web playground at `/`: a page, its script and style, and the
//! CodeMirror bundle (`scripts/playground-bundle`), all embedded in the
//! binary so the page works with no network. It talks to `/v1` like any
//! other client.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use super::problem::Problem;
use super::AppState;

/// Scripts only from this server; the page talks to nothing else.
/// CodeMirror sets inline styles from script: without 'unsafe-inline' for
/// styles Chromium blocks them (the browser test sees that as an error).
pub const CSP: &str = "default-src 'self'; connect-src 'self'; script-src 'self'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../assets/playground/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../assets/playground/app.js"),
    },
    Asset {
        name: "editor.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../assets/playground/editor.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../assets/playground/style.css"),
    },
];

/// Each asset's ETag: the start of its SHA-256, so a new build's assets
/// are fetched again while an unchanged one is answered with a 304.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| format!("\"{}\"", hex::encode(&Sha256::digest(a.body)[..12])))
        .collect()
});

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|h: HeaderMap| async move { serve("index.html", &h) }),
        )
        .route(
            "/playground/{name}",
            get(|Path(name): Path<String>, h: HeaderMap| async move { serve(&name, &h) }),
        )
}

fn serve(name: &str, req: &HeaderMap) -> Response {
    let Some((asset, etag)) = ASSETS
        .iter()
        .zip(ETAGS.iter())
        .find(|(a, _)| a.name == name)
    else {
        return Problem::not_found(format!("no playground file {name:?}")).into_response();
    };
    let fresh = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut res = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    // Kept, but checked with the server on every load (a 304 when
    // unchanged): the names carry no version, so an upgrade shows at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}
