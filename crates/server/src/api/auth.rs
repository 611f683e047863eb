//! Who is calling: an API key from `Authorization: Bearer`, or the dev
//! owner when the server runs with `--dev`. Also the per-key rate limit.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use tokio::time::Instant;

use super::problem::Problem;
use super::AppState;
use crate::keys::Allowance;
use crate::store::ApiKey;

/// The owner of everything a dev-mode caller creates.
pub const DEV_OWNER: &str = "dev";

#[derive(Debug, Clone)]
pub struct Caller {
    /// Jobs belong to this id; another caller cannot see them.
    pub owner: String,
    pub key: Option<ApiKey>,
}

fn unauthorized(detail: &str) -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Unauthorized",
        detail,
    )
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let token = match parts.headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => Some(bearer(v).ok_or_else(|| {
                unauthorized("the Authorization header must be `Bearer <api key>`")
            })?),
        };
        identify(state, token, "send `Authorization: Bearer <api key>`").await
    }
}

impl Caller {
    /// What this caller may do: its key's limits over the server's
    /// defaults. The developer of a `--dev` server (loopback only, no keys)
    /// is alone on it and has no limits.
    pub fn allowance(&self, cfg: &crate::config::ServerConfig) -> Allowance {
        if cfg.dev && self.key.is_none() && self.owner == DEV_OWNER {
            return Allowance::UNLIMITED;
        }
        Allowance::of(self.key.as_ref(), &cfg.key_defaults)
    }
}

/// The key in an `Authorization: Bearer <key>` header.
pub fn bearer(v: &axum::http::HeaderValue) -> Option<&str> {
    v.to_str()
        .ok()
        .and_then(|s| s.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The caller holding API key `token` (with its rate limit taken), or, with
/// no key, the dev owner under `--dev`. `how` tells a keyless caller how to
/// send one. Every API (ours, Judge0's, Piston's) authenticates here.
pub async fn identify(state: &AppState, token: Option<&str>, how: &str) -> Result<Caller, Problem> {
    let caller = match token {
        None if state.svc.config.dev => Caller {
            owner: DEV_OWNER.into(),
            key: None,
        },
        None => return Err(unauthorized(how)),
        Some(token) => {
            let key = state
                .svc
                .store
                .key_by_hash(&crate::keys::hash(token))
                .await?
                .ok_or_else(|| unauthorized("unknown API key"))?;
            Caller {
                owner: key.id.clone(),
                key: Some(key),
            }
        }
    };
    if let Some(key) = &caller.key {
        let allowance = caller.allowance(&state.svc.config);
        if let Some(rate) = allowance.rate_per_sec {
            if let Err(wait) = state.limiter.check(&key.id, rate) {
                return Err(Problem::too_many(
                    format!("key {:?} allows {rate} requests per second", key.name),
                    wait,
                ));
            }
        }
    }
    Ok(caller)
}

/// A token bucket per key: `rate` tokens per second, bursts up to `rate`.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// Takes a token, or says how many seconds until one is there.
    pub fn check(&self, key: &str, rate: u32) -> Result<(), u64> {
        let rate = f64::from(rate.max(1));
        let now = Instant::now();
        // Plain numbers; a poisoned lock still holds usable buckets.
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = b.entry(key.to_owned()).or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(rate);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / rate).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_refills_with_time() {
        let l = RateLimiter::default();
        assert!(l.check("k", 2).is_ok());
        assert!(l.check("k", 2).is_ok());
        assert_eq!(l.check("k", 2), Err(1));
        assert!(l.check("other", 2).is_ok(), "buckets are per key");
        tokio::time::advance(std::time::Duration::from_millis(500)).await;
        assert!(l.check("k", 2).is_ok());
        assert!(l.check("k", 2).is_err());
    }
}
