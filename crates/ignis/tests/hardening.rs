//! Guest hardening, checked from inside real microVMs (defence in depth
//! behind the VM): programs run with no new privileges under a seccomp
//! filter that refuses what a judge never needs with EPERM, the root is
//! mounted `nosuid,nodev`, the images carry no set-id files, and file names
//! that could pass for options never reach a command line as one. A test
//! fails, saying why, when the images it needs are not built; run
//! `scripts/setup` first.

mod common;

use common::*;
use ignis_protocol::{Limits, Verdict};
use ignis_vmm::report;

/// Tries what the filter refuses (by raw system call number, x86-64) and
/// reports the errno of each, the process's status lines, the root's mount
/// options and every set-id file on the root.
const PROBE: &str = r#"import ctypes, json, os, subprocess
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def errno_of(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return 'ok' if r != -1 else os.strerror(ctypes.get_errno())
calls = {
    'ptrace': (101, 0, 0, 0, 0),          # PTRACE_TRACEME
    'mount': (165, 0, 0, 0, 0, 0),
    'umount2': (166, 0, 0),
    'bpf': (321, 0, 0, 0),
    'keyctl': (250, 0, 0, 0, 0),
    'add_key': (248, 0, 0, 0, 0, 0),
    'init_module': (175, 0, 0, 0),
    'finit_module': (313, -1, 0, 0),
    'delete_module': (176, 0, 0),
    'perf_event_open': (298, 0, 0, -1, -1, 0),
    'reboot': (169, 0, 0, 0, 0),
    'kexec_load': (246, 0, 0, 0, 0),
    'pivot_root': (155, 0, 0),
    'swapon': (167, 0, 0),
    'unshare': (272, 0),
}
status = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines())
root = [l.split() for l in open('/proc/mounts') if l.split()[1] == '/']
found = subprocess.run(['/usr/bin/find', '/', '-xdev', '-perm', '/6000'],
                       capture_output=True, text=True)
print(json.dumps({
    'errno': {k: errno_of(*v) for k, v in calls.items()},
    'getpid_works': os.getpid() > 1,
    'no_new_privs': status['NoNewPrivs'].strip(),
    'seccomp': status['Seccomp'].strip(),
    'root_options': root[-1][3].split(',') if root else [],
    'setid_files': found.stdout.split(),
    'find_status': found.returncode,
    'find_stderr': found.stderr[-500:],
    'su_mode': oct(os.stat('/usr/bin/su').st_mode) if os.path.exists('/usr/bin/su') else None,
}))
"#;

#[tokio::test]
async fn refused_calls_get_eperm_and_nothing_grants_privileges() {
    let launcher = launcher(&["python"]).await;
    let vm = launcher.start("python").await.expect("restore");
    let limits = Limits {
        timeout_ms: 60_000,
        ..Limits::default()
    };
    let r = report::execute(vm, request(&[("probe.py", PROBE)], limits), |_| {}).await;
    assert_eq!(r.status, Verdict::Ok, "{r:#?}");
    let got: serde_json::Value = serde_json::from_slice(&r.stdout).expect("probe output");
    for (call, e) in got["errno"].as_object().expect("errno map") {
        assert_eq!(
            e, "Operation not permitted",
            "{call} was not refused with EPERM: {got}"
        );
    }
    assert_eq!(got["getpid_works"], true, "{got}");
    assert_eq!(got["no_new_privs"], "1", "{got}");
    assert_eq!(got["seccomp"], "2", "filter mode: {got}");
    let opts: Vec<&str> = got["root_options"]
        .as_array()
        .expect("options")
        .iter()
        .filter_map(|o| o.as_str())
        .collect();
    assert!(
        opts.contains(&"nosuid") && opts.contains(&"nodev"),
        "/ is mounted {opts:?}"
    );
    // find says 1 when some directory was not readable to the runner
    // (none that an image carries files in); anything else is a failure.
    let stderr = got["find_stderr"].as_str().unwrap_or_default();
    assert!(
        got["find_status"] == 0
            || (got["find_status"] == 1
                && stderr.lines().all(|l| l.ends_with("Permission denied"))),
        "find failed: {got}"
    );
    assert_eq!(got["setid_files"], serde_json::json!([]), "{got}");
    // su is in every Debian base, setuid root there: here it is a plain
    // executable (or absent).
    if let Some(mode) = got["su_mode"].as_str() {
        let mode = u32::from_str_radix(mode.trim_start_matches("0o"), 8).expect("octal");
        assert_eq!(mode & 0o6000, 0, "su is {mode:o}");
    }
}

