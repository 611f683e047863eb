//! `ignis bench --api`: the service under load. An embedded server on
//! loopback (temporary data directory, dev mode), N concurrent clients
//! submitting hello world through the HTTP API, once with the warm pool full
//! and once with it empty; latency percentiles of every phase and throughput.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ignis_server::config::ServerConfig;
use ignis_vmm::paths::Paths;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy)]
pub struct ApiBench {
    pub clients: usize,
    pub jobs: usize,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Phase {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, serde::Serialize)]
pub struct ApiResult {
    pub pool: &'static str,
    pub language: String,
    pub clients: usize,
    pub jobs: usize,
    pub failed: usize,
    pub throughput_jobs_per_s: f64,
    /// Milliseconds.
    pub queue_wait: Phase,
    pub acquire: Phase,
    pub run: Phase,
    pub total_server: Phase,
    pub total_client: Phase,
}

fn phase(mut v: Vec<f64>) -> Phase {
    if v.is_empty() {
        return Phase::default();
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Phase {
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        max: at(1.0),
    }
}

/// Three scenarios: one client that always finds a ready VM (the latency a
/// lightly used service gives), N clients against a pool of N, and N clients
/// with no pool at all.
pub async fn run(b: ApiBench, language: &str, code: &str) -> anyhow::Result<Vec<ApiResult>> {
    let paced = ApiBench {
        clients: 1,
        jobs: b.jobs.min(10),
    };
    Ok(vec![
        one(
            paced,
            language,
            code,
            "pool of 1 kept full, one job at a time",
            1,
            true,
        )
        .await?,
        one(
            b,
            language,
            code,
            "pool as large as the clients",
            b.clients,
            false,
        )
        .await?,
        one(
            b,
            language,
            code,
            "no pool: every job boots its VM",
            0,
            false,
        )
        .await?,
    ])
}

/// Waits until the pool holds `warm` ready VMs of `language`.
async fn pool_full(
    svc: &ignis_server::state::Services,
    language: &str,
    warm: usize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while svc.pools.sizes(language).0 < warm {
        if Instant::now() > deadline {
            bail!("the {language} pool did not fill in 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn one(
    b: ApiBench,
    language: &str,
    code: &str,
    name: &'static str,
    warm: usize,
    paced: bool,
) -> anyhow::Result<ApiResult> {
    let dir = tempfile::tempdir()?;
    let mut cfg = ServerConfig::new(dir.path().to_path_buf());
    cfg.dev = true;
    cfg.pool.warm = warm;
    cfg.pool.max_vms = b.clients.max(1) * 2;
    cfg.workers = b.clients.max(1);
    cfg.shutdown_grace = Duration::from_secs(5);
    let svc = ignis_server::embedded::services(cfg, Paths::from_env()).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ignis_server::server::run(
        listener,
        async {
            let _ = stop_rx.await;
        },
        svc.clone(),
    ));
    // Measure the warm cases with the pool full, as a steady service has it.
    pool_full(&svc, language, warm).await?;
    let client = reqwest::Client::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..b.clients.max(1) {
        let (client, base, next, svc) = (client.clone(), base.clone(), next.clone(), svc.clone());
        let language = language.to_owned();
        let body = json!({"language": language, "code": code});
        let jobs = b.jobs;
        tasks.spawn(async move {
            let mut rows = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < jobs {
                if paced {
                    pool_full(&svc, &language, warm).await?;
                }
                let t = Instant::now();
                let res = client
                    .post(format!("{base}/v1/jobs?wait=true"))
                    .json(&body)
                    .send()
                    .await;
                let job: Option<Value> = match res {
                    Ok(r) => r.json().await.ok(),
                    Err(_) => None,
                };
                rows.push((job, t.elapsed().as_secs_f64() * 1000.0));
            }
            anyhow::Ok(rows)
        });
    }
    let mut rows = Vec::new();
    while let Some(r) = tasks.join_next().await {
        rows.extend(r.context("client task")??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = stop_tx.send(());
    server.await.context("server task")??;

    let ok: Vec<&Value> = rows
        .iter()
        .filter_map(|(j, _)| j.as_ref())
        .filter(|j| j["result"]["status"] == "ok")
        .collect();
    let timing = |k: &str| {
        ok.iter()
            .filter_map(|j| j["timings"][k].as_f64())
            .collect::<Vec<_>>()
    };
    Ok(ApiResult {
        pool: name,
        language: language.to_owned(),
        clients: b.clients,
        jobs: rows.len(),
        failed: rows.len() - ok.len(),
        throughput_jobs_per_s: ok.len() as f64 / elapsed,
        queue_wait: phase(timing("queue_ms")),
        acquire: phase(timing("acquire_ms")),
        run: phase(timing("run_ms")),
        total_server: phase(timing("total_ms")),
        total_client: phase(rows.iter().map(|(_, ms)| *ms).collect()),
    })
}

pub fn print(results: &[ApiResult]) {
    for r in results {
        println!(
            "\nAPI, {}: {} {} hello-world jobs, {} clients: {:.2} jobs/s, {} failed",
            r.pool, r.jobs, r.language, r.clients, r.throughput_jobs_per_s, r.failed
        );
        println!(
            "  {:<14} {:>8} {:>8} {:>8} {:>8}",
            "phase (ms)", "p50", "p90", "p99", "max"
        );
        for (n, p) in [
            ("queue wait", &r.queue_wait),
            ("VM acquire", &r.acquire),
            ("run", &r.run),
            ("total server", &r.total_server),
            ("total client", &r.total_client),
        ] {
            println!(
                "  {n:<14} {:>8.0} {:>8.0} {:>8.0} {:>8.0}",
                p.p50, p.p90, p.p99, p.max
            );
        }
    }
}
