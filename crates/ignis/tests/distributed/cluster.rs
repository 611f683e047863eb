//! A distributed Ignis for one test: a real `nats-server -js` and a real
//! PostgreSQL on loopback ports of their own, `ignis api` processes and
//! `ignis worker` processes of the real binary, and an HTTP client.
//!
//! Nothing sleeps to wait: readiness is a condition (a port answers, the
//! API lists the workers' languages) waited on with a deadline.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ignis_testkit::{free_port, spawn_owned, Nats, Postgres};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;

/// The longest any single wait may take before it counts as a hang. Only
/// a guard: no test asserts timing.
pub const HANG: Duration = Duration::from_secs(180);

/// One `ignis` process, its output kept in a log file.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, dir: &Path, args: &[String], env: &[(&str, PathBuf)]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ignis"));
        cmd.args(args)
            .env("IGNIS_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v)))
            .stdout(Stdio::null())
            .stderr(out);
        let child = spawn_owned(cmd).unwrap_or_else(|e| panic!("spawn ignis {name}: {e}"));
        Proc {
            name: name.to_owned(),
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL: the process gets no chance to tidy up or acknowledge.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and a wait: the orderly way down.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(Some(status)) = c.try_wait() {
                eprintln!(
                    "{} had exited already ({status}):\n{}",
                    self.name,
                    self.log()
                );
            }
            // SAFETY: kill takes a pid and a signal and touches no memory.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + HANG;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!("{} did not stop on SIGTERM:\n{}", self.name, self.log());
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: String = log
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            eprintln!("--- last lines of {} ---\n{tail}", self.name);
        }
        self.stop();
    }
}

/// How to start one worker.
#[derive(Debug, Clone)]
pub struct WorkerOpts {
    pub capacity: usize,
    pub warm: usize,
    /// Only these images (the others are left out of its image directory).
    pub only: Option<Vec<&'static str>>,
}

impl Default for WorkerOpts {
    fn default() -> Self {
        WorkerOpts {
            capacity: 2,
            warm: 1,
            only: None,
        }
    }
}

/// Everything one test runs. Fields drop in this order: the processes
/// first (while NATS and PostgreSQL still answer), the directory last.
#[derive(Debug)]
pub struct Cluster {
    pub workers: Vec<Proc>,
    pub apis: Vec<(Proc, Api)>,
    pub nats: Nats,
    pub pg: Postgres,
    pub db: String,
    pub key: String,
    pub dir: TempDir,
}

