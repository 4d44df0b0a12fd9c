//! Cluster-mode administration: topic creation and deletion through the
//! coordinator quorum, and the cluster status a node reports. The
//! coordinator client is blocking, so its calls run on glommio's blocking
//! thread pool, off the shard's reactor.

use crate::cluster::ClusterView;
use crate::error::{OpError, OpResult};
use crate::shard::Shard;
use crate::topics::{self, TopicMeta};
use levee_coordinator::CoordError;
use levee_schemas::proto::{ClusterStatusResponse, ErrorCode, NodeStatus};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const COORD_TIMEOUT: Duration = Duration::from_secs(5);

fn coord_error(e: CoordError) -> OpError {
    match e {
        CoordError::Rejected(m) if m.contains("already exists") => {
            OpError::new(ErrorCode::TopicAlreadyExists, m)
        }
        CoordError::Rejected(m) | CoordError::Invalid(m) if m.contains("does not exist") => {
            OpError::new(ErrorCode::UnknownTopicOrPartition, m)
        }
        CoordError::Rejected(m) | CoordError::Invalid(m)
            if m.contains("replica list") || m.contains("not registered") =>
        {
            OpError::new(ErrorCode::InvalidReplicaAssignment, m)
        }
        CoordError::Rejected(m) | CoordError::Invalid(m) if m.contains("partitions") => {
            OpError::new(ErrorCode::InvalidPartitions, m)
        }
        CoordError::Rejected(m) | CoordError::Invalid(m) => {
            OpError::new(ErrorCode::InvalidConfig, m)
        }
        e @ (CoordError::NoQuorum { .. }
        | CoordError::Timeout { .. }
        | CoordError::Unreachable { .. }
        | CoordError::NotLeader { .. }
        | CoordError::Stopped(_)) => OpError::new(
            ErrorCode::CoordinatorUnavailable,
            format!("the coordinator quorum cannot make metadata changes now: {e}"),
        ),
        e @ CoordError::Protocol(_) => OpError::new(ErrorCode::Unknown, e.to_string()),
    }
}

