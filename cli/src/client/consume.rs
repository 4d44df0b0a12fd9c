//! `levee consume`: a topic's messages on stdout, as a member of a
//! consumer group or from chosen partitions and offsets.

use std::io::Write;
use std::time::{Duration, Instant};

use clap::Args;

use levee_client::group::{GroupConsumer, GroupConsumerConfig, OffsetReset};
use levee_client::{ClientError, ConsumedRecord, Consumer, ConsumerConfig, StartPosition};

use super::{connect, write_result, ConnectArgs};

/// The group `levee consume TOPIC` joins when neither `--group`,
/// `--partition` nor `--from` is given.
pub const DEFAULT_GROUP: &str = "levee-default";

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
    /// Only records of committed transactions (Kafka transactional
    /// producers): stop at an open transaction, skip aborted ones.
    #[arg(long)]
    pub read_committed: bool,
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

pub(super) async fn consume(a: ConsumeArgs) -> Result<(), String> {
    let client = connect(&a.connect).await.map_err(|e| e.to_string())?;
    let max_wait = match a.timeout_ms {
        0 => Duration::from_millis(500),
        t => Duration::from_millis(t.min(500)),
    };
    let fetch = ConsumerConfig {
        max_wait,
        read_committed: a.read_committed,
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
    use crate::client::tests::parse;
    use crate::client::ClientCommand;

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
