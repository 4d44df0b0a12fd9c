//! `levee serve`: the broker, configured from a file and flags.

use std::path::PathBuf;

use levee_server::{broker, config};

#[derive(clap::Args)]
pub(crate) struct ServeArgs {
    /// TOML configuration file (see levee.example.toml); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory [default: ./levee-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Native-protocol listener ADDR:PORT [default: 127.0.0.1:9192].
    #[arg(long)]
    listen: Option<String>,
    /// The native address (HOST:PORT) other nodes and clients are told to
    /// reach this node at, on a cluster [default: the listen address].
    #[arg(long)]
    advertise: Option<String>,
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

pub(crate) fn serve(args: ServeArgs) -> Result<(), String> {
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
    if let Some(v) = args.advertise {
        cfg.advertise = v;
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
