//! Consumer groups: membership, rebalancing, assignment and committed
//! offsets. Each group belongs to one shard (a stable hash of its name); that
//! shard runs its protocol and keeps its committed offsets in a log of its
//! own under `<data_dir>/__groups/<group>/`, written with `fsync = always`.
//!
//! The broker computes the assignment itself (like Kafka's KIP-848
//! protocol): `JoinGroup` returns once the group has rebalanced, with the
//! member's partitions. A rebalance starts when a member joins, leaves or
//! misses its session timeout; members learn of it from their heartbeat
//! (`RebalanceInProgress`), commit, and join again. Members that do not
//! rejoin within the rebalance timeout are dropped.

use crate::shard::{OpError, Shard};
use levee_engine::batch::{build_batch, records, split_batches, Record};
use levee_engine::event::LocalEvent;
use levee_engine::{FsyncPolicy, Log, LogConfig};
use levee_schemas::proto::{self, ErrorCode};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{info, warn};

/// A group's first rebalance waits this long for more members to join.
pub const INITIAL_REBALANCE_DELAY: Duration = Duration::from_millis(300);
/// Bytes of commits between two snapshots of a group's offsets.
const SNAPSHOT_EVERY_BYTES: u64 = 2 << 20;
/// Key of the record that opens a snapshot batch.
const SNAPSHOT_MARKER: &[u8] = b"S";

pub type Assignment = BTreeMap<String, Vec<u32>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Empty,
    PreparingRebalance,
    Stable,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Empty => "Empty",
            Phase::PreparingRebalance => "PreparingRebalance",
            Phase::Stable => "Stable",
        }
    }
}

#[derive(Debug, Clone)]
struct Member {
    client_id: String,
    host: String,
    topics: Vec<String>,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    last_seen: Instant,
    /// Joined (again) for the rebalance under way.
    pending_join: bool,
    assignment: Assignment,
}

#[derive(Debug, Clone)]
pub struct Committed {
    pub offset: i64,
    pub metadata: String,
    pub timestamp_ms: i64,
}

struct GroupState {
    phase: Phase,
    generation: i32,
    strategy: String,
    members: BTreeMap<String, Member>,
    offsets: BTreeMap<(String, u32), Committed>,
    /// When the rebalance under way must end (members not rejoined are dropped).
    deadline: Option<Instant>,
    /// The rebalance may not end before this (the initial delay).
    not_before: Option<Instant>,
    empty_since: Instant,
    bytes_since_snapshot: u64,
    deleted: bool,
}

pub struct Group {
    pub name: String,
    st: RefCell<GroupState>,
    changed: LocalEvent,
    log: Log,
    driver_running: Cell<bool>,
}

/// The groups one shard owns.
pub struct Groups {
    dir: PathBuf,
    groups: RefCell<HashMap<String, Rc<Group>>>,
    next_member: Cell<u64>,
    /// Serializes opening groups: two opens of one log would race on its files.
    open_lock: glommio::sync::Semaphore,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn err(code: ErrorCode, msg: impl Into<String>) -> OpError {
    OpError::new(code, msg)
}

pub fn validate_group_name(name: &str) -> Result<(), OpError> {
    crate::topics::validate_name(name).map_err(|m| {
        err(
            ErrorCode::InvalidGroupId,
            m.replace("topic name", "group name"),
        )
    })
}

fn log_config() -> LogConfig {
    LogConfig {
        segment_bytes: 4 << 20,
        retention_bytes: Some(16 << 20),
        retention_age: None,
        segment_age: None,
        fsync: FsyncPolicy::Always,
        write_chunk_bytes: 64 << 10,
        max_inflight_writes: 2,
        tail_cache_bytes: 256 << 10,
        index_cache_bytes: 64 << 10,
        read_ahead_bytes: 256 << 10,
        read_ahead_windows: 1,
        preallocate_bytes: 4 << 20,
        retention_check_interval: Duration::from_secs(30),
        ..LogConfig::default()
    }
}

fn offset_key(topic: &str, partition: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 5);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&partition.to_le_bytes());
    k
}

