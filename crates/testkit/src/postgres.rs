//! A throw-away PostgreSQL cluster: `initdb` into a temporary directory,
//! `postgres` on a free loopback port, trust authentication for the
//! `ignis` role. Run as the `postgres` system user when the test runs as
//! root (PostgreSQL refuses root).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use tempfile::TempDir;

use crate::{child_setup, listening, require, spawn_from_keeper, stop, wait_until};

#[derive(Debug)]
pub struct Postgres {
    dir: TempDir,
    bin: PathBuf,
    pub port: u16,
    user: Option<(libc::uid_t, libc::gid_t)>,
    child: Option<Child>,
}

fn bin_dir() -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    // Newest major version first.
    candidates.sort_by_key(|p| {
        let v = p
            .parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str());
        std::cmp::Reverse(v.and_then(|v| v.parse::<u32>().ok()).unwrap_or(0))
    });
    let initdb: Vec<PathBuf> = candidates.iter().map(|d| d.join("initdb")).collect();
    let found = require("PostgreSQL's initdb (Debian package postgresql)", &initdb);
    found.parent().expect("bin dir").to_path_buf()
}

/// The `postgres` system user, when running as root.
fn run_as() -> Option<(libc::uid_t, libc::gid_t)> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam reads a NUL-terminated name and returns a pointer to
    // static storage (or NULL), read at once before any other call.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "prerequisite missing: the postgres system user (Debian package postgresql); run scripts/setup"
    );
    // SAFETY: non-null, points at a valid passwd entry (see above).
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Some((uid, gid))
}

fn chown(path: &Path, user: Option<(libc::uid_t, libc::gid_t)>) {
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
    }
}

impl Postgres {
    /// A fresh cluster, started and answering.
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let user = run_as();
        let dir = tempfile::Builder::new()
            .prefix("ignis-pg-")
            .tempdir()
            .expect("temp dir");
        chown(dir.path(), user);
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args([
                "-U",
                "ignis",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        child_setup(&mut initdb, user, libc::SIGKILL);
        let out = initdb.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            dir,
            bin,
            port: crate::free_port(),
            user,
            child: None,
        };
        pg.resume();
        pg
    }

    /// A cluster shared by the tests of this process that run at the same
    /// time (each takes its own database): the last to let go stops it and
    /// removes its directory, so nothing outlives the tests.
    pub fn shared() -> std::sync::Arc<Postgres> {
        use std::sync::{Arc, Mutex, Weak};
        static SHARED: Mutex<Weak<Postgres>> = Mutex::new(Weak::new());
        let mut g = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pg) = g.upgrade() {
            return pg;
        }
        let pg = Arc::new(Postgres::start());
        *g = Arc::downgrade(&pg);
        pg
    }

    /// A new, empty database on this cluster; its URL.
    pub fn database(&self) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "ignis_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let out = Command::new(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "ignis",
                &name,
            ])
            .output()
            .expect("run createdb");
        assert!(
            out.status.success(),
            "createdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(&name)
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://ignis@127.0.0.1:{}/{database}", self.port)
    }

    /// Stops the server (fast shutdown), keeping its data.
    pub fn pause(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop(&mut c, libc::SIGINT);
        }
    }

    /// Starts the server again on the same port and data.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::File::create(self.dir.path().join("postgres.log")).expect("log file");
        chown(&self.dir.path().join("postgres.log"), self.user);
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off", "-c", "max_connections=200"])
            .stdout(Stdio::null())
            .stderr(log);
        // SIGQUIT: an immediate shutdown that also ends the backends.
        child_setup(&mut cmd, self.user, libc::SIGQUIT);
        let mut child = spawn_from_keeper(cmd).expect("start postgres");
        let isready = self.bin.join("pg_isready");
        let port = self.port.to_string();
        wait_until("postgres", &mut child, || {
            listening(self.port)
                && Command::new(&isready)
                    .args(["-q", "-h", "127.0.0.1", "-p", &port, "-U", "ignis"])
                    .status()
                    .is_ok_and(|s| s.success())
        });
        self.child = Some(child);
    }

    /// What the server logged (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.pause();
    }
}
