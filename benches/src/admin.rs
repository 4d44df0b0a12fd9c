//! Talking to the broker outside the producers and consumers: connecting,
//! creating the topic, end offsets, over either protocol.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use levee_client::{Client, ClientConfig, ClientError, ErrorCode, OffsetSpec, TopicSettings};

use crate::args::Protocol;
use crate::kafka;
use crate::kafka_tasks;
use crate::workload::{client_err, usage, BenchError, Config};

pub(crate) fn client_config(cfg: &Config, name: String) -> ClientConfig {
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
            Protocol::Kafka => Admin::Kafka(
                kafka_tasks::connect(cfg)
                    .await
                    .map_err(BenchError::Client)?,
            ),
        })
    }

    /// The native client (group administration has no Kafka path here).
    pub(crate) fn native(&self) -> Result<&Client, BenchError> {
        match self {
            Admin::Native(c) => Ok(c),
            Admin::Kafka(_) => Err(usage("this needs --protocol native")),
        }
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
