//! The Firecracker driver on a real `firecracker` with working KVM.
//!
//! Where there is none these tests are ignored, saying why; `scripts/test`
//! runs them (`--ignored`) on hosts where `ignis doctor` finds Firecracker
//! usable, and prints one line saying why it did not otherwise. No fake
//! Firecracker stands in for the real one: its request bodies are checked
//! against Firecracker's API description in `ignis-vmm`.

mod common;

use common::*;
use ignis_protocol::Verdict;

#[test]
fn asking_for_firecracker_where_it_cannot_work_fails_at_once_with_the_reason() {
    images(&["python"]);
    let (work, run_dir) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    std::fs::write(work.path().join("hello.py"), "print('hello')\n").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ignis"))
        .args(["run", "--driver", "firecracker", "hello.py"])
        .env("IGNIS_FIRECRACKER", "/nonexistent/firecracker")
        .env("IGNIS_RUN_DIR", run_dir.path())
        .current_dir(work.path())
        .output()
        .expect("ignis run");
    assert_ne!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty(), "nothing ran");
    let err = String::from_utf8_lossy(&out.stderr);
    // Tests beside this one may have just killed an Ignis whose VMMs are
    // still dying; the start-up clean-up of this installation's cgroups
    // reports those, which is not about the driver.
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.contains("a dead Ignis process left"))
        .collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(
        lines[0].contains("--driver firecracker cannot work here")
            && lines[0].contains("/nonexistent/firecracker"),
        "{err}"
    );
}

fn run_on_firecracker(files: &[(&str, &str)]) -> ignis_vmm::RunReport {
    let work = tempfile::tempdir().expect("tmp");
    let (r, cli) = run_json(work.path(), files, &["--driver", "firecracker"]);
    assert_eq!(cli.code, 0, "{}", cli.stderr);
    r
}

#[test]
#[ignore = "needs a firecracker binary and working KVM (scripts/test runs it where ignis doctor finds both)"]
fn python_and_go_run_on_firecracker_restored_from_their_snapshots() {
    images(&["python", "go"]);
    for (file, src) in [
        ("hello.py", "print('hello, world')\n"),
        (
            "hello.go",
            "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hello, world\")\n}\n",
        ),
    ] {
        let r = run_on_firecracker(&[(file, src)]);
        assert_eq!(
            (r.status, &*r.stdout_text()),
            (Verdict::Ok, "hello, world\n"),
            "{r:#?}"
        );
        let vm = r.vm.expect("vm");
        assert_eq!(vm.driver, "firecracker");
        assert!(
            vm.restored,
            "restored from the firecracker snapshot: {vm:?}"
        );
    }
}

#[test]
#[ignore = "needs a firecracker binary and working KVM (scripts/test runs it where ignis doctor finds both)"]
fn two_restored_firecracker_guests_differ_and_take_the_host_clock() {
    images(&["python"]);
    let src = "import json, os, random, socket, time\n\
               print(json.dumps({'u': os.urandom(16).hex(), 'r': random.random(), 'h': socket.gethostname(), 't': time.time()}))\n";
    let a: serde_json::Value =
        serde_json::from_str(&run_on_firecracker(&[("main.py", src)]).stdout_text()).expect("json");
    let b: serde_json::Value =
        serde_json::from_str(&run_on_firecracker(&[("main.py", src)]).stdout_text()).expect("json");
    for f in ["u", "r", "h"] {
        assert_ne!(a[f], b[f], "{f}: {a} / {b}");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!((a["t"].as_f64().expect("t") - now).abs() < 120.0, "{a}");
}
