//! `ignis bench --distributed`: the multi-process set-up beside `ignis
//! serve`, on this machine. Starts a throw-away `nats-server -js` and
//! PostgreSQL (on free loopback ports, in temporary directories), then
//! `ignis api` and `ignis worker` processes of this binary, and measures:
//! - submissions per second into the API with an empty queue and no worker
//!   running them (the API's own cost: PostgreSQL insert + JetStream publish);
//! - jobs per second end to end (`?wait=true`, hello world in Python) with
//!   one and with two workers (the hello world of the first `--language`,
//!   python by default, from its recipe);
//! - the same end to end through `ignis serve`, with as many job slots as
//!   one worker.
//!
//! Every process and server is stopped before it returns.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ignis_testkit::{free_port, spawn_owned, Nats, Postgres};
use serde_json::{json, Value};
use tempfile::TempDir;

use super::bench::{Args, Hello};

/// Job slots (VMs running jobs at once) of one worker, and of `serve`.
const SLOTS: usize = 2;
const READY_WITHIN: Duration = Duration::from_secs(180);

struct Row {
    setup: String,
    submissions_per_sec: Option<f64>,
    jobs_per_sec: Option<f64>,
    p50_ms: Option<f64>,
    ok: usize,
    total: usize,
}

/// Processes of this binary, stopped (SIGTERM, then a wait) when dropped,
/// before the servers they use.
struct Procs(Vec<Child>);

impl Procs {
    fn spawn(&mut self, dir: &std::path::Path, name: &str, args: &[String]) -> anyhow::Result<()> {
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(args).stdout(Stdio::null()).stderr(log);
        self.0
            .push(spawn_owned(cmd).with_context(|| format!("starting {name}"))?);
        Ok(())
    }

    fn stop_last(&mut self) {
        if let Some(c) = self.0.pop() {
            stop(c);
        }
    }
}

fn stop(mut c: Child) {
    // SAFETY: kill takes a pid and a signal and touches no memory.
    unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
    let _ = c.wait();
}

impl Drop for Procs {
    fn drop(&mut self) {
        while !self.0.is_empty() {
            self.stop_last();
        }
    }
}

/// NATS, PostgreSQL, and the processes on them. Field order is drop order.
struct Cluster {
    procs: Procs,
    _nats: Nats,
    _pg: Postgres,
    db: String,
    nats_url: String,
    dir: TempDir,
}

impl Cluster {
    fn new() -> anyhow::Result<Cluster> {
        let (nats, pg) = (Nats::start(), Postgres::start());
        let db = pg.database();
        Ok(Cluster {
            procs: Procs(Vec::new()),
            nats_url: nats.url(),
            _nats: nats,
            _pg: pg,
            db,
            dir: tempfile::tempdir()?,
        })
    }

