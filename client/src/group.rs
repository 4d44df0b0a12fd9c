//! Consumer groups: the group requests on [`Client`] (join, heartbeat,
//! leave, commit and fetch offsets, list, describe, delete) and
//! [`GroupConsumer`], a consumer whose partitions are assigned by the broker
//! and whose positions are committed to the group.
//!
//! The broker runs the group protocol and computes the assignment itself
//! (as Kafka's KIP-848 protocol does): a member joins, gets its partitions
//! once the group has rebalanced, heartbeats, and joins again when a
//! heartbeat says the group is rebalancing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use levee_schemas::proto::{
    self, CommitOffsets, DeleteGroup, DescribeGroup, ErrorCode, FetchOffsets, Heartbeat, JoinGroup,
    LeaveGroup, ListGroups, Request, Response, TopicPartitions,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{required, Client, OffsetSpec};
use crate::connection::unexpected;
use crate::consumer::{ConsumedRecord, Consumer, ConsumerConfig};
use crate::error::{ClientError, Result};

/// Partitions per topic, each list sorted.
pub type Assignment = BTreeMap<String, Vec<u32>>;

/// What [`Client::join_group`] sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinGroupRequest {
    /// The group (1 to 249 of `[a-zA-Z0-9._-]`).
    pub group: String,
    /// Empty on the first join: the broker assigns one.
    pub member_id: String,
    /// The topics this member subscribes to.
    pub topics: Vec<String>,
    /// `range`, `roundrobin` or `sticky`; empty: the group's current one.
    pub strategy: String,
    /// The member is removed if it does not heartbeat for this long.
    pub session_timeout: Duration,
    /// How long a rebalance waits for the members to join again.
    pub rebalance_timeout: Duration,
}

/// The broker's answer to a join: the member's place in the new generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedGroup {
    /// The group's generation, to send with heartbeats and commits.
    pub generation: i32,
    /// This member's id (assigned by the broker on the first join).
    pub member_id: String,
    /// The strategy the broker used.
    pub strategy: String,
    /// This member's partitions.
    pub assignment: Assignment,
    /// How often to heartbeat.
    pub heartbeat_interval: Duration,
}

/// A committed offset, as stored by the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOffset {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// The next offset to consume (Kafka's convention).
    pub offset: u64,
    /// Metadata stored with the commit, if any.
    pub metadata: Option<String>,
    /// When it was committed (ms since the Unix epoch; 0 if unknown).
    pub commit_timestamp_ms: i64,
}

/// One offset to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommit {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// The next offset to consume; `None` deletes the committed offset.
    pub offset: Option<u64>,
    /// Stored with the offset.
    pub metadata: Option<String>,
}

impl OffsetCommit {
    /// Commits `offset` (the next offset to consume) for a partition.
    pub fn new(topic: impl Into<String>, partition: u32, offset: u64) -> OffsetCommit {
        OffsetCommit {
            topic: topic.into(),
            partition,
            offset: Some(offset),
            metadata: None,
        }
    }
}

/// A group as listed by [`Client::list_groups`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    /// The group's name.
    pub group: String,
    /// `Empty`, `PreparingRebalance` or `Stable`.
    pub state: String,
    /// Number of members.
    pub members: u32,
    /// The node coordinating it (the one that listed it).
    pub coordinator: u32,
}

/// A member as described by [`Client::describe_group`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMemberInfo {
    /// The member's id.
    pub member_id: String,
    /// The client id it connected with.
    pub client_id: String,
    /// Its address as the broker sees it.
    pub host: String,
    /// Its partitions.
    pub assignment: Assignment,
}

/// A group as described by [`Client::describe_group`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// The group's name.
    pub group: String,
    /// `Empty`, `PreparingRebalance` or `Stable`.
    pub state: String,
    /// The current generation.
    pub generation: i32,
    /// The assignment strategy.
    pub strategy: String,
    /// The members, with their partitions.
    pub members: Vec<GroupMemberInfo>,
    /// Every committed offset of the group.
    pub offsets: Vec<GroupOffset>,
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn assignment_from(tps: Option<Vec<TopicPartitions>>) -> Assignment {
    let mut out = Assignment::new();
    for tp in tps.into_iter().flatten() {
        let ps = out.entry(tp.topic).or_default();
        ps.extend(tp.partitions.into_iter().flatten());
        ps.sort_unstable();
        ps.dedup();
    }
    out
}

fn assignment_to(a: &Assignment) -> Vec<TopicPartitions> {
    a.iter()
        .map(|(t, ps)| TopicPartitions {
            topic: t.clone(),
            partitions: Some(ps.clone()),
        })
        .collect()
}

fn offsets_from(v: Option<Vec<proto::CommittedOffset>>) -> Vec<GroupOffset> {
    v.into_iter()
        .flatten()
        .filter_map(|c| {
            Some(GroupOffset {
                offset: u64::try_from(c.offset).ok()?,
                topic: c.topic,
                partition: c.partition,
                metadata: c.metadata,
                commit_timestamp_ms: c.commit_timestamp_ms,
            })
        })
        .collect()
}

fn group_result(reply: crate::connection::Reply, group: &str) -> Result<()> {
    match reply.header.response {
        Some(Response::GroupResult(r)) => {
            if r.error == ErrorCode::None {
                Ok(())
            } else {
                Err(ClientError::from_group_code(r.error, r.message, group))
            }
        }
        other => Err(unexpected("GroupResult", other.as_ref())),
    }
}

/// Extra time given to a join on top of the rebalance timeout.
const JOIN_SLACK: Duration = Duration::from_secs(5);

/// How long a group request keeps looking for the group's coordinator
/// (a coordinator moves when its node fails: election, then loading).
const COORDINATOR_WAIT: Duration = Duration::from_secs(20);

