//! Kafka's Metadata: the brokers with their Kafka addresses, and each
//! topic's partitions with leader, epoch, replicas and ISR. Also where
//! group coordinators are, and topic auto-creation.

use super::codec::{code, kafka_error, str_bytes};
use super::Ctx;
use crate::handlers;
use crate::shard::Shard;
use crate::topics::TopicMeta;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::*;
use levee_schemas::proto::ErrorCode;
use std::collections::BTreeSet;
use std::rc::Rc;
use uuid::Uuid;

/// Replicas per partition when a Kafka client does not say: one on a
/// single node, min(3, brokers) on a cluster.
pub fn default_replication(ctx: &Ctx) -> u16 {
    match ctx.shard.cluster.as_ref().and_then(|v| v.metadata()) {
        Some(md) => md.brokers.values().filter(|b| b.alive).count().clamp(1, 3) as u16,
        None => 1,
    }
}

/// Kafka's "authorized operations not requested" marker.
const NO_AUTHORIZED_OPERATIONS: i32 = i32::MIN;

/// A set of Kafka ACL operation codes as the bit field Kafka answers.
const fn operations(codes: &[u8]) -> i32 {
    let mut bits = 0i32;
    let mut i = 0;
    while i < codes.len() {
        bits |= 1 << codes[i];
        i += 1;
    }
    bits
}

// Levee has no authorization: a client that asks what it may do
// (`include_*_authorized_operations`) is told every operation Kafka
// defines for the resource. Codes: READ 3, WRITE 4, CREATE 5, DELETE 6,
// ALTER 7, DESCRIBE 8, CLUSTER_ACTION 9, DESCRIBE_CONFIGS 10,
// ALTER_CONFIGS 11, IDEMPOTENT_WRITE 12.
/// Every operation on a topic.
pub const TOPIC_OPERATIONS: i32 = operations(&[3, 4, 5, 6, 7, 8, 10, 11]);
/// Every operation on the cluster.
pub const CLUSTER_OPERATIONS: i32 = operations(&[5, 7, 8, 9, 10, 11, 12]);
/// Every operation on a consumer group.
pub const GROUP_OPERATIONS: i32 = operations(&[3, 6, 8]);

/// `all` if the request asked for authorized operations, else Kafka's
/// "not requested" marker.
pub fn authorized(asked: bool, all: i32) -> i32 {
    if asked {
        all
    } else {
        NO_AUTHORIZED_OPERATIONS
    }
}

/// Every live broker with its advertised Kafka address: (id, host, port).
pub fn kafka_brokers(shard: &Shard) -> Vec<(i32, String, i32)> {
    if let Some(md) = shard.cluster.as_ref().and_then(|v| v.metadata()) {
        return md
            .brokers
            .values()
            .filter(|b| b.alive && !b.kafka_addr.is_empty())
            .filter_map(|b| {
                let (h, p) = b.kafka_addr.rsplit_once(':')?;
                Some((b.node_id as i32, h.to_string(), p.parse().ok()?))
            })
            .collect();
    }
    match shard.cfg.kafka_advertised() {
        Ok(Some((host, port))) => vec![(shard.cfg.node_id as i32, host, i32::from(port))],
        _ => Vec::new(),
    }
}

/// The node that coordinates consumer groups: this node alone, or on a
/// cluster the live broker with the lowest id (every node agrees on it).
pub fn coordinator_node(shard: &Shard) -> i32 {
    match shard.cluster.as_ref().and_then(|v| v.metadata()) {
        Some(md) => md
            .brokers
            .values()
            .filter(|b| b.alive)
            .map(|b| b.node_id as i32)
            .min()
            .unwrap_or(-1),
        None => shard.cfg.node_id as i32,
    }
}

/// The cluster's id: stable for the node (single) or the coordinator set.
pub fn cluster_id(shard: &Shard) -> String {
    match shard.cluster.as_ref() {
        Some(v) => {
            let ids: Vec<String> = v
                .coordinators
                .iter()
                .map(|(id, _)| id.to_string())
                .collect();
            format!("levee-cluster-{}", ids.join("-"))
        }
        None => format!("levee-node-{}", shard.cfg.node_id),
    }
}

/// Creates the topics in `names` that do not exist, with the broker's
/// defaults, when `auto_create_topics` is on. Failures (an invalid name, a
/// race with another creator) are left for the caller's own lookup.
pub async fn auto_create(shard: &Rc<Shard>, names: impl IntoIterator<Item = String>, rf: u16) {
    if !shard.cfg.auto_create_topics {
        return;
    }
    let missing: BTreeSet<String> = names
        .into_iter()
        .filter(|n| shard.topic(n).is_none())
        .collect();
    for name in missing {
        let meta = TopicMeta::new(shard.cfg.log.default_partitions, rf);
        match handlers::topics::create(shard, name.clone(), meta).await {
            Ok(()) => tracing::info!(topic = %name, "auto-created topic for a Kafka client"),
            Err(e) if e.code == ErrorCode::TopicAlreadyExists => {}
            Err(e) => {
                tracing::debug!(topic = %name, error = %e.message, "auto-creating a topic failed")
            }
        }
    }
}

