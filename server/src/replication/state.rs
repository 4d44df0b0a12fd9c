//! One replica's replication state, without I/O: the role the metadata
//! gives it, the in-sync replicas (ISR), the followers' progress and the
//! high watermark (HW). Events go in as method calls (a follower fetched,
//! new metadata, a tick of the ISR manager) with the current time and log
//! end passed explicitly; decisions come out as return values (the HW
//! moved, propose this ISR, truncate to here). The shard does the I/O
//! around it (`replication/leader.rs`, `follower.rs`, `cluster/metadata.rs`),
//! and every transition is unit-tested below without sockets, files or an
//! executor, in the style of `coordinator/src/state.rs`.
//!
//! The rules (Kafka's): the HW is the lowest log end among the leader and
//! the ISR and only moves forward; a follower fetching at offset `o` holds
//! everything below `o`; a follower that has not caught up for
//! `replica_lag_time_max` leaves the ISR and comes back once it reaches the
//! HW (and the start of the leader's epoch); a shrink counts once the
//! metadata commits it, an expansion counts at once (pending), which is the
//! conservative side for the HW.

use crate::error::OpError;
use levee_schemas::proto::ErrorCode;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not clustered: the log end is the high watermark.
    Single,
    Leader,
    Follower,
    /// Clustered, but the partition has no leader right now.
    Offline,
}

/// What the leader knows of one follower.
#[derive(Debug, Clone, Copy)]
pub struct FollowerProgress {
    /// Its log end: it fetched at this offset, so it holds everything below.
    pub leo: u64,
    last_fetch: Instant,
    /// The leader's log end when it last fetched.
    leo_at_last_fetch: u64,
    /// When it last held everything the leader held (Kafka's lastCaughtUpTime).
    pub last_caught_up: Instant,
    /// Its log start, as its last fetch said (None: not said).
    pub log_start: Option<u64>,
}

/// One partition's placement as the cluster metadata gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub leader: Option<u64>,
    pub leader_epoch: u64,
    pub replicas: Vec<u64>,
    pub isr: Vec<u64>,
}

/// How new metadata relates to what the replica acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Older than what the replica acted on: ignore it.
    Stale,
    /// Same role, leader and epoch (the ISR or replicas may differ).
    Same,
    /// A new role, leader or epoch. Becoming leader, the log must mark
    /// where the epoch starts before any write in it.
    Change(Role),
}

/// Where a partition name appears in messages.
#[derive(Debug, Clone, Copy)]
pub struct Name<'a> {
    pub topic: &'a str,
    pub partition: u32,
}

/// A replica's view of its partition.
#[derive(Debug)]
pub struct ReplicaState {
    /// This node.
    me: u64,
    pub role: Role,
    pub epoch: u64,
    pub leader: Option<u64>,
    pub replicas: Vec<u64>,
    /// The ISR as committed in the metadata.
    pub isr: Vec<u64>,
    /// An ISR change this leader proposed and that is not yet in the
    /// metadata (an expansion counts for the HW at once).
    pending_isr: Option<Vec<u64>>,
    /// A proposal is in flight.
    proposing: bool,
    followers: HashMap<u64, FollowerProgress>,
    hw: u64,
    /// A follower must reconcile with the leader (KIP-101) before fetching.
    pub needs_reconcile: bool,
    pub min_insync: usize,
    /// Where this leader's epoch started (its log end when it took over).
    epoch_start: u64,
}

/// The number of in-sync replicas `acks=all` needs for `rf` replicas:
/// the configured number, or a majority when it is 0.
pub fn min_insync(configured: u16, rf: usize) -> usize {
    if configured == 0 {
        rf / 2 + 1
    } else {
        (configured as usize).min(rf)
    }
}

/// The leader epoch as stored in a batch header.
pub fn batch_epoch(epoch: u64) -> i32 {
    epoch.min(i32::MAX as u64) as i32
}

