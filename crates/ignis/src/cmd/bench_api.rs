//! `ignis bench --api`: the service under load. An embedded server on
//! loopback (temporary data directory, dev mode), N concurrent clients
//! submitting hello world through the HTTP API, in four scenarios: a pool
//! of one kept full and used one job at a time, a pool as large as the
//! clients, and no pool at all — every job restoring its VM from the
//! snapshot, then (as `--no-snapshot` would) booting it. The last two side
//! by side give what restore buys a service whose pool cannot keep up.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ignis_server::config::ServerConfig;
use ignis_server::state::Services;
use ignis_vmm::paths::Paths;
use ignis_vmm::Launcher;
use serde::Serialize;
use serde_json::{json, Value};

use super::bench::{write_hello, Args, Hello};
use super::bench_native as native;
use super::bench_table::{markdown, maybe_cell, ms, ratio_cell};
use super::bench_util::{Maybe, Stats};

#[derive(Debug, Clone, Copy)]
pub struct ApiBench {
    pub clients: usize,
    pub jobs: usize,
    /// Languages with an image besides the one measured: their pools fill
    /// too, and get room of their own in the budget.
    pub other_languages: usize,
}

/// One way to run the service.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Scenario {
    pub name: &'static str,
    /// Ready VMs kept per language.
    pub warm: usize,
    /// VMs are restored from the snapshot (else booted).
    pub snapshots: bool,
    /// One client that waits for the pool to be full before each job: the
    /// latency a lightly used service gives (its jobs/s mean nothing).
    pub paced: bool,
}

/// Percentiles of one phase, in milliseconds.
#[derive(Debug, Default, Serialize)]
pub struct Phase {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Serialize)]
pub struct ApiResult {
    pub scenario: Scenario,
    pub language: String,
    pub clients: usize,
    pub jobs: usize,
    pub failed: usize,
    /// Of the jobs that succeeded, how many ran in a restored VM.
    pub restored: usize,
    pub throughput_jobs_per_s: f64,
    pub queue_wait: Phase,
    pub acquire: Phase,
    pub run: Phase,
    /// As the server timed the job (queue wait to result).
    pub total_server: Phase,
    /// As the client saw it: submit to the finished job in the answer.
    pub total_client: Phase,
}

#[derive(Debug, Serialize)]
struct LanguageApi {
    language: String,
    scenarios: Vec<ApiResult>,
    /// With no pool: jobs/s restoring over jobs/s booting.
    warm0_throughput_speedup: Option<f64>,
    native_run_ms: Maybe<Stats>,
}

/// Every language in turn: scenarios, then the table or the JSON.
/// `launcher` only says which languages have images.
pub fn main(
    rt: &tokio::runtime::Runtime,
    launcher: &Launcher,
    a: &Args,
    hellos: &[&Hello],
    work: &Path,
) -> anyhow::Result<()> {
    if a.clients == 0 || a.jobs == 0 {
        bail!("--clients and --jobs must be at least 1");
    }
    let b = ApiBench {
        clients: a.clients,
        jobs: a.jobs,
        other_languages: launcher.catalog.languages.len().saturating_sub(1),
    };
    let mut all = Vec::new();
    for h in hellos {
        let file = write_hello(h, work)?;
        let dir = file.parent().unwrap_or(work);
        let scenarios = rt.block_on(run(b, &h.language, &h.source))?;
        eprintln!("bench: {} natively", h.language);
        let native_run_ms = native::measure(h.native.as_ref(), &file, dir, a.runs).run_ms;
        let l = LanguageApi {
            language: h.language.clone(),
            warm0_throughput_speedup: warm0_speedup(&scenarios),
            scenarios,
            native_run_ms,
        };
        if !a.json {
            print(b, &l);
        }
        all.push(l);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    }
    Ok(())
}

/// The scenarios, in the order they run and print.
fn scenarios(clients: usize) -> [Scenario; 4] {
    let pool = |name, warm, paced| Scenario {
        name,
        warm,
        snapshots: true,
        paced,
    };
    [
        pool("pool of 1 kept full, one job at a time", 1, true),
        pool("pool as large as the clients", clients, false),
        pool("no pool, every job restores its VM", 0, false),
        Scenario {
            name: "no pool, every job boots its VM (--no-snapshot)",
            warm: 0,
            snapshots: false,
            paced: false,
        },
    ]
}

/// Every scenario for one language.
pub async fn run(b: ApiBench, language: &str, code: &str) -> anyhow::Result<Vec<ApiResult>> {
    let mut results = Vec::new();
    for s in scenarios(b.clients) {
        eprintln!("bench: {language} API, {}", s.name);
        let b = match s.paced {
            true => ApiBench {
                clients: 1,
                jobs: b.jobs.min(10),
                ..b
            },
            false => b,
        };
        results.push(
            scenario(b, language, code, s)
                .await
                .with_context(|| format!("{language} API scenario {:?}", s.name))?,
        );
    }
    Ok(results)
}

