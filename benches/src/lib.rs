//! `levee bench`: a load generator for a running Levee broker.
//!
//! Producers and consumers are tokio tasks, each with its own client
//! connection. Every message carries (run id, producer, partition,
//! sequence number, send time) and a CRC32C of the rest (see [`payload`]);
//! consumers verify every one of them. Acknowledgement and end-to-end
//! latencies go into HdrHistograms (every message, no sampling). A progress
//! line is printed each second; at the end a summary, and optionally JSON
//! (`--json`) and a self-contained HTML page with charts (`--report`).
//!
//! Consumers either split the partitions between them (the default) or, with
//! `--group G`, join consumer group G: the broker assigns the partitions,
//! each consumer commits what it has verified, and the group's lag (end
//! offsets minus committed offsets) is sampled every second. One verifier,
//! shared by the group's consumers, follows partitions across rebalances:
//! a message read again after its partition changed hands is counted as
//! redelivered (the group delivers at least once), a message the same
//! consumer reads twice in one generation as a duplicate.
//!
//! Exit codes: 0 success, 1 verification failures (lost, duplicated or
//! corrupt messages, failed deliveries), 2 usage or connection errors.

pub mod memory;
pub mod payload;
pub mod rate;
pub mod report;
pub mod stats;
pub mod verify;

pub mod kafka;
mod kafka_tasks;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::{FuturesUnordered, StreamExt};
use levee_client::{
    partition_for_key, Acks, Assignment, Client, ClientConfig, ClientError, Compression,
    ConsumedRecord, Consumer, ConsumerConfig, DeliveryFuture, DeliveryReport, ErrorCode,
    GroupConsumer, GroupConsumerConfig, OffsetCommit, OffsetReset, OffsetSpec, Producer,
    ProducerConfig, StartPosition, TopicSettings,
};
use levee_engine::Record;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use memory::MemorySource;
use payload::{FillerPool, Header, SplitMix};
use rate::{Pacer, RateShape};
use report::{BacklogSummary, GroupReport, MemorySummary, Report, Throughput, Verification};
use stats::{fmt_bytes, quantile_ms, summarize, Phase, Point, TaskHists};
use verify::{Checked, Counts, Owner, Sent, Stream, Verifier};

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

fn parse_compression(s: &str) -> Result<Compression, String> {
    match s {
        "none" => Ok(Compression::None),
        "lz4" => Ok(Compression::Lz4),
        "zstd" => Ok(Compression::Zstd),
        _ => Err(format!("--compression wants none, lz4 or zstd, not `{s}`")),
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
    /// (any Kafka-compatible broker; needs `--direct-batches` for producers;
    /// no `--group`). The default `--bootstrap` becomes 127.0.0.1:9092.
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
    /// Batch compression: none, lz4 or zstd.
    #[arg(long, default_value = "none", value_parser = parse_compression)]
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
}

/// What made the run stop early or fail to start.
#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Client(String),
}

fn usage(s: impl Into<String>) -> BenchError {
    BenchError::Usage(s.into())
}

fn client_err(what: &str, e: &ClientError) -> BenchError {
    BenchError::Client(format!("{what}: {e}"))
}

/// Validated settings.
#[derive(Debug, Clone)]
struct Config {
    args: BenchArgs,
    duration: Option<f64>,
    produce_shape: RateShape,
    consume_shape: RateShape,
    from: StartPosition,
    threads: usize,
    memory: Option<MemorySource>,
}

fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Config {
    fn new(mut args: BenchArgs) -> Result<Config, BenchError> {
        if args.protocol == Protocol::Kafka && args.bootstrap == ["127.0.0.1:9192"] {
            // The native default; Kafka brokers listen on 9092.
            args.bootstrap = vec!["127.0.0.1:9092".into()];
        }
        if args.producers == 0 && args.consumers == 0 {
            return Err(usage(
                "--producers and --consumers are both 0: nothing to do",
            ));
        }
        if args.bootstrap.iter().all(|b| b.trim().is_empty()) {
            return Err(usage("--bootstrap is empty"));
        }
        if args.partitions == 0 {
            return Err(usage("--partitions must be at least 1"));
        }
        if args.direct_batches && !matches!(args.keys, Keys::None) {
            return Err(usage("--direct-batches needs --keys none"));
        }
        if args.protocol == Protocol::Kafka {
            if args.producers > 0 && !args.direct_batches {
                return Err(usage(
                    "--protocol kafka produces with --direct-batches (the bench builds the batches; no Kafka client library is involved)",
                ));
            }
            if args.group.is_some() {
                return Err(usage(
                    "--protocol kafka does not run consumer groups (no --group)",
                ));
            }
        }
        if args.message_size < payload::HEADER_LEN {
            return Err(usage(format!(
                "--message-size must be at least {} bytes (the verification header)",
                payload::HEADER_LEN
            )));
        }
        if args.message_size > 64 << 20 {
            return Err(usage("--message-size must be at most 64 MiB"));
        }
        if args.batch_size == 0 {
            return Err(usage("--batch-size must be at least 1"));
        }
        if args.messages == Some(0) {
            return Err(usage("--messages must be at least 1"));
        }
        if args.duration == Some(0.0) {
            return Err(usage("--duration must be above 0"));
        }
        if args.client_threads == Some(0) {
            return Err(usage("--client-threads must be at least 1"));
        }
        if args.topic.is_empty() {
            return Err(usage("--topic is empty"));
        }
        if let Some(g) = &args.group {
            if g.trim().is_empty() {
                return Err(usage("--group is empty"));
            }
            if args.consumers == 0 {
                return Err(usage("--group needs consumers (--consumers 1 or more)"));
            }
        }
        if args.churn_interval.is_some_and(|s| s < 0.1) {
            return Err(usage("--churn-interval must be at least 0.1 s"));
        }
        if args.commit_interval_ms == Some(0) {
            return Err(usage(
                "--commit-interval-ms must be at least 1 (leave it out to commit after each batch)",
            ));
        }
        if args.producers == 0 && (args.rate.is_some() || args.burst.is_some()) {
            return Err(usage("--rate/--burst need producers"));
        }
        if let Some(f) = &args.topic_fsync {
            let ok = f == "always"
                || f == "never"
                || f.strip_prefix("interval:")
                    .is_some_and(|ms| ms.parse::<u64>().is_ok());
            if !ok {
                return Err(usage(format!(
                    "--topic-fsync wants always, never or interval:<ms>, not `{f}`"
                )));
            }
        }
        let duration = match (args.duration, args.messages, args.producers) {
            (Some(d), _, _) => Some(d),
            (None, None, p) if p > 0 => Some(30.0),
            _ => None,
        };
        let produce_shape = match (args.rate, args.burst) {
            (Some(r), _) => RateShape::Fixed(r),
            (None, Some(b)) => b,
            (None, None) => RateShape::Unlimited,
        };
        let consume_shape = args
            .consume_rate
            .map_or(RateShape::Unlimited, RateShape::Fixed);
        let from = args.from.unwrap_or(if args.producers > 0 {
            StartPosition::Latest
        } else {
            StartPosition::Earliest
        });
        let memory = match (args.broker_pid, args.admin.trim()) {
            (Some(pid), _) => Some(MemorySource::Pid(pid)),
            (None, "") => None,
            (None, a) => Some(MemorySource::Admin(a.to_string())),
        };
        Ok(Config {
            threads: args.client_threads.unwrap_or_else(host_cpus),
            duration,
            produce_shape,
            consume_shape,
            from,
            memory,
            args,
        })
    }

    /// When group consumers commit, in words.
    fn commit_policy(&self) -> String {
        match self.args.commit_interval_ms {
            Some(ms) => format!("every {ms} ms"),
            None => "after each batch".to_string(),
        }
    }

    /// The group's reset policy: `--from`.
    fn reset(&self) -> OffsetReset {
        match self.from {
            StartPosition::Earliest => OffsetReset::Earliest,
            _ => OffsetReset::Latest,
        }
    }

    fn params(&self) -> serde_json::Value {
        let a = &self.args;
        let rate = match self.produce_shape {
            RateShape::Unlimited => "unlimited".to_string(),
            RateShape::Fixed(r) => format!("{} MB/s", r / rate::MB),
            RateShape::Burst {
                base,
                peak,
                peak_secs,
                period_secs,
            } => format!(
                "burst: {} MB/s, {} MB/s for the last {} s of every {} s",
                base / rate::MB,
                peak / rate::MB,
                peak_secs,
                period_secs
            ),
        };
        serde_json::json!({
            "protocol": match a.protocol { Protocol::Native => "native", Protocol::Kafka => "kafka" },
            "bootstrap": a.bootstrap.join(","),
            "memory_source": self.memory.as_ref().map(MemorySource::describe),
            "producers": a.producers,
            "consumers": a.consumers,
            "topic": a.topic,
            "partitions_requested": a.partitions,
            "topic_fsync": a.topic_fsync,
            "message_size": a.message_size,
            "batch_size": a.batch_size,
            "linger_ms": a.linger_ms,
            "acks": match a.acks { Acks::None => "0", Acks::Leader => "1", Acks::All => "all" },
            "keys": match a.keys {
                Keys::None => "none".to_string(),
                Keys::Random => "random".to_string(),
                Keys::Distinct(n) => format!("{n}-distinct"),
            },
            "compression": format!("{:?}", a.compression).to_lowercase(),
            "duration_s": self.duration,
            "messages": a.messages,
            "warmup_s": a.warmup,
            "produce_rate": rate,
            "consume_rate": self.args.consume_rate.map_or("unlimited".to_string(), |r| format!("{} MB/s", r / rate::MB)),
            "from": match self.from { StartPosition::Earliest => "earliest", _ => "latest" },
            "drain_timeout_s": a.drain_timeout,
            "group": a.group,
            "commit": a.group.as_ref().map(|_| self.commit_policy()),
            "churn_interval_s": a.churn_interval,
            "max_in_flight": a.max_in_flight,
            "buffer_bytes": a.buffer_bytes,
            "fetch_partition_bytes": a.fetch_partition_bytes,
        })
    }
}

