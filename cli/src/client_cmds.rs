//! The client side of the `levee` command line: `topic`, `produce`,
//! `consume`, `group`, `cluster`, on the native client (`levee-client`).

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use tokio::sync::mpsc;

use levee_client::group::{
    lag, Assignment, GroupConsumer, GroupConsumerConfig, OffsetCommit, OffsetReset,
};
use levee_client::producer::{Acks, DeliveryFuture, Producer, ProducerConfig};
use levee_client::Compression;
use levee_client::{
    Client, ClientConfig, ClientError, ConsumedRecord, Consumer, ConsumerConfig, OffsetSpec,
    StartPosition, TopicSettings,
};

/// Client commands of the `levee` CLI.
#[derive(Debug, Clone, Subcommand)]
pub enum ClientCommand {
    /// Create, list, describe and delete topics.
    Topic(TopicArgs),
    /// Send one message per line of stdin to a topic.
    Produce(ProduceArgs),
    /// Print a topic's messages, one per line (as a member of a consumer
    /// group unless --partition or --from is given; see --group).
    Consume(ConsumeArgs),
    /// List, describe, reset and delete consumer groups.
    Group(GroupArgs),
    /// The state of a broker cluster.
    Cluster(ClusterArgs),
}

/// `levee cluster ...`
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ClusterCommand,
}

/// Cluster inspection.
#[derive(Debug, Clone, Subcommand)]
pub enum ClusterCommand {
    /// Print each node's address, coordinator role, liveness, partitions
    /// led and under-replicated, then the coordinator quorum's state.
    Status(ClusterStatusArgs),
}

/// `levee cluster status`
#[derive(Debug, Clone, Args)]
pub struct ClusterStatusArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub connect: ConnectArgs,
}

/// The group `levee consume TOPIC` joins when neither `--group`,
/// `--partition` nor `--from` is given.
pub const DEFAULT_GROUP: &str = "levee-default";

/// Where the brokers are.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Broker addresses, HOST:PORT[,HOST:PORT...], tried in order.
    #[arg(
        long,
        env = "LEVEE_BOOTSTRAP",
        default_value = "127.0.0.1:9192",
        value_delimiter = ','
    )]
    pub bootstrap: Vec<String>,
}

/// `levee topic ...`
#[derive(Debug, Clone, Args)]
pub struct TopicArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: TopicCommand,
}

/// Topic administration.
#[derive(Debug, Clone, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create(TopicCreateArgs),
    /// List topic names, one per line.
    List(TopicListArgs),
    /// Print a topic's settings and its partitions' offsets.
    Describe(TopicNameArgs),
    /// Delete a topic and all its data.
    Delete(TopicNameArgs),
}

/// `levee topic create`
#[derive(Debug, Clone, Args)]
pub struct TopicCreateArgs {
    /// Topic name.
    pub name: String,
    /// Number of partitions.
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Replicas per partition.
    #[arg(long, default_value_t = 1)]
    pub replication_factor: u16,
    /// Delete old segments while a partition holds more bytes (default: unlimited).
    #[arg(long)]
    pub retention_bytes: Option<i64>,
    /// Delete segments older than this many ms (default: unlimited).
    #[arg(long)]
    pub retention_ms: Option<i64>,
    /// always, never or interval:MS (default: the broker's default).
    #[arg(long, value_parser = parse_fsync)]
    pub fsync: Option<String>,
    /// Refuse produce once this many bytes are unconsumed (default: off).
    #[arg(long)]
    pub max_backlog_bytes: Option<i64>,
    /// Segment size (default: the broker's default).
    #[arg(long)]
    pub segment_bytes: Option<i64>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub connect: ConnectArgs,
}

/// `levee topic list`
#[derive(Debug, Clone, Args)]
pub struct TopicListArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub connect: ConnectArgs,
}

/// `levee topic describe|delete NAME`
#[derive(Debug, Clone, Args)]
pub struct TopicNameArgs {
    /// Topic name.
    pub name: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub connect: ConnectArgs,
}

/// `levee produce`
#[derive(Debug, Clone, Args)]
pub struct ProduceArgs {
    /// Topic to write to.
    pub topic: String,
    /// 0 (no acknowledgement), 1 (leader appended) or all (durable).
    #[arg(long, default_value = "all")]
    pub acks: Acks,
    /// Split each line at the first SEP: key before, value after (lines
    /// without SEP are sent with no key).
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// Send every message to this partition.
    #[arg(long)]
    pub partition: Option<u32>,
    /// none, lz4 or zstd.
    #[arg(long, default_value = "none", value_parser = parse_compression)]
    pub compression: Compression,
    /// Bytes per partition batch.
    #[arg(long, default_value_t = 64 * 1024)]
    pub batch_size: usize,
    /// Wait up to this long for a batch to fill.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub connect: ConnectArgs,
}

/// `levee consume`
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Which partitions, and from where:
  levee consume T                  joins the group `levee-default`: resumes where the
                                   group left off (its committed offsets), else earliest
  levee consume T --group G        joins group G the same way; the broker splits the
                                   partitions between G's members
  levee consume T --from X         no group: every partition, from X (nothing committed)
  levee consume T --partition P    no group: partition P only, from --from (earliest)

