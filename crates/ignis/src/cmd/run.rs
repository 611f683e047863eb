//! `ignis run FILE...`: one program, one fresh microVM, output as it comes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use ignis_protocol::{validate_file_name, File, Limits, RunRequest, Stream, Verdict};
use ignis_vmm::paths::Paths;
use ignis_vmm::report::{self, RunReport};
use ignis_vmm::{Launcher, RunEvent};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Source files; the first is the entry point.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Language (default: from the first file's extension).
    #[arg(long, short)]
    pub language: Option<String>,
    /// Print one JSON object with the whole result instead of the output.
    #[arg(long)]
    pub json: bool,
    /// File given to the program as standard input.
    #[arg(long)]
    pub stdin: Option<PathBuf>,
    /// Argument passed to the program (repeatable).
    #[arg(long = "arg", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// Environment variable for the program, NAME=VALUE (repeatable).
    #[arg(long = "env")]
    pub env: Vec<String>,
    /// Wall-clock limit of the run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Memory limit of the run, in MiB.
    #[arg(long, default_value_t = 256)]
    pub memory: u64,
    /// Cap on stdout and on stderr, each, in KiB.
    #[arg(long, default_value_t = 1024)]
    pub max_output: u64,
    /// Cap on processes and threads of the program.
    #[arg(long, default_value_t = 64)]
    pub max_processes: u32,
    /// Submit to an Ignis server instead of booting a VM here.
    #[arg(long, env = "IGNIS_URL")]
    pub server: Option<String>,
    /// API key for --server.
    #[arg(long, env = "IGNIS_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    #[command(flatten)]
    pub vm: super::VmFlags,
}

/// Exit codes for verdicts that have no exit code of their own.
const EXIT_COMPILE_ERROR: u8 = 65;
const EXIT_TIMEOUT: u8 = 124;
const EXIT_MEMORY: u8 = 137;
const EXIT_OUTPUT: u8 = 141;

pub fn request_from_args(a: &Args) -> anyhow::Result<RunRequest> {
    let mut files = Vec::new();
    for path in &a.files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        validate_file_name(&name).with_context(|| format!("{}", path.display()))?;
        let content = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        files.push(File { name, content });
    }
    ignis_protocol::validate_files(&files)?;
    let stdin = match &a.stdin {
        Some(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        None => Vec::new(),
    };
    let mut env = BTreeMap::new();
    for kv in &a.env {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--env {kv:?}: expected NAME=VALUE");
        };
        env.insert(k.to_owned(), v.to_owned());
    }
    if !(a.timeout.is_finite() && a.timeout > 0.0 && a.timeout <= 3600.0) {
        bail!("--timeout must be between 0 and 3600 seconds");
    }
    if a.max_output == 0 {
        bail!("--max-output must be at least 1 KiB");
    }
    if a.memory < 16 {
        bail!("--memory must be at least 16 MiB");
    }
    Ok(RunRequest {
        files,
        stdin,
        args: a.args.clone(),
        env,
        limits: Limits {
            timeout_ms: ((a.timeout * 1000.0).ceil() as u64).max(1),
            memory_mib: a.memory,
            max_output_kib: a.max_output,
            max_processes: a.max_processes,
            ..Limits::default()
        },
    })
}

pub fn main(a: Args) -> anyhow::Result<ExitCode> {
    let req = request_from_args(&a)?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let report = match &a.server {
        Some(url) => rt.block_on(super::remote::run_remote(
            url,
            a.api_key.as_deref(),
            a.language.as_deref(),
            &req,
            !a.json,
        ))?,
        None => rt.block_on(run_local(&a, req))?,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        describe(&report);
    }
    Ok(ExitCode::from(exit_code(&report)))
}

async fn run_local(a: &Args, req: RunRequest) -> anyhow::Result<RunReport> {
    let launcher = Launcher::with_options(Paths::from_env(), a.vm.options()).await?;
    let language = match &a.language {
        Some(l) => launcher.catalog.language(l)?.name().to_owned(),
        None => launcher
            .catalog
            .language_for_file(&req.files[0].name)?
            .name()
            .to_owned(),
    };
    let vm = match launcher.start(&language).await {
        Ok(vm) => vm,
        Err(e) => return Ok(RunReport::internal_error(e.to_string(), None)),
    };
    let stream = !a.json;
    Ok(report::execute(vm, req, |ev| {
        if let (true, RunEvent::Output(s, data)) = (stream, ev) {
            // Output goes out as the program wrote it; a closed pipe on our
            // side is the reader's business, not an error of the run.
            let _ = match s {
                Stream::Stdout => std::io::stdout()
                    .write_all(&data)
                    .and_then(|_| std::io::stdout().flush()),
                Stream::Stderr => std::io::stderr().write_all(&data),
            };
        }
    })
    .await)
}

/// Says on stderr what the output alone does not show.
fn describe(r: &RunReport) {
    match r.status {
        Verdict::Ok | Verdict::RuntimeError => {}
        Verdict::CompileError => {
            eprint!("{}", r.compile_output.as_deref().unwrap_or(""));
            eprintln!("ignis: compilation failed");
        }
        Verdict::Timeout => eprintln!("ignis: time limit exceeded ({} ms)", r.duration_ms),
        Verdict::MemoryLimit => eprintln!("ignis: memory limit exceeded"),
        Verdict::OutputLimit => eprintln!("ignis: output limit exceeded; output was cut"),
        Verdict::InternalError => eprintln!(
            "ignis: internal error: {}",
            r.message.as_deref().unwrap_or("unknown")
        ),
    }
}

pub fn exit_code(r: &RunReport) -> u8 {
    match r.status {
        Verdict::Ok | Verdict::RuntimeError => match (r.exit_code, r.signal) {
            (Some(c), _) => c.clamp(0, 255) as u8,
            (None, Some(sig)) => (128 + sig).clamp(0, 255) as u8,
            (None, None) => 1,
        },
        Verdict::CompileError => EXIT_COMPILE_ERROR,
        Verdict::Timeout => EXIT_TIMEOUT,
        Verdict::MemoryLimit => EXIT_MEMORY,
        Verdict::OutputLimit => EXIT_OUTPUT,
        Verdict::InternalError => super::EXIT_INTERNAL,
    }
}