/// The error a group request's answer carries, wherever it carries it.
fn reply_code(reply: &crate::connection::Reply) -> ErrorCode {
    if reply.header.error != ErrorCode::None {
        return reply.header.error;
    }
    match &reply.header.response {
        Some(Response::JoinGroupResponse(r)) => r.error,
        Some(Response::GroupResult(r)) => r.error,
        Some(Response::OffsetsResponse(r)) => r.error,
        Some(Response::GroupDescription(r)) => r.error,
        Some(Response::TxnResponse(r)) => r.error,
        _ => ErrorCode::None,
    }
}

/// Whether a code is about group membership or state.
fn is_group_code(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::InvalidGroupId
            | ErrorCode::UnknownGroup
            | ErrorCode::UnknownMemberId
            | ErrorCode::IllegalGeneration
            | ErrorCode::RebalanceInProgress
            | ErrorCode::GroupNotEmpty
    )
}

impl Client {
    /// A group request. The broker may refuse it in the response header
    /// or in the response's own error field: both give the same typed error.
    ///
    /// It goes to the group's coordinator: the leader of the group's
    /// partition of the offsets topic, from the cluster metadata (the
    /// bootstrap broker until that topic exists). A broker that is not (or
    /// not yet) the coordinator says so; the metadata is then read again
    /// and the request sent again, for up to [`COORDINATOR_WAIT`].
    pub(crate) async fn group_call(
        &self,
        group: &str,
        request: Request,
        extra: Duration,
        what: &str,
    ) -> Result<crate::connection::Reply> {
        let deadline = Instant::now() + COORDINATOR_WAIT;
        let mut backoff = Duration::from_millis(20);
        loop {
            let res = match self.group_connection(group).await {
                Ok(conn) => {
                    conn.call(
                        request.clone(),
                        Vec::new(),
                        self.config().request_timeout + extra,
                        what,
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            let code = match &res {
                Ok(reply) => reply_code(reply),
                Err(ClientError::Server { code, .. }) => *code,
                Err(e) if e.is_retriable() => ErrorCode::CoordinatorUnavailable,
                Err(_) => ErrorCode::None,
            };
            let moved = matches!(
                code,
                ErrorCode::NotLeader
                    | ErrorCode::CoordinatorUnavailable
                    | ErrorCode::CoordinatorLoadInProgress
            );
            if moved && Instant::now() + backoff < deadline {
                tracing::debug!(
                    group,
                    code = levee_schemas::error_name(code),
                    "finding the group coordinator again"
                );
                self.invalidate_metadata();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            }
            return res.map_err(|e| match e {
                ClientError::Server { code, message } if is_group_code(code) => {
                    ClientError::from_group_code(code, Some(message), group)
                }
                e => e,
            });
        }
    }

    /// The connection to `group`'s coordinator, as the metadata says.
    async fn group_connection(
        &self,
        group: &str,
    ) -> Result<std::sync::Arc<crate::connection::Connection>> {
        if group.is_empty() {
            return self.connection().await;
        }
        match self.group_coordinator(group).await? {
            Some(node) => self.node_connection(node).await,
            None => self.connection().await,
        }
    }

    /// Joins (or rejoins) a group. Blocks until the group has rebalanced
    /// (up to the rebalance timeout), then returns this member's partitions.
    pub async fn join_group(&self, req: &JoinGroupRequest) -> Result<JoinedGroup> {
        let request = Request::JoinGroup(Box::new(JoinGroup {
            group: req.group.clone(),
            member_id: Some(req.member_id.clone()),
            client_id: Some(self.config().client_id.clone()),
            topics: Some(req.topics.clone()),
            strategy: Some(req.strategy.clone()),
            session_timeout_ms: millis(req.session_timeout),
            rebalance_timeout_ms: millis(req.rebalance_timeout),
        }));
        let reply = self
            .group_call(
                &req.group,
                request,
                req.rebalance_timeout + JOIN_SLACK,
                "join group",
            )
            .await?;
        match reply.header.response {
            Some(Response::JoinGroupResponse(r)) => {
                if r.error != ErrorCode::None {
                    return Err(ClientError::from_group_code(r.error, r.message, &req.group));
                }
                let member_id = r.member_id.unwrap_or_default();
                if member_id.is_empty() {
                    return Err(ClientError::Protocol(
                        "join group response carries no member id".into(),
                    ));
                }
                Ok(JoinedGroup {
                    generation: r.generation,
                    member_id,
                    strategy: r.strategy.unwrap_or_default(),
                    assignment: assignment_from(r.assignment),
                    heartbeat_interval: Duration::from_millis(u64::from(r.heartbeat_interval_ms)),
                })
            }
            other => Err(unexpected("JoinGroupResponse", other.as_ref())),
        }
    }

    /// Tells the group this member is alive. `Err(Rebalance)`: commit and
    /// join again; `Err(Fenced)`: join again (see [`ClientError::Fenced`]).
    pub async fn heartbeat(&self, group: &str, member_id: &str, generation: i32) -> Result<()> {
        let request = Request::Heartbeat(Box::new(Heartbeat {
            group: group.to_string(),
            member_id: member_id.to_string(),
            generation,
        }));
        let reply = self
            .group_call(group, request, Duration::ZERO, "heartbeat")
            .await?;
        group_result(reply, group)
    }

    /// Leaves a group: the others rebalance at once.
    pub async fn leave_group(&self, group: &str, member_id: &str) -> Result<()> {
        let request = Request::LeaveGroup(Box::new(LeaveGroup {
            group: group.to_string(),
            member_id: member_id.to_string(),
        }));
        let reply = self
            .group_call(group, request, Duration::ZERO, "leave group")
            .await?;
        group_result(reply, group)
    }

    /// Commits offsets (each the next offset to consume). A member passes
    /// its id and generation; an administrative commit passes `""` and `-1`
    /// and is refused (`GroupNotEmpty`) while the group has members. Fails
    /// if any partition's offset was not stored.
    pub async fn commit_offsets(
        &self,
        group: &str,
        member_id: &str,
        generation: i32,
        offsets: &[OffsetCommit],
    ) -> Result<()> {
        let request = Request::CommitOffsets(Box::new(CommitOffsets {
            group: group.to_string(),
            member_id: Some(member_id.to_string()),
            generation,
            offsets: Some(
                offsets
                    .iter()
                    .map(|o| proto::CommittedOffset {
                        topic: o.topic.clone(),
                        partition: o.partition,
                        offset: o
                            .offset
                            .map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX)),
                        metadata: o.metadata.clone(),
                        commit_timestamp_ms: 0,
                    })
                    .collect(),
            ),
        }));
        let reply = self
            .group_call(group, request, Duration::ZERO, "commit offsets")
            .await?;
        let r = match reply.header.response {
            Some(Response::OffsetsResponse(r)) => r,
            other => return Err(unexpected("OffsetsResponse", other.as_ref())),
        };
        if r.error != ErrorCode::None {
            return Err(ClientError::from_group_code(r.error, r.message, group));
        }
        let failed = required(r.failed);
        let Some(first) = failed.first() else {
            return Ok(());
        };
        for f in &failed {
            tracing::warn!(
                group,
                topic = f.topic.as_deref().unwrap_or(""),
                partition = f.partition,
                code = levee_schemas::error_name(f.error),
                "offset not committed"
            );
        }
        let message = format!(
            "{} of {} offset(s) not committed{}",
            failed.len(),
            offsets.len(),
            first
                .message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        );
        Err(match first.error {
            ErrorCode::UnknownTopicOrPartition => ClientError::UnknownTopicOrPartition {
                topic: first.topic.clone().unwrap_or_default(),
                partition: Some(first.partition),
            },
            code @ (ErrorCode::RebalanceInProgress
            | ErrorCode::UnknownMemberId
            | ErrorCode::IllegalGeneration
            | ErrorCode::UnknownGroup
            | ErrorCode::GroupNotEmpty
            | ErrorCode::InvalidGroupId) => {
                ClientError::from_group_code(code, Some(message), group)
            }
            ErrorCode::None => ClientError::Protocol(format!(
                "commit response lists a failed partition without an error code ({message})"
            )),
            code => ClientError::Server { code, message },
        })
    }

    /// The group's committed offsets for `partitions` (empty: every one).
    /// Partitions without a committed offset are absent; an unknown group
    /// has none.
    pub async fn fetch_offsets(
        &self,
        group: &str,
        partitions: &Assignment,
    ) -> Result<Vec<GroupOffset>> {
        let request = Request::FetchOffsets(Box::new(FetchOffsets {
            group: group.to_string(),
            partitions: Some(assignment_to(partitions)),
        }));
        let reply = self
            .group_call(group, request, Duration::ZERO, "fetch offsets")
            .await?;
        match reply.header.response {
            Some(Response::OffsetsResponse(r)) => {
                if r.error != ErrorCode::None {
                    return Err(ClientError::from_group_code(r.error, r.message, group));
                }
                Ok(offsets_from(r.offsets))
            }
            other => Err(unexpected("OffsetsResponse", other.as_ref())),
        }
    }

    /// Every group of the cluster (each node lists those it coordinates),
    /// sorted by name.
    pub async fn list_groups(&self) -> Result<Vec<GroupSummary>> {
        let nodes = self.metadata(&[]).await?.brokers;
        let mut groups = Vec::new();
        if nodes.len() <= 1 {
            let conn = self.connection().await?;
            let node = conn.hello().node_id;
            groups.extend(self.list_groups_on(&conn, node).await?);
        } else {
            // A node that cannot be reached (down) coordinates nothing now.
            let mut answered = 0;
            let mut last_err = None;
            for b in nodes {
                let listed = match self.node_connection(b.node_id).await {
                    Ok(conn) => self.list_groups_on(&conn, b.node_id).await,
                    Err(e) => Err(e),
                };
                match listed {
                    Ok(g) => {
                        answered += 1;
                        groups.extend(g);
                    }
                    Err(e) => last_err = Some(e),
                }
            }
            if answered == 0 {
                if let Some(e) = last_err {
                    return Err(e);
                }
            }
        }
        groups.sort_by(|a, b| a.group.cmp(&b.group));
        Ok(groups)
    }

    async fn list_groups_on(
        &self,
        conn: &crate::connection::Connection,
        node: u32,
    ) -> Result<Vec<GroupSummary>> {
        let reply = conn
            .call(
                Request::ListGroups(Box::new(ListGroups {})),
                Vec::new(),
                self.config().request_timeout,
                "list groups",
            )
            .await?;
        match reply.header.response {
            Some(Response::ListGroupsResponse(r)) => Ok(required(r.groups)
                .into_iter()
                .map(|g| GroupSummary {
                    group: g.group.unwrap_or_default(),
                    state: g.state.unwrap_or_default(),
                    members: g.members,
                    coordinator: node,
                })
                .collect()),
            other => Err(unexpected("ListGroupsResponse", other.as_ref())),
        }
    }

    /// A group's state, members with their partitions, and committed
    /// offsets. An unknown group is a [`ClientError::Group`] with
    /// `UnknownGroup`.
    pub async fn describe_group(&self, group: &str) -> Result<GroupInfo> {
        let reply = self
            .group_call(
                group,
                Request::DescribeGroup(Box::new(DescribeGroup {
                    group: group.to_string(),
                })),
                Duration::ZERO,
                "describe group",
            )
            .await?;
        let d = match reply.header.response {
            Some(Response::GroupDescription(d)) => d,
            other => return Err(unexpected("GroupDescription", other.as_ref())),
        };
        if d.error != ErrorCode::None {
            return Err(ClientError::from_group_code(d.error, d.message, group));
        }
        let mut members: Vec<GroupMemberInfo> = required(d.members)
            .into_iter()
            .map(|m| GroupMemberInfo {
                member_id: m.member_id.unwrap_or_default(),
                client_id: m.client_id.unwrap_or_default(),
                host: m.host.unwrap_or_default(),
                assignment: assignment_from(m.assignment),
            })
            .collect();
        members.sort_by(|a, b| a.member_id.cmp(&b.member_id));
        let mut offsets = offsets_from(d.offsets);
        offsets.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(GroupInfo {
            group: d.group.unwrap_or_else(|| group.to_string()),
            state: d.state.unwrap_or_default(),
            generation: d.generation,
            strategy: d.strategy.unwrap_or_default(),
            members,
            offsets,
        })
    }

    /// Deletes a group and its committed offsets (refused with
    /// `GroupNotEmpty` while it has members).
    pub async fn delete_group(&self, group: &str) -> Result<()> {
        let reply = self
            .group_call(
                group,
                Request::DeleteGroup(Box::new(DeleteGroup {
                    group: group.to_string(),
                })),
                Duration::ZERO,
                "delete group",
            )
            .await?;
        group_result(reply, group)
    }
}

/// Where a group consumer starts a partition the group has no committed
/// offset for, and where it goes when its position is outside the log
/// (Kafka's `auto.offset.reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetReset {
    /// The first stored offset.
    Earliest,
    /// The end of the log.
    #[default]
    Latest,
    /// Fail with [`ClientError::NoCommittedOffset`] (or
    /// [`ClientError::OffsetOutOfRange`]).
    Error,
}