With a group, offsets are committed after each batch is written to stdout, and
the consumer leaves the group on exit (including Ctrl-C). With --group, `--from
earliest|latest` only applies to partitions the group has no committed offset
for (Kafka's auto.offset.reset), while `--from OFFSET` moves every partition
assigned at the first join to OFFSET.")]
pub struct ConsumeArgs {
    /// Topic to read.
    pub topic: String,
    /// earliest, latest or an offset. Without --group: where to start (and
    /// no group is joined). With --group: earliest/latest is the reset
    /// policy for partitions without a committed offset [default: earliest];
    /// an OFFSET moves every assigned partition there.
    #[arg(long)]
    pub from: Option<StartPosition>,
    /// Read only this partition (no consumer group).
    #[arg(long, conflicts_with = "group")]
    pub partition: Option<u32>,
    /// Consume as a member of this consumer group, committing offsets after
    /// each printed batch [default without --partition and --from:
    /// levee-default].
    #[arg(long)]
    pub group: Option<String>,
    /// How the broker assigns partitions to the group's members: range,
    /// roundrobin or sticky.
    #[arg(long, default_value = "range", value_parser = ["range", "roundrobin", "sticky"])]
    pub group_strategy: String,
    /// The broker removes a group member that has not sent a heartbeat for
    /// this long.
    #[arg(long, default_value_t = 10_000)]
    pub session_timeout_ms: u64,
    /// Stop after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many ms without new messages (0: never).
    #[arg(long, default_value_t = 0)]
    pub timeout_ms: u64,
    /// Print `partition<TAB>offset<TAB>` before each value.
    #[arg(long)]
    pub print_offsets: bool,
    /// Print `key<TAB>` before each value.
    #[arg(long)]
    pub print_keys: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub connect: ConnectArgs,
}

/// `levee group ...`
#[derive(Debug, Clone, Args)]
pub struct GroupArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: GroupCommand,
}

/// Consumer group administration.
#[derive(Debug, Clone, Subcommand)]
pub enum GroupCommand {
    /// One line per group: `name<TAB>state<TAB>members`.
    List(GroupListArgs),
    /// Print a group's state, members and their partitions, and the
    /// committed offset, end and lag of every partition it consumes.
    Describe(GroupNameArgs),
    /// Set an inactive group's committed offsets for a topic (stop its
    /// consumers first).
    ResetOffsets(ResetOffsetsArgs),
    /// Delete an inactive group and its committed offsets.
    Delete(GroupNameArgs),
}

/// `levee group list`
#[derive(Debug, Clone, Args)]
pub struct GroupListArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub connect: ConnectArgs,
}

/// `levee group describe|delete NAME`
#[derive(Debug, Clone, Args)]
pub struct GroupNameArgs {
    /// Group name.
    pub group: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub connect: ConnectArgs,
}

/// `levee group reset-offsets`
#[derive(Debug, Clone, Args)]
pub struct ResetOffsetsArgs {
    /// Group name.
    pub group: String,
    /// The topic whose offsets to set.
    #[arg(long)]
    pub topic: String,
    /// earliest, latest, an OFFSET (clamped to the partition's log) or
    /// @TIMESTAMP_MS (the first offset at or after that time; the end if
    /// none).
    #[arg(long, value_name = "TARGET")]
    pub to: ResetTarget,
    /// Only this partition (default: every partition of the topic).
    #[arg(long)]
    pub partition: Option<u32>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub connect: ConnectArgs,
}

/// Where `levee group reset-offsets` moves the committed offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTarget {
    /// The log start.
    Earliest,
    /// The end of the log.
    Latest,
    /// This offset, clamped to `[log start, end]`.
    Offset(u64),
    /// The first offset at or after this time (ms); the end if none.
    Timestamp(i64),
}

impl std::str::FromStr for ResetTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<ResetTarget, String> {
        match s {
            "earliest" | "beginning" => Ok(ResetTarget::Earliest),
            "latest" | "end" => Ok(ResetTarget::Latest),
            _ => {
                if let Some(ts) = s.strip_prefix('@') {
                    ts.parse::<i64>()
                        .ok()
                        .filter(|t| *t >= 0)
                        .map(ResetTarget::Timestamp)
                        .ok_or_else(|| {
                            format!("expected @TIMESTAMP_MS (ms since the Unix epoch), not `{s}`")
                        })
                } else {
                    s.parse::<u64>().map(ResetTarget::Offset).map_err(|_| {
                        format!("expected earliest, latest, an offset or @TIMESTAMP_MS, not `{s}`")
                    })
                }
            }
        }
    }
}

fn parse_fsync(s: &str) -> Result<String, String> {
    match s {
        "always" | "never" => Ok(s.to_string()),
        _ => match s.strip_prefix("interval:").map(str::parse::<u64>) {
            Some(Ok(_)) => Ok(s.to_string()),
            _ => Err(format!("expected always, never or interval:MS, not `{s}`")),
        },
    }
}

fn parse_compression(s: &str) -> Result<Compression, String> {
    match s {
        "none" => Ok(Compression::None),
        "gzip" => Ok(Compression::Gzip),
        "snappy" => Ok(Compression::Snappy),
        "lz4" => Ok(Compression::Lz4),
        "zstd" => Ok(Compression::Zstd),
        _ => Err(format!(
            "expected none, gzip, snappy, lz4 or zstd, not `{s}`"
        )),
    }
}

