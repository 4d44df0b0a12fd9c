//! One consumer group's membership, without I/O: joins, syncs, heartbeats,
//! leaves, session expiry, rebalances and fencing, as a plain type whose
//! methods take the event and the current time and return what happened.
//! The group's shard drives it (`groups/mod.rs`): it wakes waiting joins
//! and syncs when the group changes and ticks it at [`GroupMachine::next_wake`].
//!
//! Two kinds of members share this machine, one kind per group at a time:
//! - **native** members (Levee's protocol): the broker assigns. A join
//!   completes with the member's partitions once the group has rebalanced.
//! - **Kafka** members (the classic protocol, client-side assignors): a
//!   join completes with the generation, the chosen protocol (assignor) and
//!   the leader; the leader also gets every member's metadata, computes
//!   the plan and sends it in SyncGroup; every member's sync then returns
//!   its part.
//!
//! A rebalance starts when a member joins, leaves or misses its session
//! timeout. Members learn of it from their heartbeat (rebalance in
//! progress), may commit, and join again; the rebalance completes when all
//! have rejoined (not before the initial delay of a group's first
//! rebalance), or at the rebalance timeout, dropping those that did not.
//! Commits and heartbeats from unknown members or old generations are
//! refused (fencing).

use super::assign::{assign, Assignment, STRATEGIES};
use crate::error::OpError;
use levee_schemas::proto::ErrorCode;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A group's first rebalance waits this long for more members to join.
pub const INITIAL_REBALANCE_DELAY: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Empty,
    PreparingRebalance,
    /// Kafka groups: waiting for the leader's assignment (SyncGroup).
    CompletingRebalance,
    Stable,
}

impl Phase {
    /// Kafka's name for the state.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Empty => "Empty",
            Phase::PreparingRebalance => "PreparingRebalance",
            Phase::CompletingRebalance => "CompletingRebalance",
            Phase::Stable => "Stable",
        }
    }
}

/// What a member subscribes with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscription {
    /// A native member: its topics (and the strategy it asks for).
    Native {
        topics: Vec<String>,
        strategy: Option<String>,
    },
    /// A Kafka member: its protocol type (`consumer`) and its protocols
    /// (assignor names) in preference order, each with its metadata.
    Kafka {
        protocol_type: String,
        protocols: Vec<(String, Vec<u8>)>,
    },
}

impl Subscription {
    fn is_native(&self) -> bool {
        matches!(self, Subscription::Native { .. })
    }
}

/// A join request.
#[derive(Debug, Clone)]
pub struct Join {
    /// The member's id; empty for a new member.
    pub member_id: String,
    /// The id to give a new member (the caller makes it unique).
    pub fresh_id: String,
    /// Kafka JoinGroup v4+: a new member first gets an id and must join
    /// again with it (KIP-394).
    pub require_known_id: bool,
    pub client_id: String,
    pub host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub subscription: Subscription,
}

/// What a join did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinOutcome {
    /// The member is in and waits for the rebalance to complete past
    /// `generation` (see [`GroupMachine::join_result`]).
    Waiting { member_id: String, generation: i32 },
    /// Join again with this id.
    MemberIdRequired { member_id: String },
}

/// A completed join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub generation: i32,
    pub member_id: String,
    /// The strategy (native) or the chosen assignor (Kafka).
    pub protocol: String,
    pub leader: String,
    /// Kafka, for the leader only: every member and its metadata for the
    /// chosen protocol.
    pub members: Vec<(String, Vec<u8>)>,
    /// Native: the member's partitions.
    pub assignment: Assignment,
    pub heartbeat_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct Member {
    pub client_id: String,
    pub host: String,
    pub subscription: Subscription,
    pub session_timeout: Duration,
    rebalance_timeout: Duration,
    last_seen: Instant,
    /// Joined (again) for the rebalance under way.
    pending_join: bool,
    /// Order of first join (the leader is the earliest member).
    seq: u64,
    /// Native: the member's partitions.
    pub assignment: Assignment,
    /// Kafka: the assignment bytes the leader sent for it.
    pub kafka_assignment: Vec<u8>,
}

/// One consumer group's membership state.
#[derive(Debug)]
pub struct GroupMachine {
    phase: Phase,
    generation: i32,
    /// The native strategy or the chosen Kafka assignor.
    protocol: String,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Ids handed out with `MemberIdRequired`, valid until the instant.
    pending_ids: BTreeMap<String, Instant>,
    /// When the rebalance under way must end (members not rejoined are dropped).
    deadline: Option<Instant>,
    /// The rebalance may not end before this (the initial delay).
    not_before: Option<Instant>,
    empty_since: Instant,
    next_seq: u64,
    /// The partition counts the native assignment was made with: when a
    /// subscribed topic's count changes (partitions added, topic deleted),
    /// a stable native group rebalances.
    assigned_counts: BTreeMap<String, u32>,
}

fn err(code: ErrorCode, msg: impl Into<String>) -> OpError {
    OpError::new(code, msg)
}

