//! End-to-end tests against real microVMs: the `ignis` binary and the
//! `ignis-vmm` library, booting the images under IGNIS_HOME. No mocks: what
//! matters is checked from inside the guest. A test fails, saying why, when
//! the images it needs are not built; run `scripts/setup` first.

mod common;

use std::time::Duration;

use common::*;
use ignis_protocol::{Limits, Phase, Stream, Verdict};
use ignis_vmm::report::{self, RunReport};
use ignis_vmm::{BootError, RunError, RunEvent, VmState};

const PY_HELLO: &str = "print('hello, world')\n";
const GO_HELLO: &str =
    "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hello, world\")\n}\n";

fn assert_vm_fields(r: &RunReport) {
    let vm = r.vm.as_ref().expect("report names its VM");
    assert_eq!(vm.driver, "qemu");
    assert!(vm.ready_ms > 0, "{vm:?}");
    assert!(
        !vm.id.is_empty() && !vm.runtime_version.is_empty(),
        "{vm:?}"
    );
}

/// `interpreted`: a Python hello world surely takes a measurable time; a
/// compiled Go one may finish within the same millisecond on KVM.
fn assert_hello(r: &RunReport, interpreted: bool) {
    assert_eq!(r.status, Verdict::Ok, "{r:#?}");
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(r.signal, None);
    assert_eq!(r.stdout_text(), "hello, world\n");
    assert_eq!(r.stderr_text(), "");
    assert!(r.memory_kib > 0, "{r:#?}");
    if interpreted {
        assert!(r.duration_ms > 0 && r.cpu_ms > 0, "{r:#?}");
    }
    assert!(!r.stdout_truncated && !r.stderr_truncated);
    assert_vm_fields(r);
}

#[test]
fn python_hello_cli() {
    images(&["python"]);
    let tmp = tempfile::tempdir().expect("tmp");
    let (r, cli) = run_json(tmp.path(), &[("hello.py", PY_HELLO)], &[]);
    assert_eq!(cli.code, 0, "{}", cli.stderr);
    assert_hello(&r, true);
    assert!(r
        .vm
        .as_ref()
        .is_some_and(|v| v.runtime_version.starts_with("Python 3")));
    let raw: serde_json::Value = serde_json::from_slice(&cli.stdout).expect("json");
    assert_eq!(raw["vm"]["driver"], "qemu");
    assert!(
        matches!(raw["vm"]["accel"].as_str(), Some("kvm" | "tcg")),
        "{raw}"
    );
    assert_eq!(
        raw["vm"]["restored"], true,
        "restored from its snapshot: {raw}"
    );
    // Without --json the program's output is the command's output.
    let plain = ignis(tmp.path(), &["run", "hello.py"]);
    assert_eq!(plain.code, 0, "{}", plain.stderr);
    assert_eq!(String::from_utf8_lossy(&plain.stdout), "hello, world\n");
    // --no-snapshot boots, with the same result.
    let (booted, cli) = run_json(tmp.path(), &[("hello.py", PY_HELLO)], &["--no-snapshot"]);
    assert_eq!(cli.code, 0, "{}", cli.stderr);
    assert_hello(&booted, true);
    assert_eq!(booted.vm.as_ref().map(|v| v.restored), Some(false));
}

#[test]
fn go_hello_cli() {
    images(&["go"]);
    let tmp = tempfile::tempdir().expect("tmp");
    let (r, cli) = run_json(tmp.path(), &[("hello.go", GO_HELLO)], &[]);
    assert_eq!(cli.code, 0, "{}", cli.stderr);
    assert_hello(&r, false);
    assert!(r.compile_ms.is_some_and(|ms| ms > 0), "{r:#?}");
    assert!(r
        .vm
        .as_ref()
        .is_some_and(|v| v.runtime_version.starts_with("go version")));
}