/// Waits until this shard has applied metadata of at least `version`.
async fn wait_applied(
    shard: &Rc<Shard>,
    view: &ClusterView,
    version: u64,
    done: impl Fn(&Shard) -> bool,
) -> OpResult<()> {
    let until = Instant::now() + COORD_TIMEOUT;
    while view.version() <= version || !done(shard) {
        if Instant::now() >= until {
            return Err(OpError::new(
                ErrorCode::RequestTimedOut,
                "the change committed, but this node has not seen it yet; it will shortly",
            ));
        }
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

pub async fn create_topic(
    shard: &Rc<Shard>,
    view: &Arc<ClusterView>,
    name: &str,
    meta: TopicMeta,
    assignment: Vec<Vec<u32>>,
) -> OpResult<()> {
    topics::check_new_topic(name, &meta, true)?;
    let (addrs, n) = (view.addrs(), name.to_string());
    let assignment = assignment
        .into_iter()
        .map(|r| r.into_iter().map(u64::from).collect())
        .collect();
    let applied = glommio::executor()
        .spawn_blocking(move || {
            levee_coordinator::client::create_topic(&addrs, &n, meta, assignment, COORD_TIMEOUT)
        })
        .await
        .map_err(coord_error)?;
    tracing::info!(topic = %name, "created topic through the coordinators");
    wait_applied(shard, view, applied.version, |s| s.topic(name).is_some()).await
}

pub async fn delete_topic(shard: &Rc<Shard>, view: &Arc<ClusterView>, name: &str) -> OpResult<()> {
    if shard.topic(name).is_none() {
        return Err(OpError::new(
            ErrorCode::UnknownTopicOrPartition,
            format!("topic `{name}` does not exist"),
        ));
    }
    let (addrs, n) = (view.addrs(), name.to_string());
    let applied = glommio::executor()
        .spawn_blocking(move || {
            levee_coordinator::client::propose(
                &addrs,
                levee_coordinator::Command::DeleteTopic { name: n },
                COORD_TIMEOUT,
            )
        })
        .await
        .map_err(coord_error)?;
    wait_applied(shard, view, applied.version, |s| s.topic(name).is_none()).await
}

/// Changes a topic's settings through the coordinators
/// (`Command::AlterTopicConfig`), then waits until this node applied them
/// (each node's metadata watcher retunes its replicas).
pub async fn alter_topic(
    shard: &Rc<Shard>,
    view: &Arc<ClusterView>,
    name: &str,
    changes: &[topics::ConfigChange],
    replace: bool,
    validate_only: bool,
) -> OpResult<TopicMeta> {
    let Some(current) = shard.topic(name) else {
        return Err(OpError::new(
            ErrorCode::UnknownTopicOrPartition,
            format!("topic `{name}` does not exist"),
        ));
    };
    let meta = topics::altered(name, &current, changes, replace)?;
    if validate_only || meta == current {
        return Ok(meta);
    }
    let (addrs, n, config) = (view.addrs(), name.to_string(), meta.clone());
    let applied = glommio::executor()
        .spawn_blocking(move || {
            levee_coordinator::client::propose(
                &addrs,
                levee_coordinator::Command::AlterTopicConfig { name: n, config },
                COORD_TIMEOUT,
            )
        })
        .await
        .map_err(coord_error)?;
    tracing::info!(topic = %name, "altered topic settings through the coordinators");
    wait_applied(shard, view, applied.version, |s| {
        s.topic(name)
            .is_some_and(|m| crate::shard::topics::same_settings(&m, &meta))
    })
    .await?;
    Ok(meta)
}

/// Grows a topic to `count` partitions through the coordinators (placed
/// by their leader, or as `assignment` says), then waits until this node
/// has seen the new partitions.
pub async fn add_partitions(
    shard: &Rc<Shard>,
    view: &Arc<ClusterView>,
    name: &str,
    count: u32,
    assignment: Vec<Vec<u32>>,
    validate_only: bool,
) -> OpResult<()> {
    let Some(meta) = shard.topic(name) else {
        return Err(OpError::new(
            ErrorCode::UnknownTopicOrPartition,
            format!("topic `{name}` does not exist"),
        ));
    };
    let brokers: Vec<u32> = view
        .metadata()
        .map(|md| md.brokers.keys().map(|&b| b as u32).collect())
        .unwrap_or_default();
    topics::check_add_partitions(
        name,
        meta.partitions,
        count,
        meta.replication_factor,
        &assignment,
        &brokers,
    )?;
    if validate_only {
        return Ok(());
    }
    let (addrs, n) = (view.addrs(), name.to_string());
    let assignment = assignment
        .into_iter()
        .map(|r| r.into_iter().map(u64::from).collect())
        .collect();
    let applied = glommio::executor()
        .spawn_blocking(move || {
            levee_coordinator::client::add_partitions(&addrs, &n, count, assignment, COORD_TIMEOUT)
        })
        .await
        .map_err(coord_error)?;
    tracing::info!(topic = %name, count, "added partitions through the coordinators");
    wait_applied(shard, view, applied.version, |s| {
        s.topic(name).is_some_and(|m| m.partitions >= count)
    })
    .await
}

/// Every node with its role in the quorum, liveness and leadership counts.
pub async fn cluster_status(view: &Arc<ClusterView>) -> ClusterStatusResponse {
    let coords = view.coordinators.clone();
    let statuses = glommio::executor()
        .spawn_blocking(move || {
            coords
                .iter()
                .map(|(id, addr)| {
                    (
                        *id,
                        levee_coordinator::client::status(addr, Duration::from_millis(500)).ok(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .await;
    let up = statuses.iter().filter(|(_, s)| s.is_some()).count();
    let leader = statuses
        .iter()
        .filter_map(|(_, s)| s.as_ref())
        .find(|s| s.role == levee_coordinator::Role::Leader)
        .map(|s| s.node_id);
    let md = view.metadata();
    let mut ids: Vec<u64> = view.coordinators.iter().map(|(id, _)| *id).collect();
    if let Some(md) = &md {
        ids.extend(md.brokers.keys().copied());
    }
    ids.sort_unstable();
    ids.dedup();
    let nodes = ids
        .into_iter()
        .map(|id| {
            let b = md.as_ref().and_then(|m| m.brokers.get(&id));
            let role = match statuses.iter().find(|(c, _)| *c == id) {
                None => "-".to_string(),
                Some((_, None)) => "unreachable".to_string(),
                Some((_, Some(s))) => s.role.to_string(),
            };
            let (mut led, mut under) = (0u32, 0u32);
            if let Some(md) = &md {
                for t in md.topics.values() {
                    for p in &t.partitions {
                        if p.leader == Some(id) {
                            led += 1;
                            if p.isr.len() < p.replicas.len() {
                                under += 1;
                            }
                        }
                    }
                }
            }
            NodeStatus {
                node_id: id as u32,
                address: Some(b.map(|b| b.client_addr.clone()).unwrap_or_default()),
                role: Some(role),
                live: b.is_some_and(|b| b.alive),
                partitions_led: led,
                under_replicated: under,
            }
        })
        .collect();
    let (error, message) = if leader.is_none() {
        (
            ErrorCode::None,
            Some(format!(
                "no coordinator leader ({up} of {} coordinators reachable): metadata changes (topic creation, leader election) wait for a majority",
                view.coordinators.len()
            )),
        )
    } else {
        (ErrorCode::None, None)
    };
    ClusterStatusResponse {
        error,
        message,
        nodes: Some(nodes),
        coordinators_up: up as u32,
        coordinators_total: view.coordinators.len() as u32,
        has_leader: leader.is_some(),
        leader_id: leader.map_or(-1, |l| l as i64),
    }
}
