//! `levee topic create|list|describe|alter|add-partitions|delete-records|delete`.

use std::io::Write;

use clap::{Args, Subcommand};

use levee_client::{ClientError, FsyncPolicy, TopicChanges, TopicSettings};

use super::{connect, ConnectArgs};

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
    /// Change a topic's settings; the partitions take them at once (a
    /// lower retention deletes old segments at once, which frees a full
    /// disk).
    Alter(TopicAlterArgs),
    /// Grow a topic to more partitions (existing ones keep their data;
    /// keys then hash to other partitions than before).
    AddPartitions(TopicAddPartitionsArgs),
    /// Delete a partition's records before an offset (Kafka's
    /// DeleteRecords): its log start moves there, on every replica, and
    /// consumers can no longer read below it.
    DeleteRecords(TopicDeleteRecordsArgs),
    /// Delete a topic and all its data.
    Delete(TopicNameArgs),
}

/// `levee topic alter`
#[derive(Debug, Clone, Args)]
pub struct TopicAlterArgs {
    /// Topic name.
    pub name: String,
    /// Delete old segments while a partition holds more bytes.
    #[arg(long)]
    pub retention_bytes: Option<i64>,
    /// Delete segments older than this many ms.
    #[arg(long)]
    pub retention_ms: Option<i64>,
    /// Segment size of new segments.
    #[arg(long)]
    pub segment_bytes: Option<i64>,
    /// always, never or interval:MS.
    #[arg(long, value_parser = FsyncPolicy::check_setting)]
    pub fsync: Option<String>,
    /// Refuse produce once this many bytes are unconsumed.
    #[arg(long)]
    pub max_backlog_bytes: Option<i64>,
    /// The largest record batch producers may write (max.message.bytes).
    #[arg(long)]
    pub max_message_bytes: Option<i64>,
    /// Put a setting back to the broker's default, by its Kafka name
    /// (retention.ms, retention.bytes, segment.bytes, levee.fsync,
    /// levee.max.backlog.bytes, max.message.bytes); repeat for several.
    #[arg(long, value_name = "CONFIG")]
    pub reset: Vec<String>,
    /// Check the changes on the broker and change nothing.
    #[arg(long)]
    pub validate_only: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub connect: ConnectArgs,
}

/// `levee topic add-partitions`
#[derive(Debug, Clone, Args)]
pub struct TopicAddPartitionsArgs {
    /// Topic name.
    pub name: String,
    /// The new total number of partitions (greater than the current one).
    #[arg(long)]
    pub partitions: u32,
    /// Replicas of each new partition, as node ids: `1,2,3` per partition,
    /// partitions separated by `;` (default: the broker places them).
    #[arg(long)]
    pub assignment: Option<String>,
    /// Check the request on the broker and change nothing.
    #[arg(long)]
    pub validate_only: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub connect: ConnectArgs,
}

/// `levee topic delete-records`
#[derive(Debug, Clone, Args)]
pub struct TopicDeleteRecordsArgs {
    /// Topic name.
    pub name: String,
    /// The partition (repeat for several; default: every partition).
    #[arg(long)]
    pub partition: Vec<u32>,
    /// Delete the records before this offset, or `end`: all of them (up
    /// to the high watermark).
    #[arg(long, value_name = "OFFSET|end", value_parser = parse_before)]
    pub before: Before,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub connect: ConnectArgs,
}

/// `--before`: an offset, or the high watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Before {
    /// Delete the records before this offset.
    Offset(u64),
    /// Delete every record (up to the high watermark).
    End,
}

fn parse_before(s: &str) -> Result<Before, String> {
    match s {
        "end" => Ok(Before::End),
        _ => s
            .parse::<u64>()
            .map(Before::Offset)
            .map_err(|_| format!("`{s}` is not an offset (a number, or `end` for every record)")),
    }
}

