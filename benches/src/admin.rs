//! Talking to the broker outside the producers and consumers: connecting,
//! creating the topic, end offsets, over either protocol.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use levee_client::{Client, ClientError, ErrorCode, OffsetSpec, TopicSettings};

use crate::args::Protocol;
use crate::connect::{client_config, kafka_connect};
use crate::kafka;
use crate::workload::{client_err, BenchError, Config};

/// Describes the topic, creating it if missing; returns its partition count.
pub(crate) async fn ensure_topic(cfg: &Config, client: &Client) -> Result<u32, BenchError> {
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

/// The broker's administration, over the protocol the bench speaks.
#[derive(Clone)]
pub(crate) enum Admin {
    Native(Client),
    Kafka(Arc<kafka::KafkaClient>),
}

impl Admin {
    pub(crate) async fn connect(cfg: &Config) -> Result<Admin, BenchError> {
        Ok(match cfg.args.protocol {
            Protocol::Native => Admin::Native(
                Client::connect(client_config(cfg, "levee-bench".into()))
                    .await
                    .map_err(|e| client_err("connect", &e))?,
            ),
            Protocol::Kafka => Admin::Kafka(kafka_connect(cfg).await.map_err(BenchError::Client)?),
        })
    }

    /// `group`'s committed offsets of `topic` (partitions with none are
    /// left out).
    pub(crate) async fn group_offsets(
        &self,
        group: &str,
        topic: &str,
        partitions: u32,
    ) -> Result<HashMap<u32, u64>, String> {
        match self {
            Admin::Native(c) => Ok(c
                .fetch_offsets(group, &levee_client::Assignment::new())
                .await
                .map_err(|e| format!("fetch offsets of group `{group}`: {e}"))?
                .into_iter()
                .filter(|o| o.topic == topic)
                .map(|o| (o.partition, o.offset))
                .collect()),
            Admin::Kafka(k) => k.offset_fetch(group, topic, partitions).await,
        }
    }

    /// `group`'s state, member count and generation (Kafka: -1, unknown).
    pub(crate) async fn group_state(&self, group: &str) -> Result<(String, usize, i32), String> {
        match self {
            Admin::Native(c) => c
                .describe_group(group)
                .await
                .map(|i| (i.state, i.members.len(), i.generation))
                .map_err(|e| e.to_string()),
            Admin::Kafka(k) => k.describe_group(group).await,
        }
    }

    /// An administrative commit of `offsets` for `group` (no member, no
    /// generation): accepted only while the group has no members
    /// (`Ok(false)` otherwise).
    pub(crate) async fn commit_group_offsets(
        &self,
        group: &str,
        topic: &str,
        offsets: &[(u32, u64)],
    ) -> Result<bool, String> {
        match self {
            Admin::Native(c) => {
                let commits: Vec<levee_client::OffsetCommit> = offsets
                    .iter()
                    .map(|(p, o)| levee_client::OffsetCommit::new(topic, *p, *o))
                    .collect();
                match c.commit_offsets(group, "", -1, &commits).await {
                    Ok(()) => Ok(true),
                    Err(e) if e.code() == Some(ErrorCode::GroupNotEmpty) => Ok(false),
                    Err(e) => Err(e.to_string()),
                }
            }
            Admin::Kafka(k) => match k.offset_commit(group, -1, "", topic, offsets).await? {
                0 => Ok(true),
                // ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, REBALANCE_IN_PROGRESS:
                // the group has members.
                22 | 25 | 27 => Ok(false),
                c => Err(format!(
                    "commit offsets of group `{group}`: Kafka error {c}"
                )),
            },
        }
    }

    /// The group's lag: each partition's high watermark minus its
    /// committed offset (none: its log start), summed.
    pub(crate) async fn group_lag(
        &self,
        group: &str,
        topic: &str,
        partitions: u32,
    ) -> Result<i64, String> {
        let committed = self.group_offsets(group, topic, partitions).await?;
        let (starts, ends) = match self {
            Admin::Native(c) => {
                let info = c
                    .describe_topic(topic)
                    .await
                    .map_err(|e| format!("describe topic: {e}"))?;
                let mut starts = HashMap::new();
                let mut ends = HashMap::new();
                for p in &info.partitions {
                    starts.insert(p.partition, p.log_start_offset);
                    ends.insert(p.partition, p.high_watermark);
                }
                (starts, ends)
            }
            Admin::Kafka(k) => (
                k.list_offsets(topic, partitions, -2).await?,
                k.list_offsets(topic, partitions, -1).await?,
            ),
        };
        let total: u64 = ends
            .iter()
            .map(|(p, end)| {
                levee_client::lag(
                    committed.get(p).copied(),
                    starts.get(p).copied().unwrap_or(0),
                    *end,
                )
            })
            .sum();
        Ok(i64::try_from(total).unwrap_or(i64::MAX))
    }

    pub(crate) async fn ensure_topic(&self, cfg: &Config) -> Result<u32, BenchError> {
        match self {
            Admin::Native(c) => ensure_topic(cfg, c).await,
            Admin::Kafka(k) => k
                .ensure_topic(&cfg.args.topic, cfg.args.partitions, -1)
                .await
                .map_err(BenchError::Client),
        }
    }

    pub(crate) async fn end_offsets(
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

/// End offsets of every partition.
pub(crate) async fn end_offsets(
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
