//! Consumer-group requests, routed to the group's coordinator: the shard
//! that owns the group's partition of the offsets topic, on the node that
//! leads it. Another node answers NOT_COORDINATOR (the client finds the
//! coordinator again); the topic is created on first use.

use crate::error::{OpError, OpResult};
use crate::groups::state::{Join, Subscription};
use crate::groups::{
    validate_group_name, CommittedOffset, GroupDescription, JoinReply, OffsetCommit,
};
use crate::shard::Shard;
use crate::topics::TopicMeta;
use levee_core::{group_partition, OFFSETS_TOPIC};
use levee_schemas::proto::ErrorCode;
use std::rc::Rc;

/// A group as listed: name, state, member count, protocol type.
pub type GroupSummary = (String, &'static str, usize, String);

/// The offsets topic's settings: every write synced, small segments (a
/// snapshot makes older ones unneeded), replicated to min(3, brokers).
fn offsets_topic_meta(shard: &Shard) -> TopicMeta {
    let (partitions, rf) = match shard.cluster.as_ref() {
        Some(_) => (
            shard.cfg.group_partitions.unwrap_or(16),
            super::internal_topic_replication(shard),
        ),
        None => (shard.cfg.group_partitions.unwrap_or(1), 1),
    };
    let mut meta = TopicMeta::new(partitions, rf);
    meta.fsync = "always".into();
    meta.segment_bytes = 1 << 20;
    meta
}

/// Creates the offsets topic if it does not exist yet.
pub async fn ensure_offsets_topic(shard: &Rc<Shard>) -> OpResult<()> {
    if shard.topic(OFFSETS_TOPIC).is_some() {
        return Ok(());
    }
    let meta = offsets_topic_meta(shard);
    match super::topics::create(shard, OFFSETS_TOPIC.to_string(), meta).await {
        Ok(()) => {
            tracing::info!(
                topic = OFFSETS_TOPIC,
                "created the consumer groups' offsets topic"
            );
            Ok(())
        }
        Err(e) if e.code == ErrorCode::TopicAlreadyExists => Ok(()),
        Err(e) => Err(OpError::new(
            ErrorCode::CoordinatorUnavailable,
            format!(
                "creating the consumer groups' topic {OFFSETS_TOPIC} failed: {}; retry (an internal topic keeps min(3, brokers) copies, so it is created once that many brokers are live)",
                e.message
            ),
        )),
    }
}

/// Where `group` is coordinated: (its offsets partition, the node that
/// leads it), from the metadata this node holds.
pub fn coordinator(shard: &Shard, group: &str) -> OpResult<(u32, u32)> {
    let unavailable = |m: String| OpError::new(ErrorCode::CoordinatorUnavailable, m);
    let Some(meta) = shard.topic(OFFSETS_TOPIC) else {
        return Err(unavailable(format!(
            "the consumer groups' topic {OFFSETS_TOPIC} does not exist yet; retry"
        )));
    };
    let index = group_partition(group, meta.partitions);
    let node = match shard.cluster.as_ref() {
        None => shard.cfg.node_id,
        Some(v) => v
            .metadata()
            .and_then(|md| {
                md.partition(OFFSETS_TOPIC, index)
                    .and_then(|p| p.leader)
                    .filter(|l| md.is_alive(*l))
            })
            .map(|l| l as u32)
            .ok_or_else(|| {
                unavailable(format!(
                    "partition {index} of {OFFSETS_TOPIC}, which holds group `{group}`, has no leader now; retry"
                ))
            })?,
    };
    Ok((index, node))
}

/// The group's offsets partition and the shard that owns it, if this node
/// coordinates the group (else NOT_COORDINATOR, naming the one that does).
pub async fn route(shard: &Rc<Shard>, group: &str) -> OpResult<(u32, usize)> {
    validate_group_name(group)?;
    ensure_offsets_topic(shard).await?;
    // A new topic's (or a failed node's) partition gets its leader shortly.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let (index, node) = loop {
        match coordinator(shard, group) {
            Err(e)
                if e.code == ErrorCode::CoordinatorUnavailable
                    && std::time::Instant::now() < until =>
            {
                glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
            }
            other => break other?,
        }
    };
    let me = shard.cfg.node_id;
    if node != me {
        return Err(OpError::new(
            ErrorCode::NotLeader,
            format!("node {me} does not coordinate group `{group}`; node {node} does"),
        ));
    }
    Ok((index, shard.owner(OFFSETS_TOPIC, index)))
}

/// Joins `group` (creating it), waiting for the rebalance. A `j` with an
/// empty member id gets a fresh one from the group's shard.
pub async fn join(shard: &Rc<Shard>, group: String, mut j: Join) -> OpResult<JoinReply> {
    let (index, owner) = route(shard, &group).await?;
    shard
        .submit_to(owner, move |s| async move {
            s.groups.ready(index).await?;
            if let Subscription::Native { topics, .. } = &j.subscription {
                if let Some(t) = topics.iter().find(|t| s.topic(t).is_none()) {
                    return Err(OpError::new(
                        ErrorCode::UnknownTopicOrPartition,
                        format!(
                            "topic `{t}` does not exist (create it with `levee topic create {t}`)"
                        ),
                    ));
                }
            }
            let g = s.groups.open(&group, index)?;
            if j.member_id.is_empty() {
                j.fresh_id = s.groups.new_member_id(&j.client_id);
            }
            g.join(s.clone(), j).await
        })
        .await
}