/// A follower reconciling with its leader (KIP-101): it asked where its
/// latest epoch `mine` ends on the leader and got (`leader_epoch`,
/// `leader_end`). Returns where to cut its log (`None`: nothing to cut).
/// `end_of` gives where an epoch ends in the follower's own log.
pub fn truncation_point(
    mine: i32,
    leader_epoch: i64,
    leader_end: i64,
    local_end: u64,
    end_of: impl Fn(i32) -> u64,
) -> Option<u64> {
    let mut cut = (leader_end.max(0) as u64).min(local_end);
    if leader_epoch >= 0 && leader_epoch < i64::from(mine) {
        // The leader never had our latest epoch: also cut where our copy of
        // its latest shared epoch ends.
        cut = cut.min(end_of(leader_epoch as i32));
    }
    (cut < local_end).then_some(cut)
}

impl ReplicaState {
    /// A partition of a single node: always its own leader.
    pub fn single(me: u64) -> ReplicaState {
        ReplicaState {
            me,
            role: Role::Single,
            epoch: 0,
            leader: None,
            replicas: Vec::new(),
            isr: Vec::new(),
            pending_isr: None,
            proposing: false,
            followers: HashMap::new(),
            hw: 0,
            needs_reconcile: false,
            min_insync: 1,
            epoch_start: 0,
        }
    }

    /// A replica of a cluster: offline until the metadata names a role.
    pub fn clustered(me: u64) -> ReplicaState {
        ReplicaState {
            role: Role::Offline,
            ..ReplicaState::single(me)
        }
    }

    pub fn is_clustered(&self) -> bool {
        self.role != Role::Single
    }

    /// The replicas whose log ends bound the HW: the committed ISR plus
    /// any pending additions.
    fn hw_members(&self) -> BTreeSet<u64> {
        let mut m: BTreeSet<u64> = self.isr.iter().copied().collect();
        if let Some(p) = &self.pending_isr {
            m.extend(p.iter().copied());
        }
        m
    }

    /// Offsets below this are committed and visible to consumers.
    pub fn high_watermark(&self, log_end: u64) -> u64 {
        match self.role {
            Role::Single => log_end,
            _ => self.hw.min(log_end),
        }
    }

    /// Leader: recomputes the HW from its own log end and the ISR's. It
    /// only moves forward; returns whether it moved.
    pub fn recompute_hw(&mut self, log_end: u64) -> bool {
        if self.role != Role::Leader {
            return false;
        }
        let mut hw = log_end;
        for m in self.hw_members() {
            if m != self.me {
                hw = hw.min(self.followers.get(&m).map_or(0, |f| f.leo));
            }
        }
        let moved = hw > self.hw;
        self.hw = self.hw.max(hw);
        moved
    }

    /// Leader: follower `node` fetched at `offset` (its log starting at
    /// `log_start`, if it said). Returns whether the HW moved.
    pub fn record_follower_fetch(
        &mut self,
        node: u64,
        offset: u64,
        log_start: Option<u64>,
        log_end: u64,
        now: Instant,
    ) -> bool {
        let f = self.followers.entry(node).or_insert(FollowerProgress {
            leo: offset,
            last_fetch: now,
            leo_at_last_fetch: log_end,
            last_caught_up: now,
            log_start,
        });
        if log_start.is_some() {
            f.log_start = log_start;
        }
        // Caught up now, or at least as far as the leader was when the
        // follower last fetched (Kafka's lastCaughtUpTime).
        if offset >= log_end {
            f.last_caught_up = now;
        } else if offset >= f.leo_at_last_fetch {
            f.last_caught_up = f.last_caught_up.max(f.last_fetch);
        }
        f.leo = offset;
        f.last_fetch = now;
        f.leo_at_last_fetch = log_end;
        self.recompute_hw(log_end)
    }