/// Runs a client command on its own single-threaded tokio runtime. Errors
/// are printed as one `error: ...` line on stderr, with exit code 1.
pub fn run(cmd: ClientCommand) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(execute(cmd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn connect(args: &ConnectArgs) -> Result<Client, ClientError> {
    let mut config = ClientConfig::new(args.bootstrap.iter().map(|s| s.trim().to_string()));
    config.bootstrap.retain(|s| !s.is_empty());
    config.client_id = "levee-cli".into();
    Client::connect(config).await
}

async fn execute(cmd: ClientCommand) -> Result<(), String> {
    match cmd {
        ClientCommand::Topic(t) => topic(t.command).await.or_else(quiet_broken_pipe),
        ClientCommand::Produce(p) => produce(p).await,
        ClientCommand::Consume(c) => consume(c).await,
        ClientCommand::Group(g) => group(g.command).await.or_else(quiet_broken_pipe),
        ClientCommand::Cluster(c) => cluster(c.command).await.or_else(quiet_broken_pipe),
    }
}

async fn cluster(cmd: ClusterCommand) -> Result<(), ClientError> {
    let ClusterCommand::Status(a) = cmd;
    let client = connect(&a.connect).await?;
    let status = client.cluster_status().await?;
    let mut out = std::io::stdout().lock();
    out.write_all(render_cluster_status(&status).as_bytes())?;
    out.flush()?;
    Ok(())
}

/// The text `levee cluster status` prints.
fn render_cluster_status(s: &levee_client::ClusterStatus) -> String {
    let mut out = String::from("ID\tADDRESS\tROLE\tSTATUS\tLED\tUNDER-REPLICATED\n");
    for n in &s.nodes {
        out += &format!(
            "{}\t{}\t{}\t{}\t{}\t{}\n",
            n.node_id,
            n.address.as_deref().unwrap_or("-"),
            n.role.as_deref().filter(|r| !r.is_empty()).unwrap_or("-"),
            if n.live { "live" } else { "down" },
            n.partitions_led,
            n.under_replicated
        );
    }
    out += &format!(
        "quorum: {}/{} coordinators up, ",
        s.coordinators_up, s.coordinators_total
    );
    match s.leader {
        Some(l) => out += &format!("leader: node {l}\n"),
        None => {
            out += "no leader: metadata changes (topic creation, leader election) are unavailable\n"
        }
    }
    out
}

fn node_list(v: Option<&Vec<u32>>) -> String {
    match v {
        Some(v) if !v.is_empty() => v.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
        _ => "-".to_string(),
    }
}

/// A closed stdout (`| head`) ends an admin command quietly.
fn quiet_broken_pipe(e: ClientError) -> Result<(), String> {
    match &e {
        ClientError::Io(io) if io.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        _ => Err(e.to_string()),
    }
}

fn or_text(v: Option<i64>, none: &str) -> String {
    v.map_or_else(|| none.to_string(), |v| v.to_string())
}

async fn topic(cmd: TopicCommand) -> Result<(), ClientError> {
    let mut out = std::io::stdout().lock();
    match cmd {
        TopicCommand::Create(a) => {
            let client = connect(&a.connect).await?;
            let settings = TopicSettings {
                partitions: a.partitions,
                replication_factor: a.replication_factor,
                retention_bytes: a.retention_bytes,
                retention_ms: a.retention_ms,
                fsync: a.fsync,
                max_backlog_bytes: a.max_backlog_bytes,
                segment_bytes: a.segment_bytes,
            };
            client.create_topic(&a.name, &settings).await?;
            writeln!(
                out,
                "created topic {} with {} partition(s)",
                a.name, a.partitions
            )?;
        }
        TopicCommand::List(a) => {
            let client = connect(&a.connect).await?;
            let mut names = client.list_topics().await?;
            names.sort();
            for n in names {
                writeln!(out, "{n}")?;
            }
        }
        TopicCommand::Describe(a) => {
            let client = connect(&a.connect).await?;
            let t = client.describe_topic(&a.name).await?;
            let s = &t.settings;
            writeln!(out, "topic: {}", t.name)?;
            writeln!(out, "partitions: {}", t.partition_count())?;
            writeln!(out, "replication_factor: {}", s.replication_factor)?;
            writeln!(
                out,
                "retention_bytes: {}",
                or_text(s.retention_bytes, "unlimited")
            )?;
            writeln!(
                out,
                "retention_ms: {}",
                or_text(s.retention_ms, "unlimited")
            )?;
            writeln!(out, "fsync: {}", s.fsync.as_deref().unwrap_or("default"))?;
            writeln!(
                out,
                "max_backlog_bytes: {}",
                or_text(s.max_backlog_bytes, "off")
            )?;
            writeln!(
                out,
                "segment_bytes: {}",
                or_text(s.segment_bytes, "default")
            )?;
            writeln!(
                out,
                "partition\tleader\tlog_start\tlog_end\thigh_watermark\tsize_bytes\tleader_epoch\treplicas\tisr"
            )?;
            for p in &t.partitions {
                let leader = if p.leader == levee_client::NO_LEADER {
                    "none".to_string()
                } else {
                    p.leader.to_string()
                };
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    p.partition,
                    leader,
                    p.log_start_offset,
                    p.log_end_offset,
                    p.high_watermark,
                    p.size_bytes,
                    p.leader_epoch,
                    node_list(p.replicas.as_ref()),
                    node_list(p.isr.as_ref())
                )?;
            }
        }
        TopicCommand::Delete(a) => {
            let client = connect(&a.connect).await?;
            client.delete_topic(&a.name).await?;
            writeln!(out, "deleted topic {}", a.name)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Lines of stdin, read on a plain thread so a slow pipe never blocks the
/// runtime. Each chunk holds up to 256 lines without their `\n`.
fn stdin_lines() -> mpsc::Receiver<std::io::Result<Vec<Vec<u8>>>> {
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        let mut chunk = Vec::with_capacity(256);
        loop {
            let mut line = Vec::new();
            match input.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                    }
                    chunk.push(line);
                    if chunk.len() == 256
                        && tx
                            .blocking_send(Ok(std::mem::replace(
                                &mut chunk,
                                Vec::with_capacity(256),
                            )))
                            .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
        if !chunk.is_empty() {
            let _ = tx.blocking_send(Ok(chunk));
        }
    });
    rx
}

fn split_key(line: Vec<u8>, sep: Option<&[u8]>) -> (Option<Vec<u8>>, Vec<u8>) {
    let Some(sep) = sep.filter(|s| !s.is_empty()) else {
        return (None, line);
    };
    match line.windows(sep.len()).position(|w| w == sep) {
        Some(i) => (Some(line[..i].to_vec()), line[i + sep.len()..].to_vec()),
        None => (None, line),
    }
}

#[derive(Default)]
struct Tally {
    total: u64,
    failed: u64,
    first_error: Option<ClientError>,
}

impl Tally {
    fn record(&mut self, r: Result<(), ClientError>) {
        self.total += 1;
        if let Err(e) = r {
            self.failed += 1;
            if self.first_error.is_none() {
                self.first_error = Some(e);
            }
        }
    }
}

async fn produce(a: ProduceArgs) -> Result<(), String> {
    let client = connect(&a.connect).await.map_err(|e| e.to_string())?;
    // Fail fast (once, not per message) if the topic or partition is missing.
    let info = client
        .describe_topic(&a.topic)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(p) = a.partition {
        let n = info.partition_count();
        if p >= n {
            return Err(format!(
                "topic `{}` has {n} partition(s) (0..{n}); there is no partition {p}",
                a.topic
            ));
        }
    }
    let producer = Producer::new(
        client,
        ProducerConfig {
            acks: a.acks,
            compression: a.compression,
            batch_size: a.batch_size,
            linger: Duration::from_millis(a.linger_ms),
            partition: a.partition,
            ..ProducerConfig::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let sep = a.key_separator.as_deref().map(str::as_bytes);
    let mut lines = stdin_lines();
    let mut pending: VecDeque<DeliveryFuture> = VecDeque::new();
    let mut tally = Tally::default();
    let mut read_error = None;
    while let Some(chunk) = lines.recv().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                read_error = Some(e);
                break;
            }
        };
        for line in chunk {
            let (key, value) = split_key(line, sep);
            match producer.send(&a.topic, key, value).await {
                Ok(f) => pending.push_back(f),
                Err(e) => tally.record(Err(e)),
            }
            // Keep the list of outstanding futures bounded: reports arrive
            // roughly in order, so wait for the oldest.
            while pending.len() > 100_000 {
                if let Some(f) = pending.pop_front() {
                    tally.record(f.await.map(drop));
                }
            }
        }
    }
    let flushed = producer.flush().await;
    for f in pending {
        tally.record(f.await.map(drop));
    }
    if let Err(e) = flushed {
        return Err(e.to_string());
    }
    if let Some(e) = read_error {
        return Err(format!(
            "reading stdin failed after {} message(s): {e}",
            tally.total
        ));
    }
    if tally.failed > 0 {
        let why = tally.first_error.map(|e| e.to_string()).unwrap_or_default();
        return Err(format!(
            "{} of {} message(s) failed: {why}",
            tally.failed, tally.total
        ));
    }
    Ok(())
}

/// How `levee consume` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ConsumeMode {
    /// No group: these partitions (`None`: all) from `from`.
    Manual {
        partitions: Option<Vec<u32>>,
        from: StartPosition,
    },
    /// As a member of `group`.
    Group {
        group: String,
        /// For partitions without a committed offset.
        reset: OffsetReset,
        /// Move every partition assigned at the first join here.
        seek: Option<u64>,
    },
}

