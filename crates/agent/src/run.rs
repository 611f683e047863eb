//! Compile-and-run of one request, turned into a [`RunOutcome`].

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ignis_protocol::{
    validate_args_env, validate_files, GuestMessage, Phase, Recipe, RunOutcome, RunRequest, Stream,
    Verdict,
};

use crate::sandbox::{self, Exit, Spec};
use crate::{sys, RUNNER_GID, RUNNER_UID};

/// Compiler messages kept, at most.
const COMPILE_OUTPUT_MAX: usize = 64 * 1024;
const COMPILE_MAX_PIDS: u32 = 256;
/// Where jobs live; on the tmpfs overlay like every other write.
const JOBS_DIR: &str = "/home/runner";

pub struct Runner {
    recipe: Recipe,
    seq: u64,
}

type Send<'a> = dyn FnMut(GuestMessage) -> io::Result<()> + 'a;

impl Runner {
    pub fn new(recipe: Recipe) -> Runner {
        Runner { recipe, seq: 0 }
    }

    pub fn run(&mut self, req: RunRequest, send: &mut Send<'_>) -> RunOutcome {
        self.seq += 1;
        let job = PathBuf::from(format!("{JOBS_DIR}/job-{}", self.seq));
        let outcome = self
            .run_in(&job, &req, send)
            .unwrap_or_else(|e| internal(format!("{e}")));
        let _ = std::fs::remove_dir_all(&job);
        sys::reap_zombies();
        outcome
    }

    fn run_in(&self, job: &Path, req: &RunRequest, send: &mut Send<'_>) -> io::Result<RunOutcome> {
        // The host checked these already; the agent writes the names to
        // disk and puts them and the arguments on command lines, so it
        // checks again rather than trust it.
        if let Err(e) = validate_files(&req.files) {
            return Ok(internal(format!("refused request: {e}")));
        }
        if let Err(e) = validate_args_env(&req.args, &req.env) {
            return Ok(internal(format!("refused request: {e}")));
        }
        let src = job.join("src");
        let bin_dir = job.join("bin");
        for d in [job, &src, &bin_dir] {
            std::fs::create_dir_all(d)?;
            sys::chown(d, RUNNER_UID, RUNNER_GID)?;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
        }
        for f in &req.files {
            let p = src.join(&f.name);
            std::fs::write(&p, &f.content)?;
            sys::chown(&p, RUNNER_UID, RUNNER_GID)?;
        }
        // stdin comes from a root-owned file opened before privileges drop,
        // so the program can read it but not find or change it.
        let stdin_path = job.join("stdin");
        std::fs::write(&stdin_path, &req.stdin)?;
        std::fs::set_permissions(&stdin_path, std::fs::Permissions::from_mode(0o600))?;
        let names: Vec<String> = req.files.iter().map(|f| f.name.clone()).collect();
        let binary = bin_dir.join("program").to_string_lossy().into_owned();
        let limits = req.limits;
        let mut compile_output = None;
        let mut compile_ms = None;

        if let Some(step) = &self.recipe.compile {
            send(GuestMessage::Phase {
                phase: Phase::Compiling,
            })?;
            let mut captured = Vec::new();
            let argv = Recipe::expand(&step.command, &names, &binary);
            let exit = sandbox::run(
                Spec {
                    argv: &argv,
                    env: &step.env,
                    cwd: &src,
                    stdin: None,
                    timeout: Duration::from_millis(limits.compile_timeout_ms),
                    memory_bytes: mib(step.memory_mib.max(limits.memory_mib)),
                    max_pids: COMPILE_MAX_PIDS.max(limits.max_processes),
                    output_cap: COMPILE_OUTPUT_MAX,
                    cgroup_name: &format!("compile-{}", self.seq),
                },
                &mut |_, data| {
                    let room = COMPILE_OUTPUT_MAX.saturating_sub(captured.len());
                    captured.extend_from_slice(&data[..data.len().min(room)]);
                    Ok(())
                },
            )?;
            compile_ms = Some(exit.duration.as_millis() as u64);
            let mut text = String::from_utf8_lossy(&captured).into_owned();
            if !exit.success() {
                if exit.timed_out {
                    text.push_str(&format!(
                        "\nignis: compilation stopped after {} ms",
                        limits.compile_timeout_ms
                    ));
                } else if exit.oom_killed {
                    text.push_str("\nignis: the compiler ran out of memory");
                }
                return Ok(RunOutcome {
                    status: Verdict::CompileError,
                    exit_code: exit.code,
                    signal: exit.signal,
                    compile_output: Some(text),
                    compile_ms,
                    ..measured(&Exit::default())
                });
            }
            compile_output = (!text.is_empty()).then_some(text);
        }

        send(GuestMessage::Phase {
            phase: Phase::Running,
        })?;
        let argv: Vec<String> = Recipe::expand(&self.recipe.run, &names, &binary)
            .into_iter()
            .chain(req.args.iter().cloned())
            .collect();
        let exit = sandbox::run(
            Spec {
                argv: &argv,
                env: &req.env,
                cwd: &src,
                stdin: Some(File::open(&stdin_path)?),
                timeout: Duration::from_millis(limits.timeout_ms),
                memory_bytes: mib(limits.memory_mib),
                max_pids: limits.max_processes,
                output_cap: usize::try_from(limits.max_output_kib.saturating_mul(1024))
                    .unwrap_or(usize::MAX),
                cgroup_name: &format!("run-{}", self.seq),
            },
            &mut |stream, data| {
                send(GuestMessage::Output {
                    stream,
                    data: data.to_vec(),
                })
            },
        )?;
        Ok(RunOutcome {
            compile_output,
            compile_ms,
            ..measured(&exit)
        })
    }
}