    /// Leader: the lowest log start of this replica (`own`) and the other
    /// in-sync ones (Kafka's low watermark): what DeleteRecords deleted
    /// is gone from every replica that may lead next once it passes the
    /// offset. A follower that has not said counts as 0.
    pub fn low_watermark(&self, own: u64) -> u64 {
        if self.role != Role::Leader || !self.is_clustered() {
            return own;
        }
        self.hw_members()
            .into_iter()
            .filter(|&n| n != self.me)
            .map(|n| {
                self.followers
                    .get(&n)
                    .and_then(|f| f.log_start)
                    .unwrap_or(0)
            })
            .fold(own, u64::min)
    }

    /// Follower: the leader's HW arrived with a fetch. Returns whether ours moved.
    pub fn follow_hw(&mut self, leader_hw: u64, log_end: u64) -> bool {
        let hw = leader_hw.min(log_end);
        let moved = hw > self.hw;
        self.hw = self.hw.max(hw);
        moved
    }

    /// Follower: the log was cut at `offset`.
    pub fn truncated(&mut self, offset: u64) {
        self.hw = self.hw.min(offset);
    }

    /// Refuses client requests unless this replica leads the partition.
    pub fn check_leader(&self, p: Name<'_>) -> Result<(), OpError> {
        match self.role {
            Role::Single | Role::Leader => Ok(()),
            Role::Follower => Err(OpError::new(
                ErrorCode::NotLeader,
                format!(
                    "partition {} of `{}` is led by node {} (epoch {}); refresh metadata and send there",
                    p.partition,
                    p.topic,
                    self.leader.map_or("?".into(), |l| l.to_string()),
                    self.epoch
                ),
            )),
            Role::Offline => Err(OpError::new(
                ErrorCode::NotLeader,
                format!(
                    "partition {} of `{}` has no leader: no in-sync replica is alive (epoch {})",
                    p.partition, p.topic, self.epoch
                ),
            )),
        }
    }

    /// A produce with `acks=all` needs `min_insync` replicas in the ISR.
    pub fn check_acks_all(&self, p: Name<'_>) -> Result<(), OpError> {
        let isr = self.isr.len();
        if self.role == Role::Leader && isr < self.min_insync {
            return Err(OpError::new(
                ErrorCode::NotEnoughReplicas,
                format!(
                    "partition {} of `{}` has {isr} in-sync replicas {:?} of {}; acks=all needs {} (min_insync_replicas). Bring the other replicas back, or use acks=1",
                    p.partition,
                    p.topic,
                    self.isr,
                    self.replicas.len(),
                    self.min_insync
                ),
            ));
        }
        Ok(())
    }

    /// Replica fetches are checked against the epoch the follower knows
    /// (a negative epoch: the follower does not say).
    pub fn check_replica_fetch(&self, p: Name<'_>, epoch: i64) -> Result<(), OpError> {
        if self.role != Role::Leader {
            return Err(OpError::new(
                ErrorCode::NotLeader,
                format!(
                    "this node does not lead partition {} of `{}`",
                    p.partition, p.topic
                ),
            ));
        }
        if epoch >= 0 && epoch as u64 != self.epoch {
            return Err(OpError::new(
                ErrorCode::FencedLeaderEpoch,
                format!(
                    "replica fetch for epoch {epoch}, the leader is at epoch {}",
                    self.epoch
                ),
            ));
        }
        Ok(())
    }

    /// Whether an `acks=all` write that ends at `last` and was appended in
    /// `epoch` is committed (`Ok(true)`), still waiting (`Ok(false)`), or
    /// lost its leadership (an error: it may be truncated).
    pub fn committed(
        &self,
        p: Name<'_>,
        epoch: u64,
        last: u64,
        log_end: u64,
    ) -> Result<bool, OpError> {
        if self.role != Role::Leader || self.epoch != epoch {
            return Err(OpError::new(
                ErrorCode::NotLeader,
                format!(
                    "leadership of partition {} of `{}` moved (epoch {} to {}) before the write was replicated; it may be lost, retry",
                    p.partition, p.topic, epoch, self.epoch
                ),
            ));
        }
        Ok(self.high_watermark(log_end) > last)
    }