impl std::str::FromStr for OffsetReset {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<OffsetReset, String> {
        match s {
            "earliest" | "beginning" => Ok(OffsetReset::Earliest),
            "latest" | "end" => Ok(OffsetReset::Latest),
            "error" | "none" => Ok(OffsetReset::Error),
            _ => Err(format!("expected earliest, latest or error, not `{s}`")),
        }
    }
}

/// [`GroupConsumer`] settings.
#[derive(Debug, Clone)]
pub struct GroupConsumerConfig {
    /// The group to join.
    pub group: String,
    /// The topics to consume.
    pub topics: Vec<String>,
    /// `range` (default), `roundrobin` or `sticky`: how the broker assigns
    /// partitions.
    pub strategy: String,
    /// The broker removes the member if it does not heartbeat for this long
    /// (default 10 s).
    pub session_timeout: Duration,
    /// How long a rebalance waits for members to join again (default 30 s).
    pub rebalance_timeout: Duration,
    /// Commit the positions of the records returned by `poll` this often,
    /// and before a rebalance and on close (default 5 s); `None`: only
    /// [`GroupConsumer::commit`] commits.
    pub auto_commit: Option<Duration>,
    /// Where to start without a committed offset, or when out of range
    /// (default `Latest`).
    pub reset: OffsetReset,
    /// Fetch settings.
    pub fetch: ConsumerConfig,
}

