//! Third-party clients, unchanged, against a real `ignis serve` with real
//! VMs: the official `judge0` Python SDK and the `piston-client` npm
//! package. `scripts/compat-clients` installs them; without them, or
//! without the Python and Go images, the test fails and says why.
//!
//! The scenarios live in `tests/compat/` as the clients' own languages;
//! each exits non-zero naming the first scenario that did not hold.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::serve::{clients_dir, node, prerequisite, report, Serve};

fn scenarios() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat")
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
    let node_version = Command::new("node").arg("--version").output();
    prerequisite(
        node_version.is_ok_and(|o| o.status.success()),
        "node on PATH",
    );

    let (serve, key) = Serve::with_key();
    let judge0 = Command::new(&python)
        .arg(scenarios().join("judge0_sdk.py"))
        .arg(format!("{}/judge0", serve.base))
        .arg(&key)
        .env("JUDGE0_SUPPRESS_PREVIEW_WARNING", "1")
        .output()
        .expect("run the judge0 scenarios");

    let piston = node(
        &scenarios().join("piston_client.mjs"),
        &[&format!("{}/piston/k/{key}", serve.base)],
        &[],
    );

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
