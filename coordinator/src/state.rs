//! The replicated state machine: cluster metadata, changed only by applying
//! committed [`Command`]s in log order. `apply` is deterministic (no clocks,
//! no randomness, ordered maps), so every coordinator holds the same
//! metadata at the same index. It is serialised as JSON into snapshots.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One topic's settings, on a single node (in `topics.toml`) and in the
/// cluster metadata. `-1` / empty means "the broker default".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    pub partitions: u32,
    pub replication_factor: u16,
    pub retention_bytes: i64,
    pub retention_ms: i64,
    pub fsync: String,
    pub max_backlog_bytes: i64,
    pub segment_bytes: i64,
    /// The largest record batch a producer may write (Kafka's
    /// `max.message.bytes`); -1: the broker's `log.max_batch_bytes`.
    /// Left out of the JSON when unset, so metadata without it reads as
    /// before.
    #[serde(default = "unset", skip_serializing_if = "is_unset")]
    pub max_message_bytes: i64,
    /// The topic's id (a UUID, as text), given when it is created, so that
    /// a topic deleted and created again under the same name is told apart
    /// (Kafka's topic ids). Empty for topics created before ids existed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
}

impl TopicConfig {
    /// `partitions` x `replication_factor`, everything else at the default.
    pub fn new(partitions: u32, replication_factor: u16) -> Self {
        TopicConfig {
            partitions,
            replication_factor,
            retention_bytes: -1,
            retention_ms: -1,
            fsync: String::new(),
            max_backlog_bytes: -1,
            segment_bytes: -1,
            max_message_bytes: -1,
            id: String::new(),
        }
    }
}

fn unset() -> i64 {
    -1
}

fn is_unset(v: &i64) -> bool {
    *v < 0
}

/// A new random topic id: a version-4 UUID as text. Never the nil UUID
/// nor Kafka's reserved metadata topic id (…0001).
pub fn new_topic_id() -> String {
    let mut v: u128 = rand::random();
    // Version 4, variant 1 (RFC 4122).
    v = (v & !(0xf << 76)) | (0x4 << 76);
    v = (v & !(0x3 << 62)) | (0x2 << 62);
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A broker known to the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerInfo {
    pub node_id: u64,
    /// Address native clients connect to.
    pub client_addr: String,
    /// Address Kafka clients connect to (HOST:PORT; empty: none).
    #[serde(default)]
    pub kafka_addr: String,
    pub shards: u32,
    /// As last decided by the controller (leases live in the leader's memory).
    pub alive: bool,
    /// The broker process's incarnation (a new value each time it starts;
    /// 0 from brokers that predate it). A registration with a new one is a
    /// restart: see [`Command::RegisterBroker`].
    #[serde(default)]
    pub incarnation: u64,
}

/// Replica set, leader and ISR of one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    /// Replicas in preference order: the first is the preferred leader.
    pub replicas: Vec<u64>,
    /// `None` while no in-sync replica is alive.
    pub leader: Option<u64>,
    /// Increases with every leader change; never reused.
    pub leader_epoch: u64,
    pub isr: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    pub config: TopicConfig,
    pub partitions: Vec<PartitionInfo>,
}

/// The whole cluster metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Incremented by every command that applies (rejected ones change
    /// nothing, version included).
    pub version: u64,
    /// Raft index of the last applied entry.
    pub applied_index: u64,
    pub brokers: BTreeMap<u64, BrokerInfo>,
    pub topics: BTreeMap<String, TopicInfo>,
    /// The next idempotent-producer id not handed out (ids are unique
    /// across the cluster: brokers take blocks of them).
    #[serde(default)]
    pub next_producer_id: i64,
    /// Per broker, the last block of producer ids it was given: (first, count).
    #[serde(default)]
    pub producer_id_blocks: BTreeMap<u64, (i64, u32)>,
}

