//! Every VMM jailed, and never orphaned, on real VMs: read from `/proc`
//! while a job runs, and with `ignis run` and `ignis serve` killed by
//! SIGKILL mid-job.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const LOOP: &str = "print('started', flush=True)\nwhile True:\n    pass\n";

/// How long a dead Ignis process's VMMs may take to follow it.
const DIES_WITHIN: Duration = Duration::from_secs(5);

/// PIDs of the processes whose command line mentions `dir` (the VMMs of a
/// test's private runtime directory).
fn vmms_under(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|p| p.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .collect()
}

/// Waits until `cond` holds, checking every few milliseconds; `None` if it
/// did not within `within`. Waits for an observable state, never a guess.
fn until<T>(within: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let started = Instant::now();
    loop {
        if let Some(t) = cond() {
            return Some(t);
        }
        if started.elapsed() > within {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ignis_cmd(dir: &Path, run_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ignis"));
    cmd.current_dir(dir).env("IGNIS_RUN_DIR", run_dir);
    cmd
}

fn sigkill(child: &mut Child) {
    // SAFETY: kill of our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
}

fn vm_dirs(run_dir: &Path) -> Vec<PathBuf> {
    entries(run_dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vm-"))
        })
        .collect()
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[test]
fn a_jailed_vmm_is_unprivileged_and_sees_only_its_files_and_dies_with_ignis_run() {
    let catalog = images(&["python", "go"]);
    let (work, run_dir) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    std::fs::write(work.path().join("loop.py"), LOOP).expect("write");
    let mut run = ignis_cmd(work.path(), run_dir.path())
        .args(["run", "--timeout", "120", "loop.py"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ignis run");
    let mut out = BufReader::new(run.stdout.take().expect("stdout"));
    let mut first = String::new();
    out.read_line(&mut first).expect("read");
    assert_eq!(first, "started\n", "the program runs in its VM");

    let vmms = vmms_under(run_dir.path());
    assert_eq!(vmms.len(), 1, "one VMM: {vmms:?}");
    let pid = vmms[0];
    // Unprivileged, without capabilities or new privileges, under seccomp.
    let uids = status_field(pid, "Uid");
    assert!(uids.split_whitespace().all(|u| u != "0"), "Uid: {uids}");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Seccomp"), "2");
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
    // Namespaces of its own: PID 1 of its own PID namespace, no network.
    for ns in ["mnt", "pid", "net", "ipc", "uts"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).expect("ns");
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).expect("ns");
        assert_ne!(theirs, ours, "the VMM shares our {ns} namespace");
    }
    let nspid = status_field(pid, "NSpid");
    assert_eq!(
        nspid.split_whitespace().last(),
        Some("1"),
        "PID 1 in its namespace: {nspid}"
    );
    // Its root is its jail, inside its VM's directory: the mount at "/"
    // is that directory (mountinfo's 4th field: the path it binds).
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let vm_dir = vm_dirs(run_dir.path()).pop().expect("the VM's directory");
    let jail_root = format!(
        "{}/root",
        vm_dir.file_name().expect("name").to_string_lossy()
    );
    let root_mount = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .expect("a root mount");
    assert!(
        root_mount
            .split_whitespace()
            .nth(3)
            .is_some_and(|r| r.ends_with(&jail_root)),
        "the VMM's / is not its jail: {root_mount}"
    );
    // What it can see: the system's /usr, its kernel and image, its own
    // directory, the snapshot's RAM; not the data or the other images.
    let points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .collect();
    // Every drive of python's image (the shared base and its layer), and not
    // go's layer.
    let python = catalog.language("python").expect("python").drives();
    let go = catalog.language("go").expect("go").drives();
    for drive in &python {
        assert!(
            points.contains(&drive.to_string_lossy().as_ref()),
            "{} is not in the jail: {points:?}",
            drive.display()
        );
    }
    for drive in go.iter().filter(|d| !python.contains(d)) {
        assert!(
            !points.iter().any(|p| *p == drive.to_string_lossy()),
            "another image is visible: {points:?}"
        );
    }
    let home = ignis_vmm::paths::Paths::from_env().home;
    for p in &points {
        let allowed = ["/", "/usr", "/etc/ld.so.cache", "/dev/null", "/dev/urandom"].contains(p)
            || Path::new(p).starts_with(run_dir.path())
            || Path::new(p).starts_with(home.join("images"))
            || Path::new(p).starts_with(home.join("snapshots"))
            || Path::new(p).starts_with(home.join("cache/kernel"));
        assert!(allowed, "unexpected mount {p} in the jail: {points:?}");
    }
    // Bounded by a cgroup of its own.
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    assert!(
        cgroups
            .lines()
            .any(|l| l.contains("memory") && l.contains("/ignis/")),
        "{cgroups}"
    );
    assert!(
        cgroups
            .lines()
            .any(|l| l.contains("pids") && l.contains("/ignis/")),
        "{cgroups}"
    );

    // Killed by SIGKILL, `ignis run` takes its VMM with it.
    let stale = vm_dirs(run_dir.path());
    sigkill(&mut run);
    let gone = until(DIES_WITHIN, || {
        vmms_under(run_dir.path()).is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "VMMs left {DIES_WITHIN:?} after ignis run died: {:?}",
        vmms_under(run_dir.path())
    );
    // The next run removes the directory the dead one left, and still runs.
    std::fs::write(work.path().join("hello.py"), "print('hello, world')\n").expect("write");
    let next = ignis_cmd(work.path(), run_dir.path())
        .args(["run", "hello.py"])
        .output()
        .expect("ignis run");
    assert_eq!(
        String::from_utf8_lossy(&next.stdout),
        "hello, world\n",
        "{next:?}"
    );
    for d in stale {
        assert!(!d.exists(), "{} left behind", d.display());
    }
    assert_eq!(vm_dirs(run_dir.path()), Vec::<PathBuf>::new());
}

/// An `ignis serve` child process on 127.0.0.1, its address read from
/// what it prints.
struct Serve {
    child: Child,
    base: String,
}

impl Serve {
    fn start(work: &Path, run_dir: &Path, data: &Path) -> Serve {
        let mut child = ignis_cmd(work, run_dir)
            .args([
                "serve",
                "--dev",
                "--listen",
                "127.0.0.1:0",
                "--warm",
                "0",
                "--data-dir",
            ])
            .arg(data)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ignis serve");
        let err = BufReader::new(child.stderr.take().expect("stderr"));
        let mut base = None;
        for line in err.lines() {
            let line = line.expect("read");
            if let Some(rest) = line.split("serving on ").nth(1) {
                base = rest.split_whitespace().next().map(str::to_owned);
                break;
            }
        }
        Serve {
            child,
            base: base.expect("ignis serve says where it serves"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_serve_leaves_no_vmm_and_its_restart_requeues_the_job() {
    images(&["python"]);
    let (work, run_dir, data) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let mut serve = Serve::start(work.path(), run_dir.path(), data.path());
    let http = reqwest::Client::new();
    let job: serde_json::Value = http
        .post(format!("{}/v1/jobs", serve.base))
        .json(&serde_json::json!({"language": "python", "code": LOOP, "limits": {"timeout_ms": 60000}}))
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("json");
    let id = job["id"].as_str().expect("id").to_owned();
    let running = until(Duration::from_secs(120), || {
        (!vmms_under(run_dir.path()).is_empty()).then_some(())
    });
    assert!(running.is_some(), "the job's VM never started");
    let stale = vm_dirs(run_dir.path());

    sigkill(&mut serve.child);
    let gone = until(DIES_WITHIN, || {
        vmms_under(run_dir.path()).is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "VMMs left {DIES_WITHIN:?} after serve died: {:?}",
        vmms_under(run_dir.path())
    );

    let mut serve = Serve::start(work.path(), run_dir.path(), data.path());
    for d in &stale {
        assert!(!d.exists(), "the restart left {} behind", d.display());
    }
    // Recovery requeues the job at start-up; the new server's worker then
    // claims it, which counts its second attempt. Follow the job until
    // that claim instead of reading it once, which races the worker.
    let deadline = Instant::now() + Duration::from_secs(120);
    let job = loop {
        let job: serde_json::Value = http
            .get(format!("{}/v1/jobs/{id}", serve.base))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        assert!(
            matches!(job["status"].as_str(), Some("queued" | "running")),
            "the job was requeued: {job}"
        );
        if job["status"] == "running" || Instant::now() > deadline {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(job["status"], "running", "the restart ran it again: {job}");
    assert_eq!(job["attempts"], 2, "its second start: {job}");
    // Cancel it and stop the server the orderly way.
    let _ = http
        .delete(format!("{}/v1/jobs/{id}", serve.base))
        .send()
        .await;
    // SAFETY: SIGTERM to our own child.
    unsafe { libc::kill(serve.child.id() as i32, libc::SIGTERM) };
    let _ = serve.child.wait();
    assert_eq!(vmms_under(run_dir.path()), Vec::<u32>::new());
}

#[test]
fn without_a_working_jail_ignis_refuses_unless_told_it_may_run_unjailed() {
    images(&["python"]);
    let (work, run_dir) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    std::fs::write(work.path().join("hello.py"), "print('hello, world')\n").expect("write");
    let refused = ignis_cmd(work.path(), run_dir.path())
        .env("IGNIS_VMM_USER", "no-such-ignis-user")
        .args(["run", "hello.py"])
        .output()
        .expect("ignis run");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_ne!(refused.status.code(), Some(0));
    assert!(
        err.contains("no-such-ignis-user") && err.contains("--insecure-no-jail"),
        "{err}"
    );
    assert!(refused.stdout.is_empty(), "nothing ran");
    let unjailed = ignis_cmd(work.path(), run_dir.path())
        .env("IGNIS_VMM_USER", "no-such-ignis-user")
        .args(["run", "--insecure-no-jail", "hello.py"])
        .output()
        .expect("ignis run");
    assert_eq!(
        String::from_utf8_lossy(&unjailed.stdout),
        "hello, world\n",
        "{unjailed:?}"
    );
    let warned = String::from_utf8_lossy(&unjailed.stderr);
    assert!(warned.contains("without a jail"), "{warned}");
}
