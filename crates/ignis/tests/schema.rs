//! Schemathesis, unchanged from PyPI, against the live `/openapi.json` of a
//! real `ignis serve` with an API key: every documented operation, with
//! generated valid and invalid input, must answer without a 5xx, with a
//! documented status code and content type, and a body that matches its
//! documented schema. What clients generate from the document is then what
//! they get. `scripts/compat-clients` installs it; without it the test
//! fails and says why.
//!
//! `IGNIS_SCHEMATHESIS_SEED` replays another seed; `IGNIS_SCHEMATHESIS_EXAMPLES`
//! asks for more (or fewer) examples per operation.

mod common;

use std::process::Command;

use common::serve::{clients_dir, prerequisite, report, Serve};

#[test]
fn every_operation_answers_as_its_openapi_document_says() {
    let st = clients_dir().join("schemathesis/bin/st");
    prerequisite(st.is_file(), "schemathesis (its `st` command)");
    let version = Command::new(&st).arg("--version").output();
    prerequisite(
        version.is_ok_and(|o| o.status.success()),
        "a working schemathesis",
    );

    let (serve, key) = Serve::with_key();
    let reports = tempfile::tempdir().expect("tmp");
    let seed = std::env::var("IGNIS_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());
    let examples = std::env::var("IGNIS_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "25".into());
    let out = Command::new(&st)
        .arg("run")
        .arg(format!("{}/openapi.json", serve.base))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            &examples,
            "--seed",
            &seed,
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--suppress-health-check",
            "all",
            "--output-truncate",
            "false",
        ])
        .arg("--header")
        .arg(format!("Authorization: Bearer {key}"))
        .arg("--report-dir")
        .arg(reports.path())
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .current_dir(reports.path())
        .output()
        .expect("run schemathesis");
    if let Some(failure) = report("schemathesis", &out) {
        panic!(
            "{failure}\n--- ignis serve\n{}",
            serve.log.lock().expect("log")
        );
    }
}