fn parse_key(k: &[u8]) -> Option<(String, u32)> {
    let zero = k.iter().position(|&b| b == 0)?;
    let topic = std::str::from_utf8(&k[..zero]).ok()?.to_string();
    let p = u32::from_le_bytes(k.get(zero + 1..zero + 5)?.try_into().ok()?);
    Some((topic, p))
}

fn offset_value(c: &Committed) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + c.metadata.len());
    v.extend_from_slice(&c.offset.to_le_bytes());
    v.extend_from_slice(&c.timestamp_ms.to_le_bytes());
    v.extend_from_slice(c.metadata.as_bytes());
    v
}

fn parse_value(v: &[u8]) -> Option<Committed> {
    Some(Committed {
        offset: i64::from_le_bytes(v.get(..8)?.try_into().ok()?),
        timestamp_ms: i64::from_le_bytes(v.get(8..16)?.try_into().ok()?),
        metadata: String::from_utf8_lossy(v.get(16..)?).into_owned(),
    })
}

impl Groups {
    pub fn new(data_dir: &Path) -> Groups {
        Groups {
            dir: data_dir.join("__groups"),
            groups: RefCell::new(HashMap::new()),
            next_member: Cell::new(0),
            open_lock: glommio::sync::Semaphore::new(1),
        }
    }

    /// Opens the groups stored on disk that `owns` says belong here.
    pub async fn open_existing(&self, owns: impl Fn(&str) -> bool) -> Result<(), OpError> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if owns(&name) && validate_group_name(&name).is_ok() {
                self.open(&name).await?;
            }
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<Rc<Group>> {
        self.groups.borrow().get(name).cloned()
    }

    pub fn all(&self) -> Vec<Rc<Group>> {
        self.groups.borrow().values().cloned().collect()
    }

    /// The group, opened (and its offsets replayed) or created.
    pub async fn open(&self, name: &str) -> Result<Rc<Group>, OpError> {
        if let Some(g) = self.get(name) {
            return Ok(g);
        }
        validate_group_name(name)?;
        let _open = self
            .open_lock
            .acquire_permit(1)
            .await
            .map_err(|_| err(ErrorCode::ShuttingDown, "shutting down"))?;
        if let Some(g) = self.get(name) {
            return Ok(g);
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| {
            err(
                ErrorCode::StorageError,
                format!("creating {}: {e}", self.dir.display()),
            )
        })?;
        let log = Log::open(self.dir.join(name), log_config())
            .await
            .map_err(|e| {
                err(
                    ErrorCode::StorageError,
                    format!("opening group `{name}`: {e}"),
                )
            })?;
        let offsets = replay(&log).await?;
        let g = Rc::new(Group {
            name: name.to_string(),
            st: RefCell::new(GroupState {
                phase: Phase::Empty,
                generation: 0,
                strategy: "range".into(),
                members: BTreeMap::new(),
                offsets,
                deadline: None,
                not_before: None,
                empty_since: Instant::now(),
                bytes_since_snapshot: 0,
                deleted: false,
            }),
            changed: LocalEvent::default(),
            log,
            driver_running: Cell::new(false),
        });
        let bg = g.clone();
        glommio::spawn_local(async move {
            if let Err(e) = bg.log.run_background().await {
                warn!(group = %bg.name, error = %e, "group log background work stopped");
            }
        })
        .detach();
        self.groups.borrow_mut().insert(name.to_string(), g.clone());
        Ok(g)
    }

