//! Third-party clients, unchanged, against a real `ignis serve` with real
//! VMs: the official `judge0` Python SDK and the `piston-client` npm
//! package. `scripts/compat-clients` installs them; without them, or
//! without the Python and Go images, the test fails and says why.
//!
//! The scenarios live in `tests/compat/` as the clients' own languages;
//! each exits non-zero naming the first scenario that did not hold.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

/// Where `scripts/compat-clients` installed the clients.
fn clients_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("IGNIS_COMPAT_CLIENTS") {
        return d.into();
    }
    let home = std::env::var_os("IGNIS_HOME").unwrap_or_else(|| "/var/lib/ignis".into());
    Path::new(&home).join("cache/compat-clients")
}

fn prerequisite(ok: bool, what: &str) {
    assert!(
        ok,
        "prerequisite missing: {what} (under {}); run scripts/compat-clients",
        clients_dir().display()
    );
}

fn scenarios() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat")
}

/// `ignis serve` on 127.0.0.1:0 with a fresh data directory, its address
/// read from what it prints; stops (SIGTERM) when dropped.
struct Serve {
    child: Child,
    base: String,
    log: Arc<Mutex<String>>,
    _dirs: [tempfile::TempDir; 2],
}

impl Serve {
    fn start() -> (Serve, String) {
        let (data, run) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let ignis = || {
            let mut c = Command::new(env!("CARGO_BIN_EXE_ignis"));
            c.env("IGNIS_RUN_DIR", run.path())
                .env("IGNIS_DATA_DIR", data.path());
            c
        };
        let out = ignis()
            .args(["keys", "create", "--name", "compat"])
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
        let mut child = ignis()
            .args(["serve", "--listen", "127.0.0.1:0", "--warm", "0"])
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
            _dirs: [data, run],
        };
        (serve, key)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        // SAFETY: kill of our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn report(name: &str, out: &Output) -> Option<String> {
    let text = format!(
        "{name} (exit {}):\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    (!out.status.success()).then_some(text)
}

#[test]
fn judge0_sdk_and_piston_client_run_unchanged_against_ignis() {
    common::images(&["python", "go"]);
    let dir = clients_dir();
    let python = dir.join("venv/bin/python3");
    let node_modules = dir.join("node/node_modules");
    prerequisite(python.is_file(), "the judge0 SDK's virtualenv");
    let sdk = Command::new(&python).args(["-c", "import judge0"]).output();
    prerequisite(
        sdk.is_ok_and(|o| o.status.success()),
        "the judge0 Python SDK",
    );
    prerequisite(
        node_modules.join("piston-client/package.json").is_file(),
        "piston-client",
    );
    let node = Command::new("node").arg("--version").output();
    prerequisite(node.is_ok_and(|o| o.status.success()), "node on PATH");

    let (serve, key) = Serve::start();
    let judge0 = Command::new(&python)
        .arg(scenarios().join("judge0_sdk.py"))
        .arg(format!("{}/judge0", serve.base))
        .arg(&key)
        .env("JUDGE0_SUPPRESS_PREVIEW_WARNING", "1")
        .output()
        .expect("run the judge0 scenarios");

    // Node resolves packages from the script's directory: run a copy of
    // the script beside the installed node_modules.
    let work = tempfile::tempdir().expect("tmp");
    std::os::unix::fs::symlink(&node_modules, work.path().join("node_modules")).expect("link");
    let script = work.path().join("piston_client.mjs");
    std::fs::copy(scenarios().join("piston_client.mjs"), &script).expect("copy script");
    let piston = Command::new("node")
        .arg(&script)
        .arg(format!("{}/piston/k/{key}", serve.base))
        .output()
        .expect("run the piston scenarios");

    let failures: Vec<String> = [
        report("judge0 SDK", &judge0),
        report("piston-client", &piston),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(
        failures.is_empty(),
        "{}\n--- ignis serve\n{}",
        failures.join("\n"),
        serve.log.lock().expect("log")
    );
}