fn consume_mode(a: &ConsumeArgs) -> ConsumeMode {
    if let Some(p) = a.partition {
        return ConsumeMode::Manual {
            partitions: Some(vec![p]),
            from: a.from.unwrap_or(StartPosition::Earliest),
        };
    }
    let group = match (&a.group, a.from) {
        (Some(g), _) => g.clone(),
        (None, Some(from)) => {
            return ConsumeMode::Manual {
                partitions: None,
                from,
            }
        }
        (None, None) => DEFAULT_GROUP.to_string(),
    };
    let (reset, seek) = match a.from {
        None | Some(StartPosition::Earliest) | Some(StartPosition::Timestamp(_)) => {
            (OffsetReset::Earliest, None)
        }
        Some(StartPosition::Latest) => (OffsetReset::Latest, None),
        Some(StartPosition::Offset(o)) => (OffsetReset::Earliest, Some(o)),
    };
    ConsumeMode::Group { group, reset, seek }
}

/// What `levee consume` reads from.
enum Source {
    Manual(Consumer),
    Group(Box<GroupConsumer>),
}

impl Source {
    async fn poll(&mut self) -> Result<Vec<ConsumedRecord>, ClientError> {
        match self {
            Source::Manual(c) => c.poll().await,
            Source::Group(g) => g.poll().await,
        }
    }
}

/// For records fetched but not printed: the first offset of each partition,
/// where its position must go back to before committing.
fn unprinted_positions(rest: &[ConsumedRecord]) -> Vec<(String, u32, u64)> {
    let mut out: Vec<(String, u32, u64)> = Vec::new();
    for r in rest {
        if !out
            .iter()
            .any(|(t, p, _)| *t == r.topic && *p == r.partition)
        {
            out.push((r.topic.clone(), r.partition, r.offset));
        }
    }
    out
}

