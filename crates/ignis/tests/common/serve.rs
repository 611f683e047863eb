//! A real `ignis serve` as a child process, and the third-party clients
//! (`scripts/compat-clients`) that tests drive against it.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

/// Where `scripts/compat-clients` installed the clients.
pub fn clients_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("IGNIS_COMPAT_CLIENTS") {
        return d.into();
    }
    let home = std::env::var_os("IGNIS_HOME").unwrap_or_else(|| "/var/lib/ignis".into());
    Path::new(&home).join("cache/compat-clients")
}

/// Fails the test, saying what is missing, unless `ok`.
#[track_caller]
pub fn prerequisite(ok: bool, what: &str) {
    assert!(
        ok,
        "prerequisite missing: {what} (under {}); run scripts/compat-clients",
        clients_dir().display()
    );
}

/// `ignis serve` on 127.0.0.1:0 with a fresh data directory, its address
/// read from what it prints; stops (SIGTERM) when dropped.
pub struct Serve {
    child: Child,
    /// `http://127.0.0.1:<port>`
    pub base: String,
    /// What it printed on stderr so far, for failure reports.
    pub log: Arc<Mutex<String>>,
    /// Its data directory, which `ignis` itself created.
    pub data_dir: PathBuf,
    _dirs: [tempfile::TempDir; 2],
}

impl Serve {
    /// With API keys: the server and the secret of a new key.
    pub fn with_key() -> (Serve, String) {
        Serve::start(&[], true)
    }

    /// Under `--dev`: no key needed.
    pub fn dev() -> Serve {
        Serve::start(&["--dev"], false).0
    }

    /// Under `--dev`, with more flags.
    pub fn dev_with(extra: &[&str]) -> Serve {
        let mut args = vec!["--dev"];
        args.extend_from_slice(extra);
        Serve::start(&args, false).0
    }

    fn start(extra: &[&str], make_key: bool) -> (Serve, String) {
        let (data, run) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        // Not there yet: `ignis` makes it, as on a fresh host.
        let data_dir = data.path().join("data");
        let ignis = || {
            let mut c = Command::new(env!("CARGO_BIN_EXE_ignis"));
            c.env("IGNIS_RUN_DIR", run.path())
                .env("IGNIS_DATA_DIR", &data_dir);
            c
        };
        let mut key = String::new();
        if make_key {
            let out = ignis()
                .args(["keys", "create", "--name", "test"])
                .output()
                .expect("ignis keys create");
            assert!(
                out.status.success(),
                "keys create: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            key = String::from_utf8(out.stdout)
                .expect("UTF-8 key")
                .trim()
                .to_owned();
        }
        let mut child = ignis()
            .args(["serve", "--listen", "127.0.0.1:0", "--warm", "0"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ignis serve");
        let mut err = BufReader::new(child.stderr.take().expect("stderr"));
        let log = Arc::new(Mutex::new(String::new()));
        let mut base = None;
        let mut line = String::new();
        while err.read_line(&mut line).expect("read serve's stderr") > 0 {
            log.lock().expect("log").push_str(&line);
            if let Some(rest) = line.split("serving on ").nth(1) {
                base = rest.split_whitespace().next().map(str::to_owned);
                break;
            }
            line.clear();
        }
        let Some(base) = base else {
            panic!(
                "ignis serve never said where it serves:\n{}",
                log.lock().expect("log")
            );
        };
        // Keep draining its stderr, for the failure report.
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = err.read_to_string(&mut rest);
            sink.lock().expect("log").push_str(&rest);
        });
        let serve = Serve {
            child,
            base,
            log,
            data_dir,
            _dirs: [data, run],
        };
        (serve, key)
    }

    /// The server's process id, to read its memory from /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        // SAFETY: kill of our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Prints what a client run did; its report when it failed.
pub fn report(name: &str, out: &Output) -> Option<String> {
    let text = format!(
        "{name} (exit {}):\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    (!out.status.success()).then_some(text)
}

/// Runs `node <script> <args>` with the installed node_modules beside a
/// copy of the script (Node resolves ES module imports from the script's
/// directory, not from NODE_PATH).
pub fn node(script: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let work = tempfile::tempdir().expect("tmp");
    let node_modules = clients_dir().join("node/node_modules");
    std::os::unix::fs::symlink(&node_modules, work.path().join("node_modules")).expect("link");
    let copy = work.path().join(script.file_name().expect("a script file"));
    std::fs::copy(script, &copy).expect("copy script");
    Command::new("node")
        .arg(&copy)
        .args(args)
        .env("NODE_PATH", &node_modules)
        .envs(env.iter().copied())
        .output()
        .expect("run node")
}
