//! Partition replication, on the shard that owns each replica.
//!
//! - The coordinator's metadata names each partition's replicas, its leader
//!   and leader epoch, and its in-sync replicas (ISR). Every shard applies
//!   it to the replicas it owns ([`Shard::apply_metadata`]).
//! - The leader appends produced batches stamped with its epoch. Followers
//!   copy the stored batches from it with replica fetches: one fetch stream
//!   per (follower shard, leader node), carrying all partitions the shard
//!   follows from that node, batched and long-polled. A fetch at offset `o`
//!   tells the leader the follower holds everything below `o`.
//! - The high watermark (HW) is the lowest log end among the leader and the
//!   ISR (Kafka's rule): `acks=all` completes when the HW passes the batch,
//!   and consumers read only below it. A produce with `acks=all` needs at
//!   least `min_insync_replicas` in the ISR (default: a majority).
//! - A replica that becomes a follower first asks the leader for the end of
//!   its own latest epoch and truncates what lies past it (KIP-101), so
//!   replicas never diverge.
//! - The leader drops followers that have not caught up for
//!   `replica_lag_time_max_ms` from the ISR, and adds them back once they
//!   reach the HW, through the coordinator. A shrink counts only once
//!   committed; an expansion counts at once (more conservative).

use crate::shard::{OpError, Partition, Shard};
use levee_coordinator::{Command, Metadata};
use levee_engine::batch::split_batches;
use levee_engine::LogError;
use levee_schemas::proto::{
    ErrorCode, Fetch, FetchPartition, Hello, OffsetForLeaderEpoch, Request, RequestHeader,
    Response, ResponseHeader,
};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not clustered: the log end is the high watermark.
    Single,
    Leader,
    Follower,
    /// Clustered, but the partition has no leader right now.
    Offline,
}

#[derive(Debug, Clone, Copy)]
pub struct FollowerState {
    pub leo: u64,
    last_fetch: Instant,
    leo_at_last_fetch: u64,
    pub last_caught_up: Instant,
}

/// A replica's view of its partition.
#[derive(Debug)]
pub struct Repl {
    pub role: Role,
    pub epoch: u64,
    pub leader: Option<u64>,
    pub replicas: Vec<u64>,
    /// The ISR as committed in the metadata.
    pub isr: Vec<u64>,
    /// An ISR change this leader proposed and that is not yet in the
    /// metadata; `true` if the proposal is in flight.
    pub pending_isr: Option<Vec<u64>>,
    pub proposing: bool,
    pub followers: HashMap<u64, FollowerState>,
    pub hw: u64,
    /// A follower must reconcile with the leader before fetching.
    pub needs_reconcile: bool,
    pub min_insync: usize,
    /// Where this leader's epoch started (its log end when it took over).
    pub epoch_start: u64,
}