impl Default for GroupConsumerConfig {
    fn default() -> Self {
        GroupConsumerConfig {
            group: String::new(),
            topics: Vec::new(),
            strategy: "range".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            auto_commit: Some(Duration::from_secs(5)),
            reset: OffsetReset::Latest,
            fetch: ConsumerConfig::default(),
        }
    }
}

impl GroupConsumerConfig {
    /// A configuration for `group` consuming `topics`, defaults otherwise.
    pub fn new<S: Into<String>>(
        group: impl Into<String>,
        topics: impl IntoIterator<Item = S>,
    ) -> GroupConsumerConfig {
        GroupConsumerConfig {
            group: group.into(),
            topics: topics.into_iter().map(Into::into).collect(),
            ..GroupConsumerConfig::default()
        }
    }
}

/// Why a member (re)joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejoin {
    /// Not a member yet.
    Initial,
    /// The group is rebalancing: commit, rejoin with the same id.
    Rebalance,
    /// Stale generation: rejoin with the same id.
    NewGeneration,
    /// The member was removed: rejoin with an empty id.
    Expelled,
}

impl Rejoin {
    /// The rejoin an error calls for, if any.
    pub(crate) fn for_error(e: &ClientError) -> Option<Rejoin> {
        match e {
            ClientError::Rebalance { .. } => Some(Rejoin::Rebalance),
            ClientError::Fenced {
                code: ErrorCode::IllegalGeneration,
                ..
            } => Some(Rejoin::NewGeneration),
            ClientError::Fenced { .. } => Some(Rejoin::Expelled),
            ClientError::Group {
                code: ErrorCode::UnknownGroup,
                ..
            } => Some(Rejoin::Expelled),
            _ => None,
        }
    }
}

/// The heartbeat period: the broker's, else a third of the session timeout
/// (at least 100 ms).
pub(crate) fn heartbeat_period(from_broker: Duration, session_timeout: Duration) -> Duration {
    let p = if from_broker.is_zero() {
        session_timeout / 3
    } else {
        from_broker
    };
    p.max(Duration::from_millis(100))
}

/// The partitions whose position survives a rejoin: after a rebalance into
/// the next generation, the partitions this member keeps were never owned
/// by anyone else in between, so their positions (even uncommitted ones)
/// stay valid. After any other rejoin every position is looked up again.
pub(crate) fn retained(
    reason: Rejoin,
    old_generation: i32,
    new_generation: i32,
    old: &Assignment,
    new: &Assignment,
) -> BTreeSet<(String, u32)> {
    let mut out = BTreeSet::new();
    if reason != Rejoin::Rebalance || old_generation.checked_add(1) != Some(new_generation) {
        return out;
    }
    for (t, ps) in new {
        if let Some(old_ps) = old.get(t) {
            for p in ps {
                if old_ps.binary_search(p).is_ok() {
                    out.insert((t.clone(), *p));
                }
            }
        }
    }
    out
}