/// `1,2;2,3` as `[[1, 2], [2, 3]]`.
fn parse_assignment(s: &str) -> Result<Vec<Vec<u32>>, ClientError> {
    s.split(';')
        .map(|part| {
            part.split(',')
                .map(|n| {
                    n.trim().parse::<u32>().map_err(|_| {
                        ClientError::InvalidArgument(format!(
                            "--assignment: `{n}` is not a node id; write node ids as `1,2;2,3` (one list per new partition)"
                        ))
                    })
                })
                .collect()
        })
        .collect()
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
    #[arg(long, value_parser = FsyncPolicy::check_setting)]
    pub fsync: Option<String>,
    /// Refuse produce once this many bytes are unconsumed (default: off).
    #[arg(long)]
    pub max_backlog_bytes: Option<i64>,
    /// Segment size (default: the broker's default).
    #[arg(long)]
    pub segment_bytes: Option<i64>,
    /// The largest record batch producers may write (Kafka's
    /// max.message.bytes; default: the broker's log.max_batch_bytes).
    #[arg(long)]
    pub max_message_bytes: Option<i64>,
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

fn node_list(v: Option<&Vec<u32>>) -> String {
    match v {
        Some(v) if !v.is_empty() => v.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
        _ => "-".to_string(),
    }
}

fn or_text(v: Option<i64>, none: &str) -> String {
    v.map_or_else(|| none.to_string(), |v| v.to_string())
}

pub(super) async fn topic(cmd: TopicCommand) -> Result<(), ClientError> {
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
                max_message_bytes: a.max_message_bytes,
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
            if !t.id.is_empty() {
                writeln!(out, "id: {}", t.id)?;
            }
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
                "max_message_bytes: {}",
                or_text(s.max_message_bytes, "default")
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
        TopicCommand::Alter(a) => {
            let changes = TopicChanges {
                retention_bytes: a.retention_bytes,
                retention_ms: a.retention_ms,
                segment_bytes: a.segment_bytes,
                fsync: a.fsync,
                max_backlog_bytes: a.max_backlog_bytes,
                max_message_bytes: a.max_message_bytes,
                reset: a.reset,
            };
            if changes.is_empty() {
                return Err(ClientError::InvalidArgument(
                    "nothing to change: give --retention-bytes, --retention-ms, --segment-bytes, --fsync, --max-backlog-bytes, --max-message-bytes or --reset".into(),
                ));
            }
            let client = connect(&a.connect).await?;
            client
                .alter_topic(&a.name, &changes, a.validate_only)
                .await?;
            let what = changes
                .entries()
                .into_iter()
                .map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("default")))
                .collect::<Vec<_>>()
                .join(" ");
            if a.validate_only {
                writeln!(out, "topic {} accepts {what} (nothing changed)", a.name)?;
            } else {
                writeln!(out, "altered topic {}: {what}", a.name)?;
            }
        }
        TopicCommand::DeleteRecords(a) => {
            let client = connect(&a.connect).await?;
            let partitions = if a.partition.is_empty() {
                let count = client.describe_topic(&a.name).await?.partition_count();
                (0..count).collect()
            } else {
                a.partition.clone()
            };
            let offset = match a.before {
                Before::Offset(o) => Some(o),
                Before::End => None,
            };
            let before: Vec<(u32, Option<u64>)> = partitions.iter().map(|&p| (p, offset)).collect();
            for (p, start) in client.delete_records(&a.name, &before).await? {
                writeln!(out, "{}/{p}: log start {start}", a.name)?;
            }
        }
        TopicCommand::AddPartitions(a) => {
            let assignment = match &a.assignment {
                Some(s) => parse_assignment(s)?,
                None => Vec::new(),
            };
            let client = connect(&a.connect).await?;
            client
                .add_partitions(&a.name, a.partitions, &assignment, a.validate_only)
                .await?;
            if a.validate_only {
                writeln!(
                    out,
                    "topic {} can grow to {} partition(s) (nothing changed)",
                    a.name, a.partitions
                )?;
            } else {
                writeln!(
                    out,
                    "topic {} now has {} partition(s)",
                    a.name, a.partitions
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
