//! Consumer-group requests, routed to the shard that owns the group.

use crate::error::{OpError, OpResult};
use crate::groups::state::{Join, Subscription};
use crate::groups::{
    validate_group_name, CommittedOffset, GroupDescription, JoinReply, OffsetCommit,
};
use crate::shard::Shard;
use levee_schemas::proto::ErrorCode;
use std::rc::Rc;

/// A group as listed: name, state, member count, protocol type.
pub type GroupSummary = (String, &'static str, usize, String);

/// Joins `group` (creating it), waiting for the rebalance. A `j` with an
/// empty member id gets a fresh one from the group's shard.
pub async fn join(shard: &Rc<Shard>, group: String, mut j: Join) -> OpResult<JoinReply> {
    validate_group_name(&group)?;
    shard
        .submit_to(shard.group_owner(&group), move |s| async move {
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
            let g = s.groups.open(&group).await?;
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
    validate_group_name(&group)?;
    shard
        .submit_to(shard.group_owner(&group), move |s| async move {
            s.groups
                .existing(&group)?
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
    validate_group_name(&group)?;
    shard
        .submit_to(shard.group_owner(&group), move |s| async move {
            s.groups.existing(&group)?.heartbeat(&member_id, generation)
        })
        .await
}

pub async fn leave(shard: &Rc<Shard>, group: String, member_id: String) -> OpResult<()> {
    validate_group_name(&group)?;
    shard
        .submit_to(shard.group_owner(&group), move |s| async move {
            s.groups.existing(&group)?.leave(&member_id)
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
    validate_group_name(&group)?;
    shard
        .submit_to(shard.group_owner(&group), move |s| async move {
            let g = s.groups.open(&group).await?;
            let res = g.commit(&*s, &member_id, generation, offsets).await;
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

/// The group's committed offsets: all, or those of `wanted` (topic, and
/// partitions or all of the topic's when empty).
pub async fn fetch_offsets(
    shard: &Rc<Shard>,
    group: String,
    wanted: Option<Vec<(String, Vec<u32>)>>,
) -> OpResult<Vec<CommittedOffset>> {
    validate_group_name(&group)?;
    shard
        .submit_to(shard.group_owner(&group), move |s| async move {
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
    validate_group_name(&group)?;
    shard
        .submit_to(shard.group_owner(&group), move |s| async move {
            Ok(s.groups.existing(&group)?.describe())
        })
        .await
}

pub async fn delete(shard: &Rc<Shard>, group: String) -> OpResult<()> {
    validate_group_name(&group)?;
    shard
        .submit_to(shard.group_owner(&group), move |s| async move {
            s.groups.delete(&group).await
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
