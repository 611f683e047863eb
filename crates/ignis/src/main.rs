//! `ignis`: the command line. Each subcommand lives in its own file under
//! `cmd/`; this file only parses arguments and dispatches.

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "ignis",
    version,
    about = "Run untrusted code in throw-away microVMs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a program in a fresh microVM and print what it printed.
    Run(cmd::run::Args),
    /// Build or list the guest images.
    #[command(subcommand)]
    Images(cmd::images::Command),
    /// Measure boot, run and end-to-end latency against native runs.
    Bench(cmd::bench::Args),
    /// Run the service: HTTP API, job store, queue, warm VM pools, workers.
    Serve(cmd::serve::Args),
    /// Distributed mode: an API process over NATS JetStream and PostgreSQL.
    Api(cmd::api::Args),
    /// Distributed mode: a worker that runs the jobs the API queued.
    Worker(cmd::worker::Args),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(cmd::keys::Command),
    /// Check what this host offers Ignis (KVM, drivers, jail, images) and
    /// whether it can run jobs.
    Doctor(cmd::doctor::Args),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IGNIS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => cmd::run::main(args),
        Command::Images(c) => cmd::images::main(c),
        Command::Bench(args) => cmd::bench::main(args),
        Command::Serve(args) => cmd::serve::main(args),
        Command::Api(args) => cmd::api::main(args),
        Command::Worker(args) => cmd::worker::main(args),
        Command::Keys(c) => cmd::keys::main(c),
        Command::Doctor(a) => cmd::doctor::main(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ignis: {e:#}");
            std::process::ExitCode::from(cmd::EXIT_INTERNAL)
        }
    }
}
