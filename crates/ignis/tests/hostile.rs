//! Hostile programs in real VMs: what a tenant who means harm would try
//! first. Each runs in a Python VM restored from its snapshot, under small
//! limits, and must end with the verdict that names what it hit, a reply
//! from the agent afterwards (the VM survived its tenant), and no sign that
//! it got past its limits. Output flooding also goes through a real
//! `ignis serve`, whose memory must not follow the flood.
//!
//! Needs the python image under IGNIS_HOME; fails saying so without it.

mod common;
#[path = "hostile/server.rs"]
mod server;

use std::time::Duration;

use common::*;
use ignis_protocol::{Limits, RunOutcome, RunRequest, Verdict, ARGS_MAX, ENV_MAX};
use ignis_vmm::report;

/// What a hostile run left: its outcome and its output as text.
#[derive(Debug)]
struct Ran {
    outcome: RunOutcome,
    stdout: String,
    stderr: String,
}

/// Small limits, so a program that hits them does so quickly.
fn limits() -> Limits {
    Limits {
        timeout_ms: 5_000,
        memory_mib: 48,
        max_output_kib: 64,
        max_processes: 16,
        ..Limits::default()
    }
}

fn python(src: &str, limits: Limits) -> RunRequest {
    request(&[("main.py", src)], limits)
}

/// Runs `req` in a restored Python VM; the verdict must come back within
/// the host's deadline and the agent must still answer afterwards.
async fn run(req: RunRequest) -> Ran {
    let launcher = launcher(&["python"]).await;
    let mut vm = launcher.start("python").await.expect("restore a python VM");
    let deadline = report::host_deadline(&req, vm.info());
    let exec = vm
        .run(req, deadline, |_| {})
        .await
        .expect("the verdict comes back");
    vm.ping(Duration::from_secs(30))
        .await
        .expect("the agent answers after the program");
    assert_eq!(vm.destroy().await, None, "a healthy VM keeps no log");
    Ran {
        outcome: exec.outcome,
        stdout: String::from_utf8_lossy(&exec.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&exec.stderr).into_owned(),
    }
}

#[tokio::test]
async fn fork_bomb_hits_the_process_limit() {
    // Every process forks forever and never exits; the first says when
    // fork was refused (EAGAIN: the cgroup's pids.max).
    let src = "import os\nroot = os.getpid()\nsaid = False\nwhile True:\n    try:\n        os.fork()\n    except OSError as e:\n        if os.getpid() == root and not said:\n            print('fork refused:', e.errno, flush=True)\n            said = True\n";
    let r = run(python(src, limits())).await;
    assert_eq!(r.outcome.status, Verdict::Timeout, "{r:#?}");
    assert_eq!(r.outcome.signal, Some(9), "{r:#?}");
    assert_eq!(r.stdout, "fork refused: 11\n", "{r:#?}");
}

#[tokio::test]
async fn memory_hog_hits_the_memory_limit() {
    let src = "chunks = []\nwhile True:\n    chunks.append(b'x' * (1 << 20))\n";
    let r = run(python(src, limits())).await;
    assert_eq!(r.outcome.status, Verdict::MemoryLimit, "{r:#?}");
    assert_eq!(r.outcome.signal, Some(9), "{r:#?}");
    assert!(r.outcome.memory_kib <= 48 * 1024, "{r:#?}");
}

#[tokio::test]
async fn filling_tmp_counts_against_the_memory_limit() {
    // Written files live in guest memory (a tmpfs overlay): they must be
    // charged to the program, not to the guest as a whole.
    let src = "import os\nn = 0\nwith open('/tmp/fill', 'wb') as f:\n    while True:\n        f.write(b'x' * (1 << 20))\n        f.flush()\n        n += 1\n        if n % 8 == 0:\n            print(n, flush=True)\n";
    let r = run(python(src, limits())).await;
    assert_eq!(r.outcome.status, Verdict::MemoryLimit, "{r:#?}");
    assert!(r.outcome.memory_kib <= 48 * 1024, "{r:#?}");
    let written: Vec<u64> = r
        .stdout
        .lines()
        .map(|l| l.parse().expect("a count"))
        .collect();
    assert!(written.last().is_some_and(|&n| n < 48), "{r:#?}");
}

#[tokio::test]
async fn output_flood_one_byte_per_write_is_cut_at_the_cap() {
    let src = "import os\nwhile True:\n    os.write(1, b'x')\n";
    let limits = Limits {
        max_output_kib: 4,
        ..limits()
    };
    let r = run(python(src, limits)).await;
    assert_eq!(r.outcome.status, Verdict::OutputLimit, "{r:#?}");
    assert_eq!(r.stdout.len(), 4096);
    assert!(r.stdout.bytes().all(|b| b == b'x'));
    assert!(r.outcome.stdout_truncated && !r.outcome.stderr_truncated);
}

/// Fails until the images carry no setuid or setgid file (guest hardening
/// of issue 9): a program that finds one has a way to root inside the VM.
#[tokio::test]
async fn no_setuid_or_setgid_file_in_the_guest() {
    let src = "import subprocess, sys\nr = subprocess.run(['find', '/', '-xdev', '-perm', '/6000', '-type', 'f'], capture_output=True, text=True)\nsys.stdout.write(r.stdout)\n";
    let r = run(python(src, limits())).await;
    assert_eq!(r.outcome.status, Verdict::Ok, "{r:#?}");
    assert_eq!(r.stdout, "", "setuid/setgid files in the guest");
}