async fn consume(a: ConsumeArgs) -> Result<(), String> {
    let client = connect(&a.connect).await.map_err(|e| e.to_string())?;
    let max_wait = match a.timeout_ms {
        0 => Duration::from_millis(500),
        t => Duration::from_millis(t.min(500)),
    };
    let fetch = ConsumerConfig {
        max_wait,
        ..ConsumerConfig::default()
    };
    let mut source = match consume_mode(&a) {
        ConsumeMode::Manual { partitions, from } => {
            let mut consumer = Consumer::new(client, fetch);
            consumer
                .assign(&a.topic, partitions, from)
                .await
                .map_err(|e| e.to_string())?;
            Source::Manual(consumer)
        }
        ConsumeMode::Group { group, reset, seek } => {
            // Fail fast on a missing topic instead of waiting for partitions.
            client
                .describe_topic(&a.topic)
                .await
                .map_err(|e| e.to_string())?;
            if a.count == Some(0) {
                return Ok(());
            }
            let config = GroupConsumerConfig {
                strategy: a.group_strategy.clone(),
                session_timeout: Duration::from_millis(a.session_timeout_ms),
                // Committed explicitly after each printed batch.
                auto_commit: None,
                reset,
                fetch,
                ..GroupConsumerConfig::new(group, [a.topic.clone()])
            };
            let mut gc = GroupConsumer::join(client, config)
                .await
                .map_err(|e| e.to_string())?;
            if let Some(o) = seek {
                let assigned: Vec<(String, u32)> = gc
                    .assignment()
                    .iter()
                    .flat_map(|(t, ps)| ps.iter().map(move |&p| (t.clone(), p)))
                    .collect();
                for (t, p) in assigned {
                    gc.seek(&t, p, o).map_err(|e| e.to_string())?;
                }
            }
            Source::Group(Box::new(gc))
        }
    };
    if a.count == Some(0) {
        return Ok(());
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 << 10, stdout.lock());
    let mut seen: u64 = 0;
    let mut last_data = Instant::now();
    let idle_limit = (a.timeout_ms > 0).then(|| Duration::from_millis(a.timeout_ms));
    let is_group = matches!(source, Source::Group(_));
    let interrupted = async {
        if is_group {
            // Leave the group cleanly on Ctrl-C.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(interrupted);
    let result = 'outer: loop {
        let polled = tokio::select! {
            r = source.poll() => r,
            _ = &mut interrupted => break Ok(()),
        };
        let records = match polled {
            Ok(r) => r,
            Err(e) if e.is_retriable() || e.needs_rejoin() => {
                tracing::debug!(error = %e, "poll failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                Vec::new()
            }
            Err(e) => break Err(e.to_string()),
        };
        let got_data = !records.is_empty();
        let mut done = false;
        let mut printed = records.len();
        for (i, r) in records.iter().enumerate() {
            if let Err(e) = print_record(&mut out, r, a.print_offsets, a.print_keys) {
                break 'outer write_result(e);
            }
            seen += 1;
            if a.count.is_some_and(|n| seen >= n) {
                done = true;
                printed = i + 1;
                break;
            }
        }
        if let Source::Group(gc) = &mut source {
            // Commit only what has reached stdout.
            if let Err(e) = out.flush() {
                break 'outer write_result(e);
            }
            for (t, p, o) in unprinted_positions(&records[printed..]) {
                if let Err(e) = gc.seek(&t, p, o) {
                    break 'outer Err(e.to_string());
                }
            }
            match gc.commit().await {
                Ok(()) => {}
                Err(e) if e.is_retriable() || e.needs_rejoin() => {
                    // Not fatal: the messages may be printed again by
                    // whichever member reads the partition next.
                    tracing::warn!(error = %e, "commit failed");
                }
                Err(e) => break 'outer Err(e.to_string()),
            }
        }
        if done {
            break Ok(());
        }
        if got_data {
            last_data = Instant::now();
            continue;
        }
        if let Err(e) = out.flush() {
            break 'outer write_result(e);
        }
        if let Some(limit) = idle_limit {
            if last_data.elapsed() >= limit {
                break match a.count {
                    Some(n) => Err(format!(
                        "no new messages for {} ms; received {seen} of {n}",
                        a.timeout_ms
                    )),
                    None => Ok(()),
                };
            }
        }
    };
    let result = match out.flush() {
        Ok(()) => result,
        Err(e) => result.and(write_result(e)),
    };
    if let Source::Group(gc) = source {
        if let Err(e) = gc.close().await {
            tracing::warn!(error = %e, "leaving the group failed");
        }
    }
    result
}

async fn group(cmd: GroupCommand) -> Result<(), ClientError> {
    let mut out = std::io::stdout().lock();
    match cmd {
        GroupCommand::List(a) => {
            let client = connect(&a.connect).await?;
            for g in client.list_groups().await? {
                writeln!(out, "{}\t{}\t{}", g.group, g.state, g.members)?;
            }
        }
        GroupCommand::Describe(a) => {
            let client = connect(&a.connect).await?;
            let g = client.describe_group(&a.group).await?;
            writeln!(out, "group: {}", g.group)?;
            writeln!(out, "state: {}", g.state)?;
            writeln!(out, "generation: {}", g.generation)?;
            writeln!(out, "strategy: {}", or_dash(&g.strategy))?;
            writeln!(out, "members: {}", g.members.len())?;
            writeln!(out, "member\tclient_id\thost\tpartitions")?;
            for m in &g.members {
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}",
                    m.member_id,
                    or_dash(&m.client_id),
                    or_dash(&m.host),
                    format_assignment(&m.assignment)
                )?;
            }
            writeln!(out, "topic\tpartition\tcommitted\tend\tlag\tmember")?;
            let mut topics: Vec<&str> = g.offsets.iter().map(|o| o.topic.as_str()).collect();
            for m in &g.members {
                topics.extend(m.assignment.keys().map(String::as_str));
            }
            topics.sort_unstable();
            topics.dedup();
            for topic in topics {
                let committed = |p: u32| {
                    g.offsets
                        .iter()
                        .find(|o| o.topic == topic && o.partition == p)
                        .map(|o| o.offset)
                };
                let owner = |p: u32| {
                    g.members
                        .iter()
                        .find(|m| m.assignment.get(topic).is_some_and(|ps| ps.contains(&p)))
                        .map_or("-", |m| m.member_id.as_str())
                };
                match client.describe_topic(topic).await {
                    Ok(info) => {
                        for p in &info.partitions {
                            let c = committed(p.partition);
                            writeln!(
                                out,
                                "{topic}\t{}\t{}\t{}\t{}\t{}",
                                p.partition,
                                c.map_or_else(|| "-".to_string(), |c| c.to_string()),
                                p.high_watermark,
                                lag(c, p.log_start_offset, p.high_watermark),
                                owner(p.partition)
                            )?;
                        }
                    }
                    // A deleted topic: its committed offsets remain.
                    Err(ClientError::UnknownTopicOrPartition { .. }) => {
                        for o in g.offsets.iter().filter(|o| o.topic == topic) {
                            writeln!(
                                out,
                                "{topic}\t{}\t{}\t-\t-\t{}",
                                o.partition,
                                o.offset,
                                owner(o.partition)
                            )?;
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        GroupCommand::ResetOffsets(a) => {
            let client = connect(&a.connect).await?;
            let offsets = reset_targets(&client, &a.topic, a.partition, a.to).await?;
            client.commit_offsets(&a.group, "", -1, &offsets).await?;
            writeln!(out, "topic\tpartition\tnew_offset")?;
            for o in &offsets {
                if let Some(v) = o.offset {
                    writeln!(out, "{}\t{}\t{v}", o.topic, o.partition)?;
                }
            }
        }
        GroupCommand::Delete(a) => {
            let client = connect(&a.connect).await?;
            client.delete_group(&a.group).await?;
            writeln!(out, "deleted group {}", a.group)?;
        }
    }
    out.flush()?;
    Ok(())
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// `topic:0,1,2 other:3`, or `-` for none.
fn format_assignment(a: &Assignment) -> String {
    let parts: Vec<String> = a
        .iter()
        .filter(|(_, ps)| !ps.is_empty())
        .map(|(t, ps)| {
            let ps: Vec<String> = ps.iter().map(u32::to_string).collect();
            format!("{t}:{}", ps.join(","))
        })
        .collect();
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(" ")
    }
}

/// Where an explicit offset lands: inside `[log_start, end]`.
fn clamp_offset(o: u64, log_start: u64, end: u64) -> u64 {
    o.max(log_start).min(end.max(log_start))
}

/// The offsets `reset-offsets` commits, one per partition.
async fn reset_targets(
    client: &Client,
    topic: &str,
    partition: Option<u32>,
    to: ResetTarget,
) -> Result<Vec<OffsetCommit>, ClientError> {
    let info = client.describe_topic(topic).await?;
    let count = info.partition_count();
    let partitions: Vec<u32> = match partition {
        Some(p) if p >= count => {
            return Err(ClientError::InvalidArgument(format!(
                "topic `{topic}` has {count} partition(s) (0..{count}); there is no partition {p}"
            )))
        }
        Some(p) => vec![p],
        None => (0..count).collect(),
    };
    let bounds = |p: u32| {
        info.partitions
            .iter()
            .find(|i| i.partition == p)
            .map(|i| (i.log_start_offset, i.high_watermark))
    };
    let looked_up = match to {
        ResetTarget::Earliest => Some(OffsetSpec::Earliest),
        ResetTarget::Latest => Some(OffsetSpec::Latest),
        ResetTarget::Timestamp(t) => Some(OffsetSpec::Timestamp(t)),
        ResetTarget::Offset(_) => None,
    };
    let found = match looked_up {
        Some(spec) => client.list_offsets(topic, &partitions, spec).await?,
        None => Vec::new(),
    };
    let mut ends = Vec::new();
    if matches!(to, ResetTarget::Timestamp(_)) {
        ends = client
            .list_offsets(topic, &partitions, OffsetSpec::Latest)
            .await?;
    }
    let lookup =
        |v: &[(u32, Option<u64>)], p: u32| v.iter().find(|(fp, _)| *fp == p).and_then(|(_, o)| *o);
    let mut out = Vec::with_capacity(partitions.len());
    for p in partitions {
        let offset = match to {
            ResetTarget::Offset(o) => {
                let (start, end) = bounds(p).ok_or_else(|| {
                    ClientError::Protocol(format!("describe topic returned no partition {p}"))
                })?;
                clamp_offset(o, start, end)
            }
            ResetTarget::Timestamp(_) => match lookup(&found, p).or_else(|| lookup(&ends, p)) {
                Some(o) => o,
                None => {
                    return Err(ClientError::Protocol(format!(
                        "list offsets returned no offset for {topic}/{p}"
                    )))
                }
            },
            ResetTarget::Earliest | ResetTarget::Latest => lookup(&found, p).ok_or_else(|| {
                ClientError::Protocol(format!("list offsets returned no offset for {topic}/{p}"))
            })?,
        };
        out.push(OffsetCommit::new(topic, p, offset));
    }
    Ok(out)
}

/// A closed stdout (`| head`) ends the command quietly.
fn write_result(e: std::io::Error) -> Result<(), String> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(format!("writing to stdout failed: {e}"))
    }
}

fn print_record(
    out: &mut impl Write,
    r: &ConsumedRecord,
    offsets: bool,
    keys: bool,
) -> std::io::Result<()> {
    if offsets {
        write!(out, "{}\t{}\t", r.partition, r.offset)?;
    }
    if keys {
        out.write_all(r.key.as_deref().unwrap_or_default())?;
        out.write_all(b"\t")?;
    }
    out.write_all(r.value.as_deref().unwrap_or_default())?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: ClientCommand,
    }

    fn parse(args: &[&str]) -> Result<ClientCommand, clap::Error> {
        let m = Cli::command()
            .try_get_matches_from(std::iter::once("levee").chain(args.iter().copied()))?;
        Cli::from_arg_matches(&m).map(|c| c.cmd)
    }

    #[test]
    fn command_line_contract() {
        Cli::command().debug_assert();
        let ClientCommand::Topic(TopicArgs {
            command: TopicCommand::Create(c),
        }) = parse(&[
            "topic",
            "create",
            "t",
            "--partitions",
            "3",
            "--fsync",
            "interval:100",
            "--retention-bytes",
            "1000",
            "--max-backlog-bytes",
            "5",
            "--bootstrap",
            "a:1,b:2",
        ])
        .unwrap()
        else {
            panic!("not a topic create");
        };
        assert_eq!(c.partitions, 3);
        assert_eq!(c.fsync.as_deref(), Some("interval:100"));
        assert_eq!(c.retention_bytes, Some(1000));
        assert_eq!(c.connect.bootstrap, vec!["a:1", "b:2"]);
        assert!(parse(&["topic", "create", "t", "--fsync", "sometimes"]).is_err());

        let ClientCommand::Produce(p) = parse(&[
            "produce",
            "t",
            "--acks",
            "0",
            "--key-separator",
            ":",
            "--compression",
            "zstd",
            "--partition",
            "2",
            "--batch-size",
            "100",
            "--linger-ms",
            "0",
        ])
        .unwrap() else {
            panic!("not produce");
        };
        assert_eq!(p.acks, Acks::None);
        assert_eq!(p.compression, Compression::Zstd);
        assert_eq!(p.partition, Some(2));
        assert!(parse(&["produce", "t", "--compression", "brotli"]).is_err());
        assert!(parse(&["produce", "t", "--compression", "gzip"]).is_ok());

        let ClientCommand::Consume(c) = parse(&[
            "consume",
            "t",
            "--from",
            "42",
            "--count",
            "5",
            "--timeout-ms",
            "100",
            "--print-offsets",
            "--print-keys",
        ])
        .unwrap() else {
            panic!("not consume");
        };
        assert_eq!(c.from, Some(StartPosition::Offset(42)));
        assert_eq!(c.count, Some(5));
        assert!(c.print_offsets && c.print_keys);
        let ClientCommand::Consume(c) = parse(&["consume", "t", "--from", "latest"]).unwrap()
        else {
            panic!("not consume");
        };
        assert_eq!(c.from, Some(StartPosition::Latest));
        assert_eq!(c.timeout_ms, 0);
        for sub in [
            &["topic", "list"][..],
            &["topic", "describe", "x"],
            &["topic", "delete", "x"],
        ] {
            assert!(parse(sub).is_ok(), "{sub:?}");
        }
    }

    fn consume_args(args: &[&str]) -> ConsumeArgs {
        let mut v = vec!["consume", "t"];
        v.extend_from_slice(args);
        match parse(&v) {
            Ok(ClientCommand::Consume(c)) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn consume_mode_follows_group_partition_and_from() {
        let group = |g: &str, reset, seek| ConsumeMode::Group {
            group: g.into(),
            reset,
            seek,
        };
        // Neither: the default group, resuming, else from the start.
        assert_eq!(
            consume_mode(&consume_args(&[])),
            group(DEFAULT_GROUP, OffsetReset::Earliest, None)
        );
        // --from alone: no group, every partition from there (as before groups).
        assert_eq!(
            consume_mode(&consume_args(&["--from", "earliest"])),
            ConsumeMode::Manual {
                partitions: None,
                from: StartPosition::Earliest
            }
        );
        assert_eq!(
            consume_mode(&consume_args(&["--from", "7"])),
            ConsumeMode::Manual {
                partitions: None,
                from: StartPosition::Offset(7)
            }
        );
        // --partition: no group.
        assert_eq!(
            consume_mode(&consume_args(&["--partition", "2"])),
            ConsumeMode::Manual {
                partitions: Some(vec![2]),
                from: StartPosition::Earliest
            }
        );
        assert_eq!(
            consume_mode(&consume_args(&["--partition", "2", "--from", "latest"])),
            ConsumeMode::Manual {
                partitions: Some(vec![2]),
                from: StartPosition::Latest
            }
        );
        // --group: --from earliest|latest is the reset policy, OFFSET seeks.
        assert_eq!(
            consume_mode(&consume_args(&["--group", "g"])),
            group("g", OffsetReset::Earliest, None)
        );
        assert_eq!(
            consume_mode(&consume_args(&["--group", "g", "--from", "latest"])),
            group("g", OffsetReset::Latest, None)
        );
        assert_eq!(
            consume_mode(&consume_args(&["--group", "g", "--from", "earliest"])),
            group("g", OffsetReset::Earliest, None)
        );
        assert_eq!(
            consume_mode(&consume_args(&["--group", "g", "--from", "42"])),
            group("g", OffsetReset::Earliest, Some(42))
        );
        assert!(parse(&["consume", "t", "--group", "g", "--partition", "1"]).is_err());
        let c = consume_args(&[
            "--group",
            "g",
            "--group-strategy",
            "sticky",
            "--session-timeout-ms",
            "3000",
        ]);
        assert_eq!(c.group_strategy, "sticky");
        assert_eq!(c.session_timeout_ms, 3000);
        assert_eq!(consume_args(&[]).group_strategy, "range");
        assert_eq!(consume_args(&[]).session_timeout_ms, 10_000);
        assert!(parse(&["consume", "t", "--group-strategy", "random"]).is_err());
    }

    #[test]
    fn group_command_line() {
        let ClientCommand::Group(GroupArgs {
            command: GroupCommand::ResetOffsets(r),
        }) = parse(&[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to",
            "@1700000000000",
            "--partition",
            "3",
            "--bootstrap",
            "h:1",
        ])
        .unwrap()
        else {
            panic!("not reset-offsets");
        };
        assert_eq!(r.group, "g");
        assert_eq!(r.topic, "t");
        assert_eq!(r.to, ResetTarget::Timestamp(1_700_000_000_000));
        assert_eq!(r.partition, Some(3));
        assert_eq!(r.connect.bootstrap, vec!["h:1"]);
        assert!(parse(&["group", "reset-offsets", "g", "--to", "earliest"]).is_err());
        assert!(parse(&["group", "reset-offsets", "g", "--topic", "t"]).is_err());
        for sub in [
            &["group", "list"][..],
            &["group", "describe", "g"],
            &["group", "delete", "g"],
        ] {
            assert!(parse(sub).is_ok(), "{sub:?}");
        }
        assert!(parse(&["group", "describe"]).is_err());
    }

    #[test]
    fn cluster_status_command_line() {
        let ClientCommand::Cluster(ClusterArgs {
            command: ClusterCommand::Status(a),
        }) = parse(&["cluster", "status", "--bootstrap", "a:1,b:2,c:3"]).unwrap()
        else {
            panic!("not cluster status");
        };
        assert_eq!(a.connect.bootstrap, vec!["a:1", "b:2", "c:3"]);
        assert!(parse(&["cluster"]).is_err());
        assert!(parse(&["cluster", "status", "extra"]).is_err());
    }

    #[test]
    fn cluster_status_rendering() {
        let node = |id: u32, role: &str, live: bool| levee_client::NodeStatus {
            node_id: id,
            address: Some(format!("10.0.0.{id}:9092")),
            role: Some(role.into()),
            live,
            partitions_led: id * 2,
            under_replicated: u32::from(!live),
        };
        let mut s = levee_client::ClusterStatus {
            nodes: vec![node(1, "leader", true), node(2, "follower", false)],
            coordinators_up: 3,
            coordinators_total: 3,
            leader: Some(1),
        };
        assert_eq!(
            render_cluster_status(&s),
            "ID\tADDRESS\tROLE\tSTATUS\tLED\tUNDER-REPLICATED\n\
             1\t10.0.0.1:9092\tleader\tlive\t2\t0\n\
             2\t10.0.0.2:9092\tfollower\tdown\t4\t1\n\
             quorum: 3/3 coordinators up, leader: node 1\n"
        );
        s.coordinators_up = 1;
        s.leader = None;
        assert!(render_cluster_status(&s).ends_with(
            "quorum: 1/3 coordinators up, no leader: metadata changes (topic creation, leader election) are unavailable\n"
        ));
    }

    #[test]
    fn reset_targets_parse() {
        assert_eq!("earliest".parse(), Ok(ResetTarget::Earliest));
        assert_eq!("latest".parse(), Ok(ResetTarget::Latest));
        assert_eq!("0".parse(), Ok(ResetTarget::Offset(0)));
        assert_eq!("123".parse(), Ok(ResetTarget::Offset(123)));
        assert_eq!("@0".parse(), Ok(ResetTarget::Timestamp(0)));
        assert_eq!(
            "@1700000000000".parse(),
            Ok(ResetTarget::Timestamp(1_700_000_000_000))
        );
        for bad in ["", "-1", "@", "@-5", "@x", "soon", "1.5"] {
            let e = bad.parse::<ResetTarget>().unwrap_err();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
    }

    #[test]
    fn explicit_offsets_are_clamped_to_the_log() {
        assert_eq!(clamp_offset(5, 0, 10), 5);
        assert_eq!(clamp_offset(50, 0, 10), 10);
        assert_eq!(clamp_offset(1, 3, 10), 3);
        assert_eq!(clamp_offset(0, 0, 0), 0);
    }

    #[test]
    fn unprinted_records_rewind_each_partition_to_its_first() {
        let r = |p: u32, o: u64| ConsumedRecord {
            topic: "t".into(),
            partition: p,
            offset: o,
            timestamp: 0,
            key: None,
            value: None,
            headers: vec![],
        };
        let rest = [r(0, 5), r(0, 6), r(1, 9), r(0, 7), r(1, 10)];
        assert_eq!(
            unprinted_positions(&rest),
            vec![("t".to_string(), 0, 5), ("t".to_string(), 1, 9)]
        );
        assert!(unprinted_positions(&[]).is_empty());
    }

    #[test]
    fn assignments_print_compactly() {
        let mut a = Assignment::new();
        assert_eq!(format_assignment(&a), "-");
        a.insert("t".into(), vec![0, 1, 2]);
        a.insert("u".into(), vec![]);
        a.insert("v".into(), vec![3]);
        assert_eq!(format_assignment(&a), "t:0,1,2 v:3");
        assert_eq!(or_dash(""), "-");
        assert_eq!(or_dash("x"), "x");
    }

    #[test]
    fn key_separator_splits_at_the_first() {
        assert_eq!(
            split_key(b"k:v:w".to_vec(), Some(b":")),
            (Some(b"k".to_vec()), b"v:w".to_vec())
        );
        assert_eq!(
            split_key(b"kv".to_vec(), Some(b":")),
            (None, b"kv".to_vec())
        );
        assert_eq!(
            split_key(b"a::b".to_vec(), Some(b"::")),
            (Some(b"a".to_vec()), b"b".to_vec())
        );
        assert_eq!(split_key(b"k:v".to_vec(), None), (None, b"k:v".to_vec()));
    }

    #[test]
    fn record_printing() {
        let r = ConsumedRecord {
            topic: "t".into(),
            partition: 1,
            offset: 7,
            timestamp: 0,
            key: Some(b"k".to_vec()),
            value: Some(b"v".to_vec()),
            headers: vec![],
        };
        let mut out = Vec::new();
        print_record(&mut out, &r, true, true).unwrap();
        print_record(&mut out, &r, false, false).unwrap();
        assert_eq!(out, b"1\t7\tk\tv\nv\n");
    }
}