    pub fn new_member_id(&self, client_id: &str) -> String {
        let n = self.next_member.get();
        self.next_member.set(n + 1);
        let salt = (now_ms() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n;
        let prefix = if client_id.is_empty() {
            "member"
        } else {
            client_id
        };
        format!("{prefix}-{:016x}", salt.rotate_left(17))
    }

    pub async fn delete(&self, name: &str) -> Result<(), OpError> {
        let g = self.get(name).ok_or_else(|| {
            err(
                ErrorCode::UnknownGroup,
                format!("group `{name}` does not exist"),
            )
        })?;
        if !g.st.borrow().members.is_empty() {
            return Err(err(
                ErrorCode::GroupNotEmpty,
                format!("group `{name}` has active members; stop them first"),
            ));
        }
        g.st.borrow_mut().deleted = true;
        g.changed.notify();
        self.groups.borrow_mut().remove(name);
        let _ = g.log.close().await;
        let dir = self.dir.join(name);
        std::fs::remove_dir_all(&dir).map_err(|e| {
            err(
                ErrorCode::StorageError,
                format!("removing {}: {e}", dir.display()),
            )
        })?;
        info!(group = %name, "deleted group");
        Ok(())
    }

    /// Deletes groups that have had no members for `retention`.
    pub async fn expire(&self, retention: Duration) {
        let expired: Vec<String> = self
            .all()
            .iter()
            .filter(|g| {
                let st = g.st.borrow();
                st.members.is_empty() && st.empty_since.elapsed() >= retention
            })
            .map(|g| g.name.clone())
            .collect();
        for name in expired {
            if let Err(e) = self.delete(&name).await {
                warn!(group = %name, error = %e.message, "expiring an empty group failed");
            } else {
                info!(group = %name, "expired group with no members (offsets retention)");
            }
        }
    }

    pub async fn close_all(&self) {
        for g in self.all() {
            let _ = g.log.close().await;
        }
    }
}

/// Rebuilds the committed offsets from a group's log.
async fn replay(log: &Log) -> Result<BTreeMap<(String, u32), Committed>, OpError> {
    let mut offsets = BTreeMap::new();
    let mut next = log.log_start_offset();
    let end = log.log_end_offset();
    while next < end {
        let out = log.read(next, 1 << 20, None).await.map_err(|e| {
            err(
                ErrorCode::StorageError,
                format!("replaying group offsets: {e}"),
            )
        })?;
        if out.data.is_empty() {
            break;
        }
        for b in split_batches(&out.data) {
            let recs = records(b).map_err(|e| {
                err(
                    ErrorCode::StorageError,
                    format!("replaying group offsets: {e}"),
                )
            })?;
            for (i, r) in recs.iter().enumerate() {
                if i == 0 && r.key == Some(SNAPSHOT_MARKER) {
                    offsets.clear();
                    continue;
                }
                let Some(key) = r.key.and_then(parse_key) else {
                    continue;
                };
                match r.value.and_then(parse_value) {
                    Some(c) => {
                        offsets.insert(key, c);
                    }
                    None => {
                        offsets.remove(&key);
                    }
                }
            }
        }
        next = out.next_offset;
    }
    Ok(offsets)
}

fn to_tp(a: &Assignment) -> Vec<proto::TopicPartitions> {
    a.iter()
        .map(|(t, ps)| proto::TopicPartitions {
            topic: t.clone(),
            partitions: Some(ps.clone()),
        })
        .collect()
}

impl Group {
    fn heartbeat_interval(session: Duration) -> Duration {
        (session / 5).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }

    /// Starts a rebalance (if none is under way): every member must join again.
    fn start_rebalance(&self, st: &mut GroupState, initial: bool) {
        if st.phase != Phase::PreparingRebalance {
            st.phase = Phase::PreparingRebalance;
            for m in st.members.values_mut() {
                m.pending_join = false;
            }
            let timeout = st
                .members
                .values()
                .map(|m| m.rebalance_timeout)
                .max()
                .unwrap_or(Duration::from_secs(30));
            st.deadline = Some(Instant::now() + timeout);
            st.not_before = initial.then(|| Instant::now() + INITIAL_REBALANCE_DELAY);
        }
        self.changed.notify();
    }

