//! DNS rebinding: a web page the developer visits can make its own name
//! resolve to 127.0.0.1 and then call a loopback server as if it were its
//! origin. Browsers always send the name they looked up as `Host`, so a
//! server that answers only to its own names cannot be driven that way.
//!
//! In `--dev` mode (no API keys) every request must carry a `Host` that is
//! `localhost`, `127.0.0.1`, `[::1]`, the listen address, or a name the
//! operator allowed (`--allowed-host`), with any port; anything else gets
//! `421 Misdirected Request`. A request without `Host` (HTTP/1.0, no
//! browser) passes: it cannot come from a rebinding page.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::problem::Problem;
use super::AppState;

/// Names every `--dev` server answers to, whatever it listens on.
const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The host part of a `Host` header value (`name`, `name:port`, `[v6]`,
/// `[v6]:port`), lower-cased, without brackets; `None` when malformed.
pub fn host_name(value: &str) -> Option<String> {
    let value = value.trim();
    let name = if let Some(rest) = value.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        inside
    } else {
        match value.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return None,
            None => value,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    (!name.is_empty()).then(|| name.to_ascii_lowercase())
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// Whether a request naming `host` may be answered, given the names the
/// operator allowed (the listen address among them).
pub fn allowed(host: &str, extra: &[String]) -> bool {
    host_name(host).is_some_and(|name| {
        LOOPBACK_NAMES.contains(&name.as_str())
            || extra.iter().filter_map(|e| host_name(e)).any(|e| e == name)
    })
}

/// The middleware: in `--dev` mode, answers 421 to a foreign `Host`.
pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let cfg = &state.svc.config;
    if cfg.dev {
        let host = req
            .headers()
            .get(header::HOST)
            .map(|h| h.to_str().unwrap_or("\u{fffd}").to_owned())
            .or_else(|| req.uri().authority().map(|a| a.to_string()));
        if let Some(host) = host.filter(|h| !allowed(h, &cfg.allowed_hosts)) {
            tracing::warn!(host = %host.escape_debug(), "refused a request for a foreign host");
            return Problem::new(
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected-request",
                "Misdirected request",
                format!(
                    "this development server answers to localhost, 127.0.0.1, [::1] and the names \
                     given with --allowed-host, not to {:?}",
                    host.chars().take(100).collect::<String>()
                ),
            )
            .into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_pass_with_any_port_and_others_do_not() {
        let none: &[String] = &[];
        for ok in [
            "localhost",
            "localhost:8080",
            "LOCALHOST:1",
            "127.0.0.1:8080",
            "[::1]:8080",
            "[::1]",
            "localhost.",
        ] {
            assert!(allowed(ok, none), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.nip.io:8080",
            "",
            ":8080",
            "localhost:x",
            "[::1]x",
            "127.0.0.2",
        ] {
            assert!(!allowed(bad, none), "{bad}");
        }
    }

    #[test]
    fn the_operators_names_and_the_listen_address_pass() {
        let extra = vec![
            "ignis.lan".to_string(),
            "[::2]:9000".to_string(),
            "10.0.0.5".into(),
        ];
        assert!(allowed("ignis.lan:8080", &extra));
        assert!(allowed("IGNIS.LAN", &extra));
        assert!(allowed("[::2]:8080", &extra));
        assert!(allowed("10.0.0.5:80", &extra));
        assert!(!allowed("other.lan", &extra));
    }
}