/// The offsets to commit: every position that differs from what the group
/// is known to hold.
pub(crate) fn commit_delta<'a>(
    positions: impl Iterator<Item = (&'a str, u32, u64)>,
    committed: &BTreeMap<(String, u32), u64>,
) -> Vec<OffsetCommit> {
    positions
        .filter(|(t, p, o)| committed.get(&(t.to_string(), *p)) != Some(o))
        .map(|(t, p, o)| OffsetCommit::new(t, p, o))
        .collect()
}

/// Waits until the heartbeat task asks for a rejoin (forever if it stopped
/// without asking).
async fn rejoin_requested(rx: &mut watch::Receiver<Option<Rejoin>>) {
    loop {
        if rx.borrow_and_update().is_some() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A member of a consumer group: the broker assigns it partitions of the
/// subscribed topics, it reads them from the group's committed offsets (or
/// per its [`OffsetReset`] policy), commits its progress, and follows
/// rebalances by itself. Heartbeats run in a background task on their own
/// connection. Not shared between tasks: `poll` takes `&mut self`.
///
/// Delivery is at least once: records returned by `poll` but not committed
/// when the partition moves to another member are read again by it.
#[derive(Debug)]
pub struct GroupConsumer {
    consumer: Consumer,
    /// Connection for the group requests (joins block; heartbeats must not
    /// wait behind long-poll fetches).
    coord: Client,
    config: GroupConsumerConfig,
    joined: bool,
    member_id: String,
    generation: i32,
    strategy: String,
    assignment: Assignment,
    /// What the group holds for the assigned partitions, as far as known.
    committed: BTreeMap<(String, u32), u64>,
    /// A rejoin this consumer itself found necessary (a fenced commit, a
    /// failed join to retry).
    pending: Option<Rejoin>,
    signal: watch::Receiver<Option<Rejoin>>,
    heartbeat: Option<JoinHandle<()>>,
    last_commit: Instant,
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        self.stop_heartbeat();
    }
}

impl GroupConsumer {
    /// Joins the group (blocking until it has rebalanced) and positions
    /// the assigned partitions. `client` carries the fetches; a second
    /// connection is opened for the group requests and heartbeats.
    pub async fn join(client: Client, config: GroupConsumerConfig) -> Result<GroupConsumer> {
        if config.group.is_empty() {
            return Err(ClientError::InvalidArgument(
                "the group name is empty".into(),
            ));
        }
        if config.topics.is_empty() {
            return Err(ClientError::InvalidArgument(
                "a group consumer needs at least one topic".into(),
            ));
        }
        let coord = Client::connect(client.config().clone()).await?;
        let (_tx, signal) = watch::channel(None);
        let mut gc = GroupConsumer {
            consumer: Consumer::new(client, config.fetch.clone()),
            coord,
            config,
            joined: false,
            member_id: String::new(),
            generation: -1,
            strategy: String::new(),
            assignment: Assignment::new(),
            committed: BTreeMap::new(),
            pending: None,
            signal,
            heartbeat: None,
            last_commit: Instant::now(),
        };
        gc.rejoin(Rejoin::Initial).await?;
        gc.resolve_positions().await?;
        Ok(gc)
    }

    /// This member's partitions in the current generation.
    pub fn assignment(&self) -> &Assignment {
        &self.assignment
    }

    /// The current generation (-1 before the first join).
    pub fn generation(&self) -> i32 {
        self.generation
    }

    /// This member's id (empty before the first join).
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// The group, member id and generation, for a transactional producer's
    /// [`crate::Producer::send_offsets_to_transaction`] (the group's
    /// coordinator checks them, as Kafka's does).
    pub fn group_metadata(&self) -> ConsumerGroupMetadata {
        ConsumerGroupMetadata {
            group: self.config.group.clone(),
            member_id: self.member_id.clone(),
            generation: self.generation,
        }
    }

    /// The position of every assigned partition (the next offset `poll`
    /// returns), as offsets to commit: what a consume-transform-produce
    /// loop sends to its transaction after processing a poll's records.
    pub fn positions(&self) -> Vec<OffsetCommit> {
        self.consumer
            .positions()
            .map(|(t, p, o)| OffsetCommit::new(t, p, o))
            .collect()
    }

    /// The strategy the broker assigned with.
    pub fn strategy(&self) -> &str {
        &self.strategy
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.config.group
    }

    /// The next offset to be returned from an assigned partition.
    pub fn position(&self, topic: &str, partition: u32) -> Option<u64> {
        self.consumer.position(topic, partition)
    }

    /// The offset last committed (or found committed) for an assigned
    /// partition.
    pub fn committed(&self, topic: &str, partition: u32) -> Option<u64> {
        self.committed.get(&(topic.to_string(), partition)).copied()
    }

    /// Moves an assigned partition's position (committed by the next
    /// commit). A partition not assigned is an error.
    pub fn seek(&mut self, topic: &str, partition: u32, offset: u64) -> Result<()> {
        let assigned = self
            .assignment
            .get(topic)
            .is_some_and(|ps| ps.binary_search(&partition).is_ok());
        if !assigned {
            return Err(ClientError::InvalidArgument(format!(
                "{topic}/{partition} is not assigned to this member of group `{}`",
                self.config.group
            )));
        }
        self.consumer.seek(topic, partition, offset);
        Ok(())
    }

    fn assigned_count(&self) -> usize {
        self.assignment.values().map(Vec::len).sum()
    }

    /// Returns the next records of the assigned partitions (empty when
    /// nothing arrived within the fetch `max_wait`). Rebalances are handled
    /// here: the consumer commits (with auto-commit), joins again and
    /// repositions before fetching; a rebalance signalled during a fetch
    /// ends the fetch early with no records. Auto-commits happen here too.
    /// Records returned by earlier polls count as processed.
    pub async fn poll(&mut self) -> Result<Vec<ConsumedRecord>> {
        if let Some(reason) = self.rejoin_needed() {
            self.rejoin(reason).await?;
        }
        self.resolve_positions().await?;
        if let Some(every) = self.config.auto_commit {
            if self.last_commit.elapsed() >= every {
                if let Err(e) = self.commit().await {
                    tracing::warn!(group = %self.config.group, error = %e, "auto-commit failed");
                }
                if let Some(reason) = self.rejoin_needed() {
                    self.rejoin(reason).await?;
                    self.resolve_positions().await?;
                }
            }
        }
        if self.consumer.is_unassigned() {
            // More members than partitions: idle until the group changes.
            let wait = self.consumer.config().max_wait;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = rejoin_requested(&mut self.signal) => {}
            }
            return Ok(Vec::new());
        }
        let fetched = tokio::select! {
            r = self.consumer.fetch_once() => r?,
            _ = rejoin_requested(&mut self.signal) => return Ok(Vec::new()),
        };
        if let Some(first) = fetched.out_of_range.first() {
            let spec = match self.config.reset {
                OffsetReset::Error => return Err(first.error()),
                OffsetReset::Earliest => OffsetSpec::Earliest,
                OffsetReset::Latest => OffsetSpec::Latest,
            };
            for e in &fetched.out_of_range {
                let to = if spec == OffsetSpec::Earliest {
                    e.log_start
                } else {
                    e.high_watermark
                };
                tracing::warn!(group = %self.config.group, topic = %e.topic, partition = e.partition,
                    position = e.offset, log_start = e.log_start, high_watermark = e.high_watermark,
                    to, "position out of range; applying the reset policy");
                self.consumer.seek(&e.topic, e.partition, to);
            }
        }
        Ok(self.consumer.apply(fetched))
    }

    /// Commits the positions after the records returned by `poll` so far
    /// (and any seek), for the partitions whose position changed since the
    /// last commit. A fenced member's commit fails ([`ClientError::Fenced`])
    /// and the next `poll` joins again.
    pub async fn commit(&mut self) -> Result<()> {
        if !self.joined {
            return Ok(());
        }
        let offsets = commit_delta(self.consumer.positions(), &self.committed);
        if offsets.is_empty() {
            self.last_commit = Instant::now();
            return Ok(());
        }
        match self
            .coord
            .commit_offsets(
                &self.config.group,
                &self.member_id,
                self.generation,
                &offsets,
            )
            .await
        {
            Ok(()) => {
                for o in offsets {
                    if let Some(v) = o.offset {
                        self.committed.insert((o.topic, o.partition), v);
                    }
                }
                self.last_commit = Instant::now();
                Ok(())
            }
            Err(e) => {
                if let Some(reason) = Rejoin::for_error(&e) {
                    self.pending = Some(self.pending.map_or(reason, |p| worse(p, reason)));
                }
                Err(e)
            }
        }
    }

    /// Leaves the group (committing first with auto-commit), so the others
    /// rebalance at once. Returns the first error, after trying both.
    pub async fn close(mut self) -> Result<()> {
        self.stop_heartbeat();
        let mut result = Ok(());
        if self.config.auto_commit.is_some() && self.joined && self.pending.is_none() {
            result = self.commit().await;
        }
        if !self.member_id.is_empty() {
            match self
                .coord
                .leave_group(&self.config.group, &self.member_id)
                .await
            {
                Ok(()) => {}
                // Already gone: nothing to leave.
                Err(e) if Rejoin::for_error(&e).is_some() => {}
                Err(e) => result = result.and(Err(e)),
            }
        }
        self.joined = false;
        self.member_id.clear();
        result
    }

    fn stop_heartbeat(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
    }

    fn rejoin_needed(&self) -> Option<Rejoin> {
        let signalled = *self.signal.borrow();
        match (self.pending, signalled) {
            (Some(a), Some(b)) => Some(worse(a, b)),
            (a, b) => a.or(b),
        }
    }

    async fn rejoin(&mut self, reason: Rejoin) -> Result<()> {
        self.stop_heartbeat();
        // Whatever happens below, until a join succeeds one is still needed.
        self.pending = Some(reason);
        let (_tx, rx) = watch::channel(None);
        self.signal = rx;
        if self.joined && reason == Rejoin::Rebalance && self.config.auto_commit.is_some() {
            // Committing with the current generation is allowed while the
            // group rebalances.
            if let Err(e) = self.commit().await {
                // A fenced commit has made the rejoin a worse one (see commit).
                tracing::warn!(group = %self.config.group, error = %e, "commit before rejoining failed");
            }
        }
        let reason = self.pending.unwrap_or(reason);
        if reason == Rejoin::Expelled {
            self.member_id.clear();
        }
        tracing::debug!(group = %self.config.group, ?reason, member_id = %self.member_id, "joining");
        let old_generation = self.generation;
        let old_assignment = std::mem::take(&mut self.assignment);
        let old_positions: BTreeMap<(String, u32), u64> = self
            .consumer
            .positions()
            .map(|(t, p, o)| ((t.to_string(), p), o))
            .collect();
        self.consumer.clear();
        self.joined = false;
        let mut attempts = 0;
        let joined = loop {
            let req = JoinGroupRequest {
                group: self.config.group.clone(),
                member_id: self.member_id.clone(),
                topics: self.config.topics.clone(),
                strategy: self.config.strategy.clone(),
                session_timeout: self.config.session_timeout,
                rebalance_timeout: self.config.rebalance_timeout,
            };
            match self.coord.join_group(&req).await {
                Ok(j) => break j,
                Err(e) => {
                    attempts += 1;
                    match Rejoin::for_error(&e) {
                        Some(Rejoin::Expelled) if attempts < 5 => {
                            self.member_id.clear();
                            self.pending = Some(Rejoin::Expelled);
                        }
                        Some(_) if attempts < 5 => {}
                        _ => return Err(e),
                    }
                    tracing::debug!(group = %self.config.group, error = %e, "join refused; joining again");
                }
            }
        };
        let keep = retained(
            reason,
            old_generation,
            joined.generation,
            &old_assignment,
            &joined.assignment,
        );
        self.committed.retain(|k, _| keep.contains(k));
        for k in &keep {
            if let Some(&o) = old_positions.get(k) {
                self.consumer.seek(&k.0, k.1, o);
            }
        }
        self.member_id = joined.member_id;
        self.generation = joined.generation;
        self.strategy = joined.strategy;
        self.assignment = joined.assignment;
        self.joined = true;
        self.pending = None;
        self.last_commit = Instant::now();
        tracing::info!(group = %self.config.group, member_id = %self.member_id,
            generation = self.generation, partitions = self.assigned_count(), "joined group");
        self.start_heartbeat(joined.heartbeat_interval);
        Ok(())
    }

    fn start_heartbeat(&mut self, from_broker: Duration) {
        let (tx, rx) = watch::channel(None);
        self.signal = rx;
        let client = self.coord.clone();
        let group = self.config.group.clone();
        let member_id = self.member_id.clone();
        let generation = self.generation;
        let session = self.config.session_timeout;
        let period = heartbeat_period(from_broker, session);
        self.heartbeat = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let r = match tokio::time::timeout(
                    session,
                    client.heartbeat(&group, &member_id, generation),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => Err(ClientError::Timeout {
                        what: "heartbeat".into(),
                        after: session,
                    }),
                };
                match r {
                    Ok(()) => {}
                    Err(e) => match Rejoin::for_error(&e) {
                        Some(reason) => {
                            tracing::debug!(%group, ?reason, "heartbeat asks to rejoin");
                            let _ = tx.send(Some(reason));
                            return;
                        }
                        None => {
                            tracing::warn!(%group, error = %e, "heartbeat failed; retrying");
                        }
                    },
                }
            }
        }));
    }

    /// Gives every assigned partition without a position one: the group's
    /// committed offset, else the reset policy.
    async fn resolve_positions(&mut self) -> Result<()> {
        let mut missing = Assignment::new();
        for (t, ps) in &self.assignment {
            for &p in ps {
                if self.consumer.position(t, p).is_none() {
                    missing.entry(t.clone()).or_default().push(p);
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let found = self
            .coord
            .fetch_offsets(&self.config.group, &missing)
            .await?;
        for c in found {
            let Some(ps) = missing.get_mut(&c.topic) else {
                continue;
            };
            if let Ok(i) = ps.binary_search(&c.partition) {
                ps.remove(i);
                self.consumer.seek(&c.topic, c.partition, c.offset);
                self.committed.insert((c.topic, c.partition), c.offset);
            }
        }
        for (topic, ps) in missing {
            if ps.is_empty() {
                continue;
            }
            let spec = match self.config.reset {
                OffsetReset::Error => {
                    return Err(ClientError::NoCommittedOffset {
                        group: self.config.group.clone(),
                        topic,
                        partition: ps[0],
                    })
                }
                OffsetReset::Earliest => OffsetSpec::Earliest,
                OffsetReset::Latest => OffsetSpec::Latest,
            };
            let offsets = self
                .consumer
                .client()
                .list_offsets(&topic, &ps, spec)
                .await?;
            for p in ps {
                let o = offsets
                    .iter()
                    .find(|(fp, _)| *fp == p)
                    .and_then(|(_, o)| *o)
                    .ok_or_else(|| {
                        ClientError::Protocol(format!(
                            "list offsets returned no offset for {topic}/{p}"
                        ))
                    })?;
                self.consumer.seek(&topic, p, o);
            }
        }
        Ok(())
    }
}

/// Of two pending rejoins, the one that does more.
fn worse(a: Rejoin, b: Rejoin) -> Rejoin {
    fn rank(r: Rejoin) -> u8 {
        match r {
            Rejoin::Rebalance => 0,
            Rejoin::NewGeneration => 1,
            Rejoin::Initial => 2,
            Rejoin::Expelled => 3,
        }
    }
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

/// Lag of a partition: records between the committed offset (or, with
/// none, the log start) and the end of the log.
pub fn lag(committed: Option<u64>, log_start: u64, end: u64) -> u64 {
    end.saturating_sub(committed.unwrap_or(log_start))
}

/// A consumer group member as a transaction's offsets name it
/// ([`crate::GroupConsumer::group_metadata`]); the group's coordinator
/// refuses offsets of a member that is no longer in the group's current
/// generation. An empty member id with generation -1 is not checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerGroupMetadata {
    /// The group.
    pub group: String,
    /// The member's id.
    pub member_id: String,
    /// The member's generation.
    pub generation: i32,
}

impl ConsumerGroupMetadata {
    /// A group without a member check (a producer outside the group).
    pub fn unchecked(group: impl Into<String>) -> ConsumerGroupMetadata {
        ConsumerGroupMetadata {
            group: group.into(),
            member_id: String::new(),
            generation: -1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(v: &[(&str, &[u32])]) -> Assignment {
        v.iter()
            .map(|(t, ps)| (t.to_string(), ps.to_vec()))
            .collect()
    }

    #[test]
    fn errors_map_to_rejoins() {
        let g = "g".to_string();
        let e = ClientError::from_group_code(ErrorCode::RebalanceInProgress, None, "g");
        assert!(matches!(e, ClientError::Rebalance { .. }));
        assert!(e.needs_rejoin() && !e.is_retriable());
        assert_eq!(Rejoin::for_error(&e), Some(Rejoin::Rebalance));
        let e = ClientError::from_group_code(ErrorCode::UnknownMemberId, Some("gone".into()), "g");
        assert_eq!(Rejoin::for_error(&e), Some(Rejoin::Expelled));
        assert!(e.to_string().contains("session timeout"), "{e}");
        assert!(e.to_string().contains("gone"), "{e}");
        let e = ClientError::from_group_code(ErrorCode::IllegalGeneration, None, "g");
        assert_eq!(Rejoin::for_error(&e), Some(Rejoin::NewGeneration));
        assert_eq!(e.code(), Some(ErrorCode::IllegalGeneration));
        let e = ClientError::from_group_code(ErrorCode::GroupNotEmpty, None, "g");
        assert_eq!(Rejoin::for_error(&e), None);
        assert!(e.to_string().contains("active members"), "{e}");
        let e = ClientError::from_group_code(ErrorCode::UnknownGroup, None, "g");
        assert!(e.to_string().contains("`g` does not exist"), "{e}");
        let e = ClientError::from_group_code(ErrorCode::InvalidGroupId, None, "a/b");
        assert!(e.to_string().contains("invalid group name `a/b`"), "{e}");
        assert!(!e.to_string().contains('\n'));
        let e = ClientError::Timeout {
            what: "heartbeat".into(),
            after: Duration::from_secs(1),
        };
        assert_eq!(Rejoin::for_error(&e), None);
        let e = ClientError::NoCommittedOffset {
            group: g,
            topic: "t".into(),
            partition: 3,
        };
        assert!(e.to_string().contains("t/3"), "{e}");
    }

    #[test]
    fn worse_rejoin_wins() {
        assert_eq!(worse(Rejoin::Rebalance, Rejoin::Expelled), Rejoin::Expelled);
        assert_eq!(worse(Rejoin::Expelled, Rejoin::Rebalance), Rejoin::Expelled);
        assert_eq!(
            worse(Rejoin::NewGeneration, Rejoin::Rebalance),
            Rejoin::NewGeneration
        );
    }

    #[test]
    fn positions_survive_only_a_rebalance_into_the_next_generation() {
        let old = a(&[("t", &[0, 1, 2]), ("u", &[0])]);
        let new = a(&[("t", &[1, 2, 3]), ("v", &[0])]);
        let kept = retained(Rejoin::Rebalance, 4, 5, &old, &new);
        assert_eq!(
            kept.into_iter().collect::<Vec<_>>(),
            vec![("t".to_string(), 1), ("t".to_string(), 2)]
        );
        assert!(retained(Rejoin::Rebalance, 4, 6, &old, &new).is_empty());
        assert!(retained(Rejoin::Expelled, 4, 5, &old, &new).is_empty());
        assert!(retained(Rejoin::NewGeneration, 4, 5, &old, &new).is_empty());
        assert!(retained(Rejoin::Initial, -1, 0, &old, &new).is_empty());
        assert!(retained(Rejoin::Rebalance, i32::MAX, i32::MIN, &old, &new).is_empty());
    }

    #[test]
    fn commits_only_what_changed() {
        let mut committed = BTreeMap::new();
        committed.insert(("t".to_string(), 0), 10);
        committed.insert(("t".to_string(), 1), 5);
        let positions = [("t", 0, 10), ("t", 1, 7), ("t", 2, 0)];
        let delta = commit_delta(positions.iter().copied(), &committed);
        assert_eq!(
            delta,
            vec![OffsetCommit::new("t", 1, 7), OffsetCommit::new("t", 2, 0)]
        );
    }

    #[test]
    fn lag_counts_from_the_committed_offset_or_the_log_start() {
        assert_eq!(lag(Some(10), 0, 25), 15);
        assert_eq!(lag(None, 5, 25), 20);
        assert_eq!(lag(Some(30), 0, 25), 0);
        assert_eq!(lag(None, 0, 0), 0);
    }

    #[test]
    fn heartbeat_period_defaults_to_a_third_of_the_session() {
        assert_eq!(
            heartbeat_period(Duration::ZERO, Duration::from_secs(9)),
            Duration::from_secs(3)
        );
        assert_eq!(
            heartbeat_period(Duration::from_millis(500), Duration::from_secs(9)),
            Duration::from_millis(500)
        );
        assert_eq!(
            heartbeat_period(Duration::from_millis(1), Duration::from_secs(9)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn reset_policy_parses() {
        assert_eq!("earliest".parse::<OffsetReset>(), Ok(OffsetReset::Earliest));
        assert_eq!("latest".parse::<OffsetReset>(), Ok(OffsetReset::Latest));
        assert_eq!("error".parse::<OffsetReset>(), Ok(OffsetReset::Error));
        assert!("42".parse::<OffsetReset>().is_err());
        assert_eq!(OffsetReset::default(), OffsetReset::Latest);
    }

    #[test]
    fn assignments_are_sorted_and_deduplicated() {
        let got = assignment_from(Some(vec![
            TopicPartitions {
                topic: "t".into(),
                partitions: Some(vec![3, 1, 3]),
            },
            TopicPartitions {
                topic: "t".into(),
                partitions: Some(vec![0]),
            },
            TopicPartitions {
                topic: "u".into(),
                partitions: None,
            },
        ]));
        assert_eq!(got, a(&[("t", &[0, 1, 3]), ("u", &[])]));
        assert_eq!(assignment_from(assignment_to(&got).into()), got);
    }
}
