//! A real `ignis serve` in the test process: the embedded services (SQLite in
//! a temporary data directory, the in-process queue, warm pools of real
//! QEMU VMs) behind `server::run` on 127.0.0.1:0, and a small HTTP client
//! for it, including a Server-Sent Events reader.

#![allow(dead_code)] // Not every test binary uses every helper.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ignis_server::config::ServerConfig;
use ignis_server::state::Services;
use ignis_vmm::image::Catalog;
use ignis_vmm::paths::Paths;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::{oneshot, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::task::JoinHandle;

/// The longest any single wait in these tests may take before it counts as
/// a hang. Only a guard against hanging forever: no test asserts timing.
pub const HANG: Duration = Duration::from_secs(180);

/// Tests that count this process's VMs take it exclusively; the others
/// share it, so they still run in parallel with each other.
static VMS: RwLock<()> = RwLock::const_new(());

#[derive(Debug)]
enum Guard {
    Shared(RwLockReadGuard<'static, ()>),
    Exclusive(RwLockWriteGuard<'static, ()>),
}

/// How to configure one test server.
#[derive(Debug, Clone)]
pub struct Opts {
    pub warm: usize,
    pub max_vms: usize,
    pub workers: usize,
    pub shutdown_grace: Duration,
    pub allow_private_webhooks: bool,
    /// Reuse this data directory (a restart); a fresh temporary one if None.
    pub data_dir: Option<PathBuf>,
    /// No other test server runs in this process meanwhile, so every QEMU
    /// child of the process belongs to this one.
    pub exclusive: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            warm: 1,
            max_vms: 4,
            workers: 4,
            shutdown_grace: Duration::from_secs(5),
            allow_private_webhooks: false,
            data_dir: None,
            exclusive: false,
        }
    }
}

/// Every language recipe in the repository (`images/languages`): the tests
/// take their languages from these, not from a list of their own.
pub fn recipes() -> Vec<ignis_protocol::Recipe> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images/languages");
    let files = ignis_vmm::image::build::recipe_files(&dir)
        .unwrap_or_else(|e| panic!("reading the recipes in {}: {e}", dir.display()));
    let recipes: Vec<_> = files
        .iter()
        .map(|f| ignis_vmm::image::build::read_recipe(f).expect("every recipe reads"))
        .collect();
    assert!(!recipes.is_empty(), "no recipe in {}", dir.display());
    recipes
}

/// The real images must be installed, one per recipe: a test that needs
/// them fails, with the reason, when they are not.
pub fn require_images() {
    let dir = Paths::from_env().images();
    let catalog = Catalog::discover(&dir);
    if let Err(p) = &catalog.kernel {
        panic!(
            "prerequisite missing: no guest kernel in {} ({p}); run scripts/setup",
            dir.display()
        );
    }
    for recipe in recipes() {
        let lang = recipe.name;
        if let Err(e) = catalog.language(&lang) {
            panic!(
                "prerequisite missing: no {lang} image in {} ({e}); run scripts/setup",
                dir.display()
            );
        }
    }
}

/// One running server.
#[derive(Debug)]
pub struct TestApp {
    /// `http://127.0.0.1:<port>`
    pub base: String,
    /// A key created on this server's store.
    pub api: Api,
    pub svc: Arc<Services>,
    pub data_dir: PathBuf,
    _tmp: Option<TempDir>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<anyhow::Result<()>>,
    _guard: Guard,
}

/// Starts a server; fails the test when the images are not installed. One
/// test runs at most one server at a time.
pub async fn spawn_app(opts: Opts) -> TestApp {
    require_images();
    let guard = if opts.exclusive {
        Guard::Exclusive(VMS.write().await)
    } else {
        Guard::Shared(VMS.read().await)
    };
    let (tmp, data_dir) = match opts.data_dir {
        Some(d) => (None, d),
        None => {
            let t = tempfile::tempdir().expect("temp data dir");
            let d = t.path().to_path_buf();
            (Some(t), d)
        }
    };
    let mut cfg = ServerConfig::new(data_dir.clone());
    cfg.pool.warm = opts.warm;
    cfg.pool.max_vms = opts.max_vms;
    cfg.workers = opts.workers;
    cfg.shutdown_grace = opts.shutdown_grace;
    cfg.allow_private_webhooks = opts.allow_private_webhooks;
    // Tests poll and submit quickly; the defaults have tests of their own.
    cfg.key_defaults = ignis_server::keys::Allowance::UNLIMITED;
    let svc = ignis_server::embedded::services(cfg, Paths::from_env())
        .await
        .expect("embedded services over the real images");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let base = format!("http://{}", listener.local_addr().expect("local addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(ignis_server::server::run(
        listener,
        async move {
            // A dropped sender (a panicking test) stops the server too.
            let _ = stopped.await;
        },
        svc.clone(),
    ));
    let (_, secret) = ignis_server::keys::create(&*svc.store, "test", None, None)
        .await
        .expect("create key");
    TestApp {
        api: Api::new(&base, &secret),
        base,
        svc,
        data_dir,
        _tmp: tmp,
        stop: Some(stop),
        server,
        _guard: guard,
    }
}