    /// The error an `acks=all` write gets when it is not replicated in time.
    pub fn replication_timeout(&self, timeout: Duration, last: u64) -> OpError {
        OpError::new(
            ErrorCode::RequestTimedOut,
            format!(
                "the write was not replicated to the in-sync replicas {:?} within {} ms (high watermark {}, write ends at {})",
                self.hw_members(),
                timeout.as_millis(),
                self.hw,
                last + 1
            ),
        )
    }

    /// How metadata `pl` relates to what this replica acted on.
    pub fn classify(&self, pl: &Placement) -> Transition {
        let role = match pl.leader {
            Some(l) if l == self.me => Role::Leader,
            Some(_) => Role::Follower,
            None => Role::Offline,
        };
        let changed =
            role != self.role || pl.leader_epoch != self.epoch || pl.leader != self.leader;
        if !changed {
            Transition::Same
        } else if pl.leader_epoch < self.epoch {
            Transition::Stale
        } else {
            Transition::Change(role)
        }
    }

    /// Adopts metadata `pl` (classified as `t`, not `Stale`). `log_end` is
    /// the log's end now: a new leader's epoch starts there. The caller
    /// marked the epoch start in the log first when becoming leader.
    pub fn apply(
        &mut self,
        pl: &Placement,
        t: Transition,
        min_insync_cfg: u16,
        log_end: u64,
        now: Instant,
    ) {
        // Followers the coordinators dropped from the ISR (a lease that
        // expired, a restart) rejoin only on a fetch made after that: their
        // old progress, still "at the HW" while nothing is written, must
        // not bring a dead node back.
        for f in &self.isr {
            if *f != self.me && !pl.isr.contains(f) {
                self.followers.remove(f);
            }
        }
        self.replicas = pl.replicas.clone();
        self.isr = pl.isr.clone();
        self.min_insync = min_insync(min_insync_cfg, pl.replicas.len());
        let committed: BTreeSet<u64> = pl.isr.iter().copied().collect();
        if self
            .pending_isr
            .as_ref()
            .is_some_and(|p| p.iter().copied().collect::<BTreeSet<_>>() == committed)
        {
            self.pending_isr = None;
        }
        if let Transition::Change(role) = t {
            self.role = role;
            self.epoch = pl.leader_epoch;
            self.leader = pl.leader;
            self.pending_isr = None;
            self.proposing = false;
            self.followers.clear();
            self.needs_reconcile = role == Role::Follower;
            self.epoch_start = log_end;
            if role == Role::Leader {
                // Followers get a full lag allowance from the takeover.
                for &f in pl.replicas.iter().filter(|&&f| f != self.me) {
                    self.followers.insert(
                        f,
                        FollowerProgress {
                            leo: 0,
                            last_fetch: now,
                            leo_at_last_fetch: u64::MAX,
                            last_caught_up: now,
                            log_start: None,
                        },
                    );
                }
            }
        }
    }

    /// Leader, on the ISR manager's tick: the ISR to propose, if it should
    /// change (followers lagging longer than `lag` leave it, followers that
    /// reached the HW and this epoch's start join it). Returns the new ISR
    /// and the epoch it is proposed in; the proposal is then in flight
    /// until [`ReplicaState::proposal_done`].
    pub fn isr_proposal(&mut self, now: Instant, lag: Duration) -> Option<(Vec<u64>, u64)> {
        if self.role != Role::Leader || self.proposing {
            return None;
        }
        let current = self.hw_members();
        let mut next = current.clone();
        for &f in self.replicas.iter().filter(|&&f| f != self.me) {
            let st = self.followers.get(&f).copied();
            if current.contains(&f) {
                if st.is_none_or(|s| now.duration_since(s.last_caught_up) > lag) {
                    next.remove(&f);
                }
            } else if st.is_some_and(|s| {
                s.leo >= self.hw
                    && s.leo >= self.epoch_start
                    && now.duration_since(s.last_caught_up) <= lag
            }) {
                // Caught up, and recently: the progress of a follower that
                // died (and was dropped from the ISR by the coordinators)
                // stays "at the HW" while nothing is written, and must not
                // bring it back.
                next.insert(f);
            }
        }
        next.insert(self.me);
        let committed: BTreeSet<u64> = self.isr.iter().copied().collect();
        if next == committed {
            self.pending_isr = None;
            return None;
        }
        if next == current && self.pending_isr.is_some() {
            // Waiting for the metadata to show the pending change.
            return None;
        }
        let isr: Vec<u64> = self
            .replicas
            .iter()
            .copied()
            .filter(|x| next.contains(x))
            .collect();
        if next.len() > current.len() || next.is_superset(&committed) {
            self.pending_isr = Some(isr.clone());
        }
        self.proposing = true;
        Some((isr, self.epoch))
    }