    /// Ends the rebalance: drops members that did not join, assigns.
    fn complete_rebalance(&self, st: &mut GroupState, shard: &Shard) {
        st.members.retain(|_, m| m.pending_join);
        st.generation += 1;
        st.deadline = None;
        st.not_before = None;
        let subs: Vec<(String, Vec<String>)> = st
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.topics.clone()))
            .collect();
        let mut counts = BTreeMap::new();
        for (_, topics) in &subs {
            for t in topics {
                if let Some(meta) = shard.topic(t) {
                    counts.insert(t.clone(), meta.partitions);
                }
            }
        }
        let previous: BTreeMap<String, Assignment> = st
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.assignment.clone()))
            .collect();
        let plan = assign(&st.strategy, &subs, &counts, &previous);
        for (id, m) in st.members.iter_mut() {
            m.assignment = plan.get(id).cloned().unwrap_or_default();
            m.pending_join = false;
            m.last_seen = Instant::now();
        }
        if st.members.is_empty() {
            st.phase = Phase::Empty;
            st.empty_since = Instant::now();
        } else {
            st.phase = Phase::Stable;
        }
        info!(group = %self.name, generation = st.generation, members = st.members.len(), "rebalanced");
        self.changed.notify();
    }

    /// Runs while the group has members: ends rebalances and expires
    /// members whose session timed out.
    fn ensure_driver(self: &Rc<Self>, shard: &Rc<Shard>) {
        if self.driver_running.replace(true) {
            return;
        }
        let (group, shard) = (self.clone(), shard.clone());
        glommio::spawn_local(async move {
            loop {
                let listen = group.changed.listen();
                let wait = {
                    let mut st = group.st.borrow_mut();
                    if st.deleted || (st.members.is_empty() && st.phase != Phase::PreparingRebalance) {
                        group.driver_running.set(false);
                        return;
                    }
                    let now = Instant::now();
                    // Session expiry (members waiting in a join are alive).
                    let expired: Vec<String> = st
                        .members
                        .iter()
                        .filter(|(_, m)| !m.pending_join && now.duration_since(m.last_seen) > m.session_timeout)
                        .map(|(id, _)| id.clone())
                        .collect();
                    for id in &expired {
                        warn!(group = %group.name, member = %id, "member missed its session timeout; removing it");
                        st.members.remove(id);
                    }
                    if !expired.is_empty() {
                        group.start_rebalance(&mut st, false);
                    }
                    if st.phase == Phase::PreparingRebalance {
                        let all_in = st.members.values().all(|m| m.pending_join);
                        let early_ok = st.not_before.is_none_or(|t| now >= t);
                        let late = st.deadline.is_some_and(|d| now >= d);
                        if (all_in && early_ok) || late {
                            group.complete_rebalance(&mut st, &shard);
                            if st.members.is_empty() {
                                group.driver_running.set(false);
                                return;
                            }
                        }
                    }
                    let mut next = Duration::from_millis(100);
                    if let Some(t) = st.not_before {
                        next = next.min(t.saturating_duration_since(now));
                    }
                    next.max(Duration::from_millis(1))
                };
                futures_lite::future::or(listen, glommio::timer::sleep(wait)).await;
            }
        })
        .detach();
    }

    pub async fn join(
        self: &Rc<Self>,
        shard: &Rc<Shard>,
        groups: &Groups,
        j: proto::JoinGroup,
        host: String,
    ) -> Result<proto::JoinGroupResponse, OpError> {
        let session = Duration::from_millis(u64::from(j.session_timeout_ms.clamp(1000, 300_000)));
        let rebalance =
            Duration::from_millis(u64::from(j.rebalance_timeout_ms.clamp(1000, 300_000)));
        let topics = j.topics.unwrap_or_default();
        for t in &topics {
            if shard.topic(t).is_none() {
                return Err(err(
                    ErrorCode::UnknownTopicOrPartition,
                    format!("topic `{t}` does not exist (create it with `levee topic create {t}`)"),
                ));
            }
        }
        let member_id = {
            let mut st = self.st.borrow_mut();
            if st.deleted {
                return Err(err(ErrorCode::UnknownGroup, "the group was deleted"));
            }
            let id = match j.member_id.filter(|m| !m.is_empty()) {
                Some(id) if st.members.contains_key(&id) => id,
                Some(id) => {
                    return Err(err(
                        ErrorCode::UnknownMemberId,
                        format!(
                        "member `{id}` is not in group `{}`; join again with an empty member id",
                        self.name
                    ),
                    ))
                }
                None => groups.new_member_id(j.client_id.as_deref().unwrap_or("")),
            };
            if let Some(s) = j.strategy.filter(|s| !s.is_empty()) {
                if !matches!(s.as_str(), "range" | "roundrobin" | "sticky") {
                    return Err(err(
                        ErrorCode::InvalidConfig,
                        format!("assignment strategy `{s}` is not range, roundrobin or sticky"),
                    ));
                }
                if st.members.is_empty() || st.members.len() == 1 && st.members.contains_key(&id) {
                    st.strategy = s;
                }
            }
            let initial = st.members.is_empty();
            let prev = st.members.remove(&id);
            st.members.insert(
                id.clone(),
                Member {
                    client_id: j.client_id.clone().unwrap_or_default(),
                    host,
                    topics: topics.clone(),
                    session_timeout: session,
                    rebalance_timeout: rebalance,
                    last_seen: Instant::now(),
                    pending_join: false,
                    assignment: prev.map(|m| m.assignment).unwrap_or_default(),
                },
            );
            self.start_rebalance(&mut st, initial);
            if let Some(m) = st.members.get_mut(&id) {
                m.pending_join = true;
            }
            id
        };
        self.ensure_driver(shard);
        self.changed.notify();
        let target = self.st.borrow().generation + 1;
        let give_up = Instant::now() + rebalance + Duration::from_secs(5);
        loop {
            let listen = self.changed.listen();
            {
                let st = self.st.borrow();
                if st.deleted {
                    return Err(err(ErrorCode::UnknownGroup, "the group was deleted"));
                }
                let Some(m) = st.members.get(&member_id) else {
                    return Err(err(
                        ErrorCode::UnknownMemberId,
                        "the member was removed from the group during the rebalance; join again",
                    ));
                };
                if st.generation >= target && !m.pending_join {
                    return Ok(proto::JoinGroupResponse {
                        error: ErrorCode::None,
                        message: None,
                        generation: st.generation,
                        member_id: Some(member_id.clone()),
                        strategy: Some(st.strategy.clone()),
                        assignment: Some(to_tp(&m.assignment)),
                        heartbeat_interval_ms: Self::heartbeat_interval(m.session_timeout)
                            .as_millis() as u32,
                    });
                }
            }
            let left = give_up.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(err(
                    ErrorCode::RequestTimedOut,
                    "the rebalance did not complete in time; join again",
                ));
            }
            futures_lite::future::or(listen, glommio::timer::sleep(left)).await;
        }
    }

    fn check_member(
        &self,
        st: &GroupState,
        member_id: &str,
        generation: i32,
    ) -> Result<(), OpError> {
        if !st.members.contains_key(member_id) {
            return Err(err(
                ErrorCode::UnknownMemberId,
                format!(
                    "member `{member_id}` is not in group `{}`; join again",
                    self.name
                ),
            ));
        }
        if generation != st.generation {
            return Err(err(
                ErrorCode::IllegalGeneration,
                format!(
                    "generation {generation} is not the group's current {}; join again",
                    st.generation
                ),
            ));
        }
        Ok(())
    }

    pub fn heartbeat(&self, member_id: &str, generation: i32) -> Result<(), OpError> {
        let mut st = self.st.borrow_mut();
        if !st.members.contains_key(member_id) {
            return Err(err(
                ErrorCode::UnknownMemberId,
                format!(
                    "member `{member_id}` is not in group `{}`; join again",
                    self.name
                ),
            ));
        }
        if let Some(m) = st.members.get_mut(member_id) {
            m.last_seen = Instant::now();
        }
        if st.phase == Phase::PreparingRebalance {
            return Err(err(
                ErrorCode::RebalanceInProgress,
                "the group is rebalancing; commit and join again",
            ));
        }
        self.check_member(&st, member_id, generation)
    }

    pub fn leave(&self, member_id: &str) -> Result<(), OpError> {
        let mut st = self.st.borrow_mut();
        if st.members.remove(member_id).is_none() {
            return Err(err(
                ErrorCode::UnknownMemberId,
                format!("member `{member_id}` is not in the group"),
            ));
        }
        info!(group = %self.name, member = %member_id, "member left");
        self.start_rebalance(&mut st, false);
        Ok(())
    }

    /// Stores offsets durably, then makes them visible.
    pub async fn commit(
        &self,
        shard: &Shard,
        c: proto::CommitOffsets,
    ) -> Result<proto::OffsetsResponse, OpError> {
        {
            let st = self.st.borrow();
            match c.member_id.as_deref().filter(|m| !m.is_empty()) {
                Some(m) => self.check_member(&st, m, c.generation)?,
                None if !st.members.is_empty() => {
                    return Err(err(
                        ErrorCode::GroupNotEmpty,
                        format!(
                            "group `{}` has active members; stop them before resetting its offsets",
                            self.name
                        ),
                    ))
                }
                None => {}
            }
        }
        let ts = now_ms();
        let mut failed = Vec::new();
        let mut recs = Vec::new();
        let mut apply = Vec::new();
        for o in c.offsets.unwrap_or_default() {
            if let Err(e) = shard.check_partition(&o.topic, o.partition) {
                failed.push(proto::PartitionError {
                    topic: Some(o.topic),
                    partition: o.partition,
                    error: e.code,
                    message: Some(e.message),
                });
                continue;
            }
            let committed = (o.offset >= 0).then(|| Committed {
                offset: o.offset,
                metadata: o.metadata.unwrap_or_default(),
                timestamp_ms: ts,
            });
            recs.push(Record {
                timestamp: ts,
                key: Some(offset_key(&o.topic, o.partition)),
                value: committed.as_ref().map(offset_value),
                headers: vec![],
            });
            apply.push(((o.topic, o.partition), committed));
        }
        if !recs.is_empty() {
            let batch = build_batch(&recs);
            let len = batch.len() as u64;
            self.log
                .append_durable(batch)
                .await
                .map_err(|e| err(ErrorCode::StorageError, format!("storing offsets: {e}")))?;
            let snapshot = {
                let mut st = self.st.borrow_mut();
                for (k, v) in apply {
                    match v {
                        Some(v) => {
                            st.offsets.insert(k, v);
                        }
                        None => {
                            st.offsets.remove(&k);
                        }
                    }
                }
                st.bytes_since_snapshot += len;
                st.bytes_since_snapshot >= SNAPSHOT_EVERY_BYTES
            };
            if snapshot {
                self.snapshot().await?;
            }
        }
        Ok(proto::OffsetsResponse {
            group: Some(self.name.clone()),
            error: ErrorCode::None,
            message: None,
            offsets: None,
            failed: Some(failed),
        })
    }

    /// Writes every committed offset as one batch, so older segments can go.
    async fn snapshot(&self) -> Result<(), OpError> {
        let recs: Vec<Record> = {
            let st = self.st.borrow();
            std::iter::once(Record {
                timestamp: now_ms(),
                key: Some(SNAPSHOT_MARKER.to_vec()),
                value: None,
                headers: vec![],
            })
            .chain(st.offsets.iter().map(|((t, p), c)| Record {
                timestamp: c.timestamp_ms,
                key: Some(offset_key(t, *p)),
                value: Some(offset_value(c)),
                headers: vec![],
            }))
            .collect()
        };
        self.log
            .append_durable(build_batch(&recs))
            .await
            .map_err(|e| {
                err(
                    ErrorCode::StorageError,
                    format!("writing an offsets snapshot: {e}"),
                )
            })?;
        self.st.borrow_mut().bytes_since_snapshot = 0;
        Ok(())
    }

    pub fn offsets(
        &self,
        filter: Option<&[proto::TopicPartitions]>,
    ) -> Vec<proto::CommittedOffset> {
        let st = self.st.borrow();
        let wanted = |t: &str, p: u32| match filter {
            None | Some([]) => true,
            Some(f) => f.iter().any(|tp| {
                tp.topic == t
                    && tp
                        .partitions
                        .as_ref()
                        .is_none_or(|ps| ps.is_empty() || ps.contains(&p))
            }),
        };
        st.offsets
            .iter()
            .filter(|((t, p), _)| wanted(t, *p))
            .map(|((t, p), c)| proto::CommittedOffset {
                topic: t.clone(),
                partition: *p,
                offset: c.offset,
                metadata: Some(c.metadata.clone()),
                commit_timestamp_ms: c.timestamp_ms,
            })
            .collect()
    }

    pub fn summary(&self) -> proto::GroupSummary {
        let st = self.st.borrow();
        proto::GroupSummary {
            group: Some(self.name.clone()),
            state: Some(st.phase.name().into()),
            members: st.members.len() as u32,
        }
    }

    pub fn describe(&self) -> proto::GroupDescription {
        let offsets = self.offsets(None);
        let st = self.st.borrow();
        proto::GroupDescription {
            group: Some(self.name.clone()),
            error: ErrorCode::None,
            message: None,
            state: Some(st.phase.name().into()),
            generation: st.generation,
            strategy: Some(st.strategy.clone()),
            members: Some(
                st.members
                    .iter()
                    .map(|(id, m)| proto::GroupMember {
                        member_id: Some(id.clone()),
                        client_id: Some(m.client_id.clone()),
                        host: Some(m.host.clone()),
                        assignment: Some(to_tp(&m.assignment)),
                    })
                    .collect(),
            ),
            offsets: Some(offsets),
        }
    }
}

