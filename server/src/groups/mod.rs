//! Consumer groups. A group's state (committed offsets, generation) lives
//! in one partition of the internal topic `__consumer_offsets` (a stable
//! hash of its name, [`levee_core::group_partition`]); the leader of that
//! partition coordinates the group, on the shard that owns the partition
//! ([`home::Home`]). That shard runs its membership
//! ([`state::GroupMachine`], no I/O). This module is the glue: it loads a
//! partition's groups when this node becomes its leader and drops them when
//! it stops leading, feeds requests to the machine, wakes waiting joins and
//! syncs when the group changes, ticks it (session expiry, rebalance
//! deadlines), and writes commits (replicated, durable) before they become
//! visible.
//!
//! Requests here are protocol-neutral; the native and Kafka front ends
//! convert their own messages.

pub mod assign;
pub mod home;
pub mod state;
pub mod store;

use crate::error::{OpError, OpResult};
use home::Home;
use levee_core::LocalEvent;
use levee_schemas::proto::ErrorCode;
use state::{GroupMachine, Join, JoinOutcome, Joined};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use store::{
    Committed, GroupMeta, OffsetChange, OffsetLog, OffsetMap, PendingMap, StoredGroup, StoredGroups,
};
use tracing::{info, warn};

pub use assign::Assignment;

