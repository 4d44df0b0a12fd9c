//! Kafka's consumer-group APIs on the classic protocol: FindCoordinator,
//! JoinGroup, SyncGroup, Heartbeat, LeaveGroup, ListGroups,
//! DescribeGroups, DeleteGroups. Assignment is the client's (the group's
//! leader computes it with range, roundrobin, cooperative-sticky, ...);
//! the broker only relays plans (`groups/state.rs`).

use super::codec::{code, kafka_error, str_bytes};
use super::metadata::kafka_brokers;
use super::Ctx;
use crate::error::OpError;
use crate::groups::state::{Join, Subscription};
use crate::groups::JoinReply;
use crate::handlers;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use levee_schemas::proto::ErrorCode;
use std::time::Duration;

/// Group requests go to the group's coordinator (the leader of its
/// partition of the offsets topic); another node says NOT_COORDINATOR so
/// the client looks it up again.
pub fn check_coordinator(ctx: &Ctx, group: &str) -> Result<(), OpError> {
    let me = ctx.shard.cfg.node_id;
    let (_, coord) = handlers::groups::coordinator(&ctx.shard, group)?;
    if coord != me {
        return Err(OpError::new(
            ErrorCode::NotLeader,
            format!("node {me} does not coordinate group `{group}`; node {coord} does"),
        ));
    }
    Ok(())
}

fn group_error(e: &OpError) -> i16 {
    kafka_error(e.code, true)
}

pub async fn find_coordinator(ctx: &Ctx, req: FindCoordinatorRequest) -> FindCoordinatorResponse {
    let brokers = kafka_brokers(&ctx.shard);
    let keys: Vec<StrBytes> = if ctx.version >= 4 {
        req.coordinator_keys.clone()
    } else {
        vec![req.key.clone()]
    };
    // The groups' (and transactions') topic is created on first use.
    let created = match req.key_type {
        0 => handlers::groups::ensure_offsets_topic(&ctx.shard).await,
        1 => handlers::txn::ensure_txn_topic(&ctx.shard).await,
        _ => Ok(()),
    };
    let mut out = FindCoordinatorResponse::default();
    for key in keys {
        let mut c = Coordinator::default();
        c.key = key.clone();
        c.node_id = BrokerId(-1);
        let found = match (&created, req.key_type) {
            (Err(e), _) => Err(e.clone()),
            (Ok(()), 0) => handlers::groups::coordinator(&ctx.shard, key.as_str()),
            (Ok(()), 1) => handlers::txn::coordinator(&ctx.shard, key.as_str()),
            _ => Err(OpError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "coordinator key type {} is not 0 (group) or 1 (transaction)",
                    req.key_type
                ),
            )),
        };
        match found.map(|(_, node)| brokers.iter().find(|(id, _, _)| *id == node as i32)) {
            Ok(Some((id, host, port))) => {
                c.node_id = BrokerId(*id);
                c.host = str_bytes(host.clone());
                c.port = *port;
            }
            Ok(None) => {
                c.error_code = code::COORDINATOR_NOT_AVAILABLE;
                c.error_message = Some(str_bytes(
                    "the group's coordinator has no Kafka address yet; retry",
                ));
            }
            Err(e) => {
                c.error_code = code::COORDINATOR_NOT_AVAILABLE;
                c.error_message = Some(str_bytes(e.message));
            }
        }
        out.coordinators.push(c);
    }
    if ctx.version < 4 {
        if let Some(c) = out.coordinators.pop() {
            out.error_code = c.error_code;
            out.error_message = c.error_message;
            out.node_id = c.node_id;
            out.host = c.host;
            out.port = c.port;
        }
    }
    out
}

pub async fn join_group(ctx: &Ctx, req: JoinGroupRequest) -> JoinGroupResponse {
    let mut out = JoinGroupResponse::default();
    out.generation_id = -1;
    out.member_id = req.member_id.clone();
    if let Err(e) = check_coordinator(ctx, req.group_id.as_str()) {
        out.error_code = group_error(&e);
        return out;
    }
    let session = Duration::from_millis(req.session_timeout_ms.clamp(1000, 3_600_000) as u64);
    let rebalance = if ctx.version >= 1 {
        Duration::from_millis(req.rebalance_timeout_ms.clamp(1000, 3_600_000) as u64)
    } else {
        session
    };
    let join = Join {
        member_id: req.member_id.as_str().to_string(),
        fresh_id: String::new(),
        // KIP-394: from v4 a new member first gets its id.
        require_known_id: ctx.version >= 4,
        client_id: ctx.client_id.clone(),
        host: ctx.host.to_string(),
        session_timeout: session,
        rebalance_timeout: rebalance,
        subscription: Subscription::Kafka {
            protocol_type: req.protocol_type.as_str().to_string(),
            protocols: req
                .protocols
                .iter()
                .map(|p| (p.name.as_str().to_string(), p.metadata.to_vec()))
                .collect(),
        },
    };
    match handlers::groups::join(&ctx.shard, req.group_id.as_str().to_string(), join).await {
        Ok(JoinReply::MemberIdRequired(id)) => {
            out.error_code = code::MEMBER_ID_REQUIRED;
            out.member_id = str_bytes(id);
        }
        Ok(JoinReply::Joined(j)) => {
            out.generation_id = j.generation;
            out.protocol_type = Some(req.protocol_type.clone());
            out.protocol_name = Some(str_bytes(j.protocol));
            out.leader = str_bytes(j.leader);
            out.member_id = str_bytes(j.member_id);
            out.members = j
                .members
                .into_iter()
                .map(|(id, md)| {
                    let mut m = JoinGroupResponseMember::default();
                    m.member_id = str_bytes(id);
                    m.metadata = bytes::Bytes::from(md);
                    m
                })
                .collect();
        }
        Err(e) => out.error_code = group_error(&e),
    }
    out
}

