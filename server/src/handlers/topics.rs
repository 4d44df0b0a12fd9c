//! Topic administration and description: create, delete, alter and add
//! partitions (through shard
//! 0's registry on a single node, through the coordinators on a cluster),
//! list, describe.

use crate::error::{OpError, OpResult};
use crate::partition::PartitionState;
use crate::shard::Shard;
use crate::topics::TopicMeta;
use levee_schemas::proto::ErrorCode;
use std::rc::Rc;

/// One partition, as described.
#[derive(Debug, Clone)]
pub struct PartitionDescription {
    pub partition: u32,
    /// The leader's node id (`None`: no leader now).
    pub leader: Option<u32>,
    /// The shard that owns it on its nodes.
    pub shard: u32,
    /// Offsets and size (zero where this node holds no replica).
    pub state: PartitionState,
    pub leader_epoch: u64,
    pub replicas: Vec<u32>,
    pub isr: Vec<u32>,
}

/// A topic, as described: its settings (the broker's fsync default filled
/// in) and its partitions.
#[derive(Debug, Clone)]
pub struct TopicDescription {
    pub name: String,
    pub meta: TopicMeta,
    pub partitions: Vec<PartitionDescription>,
}

pub async fn create(shard: &Rc<Shard>, name: String, meta: TopicMeta) -> OpResult<()> {
    create_placed(shard, name, meta, Vec::new()).await
}

/// Creates a topic whose partition p is placed on `assignment[p]` (node
/// ids, the first the preferred leader); empty: the broker places them.
/// `meta.partitions` and `meta.replication_factor` must match it.
pub async fn create_placed(
    shard: &Rc<Shard>,
    name: String,
    meta: TopicMeta,
    assignment: Vec<Vec<u32>>,
) -> OpResult<()> {
    if !assignment.is_empty() {
        if assignment.len() != meta.partitions as usize {
            return Err(OpError::new(
                ErrorCode::InvalidReplicaAssignment,
                format!(
                    "topic `{name}`: {} partitions need {} replica lists, {} were given",
                    meta.partitions,
                    meta.partitions,
                    assignment.len()
                ),
            ));
        }
        let brokers: Vec<u32> = match shard.cluster.as_ref() {
            Some(v) => v
                .metadata()
                .map(|md| md.brokers.keys().map(|&b| b as u32).collect())
                .unwrap_or_default(),
            None => vec![shard.cfg.node_id],
        };
        crate::topics::check_replica_lists(&name, meta.replication_factor, &assignment, &brokers)?;
    }
    if let Some(view) = shard.cluster.clone() {
        return crate::cluster::admin::create_topic(shard, &view, &name, meta, assignment).await;
    }
    shard
        .submit_to(crate::shard::REGISTRY_SHARD, move |s| {
            s.create_topic(name, meta)
        })
        .await
}

/// Internal topics (`__consumer_offsets`) are the broker's own: clients
/// cannot delete them, grow them (a group's partition would move) or
/// produce to them.
pub fn check_not_internal(name: &str, what: &str) -> OpResult<()> {
    if levee_core::is_internal_topic(name) {
        return Err(OpError::new(
            ErrorCode::InvalidTopicName,
            format!("`{name}` is an internal topic kept by the broker; clients cannot {what} it"),
        ));
    }
    Ok(())
}

pub async fn delete(shard: &Rc<Shard>, name: String) -> OpResult<()> {
    check_not_internal(&name, "delete")?;
    if let Some(view) = shard.cluster.clone() {
        return crate::cluster::admin::delete_topic(shard, &view, &name).await;
    }
    shard
        .submit_to(crate::shard::REGISTRY_SHARD, move |s| s.delete_topic(name))
        .await
}

/// Changes a topic's settings (`changes` by Kafka config name; `replace`:
/// the ones not named go back to the broker defaults, as Kafka's
/// AlterConfigs does). Open partitions take the new settings at once, and
/// a lower retention deletes segments at once. `validate_only`: checks and
/// changes nothing. Returns the topic's settings after the change.
pub async fn alter(
    shard: &Rc<Shard>,
    name: String,
    changes: Vec<crate::topics::ConfigChange>,
    replace: bool,
    validate_only: bool,
) -> OpResult<TopicMeta> {
    if let Some(view) = shard.cluster.clone() {
        return crate::cluster::admin::alter_topic(
            shard,
            &view,
            &name,
            &changes,
            replace,
            validate_only,
        )
        .await;
    }
    shard
        .submit_to(crate::shard::REGISTRY_SHARD, move |s| {
            s.alter_topic(name, changes, replace, validate_only)
        })
        .await
}