/// A metadata change, proposed through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Adds or updates a broker and marks it alive. A known broker that
    /// registers with a new `incarnation` restarted, and may have lost the
    /// tail of its logs that was not flushed (`fsync` other than `always`):
    /// it leaves every ISR it is in (unless it is the last member, as with
    /// `BrokerDown`), and every partition it led moves to the first other
    /// in-sync replica at the next epoch (or stays with it at the next
    /// epoch if no other replica is in sync). It rejoins ISRs as a follower
    /// once it has caught up, so a restarted node never takes back, as
    /// leader of its old epoch, a log shorter than what was acknowledged.
    RegisterBroker {
        node_id: u64,
        client_addr: String,
        /// The Kafka address it advertises (empty: no Kafka listener).
        #[serde(default)]
        kafka_addr: String,
        shards: u32,
        #[serde(default)]
        incarnation: u64,
    },
    /// The broker's lease expired. Also drops it from every ISR it is in,
    /// unless it is the last member (Kafka's rule: the last in-sync replica
    /// stays in the ISR so that only it can be elected cleanly later).
    BrokerDown {
        node_id: u64,
    },
    /// The broker heartbeats again.
    BrokerUp {
        node_id: u64,
    },
    /// Creates a topic with a placement computed by the leader: `replicas[p]`
    /// is partition p's replica list; its first member leads at epoch 1 (0 is a single node's epoch).
    CreateTopic {
        name: String,
        config: TopicConfig,
        replicas: Vec<Vec<u64>>,
    },
    DeleteTopic {
        name: String,
    },
    /// Adds partitions `first..first + replicas.len()` to a topic, placed as
    /// `replicas` (computed by the leader, or given by the caller); applies
    /// only if the topic has exactly `first` partitions now, so a repeated
    /// or concurrent request cannot add them twice. Each new partition's
    /// first replica leads at epoch 1.
    AddPartitions {
        name: String,
        first: u32,
        replicas: Vec<Vec<u64>>,
    },
    /// Sets the leader (or none) of a partition; applies only if `epoch` is
    /// greater than the current epoch, and the leader is an in-sync replica.
    SetLeader {
        topic: String,
        partition: u32,
        leader: Option<u64>,
        epoch: u64,
    },
    /// Sets the ISR, as reported by the leader of `epoch`; applies only if
    /// `epoch` is the current one and the ISR holds the leader.
    UpdateIsr {
        topic: String,
        partition: u32,
        isr: Vec<u64>,
        epoch: u64,
    },
    /// Gives broker `node_id` the next `count` producer ids.
    AllocateProducerIds {
        node_id: u64,
        count: u32,
    },
    /// Replaces a topic's settings (retention, segment size, fsync,
    /// backlog bound) with `config`'s; its partitions, replication factor
    /// and id stay as they are, whatever `config` says.
    AlterTopicConfig {
        name: String,
        config: TopicConfig,
    },
}

impl Metadata {
    /// Applies one command. On `Err` nothing changed.
    pub fn apply(&mut self, cmd: &Command) -> Result<(), String> {
        self.check(cmd)?;
        match cmd {
            Command::RegisterBroker {
                node_id,
                client_addr,
                kafka_addr,
                shards,
                incarnation,
            } => {
                let restarted = self
                    .brokers
                    .get(node_id)
                    .is_some_and(|b| b.incarnation != *incarnation);
                if restarted {
                    self.restarted(*node_id);
                }
                self.brokers.insert(
                    *node_id,
                    BrokerInfo {
                        node_id: *node_id,
                        client_addr: client_addr.clone(),
                        kafka_addr: kafka_addr.clone(),
                        shards: *shards,
                        alive: true,
                        incarnation: *incarnation,
                    },
                );
            }
            Command::BrokerDown { node_id } => {
                if let Some(b) = self.brokers.get_mut(node_id) {
                    b.alive = false;
                }
                for t in self.topics.values_mut() {
                    for p in &mut t.partitions {
                        if p.isr.len() > 1 {
                            p.isr.retain(|r| r != node_id);
                        }
                    }
                }
            }
            Command::BrokerUp { node_id } => {
                if let Some(b) = self.brokers.get_mut(node_id) {
                    b.alive = true;
                }
            }
            Command::CreateTopic {
                name,
                config,
                replicas,
            } => {
                let partitions = replicas
                    .iter()
                    .map(|r| PartitionInfo {
                        replicas: r.clone(),
                        leader: r.first().copied(),
                        leader_epoch: 1,
                        isr: r.clone(),
                    })
                    .collect();
                self.topics.insert(
                    name.clone(),
                    TopicInfo {
                        config: config.clone(),
                        partitions,
                    },
                );
            }
            Command::DeleteTopic { name } => {
                self.topics.remove(name);
            }
            Command::AddPartitions { name, replicas, .. } => {
                if let Some(t) = self.topics.get_mut(name) {
                    t.partitions.extend(replicas.iter().map(|r| PartitionInfo {
                        replicas: r.clone(),
                        leader: r.first().copied(),
                        leader_epoch: 1,
                        isr: r.clone(),
                    }));
                    t.config.partitions = t.partitions.len() as u32;
                }
            }
            Command::SetLeader {
                topic,
                partition,
                leader,
                epoch,
            } => {
                if let Some(p) = self.partition_mut(topic, *partition) {
                    p.leader = *leader;
                    p.leader_epoch = *epoch;
                }
            }
            Command::UpdateIsr {
                topic,
                partition,
                isr,
                ..
            } => {
                if let Some(p) = self.partition_mut(topic, *partition) {
                    p.isr = isr.clone();
                }
            }
            Command::AlterTopicConfig { name, config } => {
                if let Some(t) = self.topics.get_mut(name) {
                    let c = &mut t.config;
                    c.retention_bytes = config.retention_bytes;
                    c.retention_ms = config.retention_ms;
                    c.fsync = config.fsync.clone();
                    c.max_backlog_bytes = config.max_backlog_bytes;
                    c.segment_bytes = config.segment_bytes;
                }
            }
            Command::AllocateProducerIds { node_id, count } => {
                let first = self.next_producer_id;
                self.next_producer_id += i64::from(*count);
                self.producer_id_blocks.insert(*node_id, (first, *count));
            }
        }
        self.version += 1;
        Ok(())
    }

