//! Every language recipe's own conformance programs, through real VMs.
//!
//! The recipes in `images/languages` are discovered, not listed: a new
//! language is tested by adding its file. Each program runs in a VM of its
//! own, restored from the language's snapshot as a job's would be, and is
//! checked for what its part of the recipe promises (see
//! `ignis_protocol::Conformance`). Every failure of every language is
//! reported together.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::{launcher, request};
use ignis_protocol::{Conformance, Limits, Phase, Recipe, Verdict};
use ignis_vmm::image::build::{read_recipe, recipe_files};
use ignis_vmm::report::{self, RunReport};
use ignis_vmm::vm::RunEvent;
use ignis_vmm::Launcher;

fn recipes_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../images/languages")
}

/// Every recipe in the repository, read and checked like a build would.
fn recipes() -> Vec<Recipe> {
    let dir = recipes_dir();
    let files = recipe_files(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    assert!(!files.is_empty(), "no recipes in {}", dir.display());
    files
        .iter()
        .map(|f| read_recipe(f).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

/// One conformance program: what it is called, its source, how it is run
/// and what it must do.
struct Case {
    name: &'static str,
    source: String,
    stdin: &'static str,
    args: &'static [&'static str],
    check: fn(&Recipe, &str, &RunReport) -> Result<(), String>,
}

fn cases(r: &Recipe) -> Vec<Case> {
    let c = &r.conformance;
    let mut out = vec![
        Case {
            name: "hello",
            source: c.hello.clone(),
            stdin: "",
            args: &[],
            check: |_, _, rep| ok_with(rep, "hello, world\n"),
        },
        Case {
            name: "echo_stdin",
            source: c.echo_stdin.clone(),
            stdin: Conformance::STDIN,
            args: &[],
            check: |_, _, rep| ok_with(rep, Conformance::STDIN),
        },
        Case {
            name: "args",
            source: c.args.clone(),
            stdin: "",
            args: &Conformance::ARGS,
            check: |_, _, rep| {
                let want: String = Conformance::ARGS.iter().map(|a| format!("{a}\n")).collect();
                ok_with(rep, &want)
            },
        },
        Case {
            name: "runtime_error",
            source: c.runtime_error.clone(),
            stdin: "",
            args: &[],
            check: |_, _, rep| {
                let failed = rep.exit_code.is_some_and(|c| c != 0) || rep.signal.is_some();
                if rep.status == Verdict::RuntimeError && failed {
                    Ok(())
                } else {
                    Err(format!(
                        "want runtime_error with a non-zero exit, got {}",
                        summary(rep)
                    ))
                }
            },
        },
        Case {
            name: "version",
            source: c.version.clone(),
            stdin: "",
            args: &[],
            check: |_, image_version, rep| {
                let text = rep.stdout_text();
                let printed = text.trim();
                if rep.status == Verdict::Ok
                    && !printed.is_empty()
                    && image_version.contains(printed)
                {
                    Ok(())
                } else {
                    Err(format!(
                        "want a part of the image's version {image_version:?}, got {}",
                        summary(rep)
                    ))
                }
            },
        },
    ];
    if let Some(src) = &c.compile_error {
        out.push(Case {
            name: "compile_error",
            source: src.clone(),
            stdin: "",
            args: &[],
            check: |_, _, rep| {
                let said = rep
                    .compile_output
                    .as_deref()
                    .is_some_and(|o| !o.trim().is_empty());
                if rep.status == Verdict::CompileError && said && rep.stdout.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "want compile_error with the compiler's messages, got {}",
                        summary(rep)
                    ))
                }
            },
        });
    }
    out
}

fn summary(r: &RunReport) -> String {
    format!(
        "status {} exit {:?} signal {:?} stdout {:?} stderr {:?} compile_output {:?} message {:?}",
        r.status,
        r.exit_code,
        r.signal,
        r.stdout_text(),
        r.stderr_text().chars().take(600).collect::<String>(),
        r.compile_output
            .as_deref()
            .map(|o| o.chars().take(600).collect::<String>()),
        r.message
    )
}

fn ok_with(r: &RunReport, stdout: &str) -> Result<(), String> {
    if r.status == Verdict::Ok && r.exit_code == Some(0) && r.stdout_text() == stdout {
        Ok(())
    } else {
        Err(format!(
            "want ok with stdout {stdout:?}, got {}",
            summary(r)
        ))
    }
}