    /// The proposal from [`ReplicaState::isr_proposal`] was answered. A
    /// refused one is dropped (the next tick decides again).
    pub fn proposal_done(&mut self, accepted: bool) {
        self.proposing = false;
        if !accepted {
            self.pending_isr = None;
        }
    }

    /// The ISR members the HW waits for (for messages and tests).
    pub fn hw_waits_for(&self) -> Vec<u64> {
        self.hw_members().into_iter().collect()
    }

    /// The follower progress the leader keeps (for tests and status).
    pub fn follower(&self, node: u64) -> Option<FollowerProgress> {
        self.followers.get(&node).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: Name<'static> = Name {
        topic: "t",
        partition: 0,
    };
    const LAG: Duration = Duration::from_secs(5);

    fn placement(leader: Option<u64>, epoch: u64, isr: &[u64]) -> Placement {
        Placement {
            leader,
            leader_epoch: epoch,
            replicas: vec![1, 2, 3],
            isr: isr.to_vec(),
        }
    }

    /// Node 1 leading epoch 1 with ISR {1,2,3}, log end `end`.
    fn leader(end: u64, now: Instant) -> ReplicaState {
        let mut r = ReplicaState::clustered(1);
        let pl = placement(Some(1), 1, &[1, 2, 3]);
        let t = r.classify(&pl);
        assert_eq!(t, Transition::Change(Role::Leader));
        r.apply(&pl, t, 0, end, now);
        r
    }

    #[test]
    fn a_single_node_is_its_own_leader_and_its_log_end_is_the_hw() {
        let r = ReplicaState::single(0);
        assert!(!r.is_clustered());
        assert_eq!(r.high_watermark(42), 42);
        assert!(r.check_leader(N).is_ok());
        assert!(r.check_acks_all(N).is_ok());
    }

    #[test]
    fn a_cluster_replica_is_offline_until_the_metadata_names_a_role() {
        let r = ReplicaState::clustered(1);
        assert_eq!(r.role, Role::Offline);
        assert_eq!(r.high_watermark(10), 0);
        assert_eq!(r.check_leader(N).unwrap_err().code, ErrorCode::NotLeader);
    }

    #[test]
    fn metadata_makes_a_leader_a_follower_or_offline_and_stale_metadata_is_ignored() {
        let now = Instant::now();
        let mut r = ReplicaState::clustered(2);
        let pl = placement(Some(1), 3, &[1, 2]);
        assert_eq!(r.classify(&pl), Transition::Change(Role::Follower));
        r.apply(&pl, Transition::Change(Role::Follower), 0, 7, now);
        assert_eq!(r.role, Role::Follower);
        assert!(r.needs_reconcile, "a new follower reconciles first");
        assert_eq!(r.leader, Some(1));
        assert_eq!(r.check_leader(N).unwrap_err().code, ErrorCode::NotLeader);
        // The same placement again changes nothing.
        assert_eq!(r.classify(&pl), Transition::Same);
        // An older epoch is stale.
        assert_eq!(r.classify(&placement(Some(2), 2, &[2])), Transition::Stale);
        // A newer epoch naming us leader.
        let pl = placement(Some(2), 4, &[2]);
        assert_eq!(r.classify(&pl), Transition::Change(Role::Leader));
        r.apply(&pl, Transition::Change(Role::Leader), 0, 9, now);
        assert_eq!(r.role, Role::Leader);
        assert!(!r.needs_reconcile);
        assert!(r.check_leader(N).is_ok());
        // No leader at all.
        let pl = placement(None, 5, &[]);
        assert_eq!(r.classify(&pl), Transition::Change(Role::Offline));
        r.apply(&pl, Transition::Change(Role::Offline), 0, 9, now);
        assert_eq!(r.check_leader(N).unwrap_err().code, ErrorCode::NotLeader);
    }