    fn partition_mut(&mut self, topic: &str, partition: u32) -> Option<&mut PartitionInfo> {
        self.topics
            .get_mut(topic)
            .and_then(|t| t.partitions.get_mut(partition as usize))
    }

    /// The partition `topic`/`partition`, if it exists.
    pub fn partition(&self, topic: &str, partition: u32) -> Option<&PartitionInfo> {
        self.topics
            .get(topic)
            .and_then(|t| t.partitions.get(partition as usize))
    }

    /// Broker `node` restarted (see [`Command::RegisterBroker`]).
    fn restarted(&mut self, node: u64) {
        let alive: BTreeSet<u64> = self
            .brokers
            .values()
            .filter(|b| b.alive && b.node_id != node)
            .map(|b| b.node_id)
            .collect();
        for t in self.topics.values_mut() {
            for p in &mut t.partitions {
                let next = p
                    .replicas
                    .iter()
                    .copied()
                    .find(|r| *r != node && p.isr.contains(r) && alive.contains(r));
                if p.leader == Some(node) {
                    // No other live in-sync replica: it stays leader (and in
                    // the ISR), in a new epoch.
                    if let Some(next) = next {
                        p.leader = Some(next);
                        p.isr.retain(|r| *r != node);
                    }
                    p.leader_epoch += 1;
                } else if p.isr.len() > 1 && p.isr.contains(&node) {
                    p.isr.retain(|r| *r != node);
                }
            }
        }
    }

    /// Whether broker `id` is registered and alive.
    pub fn is_alive(&self, id: u64) -> bool {
        self.brokers.get(&id).is_some_and(|b| b.alive)
    }

