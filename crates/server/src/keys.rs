//! API keys. A key is shown once, at creation; only its SHA-256 is stored.
//! Keys are 256 random bits, so a plain hash is as good as a slow one and
//! lets a request be authenticated with one indexed lookup.

use chrono::Utc;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::store::{ApiKey, JobStore, StoreResult};

/// Prefix that makes Ignis keys recognisable (e.g. by secret scanners).
const PREFIX: &str = "ignis_";

pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Creates a key and returns it with its secret, which is not kept.
pub async fn create(
    store: &dyn JobStore,
    name: &str,
    rate_per_sec: Option<u32>,
    max_queued: Option<u32>,
) -> StoreResult<(ApiKey, String)> {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("{PREFIX}{}", hex::encode(bytes));
    let key = ApiKey {
        id: uuid::Uuid::new_v4().simple().to_string()[..16].to_string(),
        name: name.to_owned(),
        rate_per_sec,
        max_queued,
        created_at: Utc::now(),
    };
    store.create_key(&key, &hash(&secret)).await?;
    Ok((key, secret))
}