/// `/dev/kmsg` is readable by anyone unless `kernel.dmesg_restrict` is
/// set, which the agent does at start (images built before that fail here).
#[tokio::test]
async fn devices_and_pid_1_are_out_of_reach() {
    // Each probe prints `path: ok` when it read something, else the error.
    let probes = [
        "/dev/vda",
        "/dev/vdb",
        "/dev/mem",
        "/dev/kmem",
        "/dev/port",
        "/dev/kmsg",
        "/proc/kcore",
        "/proc/1/environ",
        "/proc/1/mem",
        "/proc/1/maps",
        "/proc/1/root/etc/shadow",
        "/proc/1/cwd/.",
        "/etc/shadow",
        "/sys/kernel/debug/.",
    ];
    let src = format!(
        "import os\nfor p in {probes:?}:\n    try:\n        if os.path.isdir(p):\n            os.listdir(p)\n        else:\n            with open(p, 'rb') as f:\n                f.read(64)\n        print(p + ': ok')\n    except OSError as e:\n        print(p + ': ' + (e.strerror or str(e.errno)))\n"
    );
    let r = run(python(&src, limits())).await;
    assert_eq!(r.outcome.status, Verdict::Ok, "{r:#?}");
    assert_eq!(r.stdout.lines().count(), probes.len(), "{r:#?}");
    let reached: Vec<&str> = r.stdout.lines().filter(|l| l.ends_with(": ok")).collect();
    assert!(reached.is_empty(), "the program reached {reached:?}");
}

#[tokio::test]
async fn signals_to_pid_1_are_refused_and_kill_all_ends_only_the_program() {
    // Every signal to init is refused (EPERM); then a SIGKILL to every
    // process the program may signal (kill(-1): all but init and the
    // caller) ends its own child and nothing the agent needs.
    let src = "import os, signal\nfor s in (9, 15, 19, 2, 1, 11, 10):\n    try:\n        os.kill(1, s)\n        print(s, 'delivered', flush=True)\n    except OSError as e:\n        print(s, e.errno, flush=True)\nchild = os.fork()\nif child == 0:\n    signal.pause()\n    os._exit(0)\nos.kill(-1, signal.SIGKILL)\n_, status = os.waitpid(child, 0)\nprint('child ended by', os.WTERMSIG(status), flush=True)\n";
    let r = run(python(src, limits())).await;
    assert_eq!(
        r.stdout, "9 1\n15 1\n19 1\n2 1\n1 1\n11 1\n10 1\nchild ended by 9\n",
        "{r:#?}"
    );
    assert_eq!(r.outcome.status, Verdict::Ok, "{r:#?}");
}

#[tokio::test]
async fn a_daemon_left_behind_dies_with_the_job() {
    // The grandchild leaves the session, ignores the polite signals and
    // keeps printing; the program itself exits at once. Were the daemon
    // to survive, it would print until the 5 s deadline, some 250 ticks.
    let src = "import os, signal, sys, time\nr, w = os.pipe()\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):\n            signal.signal(s, signal.SIG_IGN)\n        os.write(w, b'.')\n        while True:\n            print('tick', flush=True)\n            time.sleep(0.02)\n    os._exit(0)\nos.read(r, 1)\nprint('parent done', flush=True)\n";
    let r = run(python(src, limits())).await;
    assert_eq!(r.outcome.status, Verdict::Ok, "{r:#?}");
    assert_eq!(r.outcome.exit_code, Some(0), "{r:#?}");
    let after = r
        .stdout
        .split_once("parent done\n")
        .unwrap_or_else(|| panic!("the program's own line is missing: {r:#?}"))
        .1;
    let ticks = after.lines().count();
    assert!(ticks < 25, "the daemon kept printing: {ticks} ticks");
    assert!(after.lines().all(|l| l == "tick"), "{r:#?}");
}

/// Far more arguments than a request may carry (and than `execve` takes):
/// the agent refuses the request, which the API would have refused first,
/// and the run says so instead of hanging or passing as a success.
#[tokio::test]
async fn huge_argv_is_refused_cleanly() {
    let mut req = python("print('started')\n", limits());
    req.args = vec!["a".repeat(1024); 4096];
    let r = run(req).await;
    assert_ne!(r.outcome.status, Verdict::Ok, "{r:#?}");
    assert!(!r.stdout.contains("started"), "{r:#?}");
    assert!(r.stderr.is_empty(), "the program never started: {r:#?}");
    let message = r.outcome.message.as_deref().unwrap_or_default();
    assert!(
        message.contains(&format!("4096 arguments, at most {ARGS_MAX}")),
        "{r:#?}"
    );
}

/// One environment entry over the kernel's limit for a single string
/// (MAX_ARG_STRLEN, 128 KiB): refused the same way.
#[tokio::test]
async fn huge_env_is_refused_cleanly() {
    let mut req = python("print('started')\n", limits());
    req.env.insert("BIG".into(), "x".repeat(512 * 1024));
    let r = run(req).await;
    assert_ne!(r.outcome.status, Verdict::Ok, "{r:#?}");
    assert!(!r.stdout.contains("started"), "{r:#?}");
}

/// Arguments and environment that fit run as given.
#[tokio::test]
async fn many_small_args_and_env_run() {
    let mut req = python(
        "import os, sys\nprint(len(sys.argv) - 1, len(os.environ['K0']), sum(k[0] == 'K' for k in os.environ))\n",
        limits(),
    );
    // As many as a request may carry.
    req.args = vec!["arg".into(); ARGS_MAX];
    req.env = (0..ENV_MAX)
        .map(|i| (format!("K{i}"), "v".repeat(100)))
        .collect();
    let r = run(req).await;
    assert_eq!(r.outcome.status, Verdict::Ok, "{r:#?}");
    assert_eq!(r.stdout, format!("{ARGS_MAX} 100 {ENV_MAX}\n"));
}