fn warm0_speedup(results: &[ApiResult]) -> Option<f64> {
    let warm0 = |snapshots| {
        results
            .iter()
            .find(|r| r.scenario.warm == 0 && r.scenario.snapshots == snapshots)
            .map(|r| r.throughput_jobs_per_s)
    };
    let (restore, boot) = (warm0(true)?, warm0(false)?);
    (boot > 0.0).then(|| (restore / boot * 100.0).round() / 100.0)
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

/// Waits until the pool holds `warm` ready VMs of `language`.
async fn pool_full(svc: &Services, language: &str, warm: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let pools = svc
        .pools
        .as_ref()
        .context("the embedded service has pools")?;
    while pools.sizes(language).0 < warm {
        if Instant::now() > deadline {
            bail!("the {language} pool did not fill in 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The embedded service for one scenario, its snapshot made before any
/// job is timed.
async fn service(
    b: ApiBench,
    language: &str,
    s: Scenario,
    dir: &Path,
) -> anyhow::Result<Arc<Services>> {
    let mut cfg = ServerConfig::new(dir.to_path_buf());
    cfg.dev = true;
    cfg.launch.snapshots = s.snapshots;
    cfg.pool.warm = s.warm;
    // Room for the clients' jobs and the refills behind them, plus the
    // other languages' pools, which would otherwise take from it.
    cfg.pool.max_vms = b.clients * 2 + s.warm * b.other_languages;
    cfg.workers = b.clients;
    cfg.shutdown_grace = Duration::from_secs(5);
    let svc = ignis_server::embedded::services(cfg, Paths::from_env()).await?;
    if s.snapshots {
        svc.pools
            .as_ref()
            .context("the embedded service has pools")?
            .launcher()
            .snapshot(language)
            .await
            .with_context(|| format!("the {language} snapshot"))?;
    }
    Ok(svc)
}

/// One finished job as the client saw it: the job (if the answer was one)
/// and the wall-clock time to it.
type Row = (Option<Value>, f64);

async fn scenario(
    b: ApiBench,
    language: &str,
    code: &str,
    s: Scenario,
) -> anyhow::Result<ApiResult> {
    let dir = tempfile::tempdir().context("making the server's data directory")?;
    let svc = service(b, language, s, dir.path()).await?;
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
    // Measure with every pool full, as a steady service has them: a pool
    // still filling (of any language) would take CPU from the jobs.
    let pools = svc
        .pools
        .as_ref()
        .context("the embedded service has pools")?;
    for l in pools.launcher().catalog.languages.keys() {
        pool_full(&svc, l, s.warm).await?;
    }
    let started = Instant::now();
    let rows = clients(b, &svc, &base, language, code, s).await;
    let elapsed = started.elapsed().as_secs_f64();
    let _ = stop_tx.send(());
    server.await.context("server task")??;
    Ok(summarize(b, language, s, &rows?, elapsed))
}

/// N clients submitting `?wait=true` jobs until `b.jobs` were submitted.
async fn clients(
    b: ApiBench,
    svc: &Arc<Services>,
    base: &str,
    language: &str,
    code: &str,
    s: Scenario,
) -> anyhow::Result<Vec<Row>> {
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let body = json!({"language": language, "code": code});
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..b.clients {
        let (client, next, svc) = (client.clone(), next.clone(), svc.clone());
        let (url, body, language) = (
            format!("{base}/v1/jobs?wait=true"),
            body.clone(),
            language.to_owned(),
        );
        tasks.spawn(async move {
            let mut rows = Vec::new();
            while next.fetch_add(1, Ordering::SeqCst) < b.jobs {
                if s.paced {
                    pool_full(&svc, &language, s.warm).await?;
                }
                let t = Instant::now();
                // A failed request counts as a failed job, not a failed bench.
                let job = match client.post(&url).json(&body).send().await {
                    Ok(r) => r.json::<Value>().await.ok(),
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
    Ok(rows)
}

fn summarize(b: ApiBench, language: &str, s: Scenario, rows: &[Row], secs: f64) -> ApiResult {
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
    ApiResult {
        scenario: s,
        language: language.to_owned(),
        clients: b.clients,
        jobs: rows.len(),
        failed: rows.len() - ok.len(),
        restored: ok
            .iter()
            .filter(|j| j["result"]["vm"]["restored"] == true)
            .count(),
        throughput_jobs_per_s: ok.len() as f64 / secs,
        queue_wait: phase(timing("queue_ms")),
        acquire: phase(timing("acquire_ms")),
        run: phase(timing("run_ms")),
        total_server: phase(timing("total_ms")),
        total_client: phase(rows.iter().map(|(_, ms)| *ms).collect()),
    }
}

/// One language's scenarios as a Markdown table, with the warm-0 ratio.
fn print(b: ApiBench, l: &LanguageApi) {
    println!(
        "\nignis bench --api: {} hello world, {} clients, {} jobs per scenario \
         (the paced one: 1 client, {} jobs); ms; run: inside the VM, compile included; \
         total: as the client saw it",
        l.language,
        b.clients,
        b.jobs,
        b.jobs.min(10)
    );
    println!();
    let mut rows = vec![[
        l.language.as_str(),
        "acquire p50",
        "run p50",
        "total p50",
        "p90",
        "p99",
        "jobs/s",
        "restored",
        "failed",
    ]
    .map(str::to_owned)
    .to_vec()];
    for r in &l.scenarios {
        let t = &r.total_client;
        let jobs_s = match r.scenario.paced {
            true => "—".to_owned(),
            false => format!("{:.2}", r.throughput_jobs_per_s),
        };
        rows.push(vec![
            r.scenario.name.to_owned(),
            ms(r.acquire.p50),
            ms(r.run.p50),
            ms(t.p50),
            ms(t.p90),
            ms(t.p99),
            jobs_s,
            format!("{}/{}", r.restored, r.jobs - r.failed),
            r.failed.to_string(),
        ]);
    }
    markdown(&rows);
    println!();
    println!(
        "no pool, jobs/s restoring ÷ booting: {}; native {} run on the host: {} ms",
        ratio_cell(l.warm0_throughput_speedup),
        l.language,
        maybe_cell(&l.native_run_ms)
    );
}