impl Cluster {
    /// NATS and PostgreSQL, and a key in the database; no processes yet.
    pub async fn new() -> Cluster {
        crate::common::images(&["python", "go"]);
        let (nats, pg) = tokio::task::spawn_blocking(|| (Nats::start(), Postgres::start()))
            .await
            .expect("start nats-server and PostgreSQL");
        let db = pg.database();
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new(env!("CARGO_BIN_EXE_ignis"))
            .args([
                "keys",
                "create",
                "--name",
                "test",
                "--database",
                &db,
                "--data-dir",
            ])
            .arg(dir.path().join("data"))
            .output()
            .expect("ignis keys create");
        assert!(
            out.status.success(),
            "keys create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key = String::from_utf8(out.stdout)
            .expect("UTF-8 key")
            .trim()
            .to_owned();
        Cluster {
            dir,
            nats,
            pg,
            db,
            apis: Vec::new(),
            workers: Vec::new(),
            key,
        }
    }

    fn data_dir(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Starts an API process; returns its client once it answers.
    pub async fn api(&mut self, extra: &[&str]) -> Api {
        let port = free_port();
        let mut args: Vec<String> = ["api", "--listen", &format!("127.0.0.1:{port}")]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend([
            "--nats".into(),
            self.nats.url(),
            "--database".into(),
            self.db.clone(),
        ]);
        args.extend(["--data-dir".into(), self.data_dir()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let name = format!("api{}", self.apis.len() + 1);
        let proc = Proc::spawn(&name, self.dir.path(), &args, &[]);
        let api = Api::new(&format!("http://127.0.0.1:{port}"), &self.key);
        let deadline = Instant::now() + HANG;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{name} never listened:\n{}",
                proc.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.apis.push((proc, api.clone()));
        api
    }

    /// Starts a worker process.
    pub fn worker(&mut self, o: WorkerOpts) -> usize {
        let mut args: Vec<String> = vec!["worker".into(), "--nats".into(), self.nats.url()];
        args.extend([
            "--database".into(),
            self.db.clone(),
            "--data-dir".into(),
            self.data_dir(),
        ]);
        args.extend(["--capacity".into(), o.capacity.to_string()]);
        args.extend(["--max-vms".into(), (o.capacity + 2).to_string()]);
        args.extend(["--warm".into(), o.warm.to_string()]);
        // A lost worker's job comes back to another worker this soon.
        args.extend([
            "--ack-wait".into(),
            "5".into(),
            "--shutdown-grace".into(),
            "5".into(),
        ]);
        let n = self.workers.len() + 1;
        let mut env = Vec::new();
        if let Some(only) = &o.only {
            let images = self.dir.path().join(format!("images-w{n}"));
            std::fs::create_dir_all(&images).expect("image dir");
            let real = ignis_vmm::paths::Paths::from_env().images();
            // The kernel, and the shared base every language's layer needs.
            for name in only.iter().chain(&["kernel", "base"]) {
                std::os::unix::fs::symlink(real.join(name), images.join(name)).expect("symlink");
            }
            env.push(("IGNIS_IMAGE_DIR", images));
        }
        let p = Proc::spawn(&format!("worker{n}"), self.dir.path(), &args, &env);
        self.workers.push(p);
        self.workers.len() - 1
    }

    /// Waits until the API sees `n` workers announcing themselves.
    pub async fn until_workers(&self, api: &Api, n: usize) -> Value {
        until(&format!("{n} workers to announce themselves"), || async {
            let h = api.health().await;
            let count = h["workers"].as_array().map_or(0, Vec::len);
            (count == n).then_some(h)
        })
        .await
    }

    /// The worker process whose announcement is `id` (`host-pid`).
    pub fn worker_by_id(&mut self, id: &str) -> &mut Proc {
        let pid: u32 = id
            .rsplit('-')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("pid in id");
        self.workers
            .iter_mut()
            .find(|w| w.pid() == pid)
            .unwrap_or_else(|| panic!("no worker with pid {pid}"))
    }
}

/// Waits for `check` to yield something, with a deadline.
pub async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + HANG;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "waited too long for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An HTTP client for one API process and key.
#[derive(Debug, Clone)]
pub struct Api {
    pub base: String,
    key: String,
    http: reqwest::Client,
}

impl Api {
    fn new(base: &str, key: &str) -> Api {
        Api {
            base: base.to_owned(),
            key: key.to_owned(),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(HANG)
                .build()
                .expect("HTTP client"),
        }
    }

    pub fn request(&self, m: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(m, format!("{}{path}", self.base))
            .bearer_auth(&self.key)
    }

    pub async fn post(&self, body: &Value) -> reqwest::Response {
        self.request(Method::POST, "/v1/jobs")
            .json(body)
            .send()
            .await
            .expect("POST /v1/jobs")
    }

    /// Submits and expects 202; the job's id.
    pub async fn submit(&self, body: &Value) -> String {
        let r = self.post(body).await;
        let job = expect_json(r, StatusCode::ACCEPTED).await;
        job["id"].as_str().expect("id").to_owned()
    }

    pub async fn job(&self, id: &str) -> Value {
        let r = self
            .request(Method::GET, &format!("/v1/jobs/{id}"))
            .send()
            .await
            .expect("GET job");
        expect_json(r, StatusCode::OK).await
    }

    pub async fn health(&self) -> Value {
        let r = self
            .request(Method::GET, "/healthz")
            .send()
            .await
            .expect("healthz");
        r.json().await.expect("health JSON")
    }

    /// Waits for the job to end, asking the store (a condition with a
    /// deadline: across an outage an event stream may have broken off).
    pub async fn until_final(&self, id: &str) -> Value {
        until(&format!("job {id} to end"), || async {
            let r = self
                .request(Method::GET, &format!("/v1/jobs/{id}"))
                .send()
                .await
                .ok()?;
            if r.status() != StatusCode::OK {
                return None;
            }
            let j: Value = r.json().await.ok()?;
            matches!(j["status"].as_str(), Some("completed" | "canceled")).then_some(j)
        })
        .await
    }

    pub async fn events(&self, id: &str) -> Sse {
        let r = self
            .request(Method::GET, &format!("/v1/jobs/{id}/events"))
            .send()
            .await
            .expect("events");
        assert_eq!(r.status(), StatusCode::OK, "events of {id}");
        Sse {
            res: r,
            buf: Vec::new(),
        }
    }
}

pub async fn expect_json(r: reqwest::Response, status: StatusCode) -> Value {
    let got = r.status();
    let text = r.text().await.expect("body");
    assert_eq!(got, status, "body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

pub fn python(code: &str) -> Value {
    json!({"language": "python", "code": code, "limits": {"timeout_ms": 30000}})
}

/// Reads Server-Sent Events one by one: `(event, data)`.
#[derive(Debug)]
pub struct Sse {
    res: reqwest::Response,
    buf: Vec<u8>,
}

impl Sse {
    pub async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let block = String::from_utf8(block).expect("UTF-8 event");
                let (mut event, mut data) = (None, None);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data = Some(v.trim().to_owned());
                    }
                }
                if let (Some(e), Some(d)) = (event, data) {
                    return Some((e, serde_json::from_str(&d).expect("event data JSON")));
                }
                continue;
            }
            let chunk = tokio::time::timeout(HANG, self.res.chunk())
                .await
                .expect("an event within the hang guard")
                .expect("event stream read")?;
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// Events until one named `name`, which is returned with those before.
    pub async fn until(&mut self, name: &str) -> Vec<(String, Value)> {
        let mut seen = Vec::new();
        while let Some(ev) = self.next().await {
            let done = ev.0 == name;
            seen.push(ev);
            if done {
                return seen;
            }
        }
        panic!("stream ended before a {name} event: {seen:?}");
    }
}