    fn common(&self) -> Vec<String> {
        let data = self.dir.path().join("data").display().to_string();
        [
            "--nats",
            &self.nats_url,
            "--database",
            &self.db,
            "--data-dir",
            &data,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    async fn api(&mut self) -> anyhow::Result<String> {
        let port = free_port();
        let mut args = vec!["api".into(), "--dev".into(), "--listen".into()];
        args.push(format!("127.0.0.1:{port}"));
        args.extend(self.common());
        self.procs.spawn(self.dir.path(), "api", &args)?;
        let base = format!("http://127.0.0.1:{port}");
        until_up(port).await?;
        Ok(base)
    }

    fn worker(&mut self, n: usize) -> anyhow::Result<()> {
        let mut args = vec!["worker".to_owned()];
        args.extend(self.common());
        for (k, v) in [
            ("--capacity", SLOTS),
            ("--warm", SLOTS),
            ("--max-vms", SLOTS + 2),
        ] {
            args.extend([k.to_owned(), v.to_string()]);
        }
        self.procs
            .spawn(self.dir.path(), &format!("worker{n}"), &args)
    }
}

async fn until_up(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_WITHIN;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("nothing listened on port {port}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Waits until `check` holds on `/healthz` and `/v1/languages`.
async fn until_fleet(
    http: &reqwest::Client,
    base: &str,
    what: &str,
    check: impl Fn(&Value, &Value) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        let h = http.get(format!("{base}/healthz")).send().await;
        let l = http.get(format!("{base}/v1/languages")).send().await;
        if let (Ok(h), Ok(l)) = (h, l) {
            let (h, l): (Value, Value) = (h.json().await?, l.json().await?);
            if check(&h, &l) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("waited too long for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn workers(h: &Value) -> usize {
    h["workers"].as_array().map_or(0, Vec::len)
}

/// Ready VMs of `language` in the fleet's pools.
fn ready(l: &Value, language: &str) -> u64 {
    l.as_array()
        .and_then(|ls| ls.iter().find(|x| x["name"] == language))
        .and_then(|p| p["pool"]["ready"].as_u64())
        .unwrap_or(0)
}

/// `clients` concurrent clients POST `total` hello worlds; per request
/// the answer and its wall-clock time.
async fn load(
    http: &reqwest::Client,
    url: String,
    clients: usize,
    total: usize,
    hello: &Hello,
) -> (Vec<(Option<Value>, f64)>, f64) {
    let next = Arc::new(AtomicUsize::new(0));
    let body = json!({"language": hello.language, "code": hello.source});
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients.max(1) {
        let (http, next, url, body) = (http.clone(), next.clone(), url.clone(), body.clone());
        tasks.spawn(async move {
            let mut rows = Vec::new();
            while next.fetch_add(1, Ordering::SeqCst) < total {
                let t = Instant::now();
                let job = match http.post(&url).json(&body).send().await {
                    Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
                    _ => None,
                };
                rows.push((job, t.elapsed().as_secs_f64() * 1000.0));
            }
            rows
        });
    }
    let mut rows = Vec::new();
    while let Some(r) = tasks.join_next().await {
        rows.extend(r.unwrap_or_default());
    }
    (rows, started.elapsed().as_secs_f64())
}

fn row(setup: String, rows: &[(Option<Value>, f64)], secs: f64, e2e: bool) -> Row {
    let ok = rows
        .iter()
        .filter(|(j, _)| match j {
            Some(j) if e2e => j["result"]["stdout"] == "hello, world\n",
            Some(j) => j["status"] == "queued",
            None => false,
        })
        .count();
    let mut ms: Vec<f64> = rows.iter().map(|(_, m)| *m).collect();
    ms.sort_by(f64::total_cmp);
    let rate = Some(rows.len() as f64 / secs.max(1e-9));
    Row {
        setup,
        submissions_per_sec: if e2e { None } else { rate },
        jobs_per_sec: if e2e { rate } else { None },
        p50_ms: ms.get(ms.len() / 2).copied(),
        ok,
        total: rows.len(),
    }
}

async fn submissions(a: &Args, http: &reqwest::Client, h: &Hello) -> anyhow::Result<Row> {
    let mut c = tokio::task::block_in_place(Cluster::new)?;
    let base = c.api().await?;
    // One worker teaches the API the languages, then leaves: the jobs
    // below stay in the queue, not run.
    c.worker(1)?;
    until_fleet(http, &base, "a worker", |h, _| workers(h) == 1).await?;
    c.procs.stop_last();
    until_fleet(http, &base, "the worker to be gone", |h, _| workers(h) == 0).await?;
    let total = a.jobs * 10;
    let (rows, secs) = load(http, format!("{base}/v1/jobs"), a.clients, total, h).await;
    Ok(row(
        "api (no worker; jobs queued, not run)".into(),
        &rows,
        secs,
        false,
    ))
}

async fn end_to_end(a: &Args, http: &reqwest::Client, n: usize, h: &Hello) -> anyhow::Result<Row> {
    let mut c = tokio::task::block_in_place(Cluster::new)?;
    let base = c.api().await?;
    for i in 0..n {
        c.worker(i + 1)?;
    }
    let want = (SLOTS * n) as u64;
    until_fleet(http, &base, "the workers' pools", |fleet, l| {
        workers(fleet) == n && ready(l, &h.language) >= want
    })
    .await?;
    let url = format!("{base}/v1/jobs?wait=true");
    let (rows, secs) = load(http, url, a.clients, a.jobs, h).await;
    let setup = format!(
        "api + {n} worker{} ({SLOTS} slots each)",
        if n > 1 { "s" } else { "" }
    );
    Ok(row(setup, &rows, secs, true))
}

async fn serve(a: &Args, http: &reqwest::Client, h: &Hello) -> anyhow::Result<Row> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let mut procs = Procs(Vec::new());
    let mut args: Vec<String> = ["serve", "--dev", "--data-dir"].map(String::from).to_vec();
    args.push(dir.path().display().to_string());
    args.extend(["--listen".into(), format!("127.0.0.1:{port}")]);
    for (k, v) in [
        ("--workers", SLOTS),
        ("--warm", SLOTS),
        ("--max-vms", SLOTS + 2),
    ] {
        args.extend([k.to_owned(), v.to_string()]);
    }
    procs.spawn(dir.path(), "serve", &args)?;
    until_up(port).await?;
    let base = format!("http://127.0.0.1:{port}");
    until_fleet(http, &base, "the pool", |_, l| {
        ready(l, &h.language) >= SLOTS as u64
    })
    .await?;
    let (rows, secs) = load(
        http,
        format!("{base}/v1/jobs?wait=true"),
        a.clients,
        a.jobs,
        h,
    )
    .await;
    Ok(row(
        format!("ignis serve ({SLOTS} slots)"),
        &rows,
        secs,
        true,
    ))
}

pub fn main(rt: &tokio::runtime::Runtime, a: &Args, h: &Hello) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().no_proxy().build()?;
    let rows = rt.block_on(async {
        anyhow::Ok(vec![
            submissions(a, &http, h).await?,
            end_to_end(a, &http, 1, h).await?,
            end_to_end(a, &http, 2, h).await?,
            serve(a, &http, h).await?,
        ])
    })?;
    let cell = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.1}"));
    println!(
        "Distributed mode on this host ({} clients; {} hello world)\n",
        a.clients, h.language
    );
    println!("| set-up | submissions/s | jobs/s end to end | p50 ms | ok |");
    println!("|---|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {}/{} |",
            r.setup,
            cell(r.submissions_per_sec),
            cell(r.jobs_per_sec),
            cell(r.p50_ms),
            r.ok,
            r.total
        );
    }
    Ok(())
}