    #[test]
    fn the_hw_is_the_lowest_isr_log_end_and_only_moves_forward() {
        let now = Instant::now();
        let mut r = leader(100, now);
        // Followers start at 0: nothing is committed yet.
        assert!(!r.recompute_hw(100));
        assert_eq!(r.high_watermark(100), 0);
        assert!(!r.record_follower_fetch(2, 60, None, 100, now));
        assert_eq!(r.high_watermark(100), 0, "node 3 still holds nothing");
        assert!(r.record_follower_fetch(3, 40, None, 100, now));
        assert_eq!(r.high_watermark(100), 40);
        assert!(r.record_follower_fetch(3, 100, None, 100, now));
        assert_eq!(r.high_watermark(100), 60);
        // A follower going back (it truncated) does not move the HW back.
        assert!(!r.record_follower_fetch(2, 10, None, 100, now));
        assert_eq!(r.high_watermark(100), 60);
        // The HW never passes the leader's own log end.
        assert_eq!(r.high_watermark(50), 50);
    }

    #[test]
    fn the_low_watermark_is_the_lowest_in_sync_log_start() {
        let now = Instant::now();
        let mut r = leader(100, now);
        // Followers that have not said their log start count as 0.
        assert_eq!(r.low_watermark(50), 0);
        r.record_follower_fetch(2, 100, Some(50), 100, now);
        assert_eq!(r.low_watermark(50), 0, "node 3 has not said");
        r.record_follower_fetch(3, 100, Some(20), 100, now);
        assert_eq!(r.low_watermark(50), 20);
        // A fetch that does not say keeps what the last one said.
        r.record_follower_fetch(3, 100, None, 100, now);
        assert_eq!(r.low_watermark(50), 20);
        r.record_follower_fetch(3, 100, Some(70), 100, now);
        assert_eq!(r.low_watermark(50), 50, "the leader's own is lowest");
        assert_eq!(ReplicaState::single(1).low_watermark(9), 9);
    }

    #[test]
    fn acks_all_needs_min_insync_replicas() {
        let now = Instant::now();
        let mut r = ReplicaState::clustered(1);
        let pl = placement(Some(1), 1, &[1]);
        r.apply(&pl, r.classify(&pl), 0, 0, now);
        assert_eq!(r.min_insync, 2, "a majority of 3");
        assert_eq!(
            r.check_acks_all(N).unwrap_err().code,
            ErrorCode::NotEnoughReplicas
        );
        let pl = placement(Some(1), 1, &[1, 2]);
        r.apply(&pl, r.classify(&pl), 0, 0, now);
        assert!(r.check_acks_all(N).is_ok());
        // Configured explicitly.
        let mut r = ReplicaState::clustered(1);
        let pl = placement(Some(1), 1, &[1]);
        r.apply(&pl, r.classify(&pl), 1, 0, now);
        assert!(r.check_acks_all(N).is_ok());
        assert_eq!(min_insync(5, 3), 3);
    }

    #[test]
    fn a_write_is_committed_when_the_hw_passes_it_and_lost_if_leadership_moves() {
        let now = Instant::now();
        let mut r = leader(10, now);
        assert!(!r.committed(N, 1, 9, 10).unwrap());
        r.record_follower_fetch(2, 10, None, 10, now);
        r.record_follower_fetch(3, 10, None, 10, now);
        assert!(r.committed(N, 1, 9, 10).unwrap());
        // Written in another epoch: leadership moved in between.
        assert_eq!(
            r.committed(N, 0, 9, 10).unwrap_err().code,
            ErrorCode::NotLeader
        );
        let pl = placement(Some(2), 2, &[2, 3]);
        r.apply(&pl, r.classify(&pl), 0, 10, now);
        assert_eq!(
            r.committed(N, 1, 9, 10).unwrap_err().code,
            ErrorCode::NotLeader
        );
        let msg = r.replication_timeout(Duration::from_millis(5), 9).message;
        assert!(msg.contains("within 5 ms"), "{msg}");
    }