/// Kafka SyncGroup: the leader's plan in, this member's assignment out.
pub async fn sync(
    shard: &Rc<Shard>,
    group: String,
    member_id: String,
    generation: i32,
    assignments: Vec<(String, Vec<u8>)>,
) -> OpResult<Vec<u8>> {
    let (index, owner) = route(shard, &group).await?;
    shard
        .submit_to(owner, move |s| async move {
            s.groups.ready(index).await?;
            s.groups
                .existing(&group, index)?
                .sync(&member_id, generation, assignments)
                .await
        })
        .await
}

pub async fn heartbeat(
    shard: &Rc<Shard>,
    group: String,
    member_id: String,
    generation: i32,
) -> OpResult<()> {
    let (index, owner) = route(shard, &group).await?;
    shard
        .submit_to(owner, move |s| async move {
            s.groups.ready(index).await?;
            s.groups
                .existing(&group, index)?
                .heartbeat(&member_id, generation)
        })
        .await
}

pub async fn leave(shard: &Rc<Shard>, group: String, member_id: String) -> OpResult<()> {
    let (index, owner) = route(shard, &group).await?;
    shard
        .submit_to(owner, move |s| async move {
            s.groups.ready(index).await?;
            s.groups.existing(&group, index)?.leave(&member_id)
        })
        .await
}

/// Commits offsets durably (creating the group); per-partition results.
pub async fn commit(
    shard: &Rc<Shard>,
    group: String,
    member_id: String,
    generation: i32,
    offsets: Vec<OffsetCommit>,
) -> OpResult<Vec<(String, u32, OpResult<()>)>> {
    let (index, owner) = route(shard, &group).await?;
    shard
        .submit_to(owner, move |s| async move {
            s.groups.ready(index).await?;
            let g = s.groups.open(&group, index)?;
            let res = s
                .groups
                .commit(&g, &*s, &member_id, generation, offsets)
                .await;
            if let Err(e) = &res {
                if e.no_space {
                    s.space
                        .note_full(&format!("offset commit of group `{group}`"));
                }
            }
            res
        })
        .await
}

/// Commits the offsets a transaction committed (the transaction
/// coordinator, completing it), creating the group if needed.
pub async fn commit_txn_offsets(
    shard: &Rc<Shard>,
    group: String,
    offsets: Vec<OffsetCommit>,
) -> OpResult<()> {
    let (index, owner) = route(shard, &group).await?;
    shard
        .submit_to(owner, move |s| async move {
            s.groups.ready(index).await?;
            let g = s.groups.open(&group, index)?;
            s.groups.commit_txn(&g, &*s, offsets).await.map(|_| ())
        })
        .await
}

/// A transaction that sent offsets of `group` for `parts` aborted: they
/// are no longer unstable.
pub async fn abort_txn_offsets(
    shard: &Rc<Shard>,
    group: String,
    parts: Vec<(String, u32)>,
) -> OpResult<()> {
    let (index, owner) = route(shard, &group).await?;
    shard
        .submit_to(owner, move |s| async move {
            s.groups.ready(index).await?;
            s.groups.clear_txn_pending(&group, index, parts).await
        })
        .await
}

/// The partitions of `group` whose offsets a transaction sent and has not
/// completed (OffsetFetch's require_stable, KIP-447).
pub async fn txn_pending_offsets(shard: &Rc<Shard>, group: String) -> OpResult<Vec<(String, u32)>> {
    let (index, owner) = route(shard, &group).await?;
    shard
        .submit_to(owner, move |s| async move {
            s.groups.ready(index).await?;
            Ok(s.groups.txn_pending(&group))
        })
        .await
}

/// The group's committed offsets: all, or those of `wanted` (topic, and
/// partitions or all of the topic's when empty).
pub async fn fetch_offsets(
    shard: &Rc<Shard>,
    group: String,
    wanted: Option<Vec<(String, Vec<u32>)>>,
) -> OpResult<Vec<CommittedOffset>> {
    let (index, owner) = route(shard, &group).await?;
    shard
        .submit_to(owner, move |s| async move {
            s.groups.ready(index).await?;
            s.groups.home(index)?;
            let Some(g) = s.groups.get(&group) else {
                return Ok(Vec::new());
            };
            Ok(g.offsets(|t, p| match &wanted {
                None => true,
                Some(w) if w.is_empty() => true,
                Some(w) => w
                    .iter()
                    .any(|(wt, ps)| wt == t && (ps.is_empty() || ps.contains(&p))),
            }))
        })
        .await
}

pub async fn describe(shard: &Rc<Shard>, group: String) -> OpResult<GroupDescription> {
    let (index, owner) = route(shard, &group).await?;
    shard
        .submit_to(owner, move |s| async move {
            s.groups.ready(index).await?;
            Ok(s.groups.existing(&group, index)?.describe())
        })
        .await
}

pub async fn delete(shard: &Rc<Shard>, group: String) -> OpResult<()> {
    let (index, owner) = route(shard, &group).await?;
    shard
        .submit_to(owner, move |s| async move {
            s.groups.ready(index).await?;
            s.groups.delete(&group, index).await
        })
        .await
}

/// Every group of every shard, sorted by name.
pub async fn list(shard: &Rc<Shard>) -> OpResult<Vec<GroupSummary>> {
    let tasks: Vec<_> = (0..shard.nshards)
        .map(|n| {
            glommio::spawn_local(shard.submit_to(n, |s| async move {
                Ok(s.groups
                    .all()
                    .iter()
                    .map(|g| g.summary())
                    .collect::<Vec<_>>())
            }))
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(all)
}