/// Grows a topic to `count` partitions; `assignment` (node ids, one list
/// per new partition) places them, or the broker does when it is empty.
/// `validate_only`: checks and changes nothing.
pub async fn add_partitions(
    shard: &Rc<Shard>,
    name: String,
    count: u32,
    assignment: Vec<Vec<u32>>,
    validate_only: bool,
) -> OpResult<()> {
    check_not_internal(&name, "add partitions to")?;
    if let Some(view) = shard.cluster.clone() {
        return crate::cluster::admin::add_partitions(
            shard,
            &view,
            &name,
            count,
            assignment,
            validate_only,
        )
        .await;
    }
    shard
        .submit_to(crate::shard::REGISTRY_SHARD, move |s| {
            s.add_partitions(name, count, assignment, validate_only)
        })
        .await
}

pub fn list(shard: &Shard) -> Vec<String> {
    shard.topic_names()
}

/// A partition's placement: its leader, epoch, replicas and ISR (this
/// node alone on a single node).
#[derive(Debug, Clone)]
pub struct Placement {
    pub partition: u32,
    /// The leader's node id (`None`: no leader now).
    pub leader: Option<u32>,
    pub leader_epoch: u64,
    pub replicas: Vec<u32>,
    pub isr: Vec<u32>,
}

/// A topic's settings (the broker's fsync default filled in) and where its
/// partitions are, from the metadata this node holds (no cross-shard work).
pub fn placement(shard: &Shard, name: &str) -> OpResult<(TopicMeta, Vec<Placement>)> {
    let Some(mut meta) = shard.topic(name) else {
        return Err(OpError::new(
            ErrorCode::UnknownTopicOrPartition,
            format!("topic `{name}` does not exist"),
        ));
    };
    if meta.fsync.is_empty() {
        meta.fsync = shard.cfg.log.fsync.clone();
    }
    let cluster = shard
        .cluster
        .as_ref()
        .and_then(|v| v.metadata())
        .and_then(|md| md.topics.get(name).cloned());
    let ids = |v: &[u64]| v.iter().map(|&x| x as u32).collect::<Vec<u32>>();
    let me = shard.cfg.node_id;
    let parts = (0..meta.partitions)
        .map(
            |p| match cluster.as_ref().and_then(|t| t.partitions.get(p as usize)) {
                Some(pi) => Placement {
                    partition: p,
                    leader: pi.leader.map(|l| l as u32),
                    leader_epoch: pi.leader_epoch,
                    replicas: ids(&pi.replicas),
                    isr: ids(&pi.isr),
                },
                None if shard.cluster.is_some() => Placement {
                    partition: p,
                    leader: None,
                    leader_epoch: 0,
                    replicas: Vec::new(),
                    isr: Vec::new(),
                },
                None => Placement {
                    partition: p,
                    leader: Some(me),
                    leader_epoch: 0,
                    replicas: vec![me],
                    isr: vec![me],
                },
            },
        )
        .collect();
    Ok((meta, parts))
}

/// Describes a topic: settings, and per partition its leader, replicas,
/// ISR and (for replicas on this node) offsets and size.
pub async fn describe(shard: &Rc<Shard>, name: &str) -> OpResult<TopicDescription> {
    let (meta, placements) = placement(shard, name)?;
    let me = shard.cfg.node_id;
    let clustered = shard.cluster.is_some();
    let tasks: Vec<_> = placements
        .into_iter()
        .map(|pl| {
            let p = pl.partition;
            let topic = name.to_string();
            let local = !clustered || pl.replicas.contains(&me);
            let task = local.then(|| {
                glommio::spawn_local(shard.submit_to(shard.owner(name, p), move |s| async move {
                    Ok(s.partition(&topic, p)?.state())
                }))
            });
            (pl, task)
        })
        .collect();
    let mut partitions = Vec::with_capacity(tasks.len());
    for (pl, t) in tasks {
        let state = match t {
            Some(t) => t.await.unwrap_or_default(),
            None => PartitionState::default(),
        };
        partitions.push(PartitionDescription {
            partition: pl.partition,
            leader: pl.leader,
            shard: shard.owner(name, pl.partition) as u32,
            state,
            leader_epoch: pl.leader_epoch,
            replicas: pl.replicas,
            isr: pl.isr,
        });
    }
    Ok(TopicDescription {
        name: name.to_string(),
        meta,
        partitions,
    })
}