    #[test]
    fn replica_fetches_are_fenced_by_epoch() {
        let now = Instant::now();
        let r = leader(0, now);
        assert!(r.check_replica_fetch(N, 1).is_ok());
        assert!(r.check_replica_fetch(N, -1).is_ok(), "no epoch given");
        assert_eq!(
            r.check_replica_fetch(N, 0).unwrap_err().code,
            ErrorCode::FencedLeaderEpoch
        );
        let f = ReplicaState::clustered(1);
        assert_eq!(
            f.check_replica_fetch(N, 1).unwrap_err().code,
            ErrorCode::NotLeader
        );
    }

    #[test]
    fn a_lagging_follower_leaves_the_isr_once_committed_and_rejoins_when_caught_up() {
        let t0 = Instant::now();
        let mut r = leader(100, t0);
        r.record_follower_fetch(2, 100, None, 100, t0);
        r.record_follower_fetch(3, 100, None, 100, t0);
        assert_eq!(r.high_watermark(100), 100);
        // Nobody lags yet.
        assert_eq!(r.isr_proposal(t0 + Duration::from_secs(1), LAG), None);
        // Node 3 keeps fetching behind a growing log; node 2 keeps up.
        let t1 = t0 + Duration::from_secs(6);
        r.record_follower_fetch(2, 200, None, 200, t1);
        r.record_follower_fetch(3, 100, None, 200, t1);
        let (isr, epoch) = r.isr_proposal(t1, LAG).expect("node 3 lags");
        assert_eq!((isr.clone(), epoch), (vec![1, 2], 1));
        // While the proposal is in flight, no second one.
        assert_eq!(r.isr_proposal(t1, LAG), None);
        r.proposal_done(true);
        // A shrink counts only once committed: the HW still waits for 3.
        assert_eq!(r.high_watermark(200), 100);
        assert_eq!(r.hw_waits_for(), vec![1, 2, 3]);
        let pl = placement(Some(1), 1, &isr);
        r.apply(&pl, r.classify(&pl), 0, 200, t1);
        assert!(r.recompute_hw(200));
        assert_eq!(r.high_watermark(200), 200);
        // Node 3 catches up to the HW: it is proposed back, and counts at once.
        r.record_follower_fetch(3, 200, None, 200, t1);
        let (isr, _) = r.isr_proposal(t1, LAG).expect("node 3 caught up");
        assert_eq!(isr, vec![1, 2, 3]);
        assert_eq!(r.hw_waits_for(), vec![1, 2, 3], "pending expansion counts");
        // Waiting for the metadata: no repeated proposal.
        r.proposal_done(true);
        assert_eq!(r.isr_proposal(t1, LAG), None);
        let pl = placement(Some(1), 1, &[1, 2, 3]);
        r.apply(&pl, r.classify(&pl), 0, 200, t1);
        assert_eq!(r.isr_proposal(t1, LAG), None);
    }

    #[test]
    fn a_refused_proposal_is_dropped_and_decided_again() {
        let t0 = Instant::now();
        let mut r = leader(10, t0);
        let t1 = t0 + Duration::from_secs(6);
        r.record_follower_fetch(2, 10, None, 10, t1);
        assert!(r.isr_proposal(t1, LAG).is_some(), "node 3 never fetched");
        r.proposal_done(false);
        assert_eq!(r.hw_waits_for(), vec![1, 2, 3]);
        assert_eq!(r.isr_proposal(t1, LAG).map(|p| p.0), Some(vec![1, 2]));
    }