/// Starts a `language` VM through the launcher (restored from its snapshot,
/// or booted), runs a hello world with `report::execute`, and checks the
/// events seen on the way and that the per-VM directory existed while the
/// VM lived and is gone after.
async fn library_hello(language: &str, file: &str, src: &str, phases: &[Phase], restore: bool) {
    let launcher = launcher(&[language]).await;
    let vm = if restore {
        launcher.start(language).await.expect("restore")
    } else {
        launcher.boot(language).await.expect("boot")
    };
    let info = vm.info().clone();
    assert_eq!(info.restored, restore, "{info:?}");
    assert_eq!((info.driver, info.language.as_str()), ("qemu", language));
    assert_eq!(info.accel, launcher.accel.accel);
    assert!(info.ready_ms > 0);
    let vm_dir = launcher.paths.runtime().join(format!("vm-{}", info.id));
    assert!(
        vm_dir.is_dir(),
        "{} missing while the VM lives",
        vm_dir.display()
    );
    let mut events = Vec::new();
    let req = request(&[(file, src)], Limits::default());
    let r = report::execute(vm, req, |e| events.push(e)).await;
    assert_hello(&r, language == "python");
    assert_eq!(r.vm.as_ref().map(|v| v.id.as_str()), Some(info.id.as_str()));
    let seen: Vec<Phase> = events
        .iter()
        .filter_map(|e| match e {
            RunEvent::Phase(p) => Some(*p),
            _ => None,
        })
        .collect();
    assert_eq!(seen, phases);
    let streamed: Vec<u8> = events
        .iter()
        .filter_map(|e| match e {
            RunEvent::Output(Stream::Stdout, d) => Some(d.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(streamed, b"hello, world\n");
    assert!(!vm_dir.exists(), "{} left behind", vm_dir.display());
}

#[tokio::test]
async fn python_hello_library() {
    library_hello("python", "hello.py", PY_HELLO, &[Phase::Running], true).await;
}

#[tokio::test]
async fn go_hello_library_compiles_then_runs() {
    let phases = [Phase::Compiling, Phase::Running];
    library_hello("go", "hello.go", GO_HELLO, &phases, false).await;
}

#[test]
fn go_compile_error() {
    images(&["go"]);
    let tmp = tempfile::tempdir().expect("tmp");
    let src = "package main\n\nfunc main() {\n\tundefinedThing()\n}\n";
    let (r, cli) = run_json(tmp.path(), &[("broken.go", src)], &[]);
    assert_eq!(r.status, Verdict::CompileError, "{r:#?}");
    assert_eq!(cli.code, 65);
    let out = r.compile_output.as_deref().unwrap_or_default();
    assert!(out.contains("undefined: undefinedThing"), "{out}");
    assert!(out.contains("broken.go:4"), "{out}");
    assert_eq!(r.stdout_text(), "");
}

#[test]
fn python_exit_code_is_kept() {
    images(&["python"]);
    let tmp = tempfile::tempdir().expect("tmp");
    let src = "import sys\nprint('before exit', flush=True)\nsys.exit(3)\n";
    let (r, cli) = run_json(tmp.path(), &[("exit3.py", src)], &[]);
    assert_eq!(r.status, Verdict::RuntimeError, "{r:#?}");
    assert_eq!((r.exit_code, r.signal), (Some(3), None));
    assert_eq!(r.stdout_text(), "before exit\n");
    assert_eq!(cli.code, 3);
}

#[test]
fn python_uncaught_exception() {
    images(&["python"]);
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::write(
        tmp.path().join("boom.py"),
        "def f():\n    raise ValueError('boom')\nf()\n",
    )
    .expect("write");
    let cli = ignis(tmp.path(), &["run", "boom.py"]);
    assert_eq!(cli.code, 1, "{}", cli.stderr);
    assert!(
        cli.stderr.contains("Traceback (most recent call last):"),
        "{}",
        cli.stderr
    );
    assert!(cli.stderr.contains("ValueError: boom"), "{}", cli.stderr);
    assert!(cli.stdout.is_empty());
    let (r, _) = run_json(tmp.path(), &[], &["boom.py"]);
    assert_eq!((r.status, r.exit_code), (Verdict::RuntimeError, Some(1)));
    assert!(r.stderr_text().contains("ValueError: boom"));
}

#[test]
fn stdin_and_args() {
    images(&["python"]);
    let tmp = tempfile::tempdir().expect("tmp");
    let input = "first line\nsecond line é\n";
    std::fs::write(tmp.path().join("input.txt"), input).expect("write");
    let src =
        "import sys, json\nprint(json.dumps({'argv': sys.argv[1:], 'stdin': sys.stdin.read()}))\n";
    let (r, cli) = run_json(
        tmp.path(),
        &[("echo.py", src)],
        &[
            "--stdin",
            "input.txt",
            "--arg",
            "a",
            "--arg",
            "-b",
            "--arg",
            "c d",
        ],
    );
    assert_eq!(cli.code, 0, "{r:#?}");
    let got: serde_json::Value = serde_json::from_str(&r.stdout_text()).expect("program output");
    assert_eq!(got["argv"], serde_json::json!(["a", "-b", "c d"]));
    assert_eq!(got["stdin"], input);
}

#[test]
fn multi_file_python() {
    images(&["python"]);
    let tmp = tempfile::tempdir().expect("tmp");
    let main = "import util\nprint(util.greet('ignis'))\n";
    let util = "def greet(n):\n    return f'hello from util, {n}'\n";
    let (r, cli) = run_json(tmp.path(), &[("main.py", main), ("util.py", util)], &[]);
    assert_eq!((r.status, cli.code), (Verdict::Ok, 0), "{r:#?}");
    assert_eq!(r.stdout_text(), "hello from util, ignis\n");
}

#[test]
fn multi_file_go() {
    images(&["go"]);
    let tmp = tempfile::tempdir().expect("tmp");
    let main = "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(double(21))\n}\n";
    let util = "package main\n\nfunc double(x int) int {\n\treturn 2 * x\n}\n";
    let (r, cli) = run_json(tmp.path(), &[("main.go", main), ("util.go", util)], &[]);
    assert_eq!((r.status, cli.code), (Verdict::Ok, 0), "{r:#?}");
    assert_eq!(r.stdout_text(), "42\n");
}

#[test]
fn infinite_loop_hits_the_timeout() {
    images(&["python"]);
    let tmp = tempfile::tempdir().expect("tmp");
    let src = "print('looping', flush=True)\nwhile True:\n    pass\n";
    let (r, cli) = run_json(tmp.path(), &[("loop.py", src)], &["--timeout", "2"]);
    assert_eq!(r.status, Verdict::Timeout, "{r:#?}");
    assert_eq!((r.exit_code, r.signal), (None, Some(9)));
    assert_eq!(r.stdout_text(), "looping\n");
    assert_eq!(cli.code, 124);
}

#[test]
fn memory_hog_hits_the_memory_limit() {
    images(&["python"]);
    let tmp = tempfile::tempdir().expect("tmp");
    // bytes objects are written to, so every page really is used.
    let src = "chunks = []\nwhile True:\n    chunks.append(b'x' * (1 << 20))\n";
    let (r, cli) = run_json(tmp.path(), &[("hog.py", src)], &["--memory", "64"]);
    assert_eq!(r.status, Verdict::MemoryLimit, "{r:#?}");
    assert_eq!(r.signal, Some(9), "{r:#?}");
    assert!(
        r.memory_kib > 32 * 1024 && r.memory_kib <= 64 * 1024,
        "{r:#?}"
    );
    assert_eq!(cli.code, 137);
}

#[tokio::test]
async fn fork_bomb_is_contained_and_the_vm_stays_answerable() {
    /// What fork says on Linux when pids.max is reached.
    const EAGAIN: i32 = 11;
    let launcher = launcher(&["python"]).await;
    let mut vm = launcher.boot("python").await.expect("boot");
    // Every process forks forever; the first one says when the process
    // limit bit, which proves the limit was reached and enforced.
    let src = "import os, sys\nroot = os.getpid()\nsaid = False\nwhile True:\n    try:\n        os.fork()\n    except OSError as e:\n        if os.getpid() == root and not said:\n            print('fork refused:', e.errno, flush=True)\n            said = True\n";
    let limits = Limits {
        timeout_ms: 5000,
        max_processes: 32,
        ..Limits::default()
    };
    let req = request(&[("bomb.py", src)], limits);
    let exec = vm
        .run(req, Duration::from_secs(120), |_| {})
        .await
        .expect("the run completes");
    let o = &exec.outcome;
    assert!(
        matches!(o.status, Verdict::Timeout | Verdict::RuntimeError),
        "{o:#?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&exec.stdout),
        format!("fork refused: {EAGAIN}\n")
    );
    assert_eq!(vm.state(), VmState::Finished);
    vm.ping(Duration::from_secs(30))
        .await
        .expect("agent answers after the bomb");
    assert_eq!(vm.destroy().await, None, "a healthy VM keeps no log");
}

#[test]
fn output_flood_is_cut_at_the_cap() {
    images(&["python"]);
    let tmp = tempfile::tempdir().expect("tmp");
    let src = "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n";
    let (r, cli) = run_json(tmp.path(), &[("flood.py", src)], &["--max-output", "4"]);
    assert_eq!(
        r.status,
        Verdict::OutputLimit,
        "{:?}",
        (r.status, r.exit_code, r.signal)
    );
    assert_eq!(r.stdout.len(), 4096);
    assert!(r.stdout.iter().all(|&b| b == b'x'));
    assert!(r.stdout_truncated && !r.stderr_truncated);
    assert_eq!(cli.code, 141);
}

#[test]
fn no_network_in_the_guest() {
    images(&["python"]);
    let tmp = tempfile::tempdir().expect("tmp");
    let src = r#"import json, os, socket
res = {}
for host, port in [('10.0.2.2', 80), ('1.1.1.1', 53)]:
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect((host, port))
        res[host] = 'connected'
    except OSError as e:
        res[host] = e.errno
try:
    socket.getaddrinfo('example.com', 80)
    res['dns'] = 'resolved'
except OSError as e:
    res['dns'] = 'failed'
res['net'] = sorted(os.listdir('/sys/class/net'))
print(json.dumps(res))
"#;
    let (r, _) = run_json(tmp.path(), &[("net.py", src)], &[]);
    assert_eq!(r.status, Verdict::Ok, "{r:#?}");
    let got: serde_json::Value = serde_json::from_str(&r.stdout_text()).expect("program output");
    const ENETUNREACH: i64 = 101;
    assert_eq!(got["10.0.2.2"], ENETUNREACH, "{got}");
    assert_eq!(got["1.1.1.1"], ENETUNREACH, "{got}");
    assert_eq!(got["dns"], "failed", "{got}");
    assert_eq!(got["net"], serde_json::json!(["lo"]), "{got}");
}

#[test]
fn guest_sees_no_host_files_and_runs_unprivileged() {
    images(&["python"]);
    let tmp = tempfile::tempdir().expect("tmp");
    let nanos = std::time::UNIX_EPOCH.elapsed().expect("clock").as_nanos();
    let unique = format!("ignis-marker-{}-{nanos}", std::process::id());
    let in_tmpdir = tmp.path().join(&unique);
    let in_tmp = std::path::Path::new("/tmp").join(&unique);
    std::fs::write(&in_tmpdir, "host secret").expect("marker");
    std::fs::write(&in_tmp, "host secret").expect("marker");
    let src = r#"import glob, json, os, sys
def denied(f):
    try:
        f()
        return 'allowed'
    except OSError as e:
        return e.errno
print(json.dumps({
    'agent_channel': [denied(lambda: os.close(os.open(p, os.O_RDWR)))
                      for p in glob.glob('/dev/vport*')],
    'kill_init': denied(lambda: os.kill(1, 9)),
    'exists': [os.path.exists(p) for p in sys.argv[1:]],
    'init': open('/proc/1/cmdline', 'rb').read().split(b'\0')[0].decode(),
    'ids': [os.getuid(), os.geteuid(), os.getgid(), os.getegid()],
    'groups': os.getgroups(),
    'initial_env': open('/proc/self/environ', 'rb').read().decode(),
    'env': dict(os.environ),
}))
"#;
    let project = env!("CARGO_MANIFEST_DIR");
    let (tmp_s, tmpdir_s) = (in_tmp.to_string_lossy(), in_tmpdir.to_string_lossy());
    let args = ["--arg", &tmp_s, "--arg", &tmpdir_s, "--arg", project];
    let (r, _) = run_json(tmp.path(), &[("spy.py", src)], &args);
    let _ = std::fs::remove_file(&in_tmp);
    assert_eq!(r.status, Verdict::Ok, "{r:#?}");
    let got: serde_json::Value = serde_json::from_str(&r.stdout_text()).expect("program output");
    assert!(std::path::Path::new(project).exists());
    assert_eq!(
        got["exists"],
        serde_json::json!([false, false, false]),
        "{got}"
    );
    assert_eq!(got["init"], "/sbin/ignis-agent", "{got}");
    assert_eq!(
        got["ids"],
        serde_json::json!([1000, 1000, 1000, 1000]),
        "{got}"
    );
    assert_eq!(got["groups"], serde_json::json!([]), "{got}");
    assert_eq!(got["initial_env"], "", "{got}");
    // Python may only add LC_CTYPE itself (PEP 538 locale coercion).
    let env = got["env"].as_object().expect("env");
    assert!(env.keys().all(|k| k == "LC_CTYPE"), "{got}");
    // The agent's channel to the host and the agent itself are out of reach.
    const EPERM: i32 = 1;
    const EACCES: i32 = 13;
    assert_eq!(got["agent_channel"], serde_json::json!([EACCES]), "{got}");
    assert_eq!(got["kill_init"], EPERM, "{got}");
}

/// From inside a restored guest: high-resolution timers, and no timer tick
/// while the CPU idles. Without them (a periodic 250 Hz tick, as before the
/// guest CPU had `arat`) every idle pooled VM took ~1.5 % of a host core.
#[test]
fn an_idle_guest_takes_no_timer_tick() {
    images(&["python"]);
    let tmp = tempfile::tempdir().expect("tmp");
    let src = "import time\n\
               def ticks():\n\
               \x20   line = next(l for l in open('/proc/interrupts') if l.split()[0] == 'LOC:')\n\
               \x20   return int(line.split()[1])\n\
               before = ticks()\n\
               time.sleep(1)\n\
               print(time.clock_getres(time.CLOCK_MONOTONIC), ticks() - before)\n";
    let (r, _) = run_json(tmp.path(), &[("tick.py", src)], &[]);
    assert_eq!(r.status, Verdict::Ok, "{r:#?}");
    assert_eq!(r.vm.as_ref().map(|v| v.restored), Some(true), "{r:#?}");
    let out = r.stdout_text();
    let (res, ticks) = out.trim().split_once(' ').expect("two fields");
    assert_eq!(
        res, "1e-09",
        "timer resolution; a periodic tick gives 0.004"
    );
    let ticks: u64 = ticks.parse().expect("a count");
    // A periodic tick would take 250 in that second; a tickless one wakes
    // only for the timers due.
    assert!(ticks < 100, "{ticks} local timer interrupts in a 1 s sleep");
}

#[test]
fn env_is_passed() {
    images(&["python"]);
    let tmp = tempfile::tempdir().expect("tmp");
    let src = "import json, os\nprint(json.dumps(dict(os.environ)))\n";
    let args = [
        "--env",
        "GREETING=hello there",
        "--env",
        "EQ=a=b",
        "--env",
        "EMPTY=",
    ];
    let (r, _) = run_json(tmp.path(), &[("env.py", src)], &args);
    assert_eq!(r.status, Verdict::Ok, "{r:#?}");
    let mut env: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&r.stdout_text()).expect("program output");
    env.remove("LC_CTYPE");
    assert_eq!(
        serde_json::Value::Object(env),
        serde_json::json!({"GREETING": "hello there", "EQ": "a=b", "EMPTY": ""})
    );
}

#[tokio::test]
async fn silent_agent_times_out_and_is_torn_down() {
    let fake = fake_image(SILENT_AGENT, &[]).await;
    let err = fake.boot().await.expect_err("a silent agent cannot boot");
    let BootError::Timeout { ms, log } = &err else {
        panic!("expected a boot timeout, got {err}");
    };
    assert_eq!(*ms, 5000u64);
    assert!(err.to_string().contains("did not become ready"), "{err}");
    let log = log.0.as_ref().expect("console log kept");
    assert!(log.starts_with(&fake.cfg.log_dir), "{}", log.display());
    let text = std::fs::read_to_string(log).expect("console log");
    assert!(text.contains("fake agent: staying silent"), "{text}");
    fake.assert_nothing_left();
}

fn hang_request() -> ignis_protocol::RunRequest {
    let limits = Limits {
        timeout_ms: 1000,
        compile_timeout_ms: 0,
        ..Limits::default()
    };
    request(&[("main.fake", "whatever")], limits)
}

#[tokio::test]
async fn ready_then_hung_agent_times_out_the_run() {
    let frame = ready_frame();
    let fake = fake_image(READY_THEN_HANG_AGENT, &[("ready.frame", &frame)]).await;
    let mut vm = fake.boot().await.expect("the fake agent says ready");
    assert_eq!(
        (vm.info().language.as_str(), vm.state()),
        (FAKE_LANGUAGE, VmState::Ready)
    );
    assert_eq!(entries(fake.runtime_dir()).len(), 1, "one per-VM directory");
    assert!(
        process_mentions(&fake.cfg.image.base.path),
        "the monitor runs"
    );
    let err = vm
        .run(hang_request(), Duration::from_secs(3), |_| {})
        .await
        .expect_err("nobody answers");
    assert!(matches!(err, RunError::Timeout { ms: 3000 }), "{err}");
    assert_eq!(vm.state(), VmState::Failed);
    let log = vm
        .destroy()
        .await
        .expect("a failed VM keeps its console log");
    let text = std::fs::read_to_string(&log).expect("console log");
    assert!(text.contains("fake agent: ready on /dev/vport"), "{text}");
    fake.assert_nothing_left();
}

#[tokio::test]
async fn ready_then_hung_agent_is_an_internal_error_report() {
    let frame = ready_frame();
    let fake = fake_image(READY_THEN_HANG_AGENT, &[("ready.frame", &frame)]).await;
    let vm = fake.boot().await.expect("the fake agent says ready");
    let id = vm.info().id.clone();
    let r = report::execute(vm, hang_request(), |_| {}).await;
    assert_eq!(r.status, Verdict::InternalError, "{r:#?}");
    let msg = r.message.as_deref().unwrap_or_default();
    assert!(msg.contains("did not finish"), "{msg}");
    assert!(
        msg.contains(&fake.cfg.log_dir.to_string_lossy().into_owned()),
        "{msg}"
    );
    assert_eq!(r.vm.as_ref().map(|v| v.id.as_str()), Some(id.as_str()));
    assert_eq!((r.exit_code, &*r.stdout_text()), (None, ""));
    fake.assert_nothing_left();
}
