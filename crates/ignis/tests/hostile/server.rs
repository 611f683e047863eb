//! The output flood through a real `ignis serve`: one byte per write, every
//! byte a control character that JSON must escape, sent to the API that
//! keeps, streams and returns it. The server's memory must stay bounded by
//! the output cap, not grow with the number of writes.

use serde_json::{json, Value};

use crate::common::{images, serve::Serve};

/// Resident and peak resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test]
async fn output_flood_through_the_api_keeps_the_server_small() {
    images(&["python"]);
    let (serve, key) = Serve::with_key();
    let http = reqwest::Client::new();
    let submit = |code: &str, max_output_kib: u64| {
        http.post(format!("{}/v1/jobs?wait=true", serve.base))
            .bearer_auth(&key)
            .json(&json!({
                "language": "python",
                "code": code,
                "limits": {"timeout_ms": 30_000, "memory_mib": 64, "max_output_kib": max_output_kib},
            }))
            .send()
    };
    // A first job, so that what every job costs is in the baseline.
    let warm: Value = submit("print('hi')\n", 1024)
        .await
        .expect("submit")
        .json()
        .await
        .expect("json");
    assert_eq!(warm["result"]["status"], "ok", "{warm}");
    let (before, _) = rss_kib(serve.pid());

    // `dd bs=1` writes one byte per system call: a NUL, which JSON
    // escapes six times its size. Twice: the second flood shows whether
    // anything of the first is kept.
    let mut after = Vec::new();
    for _ in 0..2 {
        flood(&http, &serve, &key).await;
        after.push(rss_kib(serve.pid()));
    }
    let [(first, _), (second, peak)] = after[..] else {
        unreachable!("two floods")
    };
    eprintln!("server RSS: {before} KiB before, {first} KiB after one flood, {second} KiB after two, peak {peak} KiB");
    let log = || serve.log.lock().expect("log").clone();
    // A MiB of output may be held a few times over (as bytes, as JSON, in
    // a response); what must not happen is memory in proportion to the
    // million writes it took, or memory that stays with every job.
    assert!(
        first.saturating_sub(before) < 64 * 1024,
        "one flood grew the server from {before} KiB to {first} KiB\n{}",
        log()
    );
    assert!(
        second.saturating_sub(first) < 16 * 1024,
        "a second flood grew the server from {first} KiB to {second} KiB\n{}",
        log()
    );
}

/// Submits the flood and checks that it was cut at its cap, as answered
/// and as stored.
async fn flood(http: &reqwest::Client, serve: &Serve, key: &str) {
    let flood = "import os\nos.execvp('dd', ['dd', 'if=/dev/zero', 'bs=1'])\n";
    let res = http
        .post(format!("{}/v1/jobs?wait=true", serve.base))
        .bearer_auth(key)
        .json(&json!({
            "language": "python",
            "code": flood,
            "limits": {"timeout_ms": 30_000, "memory_mib": 64, "max_output_kib": 1024},
        }))
        .send()
        .await
        .expect("submit the flood");
    assert_eq!(res.status(), 200, "held until it ended");
    let job: Value = res.json().await.expect("json");
    assert_eq!(job["result"]["status"], "output_limit", "{}", job["result"]);
    assert_eq!(job["result"]["stdout_truncated"], true);
    let id = job["id"].as_str().expect("an id");
    let again = http
        .get(format!("{}/v1/jobs/{id}", serve.base))
        .bearer_auth(key)
        .send()
        .await
        .expect("get the job");
    assert_eq!(again.status(), 200);
    let stored: Value = again.json().await.expect("json");
    let stdout = stored["result"]["stdout"].as_str().expect("stdout");
    assert_eq!(stdout.len(), 1024 * 1024, "the output, cut at its cap");
    assert!(stdout.bytes().all(|b| b == 0));
}