impl TestApp {
    /// The server's VM pools (every embedded server has them).
    pub fn pools(&self) -> &ignis_server::pool::Pools {
        self.svc
            .pools
            .as_ref()
            .expect("the embedded server has pools")
    }

    /// Another key on the same server.
    pub async fn new_key(&self) -> Api {
        let (_, secret) = ignis_server::keys::create(&*self.svc.store, "other", None, None)
            .await
            .expect("create key");
        Api::new(&self.base, &secret)
    }

    /// A client for this server with an existing key (from before a restart).
    pub fn with_key(&self, key: &str) -> Api {
        Api::new(&self.base, key)
    }

    /// Starts the orderly shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Starts the orderly shutdown (if not yet begun) and waits until
    /// `server::run` returned.
    pub async fn shutdown(mut self) {
        self.begin_shutdown();
        let done = tokio::time::timeout(HANG, &mut self.server)
            .await
            .expect("server stopped within the hang guard");
        done.expect("server task did not panic")
            .expect("server::run returned Ok");
    }

    pub async fn metrics(&self) -> String {
        let r = self
            .api
            .request(Method::GET, "/metrics")
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(r.status(), StatusCode::OK);
        r.text().await.expect("metrics text")
    }
}

/// An HTTP client for one key.
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    pub key: String,
    http: reqwest::Client,
}

impl Api {
    fn new(base: &str, key: &str) -> Api {
        Api {
            base: base.to_owned(),
            key: key.to_owned(),
            // The environment's proxy must not see requests to 127.0.0.1.
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("HTTP client"),
        }
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key)
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> reqwest::Response {
        tokio::time::timeout(HANG, rb.send())
            .await
            .expect("answer within the hang guard")
            .expect("request sent")
    }

    /// POST /v1/jobs with `query` (e.g. `?wait=true`); the raw response.
    pub async fn post(&self, query: &str, body: &Value) -> reqwest::Response {
        self.send(
            self.request(Method::POST, &format!("/v1/jobs{query}"))
                .json(body),
        )
        .await
    }

    /// Submits and expects 202; the job as first seen.
    pub async fn submit(&self, body: &Value) -> Value {
        let r = self.post("", body).await;
        expect_json(r, StatusCode::ACCEPTED).await
    }

    /// Submits with `?wait=true` and expects the finished job (200).
    pub async fn run(&self, body: &Value) -> Value {
        let r = self.post("?wait=true", body).await;
        expect_json(r, StatusCode::OK).await
    }

    pub async fn get(&self, id: &str) -> reqwest::Response {
        self.send(self.request(Method::GET, &format!("/v1/jobs/{id}")))
            .await
    }

    pub async fn get_job(&self, id: &str) -> Value {
        expect_json(self.get(id).await, StatusCode::OK).await
    }

    pub async fn delete(&self, id: &str) -> reqwest::Response {
        self.send(self.request(Method::DELETE, &format!("/v1/jobs/{id}")))
            .await
    }

    /// GET /v1/jobs with `query`; expects 200.
    pub async fn list(&self, query: &str) -> Value {
        let r = self
            .send(self.request(Method::GET, &format!("/v1/jobs{query}")))
            .await;
        expect_json(r, StatusCode::OK).await
    }

    pub async fn languages(&self) -> Value {
        let r = self.send(self.request(Method::GET, "/v1/languages")).await;
        expect_json(r, StatusCode::OK).await
    }

    pub async fn events_response(&self, id: &str) -> reqwest::Response {
        self.send(self.request(Method::GET, &format!("/v1/jobs/{id}/events")))
            .await
    }

    /// Opens a job's event stream; panics unless it is 200 text/event-stream.
    pub async fn events(&self, id: &str) -> Sse {
        let r = self.events_response(id).await;
        assert_eq!(r.status(), StatusCode::OK, "events of {id}");
        let ct = r
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert_eq!(ct, "text/event-stream");
        Sse::new(r)
    }

    /// Waits for the job to end (following its events, not polling) and
    /// returns it as GET shows it afterwards.
    pub async fn wait(&self, id: &str) -> Value {
        let mut sse = self.events(id).await;
        let events = sse.until_end().await;
        let last = events.last().expect("at least a result event");
        assert_eq!(
            last.event, "result",
            "the stream ends with the result: {events:?}"
        );
        self.get_job(id).await
    }
}