/// What groups need to know of the broker's topics (the shard provides it).
pub trait TopicLookup {
    /// The partition count of an existing topic.
    fn partitions(&self, topic: &str) -> Option<u32>;
    /// Whether a partition exists (an error that says why not).
    fn check_partition(&self, topic: &str, partition: u32) -> Result<(), OpError>;
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

/// What a join returns.
#[derive(Debug, Clone)]
pub enum JoinReply {
    Joined(Joined),
    /// Kafka JoinGroup v4+: join again with this member id.
    MemberIdRequired(String),
}

/// One offset to commit; a negative offset removes the committed one.
#[derive(Debug, Clone)]
pub struct OffsetCommit {
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
    pub metadata: String,
    /// The leader epoch the consumer saw (Kafka's KIP-320); -1: none.
    pub leader_epoch: i32,
}

/// A committed offset, as fetched.
#[derive(Debug, Clone)]
pub struct CommittedOffset {
    pub topic: String,
    pub partition: u32,
    pub committed: Committed,
}

/// A member, as described.
#[derive(Debug, Clone)]
pub struct MemberDescription {
    pub member_id: String,
    pub client_id: String,
    pub host: String,
    /// Native members: their partitions.
    pub assignment: Assignment,
    /// Kafka members: their metadata for the group's protocol and the
    /// assignment bytes the leader sent them.
    pub kafka_metadata: Vec<u8>,
    pub kafka_assignment: Vec<u8>,
}

/// A group, as described.
#[derive(Debug, Clone)]
pub struct GroupDescription {
    pub group: String,
    pub state: &'static str,
    pub generation: i32,
    /// `""` for native groups, `consumer` for Kafka consumer groups.
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberDescription>,
    pub offsets: Vec<CommittedOffset>,
}

/// One group: its membership, its offsets, and the offsets-topic
/// partition that keeps them.
pub struct Group {
    pub name: String,
    machine: RefCell<GroupMachine>,
    offsets: RefCell<OffsetMap>,
    /// Offsets a transaction sent (TxnOffsetCommit) but has neither
    /// committed nor aborted yet, with until when (wall-clock ms) the mark
    /// holds: OffsetFetch with require_stable answers UNSTABLE_OFFSET_COMMIT
    /// for them (KIP-447). Stored with the group, so a new coordinator
    /// keeps them.
    pending: RefCell<PendingMap>,
    /// Notified when the membership changes (wakes joins and syncs).
    changed: LocalEvent,
    home: Rc<Home>,
    /// The generation last written to the home (written after each rebalance).
    stored_generation: Cell<i32>,
    /// When (wall-clock ms) that generation was written (0: not known).
    generation_written_ms: Cell<i64>,
    driver_running: Cell<bool>,
    /// Deleted, or this node stopped coordinating it: the error requests get.
    gone: Cell<Option<ErrorCode>>,
}

/// How long a request waits for its group's coordinator to take over.
const READY_WAIT: Duration = Duration::from_secs(5);

/// A test-only fault for the coordinator-load test: with
/// `LEVEE_FAULT_GROUP_LOAD_DELAY_MS=N` in the broker's environment, a node
/// that becomes the leader of an offsets partition waits N ms before it
/// reads the partition's groups, so requests meanwhile see
/// COORDINATOR_LOAD_IN_PROGRESS. Unset or 0: no delay.
fn fault_group_load_delay() -> Option<Duration> {
    static DELAY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let ms = *DELAY.get_or_init(|| {
        let ms = std::env::var("LEVEE_FAULT_GROUP_LOAD_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if ms > 0 {
            warn!(ms, "fault injection on: loading consumer groups is delayed (LEVEE_FAULT_GROUP_LOAD_DELAY_MS)");
        }
        ms
    });
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// The groups this shard coordinates: those of the offsets-topic
/// partitions it leads.
pub struct Groups {
    /// Where groups were kept before the offsets topic: read once, moved
    /// into it (see [`Groups::migrate_legacy`]).
    legacy_dir: PathBuf,
    homes: RefCell<HashMap<u32, Rc<Home>>>,
    groups: RefCell<HashMap<String, Rc<Group>>>,
    next_member: Cell<u64>,
}

impl Groups {
    pub fn new(data_dir: &Path) -> Groups {
        Groups {
            legacy_dir: data_dir.join("__groups"),
            homes: RefCell::new(HashMap::new()),
            groups: RefCell::new(HashMap::new()),
            next_member: Cell::new(0),
        }
    }

    /// This node now leads offsets partition `index` (in leader epoch
    /// `epoch`): loads its groups from the log, then serves them.
    pub fn become_leader(
        self: &Rc<Self>,
        index: u32,
        partitions: u32,
        part: Rc<crate::partition::Partition>,
        epoch: u64,
    ) {
        if let Some(h) = self.homes.borrow().get(&index) {
            if h.epoch == epoch && Rc::ptr_eq(&h.part, &part) && !h.gone.get() {
                return;
            }
        }
        self.resign(index);
        let home = Rc::new(Home::new(index, partitions, part, epoch));
        self.homes.borrow_mut().insert(index, home.clone());
        let groups = self.clone();
        glommio::spawn_local(async move {
            let started = Instant::now();
            if let Some(delay) = fault_group_load_delay() {
                glommio::timer::sleep(delay).await;
            }
            let stored = match home.load().await {
                Ok(s) => s,
                Err(e) => {
                    warn!(partition = index, error = %e.message, "loading consumer groups failed; this node will not coordinate them");
                    return;
                }
            };
            if home.gone.get() {
                return;
            }
            let n = stored.len();
            for (name, sg) in stored {
                groups.adopt(&home, name, sg);
            }
            if let Err(e) = groups.migrate_legacy(&home).await {
                warn!(partition = index, error = %e.message, "moving groups of the old layout into the offsets topic failed; they stay in __groups");
            }
            home.set_loaded();
            info!(partition = index, epoch, groups = n, ms = started.elapsed().as_millis() as u64, "loaded consumer groups; coordinating them");
        })
        .detach();
    }

    /// This node stops leading offsets partition `index`: its groups are
    /// dropped here (waiting requests get NOT_COORDINATOR).
    pub fn resign(&self, index: u32) {
        let Some(home) = self.homes.borrow_mut().remove(&index) else {
            return;
        };
        home.gone.set(true);
        home.loaded_event.notify();
        let dropped: Vec<Rc<Group>> = {
            let mut all = self.groups.borrow_mut();
            let names: Vec<String> = all
                .values()
                .filter(|g| Rc::ptr_eq(&g.home, &home))
                .map(|g| g.name.clone())
                .collect();
            names.iter().filter_map(|n| all.remove(n)).collect()
        };
        for g in &dropped {
            g.gone.set(Some(ErrorCode::NotLeader));
            g.changed.notify();
        }
        info!(
            partition = index,
            groups = dropped.len(),
            "no longer coordinating the groups of this offsets partition"
        );
    }

    fn adopt(&self, home: &Rc<Home>, name: String, sg: StoredGroup) -> Rc<Group> {
        let generation = sg.meta.as_ref().map_or(0, |m| m.generation);
        let written_ms = sg.meta.as_ref().map_or(0, |m| m.written_ms);
        // Loaded with no members: empty since its last stored change (its
        // generation or a commit), so a failover or restart does not
        // start its offsets retention again.
        let now = Instant::now();
        let last_ms = sg
            .offsets
            .values()
            .map(|c| c.timestamp_ms)
            .chain(std::iter::once(written_ms))
            .filter(|&ms| ms > 0)
            .max();
        let empty_since = last_ms
            .and_then(|ms| {
                let ago = u64::try_from(now_ms().saturating_sub(ms)).unwrap_or(0);
                now.checked_sub(Duration::from_millis(ago))
            })
            .unwrap_or(now);
        let mut machine = GroupMachine::with_generation(now, generation);
        machine.set_empty_since(empty_since);
        let g = Rc::new(Group {
            name: name.clone(),
            machine: RefCell::new(machine),
            offsets: RefCell::new(sg.offsets),
            pending: RefCell::new(sg.pending),
            changed: LocalEvent::default(),
            home: home.clone(),
            stored_generation: Cell::new(generation),
            generation_written_ms: Cell::new(written_ms),
            driver_running: Cell::new(false),
            gone: Cell::new(None),
        });
        self.groups.borrow_mut().insert(name, g.clone());
        g
    }

    /// Groups stored by an older Levee under `<data_dir>/__groups/<name>/`
    /// (a log per group) that belong to `home`: their offsets are written
    /// to it, then their directory moves to `__groups.migrated/`.
    async fn migrate_legacy(&self, home: &Rc<Home>) -> OpResult<()> {
        let Ok(entries) = std::fs::read_dir(&self.legacy_dir) else {
            return Ok(());
        };
        let partitions = home.partitions;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if validate_group_name(&name).is_err()
                || levee_core::group_partition(&name, partitions) != home.index
            {
                continue;
            }
            let log = OffsetLog::open(&e.path()).await?;
            let offsets = log.replay().await;
            let _ = log.log.close().await;
            let offsets = offsets?;
            if self.get(&name).is_none() && !offsets.is_empty() {
                let changes: Vec<OffsetChange> = offsets
                    .iter()
                    .map(|(k, c)| (k.clone(), Some(c.clone())))
                    .collect();
                let _turn = home.write_turn().await?;
                home.write(&store::group_commit_records(&name, &changes, now_ms()))
                    .await?;
                self.adopt(
                    home,
                    name.clone(),
                    StoredGroup {
                        offsets,
                        ..StoredGroup::default()
                    },
                );
            }
            let moved = self.legacy_dir.with_extension("migrated");
            std::fs::create_dir_all(&moved)
                .and_then(|()| std::fs::rename(e.path(), moved.join(&name)))
                .map_err(|err| {
                    OpError::new(
                        ErrorCode::StorageError,
                        format!("moving {} aside: {err}", e.path().display()),
                    )
                })?;
            info!(group = %name, partition = home.index, "moved a group's offsets into the offsets topic");
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<Rc<Group>> {
        self.groups.borrow().get(name).cloned()
    }

    /// The home of offsets partition `index`, if this shard leads it and
    /// has loaded it.
    pub fn home(&self, index: u32) -> OpResult<Rc<Home>> {
        let home = self.homes.borrow().get(&index).cloned().ok_or_else(|| {
            err(
                ErrorCode::NotLeader,
                format!(
                    "this node does not lead partition {index} of {}, so it does not coordinate its groups; find the coordinator again",
                    levee_core::OFFSETS_TOPIC
                ),
            )
        })?;
        home.check()?;
        Ok(home)
    }

    /// Waits (up to [`READY_WAIT`]) until this shard serves offsets
    /// partition `index`: the metadata made this node its leader, and the
    /// shard is taking over or loading it.
    pub async fn ready(&self, index: u32) -> OpResult<()> {
        let until = Instant::now() + READY_WAIT;
        loop {
            let home = match self.home(index) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= until => return Err(e),
                Err(e) => {
                    let h = self.homes.borrow().get(&index).cloned();
                    match h {
                        Some(h) if e.code == ErrorCode::CoordinatorLoadInProgress => Some(h),
                        Some(_) => return Err(e),
                        None => None,
                    }
                }
            };
            let waiting = home.as_ref().map(|h| h.loaded_event.listen());
            let pause = glommio::timer::sleep(Duration::from_millis(10));
            match waiting {
                Some(l) => {
                    futures_lite::future::or(l, pause).await;
                }
                None => pause.await,
            }
        }
    }

    /// The group, or `UnknownGroup` (checked against its home `index`).
    pub fn existing(&self, name: &str, index: u32) -> OpResult<Rc<Group>> {
        self.home(index)?;
        self.get(name).ok_or_else(|| {
            err(
                ErrorCode::UnknownGroup,
                format!("group `{name}` does not exist"),
            )
        })
    }

    pub fn all(&self) -> Vec<Rc<Group>> {
        self.groups.borrow().values().cloned().collect()
    }

    /// The group (created if new) in offsets partition `index`.
    pub fn open(&self, name: &str, index: u32) -> Result<Rc<Group>, OpError> {
        validate_group_name(name)?;
        let home = self.home(index)?;
        if let Some(g) = self.get(name) {
            return Ok(g);
        }
        Ok(self.adopt(&home, name.to_string(), StoredGroup::default()))
    }

    /// A new member id: the client id (or `member`) and a unique suffix.
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

    /// Stores offsets (replicated and durable), then makes them visible.
    /// Partitions that do not exist are refused one by one.
    pub async fn commit(
        &self,
        g: &Rc<Group>,
        topics: &dyn TopicLookup,
        member_id: &str,
        generation: i32,
        offsets: Vec<OffsetCommit>,
    ) -> OpResult<Vec<(String, u32, OpResult<()>)>> {
        g.check_alive()?;
        g.machine.borrow().check_commit(member_id, generation)?;
        self.write_offsets(g, topics, offsets, &[]).await
    }

    /// Whether `member_id` of `generation` is a member of the group (a
    /// transactional offset commit says who sends it).
    pub fn check_member(
        &self,
        name: &str,
        index: u32,
        member_id: &str,
        generation: i32,
    ) -> OpResult<()> {
        let g = self.existing(name, index)?;
        g.check_alive()?;
        let r = g.machine.borrow().check_commit(member_id, generation);
        r
    }

    /// Commits offsets a transaction committed (its members were checked
    /// when the offsets were sent; the group may have rebalanced since).
    pub async fn commit_txn(
        &self,
        g: &Rc<Group>,
        topics: &dyn TopicLookup,
        offsets: Vec<OffsetCommit>,
    ) -> OpResult<Vec<(String, u32, OpResult<()>)>> {
        g.check_alive()?;
        let parts: Vec<(String, u32)> = offsets
            .iter()
            .map(|o| (o.topic.clone(), o.partition))
            .collect();
        // The commit and the end of the pending marks are one write.
        self.write_offsets(g, topics, offsets, &parts).await
    }

    /// A transaction sent offsets of group `name` for `parts`: until it
    /// commits or aborts (or `until_ms`, wall-clock), they are unstable.
    /// The mark is written with the group's state (replicated) before it
    /// holds, so a coordinator that takes over keeps it.
    pub async fn mark_txn_pending(
        &self,
        name: &str,
        index: u32,
        parts: Vec<(String, u32)>,
        until_ms: i64,
    ) -> OpResult<()> {
        let g = self.open(name, index)?;
        g.check_alive()?;
        if parts.is_empty() {
            return Ok(());
        }
        let recs = store::group_pending_records(name, &parts, Some(until_ms), now_ms());
        let target = g.clone();
        g.home
            .write_commit(recs, move || {
                if target.gone.get().is_none() {
                    let mut p = target.pending.borrow_mut();
                    let now = now_ms();
                    p.retain(|_, u| *u > now);
                    for tp in parts {
                        p.insert(tp, until_ms);
                    }
                }
            })
            .await
    }

    /// The transaction that sent offsets of group `name` for `parts`
    /// aborted: the marks end (written, as they were).
    pub async fn clear_txn_pending(
        &self,
        name: &str,
        index: u32,
        parts: Vec<(String, u32)>,
    ) -> OpResult<()> {
        self.home(index)?;
        let Some(g) = self.get(name) else {
            return Ok(());
        };
        g.check_alive()?;
        let parts: Vec<(String, u32)> = {
            let p = g.pending.borrow();
            parts.into_iter().filter(|tp| p.contains_key(tp)).collect()
        };
        if parts.is_empty() {
            return Ok(());
        }
        let recs = store::group_pending_records(name, &parts, None, now_ms());
        let target = g.clone();
        g.home
            .write_commit(recs, move || {
                let mut p = target.pending.borrow_mut();
                for tp in &parts {
                    p.remove(tp);
                }
            })
            .await
    }

    /// The partitions of group `name` with offsets a transaction has not
    /// completed.
    pub fn txn_pending(&self, name: &str) -> Vec<(String, u32)> {
        let now = now_ms();
        self.get(name).map_or_else(Vec::new, |g| {
            g.pending
                .borrow()
                .iter()
                .filter(|(_, u)| **u > now)
                .map(|(tp, _)| tp.clone())
                .collect()
        })
    }

    /// Writes offsets (and ends the pending marks of `clear_pending`, in
    /// the same batch), then applies them.
    async fn write_offsets(
        &self,
        g: &Rc<Group>,
        topics: &dyn TopicLookup,
        offsets: Vec<OffsetCommit>,
        clear_pending: &[(String, u32)],
    ) -> OpResult<Vec<(String, u32, OpResult<()>)>> {
        let home = g.home.clone();
        let ts = now_ms();
        let mut results = Vec::with_capacity(offsets.len());
        let mut changes: Vec<OffsetChange> = Vec::new();
        for o in offsets {
            if let Err(e) = topics.check_partition(&o.topic, o.partition) {
                results.push((o.topic, o.partition, Err(e)));
                continue;
            }
            let committed = (o.offset >= 0).then_some(Committed {
                leader_epoch: o.leader_epoch,
                offset: o.offset,
                metadata: o.metadata,
                timestamp_ms: ts,
            });
            results.push((o.topic.clone(), o.partition, Ok(())));
            changes.push(((o.topic, o.partition), committed));
        }
        if changes.is_empty() {
            return Ok(results);
        }
        let mut recs = store::group_commit_records(&g.name, &changes, ts);
        let cleared: Vec<(String, u32)> = {
            let p = g.pending.borrow();
            clear_pending
                .iter()
                .filter(|tp| p.contains_key(*tp))
                .cloned()
                .collect()
        };
        recs.extend(store::group_pending_records(&g.name, &cleared, None, ts));
        let target = g.clone();
        home.write_commit(recs, move || {
            if target.gone.get().is_none() {
                store::apply_changes(&mut target.offsets.borrow_mut(), changes);
                let mut p = target.pending.borrow_mut();
                for tp in &cleared {
                    p.remove(tp);
                }
            }
        })
        .await?;
        if home.snapshot_due() {
            let _turn = home.write_turn().await?;
            if home.snapshot_due() {
                let state = self.stored(&home);
                if let Err(e) = home.snapshot(&state, now_ms()).await {
                    warn!(partition = home.index, error = %e.message, "writing a snapshot of group state failed; it is retried after the next commits");
                }
            }
        }
        Ok(results)
    }

    /// The stored form of every group of `home`.
    fn stored(&self, home: &Rc<Home>) -> StoredGroups {
        self.groups
            .borrow()
            .values()
            .filter(|g| Rc::ptr_eq(&g.home, home))
            .map(|g| {
                (
                    g.name.clone(),
                    StoredGroup {
                        offsets: g.offsets.borrow().clone(),
                        meta: Some(g.meta()),
                        pending: g.pending.borrow().clone(),
                    },
                )
            })
            .collect()
    }

    pub async fn delete(&self, name: &str, index: u32) -> Result<(), OpError> {
        let g = self.existing(name, index)?;
        if !g.machine.borrow().members().is_empty() {
            return Err(err(
                ErrorCode::GroupNotEmpty,
                format!("group `{name}` has active members; stop them first"),
            ));
        }
        let home = g.home.clone();
        let _turn = home.write_turn().await?;
        g.check_alive()?;
        let stored = StoredGroup {
            offsets: g.offsets.borrow().clone(),
            meta: None,
            pending: g.pending.borrow().clone(),
        };
        let tombstones = store::group_tombstones(name, &stored, now_ms());
        home.append(&tombstones).await?;
        g.gone.set(Some(ErrorCode::UnknownGroup));
        g.changed.notify();
        self.groups.borrow_mut().remove(name);
        info!(group = %name, "deleted group");
        Ok(())
    }

    /// Deletes groups that have had no members for `retention`.
    pub async fn expire(&self, retention: Duration) {
        let expired: Vec<(String, u32)> = self
            .all()
            .iter()
            .filter(|g| {
                g.home.check().is_ok()
                    && g.machine
                        .borrow()
                        .empty_since()
                        .is_some_and(|t| t.elapsed() >= retention)
            })
            .map(|g| (g.name.clone(), g.home.index))
            .collect();
        for (name, index) in expired {
            if let Err(e) = self.delete(&name, index).await {
                warn!(group = %name, error = %e.message, "expiring an empty group failed");
            } else {
                info!(group = %name, "expired group with no members (offsets retention)");
            }
        }
    }

    /// Stops coordinating everything (shutdown).
    pub fn close_all(&self) {
        let indexes: Vec<u32> = self.homes.borrow().keys().copied().collect();
        for i in indexes {
            self.resign(i);
        }
    }
}

impl Group {
    fn check_alive(&self) -> OpResult<()> {
        match self.gone.get() {
            Some(ErrorCode::UnknownGroup) => {
                Err(err(ErrorCode::UnknownGroup, "the group was deleted"))
            }
            Some(code) => Err(err(
                code,
                format!(
                    "this node no longer coordinates group `{}`; find the coordinator again",
                    self.name
                ),
            )),
            None => self.home.check(),
        }
    }

    /// The group's generation and protocol type, as stored.
    fn meta(&self) -> GroupMeta {
        let m = self.machine.borrow();
        GroupMeta {
            generation: m.generation(),
            protocol_type: m.protocol_type().unwrap_or("").to_string(),
            written_ms: if m.generation() == self.stored_generation.get() {
                self.generation_written_ms.get()
            } else {
                0
            },
        }
    }

    /// Writes the group's generation to its home when it moved past the
    /// stored one, so a later coordinator goes on from it (a member of an
    /// older generation stays fenced there too).
    async fn store_generation(&self) {
        let meta = self.meta();
        if meta.generation <= self.stored_generation.get() || self.gone.get().is_some() {
            return;
        }
        let Ok(_turn) = self.home.write_turn().await else {
            return;
        };
        let meta = self.meta();
        if meta.generation <= self.stored_generation.get() || self.gone.get().is_some() {
            return;
        }
        let ts = now_ms();
        let rec = store::group_meta_record(&self.name, &meta, ts);
        match self.home.append(&[rec]).await {
            Ok(_) => {
                self.stored_generation.set(meta.generation);
                self.generation_written_ms.set(ts);
            }
            Err(e) => {
                tracing::debug!(group = %self.name, error = %e.message, "storing the group's generation failed")
            }
        }
    }

    /// Runs while the group has members: ticks the machine at its next
    /// deadline (session expiry, the end of a rebalance) or when it changes.
    fn ensure_driver(self: &Rc<Self>, topics: Rc<dyn TopicLookup>) {
        if self.driver_running.replace(true) {
            return;
        }
        let group = self.clone();
        glommio::spawn_local(async move {
            loop {
                let listen = group.changed.listen();
                if group.gone.get().is_some() || group.machine.borrow().is_idle() {
                    group.driver_running.set(false);
                    return;
                }
                let counts: BTreeMap<String, u32> = group
                    .machine
                    .borrow()
                    .subscribed_topics()
                    .into_iter()
                    .filter_map(|t| topics.partitions(&t).map(|n| (t, n)))
                    .collect();
                let now = Instant::now();
                let (expired, completed) = group.machine.borrow_mut().tick(now, &counts);
                for id in &expired {
                    warn!(group = %group.name, member = %id, "member missed its session timeout; removing it");
                }
                if completed {
                    {
                        let m = group.machine.borrow();
                        info!(group = %group.name, generation = m.generation(), members = m.members().len(), "rebalanced");
                    }
                    let g = group.clone();
                    glommio::spawn_local(async move { g.store_generation().await }).detach();
                }
                if completed || !expired.is_empty() {
                    group.changed.notify();
                    continue;
                }
                let wait = group
                    .machine
                    .borrow()
                    .next_wake(now, Duration::from_millis(100));
                futures_lite::future::or(listen, glommio::timer::sleep(wait)).await;
            }
        })
        .detach();
    }

    /// Joins (or rejoins) a member and waits until the group has rebalanced.
    pub async fn join(
        self: &Rc<Self>,
        topics: Rc<dyn TopicLookup>,
        j: Join,
    ) -> OpResult<JoinReply> {
        self.check_alive()?;
        let give_up = Instant::now() + j.rebalance_timeout + Duration::from_secs(5);
        let outcome = self.machine.borrow_mut().join(j, Instant::now())?;
        let (member_id, since) = match outcome {
            JoinOutcome::MemberIdRequired { member_id } => {
                return Ok(JoinReply::MemberIdRequired(member_id))
            }
            JoinOutcome::Waiting {
                member_id,
                generation,
            } => (member_id, generation),
        };
        self.ensure_driver(topics);
        self.changed.notify();
        loop {
            let listen = self.changed.listen();
            self.check_alive()?;
            if let Some(r) = self.machine.borrow().join_result(&member_id, since) {
                return r.map(JoinReply::Joined);
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

    /// Kafka SyncGroup: stores the leader's plan, and waits for it.
    pub async fn sync(
        &self,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Vec<u8>)>,
    ) -> OpResult<Vec<u8>> {
        self.check_alive()?;
        self.machine
            .borrow_mut()
            .sync(member_id, generation, assignments, Instant::now())?;
        self.changed.notify();
        loop {
            let listen = self.changed.listen();
            self.check_alive()?;
            if let Some(r) = self.machine.borrow().sync_result(member_id, generation) {
                return r;
            }
            listen.await;
        }
    }

    pub fn heartbeat(&self, member_id: &str, generation: i32) -> OpResult<()> {
        self.machine
            .borrow_mut()
            .heartbeat(member_id, generation, Instant::now())
    }

    pub fn leave(&self, member_id: &str) -> OpResult<()> {
        self.machine.borrow_mut().leave(member_id, Instant::now())?;
        info!(group = %self.name, member = %member_id, "member left");
        self.changed.notify();
        Ok(())
    }

    /// The committed offsets, all or those `wanted` says.
    pub fn offsets(&self, wanted: impl Fn(&str, u32) -> bool) -> Vec<CommittedOffset> {
        self.offsets
            .borrow()
            .iter()
            .filter(|((t, p), _)| wanted(t, *p))
            .map(|((t, p), c)| CommittedOffset {
                topic: t.clone(),
                partition: *p,
                committed: c.clone(),
            })
            .collect()
    }

    /// (name, state, member count).
    pub fn summary(&self) -> (String, &'static str, usize, String) {
        let m = self.machine.borrow();
        (
            self.name.clone(),
            m.phase().name(),
            m.members().len(),
            m.protocol_type().unwrap_or("").to_string(),
        )
    }

    pub fn describe(&self) -> GroupDescription {
        let m = self.machine.borrow();
        let members = m
            .members()
            .iter()
            .map(|(id, mem)| MemberDescription {
                member_id: id.clone(),
                client_id: mem.client_id.clone(),
                host: mem.host.clone(),
                assignment: mem.assignment.clone(),
                kafka_metadata: match &mem.subscription {
                    state::Subscription::Kafka { protocols, .. } => protocols
                        .iter()
                        .find(|(n, _)| n == m.protocol())
                        .map(|(_, md)| md.clone())
                        .unwrap_or_default(),
                    state::Subscription::Native { .. } => Vec::new(),
                },
                kafka_assignment: mem.kafka_assignment.clone(),
            })
            .collect();
        GroupDescription {
            group: self.name.clone(),
            state: m.phase().name(),
            generation: m.generation(),
            protocol_type: m.protocol_type().unwrap_or("").to_string(),
            protocol: m.protocol().to_string(),
            members,
            offsets: self.offsets(|_, _| true),
        }
    }
}