    fn check(&self, cmd: &Command) -> Result<(), String> {
        match cmd {
            Command::RegisterBroker { node_id, .. } => {
                if *node_id == 0 {
                    return Err("broker id 0 is reserved".into());
                }
            }
            Command::AllocateProducerIds { count, .. } => {
                if *count == 0 || self.next_producer_id > i64::MAX - i64::from(*count) {
                    return Err("no producer ids left to allocate".into());
                }
            }
            Command::BrokerDown { node_id } | Command::BrokerUp { node_id } => {
                if !self.brokers.contains_key(node_id) {
                    return Err(format!("broker {node_id} is not registered"));
                }
            }
            Command::CreateTopic {
                name,
                config,
                replicas,
            } => {
                validate_topic_name(name)?;
                if self.topics.contains_key(name) {
                    return Err(format!("topic `{name}` already exists"));
                }
                if config.partitions == 0 || replicas.len() != config.partitions as usize {
                    return Err(format!(
                        "topic `{name}`: {} partitions configured, {} placed",
                        config.partitions,
                        replicas.len()
                    ));
                }
                self.check_replicas(name, config.replication_factor, replicas)?;
            }
            Command::DeleteTopic { name } => {
                if !self.topics.contains_key(name) {
                    return Err(format!("topic `{name}` does not exist"));
                }
            }
            Command::AlterTopicConfig { name, config } => {
                if !self.topics.contains_key(name) {
                    return Err(format!("topic `{name}` does not exist"));
                }
                check_settings(name, config)?;
            }
            Command::AddPartitions {
                name,
                first,
                replicas,
            } => {
                let t = self
                    .topics
                    .get(name)
                    .ok_or_else(|| format!("topic `{name}` does not exist"))?;
                if t.partitions.len() != *first as usize {
                    return Err(format!(
                        "topic `{name}` has {} partitions, not {first}: partitions were added meanwhile",
                        t.partitions.len()
                    ));
                }
                let total = *first as usize + replicas.len();
                if replicas.is_empty() || total > MAX_PARTITIONS as usize {
                    return Err(format!(
                        "topic `{name}`: {total} partitions is not more than {first} and at most {MAX_PARTITIONS}"
                    ));
                }
                self.check_replicas(name, t.config.replication_factor, replicas)?;
            }
            Command::SetLeader {
                topic,
                partition,
                leader,
                epoch,
            } => {
                let p = self
                    .partition(topic, *partition)
                    .ok_or_else(|| format!("no partition {topic}/{partition}"))?;
                if *epoch <= p.leader_epoch {
                    return Err(format!(
                        "stale epoch {epoch} for {topic}/{partition} (current {})",
                        p.leader_epoch
                    ));
                }
                if let Some(l) = leader {
                    if !p.isr.contains(l) {
                        return Err(format!(
                            "broker {l} is not in the ISR {:?} of {topic}/{partition}",
                            p.isr
                        ));
                    }
                }
            }
            Command::UpdateIsr {
                topic,
                partition,
                isr,
                epoch,
            } => {
                let p = self
                    .partition(topic, *partition)
                    .ok_or_else(|| format!("no partition {topic}/{partition}"))?;
                if *epoch != p.leader_epoch {
                    return Err(format!(
                        "ISR update for epoch {epoch} of {topic}/{partition}, current is {}",
                        p.leader_epoch
                    ));
                }
                if isr.is_empty() || isr.iter().any(|r| !p.replicas.contains(r)) {
                    return Err(format!(
                        "ISR {isr:?} is not a non-empty subset of the replicas {:?}",
                        p.replicas
                    ));
                }
                if let Some(l) = p.leader {
                    if !isr.contains(&l) {
                        return Err(format!("ISR {isr:?} does not hold the leader {l}"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Each replica list names `rf` distinct registered brokers.
    fn check_replicas(&self, name: &str, rf: u16, replicas: &[Vec<u64>]) -> Result<(), String> {
        for r in replicas {
            let mut s = r.clone();
            s.sort_unstable();
            s.dedup();
            if r.is_empty() || s.len() != r.len() || r.len() != rf as usize {
                return Err(format!(
                    "topic `{name}`: bad replica list {r:?} (needs {rf} distinct brokers)"
                ));
            }
            if let Some(x) = r.iter().find(|x| !self.brokers.contains_key(x)) {
                return Err(format!("topic `{name}`: broker {x} is not registered"));
            }
        }
        Ok(())
    }

    /// Placement of the partitions that grow topic `name` to `count`
    /// partitions, as [`Metadata::place`] would place them: new partition p
    /// starts at alive broker `(start + p) mod n`, continuing the rotation.
    pub fn place_more(&self, name: &str, count: u32) -> Result<(u32, Vec<Vec<u64>>), String> {
        let t = self
            .topics
            .get(name)
            .ok_or_else(|| format!("topic `{name}` does not exist"))?;
        let first = t.partitions.len() as u32;
        if count <= first {
            return Err(format!(
                "topic `{name}` has {first} partitions; the new count must be greater, not {count} (partitions cannot be removed)"
            ));
        }
        if count > MAX_PARTITIONS {
            return Err(format!(
                "topic `{name}`: at most {MAX_PARTITIONS} partitions, not {count}"
            ));
        }
        let mut config = t.config.clone();
        config.partitions = count - first;
        let mut replicas = self.place(&config)?;
        // `place` rotates by the partitions already in the cluster; rotate
        // the new ones on from this topic's own last partition instead, so
        // a topic's preferred leaders stay spread.
        let alive: Vec<u64> = self
            .brokers
            .values()
            .filter(|b| b.alive)
            .map(|b| b.node_id)
            .collect();
        if let Some(last_first) = t.partitions.last().and_then(|p| p.replicas.first()) {
            if let Some(i) = alive.iter().position(|b| b == last_first) {
                let rf = config.replication_factor as usize;
                let n = alive.len();
                replicas = (0..(count - first) as usize)
                    .map(|p| (0..rf).map(|r| alive[(i + 1 + p + r) % n]).collect())
                    .collect();
            }
        }
        Ok((first, replicas))
    }

    /// Replica placement for a new topic: partition p's replicas are the
    /// alive brokers (sorted by id) starting at `(start + p) mod n`, so the
    /// preferred leaders rotate over the nodes; `start` rotates with the
    /// number of partitions already in the cluster, so successive topics do
    /// not all start on the same node.
    pub fn place(&self, config: &TopicConfig) -> Result<Vec<Vec<u64>>, String> {
        let alive: Vec<u64> = self
            .brokers
            .values()
            .filter(|b| b.alive)
            .map(|b| b.node_id)
            .collect();
        let rf = config.replication_factor as usize;
        if rf == 0 {
            return Err("replication factor must be at least 1".into());
        }
        if config.partitions == 0 {
            return Err("a topic needs at least one partition".into());
        }
        if alive.len() < rf {
            return Err(format!(
                "replication factor {rf} needs {rf} live brokers, {} are live",
                alive.len()
            ));
        }
        let n = alive.len();
        let start: usize = self
            .topics
            .values()
            .map(|t| t.partitions.len())
            .sum::<usize>()
            % n;
        Ok((0..config.partitions as usize)
            .map(|p| (0..rf).map(|r| alive[(start + p + r) % n]).collect())
            .collect())
    }
}

/// The most partitions a topic may have.
pub const MAX_PARTITIONS: u32 = 100_000;

/// Checks a topic's settings other than its partitions and replicas:
/// sizes and ages are -1 (the broker default) or more, the segment size
/// is within 4 KiB and 4 GiB, the fsync policy parses.
pub fn check_settings(name: &str, c: &TopicConfig) -> Result<(), String> {
    for (what, v) in [
        ("retention_bytes", c.retention_bytes),
        ("retention_ms", c.retention_ms),
        ("max_backlog_bytes", c.max_backlog_bytes),
        ("segment_bytes", c.segment_bytes),
    ] {
        if v < -1 {
            return Err(format!(
                "topic `{name}`: {what} must be -1 (the broker default) or more, not {v}"
            ));
        }
    }
    if c.segment_bytes >= 0 && !(4096..=i64::from(u32::MAX)).contains(&c.segment_bytes) {
        return Err(format!(
            "topic `{name}`: segment_bytes must be between 4096 and 4 GiB, not {}",
            c.segment_bytes
        ));
    }
    if !c.fsync.is_empty() {
        c.fsync
            .parse::<levee_core::FsyncPolicy>()
            .map_err(|e| format!("topic `{name}`: fsync: {e}"))?;
    }
    Ok(())
}

/// Kafka's topic name rules (the one copy is in `levee-core`).
pub use levee_core::validate_topic_name;

/// What the controller wants changed, given the metadata (pure function).
///
/// For every partition:
/// - leader missing or dead: the first replica (in preference order) that is
///   alive and in the ISR becomes leader at epoch+1; if there is none and a
///   (dead) leader is still recorded, the partition becomes leaderless at
///   epoch+1 (fencing the old leader; no unclean election);
/// - leader alive but not the preferred replica, while the preferred one is
///   alive and in the ISR: leadership moves back to it at epoch+1.
pub fn controller_actions(md: &Metadata) -> Vec<Command> {
    let mut out = Vec::new();
    for (name, t) in &md.topics {
        for (i, p) in t.partitions.iter().enumerate() {
            let pick = p
                .replicas
                .iter()
                .copied()
                .find(|r| p.isr.contains(r) && md.is_alive(*r));
            let leader_ok = p.leader.is_some_and(|l| md.is_alive(l));
            let new_leader = if !leader_ok {
                match pick {
                    Some(c) => Some(Some(c)),
                    None if p.leader.is_some() => Some(None),
                    None => None,
                }
            } else {
                match (p.leader, p.replicas.first()) {
                    (Some(l), Some(&pref)) if l != pref && pick == Some(pref) => Some(Some(pref)),
                    _ => None,
                }
            };
            if let Some(leader) = new_leader {
                out.push(Command::SetLeader {
                    topic: name.clone(),
                    partition: i as u32,
                    leader,
                    epoch: p.leader_epoch + 1,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(md: &mut Metadata, id: u64) {
        md.apply(&Command::RegisterBroker {
            node_id: id,
            client_addr: format!("127.0.0.1:{}", 9000 + id),
            kafka_addr: String::new(),
            shards: 2,
            incarnation: 1,
        })
        .unwrap();
    }

    #[test]
    fn a_restarted_broker_leaves_the_isr_and_its_partitions_move_to_an_in_sync_replica() {
        let mut md = Metadata::default();
        for id in 1..=3 {
            reg(&mut md, id);
        }
        md.apply(&Command::CreateTopic {
            name: "t".into(),
            config: TopicConfig::new(3, 3),
            replicas: vec![vec![1, 2, 3], vec![2, 3, 1], vec![1, 3, 2]],
        })
        .unwrap();
        // Nodes 2 and 3 drop out of partition 2's ISR: node 1 is its last
        // member.
        md.apply(&Command::UpdateIsr {
            topic: "t".into(),
            partition: 2,
            isr: vec![1],
            epoch: 1,
        })
        .unwrap();
        // The same incarnation again (a retried registration): nothing moves.
        reg(&mut md, 1);
        let t = &md.topics["t"].partitions;
        assert_eq!((t[0].leader, t[0].leader_epoch), (Some(1), 1));
        // Node 1 restarted (a new incarnation) within its lease.
        md.apply(&Command::RegisterBroker {
            node_id: 1,
            client_addr: "127.0.0.1:9001".into(),
            kafka_addr: String::new(),
            shards: 2,
            incarnation: 2,
        })
        .unwrap();
        let t = &md.topics["t"].partitions;
        // It led partition 0: the next in-sync replica leads, a new epoch.
        assert_eq!((t[0].leader, t[0].leader_epoch), (Some(2), 2));
        assert_eq!(t[0].isr, vec![2, 3]);
        // A follower of partition 1: it leaves the ISR, nothing else moves.
        assert_eq!((t[1].leader, t[1].leader_epoch), (Some(2), 1));
        assert_eq!(t[1].isr, vec![2, 3]);
        // The last in-sync replica of partition 2 keeps it, in a new epoch.
        assert_eq!((t[2].leader, t[2].leader_epoch), (Some(1), 2));
        assert_eq!(t[2].isr, vec![1]);
        assert!(md.is_alive(1));
        assert!(
            controller_actions(&md).is_empty(),
            "{:?}",
            controller_actions(&md)
        );
    }

    #[test]
    fn producer_id_blocks_never_overlap() {
        let mut md = Metadata::default();
        md.apply(&Command::AllocateProducerIds {
            node_id: 1,
            count: 100,
        })
        .unwrap();
        md.apply(&Command::AllocateProducerIds {
            node_id: 2,
            count: 100,
        })
        .unwrap();
        md.apply(&Command::AllocateProducerIds {
            node_id: 1,
            count: 100,
        })
        .unwrap();
        assert_eq!(md.producer_id_blocks[&2], (100, 100));
        assert_eq!(md.producer_id_blocks[&1], (200, 100));
        assert_eq!(md.next_producer_id, 300);
        assert!(md
            .apply(&Command::AllocateProducerIds {
                node_id: 1,
                count: 0
            })
            .is_err());
    }

    #[test]
    fn topic_ids_are_random_v4_uuids() {
        let a = new_topic_id();
        let b = new_topic_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4", "version 4: {a}");
        assert!("89ab".contains(&a[19..20]), "variant 1: {a}");
        // Configs without an id (written before ids existed) still load.
        let old = r#"{"partitions":1,"replication_factor":1,"retention_bytes":-1,"retention_ms":-1,"fsync":"","max_backlog_bytes":-1,"segment_bytes":-1}"#;
        let c: TopicConfig = serde_json::from_str(old).unwrap();
        assert!(c.id.is_empty());
        assert!(!serde_json::to_string(&c).unwrap().contains("id"));
        // Nor a max.message.bytes: unset, and left out when written, so
        // a node without the field reads it too.
        assert_eq!(c.max_message_bytes, -1);
        assert!(!serde_json::to_string(&c)
            .unwrap()
            .contains("max_message_bytes"));
        let set = TopicConfig {
            max_message_bytes: 10_000,
            ..c
        };
        let back: TopicConfig =
            serde_json::from_str(&serde_json::to_string(&set).unwrap()).unwrap();
        assert_eq!(back, set);
    }

    #[test]
    fn placement_spreads_leaders() {
        let mut md = Metadata::default();
        for id in 1..=3 {
            reg(&mut md, id);
        }
        let cfg = TopicConfig::new(6, 3);
        let r = md.place(&cfg).unwrap();
        let mut leaders = [0; 4];
        for rs in &r {
            leaders[rs[0] as usize] += 1;
        }
        assert_eq!(&leaders[1..], &[2, 2, 2]);
        md.apply(&Command::CreateTopic {
            name: "a".into(),
            config: TopicConfig::new(1, 1),
            replicas: vec![vec![1]],
        })
        .unwrap();
        // The next topic starts one node further.
        assert_eq!(md.place(&TopicConfig::new(1, 1)).unwrap(), vec![vec![2]]);
        assert!(md.place(&TopicConfig::new(1, 4)).is_err());
    }

    #[test]
    fn add_partitions_applies_once_and_continues_the_rotation() {
        let mut md = Metadata::default();
        for id in 1..=3 {
            reg(&mut md, id);
        }
        let replicas = md.place(&TopicConfig::new(2, 2)).unwrap();
        md.apply(&Command::CreateTopic {
            name: "t".into(),
            config: TopicConfig::new(2, 2),
            replicas,
        })
        .unwrap();
        assert!(md.place_more("t", 2).is_err(), "no growth is refused");
        assert!(md.place_more("t", 1).is_err(), "shrinking is refused");
        assert!(md.place_more("nope", 4).is_err());
        assert!(md.place_more("t", MAX_PARTITIONS + 1).is_err());
        let (first, more) = md.place_more("t", 5).unwrap();
        assert_eq!(first, 2);
        assert_eq!(more.len(), 3);
        let last = md.partition("t", 1).unwrap().replicas[0];
        // The first new partition is led by the broker after the last one's.
        assert_eq!(more[0][0], last % 3 + 1);
        let cmd = Command::AddPartitions {
            name: "t".into(),
            first,
            replicas: more.clone(),
        };
        let v = md.version;
        md.apply(&cmd).unwrap();
        assert_eq!(md.version, v + 1);
        let t = &md.topics["t"];
        assert_eq!(t.config.partitions, 5);
        assert_eq!(t.partitions.len(), 5);
        for (i, r) in more.iter().enumerate() {
            let p = &t.partitions[2 + i];
            assert_eq!(&p.replicas, r);
            assert_eq!(p.isr, *r);
            assert_eq!(p.leader, Some(r[0]));
            assert_eq!(p.leader_epoch, 1);
        }
        // The same command again (a retry) no longer matches the count.
        assert!(md.apply(&cmd).is_err());
        assert_eq!(md.version, v + 1);
        // Bad replica lists: wrong size, duplicates, unknown broker.
        for bad in [vec![vec![1]], vec![vec![1, 1]], vec![vec![1, 9]]] {
            assert!(md
                .apply(&Command::AddPartitions {
                    name: "t".into(),
                    first: 5,
                    replicas: bad,
                })
                .is_err());
        }
        assert!(md
            .apply(&Command::AddPartitions {
                name: "t".into(),
                first: 5,
                replicas: vec![],
            })
            .is_err());
        assert_eq!(md.topics["t"].partitions.len(), 5);
    }

    #[test]
    fn alter_topic_config_changes_settings_and_keeps_placement() {
        let mut md = Metadata::default();
        for id in 1..=3 {
            reg(&mut md, id);
        }
        let mut config = TopicConfig::new(3, 2);
        config.id = new_topic_id();
        let replicas = md.place(&config).unwrap();
        md.apply(&Command::CreateTopic {
            name: "t".into(),
            config: config.clone(),
            replicas,
        })
        .unwrap();
        let before = md.topics["t"].clone();
        let v = md.version;
        // A config that also names other partitions, replicas and id:
        // those are not the command's to change.
        let mut new = TopicConfig::new(9, 1);
        new.retention_bytes = 1 << 20;
        new.retention_ms = 60_000;
        new.segment_bytes = 1 << 16;
        new.fsync = "interval:100".into();
        new.max_backlog_bytes = 5 << 20;
        new.id = new_topic_id();
        md.apply(&Command::AlterTopicConfig {
            name: "t".into(),
            config: new.clone(),
        })
        .unwrap();
        assert_eq!(md.version, v + 1);
        let t = &md.topics["t"];
        assert_eq!(t.partitions, before.partitions);
        let c = &t.config;
        assert_eq!(
            (c.partitions, c.replication_factor, c.id.as_str()),
            (3, 2, config.id.as_str())
        );
        assert_eq!(
            (
                c.retention_bytes,
                c.retention_ms,
                c.segment_bytes,
                c.fsync.as_str(),
                c.max_backlog_bytes
            ),
            (1 << 20, 60_000, 1 << 16, "interval:100", 5 << 20)
        );
        // Back to the broker defaults.
        md.apply(&Command::AlterTopicConfig {
            name: "t".into(),
            config: TopicConfig::new(3, 2),
        })
        .unwrap();
        assert_eq!(
            md.topics["t"].config,
            TopicConfig {
                id: config.id.clone(),
                ..TopicConfig::new(3, 2)
            }
        );
        // Refused, changing nothing: unknown topic, bad values.
        let v = md.version;
        let bad = |f: fn(&mut TopicConfig)| {
            let mut c = TopicConfig::new(3, 2);
            f(&mut c);
            c
        };
        for (name, c) in [
            ("nope", TopicConfig::new(1, 1)),
            ("t", bad(|c| c.segment_bytes = 100)),
            ("t", bad(|c| c.retention_ms = -5)),
            ("t", bad(|c| c.fsync = "sometimes".into())),
        ] {
            assert!(md
                .apply(&Command::AlterTopicConfig {
                    name: name.into(),
                    config: c,
                })
                .is_err());
        }
        assert_eq!(md.version, v);
        // The command survives the JSON the Raft log stores.
        let cmd = Command::AlterTopicConfig {
            name: "t".into(),
            config: new,
        };
        let back: Command = serde_json::from_str(&serde_json::to_string(&cmd).unwrap()).unwrap();
        assert_eq!(back, cmd);
    }

    #[test]
    fn failover_and_preferred_leader_return() {
        let mut md = Metadata::default();
        for id in 1..=3 {
            reg(&mut md, id);
        }
        let replicas = md.place(&TopicConfig::new(3, 3)).unwrap();
        md.apply(&Command::CreateTopic {
            name: "t".into(),
            config: TopicConfig::new(3, 3),
            replicas,
        })
        .unwrap();
        assert!(controller_actions(&md).is_empty());
        let led_by_1: Vec<u32> = (0..3)
            .filter(|&p| md.partition("t", p).unwrap().leader == Some(1))
            .collect();
        md.apply(&Command::BrokerDown { node_id: 1 }).unwrap();
        let acts = controller_actions(&md);
        assert_eq!(acts.len(), led_by_1.len());
        for a in &acts {
            md.apply(a).unwrap();
            // The same action again is stale and refused.
            assert!(md.apply(a).is_err());
        }
        for p in &led_by_1 {
            let pi = md.partition("t", *p).unwrap();
            assert_eq!(pi.leader_epoch, 2);
            assert_ne!(pi.leader, Some(1));
            assert!(!pi.isr.contains(&1));
        }
        // Broker 1 returns, catches up, re-enters the ISR: leadership returns.
        md.apply(&Command::BrokerUp { node_id: 1 }).unwrap();
        assert!(controller_actions(&md).is_empty());
        for p in &led_by_1 {
            let pi = md.partition("t", *p).unwrap().clone();
            md.apply(&Command::UpdateIsr {
                topic: "t".into(),
                partition: *p,
                isr: pi.replicas.clone(),
                epoch: pi.leader_epoch,
            })
            .unwrap();
        }
        for a in controller_actions(&md) {
            md.apply(&a).unwrap();
        }
        for p in &led_by_1 {
            let pi = md.partition("t", *p).unwrap();
            assert_eq!(pi.leader, Some(1));
            assert_eq!(pi.leader_epoch, 3);
        }
    }

    #[test]
    fn no_unclean_election() {
        let mut md = Metadata::default();
        for id in 1..=2 {
            reg(&mut md, id);
        }
        md.apply(&Command::CreateTopic {
            name: "t".into(),
            config: TopicConfig::new(1, 2),
            replicas: vec![vec![1, 2]],
        })
        .unwrap();
        md.apply(&Command::UpdateIsr {
            topic: "t".into(),
            partition: 0,
            isr: vec![1],
            epoch: 1,
        })
        .unwrap();
        md.apply(&Command::BrokerDown { node_id: 1 }).unwrap();
        // Broker 2 is alive but out of sync: the partition goes leaderless.
        let acts = controller_actions(&md);
        assert_eq!(
            acts,
            vec![Command::SetLeader {
                topic: "t".into(),
                partition: 0,
                leader: None,
                epoch: 2
            }]
        );
        md.apply(&acts[0]).unwrap();
        assert!(controller_actions(&md).is_empty());
        assert!(md
            .apply(&Command::SetLeader {
                topic: "t".into(),
                partition: 0,
                leader: Some(2),
                epoch: 3
            })
            .is_err());
        // The last in-sync replica comes back: it is elected.
        md.apply(&Command::BrokerUp { node_id: 1 }).unwrap();
        let acts = controller_actions(&md);
        assert_eq!(acts.len(), 1);
        md.apply(&acts[0]).unwrap();
        assert_eq!(md.partition("t", 0).unwrap().leader, Some(1));
        assert_eq!(md.partition("t", 0).unwrap().leader_epoch, 3);
    }
}