    #[test]
    fn a_follower_behind_the_epoch_start_does_not_rejoin() {
        let t0 = Instant::now();
        let mut r = ReplicaState::clustered(1);
        let pl = placement(Some(1), 1, &[1]);
        r.apply(&pl, r.classify(&pl), 1, 50, t0);
        r.recompute_hw(50);
        assert_eq!(r.high_watermark(50), 50);
        // At the HW, but this epoch started at 50 and the follower is at 40.
        r.record_follower_fetch(2, 40, None, 50, t0);
        assert_eq!(r.isr_proposal(t0, LAG), None);
        r.record_follower_fetch(2, 50, None, 50, t0);
        assert_eq!(r.isr_proposal(t0, LAG).map(|p| p.0), Some(vec![1, 2]));
    }

    #[test]
    fn a_dead_follower_dropped_from_the_isr_does_not_rejoin_on_stale_progress() {
        let t0 = Instant::now();
        let mut r = leader(100, t0);
        r.record_follower_fetch(2, 100, None, 100, t0);
        r.record_follower_fetch(3, 100, None, 100, t0);
        r.recompute_hw(100);
        // Node 3 dies; its lease expires and the coordinators drop it.
        let pl = placement(Some(1), 1, &[1, 2]);
        r.apply(&pl, r.classify(&pl), 0, 100, t0);
        // Nothing is written; node 2 keeps fetching, node 3 is silent. Its
        // last progress is still "at the HW", but old: it stays out.
        for s in 1..=20 {
            let t = t0 + Duration::from_millis(500 * s);
            r.record_follower_fetch(2, 100, None, 100, t);
            assert_eq!(r.isr_proposal(t, LAG), None, "at {s}");
        }
        // Node 3 comes back and fetches at the end: it rejoins.
        let t = t0 + Duration::from_secs(11);
        r.record_follower_fetch(3, 100, None, 100, t);
        assert_eq!(r.isr_proposal(t, LAG).map(|p| p.0), Some(vec![1, 2, 3]));
    }

    #[test]
    fn a_follower_that_fetches_at_the_leaders_old_end_counts_as_caught_up() {
        let t0 = Instant::now();
        let mut r = leader(100, t0);
        r.record_follower_fetch(2, 100, None, 100, t0);
        // The leader's log grew to 150; the follower's next fetch reaches
        // where the leader was at its last fetch: caught up as of then.
        let t1 = t0 + Duration::from_secs(4);
        r.record_follower_fetch(2, 100, None, 150, t1);
        let t2 = t1 + Duration::from_secs(3);
        r.record_follower_fetch(2, 150, None, 180, t2);
        assert_eq!(r.follower(2).unwrap().last_caught_up, t1);
    }

    #[test]
    fn a_follower_follows_the_leaders_hw_up_to_its_own_log_end() {
        let mut r = ReplicaState::clustered(2);
        let pl = placement(Some(1), 1, &[1, 2]);
        r.apply(&pl, r.classify(&pl), 0, 0, Instant::now());
        assert!(r.follow_hw(30, 20));
        assert_eq!(r.high_watermark(20), 20);
        assert!(!r.follow_hw(10, 20), "never backwards");
        r.truncated(5);
        assert_eq!(r.high_watermark(20), 5);
    }

    #[test]
    fn truncation_cuts_what_the_leader_does_not_have() {
        let end_of = |e: i32| match e {
            1 => 30,
            2 => 45,
            _ => 60,
        };
        // The leader has our epoch 3 up to 50: cut our 60 to 50.
        assert_eq!(truncation_point(3, 3, 50, 60, end_of), Some(50));
        // The leader has all we have.
        assert_eq!(truncation_point(3, 3, 80, 60, end_of), None);
        // The leader never had epoch 3; its latest is 2, ending at 50 on it
        // but at 45 in our copy.
        assert_eq!(truncation_point(3, 2, 50, 60, end_of), Some(45));
        // An unknown epoch on the leader (-1): cut to its answer.
        assert_eq!(truncation_point(3, -1, 0, 60, end_of), Some(0));
    }
}
