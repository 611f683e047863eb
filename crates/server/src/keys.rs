//! API keys and what each may do. A key is shown once, at creation; only
//! its SHA-256 is stored. Keys are 256 random bits, so a plain hash is as
//! good as a slow one and lets a request be authenticated with one indexed
//! lookup.
//!
//! Every key has limits: requests per second, jobs queued at once and jobs
//! running at once. A key stores each limit as `None` ("the server's
//! default", so keys made before a limit existed get the operator's current
//! default), `Some(0)` ("unlimited", only when the operator asked for it) or
//! a number. [`Allowance::of`] resolves them against the server's defaults.

use chrono::Utc;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::store::{ApiKey, JobStore, StoreResult};

/// Prefix that makes Ignis keys recognisable (e.g. by secret scanners).
const PREFIX: &str = "ignis_";

/// What `--max-queued unlimited` and the like store.
pub const UNLIMITED: u32 = 0;

pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The limits stored with a key; each `None` is the server's default and
/// `Some(UNLIMITED)` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyLimits {
    pub rate_per_sec: Option<u32>,
    pub max_queued: Option<u32>,
    pub max_running: Option<u32>,
}

/// What one owner may do, resolved; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    /// Requests per second (bursts of the same size).
    pub rate_per_sec: Option<u32>,
    /// Jobs waiting in the queue at once; beyond, a submission gets 429.
    pub max_queued: Option<u32>,
    /// Jobs running at once; beyond, the owner's next job waits its turn.
    pub max_running: Option<u32>,
}

impl Allowance {
    /// The defaults of a server nobody configured: enough for a person or
    /// a CI pipeline, not enough for one key to bury everyone else's jobs.
    /// Running jobs are not capped: fair queueing already interleaves
    /// owners, so one key alone may use every free worker.
    pub const DEFAULT: Allowance = Allowance {
        rate_per_sec: Some(20),
        max_queued: Some(100),
        max_running: None,
    };

    /// No limit at all.
    pub const UNLIMITED: Allowance = Allowance {
        rate_per_sec: None,
        max_queued: None,
        max_running: None,
    };

    /// The allowance of `key` on a server whose defaults are `defaults`. A
    /// caller without a key (`--dev`, anonymous Piston) gets the defaults
    /// for its jobs; it has no rate limit, which is counted per key.
    pub fn of(key: Option<&ApiKey>, defaults: &Allowance) -> Allowance {
        let Some(key) = key else {
            return Allowance {
                rate_per_sec: None,
                ..*defaults
            };
        };
        let pick = |stored: Option<u32>, default: Option<u32>| match stored {
            None => default,
            Some(UNLIMITED) => None,
            Some(n) => Some(n),
        };
        Allowance {
            rate_per_sec: pick(key.limits.rate_per_sec, defaults.rate_per_sec),
            max_queued: pick(key.limits.max_queued, defaults.max_queued),
            max_running: pick(key.limits.max_running, defaults.max_running),
        }
    }
}

impl Default for Allowance {
    fn default() -> Allowance {
        Allowance::DEFAULT
    }
}

/// Parses a limit as an operator writes it: a positive number or
/// `unlimited` (stored as [`UNLIMITED`]).
pub fn parse_limit(s: &str) -> Result<u32, String> {
    match s.trim() {
        "unlimited" | "none" => Ok(UNLIMITED),
        n => match n.parse::<u32>() {
            Ok(0) => Err("a limit of 0 would refuse everything; say `unlimited` for none".into()),
            Ok(n) => Ok(n),
            Err(_) => Err(format!(
                "{s:?} is neither a positive number nor `unlimited`"
            )),
        },
    }
}

/// Parses a server default: a positive number, or `unlimited` for none.
pub fn parse_default(s: &str) -> Result<Option<u32>, String> {
    parse_limit(s).map(|n| (n != UNLIMITED).then_some(n))
}

/// Creates a key with the server's default limits except the two given,
/// and returns it with its secret, which is not kept.
pub async fn create(
    store: &dyn JobStore,
    name: &str,
    rate_per_sec: Option<u32>,
    max_queued: Option<u32>,
) -> StoreResult<(ApiKey, String)> {
    let limits = KeyLimits {
        rate_per_sec,
        max_queued,
        max_running: None,
    };
    create_with(store, name, limits).await
}

/// Creates a key with `limits` and returns it with its secret.
pub async fn create_with(
    store: &dyn JobStore,
    name: &str,
    limits: KeyLimits,
) -> StoreResult<(ApiKey, String)> {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("{PREFIX}{}", hex::encode(bytes));
    let key = ApiKey {
        id: uuid::Uuid::new_v4().simple().to_string()[..16].to_string(),
        name: name.to_owned(),
        limits,
        created_at: Utc::now(),
    };
    store.create_key(&key, &hash(&secret)).await?;
    Ok((key, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(limits: KeyLimits) -> ApiKey {
        ApiKey {
            id: "k".into(),
            name: "k".into(),
            limits,
            created_at: Utc::now(),
        }
    }

    #[test]
    fn stored_limits_resolve_against_the_defaults() {
        let d = Allowance {
            rate_per_sec: Some(5),
            max_queued: Some(7),
            max_running: Some(2),
        };
        // A key made before limits existed gets today's defaults.
        assert_eq!(Allowance::of(Some(&key(KeyLimits::default())), &d), d);
        let own = KeyLimits {
            rate_per_sec: Some(UNLIMITED),
            max_queued: Some(3),
            max_running: None,
        };
        let want = Allowance {
            rate_per_sec: None,
            max_queued: Some(3),
            max_running: Some(2),
        };
        assert_eq!(Allowance::of(Some(&key(own)), &d), want);
        // Keyless callers: the defaults, without a per-key rate.
        assert_eq!(Allowance::of(None, &d).rate_per_sec, None);
        assert_eq!(Allowance::of(None, &d).max_queued, Some(7));
    }

    #[test]
    fn limits_parse_as_operators_write_them() {
        assert_eq!(parse_limit("unlimited"), Ok(UNLIMITED));
        assert_eq!(parse_limit("12"), Ok(12));
        assert!(parse_limit("0").is_err());
        assert!(parse_limit("-1").is_err());
        assert_eq!(parse_default("unlimited"), Ok(None));
        assert_eq!(parse_default("100"), Ok(Some(100)));
    }
}