/// Runs one case in a VM of its own; what is wrong with the result, if anything.
async fn run_case(launcher: &Launcher, recipe: &Recipe, case: &Case) -> Result<(), String> {
    let vm = launcher
        .start(&recipe.name)
        .await
        .map_err(|e| format!("no VM: {e}"))?;
    let image_version = vm.info().runtime_version.clone();
    // Generous ceilings: the host is shared and emulated, and what is
    // tested is what the programs do, not how fast.
    let limits = Limits {
        timeout_ms: 60_000,
        ..Limits::default()
    };
    let mut req = request(
        &[(recipe.source_file.as_str(), case.source.as_str())],
        limits,
    );
    req.stdin = case.stdin.as_bytes().to_vec();
    req.args = case.args.iter().map(|a| a.to_string()).collect();
    let mut phases = Vec::new();
    let rep = report::execute(vm, req, |e| {
        if let RunEvent::Phase(p) = e {
            phases.push(p)
        }
    })
    .await;
    (case.check)(recipe, &image_version, &rep)?;
    // The compile step is reported apart, exactly when there is one.
    let compiled = recipe.compile.is_some();
    if compiled != rep.compile_ms.is_some() || compiled != phases.contains(&Phase::Compiling) {
        return Err(format!(
            "compile step reported wrongly: compiled {compiled}, compile_ms {:?}, phases {phases:?}",
            rep.compile_ms
        ));
    }
    Ok(())
}

/// Languages tested at once: the VMs share two cores.
const PARALLEL: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_recipe_passes_its_conformance_programs() {
    let recipes = recipes();
    let names: Vec<&str> = recipes.iter().map(|r| r.name.as_str()).collect();
    let launcher = Arc::new(launcher(&names).await);
    let gate = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let mut tasks = Vec::new();
    for recipe in recipes {
        let (launcher, gate) = (launcher.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _turn = gate.acquire_owned().await.expect("semaphore");
            let mut failures = Vec::new();
            let mut passed = Vec::new();
            for case in cases(&recipe) {
                match run_case(&launcher, &recipe, &case).await {
                    Ok(()) => passed.push(case.name),
                    Err(e) => failures.push(format!("{} {}: {e}", recipe.name, case.name)),
                }
            }
            eprintln!("{}: passed {}", recipe.name, passed.join(", "));
            failures
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.expect("a language's task"));
    }
    assert!(
        failures.is_empty(),
        "{} conformance failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The static agent `scripts/setup` built the installed images with (so the
/// good recipe below is up to date, not rebuilt).
fn agent() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        PathBuf::from,
    );
    let agent = target.join("x86_64-unknown-linux-gnu/agent/ignis-agent");
    assert!(
        agent.is_file(),
        "prerequisite missing: no agent at {} (run scripts/setup)",
        agent.display()
    );
    agent
}

/// A real `ignis images build` over three broken recipes beside a good one:
/// each broken one fails with its name and the reason, the build exits
/// non-zero, and the good language's working image is still there.
#[test]
fn broken_recipes_fail_by_name_and_leave_other_images_alone() {
    common::images(&["python"]);
    let dir = tempfile::tempdir().expect("tmp");
    let python = std::fs::read_to_string(recipes_dir().join("python.toml")).expect("python recipe");
    let renamed = |name: &str| python.replace("name = \"python\"", &format!("name = \"{name}\""));
    let recipes = [
        ("python", python.clone()),
        (
            "nopkg",
            renamed("nopkg").replace("packages = [", "packages = [\"nosuchpkg-ignis\", "),
        ),
        (
            "badcmd",
            renamed("badcmd").replacen("prepare = [", "prepare = [\"exit 7\", ", 1),
        ),
        (
            "norun",
            renamed("norun").replacen("\nrun = [\"/usr/bin/python3\", \"{entry}\"]\n", "\n", 1),
        ),
    ];
    for (name, text) in &recipes {
        assert!(
            text.contains(&format!("name = \"{name}\"")),
            "{name}: {text}"
        );
        std::fs::write(dir.path().join(format!("{name}.toml")), text).expect("write recipe");
    }
    let agent = agent();
    let recipes_arg = dir.path().to_str().expect("utf-8 path");
    let built = common::ignis(
        dir.path(),
        &[
            "images",
            "build",
            "--agent",
            agent.to_str().expect("utf-8"),
            "--recipes",
            recipes_arg,
        ],
    );
    assert_ne!(
        built.code, 0,
        "a broken recipe fails the build: {}",
        built.stderr
    );
    let err = &built.stderr;
    for (name, reason) in [
        ("nopkg", "Unable to locate package nosuchpkg-ignis"),
        ("badcmd", "exit status: 7"),
        ("norun", "missing field `run`"),
    ] {
        let line = err
            .lines()
            .find(|l| l.contains(name) && l.contains("FAILED"))
            .unwrap_or_else(|| panic!("no failure line naming {name}:\n{err}"));
        assert!(
            line.contains(reason) || err.contains(reason),
            "{name} fails with {reason:?}:\n{err}"
        );
    }
    let list = common::ignis(dir.path(), &["images", "list", "--json"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).expect("list JSON");
    let text = list.to_string();
    assert!(
        text.contains("\"python\""),
        "python is still listed: {list}"
    );
    for name in ["nopkg", "badcmd", "norun"] {
        assert!(!text.contains(name), "no image for {name}: {list}");
    }
}