/// How often a member should heartbeat for a session timeout.
pub fn heartbeat_interval(session: Duration) -> Duration {
    (session / 5).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

impl GroupMachine {
    pub fn new(now: Instant) -> GroupMachine {
        GroupMachine {
            phase: Phase::Empty,
            generation: 0,
            protocol: "range".into(),
            leader: None,
            members: BTreeMap::new(),
            pending_ids: BTreeMap::new(),
            deadline: None,
            not_before: None,
            empty_since: now,
            next_seq: 0,
            assigned_counts: BTreeMap::new(),
        }
    }

    /// A group loaded from its stored state: no members, and generation
    /// `generation` (the next rebalance hands out the one after it, so a
    /// member of an older generation stays fenced).
    pub fn with_generation(now: Instant, generation: i32) -> GroupMachine {
        GroupMachine {
            generation,
            ..GroupMachine::new(now)
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn generation(&self) -> i32 {
        self.generation
    }

    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    pub fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }

    pub fn members(&self) -> &BTreeMap<String, Member> {
        &self.members
    }

    /// The protocol type: `Some("")` for native groups, the Kafka type
    /// (`consumer`) for Kafka groups, `None` without members.
    pub fn protocol_type(&self) -> Option<&str> {
        self.members.values().next().map(|m| match &m.subscription {
            Subscription::Native { .. } => "",
            Subscription::Kafka { protocol_type, .. } => protocol_type.as_str(),
        })
    }

    /// No members and no rebalance: nothing to drive.
    pub fn is_idle(&self) -> bool {
        self.members.is_empty() && self.phase != Phase::PreparingRebalance
    }

    /// A group loaded with no members: when it last changed, as stored.
    pub fn set_empty_since(&mut self, since: Instant) {
        self.empty_since = since;
    }

    /// Since when the group has had no members (`None`: it has some).
    pub fn empty_since(&self) -> Option<Instant> {
        self.members.is_empty().then_some(self.empty_since)
    }

    /// Every topic a native member subscribes to (the caller looks up
    /// their partition counts for [`GroupMachine::tick`]).
    pub fn subscribed_topics(&self) -> BTreeSet<String> {
        self.members
            .values()
            .filter_map(|m| match &m.subscription {
                Subscription::Native { topics, .. } => Some(topics.iter().cloned()),
                Subscription::Kafka { .. } => None,
            })
            .flatten()
            .collect()
    }

    /// Checks that `sub` can join a group whose members subscribe as this
    /// group's do: the same kind, the same Kafka protocol type, and a Kafka
    /// assignor every member supports.
    fn check_compatible(&self, member_id: &str, sub: &Subscription) -> Result<(), OpError> {
        let others: Vec<&Member> = self
            .members
            .iter()
            .filter(|(id, _)| id.as_str() != member_id)
            .map(|(_, m)| m)
            .collect();
        let Some(first) = others.first() else {
            return Ok(());
        };
        match (&first.subscription, sub) {
            (Subscription::Native { .. }, Subscription::Native { .. }) => Ok(()),
            (
                Subscription::Kafka {
                    protocol_type: t0, ..
                },
                Subscription::Kafka {
                    protocol_type,
                    protocols,
                },
            ) => {
                if t0 != protocol_type {
                    return Err(err(
                        ErrorCode::InconsistentGroupProtocol,
                        format!("the group's members use protocol type `{t0}`, not `{protocol_type}`"),
                    ));
                }
                let common = others.iter().fold(
                    protocols.iter().map(|(n, _)| n.clone()).collect::<BTreeSet<_>>(),
                    |acc, m| match &m.subscription {
                        Subscription::Kafka { protocols, .. } => acc
                            .into_iter()
                            .filter(|n| protocols.iter().any(|(p, _)| p == n))
                            .collect(),
                        Subscription::Native { .. } => BTreeSet::new(),
                    },
                );
                if common.is_empty() {
                    return Err(err(
                        ErrorCode::InconsistentGroupProtocol,
                        "none of the member's assignors is supported by every member of the group",
                    ));
                }
                Ok(())
            }
            (Subscription::Native { .. }, Subscription::Kafka { .. }) => Err(err(
                ErrorCode::InconsistentGroupProtocol,
                "the group's members use Levee's native protocol; a Kafka consumer cannot join it (use another group id)",
            )),
            (Subscription::Kafka { .. }, Subscription::Native { .. }) => Err(err(
                ErrorCode::InconsistentGroupProtocol,
                "the group's members are Kafka consumers; a native member cannot join it (use another group id)",
            )),
        }
    }

    /// A member joins (or rejoins): the group starts a rebalance, or the
    /// member joins the one under way.
    pub fn join(&mut self, j: Join, now: Instant) -> Result<JoinOutcome, OpError> {
        if let Subscription::Native {
            strategy: Some(s), ..
        } = &j.subscription
        {
            if !s.is_empty() && !STRATEGIES.contains(&s.as_str()) {
                return Err(err(
                    ErrorCode::InvalidConfig,
                    format!("assignment strategy `{s}` is not range, roundrobin or sticky"),
                ));
            }
        }
        if let Subscription::Kafka { protocols, .. } = &j.subscription {
            if protocols.is_empty() {
                return Err(err(
                    ErrorCode::InconsistentGroupProtocol,
                    "a Kafka member must name at least one assignor",
                ));
            }
        }
        let id = if j.member_id.is_empty() {
            if j.require_known_id {
                self.pending_ids
                    .insert(j.fresh_id.clone(), now + j.session_timeout);
                return Ok(JoinOutcome::MemberIdRequired {
                    member_id: j.fresh_id,
                });
            }
            j.fresh_id.clone()
        } else if self.members.contains_key(&j.member_id)
            || self.pending_ids.remove(&j.member_id).is_some()
        {
            j.member_id.clone()
        } else {
            return Err(err(
                ErrorCode::UnknownMemberId,
                format!(
                    "member `{}` is not in the group; join again with an empty member id",
                    j.member_id
                ),
            ));
        };
        self.check_compatible(&id, &j.subscription)?;
        let initial = self.members.is_empty();
        let alone = initial || self.members.len() == 1 && self.members.contains_key(&id);
        if let (Subscription::Native { strategy, .. }, true) = (&j.subscription, alone) {
            // The first native member chooses the strategy (range by default).
            match strategy.as_deref() {
                Some(s) if !s.is_empty() => self.protocol = s.to_string(),
                _ if initial => self.protocol = STRATEGIES[0].to_string(),
                _ => {}
            }
        }
        let prev = self.members.remove(&id);
        let seq = prev.as_ref().map_or_else(
            || {
                self.next_seq += 1;
                self.next_seq
            },
            |m| m.seq,
        );
        self.members.insert(
            id.clone(),
            Member {
                client_id: j.client_id,
                host: j.host,
                subscription: j.subscription,
                session_timeout: j.session_timeout,
                rebalance_timeout: j.rebalance_timeout,
                last_seen: now,
                pending_join: false,
                seq,
                assignment: prev
                    .as_ref()
                    .map(|m| m.assignment.clone())
                    .unwrap_or_default(),
                kafka_assignment: Vec::new(),
            },
        );
        self.start_rebalance(initial, now);
        if let Some(m) = self.members.get_mut(&id) {
            m.pending_join = true;
        }
        Ok(JoinOutcome::Waiting {
            member_id: id,
            generation: self.generation,
        })
    }

    /// The result of a join that waits for a generation after `since`:
    /// `None` while the rebalance is under way.
    pub fn join_result(&self, member_id: &str, since: i32) -> Option<Result<Joined, OpError>> {
        let Some(m) = self.members.get(member_id) else {
            return Some(Err(err(
                ErrorCode::UnknownMemberId,
                "the member was removed from the group during the rebalance; join again",
            )));
        };
        if self.generation <= since || m.pending_join {
            return None;
        }
        let leader = self.leader.clone().unwrap_or_default();
        let members = if leader == member_id && !m.subscription.is_native() {
            self.members
                .iter()
                .map(|(id, m)| (id.clone(), self.metadata_for(m)))
                .collect()
        } else {
            Vec::new()
        };
        Some(Ok(Joined {
            generation: self.generation,
            member_id: member_id.to_string(),
            protocol: self.protocol.clone(),
            leader,
            members,
            assignment: m.assignment.clone(),
            heartbeat_interval: heartbeat_interval(m.session_timeout),
        }))
    }

    /// A Kafka member's metadata for the chosen protocol.
    fn metadata_for(&self, m: &Member) -> Vec<u8> {
        match &m.subscription {
            Subscription::Kafka { protocols, .. } => protocols
                .iter()
                .find(|(n, _)| *n == self.protocol)
                .map(|(_, md)| md.clone())
                .unwrap_or_default(),
            Subscription::Native { .. } => Vec::new(),
        }
    }

    /// Checks that `member_id` is in the group at `generation`.
    fn check_member(&self, member_id: &str, generation: i32) -> Result<(), OpError> {
        if !self.members.contains_key(member_id) {
            return Err(err(
                ErrorCode::UnknownMemberId,
                format!("member `{member_id}` is not in the group; join again"),
            ));
        }
        if generation != self.generation {
            return Err(err(
                ErrorCode::IllegalGeneration,
                format!(
                    "generation {generation} is not the group's current {}; join again",
                    self.generation
                ),
            ));
        }
        Ok(())
    }

    /// Kafka SyncGroup: every member syncs after its join; the leader's
    /// sync carries the plan (`assignments`) and completes the rebalance.
    pub fn sync(
        &mut self,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Vec<u8>)>,
        now: Instant,
    ) -> Result<(), OpError> {
        self.check_member(member_id, generation)?;
        if self.phase == Phase::PreparingRebalance {
            return Err(err(
                ErrorCode::RebalanceInProgress,
                "the group is rebalancing; join again",
            ));
        }
        if let Some(m) = self.members.get_mut(member_id) {
            m.last_seen = now;
        }
        if self.phase == Phase::CompletingRebalance && self.leader.as_deref() == Some(member_id) {
            let plan: BTreeMap<String, Vec<u8>> = assignments.into_iter().collect();
            for (id, m) in self.members.iter_mut() {
                m.kafka_assignment = plan.get(id).cloned().unwrap_or_default();
            }
            self.phase = Phase::Stable;
        }
        Ok(())
    }

    /// The assignment a sync at `generation` returns: `None` while the
    /// leader's plan has not arrived.
    pub fn sync_result(
        &self,
        member_id: &str,
        generation: i32,
    ) -> Option<Result<Vec<u8>, OpError>> {
        let Some(m) = self.members.get(member_id) else {
            return Some(Err(err(
                ErrorCode::UnknownMemberId,
                "the member left the group; join again",
            )));
        };
        if generation != self.generation || self.phase == Phase::PreparingRebalance {
            return Some(Err(err(
                ErrorCode::RebalanceInProgress,
                "a new rebalance started; join again",
            )));
        }
        match self.phase {
            Phase::Stable => Some(Ok(m.kafka_assignment.clone())),
            _ => None,
        }
    }

    pub fn heartbeat(
        &mut self,
        member_id: &str,
        generation: i32,
        now: Instant,
    ) -> Result<(), OpError> {
        let Some(m) = self.members.get_mut(member_id) else {
            return Err(err(
                ErrorCode::UnknownMemberId,
                format!("member `{member_id}` is not in the group; join again"),
            ));
        };
        m.last_seen = now;
        if self.phase == Phase::PreparingRebalance {
            return Err(err(
                ErrorCode::RebalanceInProgress,
                "the group is rebalancing; commit and join again",
            ));
        }
        self.check_member(member_id, generation)
    }

    pub fn leave(&mut self, member_id: &str, now: Instant) -> Result<(), OpError> {
        if self.members.remove(member_id).is_none() {
            return Err(err(
                ErrorCode::UnknownMemberId,
                format!("member `{member_id}` is not in the group"),
            ));
        }
        self.start_rebalance(false, now);
        Ok(())
    }

    /// Whether a commit may be stored: from a member at the current
    /// generation (also while a rebalance is preparing, so members commit
    /// before rejoining), or without a member only while the group has none
    /// (an administrative reset, or a consumer that assigns itself).
    pub fn check_commit(&self, member_id: &str, generation: i32) -> Result<(), OpError> {
        if member_id.is_empty() {
            if !self.members.is_empty() {
                return Err(err(
                    ErrorCode::GroupNotEmpty,
                    "the group has active members; stop them before resetting its offsets",
                ));
            }
            return Ok(());
        }
        if self.phase == Phase::CompletingRebalance {
            return Err(err(
                ErrorCode::RebalanceInProgress,
                "the group is completing a rebalance; commit after the sync",
            ));
        }
        self.check_member(member_id, generation)
    }

    /// Starts a rebalance (if none is under way): every member must join again.
    fn start_rebalance(&mut self, initial: bool, now: Instant) {
        if self.phase == Phase::PreparingRebalance {
            return;
        }
        self.phase = Phase::PreparingRebalance;
        for m in self.members.values_mut() {
            m.pending_join = false;
        }
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(Duration::from_secs(30));
        self.deadline = Some(now + timeout);
        self.not_before = initial.then(|| now + INITIAL_REBALANCE_DELAY);
    }

    /// Advances time: expires members whose session timed out, and ends
    /// the rebalance under way when it may end. `partitions` has the
    /// partition count of every topic in [`GroupMachine::subscribed_topics`]
    /// that exists. Returns the members expired and whether a rebalance
    /// completed.
    pub fn tick(
        &mut self,
        now: Instant,
        partitions: &BTreeMap<String, u32>,
    ) -> (Vec<String>, bool) {
        self.pending_ids.retain(|_, until| *until > now);
        // Members waiting in a join are alive.
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| !m.pending_join && now.duration_since(m.last_seen) > m.session_timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.members.remove(id);
        }
        if !expired.is_empty() {
            self.start_rebalance(false, now);
        }
        if self.phase == Phase::Stable
            && *partitions != self.assigned_counts
            && self.members.values().all(|m| m.subscription.is_native())
        {
            self.start_rebalance(false, now);
        }
        let mut completed = false;
        if self.phase == Phase::PreparingRebalance {
            let all_in = self.members.values().all(|m| m.pending_join);
            let early_ok = self.not_before.is_none_or(|t| now >= t);
            let late = self.deadline.is_some_and(|d| now >= d);
            if (all_in && early_ok) || late {
                self.complete_rebalance(now, partitions);
                completed = true;
            }
        }
        (expired, completed)
    }

    /// Ends the rebalance: drops members that did not join, picks the
    /// leader and protocol, and (native) assigns.
    fn complete_rebalance(&mut self, now: Instant, partitions: &BTreeMap<String, u32>) {
        self.members.retain(|_, m| m.pending_join);
        self.generation += 1;
        self.deadline = None;
        self.not_before = None;
        if self.members.is_empty() {
            self.phase = Phase::Empty;
            self.leader = None;
            self.empty_since = now;
            return;
        }
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self
                .members
                .iter()
                .min_by_key(|(_, m)| m.seq)
                .map(|(id, _)| id.clone());
        }
        let native = self.members.values().all(|m| m.subscription.is_native());
        if native {
            self.assign_native(partitions);
            self.phase = Phase::Stable;
        } else {
            self.protocol = self.choose_protocol();
            self.phase = Phase::CompletingRebalance;
        }
        for m in self.members.values_mut() {
            m.pending_join = false;
            m.last_seen = now;
            m.kafka_assignment.clear();
        }
    }

    fn assign_native(&mut self, partitions: &BTreeMap<String, u32>) {
        let subs: Vec<(String, Vec<String>)> = self
            .members
            .iter()
            .map(|(id, m)| match &m.subscription {
                Subscription::Native { topics, .. } => (id.clone(), topics.clone()),
                Subscription::Kafka { .. } => (id.clone(), Vec::new()),
            })
            .collect();
        let previous: BTreeMap<String, Assignment> = self
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.assignment.clone()))
            .collect();
        let plan = assign(&self.protocol, &subs, partitions, &previous);
        self.assigned_counts = partitions.clone();
        for (id, m) in self.members.iter_mut() {
            m.assignment = plan.get(id).cloned().unwrap_or_default();
        }
    }

    /// Kafka's rule: among the assignors every member supports, each
    /// member votes for the first in its own order; the most votes win
    /// (ties: the name first in sort order).
    fn choose_protocol(&self) -> String {
        let lists: Vec<Vec<&str>> = self
            .members
            .values()
            .map(|m| match &m.subscription {
                Subscription::Kafka { protocols, .. } => {
                    protocols.iter().map(|(n, _)| n.as_str()).collect()
                }
                Subscription::Native { .. } => Vec::new(),
            })
            .collect();
        let common: BTreeSet<&str> = lists
            .iter()
            .skip(1)
            .fold(lists[0].iter().copied().collect(), |acc, l| {
                acc.into_iter().filter(|n| l.contains(n)).collect()
            });
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for l in &lists {
            if let Some(first) = l.iter().find(|n| common.contains(*n)) {
                *votes.entry(first).or_default() += 1;
            }
        }
        votes
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(n, _)| n.to_string())
            .unwrap_or_default()
    }

    /// When the group next needs a tick (a deadline, the initial delay or
    /// a session expiring), at most `max` from `now`.
    pub fn next_wake(&self, now: Instant, max: Duration) -> Duration {
        let mut next = now + max;
        for t in [self.deadline, self.not_before].into_iter().flatten() {
            next = next.min(t);
        }
        for m in self.members.values().filter(|m| !m.pending_join) {
            next = next.min(m.last_seen + m.session_timeout + Duration::from_millis(1));
        }
        next.saturating_duration_since(now)
            .max(Duration::from_millis(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(10);

    fn native(id: &str, fresh: &str, topics: &[&str]) -> Join {
        Join {
            member_id: id.into(),
            fresh_id: fresh.into(),
            require_known_id: false,
            client_id: "c".into(),
            host: "h".into(),
            session_timeout: S,
            rebalance_timeout: S,
            subscription: Subscription::Native {
                topics: topics.iter().map(|t| t.to_string()).collect(),
                strategy: None,
            },
        }
    }

    fn kafka(id: &str, fresh: &str, assignors: &[&str]) -> Join {
        Join {
            subscription: Subscription::Kafka {
                protocol_type: "consumer".into(),
                protocols: assignors
                    .iter()
                    .map(|a| (a.to_string(), format!("md-{fresh}-{a}").into_bytes()))
                    .collect(),
            },
            ..native(id, fresh, &[])
        }
    }

    fn counts(t: &[(&str, u32)]) -> BTreeMap<String, u32> {
        t.iter().map(|(n, c)| (n.to_string(), *c)).collect()
    }

    fn waiting(o: JoinOutcome) -> (String, i32) {
        match o {
            JoinOutcome::Waiting {
                member_id,
                generation,
            } => (member_id, generation),
            other => panic!("expected Waiting, got {other:?}"),
        }
    }

    #[test]
    fn a_first_rebalance_waits_the_initial_delay_then_assigns_everyone() {
        let t0 = Instant::now();
        let mut g = GroupMachine::new(t0);
        let c = counts(&[("t", 6)]);
        let (a, gen0) = waiting(g.join(native("", "a", &["t"]), t0).unwrap());
        assert_eq!((g.phase(), gen0), (Phase::PreparingRebalance, 0));
        let (b, _) = waiting(g.join(native("", "b", &["t"]), t0).unwrap());
        // All joined, but the initial delay holds the rebalance open.
        assert_eq!(g.tick(t0, &c), (vec![], false));
        assert!(g.join_result(&a, gen0).is_none());
        assert!(g.next_wake(t0, S) <= INITIAL_REBALANCE_DELAY);
        let t1 = t0 + INITIAL_REBALANCE_DELAY;
        assert_eq!(g.tick(t1, &c), (vec![], true));
        assert_eq!(g.phase(), Phase::Stable);
        let ja = g.join_result(&a, gen0).unwrap().unwrap();
        let jb = g.join_result(&b, gen0).unwrap().unwrap();
        assert_eq!((ja.generation, jb.generation), (1, 1));
        assert_eq!(ja.leader, "a", "the earliest member leads");
        let mut all: Vec<u32> = ja.assignment["t"].clone();
        all.extend(&jb.assignment["t"]);
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3, 4, 5]);
        assert!(ja.members.is_empty(), "native joins carry no member list");
    }

    #[test]
    fn a_stable_native_group_rebalances_when_partitions_are_added() {
        let t0 = Instant::now();
        let mut g = GroupMachine::new(t0);
        let c = counts(&[("t", 2)]);
        let (a, gen0) = waiting(g.join(native("", "a", &["t"]), t0).unwrap());
        let t1 = t0 + INITIAL_REBALANCE_DELAY;
        assert_eq!(g.tick(t1, &c), (vec![], true));
        assert_eq!(
            g.join_result(&a, gen0).unwrap().unwrap().assignment["t"],
            vec![0, 1]
        );
        // The same counts: nothing happens.
        assert_eq!(g.tick(t1, &c), (vec![], false));
        assert_eq!(g.phase(), Phase::Stable);
        // Partitions added: a rebalance starts, the member is told through
        // its heartbeat and rejoins, and gets the new partitions.
        let more = counts(&[("t", 4)]);
        assert_eq!(g.tick(t1, &more), (vec![], false));
        assert_eq!(g.phase(), Phase::PreparingRebalance);
        let gen1 = g.generation();
        let (a2, _) = waiting(g.join(native(&a, "a", &["t"]), t1).unwrap());
        assert_eq!(a2, a);
        assert_eq!(g.tick(t1, &more), (vec![], true));
        let j = g.join_result(&a, gen1).unwrap().unwrap();
        assert_eq!(j.generation, gen1 + 1);
        assert_eq!(j.assignment["t"], vec![0, 1, 2, 3]);
        assert_eq!(g.tick(t1, &more), (vec![], false));
        assert_eq!(g.phase(), Phase::Stable);
    }

    #[test]
    fn heartbeats_signal_a_rebalance_and_fence_old_generations() {
        let t0 = Instant::now();
        let mut g = GroupMachine::new(t0);
        let c = counts(&[("t", 2)]);
        let (a, _) = waiting(g.join(native("", "a", &["t"]), t0).unwrap());
        g.tick(t0 + INITIAL_REBALANCE_DELAY, &c);
        assert!(g.heartbeat(&a, 1, t0).is_ok());
        assert_eq!(
            g.heartbeat(&a, 0, t0).unwrap_err().code,
            ErrorCode::IllegalGeneration
        );
        assert_eq!(
            g.heartbeat("x", 1, t0).unwrap_err().code,
            ErrorCode::UnknownMemberId
        );
        // A second member joins: a's heartbeat says rebalance.
        let (b, since) = waiting(g.join(native("", "b", &["t"]), t0).unwrap());
        assert_eq!(
            g.heartbeat(&a, 1, t0).unwrap_err().code,
            ErrorCode::RebalanceInProgress
        );
        // a may still commit at its generation before rejoining.
        assert!(g.check_commit(&a, 1).is_ok());
        assert_eq!(
            g.check_commit(&a, 0).unwrap_err().code,
            ErrorCode::IllegalGeneration
        );
        // Not complete until a rejoins (no initial delay this time).
        assert_eq!(g.tick(t0, &c), (vec![], false));
        waiting(g.join(native(&a, "", &["t"]), t0).unwrap());
        assert_eq!(g.tick(t0, &c), (vec![], true));
        let jb = g.join_result(&b, since).unwrap().unwrap();
        assert_eq!(jb.generation, 2);
        assert!(g.check_commit(&a, 1).is_err(), "generation 1 is fenced now");
        assert!(g.check_commit(&a, 2).is_ok());
    }

    #[test]
    fn members_that_do_not_rejoin_are_dropped_at_the_rebalance_timeout() {
        let t0 = Instant::now();
        let mut g = GroupMachine::new(t0);
        let c = counts(&[("t", 4)]);
        let (a, _) = waiting(g.join(native("", "a", &["t"]), t0).unwrap());
        let (b, _) = waiting(g.join(native("", "b", &["t"]), t0).unwrap());
        g.tick(t0 + INITIAL_REBALANCE_DELAY, &c);
        let (_c, since) = waiting(g.join(native("", "c", &["t"]), t0).unwrap());
        waiting(g.join(native(&a, "", &["t"]), t0).unwrap());
        // b never rejoins: the rebalance ends at the deadline without it.
        assert!(!g.tick(t0 + S - Duration::from_millis(1), &c).1);
        assert!(g.tick(t0 + S, &c).1);
        assert!(!g.members().contains_key(&b));
        let ja = g.join_result(&a, since).unwrap().unwrap();
        assert_eq!(ja.assignment["t"].len(), 2);
        assert_eq!(
            g.join_result(&b, since).unwrap().unwrap_err().code,
            ErrorCode::UnknownMemberId
        );
    }

    #[test]
    fn a_member_that_misses_its_session_timeout_is_removed_and_the_group_rebalances() {
        let t0 = Instant::now();
        let mut g = GroupMachine::new(t0);
        let c = counts(&[("t", 2)]);
        let (a, _) = waiting(g.join(native("", "a", &["t"]), t0).unwrap());
        let (b, _) = waiting(g.join(native("", "b", &["t"]), t0).unwrap());
        let t1 = t0 + INITIAL_REBALANCE_DELAY;
        g.tick(t1, &c);
        let t2 = t1 + S / 2;
        g.heartbeat(&a, 1, t2).unwrap();
        let t3 = t1 + S + Duration::from_millis(1);
        let (expired, _) = g.tick(t3, &c);
        assert_eq!(expired, vec![b.clone()]);
        assert_eq!(g.phase(), Phase::PreparingRebalance);
        assert!(g.next_wake(t3, S) <= S);
        // a learns of it, rejoins, and gets everything.
        assert!(g.heartbeat(&a, 1, t3).is_err());
        waiting(g.join(native(&a, "", &["t"]), t3).unwrap());
        assert!(g.tick(t3, &c).1);
        assert_eq!(
            g.join_result(&a, 1).unwrap().unwrap().assignment["t"],
            vec![0, 1]
        );
    }

    #[test]
    fn the_last_member_leaving_empties_the_group() {
        let t0 = Instant::now();
        let mut g = GroupMachine::new(t0);
        let c = counts(&[("t", 1)]);
        let (a, _) = waiting(g.join(native("", "a", &["t"]), t0).unwrap());
        g.tick(t0 + INITIAL_REBALANCE_DELAY, &c);
        assert!(g.check_commit("", -1).is_err(), "members are active");
        let t1 = t0 + Duration::from_secs(1);
        g.leave(&a, t1).unwrap();
        assert_eq!(
            g.leave(&a, t1).unwrap_err().code,
            ErrorCode::UnknownMemberId
        );
        assert!(g.tick(t1, &c).1);
        assert_eq!(g.phase(), Phase::Empty);
        assert!(g.is_idle());
        assert_eq!(g.empty_since(), Some(t1));
        assert!(
            g.check_commit("", -1).is_ok(),
            "an admin commit on an empty group"
        );
    }

    #[test]
    fn an_unknown_member_id_and_a_bad_strategy_are_refused() {
        let t0 = Instant::now();
        let mut g = GroupMachine::new(t0);
        assert_eq!(
            g.join(native("ghost", "", &["t"]), t0).unwrap_err().code,
            ErrorCode::UnknownMemberId
        );
        let mut j = native("", "a", &["t"]);
        j.subscription = Subscription::Native {
            topics: vec!["t".into()],
            strategy: Some("magic".into()),
        };
        assert_eq!(g.join(j, t0).unwrap_err().code, ErrorCode::InvalidConfig);
    }

    #[test]
    fn the_first_member_chooses_the_native_strategy() {
        let t0 = Instant::now();
        let mut g = GroupMachine::new(t0);
        let mut j = native("", "a", &["t"]);
        j.subscription = Subscription::Native {
            topics: vec!["t".into()],
            strategy: Some("roundrobin".into()),
        };
        g.join(j, t0).unwrap();
        let mut j = native("", "b", &["t"]);
        j.subscription = Subscription::Native {
            topics: vec!["t".into()],
            strategy: Some("sticky".into()),
        };
        g.join(j, t0).unwrap();
        assert_eq!(g.protocol(), "roundrobin");
    }

    #[test]
    fn kafka_members_get_an_id_first_then_the_leader_assigns_through_sync() {
        let t0 = Instant::now();
        let mut g = GroupMachine::new(t0);
        let none = BTreeMap::new();
        let mut j = kafka("", "k1", &["range", "roundrobin"]);
        j.require_known_id = true;
        assert_eq!(
            g.join(j, t0).unwrap(),
            JoinOutcome::MemberIdRequired {
                member_id: "k1".into()
            }
        );
        assert!(g.members().is_empty(), "not a member until it rejoins");
        let (k1, since) = waiting(
            g.join(kafka("k1", "", &["range", "roundrobin"]), t0)
                .unwrap(),
        );
        let (k2, _) = waiting(
            g.join(kafka("", "k2", &["roundrobin", "range"]), t0)
                .unwrap(),
        );
        let (k3, _) = waiting(g.join(kafka("", "k3", &["roundrobin"]), t0).unwrap());
        assert!(g.tick(t0 + INITIAL_REBALANCE_DELAY, &none).1);
        assert_eq!(g.phase(), Phase::CompletingRebalance);
        // k3 supports only roundrobin, so it is the only common one.
        assert_eq!(g.protocol(), "roundrobin");
        let j1 = g.join_result(&k1, since).unwrap().unwrap();
        assert_eq!(j1.leader, k1);
        assert_eq!(j1.members.len(), 3, "the leader sees every member");
        assert!(j1
            .members
            .iter()
            .any(|(id, md)| id == &k2 && md == b"md-k2-roundrobin"));
        let j2 = g.join_result(&k2, since).unwrap().unwrap();
        assert!(j2.members.is_empty(), "followers do not");
        // A follower syncs first and waits; heartbeats are fine meanwhile.
        g.sync(&k2, 1, vec![], t0).unwrap();
        assert!(g.sync_result(&k2, 1).is_none());
        assert!(g.heartbeat(&k2, 1, t0).is_ok());
        assert_eq!(
            g.check_commit(&k2, 1).unwrap_err().code,
            ErrorCode::RebalanceInProgress
        );
        // The leader's plan completes it.
        g.sync(
            &k1,
            1,
            vec![(k1.clone(), b"p1".to_vec()), (k2.clone(), b"p2".to_vec())],
            t0,
        )
        .unwrap();
        assert_eq!(g.phase(), Phase::Stable);
        assert_eq!(g.sync_result(&k2, 1).unwrap().unwrap(), b"p2");
        assert_eq!(g.sync_result(&k1, 1).unwrap().unwrap(), b"p1");
        assert_eq!(
            g.sync_result(&k3, 1).unwrap().unwrap(),
            b"",
            "left out: empty"
        );
        assert!(g.check_commit(&k2, 1).is_ok());
        // A sync from an old generation is fenced.
        assert_eq!(
            g.sync(&k2, 0, vec![], t0).unwrap_err().code,
            ErrorCode::IllegalGeneration
        );
    }

    #[test]
    fn a_sync_waiting_through_a_new_rebalance_is_told_to_rejoin() {
        let t0 = Instant::now();
        let mut g = GroupMachine::new(t0);
        let none = BTreeMap::new();
        let (k1, _) = waiting(g.join(kafka("", "k1", &["range"]), t0).unwrap());
        let (k2, _) = waiting(g.join(kafka("", "k2", &["range"]), t0).unwrap());
        g.tick(t0 + INITIAL_REBALANCE_DELAY, &none);
        g.sync(&k2, 1, vec![], t0).unwrap();
        g.leave(&k1, t0).unwrap();
        assert_eq!(
            g.sync_result(&k2, 1).unwrap().unwrap_err().code,
            ErrorCode::RebalanceInProgress
        );
        assert_eq!(
            g.sync(&k2, 1, vec![], t0).unwrap_err().code,
            ErrorCode::RebalanceInProgress
        );
    }

    #[test]
    fn a_leader_that_never_syncs_is_expired_and_the_group_rebalances_again() {
        let t0 = Instant::now();
        let mut g = GroupMachine::new(t0);
        let none = BTreeMap::new();
        let (k1, _) = waiting(g.join(kafka("", "k1", &["range"]), t0).unwrap());
        let (k2, _) = waiting(g.join(kafka("", "k2", &["range"]), t0).unwrap());
        let t1 = t0 + INITIAL_REBALANCE_DELAY;
        g.tick(t1, &none);
        assert_eq!(g.leader(), Some(k1.as_str()));
        // k2 keeps heartbeating; the leader is silent past its session.
        let t2 = t1 + S;
        g.heartbeat(&k2, 1, t2).unwrap();
        let (expired, _) = g.tick(t2 + Duration::from_millis(1), &none);
        assert_eq!(expired, vec![k1]);
        assert_eq!(g.phase(), Phase::PreparingRebalance);
        let (_, since) = waiting(g.join(kafka(&k2, "", &["range"]), t2).unwrap());
        assert!(g.tick(t2, &none).1);
        let j = g.join_result(&k2, since).unwrap().unwrap();
        assert_eq!((j.leader.as_str(), j.generation), (k2.as_str(), 2));
    }

    #[test]
    fn native_and_kafka_members_cannot_share_a_group() {
        let t0 = Instant::now();
        let mut g = GroupMachine::new(t0);
        g.join(native("", "n", &["t"]), t0).unwrap();
        assert_eq!(
            g.join(kafka("", "k", &["range"]), t0).unwrap_err().code,
            ErrorCode::InconsistentGroupProtocol
        );
        let mut g = GroupMachine::new(t0);
        g.join(kafka("", "k", &["range"]), t0).unwrap();
        assert_eq!(
            g.join(native("", "n", &["t"]), t0).unwrap_err().code,
            ErrorCode::InconsistentGroupProtocol
        );
        // Nor Kafka members without an assignor in common.
        assert_eq!(
            g.join(kafka("", "k2", &["cooperative-sticky"]), t0)
                .unwrap_err()
                .code,
            ErrorCode::InconsistentGroupProtocol
        );
        assert_eq!(g.protocol_type(), Some("consumer"));
    }

    #[test]
    fn a_pending_member_id_expires_after_its_session_timeout() {
        let t0 = Instant::now();
        let mut g = GroupMachine::new(t0);
        let mut j = kafka("", "k1", &["range"]);
        j.require_known_id = true;
        g.join(j, t0).unwrap();
        g.tick(t0 + S + Duration::from_millis(1), &BTreeMap::new());
        assert_eq!(
            g.join(kafka("k1", "", &["range"]), t0).unwrap_err().code,
            ErrorCode::UnknownMemberId
        );
    }
}