impl Repl {
    pub fn single() -> Repl {
        Repl {
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

    /// The replicas whose log ends bound the high watermark: the committed
    /// ISR plus any pending additions.
    fn hw_members(&self) -> BTreeSet<u64> {
        let mut m: BTreeSet<u64> = self.isr.iter().copied().collect();
        if let Some(p) = &self.pending_isr {
            m.extend(p.iter().copied());
        }
        m
    }
}

pub fn batch_epoch(epoch: u64) -> i32 {
    epoch.min(i32::MAX as u64) as i32
}

impl Partition {
    pub fn role(&self) -> Role {
        self.repl.borrow().role
    }

    pub fn is_clustered(&self) -> bool {
        self.role() != Role::Single
    }

    /// Offsets below this are committed and visible to consumers.
    pub fn high_watermark(&self) -> u64 {
        let end = self.log.log_end_offset();
        let r = self.repl.borrow();
        match r.role {
            Role::Single => end,
            _ => r.hw.min(end),
        }
    }

    /// Leader: recomputes the HW from its own log end and the ISR's; it only
    /// moves forward. Wakes `acks=all` waiters and consumers if it moved.
    pub fn recompute_hw(&self, me: u64) {
        let end = self.log.log_end_offset();
        let moved = {
            let mut r = self.repl.borrow_mut();
            if r.role != Role::Leader {
                return;
            }
            let mut hw = end;
            for m in r.hw_members() {
                if m == me {
                    continue;
                }
                hw = hw.min(r.followers.get(&m).map_or(0, |f| f.leo));
            }
            if hw > r.hw {
                r.hw = hw;
                true
            } else {
                false
            }
        };
        if moved {
            self.hw_changed.notify();
        }
    }

    /// Leader: a follower fetched at `offset`, so it holds everything below.
    pub fn record_follower_fetch(&self, me: u64, node: u64, offset: u64) {
        let end = self.log.log_end_offset();
        let now = Instant::now();
        {
            let mut r = self.repl.borrow_mut();
            let f = r.followers.entry(node).or_insert(FollowerState {
                leo: offset,
                last_fetch: now,
                leo_at_last_fetch: end,
                last_caught_up: now,
            });
            // Caught up now, or at least as far as the leader was when the
            // follower last fetched (Kafka's lastCaughtUpTime).
            if offset >= end {
                f.last_caught_up = now;
            } else if offset >= f.leo_at_last_fetch {
                f.last_caught_up = f.last_caught_up.max(f.last_fetch);
            }
            f.leo = offset;
            f.last_fetch = now;
            f.leo_at_last_fetch = end;
        }
        self.recompute_hw(me);
    }

    /// Refuses client requests unless this replica leads the partition.
    pub fn check_leader(&self) -> Result<(), OpError> {
        let r = self.repl.borrow();
        match r.role {
            Role::Single | Role::Leader => Ok(()),
            Role::Follower => Err(OpError::new(
                ErrorCode::NotLeader,
                format!(
                    "partition {} of `{}` is led by node {} (epoch {}); refresh metadata and send there",
                    self.partition,
                    self.topic,
                    r.leader.map_or("?".into(), |l| l.to_string()),
                    r.epoch
                ),
            )),
            Role::Offline => Err(OpError::new(
                ErrorCode::NotLeader,
                format!(
                    "partition {} of `{}` has no leader: no in-sync replica is alive (epoch {})",
                    self.partition, self.topic, r.epoch
                ),
            )),
        }
    }
}

/// Replica-fetch requests are checked against the epoch the follower knows.
pub fn check_replica_fetch(p: &Partition, epoch: i64) -> Result<(), OpError> {
    let r = p.repl.borrow();
    if r.role != Role::Leader {
        return Err(OpError::new(
            ErrorCode::NotLeader,
            format!(
                "this node does not lead partition {} of `{}`",
                p.partition, p.topic
            ),
        ));
    }
    if epoch >= 0 && epoch as u64 != r.epoch {
        return Err(OpError::new(
            ErrorCode::FencedLeaderEpoch,
            format!(
                "replica fetch for epoch {epoch}, the leader is at epoch {}",
                r.epoch
            ),
        ));
    }
    Ok(())
}

/// Waits (bounded by `timeout`) until the HW passes `last`, for acks=all.
pub async fn wait_committed(
    p: &Partition,
    epoch: u64,
    last: u64,
    timeout: Duration,
) -> Result<(), OpError> {
    let deadline = Instant::now() + timeout;
    loop {
        let listen = p.hw_changed.listen();
        {
            let r = p.repl.borrow();
            if r.role != Role::Leader || r.epoch != epoch {
                return Err(OpError::new(
                    ErrorCode::NotLeader,
                    format!(
                        "leadership of partition {} of `{}` moved (epoch {} to {}) before the write was replicated; it may be lost, retry",
                        p.partition, p.topic, epoch, r.epoch
                    ),
                ));
            }
        }
        if p.high_watermark() > last {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let r = p.repl.borrow();
            return Err(OpError::new(
                ErrorCode::RequestTimedOut,
                format!(
                    "the write was not replicated to the in-sync replicas {:?} within {} ms (high watermark {}, write ends at {})",
                    r.hw_members(),
                    timeout.as_millis(),
                    r.hw,
                    last + 1
                ),
            ));
        }
        futures_lite::future::or(listen, glommio::timer::sleep(left)).await;
    }
}

/// The number of in-sync replicas `acks=all` needs for `rf` replicas.
pub fn min_insync(configured: u16, rf: usize) -> usize {
    if configured == 0 {
        rf / 2 + 1
    } else {
        (configured as usize).min(rf)
    }
}

impl Shard {
    /// Watches the cluster view and applies each new metadata version.
    pub async fn run_metadata_watch(self: Rc<Self>) {
        let Some(view) = self.cluster.clone() else {
            return;
        };
        let mut seen = 0;
        while !self.shutting_down.get() {
            let v = view.version();
            if v != seen {
                if let Some(md) = view.metadata() {
                    self.apply_metadata(&md).await;
                }
                seen = v;
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Adopts topics and this shard's replicas' roles from the metadata.
    pub async fn apply_metadata(self: &Rc<Self>, md: &Metadata) {
        let me = u64::from(self.cfg.node_id);
        let mut topics = BTreeMap::new();
        for (name, t) in &md.topics {
            let c = &t.config;
            topics.insert(
                name.clone(),
                crate::topics::TopicMeta {
                    partitions: c.partitions,
                    replication_factor: c.replication_factor,
                    retention_bytes: c.retention_bytes,
                    retention_ms: c.retention_ms,
                    fsync: c.fsync.clone(),
                    max_backlog_bytes: c.max_backlog_bytes,
                    segment_bytes: c.segment_bytes,
                },
            );
        }
        let gone: Vec<String> = self
            .topic_names()
            .into_iter()
            .filter(|n| !topics.contains_key(n))
            .collect();
        self.set_topics(topics.clone());
        for name in gone {
            info!(topic = %name, "topic deleted by the cluster");
            self.drop_topic(&name).await;
        }
        for (name, t) in &md.topics {
            let meta = &topics[name];
            for (i, pi) in t.partitions.iter().enumerate() {
                let p = i as u32;
                if self.owner(name, p) != self.id || !pi.replicas.contains(&me) {
                    continue;
                }
                let part = match self.open_partition(name, p, meta).await {
                    Ok(part) => part,
                    Err(e) => {
                        warn!(topic = %name, partition = p, error = %e.message, "cannot open a replica");
                        continue;
                    }
                };
                self.apply_partition(&part, pi, me).await;
            }
        }
    }

    async fn apply_partition(
        self: &Rc<Self>,
        part: &Rc<Partition>,
        pi: &levee_coordinator::PartitionInfo,
        me: u64,
    ) {
        let (old_role, old_epoch, old_leader) = {
            let r = part.repl.borrow();
            (r.role, r.epoch, r.leader)
        };
        let role = match pi.leader {
            Some(l) if l == me => Role::Leader,
            Some(_) => Role::Follower,
            None => Role::Offline,
        };
        let changed = role != old_role || pi.leader_epoch != old_epoch || pi.leader != old_leader;
        if changed && pi.leader_epoch < old_epoch {
            // Older metadata than we acted on: ignore.
            return;
        }
        if changed && role == Role::Leader {
            // Mark where this epoch starts before accepting any write in it.
            if let Err(e) = part
                .log
                .assign_epoch_start(batch_epoch(pi.leader_epoch))
                .await
            {
                warn!(topic = %part.topic, partition = part.partition, error = %e, "cannot start the leader epoch");
                return;
            }
        }
        {
            let mut r = part.repl.borrow_mut();
            r.replicas = pi.replicas.clone();
            r.isr = pi.isr.clone();
            r.min_insync = min_insync(self.cfg.min_insync_replicas, pi.replicas.len());
            if r.pending_isr.as_ref().is_some_and(|p| {
                let a: BTreeSet<_> = p.iter().collect();
                let b: BTreeSet<_> = pi.isr.iter().collect();
                a == b
            }) {
                r.pending_isr = None;
            }
            if changed {
                info!(
                    topic = %part.topic,
                    partition = part.partition,
                    epoch = pi.leader_epoch,
                    leader = ?pi.leader,
                    role = ?role,
                    "replica role changed"
                );
                r.role = role;
                r.epoch = pi.leader_epoch;
                r.leader = pi.leader;
                r.pending_isr = None;
                r.proposing = false;
                r.followers.clear();
                r.needs_reconcile = role == Role::Follower;
                r.epoch_start = part.log.log_end_offset();
                let now = Instant::now();
                if role == Role::Leader {
                    // Followers get a full lag allowance from the takeover.
                    for &f in &pi.replicas {
                        if f != me {
                            r.followers.insert(
                                f,
                                FollowerState {
                                    leo: 0,
                                    last_fetch: now,
                                    leo_at_last_fetch: u64::MAX,
                                    last_caught_up: now,
                                },
                            );
                        }
                    }
                }
            }
        }
        if changed {
            // Wake acks=all waiters and long polls so they see the change.
            part.hw_changed.notify();
            part.appended.notify();
            if role == Role::Follower {
                if let Some(l) = pi.leader {
                    self.ensure_fetcher(l);
                }
            }
        }
        part.recompute_hw(me);
    }

    /// Leader: the end offset of `epoch` in this log, for a follower.
    pub fn epoch_end(&self, p: &Partition, epoch: i64) -> Result<(i64, i64), OpError> {
        if p.role() != Role::Leader {
            return Err(OpError::new(
                ErrorCode::NotLeader,
                format!(
                    "this node does not lead partition {} of `{}`",
                    p.partition, p.topic
                ),
            ));
        }
        let (e, end) = p.log.end_offset_for_epoch(batch_epoch(epoch.max(0) as u64));
        Ok((i64::from(e), end as i64))
    }

    /// Starts the fetch stream from `leader` unless it runs already.
    fn ensure_fetcher(self: &Rc<Self>, leader: u64) {
        if !self.fetchers.borrow_mut().insert(leader) {
            return;
        }
        let shard = self.clone();
        glommio::spawn_local(async move {
            shard.run_fetcher(leader).await;
            shard.fetchers.borrow_mut().remove(&leader);
        })
        .detach();
    }

    fn followed_from(&self, leader: u64) -> Vec<Rc<Partition>> {
        self.all_partitions()
            .into_iter()
            .filter(|p| {
                let r = p.repl.borrow();
                r.role == Role::Follower && r.leader == Some(leader)
            })
            .collect()
    }

    /// One fetch stream: copies every partition this shard follows from
    /// `leader`, until there is none left or the shard stops.
    async fn run_fetcher(self: &Rc<Self>, leader: u64) {
        let me = u64::from(self.cfg.node_id);
        let mut conn: Option<PeerConn> = None;
        let mut idle_since = Instant::now();
        while !self.shutting_down.get() {
            let parts = self.followed_from(leader);
            if parts.is_empty() {
                if idle_since.elapsed() > Duration::from_secs(5) {
                    return;
                }
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
            idle_since = Instant::now();
            if conn.is_none() {
                let addr = self
                    .cluster
                    .as_ref()
                    .and_then(|v| v.metadata())
                    .and_then(|md| md.brokers.get(&leader).map(|b| b.client_addr.clone()));
                let Some(addr) = addr else {
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                match PeerConn::connect(&addr, me, self.cfg.max_frame_bytes as usize).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        debug!(leader, %addr, error = %e, "cannot connect to the leader");
                        glommio::timer::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else {
                continue;
            };
            match self.fetch_round(c, &parts, me).await {
                Ok(true) => {}
                Ok(false) => glommio::timer::sleep(Duration::from_millis(50)).await,
                Err(e) => {
                    debug!(leader, error = %e, "replica fetch failed; reconnecting");
                    conn = None;
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Reconciles partitions that need it, then fetches once for all of
    /// them. `Ok(false)`: nothing useful happened (back off a little).
    async fn fetch_round(
        &self,
        c: &mut PeerConn,
        parts: &[Rc<Partition>],
        me: u64,
    ) -> Result<bool, String> {
        let mut ready = Vec::with_capacity(parts.len());
        for p in parts {
            if p.repl.borrow().needs_reconcile {
                if !reconcile(c, p).await? {
                    continue;
                }
                p.repl.borrow_mut().needs_reconcile = false;
            }
            ready.push(p.clone());
        }
        if ready.is_empty() {
            return Ok(false);
        }
        let req = Request::Fetch(Box::new(Fetch {
            max_wait_ms: 500,
            min_bytes: 1,
            max_bytes: 8 << 20,
            partitions: Some(
                ready
                    .iter()
                    .map(|p| FetchPartition {
                        topic: p.topic.clone(),
                        partition: p.partition,
                        offset: p.log.log_end_offset(),
                        max_bytes: 1 << 20,
                        leader_epoch: p.repl.borrow().epoch as i64,
                    })
                    .collect(),
            ),
            replica_id: me as i64,
        }));
        let (h, body, start) = c.call(req, Duration::from_secs(5)).await?;
        let payload = &body[start..];
        let Some(Response::FetchResponse(r)) = h.response else {
            return Err(format!(
                "replica fetch refused: {:?} {}",
                h.error,
                h.message.unwrap_or_default()
            ));
        };
        let mut useful = false;
        for (fp, p) in r.partitions.unwrap_or_default().into_iter().zip(&ready) {
            if fp.error != ErrorCode::None {
                debug!(topic = %p.topic, partition = p.partition, error = ?fp.error, message = ?fp.message, "replica fetch error");
                if fp.error == ErrorCode::OffsetOutOfRange {
                    p.repl.borrow_mut().needs_reconcile = true;
                }
                continue;
            }
            useful = true;
            let data = levee_schemas::payload_slice(payload, fp.payload_offset, fp.payload_len)
                .map_err(|e| e.to_string())?;
            let mut last = None;
            for b in split_batches(data) {
                // The role may have changed while the fetch was out.
                if p.role() != Role::Follower {
                    break;
                }
                let mut res = p.log.append_replica(b.to_vec()).await;
                if let Err(LogError::NotContiguous { expected, got }) = res {
                    if got > expected && last.is_none() {
                        // The leader's log starts after ours ends (retention
                        // removed the rest): restart ours there.
                        info!(topic = %p.topic, partition = p.partition, from = expected, to = got, "replica is behind the leader's log start; restarting it there");
                        res = match p.log.reset_to(got).await {
                            Ok(()) => p.log.append_replica(b.to_vec()).await,
                            Err(e) => Err(e),
                        };
                    }
                }
                match res {
                    Ok(info) => last = Some(info.last_offset),
                    Err(LogError::NotContiguous { .. }) => {
                        p.repl.borrow_mut().needs_reconcile = true;
                        break;
                    }
                    Err(e) => {
                        warn!(topic = %p.topic, partition = p.partition, error = %e, "appending a replicated batch failed");
                        p.repl.borrow_mut().needs_reconcile = true;
                        break;
                    }
                }
            }
            if let Some(last) = last {
                // Report only durable data under fsync=always.
                if let Err(e) = p.log.wait_durable(last).await {
                    warn!(topic = %p.topic, partition = p.partition, error = %e, "flushing replicated batches failed");
                }
                p.appended.notify();
            }
            let hw = fp.high_watermark.min(p.log.log_end_offset());
            let moved = {
                let mut r = p.repl.borrow_mut();
                let moved = hw > r.hw;
                r.hw = r.hw.max(hw);
                moved
            };
            if moved {
                p.hw_changed.notify();
            }
        }
        Ok(useful)
    }

    /// Leader side, every 250 ms: shrinks the ISR by followers that lag,
    /// expands it by followers that caught up, through the coordinator.
    pub async fn run_isr_manager(self: Rc<Self>) {
        let Some(view) = self.cluster.clone() else {
            return;
        };
        let me = u64::from(self.cfg.node_id);
        let lag = Duration::from_millis(self.cfg.replica_lag_time_max_ms);
        while !self.shutting_down.get() {
            glommio::timer::sleep(Duration::from_millis(250)).await;
            for p in self.all_partitions() {
                let proposal = {
                    let mut r = p.repl.borrow_mut();
                    if r.role != Role::Leader || r.proposing {
                        continue;
                    }
                    let now = Instant::now();
                    let current: BTreeSet<u64> = r.hw_members();
                    let mut next = current.clone();
                    for &f in &r.replicas {
                        if f == me {
                            continue;
                        }
                        let st = r.followers.get(&f).copied();
                        if current.contains(&f) {
                            if st.is_none_or(|s| now.duration_since(s.last_caught_up) > lag) {
                                next.remove(&f);
                            }
                        } else if st.is_some_and(|s| s.leo >= r.hw && s.leo >= r.epoch_start) {
                            next.insert(f);
                        }
                    }
                    next.insert(me);
                    let committed: BTreeSet<u64> = r.isr.iter().copied().collect();
                    if next == committed {
                        r.pending_isr = None;
                        continue;
                    }
                    if next == current && r.pending_isr.is_some() {
                        // Waiting for the metadata to show the pending change.
                        continue;
                    }
                    let isr: Vec<u64> = r
                        .replicas
                        .iter()
                        .copied()
                        .filter(|x| next.contains(x))
                        .collect();
                    if next.len() > current.len() || next.is_superset(&committed) {
                        r.pending_isr = Some(isr.clone());
                    }
                    r.proposing = true;
                    (isr, r.epoch)
                };
                let (isr, epoch) = proposal;
                info!(topic = %p.topic, partition = p.partition, ?isr, epoch, "proposing an ISR change");
                let cmd = Command::UpdateIsr {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    isr,
                    epoch,
                };
                let addrs = view.addrs();
                let res = glommio::executor()
                    .spawn_blocking(move || {
                        levee_coordinator::client::propose(&addrs, cmd, Duration::from_secs(2))
                    })
                    .await;
                {
                    let mut r = p.repl.borrow_mut();
                    r.proposing = false;
                    if let Err(e) = &res {
                        warn!(topic = %p.topic, partition = p.partition, error = %e, "ISR change refused");
                        r.pending_isr = None;
                    }
                }
                p.recompute_hw(me);
            }
        }
    }
}

/// Follower: asks the leader where our latest epoch ends and truncates
/// anything we hold past it. `Ok(false)`: try again later.
async fn reconcile(c: &mut PeerConn, p: &Partition) -> Result<bool, String> {
    let Some(epoch) = p.log.latest_epoch() else {
        return Ok(true);
    };
    let req = Request::OffsetForLeaderEpoch(Box::new(OffsetForLeaderEpoch {
        topic: p.topic.clone(),
        partition: p.partition,
        epoch: i64::from(epoch),
    }));
    let (h, _, _) = c.call(req, Duration::from_secs(5)).await?;
    let r = match h.response {
        Some(Response::EpochEndOffset(r)) if r.error == ErrorCode::None => r,
        Some(Response::EpochEndOffset(r)) => {
            debug!(topic = %p.topic, partition = p.partition, error = ?r.error, message = ?r.message, "epoch lookup refused");
            return Ok(false);
        }
        _ => return Err(format!("epoch lookup failed: {:?}", h.message)),
    };
    let end = p.log.log_end_offset();
    let mut cut = (r.end_offset.max(0) as u64).min(end);
    if r.epoch >= 0 && r.epoch < i64::from(epoch) {
        // The leader never had our latest epoch: also cut where our copy
        // of its latest shared epoch ends.
        cut = cut.min(p.log.end_offset_for_epoch(r.epoch as i32).1);
    }
    if cut < end {
        info!(
            topic = %p.topic,
            partition = p.partition,
            from = end,
            to = cut,
            "truncating a suffix the leader does not have"
        );
        p.log.truncate_to(cut).await.map_err(|e| e.to_string())?;
        let mut rp = p.repl.borrow_mut();
        rp.hw = rp.hw.min(cut);
    }
    Ok(true)
}

/// A connection from a follower shard to a leader's client listener.
pub struct PeerConn {
    stream: glommio::net::TcpStream,
    next_id: Cell<u64>,
    max_frame: usize,
}

impl PeerConn {
    async fn connect(addr: &str, me: u64, max_frame: usize) -> Result<PeerConn, String> {
        let stream = futures_lite::future::or(
            async {
                glommio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| e.to_string())
            },
            async {
                glommio::timer::sleep(Duration::from_secs(2)).await;
                Err("connect timed out".to_string())
            },
        )
        .await?;
        let _ = stream.set_nodelay(true);
        let mut c = PeerConn {
            stream,
            next_id: Cell::new(1),
            max_frame,
        };
        let (h, _, _) = c
            .call(
                Request::Hello(Box::new(Hello {
                    client_id: Some(format!("levee-replica-{me}")),
                    min_version: levee_schemas::PROTOCOL_VERSION,
                    max_version: levee_schemas::PROTOCOL_VERSION,
                })),
                Duration::from_secs(2),
            )
            .await?;
        if h.error != ErrorCode::None {
            return Err(format!("hello refused: {:?}", h.message));
        }
        Ok(c)
    }

    /// Sends one request and reads its response: (header, frame body,
    /// start of the payload in the body).
    async fn call(
        &mut self,
        request: Request,
        timeout: Duration,
    ) -> Result<(ResponseHeader, Vec<u8>, usize), String> {
        use futures_lite::{AsyncReadExt, AsyncWriteExt};
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let frame = levee_schemas::request_frame(
            &RequestHeader {
                correlation_id: id,
                request,
            },
            &[],
        );
        let max = self.max_frame;
        let stream = &mut self.stream;
        let io = async move {
            stream.write_all(&frame).await.map_err(|e| e.to_string())?;
            stream.flush().await.map_err(|e| e.to_string())?;
            let mut prefix = [0u8; 4];
            stream
                .read_exact(&mut prefix)
                .await
                .map_err(|e| e.to_string())?;
            let len = levee_schemas::frame_len(prefix, max).map_err(|e| e.to_string())?;
            let mut body = vec![0u8; len];
            stream
                .read_exact(&mut body)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(body)
        };
        let body = futures_lite::future::or(io, async {
            glommio::timer::sleep(timeout).await;
            Err("no response in time".to_string())
        })
        .await?;
        let (h, payload) = levee_schemas::decode_response(&body).map_err(|e| e.to_string())?;
        let start = body.len() - payload.len();
        if h.correlation_id != id {
            return Err(format!(
                "response {} does not match request {id}",
                h.correlation_id
            ));
        }
        Ok((h, body, start))
    }
}