/// Asserts the status and returns the JSON body.
pub async fn expect_json(r: reqwest::Response, status: StatusCode) -> Value {
    let got = r.status();
    let text = r.text().await.expect("body");
    assert_eq!(got, status, "body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

pub fn id_of(job: &Value) -> String {
    job["id"].as_str().expect("job id").to_owned()
}

pub fn python(code: &str) -> Value {
    serde_json::json!({"language": "python", "code": code})
}

pub fn go(code: &str) -> Value {
    serde_json::json!({"language": "go", "code": code})
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct Event {
    pub event: String,
    pub data: String,
}

impl Event {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("{} data not JSON ({e}): {}", self.event, self.data))
    }
}

/// Reads a `text/event-stream` response event by event.
#[derive(Debug)]
pub struct Sse {
    res: reqwest::Response,
    buf: Vec<u8>,
    ended: bool,
}

impl Sse {
    pub fn new(res: reqwest::Response) -> Sse {
        Sse {
            res,
            buf: Vec::new(),
            ended: false,
        }
    }

    /// The next event, or `None` once the server closed the stream.
    /// Comments (keep-alives) are skipped.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = find(&self.buf, b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let block = String::from_utf8(block).expect("UTF-8 event");
                let mut event = None;
                let mut data: Option<String> = None;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = Some(v.trim_start().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        let v = v.strip_prefix(' ').unwrap_or(v);
                        data = Some(match data {
                            Some(d) => format!("{d}\n{v}"),
                            None => v.to_owned(),
                        });
                    }
                }
                match (event, data) {
                    (None, None) => continue,
                    (event, data) => {
                        return Some(Event {
                            event: event.unwrap_or_else(|| "message".into()),
                            data: data.unwrap_or_default(),
                        })
                    }
                }
            }
            if self.ended {
                assert!(
                    self.buf.iter().all(u8::is_ascii_whitespace),
                    "stream ended mid-event: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                return None;
            }
            let chunk = tokio::time::timeout(HANG, self.res.chunk())
                .await
                .expect("an event within the hang guard")
                .expect("event stream read");
            match chunk {
                Some(c) => self.buf.extend_from_slice(&c),
                None => self.ended = true,
            }
        }
    }

    /// The next event, which must exist.
    pub async fn expect_next(&mut self) -> Event {
        self.next()
            .await
            .expect("another event before the stream ended")
    }

    /// Every event until the server closes the stream.
    pub async fn until_end(&mut self) -> Vec<Event> {
        let mut all = Vec::new();
        while let Some(e) = self.next().await {
            all.push(e);
        }
        all
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A QEMU process started by this test process, and its per-VM directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuChild {
    pub pid: u32,
    pub vm_dir: Option<PathBuf>,
}

/// The live (not zombie) QEMU children of this process.
pub fn qemu_children() -> Vec<QemuChild> {
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Some((comm, state, ppid)) = stat(pid) else {
            continue;
        };
        if ppid != me || !comm.starts_with("qemu") || state == 'Z' || state == 'X' {
            continue;
        }
        out.push(QemuChild {
            pid,
            vm_dir: vm_dir(pid),
        });
    }
    out
}

/// Waits until process `pid` has exited, without polling: a pidfd becomes
/// readable when its process ends. A VM that is dropped rather than
/// destroyed gets SIGKILL without a wait, so it can take the kernel a moment
/// to tear it down after the server already returned.
pub async fn exited(pid: u32) {
    use std::os::fd::{FromRawFd, OwnedFd};
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // (or -1); it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        // Already reaped: long gone.
        assert_eq!(
            err.raw_os_error(),
            Some(libc::ESRCH),
            "pidfd_open({pid}): {err}"
        );
        return;
    }
    let fd = i32::try_from(fd).expect("descriptor fits i32");
    // SAFETY: `fd` was just returned by pidfd_open and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: the OwnedFd is an open descriptor that the AsyncFd owns, and
    // so keeps open and unchanged, until it is dropped.
    let fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    }
    .expect("register pidfd");
    let ready = tokio::time::timeout(HANG, fd.readable())
        .await
        .unwrap_or_else(|_| panic!("process {pid} still running after the hang guard"));
    let _exited = ready.expect("pidfd readiness");
}

/// Whether the process is still running (a zombie has stopped running).
pub fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(_, state, _)| state != 'Z' && state != 'X')
}

fn stat(pid: u32) -> Option<(String, char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_owned();
    let mut rest = s[close + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((comm, state, ppid))
}

/// The VM's directory, from the agent socket path on QEMU's command line.
fn vm_dir(pid: u32) -> Option<PathBuf> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    cmdline
        .split(|b| *b == 0)
        .filter_map(|a| std::str::from_utf8(a).ok())
        .find_map(|a| a.strip_prefix("socket,id=agent,path="))
        .and_then(|p| Path::new(p).parent().map(Path::to_path_buf))
}