impl Runner {
    /// Runs the recipe's warm-up commands as programs run (the runner user,
    /// a cgroup of their own, under limits), output discarded, and says how
    /// long that took. Nothing is left behind: no files are written (the
    /// image is precompiled and read-only) and the cgroup is removed.
    pub fn warm(&mut self) -> u64 {
        let started = std::time::Instant::now();
        let env = BTreeMap::from([
            ("PATH".to_owned(), "/usr/bin:/bin".to_owned()),
            ("HOME".to_owned(), "/tmp".to_owned()),
        ]);
        for argv in &self.recipe.warmup {
            self.seq += 1;
            let r = sandbox::run(
                Spec {
                    argv,
                    env: &env,
                    cwd: Path::new("/"),
                    stdin: None,
                    timeout: Duration::from_secs(30),
                    memory_bytes: mib(256),
                    max_pids: 64,
                    output_cap: 64 * 1024,
                    cgroup_name: &format!("warm-{}", self.seq),
                },
                &mut |_, _| Ok(()),
            );
            if let Err(e) = r {
                crate::log(&format!("warm-up {argv:?} failed: {e}"));
            }
        }
        sys::reap_zombies();
        started.elapsed().as_millis() as u64
    }
}

fn mib(n: u64) -> u64 {
    n.saturating_mul(1024 * 1024)
}

fn verdict(exit: &Exit) -> Verdict {
    if exit.output_exceeded {
        Verdict::OutputLimit
    } else if exit.timed_out {
        Verdict::Timeout
    } else if exit.oom_killed {
        Verdict::MemoryLimit
    } else if exit.code == Some(0) {
        Verdict::Ok
    } else {
        Verdict::RuntimeError
    }
}

fn measured(exit: &Exit) -> RunOutcome {
    RunOutcome {
        status: verdict(exit),
        exit_code: exit.code,
        signal: exit.signal,
        compile_output: None,
        compile_ms: None,
        duration_ms: exit.duration.as_millis() as u64,
        cpu_ms: exit.cpu_ms,
        memory_kib: exit.peak_kib,
        stdout_truncated: exit.truncated[Stream::Stdout as usize],
        stderr_truncated: exit.truncated[Stream::Stderr as usize],
        message: None,
    }
}

fn internal(message: String) -> RunOutcome {
    RunOutcome {
        status: Verdict::InternalError,
        message: Some(message),
        ..measured(&Exit::default())
    }
}

/// Runs the recipe's warm-up commands and returns its version string.
/// Failures are logged, not fatal: a run will report them properly.
pub fn warm_up(recipe: &Recipe) -> String {
    for argv in &recipe.warmup {
        if let Err(e) = quiet(argv) {
            crate::log(&format!("warm-up {argv:?} failed: {e}"));
        }
    }
    match quiet(&recipe.version) {
        Ok(out) => ignis_protocol::version_line(&out),
        Err(e) => {
            crate::log(&format!("version command failed: {e}"));
            String::from("unknown")
        }
    }
}

fn quiet(argv: &[String]) -> io::Result<String> {
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let out = std::process::Command::new(prog)
        .args(args)
        .env_clear()
        .envs(BTreeMap::from([
            ("PATH", "/usr/bin:/bin"),
            ("HOME", "/tmp"),
        ]))
        .stdin(std::process::Stdio::null())
        .output()?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok(text)
}
