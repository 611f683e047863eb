//! A throw-away `nats-server -js`: JetStream on, its store in a temporary
//! directory, on a free loopback port.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use tempfile::TempDir;

use crate::{child_setup, listening, require, spawn_from_keeper, stop, wait_until};

#[derive(Debug)]
pub struct Nats {
    dir: TempDir,
    bin: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl Nats {
    pub fn start() -> Nats {
        let bin = require(
            "nats-server (Debian package nats-server)",
            &[
                PathBuf::from("/usr/sbin/nats-server"),
                PathBuf::from("/usr/bin/nats-server"),
                PathBuf::from("/usr/local/bin/nats-server"),
            ],
        );
        let dir = tempfile::Builder::new()
            .prefix("ignis-nats-")
            .tempdir()
            .expect("temp dir");
        let mut n = Nats {
            dir,
            bin,
            port: crate::free_port(),
            child: None,
        };
        n.resume();
        n
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server, keeping JetStream's store.
    pub fn pause(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop(&mut c, libc::SIGTERM);
        }
    }

    /// Starts it again on the same port and store.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nats.log"))
            .expect("log file");
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-sd",
        ])
        .arg(self.dir.path().join("jetstream"))
        .stdout(Stdio::null())
        .stderr(log);
        child_setup(&mut cmd, None, libc::SIGKILL);
        let mut child = spawn_from_keeper(cmd).expect("start nats-server");
        let port = self.port;
        wait_until("nats-server", &mut child, || listening(port));
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.pause();
    }
}
