//! Consumer groups. Each group belongs to one shard (a stable hash of its
//! name); that shard runs its membership ([`state::GroupMachine`], no I/O)
//! and keeps its committed offsets in a log of its own under
//! `<data_dir>/__groups/<group>/` (`store.rs`). This module is the glue:
//! it feeds requests to the machine, wakes waiting joins and syncs when the
//! group changes, ticks it (session expiry, rebalance deadlines), and
//! writes commits durably before they become visible.
//!
//! Requests here are protocol-neutral; the native and Kafka front ends
//! convert their own messages.

pub mod assign;
pub mod state;
pub mod store;

use crate::error::{OpError, OpResult};
use levee_core::LocalEvent;
use levee_schemas::proto::ErrorCode;
use state::{GroupMachine, Join, JoinOutcome, Joined};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use store::{Committed, OffsetChange, OffsetLog, OffsetMap};
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

/// One group: its membership, its offsets and their log.
pub struct Group {
    pub name: String,
    machine: RefCell<GroupMachine>,
    offsets: RefCell<OffsetMap>,
    /// Notified when the membership changes (wakes joins and syncs).
    changed: LocalEvent,
    log: OffsetLog,
    driver_running: Cell<bool>,
    deleted: Cell<bool>,
}

/// The groups one shard owns.
pub struct Groups {
    dir: PathBuf,
    groups: RefCell<HashMap<String, Rc<Group>>>,
    next_member: Cell<u64>,
    /// Serializes opening groups: two opens of one log would race on its files.
    open_lock: glommio::sync::Semaphore,
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

    /// The group, or `UnknownGroup`.
    pub fn existing(&self, name: &str) -> OpResult<Rc<Group>> {
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
            .map_err(|_| OpError::shutting_down())?;
        if let Some(g) = self.get(name) {
            return Ok(g);
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| {
            err(
                ErrorCode::StorageError,
                format!("creating {}: {e}", self.dir.display()),
            )
        })?;
        let log = OffsetLog::open(&self.dir.join(name)).await?;
        let offsets = log.replay().await?;
        let g = Rc::new(Group {
            name: name.to_string(),
            machine: RefCell::new(GroupMachine::new(Instant::now())),
            offsets: RefCell::new(offsets),
            changed: LocalEvent::default(),
            log,
            driver_running: Cell::new(false),
            deleted: Cell::new(false),
        });
        let bg = g.clone();
        glommio::spawn_local(async move {
            if let Err(e) = bg.log.log.run_background().await {
                warn!(group = %bg.name, error = %e, "group log background work stopped");
            }
        })
        .detach();
        self.groups.borrow_mut().insert(name.to_string(), g.clone());
        Ok(g)
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

    pub async fn delete(&self, name: &str) -> Result<(), OpError> {
        let g = self.existing(name)?;
        if !g.machine.borrow().members().is_empty() {
            return Err(err(
                ErrorCode::GroupNotEmpty,
                format!("group `{name}` has active members; stop them first"),
            ));
        }
        g.deleted.set(true);
        g.changed.notify();
        self.groups.borrow_mut().remove(name);
        let _ = g.log.log.close().await;
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
                g.machine
                    .borrow()
                    .empty_since()
                    .is_some_and(|t| t.elapsed() >= retention)
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

    /// Reopens the offsets logs a full disk stopped (see
    /// `Log::recover_from_full_disk`); returns how many.
    pub async fn recover_full_disk(&self) -> usize {
        let mut n = 0;
        for g in self.all() {
            if !g.log.log.is_stopped_by_full_disk() {
                continue;
            }
            match g.log.log.recover_from_full_disk().await {
                Ok(Some(_)) => n += 1,
                Ok(None) => {}
                Err(e) => {
                    warn!(group = %g.name, error = %e, "reopening a group's offsets log stopped by the full disk failed; retrying later")
                }
            }
        }
        n
    }

    pub async fn close_all(&self) {
        for g in self.all() {
            let _ = g.log.log.close().await;
        }
    }
}

impl Group {
    fn check_alive(&self) -> OpResult<()> {
        if self.deleted.get() {
            return Err(err(ErrorCode::UnknownGroup, "the group was deleted"));
        }
        Ok(())
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
                if group.deleted.get() || group.machine.borrow().is_idle() {
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
                    let m = group.machine.borrow();
                    info!(group = %group.name, generation = m.generation(), members = m.members().len(), "rebalanced");
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

    /// Stores offsets durably, then makes them visible. Partitions that do
    /// not exist are refused one by one.
    pub async fn commit(
        &self,
        topics: &dyn TopicLookup,
        member_id: &str,
        generation: i32,
        offsets: Vec<OffsetCommit>,
    ) -> OpResult<Vec<(String, u32, OpResult<()>)>> {
        self.check_alive()?;
        self.machine.borrow().check_commit(member_id, generation)?;
        let ts = now_ms();
        let mut results = Vec::with_capacity(offsets.len());
        let mut changes: Vec<OffsetChange> = Vec::new();
        for o in offsets {
            if let Err(e) = topics.check_partition(&o.topic, o.partition) {
                results.push((o.topic, o.partition, Err(e)));
                continue;
            }
            let committed = (o.offset >= 0).then_some(Committed {
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
        let snapshot_due = self
            .log
            .append_commit(&store::commit_records(&changes, ts))
            .await?;
        store::apply_changes(&mut self.offsets.borrow_mut(), changes);
        if snapshot_due {
            let all = self.offsets.borrow().clone();
            self.log.snapshot(&all, now_ms()).await?;
        }
        Ok(results)
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