/// Computes every member's partitions. `subs` is (member id, topics) sorted
/// by id; `counts` the partition count of each existing topic; `previous`
/// the last assignment (used by `sticky`).
pub fn assign(
    strategy: &str,
    subs: &[(String, Vec<String>)],
    counts: &BTreeMap<String, u32>,
    previous: &BTreeMap<String, Assignment>,
) -> BTreeMap<String, Assignment> {
    let mut out: BTreeMap<String, BTreeSet<(String, u32)>> = subs
        .iter()
        .map(|(id, _)| (id.clone(), BTreeSet::new()))
        .collect();
    let subscribers = |t: &str| -> Vec<&String> {
        subs.iter()
            .filter(|(_, ts)| ts.iter().any(|x| x == t))
            .map(|(id, _)| id)
            .collect()
    };
    match strategy {
        "roundrobin" => {
            let mut i = 0usize;
            for (t, &n) in counts {
                let who = subscribers(t);
                if who.is_empty() {
                    continue;
                }
                for p in 0..n {
                    // Walk the ring of all members, skipping non-subscribers.
                    loop {
                        let (id, ts) = &subs[i % subs.len()];
                        i += 1;
                        if ts.iter().any(|x| x == t) {
                            if let Some(set) = out.get_mut(id) {
                                set.insert((t.clone(), p));
                            }
                            break;
                        }
                    }
                }
            }
        }
        "sticky" => {
            let mut taken = BTreeSet::new();
            for (id, ts) in subs {
                if let Some(prev) = previous.get(id) {
                    for (t, ps) in prev {
                        if !ts.contains(t) {
                            continue;
                        }
                        let n = counts.get(t).copied().unwrap_or(0);
                        for &p in ps {
                            if p < n && taken.insert((t.clone(), p)) {
                                if let Some(set) = out.get_mut(id) {
                                    set.insert((t.clone(), p));
                                }
                            }
                        }
                    }
                }
            }
            // New or orphaned partitions go to the least-loaded subscriber.
            for (t, &n) in counts {
                let who = subscribers(t);
                for p in 0..n {
                    if taken.contains(&(t.clone(), p)) || who.is_empty() {
                        continue;
                    }
                    if let Some(id) = who
                        .iter()
                        .min_by_key(|id| out.get(**id).map_or(0, |s| s.len()))
                    {
                        if let Some(set) = out.get_mut(*id) {
                            set.insert((t.clone(), p));
                        }
                        taken.insert((t.clone(), p));
                    }
                }
            }
            // Even out: move from the most- to the least-loaded member while
            // they differ by more than one and the move is allowed.
            loop {
                let loads: Vec<(String, usize)> =
                    out.iter().map(|(id, s)| (id.clone(), s.len())).collect();
                let Some((max_id, max)) = loads.iter().max_by_key(|(_, l)| *l).cloned() else {
                    break;
                };
                let Some((min_id, min)) = loads.iter().min_by_key(|(_, l)| *l).cloned() else {
                    break;
                };
                if max <= min + 1 {
                    break;
                }
                let min_topics = &subs
                    .iter()
                    .find(|(id, _)| *id == min_id)
                    .map(|(_, t)| t.clone())
                    .unwrap_or_default();
                let movable = out.get(&max_id).and_then(|s| {
                    s.iter()
                        .rev()
                        .find(|(t, _)| min_topics.contains(t))
                        .cloned()
                });
                let Some(tp) = movable else { break };
                if let Some(s) = out.get_mut(&max_id) {
                    s.remove(&tp);
                }
                if let Some(s) = out.get_mut(&min_id) {
                    s.insert(tp);
                }
            }
        }
        _ => {
            // range: per topic, contiguous ranges over the sorted subscribers.
            for (t, &n) in counts {
                let who = subscribers(t);
                if who.is_empty() {
                    continue;
                }
                let k = who.len() as u32;
                let (per, extra) = (n / k, n % k);
                let mut next = 0;
                for (i, id) in who.iter().enumerate() {
                    let take = per + u32::from((i as u32) < extra);
                    if let Some(set) = out.get_mut(*id) {
                        for p in next..next + take {
                            set.insert((t.clone(), p));
                        }
                    }
                    next += take;
                }
            }
        }
    }
    out.into_iter()
        .map(|(id, set)| {
            let mut a: Assignment = BTreeMap::new();
            for (t, p) in set {
                a.entry(t).or_default().push(p);
            }
            (id, a)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subs(n: usize, topics: &[&str]) -> Vec<(String, Vec<String>)> {
        (0..n)
            .map(|i| {
                (
                    format!("m{i}"),
                    topics.iter().map(|t| t.to_string()).collect(),
                )
            })
            .collect()
    }

    fn check_disjoint_complete(
        plan: &BTreeMap<String, Assignment>,
        counts: &BTreeMap<String, u32>,
    ) {
        let mut seen = BTreeSet::new();
        for a in plan.values() {
            for (t, ps) in a {
                for p in ps {
                    assert!(seen.insert((t.clone(), *p)), "{t}/{p} assigned twice");
                }
            }
        }
        let total: u32 = counts.values().sum();
        assert_eq!(seen.len() as u32, total, "every partition assigned");
    }

    #[test]
    fn strategies_are_disjoint_complete_and_balanced() {
        let counts: BTreeMap<String, u32> = [("a".to_string(), 6), ("b".to_string(), 5)].into();
        for strategy in ["range", "roundrobin", "sticky"] {
            for n in 1..=7 {
                let plan = assign(strategy, &subs(n, &["a", "b"]), &counts, &BTreeMap::new());
                check_disjoint_complete(&plan, &counts);
                let loads: Vec<usize> = plan
                    .values()
                    .map(|a| a.values().map(Vec::len).sum())
                    .collect();
                let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
                let slack = if strategy == "range" { 2 } else { 1 };
                assert!(max - min <= slack, "{strategy} with {n} members: {loads:?}");
            }
        }
    }

    #[test]
    fn sticky_keeps_assignments_when_a_member_leaves() {
        let counts: BTreeMap<String, u32> = [("t".to_string(), 6)].into();
        let before = assign("sticky", &subs(3, &["t"]), &counts, &BTreeMap::new());
        let after = assign("sticky", &subs(2, &["t"]), &counts, &before);
        check_disjoint_complete(&after, &counts);
        for id in ["m0", "m1"] {
            for p in &before[id]["t"] {
                assert!(after[id]["t"].contains(p), "{id} lost partition {p}");
            }
        }
    }

    #[test]
    fn members_get_only_their_topics() {
        let counts: BTreeMap<String, u32> = [("a".to_string(), 2), ("b".to_string(), 2)].into();
        let s = vec![
            ("m0".to_string(), vec!["a".to_string()]),
            ("m1".to_string(), vec!["b".to_string()]),
        ];
        for strategy in ["range", "roundrobin", "sticky"] {
            let plan = assign(strategy, &s, &counts, &BTreeMap::new());
            assert_eq!(
                plan["m0"].keys().collect::<Vec<_>>(),
                vec!["a"],
                "{strategy}"
            );
            assert_eq!(
                plan["m1"].keys().collect::<Vec<_>>(),
                vec!["b"],
                "{strategy}"
            );
        }
    }

    #[test]
    fn keys_round_trip() {
        assert_eq!(
            parse_key(&offset_key("t.x", 7)),
            Some(("t.x".to_string(), 7))
        );
        let c = Committed {
            offset: 42,
            metadata: "m".into(),
            timestamp_ms: 5,
        };
        let back = parse_value(&offset_value(&c)).unwrap();
        assert_eq!(
            (back.offset, back.metadata.as_str(), back.timestamp_ms),
            (42, "m", 5)
        );
    }
}