/// Runs `levee bench` and returns its exit code.
pub fn run(args: BenchArgs) -> ExitCode {
    let cfg = match Config::new(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.threads)
        .thread_name("levee-bench")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = rt.block_on(bench(cfg.clone()));
    // Producers dropped at the end may still hold background tasks.
    rt.shutdown_timeout(Duration::from_secs(1));
    let (report, fatal) = match outcome {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    println!("{}", report.text().trim_end());
    let mut write_error = None;
    if let Some(path) = &cfg.args.json {
        let res = report
            .json()
            .map_err(|e| e.to_string())
            .and_then(|s| std::fs::write(path, s).map_err(|e| e.to_string()));
        match res {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(e) => write_error = Some(format!("cannot write {}: {e}", path.display())),
        }
    }
    if let Some(path) = &cfg.args.report {
        match std::fs::write(path, report.html()) {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(e) => write_error = Some(format!("cannot write {}: {e}", path.display())),
        }
    }
    if let Some(e) = fatal {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    if let Some(e) = write_error {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    if !report.verification.failures.is_empty() {
        eprintln!(
            "error: verification failed: {}",
            report.verification.failures.join("; ")
        );
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// State shared by every task.
struct Shared {
    start: Instant,
    warmup_end: Instant,
    /// Unix time of `start`, ns; payload timestamps are this plus elapsed
    /// monotonic time, so they never go backwards within the run.
    base_ns: u64,
    warmup_end_ns: u64,
    run_id: u64,
    stop_producing: AtomicBool,
    stop_consuming: AtomicBool,
    draining: AtomicBool,
    acked_msgs: AtomicU64,
    acked_bytes: AtomicU64,
    failed_msgs: AtomicU64,
    consumed_msgs: AtomicU64,
    consumed_bytes: AtomicU64,
    own_msgs: AtomicU64,
    own_bytes: AtomicU64,
    errors: Mutex<Vec<String>>,
    /// Group mode: every partition's committed offset reached its target.
    group_done: AtomicBool,
    /// Group generations the consumers have fetched in.
    generations: Mutex<BTreeSet<i32>>,
    /// Group mode: commits of polled records that succeeded.
    commits: AtomicU64,
    /// Group mode: commits refused (rebalance in progress or fenced).
    commits_refused: AtomicU64,
    /// `--churn-interval`: the turn number; consumer `turn % consumers` leaves and rejoins.
    churn_turn: AtomicU64,
    /// Forced leaves done.
    churns: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.base_ns + self.start.elapsed().as_nanos() as u64
    }
    fn secs(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
    /// Keeps the first occurrence of each kind of error (up to 20).
    fn note(&self, e: String) {
        let mut v = lock(&self.errors);
        let kind: String = e.chars().take(60).collect();
        if v.len() < 20 && !v.iter().any(|x| x.starts_with(&kind)) {
            v.push(e);
        }
    }
    fn saw_generation(&self, generation: i32) {
        lock(&self.generations).insert(generation);
    }
    fn newest_generation(&self) -> Option<i32> {
        lock(&self.generations).last().copied()
    }
    fn snapshot(&self) -> Snap {
        Snap {
            at: self.secs(),
            acked_msgs: self.acked_msgs.load(Relaxed),
            acked_bytes: self.acked_bytes.load(Relaxed),
            consumed_msgs: self.consumed_msgs.load(Relaxed),
            consumed_bytes: self.consumed_bytes.load(Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Snap {
    at: f64,
    acked_msgs: u64,
    acked_bytes: u64,
    consumed_msgs: u64,
    consumed_bytes: u64,
}

fn client_config(cfg: &Config, name: String) -> ClientConfig {
    ClientConfig {
        client_id: name,
        ..ClientConfig::new(
            cfg.args
                .bootstrap
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
        )
    }
}

/// Describes the topic, creating it if missing; returns its partition count.
async fn ensure_topic(cfg: &Config, client: &Client) -> Result<u32, BenchError> {
    let topic = &cfg.args.topic;
    match client.describe_topic(topic).await {
        Ok(info) => {
            let n = info.partition_count();
            if n != cfg.args.partitions {
                eprintln!(
                    "note: topic `{topic}` exists with {n} partition(s); using them (--partitions {} applies only when creating it)",
                    cfg.args.partitions
                );
            }
            if n == 0 {
                return Err(BenchError::Client(format!(
                    "topic `{topic}` has no partitions"
                )));
            }
            return Ok(n);
        }
        Err(e) if e.code() == Some(ErrorCode::UnknownTopicOrPartition) => {}
        Err(e) => return Err(client_err(&format!("describe topic `{topic}`"), &e)),
    }
    if cfg.args.producers == 0 {
        return Err(BenchError::Usage(format!(
            "topic `{topic}` does not exist and there are no producers to fill it"
        )));
    }
    let settings = TopicSettings {
        partitions: cfg.args.partitions,
        fsync: cfg.args.topic_fsync.clone(),
        ..TopicSettings::default()
    };
    match client.create_topic(topic, &settings).await {
        Ok(()) => eprintln!(
            "created topic `{topic}` with {} partition(s), fsync {}",
            cfg.args.partitions,
            cfg.args
                .topic_fsync
                .as_deref()
                .unwrap_or("(broker default)")
        ),
        Err(e) if e.code() == Some(ErrorCode::TopicAlreadyExists) => {}
        Err(e) => return Err(client_err(&format!("create topic `{topic}`"), &e)),
    }
    // The broker may take a moment to open the partitions.
    let mut last = None;
    for _ in 0..50 {
        match client.describe_topic(topic).await {
            Ok(info) if info.partition_count() > 0 => return Ok(info.partition_count()),
            Ok(_) => {}
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(match last {
        Some(e) => client_err(&format!("describe topic `{topic}` after creating it"), &e),
        None => BenchError::Client(format!("topic `{topic}` has no partitions after creation")),
    })
}

/// One message handed to the producer, waiting for its delivery report.
struct InFlight {
    fut: DeliveryFuture,
    t0: Instant,
    partition: u32,
    seq: u64,
}

async fn track(m: InFlight) -> (Result<DeliveryReport, ClientError>, Instant, u32, u64) {
    (m.fut.await, m.t0, m.partition, m.seq)
}

/// Awaits delivery futures concurrently and records their latency.
async fn collect(
    mut rx: mpsc::Receiver<InFlight>,
    shared: Arc<Shared>,
    hists: Arc<Mutex<TaskHists>>,
    size: u64,
) -> HashMap<u32, verify::RangeSet> {
    let mut inflight = FuturesUnordered::new();
    let mut open = true;
    let mut failed: HashMap<u32, verify::RangeSet> = HashMap::new();
    loop {
        tokio::select! {
            m = rx.recv(), if open => match m {
                Some(m) => inflight.push(track(m)),
                None => open = false,
            },
            Some((res, t0, partition, seq)) = inflight.next(), if !inflight.is_empty() => {
                let now = Instant::now();
                match res {
                    Ok(_) => {
                        let us = now.saturating_duration_since(t0).as_micros() as u64;
                        shared.acked_msgs.fetch_add(1, Relaxed);
                        shared.acked_bytes.fetch_add(size, Relaxed);
                        lock(&hists).record(us, t0 >= shared.warmup_end);
                    }
                    Err(e) => {
                        shared.failed_msgs.fetch_add(1, Relaxed);
                        shared.note(format!("delivery failed: {e}"));
                        failed.entry(partition).or_default().insert(seq);
                    }
                }
            }
            else => break,
        }
    }
    failed
}

struct ProducerDone {
    sent: HashMap<(u32, u32), Sent>,
    fatal: Option<String>,
}

async fn connect_producer(cfg: &Config, shared: &Shared, id: u32) -> Result<Client, String> {
    Client::connect(client_config(cfg, format!("levee-bench-p{id}")))
        .await
        .map_err(|e| {
            shared.stop_producing.store(true, Relaxed);
            format!("producer {id}: {e}")
        })
}

/// Waits for the rate limiter to allow `bytes`; false once producers stop.
async fn pace_producer(pacer: &mut Pacer, shared: &Shared, bytes: f64) -> bool {
    if pacer.is_unlimited() {
        return true;
    }
    let wait = pacer.acquire(shared.secs(), bytes);
    if wait > 0.001 {
        let until = Instant::now() + Duration::from_secs_f64(wait.min(3600.0));
        while Instant::now() < until {
            if shared.stop_producing.load(Relaxed) {
                return false;
            }
            let step = until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            tokio::time::sleep(step).await;
        }
    }
    true
}

/// What a producer sent to each partition, with the sequence numbers that failed.
fn record_sent(
    done: &mut ProducerDone,
    id: u32,
    seqs: Vec<u64>,
    mut failed: HashMap<u32, verify::RangeSet>,
) {
    for (p, count) in seqs.into_iter().enumerate() {
        if count == 0 {
            continue;
        }
        let p = p as u32;
        done.sent.insert(
            (id, p),
            Sent {
                count,
                failed: failed.remove(&p).unwrap_or_default(),
            },
        );
    }
}

async fn producer_task(
    id: u32,
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    hists: Arc<Mutex<TaskHists>>,
    partitions: u32,
    quota: Option<u64>,
) -> ProducerDone {
    let a = &cfg.args;
    let mut done = ProducerDone {
        sent: HashMap::new(),
        fatal: None,
    };
    let client = match connect_producer(&cfg, &shared, id).await {
        Ok(c) => c,
        Err(e) => {
            done.fatal = Some(e);
            return done;
        }
    };
    let producer = Producer::new(
        client,
        ProducerConfig {
            acks: a.acks,
            compression: a.compression,
            batch_size: a.batch_size,
            linger: Duration::from_millis(a.linger_ms),
            max_in_flight: a.max_in_flight,
            buffer_bytes: a.buffer_bytes,
            ..ProducerConfig::default()
        },
    );
    let producer = match producer {
        Ok(p) => p,
        Err(e) => {
            shared.stop_producing.store(true, Relaxed);
            done.fatal = Some(format!("producer {id}: {e}"));
            return done;
        }
    };
    let (tx, rx) = mpsc::channel::<InFlight>(16 * 1024);
    let collector = tokio::spawn(collect(rx, shared.clone(), hists, a.message_size as u64));
    let pool = FillerPool::new(shared.run_id ^ u64::from(id), a.message_size);
    let mut rng = SplitMix(
        shared
            .run_id
            .wrapping_add(u64::from(id).wrapping_mul(0x9E37)),
    );
    let mut seqs = vec![0u64; partitions as usize];
    let share = 1.0 / a.producers.max(1) as f64;
    let mut pacer = Pacer::new(
        cfg.produce_shape.scaled(share),
        0.05,
        (a.message_size.max(a.batch_size)) as f64,
    );
    let mut next_partition = id % partitions;
    let mut sent = 0u64;
    'send: while !shared.stop_producing.load(Relaxed) {
        if quota.is_some_and(|q| sent >= q) {
            break;
        }
        if !pace_producer(&mut pacer, &shared, a.message_size as f64).await {
            break 'send;
        }
        let (key, partition) = match a.keys {
            Keys::None => {
                let p = next_partition;
                next_partition = (next_partition + 1) % partitions;
                (None, p)
            }
            Keys::Random => {
                let k = format!("{:016x}", rng.next_u64()).into_bytes();
                let p = partition_for_key(&k, partitions);
                (Some(k), p)
            }
            Keys::Distinct(n) => {
                let k = format!("key-{}", rng.next_u64() % n).into_bytes();
                let p = partition_for_key(&k, partitions);
                (Some(k), p)
            }
        };
        let Some(slot) = seqs.get_mut(partition as usize) else {
            done.fatal = Some(format!(
                "producer {id}: partitioner chose partition {partition} of {partitions}"
            ));
            break;
        };
        let seq = *slot;
        *slot += 1;
        let sent_ns = shared.now_ns();
        let t0 = Instant::now();
        let value = payload::encode(
            &Header {
                run_id: shared.run_id,
                producer: id,
                partition,
                seq,
                sent_ns,
            },
            a.message_size,
            &pool,
        );
        let record = Record {
            timestamp: (sent_ns / 1_000_000) as i64,
            key,
            value: Some(value),
            headers: Vec::new(),
        };
        match producer
            .send_record(&a.topic, Some(partition), record)
            .await
        {
            Ok(fut) => {
                let m = InFlight {
                    fut,
                    t0,
                    partition,
                    seq,
                };
                if tx.send(m).await.is_err() {
                    done.fatal = Some(format!("producer {id}: delivery collector stopped"));
                    break;
                }
            }
            Err(e) => {
                // Never queued: neither sent nor acknowledged.
                *slot -= 1;
                done.fatal = Some(format!("producer {id}: send failed: {e}"));
                break;
            }
        }
        sent += 1;
    }
    drop(tx);
    // Send what is lingering now; the collector sees every outcome.
    if let Err(e) = producer.flush().await {
        shared.note(format!("producer {id}: flush failed: {e}"));
    }
    let failed = match collector.await {
        Ok(f) => f,
        Err(e) => {
            done.fatal = Some(format!("producer {id}: collector task failed: {e}"));
            HashMap::new()
        }
    };
    record_sent(&mut done, id, seqs, failed);
    done
}

/// One batch in flight in `--direct-batches` mode.
struct BatchInFlight {
    t0: Instant,
    partition: u32,
    first_seq: u64,
    count: u64,
    /// The batch, kept to send again after a retriable failure.
    batch: bytes::Bytes,
}

/// How long `--direct-batches` keeps retrying a batch that failed with a
/// retriable error (a leader change, a lost connection): the producer
/// library's default delivery timeout.
const DIRECT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends a batch again after a retriable failure, with backoff, until it is
/// acknowledged, fails for good, or `DIRECT_DELIVERY_TIMEOUT` has passed
/// since it was first sent. The producer waits meanwhile (a failover shows
/// as a pause and as the retried batches' latency). A retried batch can
/// land after later batches of its partition (counted as reordered).
async fn retry_batch(
    client: &levee_client::Client,
    topic: &str,
    acks: i8,
    b: &BatchInFlight,
    mut res: Settled,
) -> Settled {
    let mut backoff = Duration::from_millis(20);
    loop {
        let err = match &res.0 {
            Ok(parts) => parts.first().and_then(|p| p.result().err()),
            Err(e) => Some(e.clone()),
        };
        match err {
            Some(e) if e.is_retriable() && b.t0.elapsed() < DIRECT_DELIVERY_TIMEOUT => {}
            _ => return res,
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(100));
        let r = client
            .produce(
                acks,
                Duration::from_secs(30),
                vec![(topic.to_string(), b.partition, b.batch.clone())],
            )
            .await;
        res = (r, Instant::now());
    }
}

/// Writes `v` as a varint at the start of `out`; returns its length.
fn put_varint_slice(out: &mut [u8], mut v: u64) -> usize {
    let mut n = 0;
    while v >= 0x80 {
        out[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    out[n] = v as u8;
    n + 1
}

/// A batch's outcome and when it arrived.
type Settled = (
    Result<Vec<levee_client::ProducedPartition>, ClientError>,
    Instant,
);

async fn settled(waiter: tokio::task::JoinHandle<Settled>) -> Settled {
    match waiter.await {
        Ok(s) => s,
        Err(e) => (
            Err(ClientError::Protocol(format!(
                "the acknowledgement task failed: {e}"
            ))),
            Instant::now(),
        ),
    }
}

/// The broker's administration, over the protocol the bench speaks.
enum Admin {
    Native(Client),
    Kafka(Arc<kafka::KafkaClient>),
}

impl Admin {
    async fn connect(cfg: &Config) -> Result<Admin, BenchError> {
        Ok(match cfg.args.protocol {
            Protocol::Native => Admin::Native(
                Client::connect(client_config(cfg, "levee-bench".into()))
                    .await
                    .map_err(|e| client_err("connect", &e))?,
            ),
            Protocol::Kafka => Admin::Kafka(
                kafka_tasks::connect(cfg)
                    .await
                    .map_err(BenchError::Client)?,
            ),
        })
    }

    /// The native client (group administration has no Kafka path here).
    fn native(&self) -> Result<&Client, BenchError> {
        match self {
            Admin::Native(c) => Ok(c),
            Admin::Kafka(_) => Err(usage("this needs --protocol native")),
        }
    }

    async fn ensure_topic(&self, cfg: &Config) -> Result<u32, BenchError> {
        match self {
            Admin::Native(c) => ensure_topic(cfg, c).await,
            Admin::Kafka(k) => k
                .ensure_topic(&cfg.args.topic, cfg.args.partitions, -1)
                .await
                .map_err(BenchError::Client),
        }
    }

    async fn end_offsets(
        &self,
        topic: &str,
        partitions: u32,
        spec: OffsetSpec,
    ) -> Result<HashMap<u32, u64>, BenchError> {
        match self {
            Admin::Native(c) => end_offsets(c, topic, partitions, spec)
                .await
                .map_err(|e| client_err("list offsets", &e)),
            Admin::Kafka(k) => k
                .list_offsets(
                    topic,
                    partitions,
                    if matches!(spec, OffsetSpec::Earliest) {
                        -2
                    } else {
                        -1
                    },
                )
                .await
                .map_err(BenchError::Client),
        }
    }
}

/// The error of a native produce outcome, if any.
fn native_error(res: Result<Vec<levee_client::ProducedPartition>, ClientError>) -> Option<String> {
    match res {
        Ok(parts) => parts
            .first()
            .and_then(|p| p.result().err())
            .map(|e| e.to_string()),
        Err(e) => Some(e.to_string()),
    }
}

/// Records a batch's outcome for each of its messages.
fn settle_batch(
    b: BatchInFlight,
    err: Option<String>,
    done_at: Instant,
    shared: &Shared,
    hists: &Mutex<TaskHists>,
    size: u64,
    failed: &mut HashMap<u32, verify::RangeSet>,
) {
    match err {
        None => {
            let us = done_at.saturating_duration_since(b.t0).as_micros() as u64;
            shared.acked_msgs.fetch_add(b.count, Relaxed);
            shared.acked_bytes.fetch_add(size * b.count, Relaxed);
            let mut h = lock(hists);
            for _ in 0..b.count {
                h.record(us, b.t0 >= shared.warmup_end);
            }
        }
        Some(e) => {
            shared.failed_msgs.fetch_add(b.count, Relaxed);
            shared.note(format!("delivery failed: {e}"));
            failed
                .entry(b.partition)
                .or_default()
                .insert_range(b.first_seq, b.first_seq + b.count);
        }
    }
}

/// A producer that builds record batches itself and keeps
/// `--max-in-flight` of them in flight on its connection.
/// A batch of `n` bench messages of `size` bytes, sequence numbers from
/// `h.seq`, built in place after the header space: each payload is written
/// once, straight into the batch. Records in Kafka's encoding (every varint
/// zigzag): attributes, timestamp delta 0, offset delta, null key (-1),
/// value, no headers.
fn direct_batch(h: &Header, n: u64, size: usize, pool: &FillerPool, ts: i64) -> Vec<u8> {
    let mut records = levee_engine::batch::batch_buffer(n as usize * (size + 12));
    for i in 0..n {
        let mut head = [0u8; 32];
        let mut at = 2; // attributes 0, timestamp delta 0
        at += put_varint_slice(&mut head[at..], i << 1);
        head[at] = 1; // null key
        at += 1;
        at += put_varint_slice(&mut head[at..], (size as u64) << 1);
        let body_len = at + size + 1;
        let mut len_buf = [0u8; 10];
        let l = put_varint_slice(&mut len_buf, (body_len as u64) << 1);
        records.extend_from_slice(&len_buf[..l]);
        records.extend_from_slice(&head[..at]);
        let before = records.len();
        payload::encode_into(
            &Header {
                seq: h.seq + i,
                ..*h
            },
            size,
            pool,
            &mut records,
        );
        debug_assert_eq!(records.len() - before, size);
        records.push(0u8); // no headers
    }
    levee_engine::batch::finish_batch(
        records,
        n as u32,
        ts,
        ts,
        levee_engine::batch::BatchMeta::default(),
    )
}

async fn batch_producer_task(
    id: u32,
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    hists: Arc<Mutex<TaskHists>>,
    partitions: u32,
    quota: Option<u64>,
) -> ProducerDone {
    let a = &cfg.args;
    let mut done = ProducerDone {
        sent: HashMap::new(),
        fatal: None,
    };
    let client = match connect_producer(&cfg, &shared, id).await {
        Ok(c) => c,
        Err(e) => {
            done.fatal = Some(e);
            return done;
        }
    };
    let size = a.message_size.max(payload::HEADER_LEN);
    let per_batch = (a.batch_size / (size + 12)).max(1) as u64;
    let pool = FillerPool::new(shared.run_id ^ u64::from(id), a.message_size);
    let mut seqs = vec![0u64; partitions as usize];
    let share = 1.0 / a.producers.max(1) as f64;
    let mut pacer = Pacer::new(
        cfg.produce_shape.scaled(share),
        0.05,
        (size as u64 * per_batch) as f64,
    );
    let mut next_partition = id % partitions;
    let mut sent = 0u64;
    let mut queue: std::collections::VecDeque<(tokio::task::JoinHandle<Settled>, BatchInFlight)> =
        std::collections::VecDeque::new();
    let mut failed: HashMap<u32, verify::RangeSet> = HashMap::new();
    let acks = a.acks.to_wire();
    'send: while !shared.stop_producing.load(Relaxed) {
        let n = match quota {
            Some(q) if sent >= q => break,
            Some(q) => per_batch.min(q - sent),
            None => per_batch,
        };
        if !pace_producer(&mut pacer, &shared, (size as u64 * n) as f64).await {
            break 'send;
        }
        let partition = next_partition;
        next_partition = (next_partition + 1) % partitions;
        let first_seq = seqs[partition as usize];
        let sent_ns = shared.now_ns();
        let ts = (sent_ns / 1_000_000) as i64;
        let batch = direct_batch(
            &Header {
                run_id: shared.run_id,
                producer: id,
                partition,
                seq: first_seq,
                sent_ns,
            },
            n,
            size,
            &pool,
            ts,
        );
        if queue.len() >= a.max_in_flight.max(1) {
            if let Some((waiter, b)) = queue.pop_front() {
                let first = settled(waiter).await;
                let (res, done_at) = retry_batch(&client, &a.topic, acks, &b, first).await;
                settle_batch(
                    b,
                    native_error(res),
                    done_at,
                    &shared,
                    &hists,
                    size as u64,
                    &mut failed,
                );
            }
        }
        let t0 = Instant::now();
        let batch = bytes::Bytes::from(batch);
        match client
            .start_produce(
                acks,
                Duration::from_secs(30),
                vec![(a.topic.clone(), partition, batch.clone())],
            )
            .await
        {
            Ok(inflight) => {
                seqs[partition as usize] += n;
                sent += n;
                // The acknowledgement is timed when it arrives, not when
                // this loop gets round to looking at it.
                let waiter = tokio::spawn(async move {
                    let res = inflight.wait().await;
                    (res, Instant::now())
                });
                queue.push_back((
                    waiter,
                    BatchInFlight {
                        t0,
                        partition,
                        first_seq,
                        count: n,
                        batch,
                    },
                ));
            }
            Err(e) => {
                done.fatal = Some(format!("producer {id}: send failed: {e}"));
                break;
            }
        }
    }
    while let Some((waiter, b)) = queue.pop_front() {
        let first = settled(waiter).await;
        let (res, done_at) = retry_batch(&client, &a.topic, acks, &b, first).await;
        settle_batch(
            b,
            native_error(res),
            done_at,
            &shared,
            &hists,
            size as u64,
            &mut failed,
        );
    }
    record_sent(&mut done, id, seqs, failed);
    done
}

struct ConsumerDone {
    /// Reached the end offsets it was asked to.
    complete: bool,
    fatal: Option<String>,
}

struct ConsumerCtx {
    id: usize,
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    hists: Arc<Mutex<TaskHists>>,
    /// This task's own verifier, or with `--group` the one every member shares.
    verifier: Arc<Mutex<Verifier>>,
    /// The partitions to read (unused with `--group`: the broker assigns them).
    partitions: Vec<u32>,
    /// End offsets to reach; `None` until producers are done.
    targets: watch::Receiver<Option<Arc<HashMap<u32, u64>>>>,
    /// Stop after this many records in total (consume-only --messages).
    limit: Option<u64>,
}

fn reached(consumer: &Consumer, topic: &str, parts: &[u32], targets: &HashMap<u32, u64>) -> bool {
    parts.iter().all(|p| {
        let target = targets.get(p).copied().unwrap_or(0);
        consumer.position(topic, *p).unwrap_or(0) >= target
    })
}

fn consumer_fetch_config(a: &BenchArgs) -> ConsumerConfig {
    ConsumerConfig {
        max_wait: Duration::from_millis(100),
        partition_max_bytes: a.fetch_partition_bytes,
        max_bytes: a.fetch_partition_bytes.saturating_mul(16).max(16 << 20),
        ..ConsumerConfig::default()
    }
}

/// Verifies a polled batch (checksums outside the verifier's lock, stream
/// state under it), records end-to-end latencies and the shared counters.
/// `owner`: who read it, with `--group`. Returns the batch's payload bytes.
fn account(
    records: &[ConsumedRecord],
    owner: Option<Owner>,
    verifier: &Mutex<Verifier>,
    hists: &Mutex<TaskHists>,
    shared: &Shared,
) -> u64 {
    let now_ns = shared.now_ns();
    let parsed: Vec<_> = records
        .iter()
        .map(|r| payload::verify(r.value.as_deref().unwrap_or(&[])))
        .collect();
    let mut checked = Vec::with_capacity(records.len());
    {
        let mut v = lock(verifier);
        let mut last_partition = None;
        for (r, p) in records.iter().zip(parsed) {
            if let Some(o) = owner {
                if last_partition != Some(r.partition) {
                    v.owner(r.partition, o);
                    last_partition = Some(r.partition);
                }
            }
            checked.push(v.check_parsed(r.partition, p));
        }
    }
    let mut bytes = 0u64;
    let mut own_msgs = 0u64;
    let mut own_bytes = 0u64;
    {
        let mut h = lock(hists);
        for (r, c) in records.iter().zip(checked) {
            let len = r.value.as_deref().map_or(0, <[u8]>::len) as u64;
            bytes += len;
            if let Checked::Own { sent_ns, first } = c {
                if first {
                    own_msgs += 1;
                    own_bytes += len;
                }
                let us = now_ns.saturating_sub(sent_ns) / 1000;
                h.record(us, sent_ns >= shared.warmup_end_ns);
            }
        }
    }
    shared
        .consumed_msgs
        .fetch_add(records.len() as u64, Relaxed);
    shared.consumed_bytes.fetch_add(bytes, Relaxed);
    shared.own_msgs.fetch_add(own_msgs, Relaxed);
    shared.own_bytes.fetch_add(own_bytes, Relaxed);
    bytes
}

/// Waits as long as the consume pacer asks (a slow downstream).
async fn pace(pacer: &mut Pacer, shared: &Shared, bytes: u64) {
    if pacer.is_unlimited() {
        return;
    }
    let wait = pacer.acquire(shared.secs(), bytes as f64);
    if wait > 0.0 {
        let until = Instant::now() + Duration::from_secs_f64(wait.min(3600.0));
        while Instant::now() < until && !shared.stop_consuming.load(Relaxed) {
            let step = until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            tokio::time::sleep(step).await;
        }
    }
}

async fn consumer_task(
    ctx: ConsumerCtx,
    ready: oneshot::Sender<Result<(), String>>,
) -> ConsumerDone {
    let ConsumerCtx {
        id,
        cfg,
        shared,
        hists,
        verifier,
        partitions,
        mut targets,
        limit,
    } = ctx;
    let a = &cfg.args;
    let mut done = ConsumerDone {
        complete: false,
        fatal: None,
    };
    let client = match Client::connect(client_config(&cfg, format!("levee-bench-c{id}"))).await {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(format!("consumer {id}: {e}")));
            return done;
        }
    };
    let mut consumer = Consumer::new(client, consumer_fetch_config(a));
    if let Err(e) = consumer
        .assign(&a.topic, Some(partitions.clone()), cfg.from)
        .await
    {
        let _ = ready.send(Err(format!("consumer {id}: assign: {e}")));
        return done;
    }
    let _ = ready.send(Ok(()));
    let share = 1.0 / a.consumers.max(1) as f64;
    let mut pacer = Pacer::new(
        cfg.consume_shape.scaled(share),
        0.05,
        f64::from(a.fetch_partition_bytes),
    );
    let mut retries = 0u32;
    loop {
        if shared.stop_consuming.load(Relaxed) {
            break;
        }
        let target = targets.borrow_and_update().clone();
        if let Some(t) = target {
            if reached(&consumer, &a.topic, &partitions, &t) {
                done.complete = true;
                break;
            }
        }
        if limit.is_some_and(|l| shared.consumed_msgs.load(Relaxed) >= l) {
            done.complete = true;
            break;
        }
        let records = match consumer.poll().await {
            Ok(r) => {
                retries = 0;
                r
            }
            Err(e @ (ClientError::Checksum { .. } | ClientError::MalformedBatch { .. })) => {
                lock(&verifier).counts.corrupt_batches += 1;
                shared.note(format!("consumer {id}: {e}"));
                // The position cannot move past a batch it cannot read.
                break;
            }
            Err(e) if e.is_retriable() && retries < 50 => {
                retries += 1;
                shared.note(format!("consumer {id}: retrying: {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => {
                done.fatal = Some(format!("consumer {id}: {e}"));
                break;
            }
        };
        if records.is_empty() {
            continue;
        }
        let bytes = account(&records, None, &verifier, &hists, &shared);
        pace(&mut pacer, &shared, bytes).await;
    }
    done
}

/// Whether every partition assigned to a group member is at or past its target.
fn group_reached(gc: &GroupConsumer, topic: &str, targets: &HashMap<u32, u64>) -> bool {
    gc.assignment().get(topic).is_none_or(|ps| {
        ps.iter().all(|p| {
            let target = targets.get(p).copied().unwrap_or(0);
            gc.position(topic, *p).unwrap_or(0) >= target
        })
    })
}

/// Commits a group member's positions; a refusal (rebalance, fencing) is
/// counted, not fatal: the next poll joins again and the next owner reads
/// the uncommitted records again. Returns whether the commit went through.
async fn group_commit(gc: &mut GroupConsumer, shared: &Shared, id: usize, dirty: bool) -> bool {
    match gc.commit().await {
        Ok(()) => {
            if dirty {
                shared.commits.fetch_add(1, Relaxed);
            }
            true
        }
        Err(e) if e.needs_rejoin() => {
            shared.commits_refused.fetch_add(1, Relaxed);
            false
        }
        Err(e) => {
            shared.note(format!("consumer {id}: commit failed: {e}"));
            false
        }
    }
}

/// A member of consumer group `group`: the broker assigns its partitions;
/// it verifies each polled batch, then commits (after each batch, or every
/// `--commit-interval-ms`). It stops when the whole group has committed up
/// to the targets (see [`watch_group_progress`]).
async fn group_consumer_task(
    ctx: ConsumerCtx,
    group: String,
    ready: oneshot::Sender<Result<(), String>>,
) -> ConsumerDone {
    let ConsumerCtx {
        id,
        cfg,
        shared,
        hists,
        verifier,
        partitions: _,
        targets,
        limit,
    } = ctx;
    let a = &cfg.args;
    let mut done = ConsumerDone {
        complete: false,
        fatal: None,
    };
    let mut gc = match join_member(&cfg, id, &group).await {
        Ok(gc) => gc,
        Err(e) => {
            let _ = ready.send(Err(e));
            return done;
        }
    };
    shared.saw_generation(gc.generation());
    let _ = ready.send(Ok(()));
    let share = 1.0 / a.consumers.max(1) as f64;
    let mut pacer = Pacer::new(
        cfg.consume_shape.scaled(share),
        0.05,
        f64::from(a.fetch_partition_bytes),
    );
    let commit_every = a.commit_interval_ms.map(Duration::from_millis);
    let mut last_commit = Instant::now();
    // Records polled since the last commit that went through.
    let mut dirty = false;
    let mut retries = 0u32;
    let mut churn_seen = 0u64;
    loop {
        if shared.stop_consuming.load(Relaxed) {
            break;
        }
        let turn = shared.churn_turn.load(Relaxed);
        if turn != churn_seen {
            churn_seen = turn;
            if (turn % a.consumers.max(1) as u64) as usize == id {
                // Leave as a crashed member would: without committing.
                if let Err(e) = gc.close().await {
                    shared.note(format!("consumer {id}: leaving group `{group}`: {e}"));
                }
                shared.churns.fetch_add(1, Relaxed);
                dirty = false;
                gc = match join_member(&cfg, id, &group).await {
                    Ok(gc) => gc,
                    Err(e) => {
                        done.fatal = Some(e);
                        return done;
                    }
                };
                shared.saw_generation(gc.generation());
            }
        }
        if shared.group_done.load(Relaxed) {
            done.complete = true;
            break;
        }
        if limit.is_some_and(|l| shared.consumed_msgs.load(Relaxed) >= l) {
            done.complete = true;
            break;
        }
        let records = match gc.poll().await {
            Ok(r) => {
                retries = 0;
                r
            }
            Err(e @ (ClientError::Checksum { .. } | ClientError::MalformedBatch { .. })) => {
                lock(&verifier).counts.corrupt_batches += 1;
                shared.note(format!("consumer {id}: {e}"));
                break;
            }
            // A rejoin that failed is tried again by the next poll.
            Err(e) if (e.is_retriable() || e.needs_rejoin()) && retries < 50 => {
                retries += 1;
                shared.note(format!("consumer {id}: retrying: {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => {
                done.fatal = Some(format!("consumer {id}: {e}"));
                break;
            }
        };
        let generation = gc.generation();
        shared.saw_generation(generation);
        let mut bytes = 0;
        if !records.is_empty() {
            let owner = Owner {
                consumer: id,
                generation,
            };
            bytes = account(&records, Some(owner), &verifier, &hists, &shared);
            dirty = true;
        }
        let due = match commit_every {
            None => true,
            Some(every) => {
                last_commit.elapsed() >= every
                    || targets
                        .borrow()
                        .as_ref()
                        .is_some_and(|t| group_reached(&gc, &a.topic, t))
            }
        };
        if due {
            if group_commit(&mut gc, &shared, id, dirty).await {
                dirty = false;
            }
            last_commit = Instant::now();
        }
        pace(&mut pacer, &shared, bytes).await;
    }
    if dirty {
        group_commit(&mut gc, &shared, id, dirty).await;
    }
    if let Err(e) = gc.close().await {
        shared.note(format!("consumer {id}: leaving group `{group}`: {e}"));
    }
    done
}

/// Connects and joins the group as consumer `id` (auto-commit off).
async fn join_member(cfg: &Config, id: usize, group: &str) -> Result<GroupConsumer, String> {
    let a = &cfg.args;
    let client = Client::connect(client_config(cfg, format!("levee-bench-c{id}")))
        .await
        .map_err(|e| format!("consumer {id}: {e}"))?;
    let config = GroupConsumerConfig {
        auto_commit: None,
        reset: cfg.reset(),
        fetch: consumer_fetch_config(a),
        ..GroupConsumerConfig::new(group, [a.topic.clone()])
    };
    GroupConsumer::join(client, config)
        .await
        .map_err(|e| format!("consumer {id}: join group `{group}`: {e}"))
}

/// With `--group`: once the targets are known, checks the group's committed
/// offsets until every partition's reaches its target, then sets
/// `group_done` (the members stop). Commits follow verification, so every
/// message below the targets has been checked by then.
async fn watch_group_progress(
    admin: Client,
    group: String,
    topic: String,
    partitions: u32,
    mut targets: watch::Receiver<Option<Arc<HashMap<u32, u64>>>>,
    shared: Arc<Shared>,
) {
    let t = loop {
        if shared.stop_consuming.load(Relaxed) {
            return;
        }
        let current = targets.borrow_and_update().clone();
        if let Some(t) = current {
            break t;
        }
        tokio::select! {
            r = targets.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    };
    while !shared.stop_consuming.load(Relaxed) {
        match admin.fetch_offsets(&group, &Assignment::new()).await {
            Ok(found) => {
                let committed: HashMap<u32, u64> = found
                    .into_iter()
                    .filter(|o| o.topic == topic)
                    .map(|o| (o.partition, o.offset))
                    .collect();
                if group_targets_reached(&committed, &t, partitions) {
                    shared.group_done.store(true, Relaxed);
                    return;
                }
            }
            Err(e) => shared.note(format!("fetch the group's offsets: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether every partition's committed offset (none: 0) is at its target.
fn group_targets_reached(
    committed: &HashMap<u32, u64>,
    targets: &HashMap<u32, u64>,
    partitions: u32,
) -> bool {
    (0..partitions)
        .all(|p| committed.get(&p).copied().unwrap_or(0) >= targets.get(&p).copied().unwrap_or(0))
}

/// Samples a group's lag: end offsets (high watermarks) minus committed
/// offsets, summed over the topic's partitions.
#[derive(Clone)]
struct LagProbe {
    client: Client,
    group: String,
    topic: String,
}

impl LagProbe {
    async fn sample(&self) -> Result<i64, String> {
        let fut = async {
            let info = self
                .client
                .describe_topic(&self.topic)
                .await
                .map_err(|e| format!("describe topic: {e}"))?;
            let found = self
                .client
                .fetch_offsets(&self.group, &Assignment::new())
                .await
                .map_err(|e| format!("fetch the group's offsets: {e}"))?;
            let committed: HashMap<u32, u64> = found
                .into_iter()
                .filter(|o| o.topic == self.topic)
                .map(|o| (o.partition, o.offset))
                .collect();
            let total: u64 = info
                .partitions
                .iter()
                .map(|p| {
                    levee_client::lag(
                        committed.get(&p.partition).copied(),
                        p.log_start_offset,
                        p.high_watermark,
                    )
                })
                .sum();
            Ok(i64::try_from(total).unwrap_or(i64::MAX))
        };
        match tokio::time::timeout(Duration::from_millis(800), fut).await {
            Ok(r) => r,
            Err(_) => Err("lag sample timed out".into()),
        }
    }
}

/// With `--from latest`, commits the current end offsets for the partitions
/// the group has no offset for, before any member joins: members then start
/// exactly there even if a partition moves between them (during the group's
/// formation) before its first commit, when a later `latest` lookup would
/// skip what was produced in between.
async fn prepare_group(
    cfg: &Config,
    admin: &Client,
    group: &str,
    partitions: u32,
) -> Result<(), BenchError> {
    let topic = &cfg.args.topic;
    let existing = admin
        .fetch_offsets(group, &Assignment::new())
        .await
        .map_err(|e| client_err(&format!("fetch offsets of group `{group}`"), &e))?;
    let have: HashSet<u32> = existing
        .iter()
        .filter(|o| &o.topic == topic)
        .map(|o| o.partition)
        .collect();
    if !have.is_empty() {
        eprintln!(
            "note: group `{group}` has committed offsets for {} of {partitions} partition(s) of `{topic}`: its members resume from them",
            have.len()
        );
    }
    if cfg.reset() != OffsetReset::Latest {
        return Ok(());
    }
    let ends = end_offsets(admin, topic, partitions, OffsetSpec::Latest)
        .await
        .map_err(|e| client_err("list offsets", &e))?;
    let mut commits: Vec<OffsetCommit> = ends
        .iter()
        .filter(|(p, _)| !have.contains(p))
        .map(|(p, o)| OffsetCommit::new(topic.clone(), *p, *o))
        .collect();
    if commits.is_empty() {
        return Ok(());
    }
    commits.sort_by_key(|c| c.partition);
    match admin.commit_offsets(group, "", -1, &commits).await {
        Ok(()) => {
            eprintln!(
                "group `{group}`: committed the end offsets of {} partition(s) so that members start there (--from latest)",
                commits.len()
            );
            Ok(())
        }
        Err(e) if e.code() == Some(ErrorCode::GroupNotEmpty) => {
            eprintln!(
                "note: group `{group}` already has members: partitions without a committed offset start at the end of the log when first read"
            );
            Ok(())
        }
        Err(e) => Err(client_err(
            &format!("commit starting offsets of group `{group}`"),
            &e,
        )),
    }
}

/// Waits (up to 15 s) until the group is stable with at least `members`
/// members; returns its generation then.
async fn wait_for_group(admin: &Client, group: &str, members: usize) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(info) = admin.describe_group(group).await {
            if info.state == "Stable" && info.members.len() >= members {
                return Some(info.generation);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// End offsets of every partition.
async fn end_offsets(
    client: &Client,
    topic: &str,
    partitions: u32,
    spec: OffsetSpec,
) -> Result<HashMap<u32, u64>, ClientError> {
    let ps: Vec<u32> = (0..partitions).collect();
    let found = client.list_offsets(topic, &ps, spec).await?;
    Ok(found
        .into_iter()
        .filter_map(|(p, o)| o.map(|o| (p, o)))
        .collect())
}

/// The per-second reporter's state.
struct Reporter {
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    ack_hists: Vec<Arc<Mutex<TaskHists>>>,
    e2e_hists: Vec<Arc<Mutex<TaskHists>>>,
    series: Arc<Mutex<Vec<Point>>>,
    /// Consume-only: records to read in total (backlog = this minus consumed).
    catchup_total: Option<u64>,
    /// With `--group`: samples the group's lag.
    lag: Option<LagProbe>,
}

impl Reporter {
    fn take_interval(hs: &[Arc<Mutex<TaskHists>>]) -> hdrhistogram::Histogram<u64> {
        let mut merged = stats::new_histogram();
        for h in hs {
            let mut g = lock(h);
            // Same bounds everywhere, so adding cannot fail.
            let _ = merged.add(&g.interval);
            g.interval.reset();
        }
        merged
    }

    fn backlog(&self) -> (i64, i64) {
        let s = &self.shared;
        let consumed = s.consumed_msgs.load(Relaxed);
        match self.catchup_total {
            Some(total) => {
                let msgs = total.saturating_sub(consumed) as i64;
                let avg = if consumed > 0 {
                    s.consumed_bytes.load(Relaxed) as f64 / consumed as f64
                } else {
                    self.cfg.args.message_size as f64
                };
                (msgs, (msgs as f64 * avg) as i64)
            }
            // A consumer may read a message before its producer has seen
            // the acknowledgement: never report a negative backlog.
            None => (
                (s.acked_msgs.load(Relaxed) as i64 - s.own_msgs.load(Relaxed) as i64).max(0),
                (s.acked_bytes.load(Relaxed) as i64 - s.own_bytes.load(Relaxed) as i64).max(0),
            ),
        }
    }

    async fn run(self, stop: Arc<AtomicBool>) {
        let start = self.shared.start;
        let mut tick =
            tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = Snap::default();
        let mut rss_warned = false;
        loop {
            tick.tick().await;
            if stop.load(Relaxed) {
                break;
            }
            let now = self.shared.snapshot();
            let dt = (now.at - last.at).max(1e-3);
            let ack = Self::take_interval(&self.ack_hists);
            let e2e = Self::take_interval(&self.e2e_hists);
            let (backlog_msgs, backlog_bytes) = self.backlog();
            let rss = match &self.cfg.memory {
                Some(m) => m.sample().await,
                None => None,
            };
            if rss.is_none() && !rss_warned {
                if let Some(m) = &self.cfg.memory {
                    eprintln!("note: cannot read broker memory from {}", m.describe());
                }
                rss_warned = true;
            }
            let lag = match &self.lag {
                Some(probe) => match probe.sample().await {
                    Ok(v) => Some(v),
                    Err(e) => {
                        self.shared.note(format!("consumer lag: {e}"));
                        None
                    }
                },
                None => None,
            };
            let generation = if self.lag.is_some() {
                self.shared.newest_generation()
            } else {
                None
            };
            let phase = if self.shared.draining.load(Relaxed) {
                Phase::Drain
            } else if Instant::now() < self.shared.warmup_end {
                Phase::Warmup
            } else {
                Phase::Measure
            };
            let p = Point {
                t_s: (now.at * 1000.0).round() / 1000.0,
                phase,
                produce_mb_s: (now.acked_bytes - last.acked_bytes) as f64 / dt / rate::MB,
                produce_msgs_s: (now.acked_msgs - last.acked_msgs) as f64 / dt,
                consume_mb_s: (now.consumed_bytes - last.consumed_bytes) as f64 / dt / rate::MB,
                consume_msgs_s: (now.consumed_msgs - last.consumed_msgs) as f64 / dt,
                ack_p50_ms: quantile_ms(&ack, 0.5),
                ack_p99_ms: quantile_ms(&ack, 0.99),
                e2e_p50_ms: quantile_ms(&e2e, 0.5),
                e2e_p99_ms: quantile_ms(&e2e, 0.99),
                backlog_msgs,
                backlog_bytes,
                rss_bytes: rss,
                lag_msgs: lag,
                generation,
            };
            if !self.cfg.args.quiet {
                eprintln!(
                    "[{:>5.0}s {:<7}] produce {:>8.2} MB/s {:>9.0} msg/s | consume {:>8.2} MB/s {:>9.0} msg/s | ack p99 {:>9} | backlog {:>9} msgs {:>10} | rss {}{}",
                    now.at,
                    format!("{phase:?}").to_lowercase(),
                    p.produce_mb_s,
                    p.produce_msgs_s,
                    p.consume_mb_s,
                    p.consume_msgs_s,
                    p.ack_p99_ms.map_or("-".to_string(), stats::fmt_ms),
                    backlog_msgs,
                    fmt_bytes(backlog_bytes as f64),
                    rss.map_or("-".to_string(), |b| fmt_bytes(b as f64)),
                    match (&self.lag, lag) {
                        (None, _) => String::new(),
                        (Some(_), l) => format!(
                            " | lag {} gen {}",
                            l.map_or("-".to_string(), |v| v.to_string()),
                            generation.map_or("-".to_string(), |g| g.to_string())
                        ),
                    },
                );
            }
            lock(&self.series).push(p);
            last = now;
        }
    }
}

fn random_run_id() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut r = SplitMix(t ^ (u64::from(std::process::id()) << 32));
    r.next_u64()
}

/// Runs the benchmark; returns the report and a fatal error (exit 2) if a
/// task failed in a way that makes the figures incomplete.
async fn bench(cfg: Config) -> Result<(Report, Option<String>), BenchError> {
    let cfg = Arc::new(cfg);
    let a = &cfg.args;
    let admin = Admin::connect(&cfg).await?;
    let partitions = admin.ensure_topic(&cfg).await?;
    let run_id = random_run_id();
    eprintln!(
        "levee bench: run {run_id:016x}: {} producer(s), {} consumer(s), topic `{}` ({} partitions), {} B messages, acks={}, keys {}, compression {}; {} tokio worker thread(s) on a {}-CPU host (a local broker competes for the same CPUs)",
        a.producers,
        a.consumers,
        a.topic,
        partitions,
        a.message_size,
        match a.acks { Acks::None => "0", Acks::Leader => "1", Acks::All => "all" },
        cfg.params()["keys"].as_str().unwrap_or("?"),
        cfg.params()["compression"].as_str().unwrap_or("?"),
        cfg.threads,
        host_cpus()
    );
    let group = a.group.clone();
    let consumers_used = if group.is_some() {
        a.consumers
    } else {
        a.consumers.min(partitions as usize)
    };
    if group.is_some() && a.consumers > partitions as usize {
        eprintln!(
            "note: {} consumer(s) but {partitions} partition(s): the group leaves {} member(s) idle",
            a.consumers,
            a.consumers - partitions as usize
        );
    }
    if a.consumers > consumers_used {
        eprintln!(
            "note: {} consumer(s) but {partitions} partition(s): {} consumer(s) stay idle and are not started",
            a.consumers,
            a.consumers - consumers_used
        );
    }

    // Consumers first, so that from `latest` they see every message.
    let (targets_tx, targets_rx) = watch::channel::<Option<Arc<HashMap<u32, u64>>>>(None);
    let start_wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let start = Instant::now();
    let warmup = Duration::from_secs_f64(a.warmup);
    let shared = Arc::new(Shared {
        start,
        warmup_end: start + warmup,
        base_ns: start_wall,
        warmup_end_ns: start_wall + warmup.as_nanos() as u64,
        run_id,
        stop_producing: AtomicBool::new(false),
        stop_consuming: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        acked_msgs: AtomicU64::new(0),
        acked_bytes: AtomicU64::new(0),
        failed_msgs: AtomicU64::new(0),
        consumed_msgs: AtomicU64::new(0),
        consumed_bytes: AtomicU64::new(0),
        own_msgs: AtomicU64::new(0),
        own_bytes: AtomicU64::new(0),
        errors: Mutex::new(Vec::new()),
        group_done: AtomicBool::new(false),
        generations: Mutex::new(BTreeSet::new()),
        commits: AtomicU64::new(0),
        commits_refused: AtomicU64::new(0),
        churn_turn: AtomicU64::new(0),
        churns: AtomicU64::new(0),
    });
    if let Some(g) = &group {
        prepare_group(&cfg, admin.native()?, g, partitions).await?;
    }
    let mut catchup_total = None;
    if a.producers == 0 {
        let ends = admin
            .end_offsets(&a.topic, partitions, OffsetSpec::Latest)
            .await?;
        let mut starts = match cfg.from {
            StartPosition::Earliest => {
                admin
                    .end_offsets(&a.topic, partitions, OffsetSpec::Earliest)
                    .await?
            }
            _ => ends.clone(),
        };
        if let Some(g) = &group {
            // The group resumes from its committed offsets.
            let found = admin
                .native()?
                .fetch_offsets(g, &Assignment::new())
                .await
                .map_err(|e| client_err(&format!("fetch offsets of group `{g}`"), &e))?;
            for o in found.into_iter().filter(|o| o.topic == a.topic) {
                starts.insert(o.partition, o.offset);
            }
        }
        let total: u64 = ends
            .iter()
            .map(|(p, e)| e.saturating_sub(starts.get(p).copied().unwrap_or(0)))
            .sum();
        eprintln!(
            "consume-only: {total} record(s) to read up to the current end of `{}`",
            a.topic
        );
        catchup_total = Some(total);
        let _ = targets_tx.send(Some(Arc::new(ends)));
    }
    let mut e2e_hists = Vec::new();
    let mut consumer_handles = Vec::new();
    let mut readies = Vec::new();
    // One verifier per consumer, or one shared by the group's members (a
    // partition's streams move with it between them).
    let mut verifiers: Vec<Arc<Mutex<Verifier>>> = Vec::new();
    for id in 0..consumers_used {
        let parts: Vec<u32> = (0..partitions)
            .filter(|p| *p as usize % consumers_used == id)
            .collect();
        let h = Arc::new(Mutex::new(TaskHists::default()));
        e2e_hists.push(h.clone());
        let (rtx, rrx) = oneshot::channel();
        readies.push(rrx);
        let verifier = match verifiers.first() {
            Some(v) if group.is_some() => v.clone(),
            _ => {
                let v = Arc::new(Mutex::new(Verifier::new(run_id)));
                verifiers.push(v.clone());
                v
            }
        };
        let ctx = ConsumerCtx {
            id,
            cfg: cfg.clone(),
            shared: shared.clone(),
            hists: h,
            verifier,
            partitions: parts,
            targets: targets_rx.clone(),
            limit: if a.producers == 0 { a.messages } else { None },
        };
        consumer_handles.push(match &group {
            Some(g) => tokio::spawn(group_consumer_task(ctx, g.clone(), rtx)),
            None if a.protocol == Protocol::Kafka => {
                tokio::spawn(kafka_tasks::consumer_task(ctx, rtx))
            }
            None => tokio::spawn(consumer_task(ctx, rtx)),
        });
    }
    for r in readies {
        match r.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shared.stop_consuming.store(true, Relaxed);
                return Err(BenchError::Client(e));
            }
            Err(_) => {
                shared.stop_consuming.store(true, Relaxed);
                return Err(BenchError::Client(
                    "a consumer task ended before it was ready".into(),
                ));
            }
        }
    }
    let mut start_generation = None;
    let mut lag_probe = None;
    if let Some(g) = &group {
        // Keep the group's formation out of the measurement: wait until
        // every member is in one stable generation.
        start_generation = wait_for_group(admin.native()?, g, consumers_used).await;
        match start_generation {
            Some(gen) => eprintln!(
                "group `{g}`: {consumers_used} member(s) stable in generation {gen}"
            ),
            None => shared.note(format!(
                "group `{g}` was not stable with {consumers_used} member(s) after 15 s; starting anyway"
            )),
        }
        lag_probe = Some(LagProbe {
            client: admin.native()?.clone(),
            group: g.clone(),
            topic: a.topic.clone(),
        });
        if let Some(every) = a.churn_interval {
            let s = shared.clone();
            tokio::spawn(async move {
                let every = Duration::from_secs_f64(every);
                let mut tick = tokio::time::interval_at(Instant::now() + every, every);
                loop {
                    tick.tick().await;
                    if s.stop_producing.load(Relaxed) {
                        return;
                    }
                    s.churn_turn.fetch_add(1, Relaxed);
                }
            });
        }
        tokio::spawn(watch_group_progress(
            admin.native()?.clone(),
            g.clone(),
            a.topic.clone(),
            partitions,
            targets_rx.clone(),
            shared.clone(),
        ));
    }

    let reporter_stop = Arc::new(AtomicBool::new(false));
    let mut ack_hists = Vec::new();
    let mut producer_handles = Vec::new();
    for id in 0..a.producers {
        let h = Arc::new(Mutex::new(TaskHists::default()));
        ack_hists.push(h.clone());
        let quota = a.messages.map(|m| {
            let n = a.producers as u64;
            m / n + u64::from((id as u64) < m % n)
        });
        producer_handles.push(if a.protocol == Protocol::Kafka {
            tokio::spawn(kafka_tasks::producer_task(
                id as u32,
                cfg.clone(),
                shared.clone(),
                h,
                partitions,
                quota,
            ))
        } else if a.direct_batches {
            tokio::spawn(batch_producer_task(
                id as u32,
                cfg.clone(),
                shared.clone(),
                h,
                partitions,
                quota,
            ))
        } else {
            tokio::spawn(producer_task(
                id as u32,
                cfg.clone(),
                shared.clone(),
                h,
                partitions,
                quota,
            ))
        });
    }
    let series = Arc::new(Mutex::new(Vec::new()));
    let reporter = tokio::spawn(
        Reporter {
            cfg: cfg.clone(),
            shared: shared.clone(),
            ack_hists: ack_hists.clone(),
            e2e_hists: e2e_hists.clone(),
            series: series.clone(),
            catchup_total,
            lag: lag_probe.clone(),
        }
        .run(reporter_stop.clone()),
    );
    // Warmup snapshot.
    let warm_snap = {
        let s = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(s.warmup_end).await;
            s.snapshot()
        })
    };
    // Stop producing (or, consume-only, consuming) after warmup + duration,
    // or on Ctrl-C; a second Ctrl-C stops the consumers too.
    {
        let s = shared.clone();
        let deadline = cfg
            .duration
            .map(|d| s.warmup_end + Duration::from_secs_f64(d));
        let consume_only = a.producers == 0;
        tokio::spawn(async move {
            let timer = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = timer => {}
                r = tokio::signal::ctrl_c() => {
                    if r.is_ok() {
                        eprintln!("interrupted: stopping producers (Ctrl-C again stops consumers)");
                    }
                }
            }
            s.stop_producing.store(true, Relaxed);
            if consume_only {
                s.stop_consuming.store(true, Relaxed);
            }
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: stopping consumers");
                s.stop_consuming.store(true, Relaxed);
            }
        });
    }

    let mut fatal: Vec<String> = Vec::new();
    let mut sent: HashMap<(u32, u32), Sent> = HashMap::new();
    for h in producer_handles {
        match h.await {
            Ok(d) => {
                sent.extend(d.sent);
                fatal.extend(d.fatal);
            }
            Err(e) => fatal.push(format!("producer task failed: {e}")),
        }
    }
    let produce_end = shared.snapshot();
    let produce_end_s = produce_end.at;
    let mut drain_s = 0.0;
    if a.producers > 0 && !consumer_handles.is_empty() {
        shared.draining.store(true, Relaxed);
        // With acks=0 the last messages may still be on their way: wait
        // until the end offsets stop moving.
        let mut ends = None;
        for _ in 0..50 {
            let e = admin
                .end_offsets(&a.topic, partitions, OffsetSpec::Latest)
                .await;
            match e {
                Ok(e) => {
                    if a.acks != Acks::None || ends.as_ref() == Some(&e) {
                        ends = Some(e);
                        break;
                    }
                    ends = Some(e);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    shared.note(format!("list offsets for the drain: {e}"));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        match ends {
            Some(e) => {
                let _ = targets_tx.send(Some(Arc::new(e)));
            }
            None => {
                fatal.push("cannot list the topic's end offsets to drain it".into());
                shared.stop_consuming.store(true, Relaxed);
            }
        }
        let s = shared.clone();
        let timeout = Duration::from_secs_f64(a.drain_timeout);
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            s.stop_consuming.store(true, Relaxed);
        });
    }
    let mut verifier_own: HashMap<(u32, u32), Stream> = HashMap::new();
    let mut counts = Counts::default();
    let mut complete = true;
    for h in consumer_handles {
        match h.await {
            Ok(d) => {
                complete &= d.complete;
                fatal.extend(d.fatal);
            }
            Err(e) => {
                complete = false;
                fatal.push(format!("consumer task failed: {e}"));
            }
        }
    }
    for v in verifiers {
        let v = std::mem::replace(&mut *lock(&v), Verifier::new(run_id));
        counts.add(&v.counts);
        verifier_own.extend(v.own);
    }
    let consume_end = shared.snapshot();
    let end_lag = match &lag_probe {
        Some(p) => match p.sample().await {
            Ok(v) => Some(v),
            Err(e) => {
                shared.note(format!("consumer lag at the end: {e}"));
                None
            }
        },
        None => None,
    };
    if a.producers > 0 && consumers_used > 0 {
        drain_s = (consume_end.at - produce_end_s).max(0.0);
    }
    reporter_stop.store(true, Relaxed);
    let _ = reporter.await;
    let warm = if a.warmup > 0.0 {
        // A run shorter than its warmup measures nothing.
        taken(warm_snap).await.unwrap_or(consume_end)
    } else {
        warm_snap.abort();
        Snap::default()
    };

    // Figures.
    let produce = Throughput::new(
        produce_end.acked_msgs.saturating_sub(warm.acked_msgs),
        produce_end.acked_bytes.saturating_sub(warm.acked_bytes),
        (produce_end.at - a.warmup).max(0.0),
    );
    let consume = Throughput::new(
        consume_end.consumed_msgs.saturating_sub(warm.consumed_msgs),
        consume_end
            .consumed_bytes
            .saturating_sub(warm.consumed_bytes),
        if consumers_used > 0 {
            (consume_end.at - a.warmup).max(0.0)
        } else {
            0.0
        },
    );
    let merge_total = |hs: &[Arc<Mutex<TaskHists>>]| {
        let mut m = stats::new_histogram();
        for h in hs {
            let _ = m.add(&lock(h).total);
        }
        summarize(&m)
    };
    let ack_latency = merge_total(&ack_hists);
    let e2e_latency = merge_total(&e2e_hists);
    let series = std::mem::take(&mut *lock(&series));
    let mut backlog = BacklogSummary::default();
    for p in &series {
        if p.backlog_bytes > backlog.max_bytes || p.backlog_msgs > backlog.max_msgs {
            backlog.max_bytes = backlog.max_bytes.max(p.backlog_bytes);
            backlog.max_msgs = backlog.max_msgs.max(p.backlog_msgs);
            backlog.max_at_s = p.t_s;
        }
    }
    let consumed_own = shared.own_msgs.load(Relaxed);
    if catchup_total.is_some() {
        let total = catchup_total.unwrap_or(0);
        backlog.end_msgs = total.saturating_sub(consume_end.consumed_msgs) as i64;
    } else {
        backlog.end_msgs = (consume_end.acked_msgs as i64 - consumed_own as i64).max(0);
        backlog.end_bytes =
            (consume_end.acked_bytes as i64 - shared.own_bytes.load(Relaxed) as i64).max(0);
    }
    let group_report = group.as_ref().map(|g| {
        let mut r = GroupReport {
            group: g.clone(),
            commit: cfg.commit_policy(),
            end_lag_msgs: end_lag,
            start_generation,
            end_generation: shared.newest_generation(),
            rebalances: count_rebalances(&lock(&shared.generations), start_generation),
            commits: shared.commits.load(Relaxed),
            commits_refused: shared.commits_refused.load(Relaxed),
            forced_leaves: shared.churns.load(Relaxed),
            ..GroupReport::default()
        };
        for p in &series {
            if let Some(l) = p.lag_msgs {
                if r.max_lag_msgs.is_none_or(|m| l > m) {
                    r.max_lag_msgs = Some(l);
                    r.max_lag_at_s = p.t_s;
                }
            }
        }
        r
    });
    let rss: Vec<u64> = series.iter().filter_map(|p| p.rss_bytes).collect();
    let memory = MemorySummary {
        source: cfg
            .memory
            .as_ref()
            .map_or("disabled".to_string(), MemorySource::describe),
        start_bytes: rss.first().copied(),
        max_bytes: rss.iter().copied().max(),
        end_bytes: rss.last().copied(),
    };

    // Verification.
    let failed = shared.failed_msgs.load(Relaxed);
    let mut verification = Verification {
        checked: consumers_used > 0,
        complete: complete && consumers_used > 0,
        counts,
        ..Verification::default()
    };
    let mut failures = Vec::new();
    if consumers_used > 0 {
        if a.producers > 0 {
            verification.loss = verify::find_loss(&sent, &verifier_own);
        }
        let c = &verification.counts;
        let l = &verification.loss;
        if l.lost > 0 {
            failures.push(format!(
                "{} acknowledged message(s) never received{}",
                l.lost,
                if complete {
                    ""
                } else {
                    " (consumers stopped before the end: drain timeout, interruption or error)"
                }
            ));
        }
        if c.duplicates > 0 {
            failures.push(format!("{} duplicate message(s)", c.duplicates));
        }
        if c.corrupt > 0 {
            failures.push(format!("{} message(s) failed their checksum", c.corrupt));
        }
        if c.corrupt_batches > 0 {
            failures.push(format!(
                "{} batch(es) rejected as corrupt by the client",
                c.corrupt_batches
            ));
        }
        if c.wrong_partition > 0 {
            failures.push(format!(
                "{} message(s) read from another partition than the one they were sent to",
                c.wrong_partition
            ));
        }
    }
    if failed > 0 {
        failures.push(format!("{failed} message(s) failed delivery (see notes)"));
    }
    if consumers_used > 0 && !complete {
        // Whatever was not read was not verified: never an OK verdict.
        failures.push(
            "consumers did not read up to the end offsets (drain timeout, interruption or an error: see notes)"
                .to_string(),
        );
    }
    verification.failures = failures;
    let mut report = Report {
        params: cfg.params(),
        run_id: format!("{run_id:016x}"),
        started_unix_ms: start_wall / 1_000_000,
        client_threads: cfg.threads,
        host_cpus: host_cpus(),
        partitions,
        warmup_s: a.warmup,
        produce_end_s,
        consume_end_s: consume_end.at,
        drain_s,
        produce,
        produce_failed: failed,
        consume,
        ack_latency,
        e2e_latency,
        backlog,
        group: group_report,
        memory,
        verification,
        errors: lock(&shared.errors).clone(),
        timeseries: series,
    };
    if a.producers > 0 && cfg.produce_shape == RateShape::Unlimited {
        report.errors.push(format!(
            "unlimited rate: producers keep their {} buffer full, so acknowledgement and end-to-end latency include queueing in it (use --rate for latency at a given load)",
            fmt_bytes(a.buffer_bytes as f64)
        ));
    }
    let fatal = (!fatal.is_empty()).then(|| fatal.join("; "));
    Ok((report, fatal))
}

/// Generation changes after the group formed (in `start`): the generations
/// seen past it. Without a known start, every change after the first seen.
fn count_rebalances(seen: &BTreeSet<i32>, start: Option<i32>) -> u64 {
    match start {
        Some(s) => seen.range(s.saturating_add(1)..).count() as u64,
        None => seen.len().saturating_sub(1) as u64,
    }
}

/// The warmup snapshot if it was taken (the run outlasted the warmup).
async fn taken(h: tokio::task::JoinHandle<Snap>) -> Option<Snap> {
    if h.is_finished() {
        h.await.ok()
    } else {
        h.abort();
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn parse(v: &[&str]) -> Result<BenchArgs, clap::Error> {
        let mut all = vec!["bench"];
        all.extend_from_slice(v);
        Cli::try_parse_from(all).map(|c| c.args)
    }

    #[test]
    fn parses_flags() {
        let a = parse(&[
            "--producers",
            "2",
            "--consumers",
            "3",
            "--bootstrap",
            "a:1,b:2",
            "--acks",
            "all",
            "--keys",
            "100-distinct",
            "--compression",
            "zstd",
            "--rate",
            "50",
            "--message-size",
            "512",
            "--warmup",
            "2.5",
            "--topic-fsync",
            "never",
        ])
        .unwrap();
        assert_eq!(a.bootstrap, vec!["a:1", "b:2"]);
        assert_eq!(a.acks, Acks::All);
        assert_eq!(a.keys, Keys::Distinct(100));
        assert_eq!(a.compression, Compression::Zstd);
        assert_eq!(a.rate, Some(50.0 * rate::MB));
        let c = Config::new(a).unwrap();
        assert_eq!(c.duration, Some(30.0));
        assert_eq!(c.from, StartPosition::Latest);
        assert_eq!(c.produce_shape, RateShape::Fixed(50e6));
        assert!(parse(&["--rate", "5", "--burst", "1:2:1:2"]).is_err());
        assert!(parse(&["--keys", "zero"]).is_err());
        assert!(parse(&["--acks", "2"]).is_err());
        assert_eq!(parse(&["--keys", "7"]).unwrap().keys, Keys::Distinct(7));
        assert_eq!(parse(&["--keys", "random"]).unwrap().keys, Keys::Random);
    }

    #[test]
    fn validates_combinations() {
        let bad = |v: &[&str]| Config::new(parse(v).unwrap()).is_err();
        assert!(bad(&["--producers", "0", "--consumers", "0"]));
        assert!(bad(&["--message-size", "10"]));
        assert!(bad(&["--partitions", "0"]));
        assert!(bad(&["--messages", "0"]));
        assert!(bad(&["--topic-fsync", "sometimes"]));
        assert!(bad(&["--producers", "0", "--rate", "5"]));
        let c = Config::new(parse(&["--producers", "0"]).unwrap()).unwrap();
        assert_eq!(c.from, StartPosition::Earliest);
        assert_eq!(c.duration, None);
        let c = Config::new(parse(&["--messages", "10"]).unwrap()).unwrap();
        assert_eq!(c.duration, None);
        let c = Config::new(parse(&["--broker-pid", "5"]).unwrap()).unwrap();
        assert_eq!(c.memory, Some(MemorySource::Pid(5)));
        let c = Config::new(parse(&["--admin", ""]).unwrap()).unwrap();
        assert_eq!(c.memory, None);
        assert!(c.params().get("produce_rate").is_some());
    }

    #[test]
    fn group_flags() {
        let c = Config::new(parse(&["--group", "g1"]).unwrap()).unwrap();
        assert_eq!(c.args.group.as_deref(), Some("g1"));
        assert_eq!(c.reset(), OffsetReset::Latest);
        assert_eq!(c.params()["group"], "g1");
        assert_eq!(c.params()["commit"], "after each batch");
        let c = Config::new(
            parse(&[
                "--group",
                "g1",
                "--commit-interval-ms",
                "250",
                "--from",
                "earliest",
            ])
            .unwrap(),
        )
        .unwrap();
        assert_eq!(c.commit_policy(), "every 250 ms");
        assert_eq!(c.reset(), OffsetReset::Earliest);
        let c = Config::new(parse(&[]).unwrap()).unwrap();
        assert_eq!(c.params()["group"], serde_json::Value::Null);
        assert_eq!(c.params()["commit"], serde_json::Value::Null);
        // --commit-interval-ms needs --group.
        assert!(parse(&["--commit-interval-ms", "100"]).is_err());
        let bad = |v: &[&str]| Config::new(parse(v).unwrap()).is_err();
        assert!(bad(&["--group", ""]));
        assert!(bad(&["--group", "g", "--consumers", "0"]));
        assert!(bad(&["--group", "g", "--commit-interval-ms", "0"]));
        assert!(bad(&["--group", "g", "--churn-interval", "0.01"]));
        assert!(parse(&["--churn-interval", "5"]).is_err());
        let c = Config::new(parse(&["--group", "g", "--churn-interval", "2.5"]).unwrap()).unwrap();
        assert_eq!(c.params()["churn_interval_s"], 2.5);
    }

    #[test]
    fn rebalances_count_generations_after_the_group_formed() {
        let seen: BTreeSet<i32> = [1, 2, 3, 5].into_iter().collect();
        assert_eq!(count_rebalances(&seen, Some(2)), 2);
        assert_eq!(count_rebalances(&seen, Some(5)), 0);
        assert_eq!(count_rebalances(&seen, None), 3);
        assert_eq!(count_rebalances(&BTreeSet::new(), None), 0);
        assert_eq!(count_rebalances(&seen, Some(i32::MAX)), 0);
    }

    #[test]
    fn group_done_when_every_committed_offset_reaches_its_target() {
        let targets: HashMap<u32, u64> = [(0, 10), (1, 0), (2, 5)].into_iter().collect();
        let mut committed: HashMap<u32, u64> = [(0, 10), (2, 4)].into_iter().collect();
        assert!(!group_targets_reached(&committed, &targets, 3));
        committed.insert(2, 6);
        // Partition 1 has nothing to read: no commit needed.
        assert!(group_targets_reached(&committed, &targets, 3));
        // A partition with a target but no commit is not done.
        assert!(!group_targets_reached(
            &committed,
            &[(3, 1)].into_iter().collect(),
            4
        ));
    }
}

#[cfg(test)]
mod direct_batch_tests {
    use super::*;

    #[test]
    fn direct_batches_decode_as_kafka_records_carrying_bench_payloads() {
        let pool = FillerPool::new(7, 100);
        let h = Header {
            run_id: 9,
            producer: 2,
            partition: 1,
            seq: 40,
            sent_ns: 123,
        };
        let b = direct_batch(&h, 5, 100, &pool, 1_000);
        levee_engine::batch::validate_produced(&b, 1 << 20).unwrap();
        let recs = levee_engine::batch::records(&b).unwrap();
        assert_eq!(recs.len(), 5);
        for (i, r) in recs.iter().enumerate() {
            assert_eq!((r.offset, r.key, r.timestamp), (i as u64, None, 1_000));
            let got = payload::verify(r.value.unwrap()).unwrap();
            assert_eq!(got.seq, 40 + i as u64);
        }
    }
}