pub async fn sync_group(ctx: &Ctx, req: SyncGroupRequest) -> SyncGroupResponse {
    let mut out = SyncGroupResponse::default();
    out.protocol_type = req.protocol_type.clone();
    out.protocol_name = req.protocol_name.clone();
    if let Err(e) = check_coordinator(ctx, req.group_id.as_str()) {
        out.error_code = group_error(&e);
        return out;
    }
    let plan = req
        .assignments
        .iter()
        .map(|a| (a.member_id.as_str().to_string(), a.assignment.to_vec()))
        .collect();
    match handlers::groups::sync(
        &ctx.shard,
        req.group_id.as_str().to_string(),
        req.member_id.as_str().to_string(),
        req.generation_id,
        plan,
    )
    .await
    {
        Ok(a) => out.assignment = bytes::Bytes::from(a),
        Err(e) => out.error_code = group_error(&e),
    }
    out
}

pub async fn heartbeat(ctx: &Ctx, req: HeartbeatRequest) -> HeartbeatResponse {
    let mut out = HeartbeatResponse::default();
    let res = match check_coordinator(ctx, req.group_id.as_str()) {
        Err(e) => Err(e),
        Ok(()) => {
            handlers::groups::heartbeat(
                &ctx.shard,
                req.group_id.as_str().to_string(),
                req.member_id.as_str().to_string(),
                req.generation_id,
            )
            .await
        }
    };
    if let Err(e) = res {
        out.error_code = group_error(&e);
    }
    out
}

pub async fn leave_group(ctx: &Ctx, req: LeaveGroupRequest) -> LeaveGroupResponse {
    let mut out = LeaveGroupResponse::default();
    if let Err(e) = check_coordinator(ctx, req.group_id.as_str()) {
        out.error_code = group_error(&e);
        return out;
    }
    let group = req.group_id.as_str().to_string();
    let members: Vec<StrBytes> = if ctx.version >= 3 {
        req.members.iter().map(|m| m.member_id.clone()).collect()
    } else {
        vec![req.member_id.clone()]
    };
    for id in members {
        let res = handlers::groups::leave(&ctx.shard, group.clone(), id.as_str().to_string()).await;
        let err = res.err().map_or(code::NONE, |e| group_error(&e));
        if ctx.version >= 3 {
            let mut m = MemberResponse::default();
            m.member_id = id;
            m.error_code = err;
            out.members.push(m);
        } else {
            out.error_code = err;
        }
    }
    out
}

pub async fn list_groups(ctx: &Ctx, req: ListGroupsRequest) -> ListGroupsResponse {
    let mut out = ListGroupsResponse::default();
    match handlers::groups::list(&ctx.shard).await {
        Ok(groups) => {
            out.groups = groups
                .into_iter()
                .filter(|(_, state, _, _)| {
                    req.states_filter.is_empty()
                        || req.states_filter.iter().any(|s| s.as_str() == *state)
                })
                .map(|(name, state, _, protocol_type)| {
                    let mut g = ListedGroup::default();
                    g.group_id = GroupId(str_bytes(name));
                    g.protocol_type = str_bytes(if protocol_type.is_empty() {
                        "levee".to_string()
                    } else {
                        protocol_type
                    });
                    g.group_state = str_bytes(state);
                    g.group_type = str_bytes("classic");
                    g
                })
                .collect();
        }
        Err(e) => out.error_code = group_error(&e),
    }
    out
}

pub async fn describe_groups(ctx: &Ctx, req: DescribeGroupsRequest) -> DescribeGroupsResponse {
    let mut out = DescribeGroupsResponse::default();
    for id in req.groups {
        let mut g = DescribedGroup::default();
        g.group_id = id.clone();
        g.authorized_operations = super::metadata::authorized(
            req.include_authorized_operations,
            super::metadata::GROUP_OPERATIONS,
        );
        let res = match check_coordinator(ctx, id.as_str()) {
            Err(e) => Err(e),
            Ok(()) => handlers::groups::describe(&ctx.shard, id.as_str().to_string()).await,
        };
        match res {
            Ok(d) => {
                g.group_state = str_bytes(d.state);
                g.protocol_type = str_bytes(d.protocol_type);
                g.protocol_data = str_bytes(d.protocol);
                g.members = d
                    .members
                    .into_iter()
                    .map(|m| {
                        let mut dm = DescribedGroupMember::default();
                        dm.member_id = str_bytes(m.member_id);
                        dm.client_id = str_bytes(m.client_id);
                        dm.client_host = str_bytes(m.host);
                        dm.member_metadata = bytes::Bytes::from(m.kafka_metadata);
                        dm.member_assignment = bytes::Bytes::from(m.kafka_assignment);
                        dm
                    })
                    .collect();
            }
            // Kafka describes an unknown group as Dead, without an error.
            Err(e) if e.code == ErrorCode::UnknownGroup => {
                g.group_state = str_bytes("Dead");
            }
            Err(e) => {
                g.error_code = group_error(&e);
                g.error_message = Some(str_bytes(e.message));
            }
        }
        out.groups.push(g);
    }
    out
}

pub async fn delete_groups(ctx: &Ctx, req: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut out = DeleteGroupsResponse::default();
    for id in req.groups_names {
        let res = match check_coordinator(ctx, id.as_str()) {
            Err(e) => Err(e),
            Ok(()) => handlers::groups::delete(&ctx.shard, id.as_str().to_string()).await,
        };
        let mut r =
            kafka_protocol::messages::delete_groups_response::DeletableGroupResult::default();
        r.group_id = id;
        r.error_code = res.err().map_or(code::NONE, |e| group_error(&e));
        out.results.push(r);
    }
    out
}
