//! The `levee bench` command line: [`BenchArgs`] and its value parsers.

use std::path::PathBuf;

use levee_client::{Acks, Compression, StartPosition};

use crate::rate::{self, RateShape};

/// Which wire protocol the bench speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    Native,
    Kafka,
}

/// Message keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// No key: partitions round-robin.
    None,
    /// A random 16-hex-digit key per message.
    Random,
    /// Keys drawn at random from this many distinct ones.
    Distinct(u64),
}

fn parse_keys(s: &str) -> Result<Keys, String> {
    match s {
        "none" => Ok(Keys::None),
        "random" => Ok(Keys::Random),
        _ => {
            let n = s.strip_suffix("-distinct").unwrap_or(s);
            match n.parse::<u64>() {
                Ok(n) if n > 0 => Ok(Keys::Distinct(n)),
                _ => Err(format!(
                    "--keys wants none, random or N-distinct (e.g. 1000-distinct), not `{s}`"
                )),
            }
        }
    }
}

fn parse_acks(s: &str) -> Result<Acks, String> {
    s.parse()
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("expected a number of seconds, not `{s}`")),
    }
}

fn parse_from(s: &str) -> Result<StartPosition, String> {
    match s {
        "earliest" => Ok(StartPosition::Earliest),
        "latest" => Ok(StartPosition::Latest),
        _ => Err(format!("--from wants earliest or latest, not `{s}`")),
    }
}

/// Load generator options.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "\
Rates are in MB/s of payload (1 MB = 10^6 bytes). The run produces for --warmup + --duration \
seconds (or until --messages are sent), then consumers drain what was acknowledged. \
Figures from the warmup are excluded. Exit codes: 0 OK, 1 verification failures, 2 usage or \
connection errors.

Examples:
  levee bench --producers 2 --consumers 2 --partitions 4 --duration 30 --warmup 5
  levee bench --burst 20:200:5:30 --consume-rate 40 --duration 120 --report burst.html
  levee bench --producers 0 --consumers 4 --topic existing   # catch-up read from disk
  levee bench --producers 2 --consumers 3 --group bench-g --partitions 6 --rate 50   # consumer group, lag")]
pub struct BenchArgs {
    /// The protocol to drive the broker with: `native` (Levee's), or `kafka`
    /// (any Kafka-compatible broker, through the bench's own Kafka client:
    /// producers send the bench's own batches, as with `--direct-batches`;
    /// `--group` members use the classic group protocol with the range
    /// assignor). The default `--bootstrap` becomes 127.0.0.1:9092.
    #[arg(long, value_enum, default_value_t = Protocol::Native)]
    pub protocol: Protocol,
    /// Broker addresses HOST:PORT[,...].
    #[arg(
        long,
        env = "LEVEE_BOOTSTRAP",
        default_value = "127.0.0.1:9192",
        value_delimiter = ','
    )]
    pub bootstrap: Vec<String>,
    /// Broker admin HOST:PORT, for its resident memory ("" disables).
    #[arg(long, default_value = "127.0.0.1:9644")]
    pub admin: String,
    /// Read the broker's memory from /proc/PID/statm instead of the admin endpoint.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Producer tasks, each with its own connection (0: consume only).
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Consumer tasks, each with its own connection and a disjoint set of partitions, or with --group a member of the group (0: produce only).
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Topic (created if missing).
    #[arg(long, default_value = "levee-bench")]
    pub topic: String,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// fsync policy of the topic when it is created: always, never, interval:<ms> [default: the broker's].
    #[arg(long)]
    pub topic_fsync: Option<String>,
    /// Payload bytes per message (at least 40: the verification header).
    #[arg(long, default_value_t = 1024)]
    pub message_size: usize,
    /// Producer batch size in bytes.
    #[arg(long, default_value_t = 65536)]
    pub batch_size: usize,
    /// Producer linger in ms.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Acknowledgements: 0, 1 or all.
    #[arg(long, default_value = "1", value_parser = parse_acks)]
    pub acks: Acks,
    /// Message keys: none, random or N-distinct.
    #[arg(long, default_value = "none", value_parser = parse_keys)]
    pub keys: Keys,
    /// Batch compression: none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    pub compression: Compression,
    /// Seconds to produce after the warmup [default: 30, unless --messages is given].
    #[arg(long, value_parser = parse_secs)]
    pub duration: Option<f64>,
    /// Messages to produce in total (consume-only: to consume).
    #[arg(long)]
    pub messages: Option<u64>,
    /// Seconds at the start whose figures are excluded.
    #[arg(long, default_value = "0", value_parser = parse_secs)]
    pub warmup: f64,
    /// Total produce rate in MB/s across producers [default: unlimited].
    #[arg(long, value_parser = rate::parse_mbps, conflicts_with = "burst")]
    pub rate: Option<f64>,
    /// Burst profile BASE_MBPS:PEAK_MBPS:PEAK_SECS:PERIOD_SECS: each period runs at BASE, then PEAK for its last PEAK_SECS.
    #[arg(long, value_parser = RateShape::parse_burst)]
    pub burst: Option<RateShape>,
    /// Total consume rate in MB/s across consumers (a slow downstream) [default: unlimited].
    #[arg(long, value_parser = rate::parse_mbps)]
    pub consume_rate: Option<f64>,
    /// Where consumers start: earliest or latest [default: latest with producers, earliest without].
    #[arg(long, value_parser = parse_from)]
    pub from: Option<StartPosition>,
    /// Consumers join this consumer group: the broker assigns them the topic's partitions and they commit what they have verified (auto-commit off); the report adds the group's lag and rebalances. --from is the group's reset policy for partitions without a committed offset.
    #[arg(long)]
    pub group: Option<String>,
    /// With --group: commit every this many ms instead of after each polled batch.
    #[arg(long, requires = "group")]
    pub commit_interval_ms: Option<u64>,
    /// With --group: every this many seconds while producing, one consumer in turn leaves the group without committing and joins again, forcing two rebalances; its uncommitted records are redelivered to their next owner (counted, not failures).
    #[arg(long, requires = "group", value_parser = parse_secs)]
    pub churn_interval: Option<f64>,
    /// Seconds consumers may take after producers stop to read everything acknowledged.
    #[arg(long, default_value = "60", value_parser = parse_secs)]
    pub drain_timeout: f64,
    /// Write every figure and the per-second time series as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a self-contained HTML report with charts here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Tokio worker threads of the load generator [default: the number of CPUs].
    #[arg(long)]
    pub client_threads: Option<usize>,
    /// Produce requests in flight per producer.
    #[arg(long, default_value_t = 5)]
    pub max_in_flight: usize,
    /// Bytes each producer buffers unacknowledged before send() waits.
    #[arg(long, default_value_t = 32 << 20)]
    pub buffer_bytes: usize,
    /// Largest fetch per partition in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub fetch_partition_bytes: u32,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
    /// Producers build whole record batches themselves and pipeline them
    /// (`--max-in-flight` per producer) instead of going through the client's
    /// per-message Producer API: far less client CPU per message, to measure
    /// the broker on a host it shares with the load generator. Needs
    /// `--keys none`; every message is still numbered, checksummed, verified
    /// and timed (with its batch's acknowledgement).
    #[arg(long)]
    pub direct_batches: bool,
    /// Turn the per-message producer's idempotence off (it is on with
    /// `--acks all` by default), to measure what it costs.
    #[arg(long)]
    pub no_idempotence: bool,
}
