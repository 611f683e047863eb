//! The web playground in a real browser: Debian's chromium, driven by
//! `playwright-core` (`scripts/compat-clients`; it downloads no browser),
//! against a real `ignis serve --dev` and one with API keys, with real VMs.
//! Without chromium, playwright-core, or the Python and Go images, the
//! test fails and says why.
//!
//! The scenarios live in `tests/playground/browser.mjs`; it exits non-zero
//! naming the first that did not hold. Screenshots go to
//! `$CARGO_TARGET_TMPDIR/playground`, outside the repository.

mod common;

use std::path::Path;
use std::process::Command;

use common::serve::{clients_dir, node, prerequisite, report, Serve};

const CHROMIUM: &str = "/usr/bin/chromium";

#[test]
fn the_playground_runs_streams_cancels_and_reports_in_a_real_browser() {
    common::images(&["python", "go"]);
    assert!(
        Path::new(CHROMIUM).is_file(),
        "prerequisite missing: {CHROMIUM}; run scripts/setup (it installs Debian's chromium)"
    );
    prerequisite(
        clients_dir()
            .join("node/node_modules/playwright-core/package.json")
            .is_file(),
        "playwright-core",
    );
    let node_version = Command::new("node").arg("--version").output();
    prerequisite(
        node_version.is_ok_and(|o| o.status.success()),
        "node on PATH",
    );

    let dev = Serve::dev();
    let (keyed, key) = Serve::with_key();
    let artefacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("playground");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/playground/browser.mjs");
    let out = node(
        &script,
        &[
            &dev.base,
            &keyed.base,
            &key,
            artefacts.to_str().expect("UTF-8 path"),
        ],
        &[("CHROMIUM", CHROMIUM)],
    );
    if let Some(failure) = report("playground in chromium", &out) {
        // Copied out first: a panic holding the lock would poison it.
        let logs = [&dev, &keyed].map(|s| s.log.lock().expect("log").clone());
        panic!(
            "{failure}\n--- ignis serve --dev\n{}\n--- ignis serve (keys)\n{}",
            logs[0], logs[1]
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("playground: all scenarios passed"),
        "{stdout}"
    );
    for line in stdout.lines().filter(|l| l.starts_with("screenshot: ")) {
        println!("{line}");
    }
}
