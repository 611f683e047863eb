//! One cgroup v2 group per compile or run: it carries the memory and process
//! limits, measures peak memory and CPU time, and `cgroup.kill` ends every
//! process of a program at once, including those that left its process group.

use std::ffi::CString;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::sys;

const ROOT: &str = "/sys/fs/cgroup";
const JOBS: &str = "/sys/fs/cgroup/jobs";
const CONTROLLERS: [&str; 3] = ["+memory", "+pids", "+cpu"];

/// Enables the controllers for `jobs/`, the parent of every run's group.
pub fn init_root() -> io::Result<()> {
    enable_controllers(ROOT)?;
    std::fs::create_dir_all(JOBS)?;
    enable_controllers(JOBS)
}

fn enable_controllers(dir: &str) -> io::Result<()> {
    for c in CONTROLLERS {
        let r = std::fs::write(format!("{dir}/cgroup.subtree_control"), c);
        // The cpu controller is a nicety (nothing reads cpu.max yet); memory
        // and pids carry limits, so their absence is fatal.
        if let Err(e) = r {
            if c != "+cpu" {
                return Err(io::Error::new(
                    e.kind(),
                    format!("enabling {c} in {dir}: {e}"),
                ));
            }
        }
    }
    Ok(())
}

#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    pub fn create(name: &str) -> io::Result<Cgroup> {
        let path = PathBuf::from(JOBS).join(name);
        std::fs::create_dir(&path)?;
        Ok(Cgroup { path })
    }

    pub fn set(&self, file: &str, value: &str) -> io::Result<()> {
        std::fs::write(self.path.join(file), value)
            .map_err(|e| io::Error::new(e.kind(), format!("writing {file}: {e}")))
    }

    pub fn limit(&self, memory_bytes: u64, max_pids: u32) -> io::Result<()> {
        self.set("memory.max", &memory_bytes.to_string())?;
        // No swap in the guest, but say so in case a kernel ever has it.
        let _ = self.set("memory.swap.max", "0");
        // An OOM kill takes the whole program down, not one random process.
        self.set("memory.oom.group", "1")?;
        self.set("pids.max", &max_pids.to_string())
    }

    /// Path of `cgroup.procs`, prepared before fork so the child need not allocate.
    pub fn procs_path(&self) -> io::Result<CString> {
        CString::new(
            self.path
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    }

    pub fn kill(&self) {
        let _ = self.set("cgroup.kill", "1");
    }

    fn read_key(&self, file: &str, key: &str) -> Option<u64> {
        let text = std::fs::read_to_string(self.path.join(file)).ok()?;
        text.lines().find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next()? == key).then(|| it.next()?.parse().ok())?
        })
    }

    pub fn peak_kib(&self) -> u64 {
        std::fs::read_to_string(self.path.join("memory.peak"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map_or(0, |b| b / 1024)
    }

    pub fn oom_kills(&self) -> u64 {
        self.read_key("memory.events", "oom_kill").unwrap_or(0)
    }

    pub fn cpu_ms(&self) -> u64 {
        self.read_key("cpu.stat", "usage_usec").unwrap_or(0) / 1000
    }

    /// Kills what is left and removes the group. Killed processes are our
    /// children or orphans of PID 1, so they are reaped here too.
    pub fn destroy(self) {
        self.kill();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            sys::reap_zombies();
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        crate::log(&format!("cgroup {} would not go away", self.path.display()));
    }
}
