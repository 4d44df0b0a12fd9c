//! `levee`: the one binary, on top of every crate: the broker (`levee
//! serve`), the client commands (topic, produce, consume, group, cluster),
//! the load generator (`levee bench`), host checks (`levee tune`) and the
//! coordinator commands. It owns the command line (flags, what each command
//! prints, exit codes); the work is done by the crates below it (broker,
//! client library, load generator, tuning), whose logic must not move up
//! here, and no crate may depend on it.

mod client;
mod coordinator;
mod serve;

use levee_server::config;
use levee_tuning as tune;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

use coordinator::CoordinatorArgs;
use serve::ServeArgs;

#[derive(Parser)]
#[command(
    name = "levee",
    version,
    about = "Levee: a thread-per-core message-streaming broker"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker until SIGINT/SIGTERM.
    Serve(ServeArgs),
    /// Host checks and tuning for a dedicated Levee host.
    Tune(tune::TuneArgs),
    /// Load generator: throughput, latency and burst absorption against a running broker.
    Bench(Box<levee_bench::BenchArgs>),
    /// The cluster's coordinator quorum.
    Coordinator(CoordinatorArgs),
    #[command(flatten)]
    Client(client::ClientCommand),
}

/// The broker settings `levee tune check --config FILE` reads.
fn tune_settings(args: &tune::TuneArgs) -> Result<tune::BrokerSettings, String> {
    let tune::TuneCommand::Check(c) = &args.cmd;
    let cfg = match &c.config {
        Some(path) => config::ServerConfig::from_file(path).map_err(|e| e.to_string())?,
        None => config::ServerConfig::default(),
    };
    Ok(tune::BrokerSettings {
        data_dir: cfg.data_dir,
        cores: cfg.cores,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Command::Tune(args) => {
            let settings = tune_settings(&args);
            tune::run(args, settings)
        }
        Command::Coordinator(args) => coordinator::coordinator(args),
        Command::Bench(args) => levee_bench::run(*args),
        Command::Client(cmd) => client::run(cmd),
        Command::Serve(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .init();
            match serve::serve(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