/// An image with a set-id file (one Ignis did not pack) never starts a VM:
/// the driver walks its drives first and refuses, naming the file, before
/// any VMM runs, and leaves nothing behind.
#[tokio::test]
async fn no_vm_starts_from_an_image_with_a_setid_file() {
    let fake = fake_image_with(
        SILENT_AGENT,
        &[("bin/su", b"#!/bin/busybox sh\n")],
        &["bin/su"],
    )
    .await;
    let err = fake.boot().await.expect_err("an image with a set-uid file");
    let ignis_vmm::BootError::Driver(ignis_vmm::DriverError::Image(why)) = &err else {
        panic!("expected the image to be refused, got {err}");
    };
    assert!(why.contains("/bin/su") && why.contains("set-id"), "{why}");
    assert!(why.contains("fake-base.erofs"), "{why}");
    fake.assert_nothing_left();
}

#[tokio::test]
async fn plain_names_run_and_option_like_names_are_refused_by_the_agent() {
    let launcher = launcher(&["python"]).await;
    // A plain name with a dash in it runs, and reaches python as a path.
    let vm = launcher.start("python").await.expect("restore");
    let src = "import sys\nprint(sys.argv[0])\n";
    let r = report::execute(vm, request(&[("x-y.py", src)], Limits::default()), |_| {}).await;
    assert_eq!(r.status, Verdict::Ok, "{r:#?}");
    assert_eq!(r.stdout_text(), "./x-y.py\n", "{r:#?}");

    // The API refuses such names first (422); a request that gets past it
    // anyway is refused by the agent, never handed to python as `--help`.
    for name in ["--help.py", "-x.py", "a..py"] {
        let vm = launcher.start("python").await.expect("restore");
        let req = request(&[(name, "print('ran')\n")], Limits::default());
        let r = report::execute(vm, req, |_| {}).await;
        assert_eq!(r.status, Verdict::InternalError, "{name}: {r:#?}");
        assert!(r.stdout.is_empty(), "{name}: {r:#?}");
        let msg = r.message.unwrap_or_default();
        assert!(
            msg.contains("refused request") && msg.contains("not allowed"),
            "{name}: {msg}"
        );
    }
}

/// Every file and directory under `dir`, with its permission bits.
fn modes(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let meta = std::fs::symlink_metadata(&p).expect("stat");
        out.push((p.clone(), meta.permissions().mode() & 0o7777));
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).expect("read_dir") {
                todo.push(e.expect("entry").path());
            }
        }
    }
    out
}

/// A real `ignis serve --dev`: the data directory it creates is its own
/// alone (0700, every file in it 0600: the database with its WAL and SHM,
/// the webhook secret), after a job wrote to the database; and it answers
/// only to its own host names, so no web page can drive it by DNS
/// rebinding.
#[tokio::test]
async fn dev_server_keeps_its_data_private_and_answers_only_to_its_names() {
    images(&["python"]);
    let serve = common::serve::Serve::dev_with(&["--allowed-host", "ignis.test"]);
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let job = http
        .post(format!("{}/v1/jobs?wait=true", serve.base))
        .json(&serde_json::json!({"language": "python", "code": "print('stored')"}))
        .send()
        .await
        .expect("POST /v1/jobs");
    let log = || serve.log.lock().expect("log").clone();
    assert_eq!(job.status(), 200, "{}", log());
    let job: serde_json::Value = job.json().await.expect("job");
    assert_eq!(job["status"], "completed", "{job}");

    let found = modes(&serve.data_dir);
    let names: Vec<String> = found
        .iter()
        .map(|(p, _)| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    for expected in ["ignis.db", "ignis.db-wal", "ignis.db-shm", "webhook-secret"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing: {names:?}"
        );
    }
    for (path, mode) in &found {
        let want = if path == &serve.data_dir {
            0o700
        } else {
            0o600
        };
        assert_eq!(*mode, want, "{} is {mode:o}", path.display());
    }

    let port = serve.base.rsplit(':').next().expect("port").to_owned();
    let get = |host: String| {
        let req = http
            .get(format!("{}/v1/languages", serve.base))
            .header(reqwest::header::HOST, host);
        async move { req.send().await.expect("GET /v1/languages") }
    };
    for ok in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "ignis.test".to_owned(),
    ] {
        assert_eq!(get(ok.clone()).await.status(), 200, "Host: {ok}");
    }
    for evil in ["evil.example".to_owned(), format!("evil.example:{port}")] {
        let r = get(evil.clone()).await;
        assert_eq!(r.status(), 421, "Host: {evil}");
        assert_eq!(
            r.headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json")
        );
        let p: serde_json::Value = r.json().await.expect("problem");
        assert_eq!(p["type"], "urn:ignis:problem:misdirected-request", "{p}");
        assert_eq!(p["status"], 421, "{p}");
    }
}
