//! `levee group list|describe|reset-offsets|delete`.

use std::io::Write;

use clap::{Args, Subcommand};

use levee_client::group::{lag, Assignment, OffsetCommit};
use levee_client::{Client, ClientError, OffsetSpec};

use super::{connect, ConnectArgs};

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

pub(super) async fn group(cmd: GroupCommand) -> Result<(), ClientError> {
    let mut out = std::io::stdout().lock();
    match cmd {
        GroupCommand::List(a) => {
            let client = connect(&a.connect).await?;
            for g in client.list_groups().await? {
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}",
                    g.group, g.state, g.members, g.coordinator
                )?;
            }
        }
        GroupCommand::Describe(a) => {
            let client = connect(&a.connect).await?;
            let g = client.describe_group(&a.group).await?;
            writeln!(out, "group: {}", g.group)?;
            if let Some(node) = client.group_coordinator(&a.group).await? {
                writeln!(out, "coordinator: node {node}")?;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::tests::parse;
    use crate::client::ClientCommand;

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
}
