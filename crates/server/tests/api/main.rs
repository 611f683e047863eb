//! The HTTP API end to end: a real server on a loopback port, a real SQLite
//! store, real QEMU VMs booted from the installed images.
//!
//! Every test skips (and says why) when the images are not installed.
//! Nothing here sleeps to wait for the server: tests follow a job's event
//! stream, or hold `?wait=true`, until the thing they wait for happened.

#[path = "../common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{go, id_of, python, spawn_app, Opts};
use ignis_server::job::JobStatus;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The parts of a problem+json answer a client relies on.
pub(crate) async fn expect_problem(r: reqwest::Response, status: StatusCode, slug: &str) {
    assert_eq!(
        r.headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let p = common::expect_json(r, status).await;
    assert_eq!(p["type"], format!("urn:ignis:problem:{slug}"), "{p}");
}

pub(crate) fn metric_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

mod cancel;
mod jobs;
mod lifecycle;
