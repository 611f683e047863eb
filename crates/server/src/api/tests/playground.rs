//! The playground's page and assets: served without a key (the page asks
//! for one), with their types, a CSP and revalidating caching.

use super::*;

#[tokio::test]
async fn the_page_is_html_and_its_assets_have_their_types() {
    let h = harness();
    let page = h.get("/", None).await;
    page.assert_status(StatusCode::OK);
    assert_eq!(
        page.header(header::CONTENT_TYPE),
        "text/html; charset=utf-8"
    );
    let html = String::from_utf8(page.body.to_vec()).expect("UTF-8");
    assert!(html.starts_with("<!doctype html>"), "{html}");
    for src in [
        "/playground/editor.js",
        "/playground/app.js",
        "/playground/style.css",
    ] {
        assert!(html.contains(&format!("\"{src}\"")), "the page loads {src}");
    }
    let csp = page.header(header::CONTENT_SECURITY_POLICY);
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    assert_eq!(page.header(header::CACHE_CONTROL), "no-cache");

    for (path, ty, needle) in [
        (
            "/playground/app.js",
            "text/javascript; charset=utf-8",
            "/v1/jobs",
        ),
        (
            "/playground/editor.js",
            "text/javascript; charset=utf-8",
            "IgnisEditor",
        ),
        ("/playground/style.css", "text/css; charset=utf-8", "@media"),
    ] {
        let r = h.get(path, None).await;
        r.assert_status(StatusCode::OK);
        assert_eq!(r.header(header::CONTENT_TYPE), ty, "{path}");
        assert_eq!(r.header(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        let text = String::from_utf8(r.body.to_vec()).expect("UTF-8");
        assert!(text.contains(needle), "{path} holds {needle:?}");
    }
}

#[tokio::test]
async fn an_unchanged_asset_is_answered_with_304() {
    let h = harness();
    let first = h.get("/playground/app.js", None).await;
    let etag = first.header(header::ETAG).to_owned();
    let mut req = request(Method::GET, "/playground/app.js", None, None);
    req.headers_mut()
        .insert(header::IF_NONE_MATCH, etag.parse().expect("header value"));
    let again = h.send(req).await;
    again.assert_status(StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());
    assert_eq!(again.header(header::ETAG), etag);
}

#[tokio::test]
async fn other_playground_paths_are_problems_not_pages() {
    let h = harness();
    h.get("/playground/secret.txt", None)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not-found");
    h.get("/playground/..%2Fmod.rs", None)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not-found");
}
