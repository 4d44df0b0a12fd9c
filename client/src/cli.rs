//! The client side of the `levee` command line: `topic`, `produce`,
//! `consume`. The broker binary embeds [`ClientCommand`] in its own parser
//! (`#[command(flatten)]`) and calls [`run`].

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use tokio::sync::mpsc;

use crate::client::{Client, ClientConfig, TopicSettings};
use crate::consumer::{Consumer, ConsumerConfig, StartPosition};
use crate::error::ClientError;
use crate::producer::{Acks, DeliveryFuture, Producer, ProducerConfig};
use crate::Compression;

/// Client commands of the `levee` CLI.
#[derive(Debug, Clone, Subcommand)]
pub enum ClientCommand {
    /// Create, list, describe and delete topics.
    Topic(TopicArgs),
    /// Send one message per line of stdin to a topic.
    Produce(ProduceArgs),
    /// Print a topic's messages, one per line.
    Consume(ConsumeArgs),
}

/// Where the brokers are.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Broker addresses, HOST:PORT[,HOST:PORT...], tried in order.
    #[arg(
        long,
        env = "LEVEE_BOOTSTRAP",
        default_value = "127.0.0.1:9092",
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
pub struct ConsumeArgs {
    /// Topic to read.
    pub topic: String,
    /// earliest, latest or an offset.
    #[arg(long, default_value = "earliest")]
    pub from: StartPosition,
    /// Read only this partition (default: all).
    #[arg(long)]
    pub partition: Option<u32>,
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
        "lz4" => Ok(Compression::Lz4),
        "zstd" => Ok(Compression::Zstd),
        _ => Err(format!("expected none, lz4 or zstd, not `{s}`")),
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
        ClientCommand::Topic(t) => topic(t.command).await.map_err(|e| e.to_string()),
        ClientCommand::Produce(p) => produce(p).await,
        ClientCommand::Consume(c) => consume(c).await,
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
                "partition\tleader\tlog_start\tlog_end\thigh_watermark\tsize_bytes"
            )?;
            for p in &t.partitions {
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    p.partition,
                    p.leader,
                    p.log_start_offset,
                    p.log_end_offset,
                    p.high_watermark,
                    p.size_bytes
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
    );
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

async fn consume(a: ConsumeArgs) -> Result<(), String> {
    let client = connect(&a.connect).await.map_err(|e| e.to_string())?;
    let max_wait = match a.timeout_ms {
        0 => Duration::from_millis(500),
        t => Duration::from_millis(t.min(500)),
    };
    let mut consumer = Consumer::new(
        client,
        ConsumerConfig {
            max_wait,
            ..ConsumerConfig::default()
        },
    );
    consumer
        .assign(&a.topic, a.partition.map(|p| vec![p]), a.from)
        .await
        .map_err(|e| e.to_string())?;
    if a.count == Some(0) {
        return Ok(());
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 << 10, stdout.lock());
    let mut seen: u64 = 0;
    let mut last_data = Instant::now();
    let idle_limit = (a.timeout_ms > 0).then(|| Duration::from_millis(a.timeout_ms));
    let result = 'outer: loop {
        let records = match consumer.poll().await {
            Ok(r) => r,
            Err(e) if e.is_retriable() => {
                tracing::debug!(error = %e, "poll failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                Vec::new()
            }
            Err(e) => break Err(e.to_string()),
        };
        if records.is_empty() {
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
            continue;
        }
        last_data = Instant::now();
        for r in records {
            if let Err(e) = print_record(&mut out, &r, a.print_offsets, a.print_keys) {
                break 'outer write_result(e);
            }
            seen += 1;
            if a.count.is_some_and(|n| seen >= n) {
                break 'outer Ok(());
            }
        }
    };
    match out.flush() {
        Ok(()) => result,
        Err(e) => result.and(write_result(e)),
    }
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
    r: &crate::consumer::ConsumedRecord,
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
        assert!(parse(&["produce", "t", "--compression", "gzip"]).is_err());

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
        assert_eq!(c.from, StartPosition::Offset(42));
        assert_eq!(c.count, Some(5));
        assert!(c.print_offsets && c.print_keys);
        let ClientCommand::Consume(c) = parse(&["consume", "t", "--from", "latest"]).unwrap()
        else {
            panic!("not consume");
        };
        assert_eq!(c.from, StartPosition::Latest);
        assert_eq!(c.timeout_ms, 0);
        for sub in [
            &["topic", "list"][..],
            &["topic", "describe", "x"],
            &["topic", "delete", "x"],
        ] {
            assert!(parse(sub).is_ok(), "{sub:?}");
        }
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
        let r = crate::consumer::ConsumedRecord {
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
