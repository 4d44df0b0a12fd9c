//! `levee`: the broker (`levee serve`) and the client commands (topic,
//! produce, consume).

mod client;

use levee_server::{broker, config};
use levee_tuning as tune;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

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

#[derive(clap::Args)]
struct CoordinatorArgs {
    #[command(subcommand)]
    cmd: CoordinatorCommand,
}

#[derive(Subcommand)]
enum CoordinatorCommand {
    /// Print one coordinator's role (`Mode: leader` or `Mode: follower`),
    /// term, leader, commit and applied index, and its peers.
    Status {
        /// The coordinator's address (its entry in `coordinators`).
        #[arg(long, env = "LEVEE_COORDINATOR", default_value = "127.0.0.1:9093")]
        coordinator: String,
    },
    /// Print the cluster metadata the coordinator has applied: brokers and
    /// their liveness, topics, partition leaders, epochs and in-sync replicas.
    Metadata {
        /// The coordinator's address.
        #[arg(long, env = "LEVEE_COORDINATOR", default_value = "127.0.0.1:9093")]
        coordinator: String,
    },
}

fn coordinator(args: CoordinatorArgs) -> ExitCode {
    let timeout = std::time::Duration::from_secs(5);
    let out = match args.cmd {
        CoordinatorCommand::Status { coordinator } => {
            levee_coordinator::client::status(&coordinator, timeout).map(|s| s.render())
        }
        CoordinatorCommand::Metadata { coordinator } => {
            levee_coordinator::client::metadata(&coordinator, timeout).map(|m| {
                let mut out = format!("version: {}\n", m.version);
                for b in m.brokers.values() {
                    out += &format!(
                        "broker {}\t{}\tshards {}\t{}\n",
                        b.node_id,
                        b.client_addr,
                        b.shards,
                        if b.alive { "alive" } else { "down" }
                    );
                }
                out
            })
        }
    };
    match out {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file (see levee.example.toml); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory [default: ./levee-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Native-protocol listener ADDR:PORT [default: 127.0.0.1:9192].
    #[arg(long)]
    listen: Option<String>,
    /// Kafka API listener ADDR:PORT, or `none` [default: 127.0.0.1:9092].
    #[arg(long)]
    kafka_listen: Option<String>,
    /// The Kafka address (HOST:PORT) Metadata returns for this broker
    /// [default: the Kafka listen address].
    #[arg(long)]
    kafka_advertise: Option<String>,
    /// Create topics named in Kafka Metadata and Produce requests that do
    /// not exist, with the broker's defaults.
    #[arg(long)]
    auto_create_topics: bool,
    /// Admin HTTP listener ADDR:PORT for /metrics and /health, "" to disable [default: 127.0.0.1:9644].
    #[arg(long)]
    admin_listen: Option<String>,
    /// Shards: "all", a count, or a CPU list like "0,2-3" [default: all].
    #[arg(long)]
    cores: Option<String>,
    /// This node's id [default: 0; 1 or more in a cluster].
    #[arg(long)]
    node_id: Option<u32>,
    /// The cluster's coordinators, `id@host:port,...` [default: none, a single node].
    #[arg(long)]
    coordinators: Option<String>,
    /// Node-to-node (coordinator) listener ADDR:PORT [default: this node's entry in --coordinators].
    #[arg(long)]
    cluster_listen: Option<String>,
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let mut cfg = match &args.config {
        Some(path) => config::ServerConfig::from_file(path).map_err(|e| e.to_string())?,
        None => config::ServerConfig::default(),
    };
    if let Some(v) = args.data_dir {
        cfg.data_dir = v;
    }
    if let Some(v) = args.listen {
        cfg.listen = v;
    }
    if let Some(v) = args.kafka_listen {
        cfg.kafka_listen = v;
    }
    if let Some(v) = args.kafka_advertise {
        cfg.kafka_advertise = v;
    }
    if args.auto_create_topics {
        cfg.auto_create_topics = true;
    }
    if let Some(v) = args.admin_listen {
        cfg.admin_listen = v;
    }
    if let Some(v) = args.cores {
        cfg.cores = v;
    }
    if let Some(v) = args.node_id {
        cfg.node_id = v;
    }
    if let Some(v) = args.coordinators {
        cfg.coordinators = v;
    }
    if let Some(v) = args.cluster_listen {
        cfg.cluster_listen = v;
    }
    broker::run(cfg)
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
        Command::Coordinator(args) => coordinator(args),
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
            match serve(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