/// The topic with id `id`, if there is one.
pub fn topic_by_id(shard: &Shard, id: Uuid) -> Option<String> {
    shard.topic_names().into_iter().find(|n| {
        shard
            .topic(n)
            .is_some_and(|m| crate::topics::topic_uuid(n, &m) == id)
    })
}

/// An answer for a topic asked for by an id no topic has.
fn unknown_id_entry(id: Uuid) -> MetadataResponseTopic {
    let mut t = MetadataResponseTopic::default();
    t.topic_id = id;
    t.error_code = code::UNKNOWN_TOPIC_ID;
    t.topic_authorized_operations = NO_AUTHORIZED_OPERATIONS;
    t
}

fn topic_entry(shard: &Shard, name: &str, ops: i32) -> MetadataResponseTopic {
    let mut t = MetadataResponseTopic::default();
    t.name = Some(TopicName(str_bytes(name)));
    t.topic_authorized_operations = ops;
    let (meta, placements) = match handlers::topics::placement(shard, name) {
        Ok(p) => p,
        Err(e) => {
            t.error_code = if crate::topics::validate_name(name).is_err() {
                code::INVALID_TOPIC_EXCEPTION
            } else {
                kafka_error(e.code, false)
            };
            return t;
        }
    };
    let alive: Option<BTreeSet<u32>> =
        shard.cluster.as_ref().and_then(|v| v.metadata()).map(|md| {
            md.brokers
                .values()
                .filter(|b| b.alive)
                .map(|b| b.node_id as u32)
                .collect()
        });
    let ids = |v: &[u32]| v.iter().map(|&x| BrokerId(x as i32)).collect::<Vec<_>>();
    t.partitions = placements
        .into_iter()
        .map(|pl| {
            let mut p = MetadataResponsePartition::default();
            p.partition_index = pl.partition as i32;
            p.leader_id = BrokerId(pl.leader.map_or(-1, |l| l as i32));
            if pl.leader.is_none() {
                p.error_code = 5; // LEADER_NOT_AVAILABLE
            }
            p.leader_epoch = pl.leader_epoch.min(i32::MAX as u64) as i32;
            p.offline_replicas = match &alive {
                Some(alive) => pl
                    .replicas
                    .iter()
                    .filter(|r| !alive.contains(r))
                    .map(|&r| BrokerId(r as i32))
                    .collect(),
                None => Vec::new(),
            };
            p.replica_nodes = ids(&pl.replicas);
            p.isr_nodes = ids(&pl.isr);
            p
        })
        .collect();
    t.topic_id = crate::topics::topic_uuid(name, &meta);
    t.is_internal = levee_core::is_internal_topic(name);
    t
}

pub async fn metadata(ctx: &Ctx, req: MetadataRequest) -> MetadataResponse {
    let shard = &ctx.shard;
    // Topics asked for by id (v10 and later, without a name).
    let by_id: Vec<Uuid> = req
        .topics
        .iter()
        .flatten()
        .filter(|t| t.name.is_none() && !t.topic_id.is_nil())
        .map(|t| t.topic_id)
        .collect();
    let names: Vec<String> = match &req.topics {
        None => handlers::topics::list(shard),
        Some(ts) => ts
            .iter()
            .filter_map(|t| t.name.as_ref().map(|n| n.as_str().to_string()))
            .collect(),
    };
    if req.topics.is_some() && (ctx.version < 4 || req.allow_auto_topic_creation) {
        let rf = default_replication(ctx);
        auto_create(shard, names.iter().cloned(), rf).await;
    }
    if req.topics.is_some() {
        handlers::await_topics(shard, names.iter().map(String::as_str)).await;
    }
    let mut out = MetadataResponse::default();
    out.brokers = kafka_brokers(shard)
        .into_iter()
        .map(|(id, host, port)| {
            let mut b = MetadataResponseBroker::default();
            b.node_id = BrokerId(id);
            b.host = str_bytes(host);
            b.port = port;
            b
        })
        .collect();
    out.cluster_id = Some(str_bytes(cluster_id(shard)));
    out.controller_id = BrokerId(coordinator_node(shard));
    out.cluster_authorized_operations = authorized(
        req.include_cluster_authorized_operations,
        CLUSTER_OPERATIONS,
    );
    let ops = authorized(req.include_topic_authorized_operations, TOPIC_OPERATIONS);
    out.topics = names.iter().map(|n| topic_entry(shard, n, ops)).collect();
    out.topics
        .extend(by_id.into_iter().map(|id| match topic_by_id(shard, id) {
            Some(n) => topic_entry(shard, &n, ops),
            None => unknown_id_entry(id),
        }));
    out
}
