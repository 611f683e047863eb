//! `ignis run --server`: the real CLI against a real embedded server on
//! loopback (port 0), real VMs behind it. Output must stream through the
//! API, and the exit code and `--json` report must match a local run's.

use std::process::Command;
use std::time::Duration;

use ignis_server::config::ServerConfig;
use ignis_vmm::image::Catalog;
use ignis_vmm::paths::Paths;

fn require_python() {
    let c = Catalog::discover(&Paths::from_env().images());
    assert!(
        c.kernel.is_ok() && c.language("python").is_ok(),
        "prerequisite missing: no usable kernel and python image; run scripts/setup"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_through_a_server_streams_output_and_keeps_the_exit_code() {
    require_python();
    let data = tempfile::tempdir().expect("tmp");
    let mut cfg = ServerConfig::new(data.path().to_path_buf());
    cfg.pool.warm = 0;
    cfg.pool.max_vms = 2;
    cfg.workers = 2;
    cfg.shutdown_grace = Duration::from_secs(2);
    let svc = ignis_server::embedded::services(cfg, Paths::from_env())
        .await
        .expect("services");
    let (_, key) = ignis_server::keys::create(svc.store.as_ref(), "cli", None, None)
        .await
        .expect("key");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ignis_server::server::run(
        listener,
        async {
            let _ = stopped.await;
        },
        svc,
    ));

    let dir = tempfile::tempdir().expect("tmp");
    let prog = dir.path().join("prog.py");
    std::fs::write(
        &prog,
        "import sys\nprint('out', sys.argv[1:])\nprint('err', file=sys.stderr)\nsys.exit(7)\n",
    )
    .expect("write");
    let run = |extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ignis"));
        cmd.arg("run")
            .arg(&prog)
            .args(["--server", &url, "--arg", "x"])
            .args(extra)
            .env("IGNIS_API_KEY", &key);
        cmd
    };
    let plain = {
        let mut cmd = run(&[]);
        tokio::task::spawn_blocking(move || cmd.output())
            .await
            .expect("join")
            .expect("ignis run")
    };
    assert_eq!(String::from_utf8_lossy(&plain.stdout), "out ['x']\n");
    assert_eq!(String::from_utf8_lossy(&plain.stderr), "err\n");
    assert_eq!(plain.status.code(), Some(7));

    let json = {
        let mut cmd = run(&["--json"]);
        tokio::task::spawn_blocking(move || cmd.output())
            .await
            .expect("join")
            .expect("ignis run --json")
    };
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("one JSON object");
    assert_eq!(report["status"], "runtime_error");
    assert_eq!(report["exit_code"], 7);
    assert_eq!(report["stdout"], "out ['x']\n");
    assert_eq!(report["vm"]["driver"], "qemu");
    assert_eq!(json.status.code(), Some(7));

    // A wrong key is refused with the server's own words, and no job runs.
    let mut bad = run(&[]);
    bad.env("IGNIS_API_KEY", "ignis_wrong");
    let refused = tokio::task::spawn_blocking(move || bad.output())
        .await
        .expect("join")
        .expect("ignis run");
    assert_ne!(refused.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("unknown API key"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let _ = stop.send(());
    server.await.expect("join").expect("server stopped cleanly");
}
