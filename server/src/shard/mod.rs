//! A shard: one glommio executor pinned to one core, the only owner of its
//! partitions' logs. Work for a partition owned by another shard is sent to
//! that shard over the channel mesh and the reply comes back the same way.

use crate::config::{parse_fsync, ServerConfig};
use crate::metrics::{label, Histogram, Sample};
use crate::topics::{self, TopicMeta};
use futures_channel::oneshot;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::sync::Semaphore;
use levee_engine::batch::{BatchHeader, HEADER_LEN};
use levee_engine::event::LocalEvent;
use levee_engine::{Log, LogError};
use levee_schemas::proto::ErrorCode;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// A typed failure of one operation, sent back to the client as is.
#[derive(Debug, Clone)]
pub struct OpError {
    pub code: ErrorCode,
    pub message: String,
}

impl OpError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        OpError {
            code,
            message: message.into(),
        }
    }

    pub fn unknown_partition(topic: &str, partition: u32) -> Self {
        OpError::new(
            ErrorCode::UnknownTopicOrPartition,
            format!("partition {partition} of topic `{topic}` does not exist"),
        )
    }

    fn from_log(e: LogError) -> Self {
        let code = match &e {
            LogError::Batch(levee_engine::BatchError::TooLarge { .. }) => {
                ErrorCode::MessageTooLarge
            }
            LogError::Batch(_) => ErrorCode::CorruptBatch,
            LogError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            LogError::Closed => ErrorCode::ShuttingDown,
            LogError::Config(_) => ErrorCode::InvalidConfig,
            LogError::NotContiguous { .. } => ErrorCode::InvalidRequest,
            LogError::Io { .. } | LogError::Poisoned(_) | LogError::Corrupt { .. } => {
                ErrorCode::StorageError
            }
        };
        OpError::new(code, e.to_string())
    }
}

pub type OpResult = Result<OpOk, OpError>;

/// Work a shard does for itself or for another shard.
#[derive(Debug)]
pub enum Op {
    Produce {
        topic: String,
        partition: u32,
        acks: i8,
        timeout: Duration,
        data: Vec<u8>,
    },
    Read {
        topic: String,
        partition: u32,
        offset: u64,
        max_bytes: usize,
        /// A follower's fetch: (its node id, the leader epoch it knows).
        replica: Option<(u64, i64)>,
    },
    /// Completes when the partition has data at `offset` (committed data,
    /// unless for a replica), or after `wait`.
    WaitData {
        topic: String,
        partition: u32,
        offset: u64,
        wait: Duration,
        replica: bool,
    },
    /// Leader: where `epoch` ends in its log.
    EpochEnd {
        topic: String,
        partition: u32,
        epoch: i64,
    },
    ListOffsets {
        topic: String,
        partition: u32,
        spec: i64,
    },
    Info {
        topic: String,
        partition: u32,
    },
    /// Handled by shard 0, which owns the topic metadata file.
    CreateTopic {
        name: String,
        meta: TopicMeta,
    },
    DeleteTopic {
        name: String,
    },
    /// Sent by shard 0 to every shard: adopt (Some) or drop (None) a topic.
    ApplyTopic {
        name: String,
        meta: Option<TopicMeta>,
    },
    Metrics,
    /// A consumer-group request, run by the group's owning shard.
    Group {
        req: levee_schemas::proto::Request,
        host: String,
    },
    /// This shard's groups (for ListGroups).
    ListGroups,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct PartitionState {
    pub log_start: u64,
    pub log_end: u64,
    pub high_watermark: u64,
    pub size_bytes: u64,
}

#[derive(Debug)]
pub enum OpOk {
    Produced {
        base: u64,
        last: u64,
        log_start: u64,
    },
    Read {
        data: Vec<u8>,
        state: PartitionState,
    },
    Offset(i64),
    /// (largest epoch not above the asked one, its end offset).
    EpochEnd(i64, i64),
    Info(PartitionState),
    Done,
    Metrics(Vec<Sample>),
    Response(levee_schemas::proto::Response),
    Groups(Vec<levee_schemas::proto::GroupSummary>),
}

pub enum ShardMsg {
    Req { id: u64, from: usize, op: Op },
    Resp { id: u64, res: OpResult },
}

/// One partition's log and its counters.
pub struct Partition {
    pub topic: String,
    pub partition: u32,
    pub log: Log,
    pub appended: LocalEvent,
    /// Replication state (role, epoch, ISR, high watermark).
    pub repl: RefCell<crate::replication::Repl>,
    /// Notified when the high watermark moves or the role changes.
    pub hw_changed: LocalEvent,
    max_backlog: Option<u64>,
    bytes_in: Cell<u64>,
    msgs_in: Cell<u64>,
    bytes_out: Cell<u64>,
    msgs_out: Cell<u64>,
    /// Bytes appended since start-up, and of those the bytes the furthest
    /// consumer has fetched: the backlog that `max_backlog_bytes` bounds.
    produced: Cell<u64>,
    consumed: Cell<u64>,
    fetch_next: Cell<u64>,
}

impl Partition {
    pub fn backlog(&self) -> u64 {
        self.produced.get().saturating_sub(self.consumed.get())
    }

    fn state(&self) -> PartitionState {
        let st = self.log.stats();
        PartitionState {
            log_start: st.log_start_offset,
            log_end: st.log_end_offset,
            high_watermark: self.high_watermark(),
            size_bytes: st.size_bytes,
        }
    }

    /// Accounts a fetch that returned `data` for `offset`: batches past the
    /// furthest position any consumer reached count as consumed.
    fn note_fetch(&self, offset: u64, data: &[u8], log_end: u64) {
        let mut msgs = 0u64;
        let mut fresh = 0u64;
        let start = self.fetch_next.get();
        let mut next = start;
        for b in levee_engine::batch::split_batches(data) {
            if let Ok(h) = BatchHeader::parse(b) {
                msgs += u64::from(h.record_count());
                if h.base_offset() >= start {
                    fresh += b.len() as u64;
                }
                next = next.max(h.next_offset());
            }
        }
        self.bytes_out.set(self.bytes_out.get() + data.len() as u64);
        self.msgs_out.set(self.msgs_out.get() + msgs);
        if next >= log_end || offset >= log_end {
            // This consumer is at the end: nothing is left behind it.
            self.consumed.set(self.produced.get());
            self.fetch_next.set(log_end);
        } else if next > start {
            self.consumed.set(self.consumed.get() + fresh);
            self.fetch_next.set(next);
        }
    }
}

#[derive(Default)]
pub struct ShardMetrics {
    pub produce_latency: Histogram,
    pub fetch_latency: Histogram,
    pub connections: Cell<u64>,
    pub requests_ok: Cell<u64>,
    pub errors: Cell<u64>,
    pub forwarded: Cell<u64>,
}

pub fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

pub struct Shard {
    pub id: usize,
    pub nshards: usize,
    pub cfg: Arc<ServerConfig>,
    /// Set on a cluster node: the metadata this node follows.
    pub cluster: Option<Arc<crate::cluster::ClusterView>>,
    /// Leaders this shard runs a replica fetch stream from.
    pub fetchers: RefCell<std::collections::HashSet<u64>>,
    topics: RefCell<BTreeMap<String, TopicMeta>>,
    parts: RefCell<HashMap<(String, u32), Rc<Partition>>>,
    senders: Option<Senders<ShardMsg>>,
    pending: RefCell<HashMap<u64, oneshot::Sender<OpResult>>>,
    next_id: Cell<u64>,
    pub inflight: Rc<Semaphore>,
    pub inflight_limit: u64,
    pub metrics: ShardMetrics,
    pub shutting_down: Cell<bool>,
    pub shutdown_event: LocalEvent,
    /// Serializes topic creation and deletion (shard 0).
    admin_lock: Semaphore,
    /// The consumer groups this shard coordinates.
    pub groups: crate::groups::Groups,
    /// Request buffers kept for reuse: reading a large request into a fresh
    /// allocation costs page faults and zeroing on every request.
    buffers: RefCell<Vec<Vec<u8>>>,
}

/// Request buffers a shard keeps for reuse, and the largest kept.
const POOLED_BUFFERS: usize = 16;
const POOLED_BUFFER_MAX: usize = 4 << 20;

type LocalBoxFuture<T> = Pin<Box<dyn Future<Output = T>>>;

impl Shard {
    pub fn new(
        id: usize,
        nshards: usize,
        cfg: Arc<ServerConfig>,
        topics: BTreeMap<String, TopicMeta>,
        senders: Option<Senders<ShardMsg>>,
        cluster: Option<Arc<crate::cluster::ClusterView>>,
    ) -> Rc<Shard> {
        let limit = cfg.max_inflight_bytes_per_shard;
        Rc::new(Shard {
            id,
            nshards,
            cluster,
            fetchers: RefCell::new(Default::default()),
            topics: RefCell::new(topics),
            parts: RefCell::new(HashMap::new()),
            senders,
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
            inflight: Rc::new(Semaphore::new(limit)),
            inflight_limit: limit,
            metrics: ShardMetrics::default(),
            shutting_down: Cell::new(false),
            shutdown_event: LocalEvent::default(),
            admin_lock: Semaphore::new(1),
            groups: crate::groups::Groups::new(&cfg.data_dir),
            buffers: RefCell::new(Vec::new()),
            cfg,
        })
    }

    pub fn owner(&self, topic: &str, partition: u32) -> usize {
        topics::owner_shard(topic, partition, self.nshards)
    }

    /// A buffer of exactly `len` bytes to read a request into (contents
    /// unspecified), reused from earlier requests when possible.
    pub fn take_buffer(&self, len: usize) -> Vec<u8> {
        let reused = {
            let mut pool = self.buffers.borrow_mut();
            pool.iter()
                .position(|b| b.capacity() >= len)
                .map(|i| pool.swap_remove(i))
        };
        let mut b = reused.unwrap_or_else(|| Vec::with_capacity(len.max(64 << 10)));
        // Zero-fills only bytes this buffer never held.
        b.resize(len, 0);
        b
    }

    /// Gives a request buffer back for reuse (bounded in count and size).
    pub fn return_buffer(&self, b: Vec<u8>) {
        if b.capacity() <= POOLED_BUFFER_MAX {
            let mut pool = self.buffers.borrow_mut();
            if pool.len() < POOLED_BUFFERS {
                pool.push(b);
            }
        }
    }

    /// The shard that coordinates a consumer group.
    pub fn group_owner(&self, group: &str) -> usize {
        (crc32c::crc32c(group.as_bytes()) as usize) % self.nshards
    }

    pub fn topic(&self, name: &str) -> Option<TopicMeta> {
        self.topics.borrow().get(name).cloned()
    }

    pub fn topic_names(&self) -> Vec<String> {
        self.topics.borrow().keys().cloned().collect()
    }

    /// Replaces the topic metadata (cluster mode: from the coordinators).
    pub fn set_topics(&self, topics: BTreeMap<String, TopicMeta>) {
        *self.topics.borrow_mut() = topics;
    }

    pub fn all_partitions(&self) -> Vec<Rc<Partition>> {
        self.parts.borrow().values().cloned().collect()
    }

    /// Checks that a partition exists in the metadata this shard holds.
    pub fn check_partition(&self, topic: &str, partition: u32) -> Result<(), OpError> {
        match self.topics.borrow().get(topic) {
            None => Err(OpError::new(
                ErrorCode::UnknownTopicOrPartition,
                format!(
                    "topic `{topic}` does not exist (create it with `levee topic create {topic}`)"
                ),
            )),
            Some(m) if partition >= m.partitions => Err(OpError::new(
                ErrorCode::UnknownTopicOrPartition,
                format!(
                    "topic `{topic}` has {} partitions; partition {partition} does not exist",
                    m.partitions
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    fn partition(&self, topic: &str, partition: u32) -> Result<Rc<Partition>, OpError> {
        if let Some(p) = self.parts.borrow().get(&(topic.to_string(), partition)) {
            return Ok(p.clone());
        }
        if self.cluster.is_some() && self.check_partition(topic, partition).is_ok() {
            // The partition exists in the cluster, but no replica of it is
            // open here (another node hosts it, or it is still opening).
            return Err(OpError::new(
                ErrorCode::NotLeader,
                format!(
                    "node {} holds no replica of partition {partition} of `{topic}` (yet); refresh metadata and send to its leader",
                    self.cfg.node_id
                ),
            ));
        }
        Err(OpError::unknown_partition(topic, partition))
    }

    /// Opens (recovering if needed) every partition of `name` this shard owns.
    pub async fn open_topic(&self, name: &str, meta: &TopicMeta) -> Result<(), OpError> {
        for p in 0..meta.partitions {
            if self.owner(name, p) != self.id {
                continue;
            }
            self.open_partition(name, p, meta).await?;
        }
        Ok(())
    }

    /// The partition's log, opened (and recovered) on first use.
    pub async fn open_partition(
        &self,
        name: &str,
        p: u32,
        meta: &TopicMeta,
    ) -> Result<Rc<Partition>, OpError> {
        if let Some(part) = self.parts.borrow().get(&(name.to_string(), p)) {
            return Ok(part.clone());
        }
        {
            let fsync = if meta.fsync.is_empty() {
                None
            } else {
                Some(
                    parse_fsync(&meta.fsync)
                        .map_err(|m| OpError::new(ErrorCode::InvalidConfig, m))?,
                )
            };
            let pos = |v: i64| (v >= 0).then_some(v);
            let cfg = self.cfg.log_config(
                fsync,
                pos(meta.segment_bytes).map(|v| v as u64),
                pos(meta.retention_bytes),
                pos(meta.retention_ms),
            );
            let dir = topics::partition_dir(&self.cfg.data_dir, name, p);
            let log = Log::open(&dir, cfg).await.map_err(OpError::from_log)?;
            let end = log.log_end_offset();
            let mut repl = crate::replication::Repl::single();
            if self.cluster.is_some() {
                // Offline until the metadata names a role.
                repl.role = crate::replication::Role::Offline;
            }
            let part = Rc::new(Partition {
                topic: name.to_string(),
                partition: p,
                log,
                appended: LocalEvent::default(),
                repl: RefCell::new(repl),
                hw_changed: LocalEvent::default(),
                max_backlog: pos(meta.max_backlog_bytes).map(|v| v as u64),
                bytes_in: Cell::new(0),
                msgs_in: Cell::new(0),
                bytes_out: Cell::new(0),
                msgs_out: Cell::new(0),
                produced: Cell::new(0),
                consumed: Cell::new(0),
                fetch_next: Cell::new(end),
            });
            let bg = part.clone();
            glommio::spawn_local(async move {
                if let Err(e) = bg.log.run_background().await {
                    warn!(topic = %bg.topic, partition = bg.partition, error = %e, "partition background work stopped");
                }
            })
            .detach();
            self.parts
                .borrow_mut()
                .insert((name.to_string(), p), part.clone());
            Ok(part)
        }
    }

    /// Closes every log cleanly (flush, indexes, clean marker).
    pub async fn close_all(&self) {
        self.groups.close_all().await;
        let parts: Vec<Rc<Partition>> = self.parts.borrow().values().cloned().collect();
        for p in parts {
            if let Err(e) = p.log.close().await {
                warn!(topic = %p.topic, partition = p.partition, error = %e, "closing a partition log failed");
            }
        }
    }

    /// Runs `op` on the shard that owns it: here, or by a message.
    pub fn call(self: &Rc<Self>, owner: usize, op: Op) -> LocalBoxFuture<OpResult> {
        let this = self.clone();
        Box::pin(async move {
            if owner == this.id {
                return this.handle(op).await;
            }
            let Some(senders) = &this.senders else {
                return Err(OpError::new(ErrorCode::Unknown, "no route to shard"));
            };
            let id = this.next_id.get();
            this.next_id.set(id + 1);
            let (tx, rx) = oneshot::channel();
            this.pending.borrow_mut().insert(id, tx);
            bump(&this.metrics.forwarded);
            if senders
                .send_to(
                    owner,
                    ShardMsg::Req {
                        id,
                        from: this.id,
                        op,
                    },
                )
                .await
                .is_err()
            {
                this.pending.borrow_mut().remove(&id);
                return Err(OpError::new(
                    ErrorCode::ShuttingDown,
                    "the broker is shutting down",
                ));
            }
            match rx.await {
                Ok(res) => res,
                Err(_) => Err(OpError::new(
                    ErrorCode::ShuttingDown,
                    "the broker is shutting down",
                )),
            }
        })
    }

    /// Serves requests and replies arriving from the other shards.
    pub fn serve_mesh(self: &Rc<Self>, mut receivers: Receivers<ShardMsg>) {
        for (_peer, rx) in receivers.streams() {
            let shard = self.clone();
            glommio::spawn_local(async move {
                while let Some(msg) = rx.recv().await {
                    match msg {
                        ShardMsg::Req { id, from, op } => {
                            let s = shard.clone();
                            glommio::spawn_local(async move {
                                let res = s.clone().handle(op).await;
                                if let Some(senders) = &s.senders {
                                    let _ = senders.send_to(from, ShardMsg::Resp { id, res }).await;
                                }
                            })
                            .detach();
                        }
                        ShardMsg::Resp { id, res } => {
                            if let Some(tx) = shard.pending.borrow_mut().remove(&id) {
                                let _ = tx.send(res);
                            }
                        }
                    }
                }
            })
            .detach();
        }
    }

    fn handle(self: Rc<Self>, op: Op) -> LocalBoxFuture<OpResult> {
        Box::pin(async move {
            match op {
                Op::Produce {
                    topic,
                    partition,
                    acks,
                    timeout,
                    data,
                } => {
                    let p = self.partition(&topic, partition)?;
                    produce(&self, &p, acks, timeout, data).await
                }
                Op::Read {
                    topic,
                    partition,
                    mut offset,
                    max_bytes,
                    replica,
                } => {
                    let p = self.partition(&topic, partition)?;
                    let visible = match replica {
                        Some((node, epoch)) => {
                            crate::replication::check_replica_fetch(&p, epoch)?;
                            if offset > p.log.log_end_offset() {
                                return Err(OpError::new(
                                    ErrorCode::OffsetOutOfRange,
                                    format!(
                                        "follower {node} fetches at {offset}, past the leader's log end {}",
                                        p.log.log_end_offset()
                                    ),
                                ));
                            }
                            p.record_follower_fetch(u64::from(self.cfg.node_id), node, offset);
                            // A follower behind our log start gets our first
                            // batch and restarts its log there.
                            offset = offset.max(p.log.log_start_offset());
                            None
                        }
                        None => {
                            p.check_leader()?;
                            p.is_clustered().then(|| p.high_watermark())
                        }
                    };
                    let out = p
                        .log
                        .read(offset, max_bytes, visible)
                        .await
                        .map_err(OpError::from_log)?;
                    if replica.is_none() {
                        p.note_fetch(offset, &out.data, out.log_end_offset);
                    }
                    Ok(OpOk::Read {
                        data: out.data,
                        state: p.state(),
                    })
                }
                Op::WaitData {
                    topic,
                    partition,
                    offset,
                    wait,
                    replica,
                } => {
                    let p = self.partition(&topic, partition)?;
                    let deadline = Instant::now() + wait;
                    let role = (p.role(), p.repl.borrow().epoch);
                    loop {
                        let listen = if replica || !p.is_clustered() {
                            p.appended.listen()
                        } else {
                            p.hw_changed.listen()
                        };
                        let end = if replica {
                            p.log.log_end_offset()
                        } else {
                            p.high_watermark()
                        };
                        let changed = (p.role(), p.repl.borrow().epoch) != role;
                        if end > offset || changed || self.shutting_down.get() {
                            break;
                        }
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        let shutdown = self.shutdown_event.listen();
                        futures_lite::future::or(
                            futures_lite::future::or(listen, shutdown),
                            glommio::timer::sleep(left),
                        )
                        .await;
                    }
                    Ok(OpOk::Done)
                }
                Op::ListOffsets {
                    topic,
                    partition,
                    spec,
                } => {
                    let p = self.partition(&topic, partition)?;
                    let off = match spec {
                        -2 => p.log.log_start_offset() as i64,
                        -1 => p.log.log_end_offset() as i64,
                        ts if ts >= 0 => p
                            .log
                            .offset_for_timestamp(ts)
                            .await
                            .map_err(OpError::from_log)?
                            .map_or(-1, |o| o as i64),
                        other => {
                            return Err(OpError::new(
                                ErrorCode::InvalidRequest,
                                format!("offset spec {other} is not -2 (earliest), -1 (latest) or a timestamp"),
                            ))
                        }
                    };
                    Ok(OpOk::Offset(off))
                }
                Op::EpochEnd {
                    topic,
                    partition,
                    epoch,
                } => {
                    let p = self.partition(&topic, partition)?;
                    let (e, end) = self.epoch_end(&p, epoch)?;
                    Ok(OpOk::EpochEnd(e, end))
                }
                Op::Info { topic, partition } => {
                    let p = self.partition(&topic, partition)?;
                    Ok(OpOk::Info(p.state()))
                }
                Op::CreateTopic { name, meta } => self.create_topic(name, meta).await,
                Op::DeleteTopic { name } => self.delete_topic(name).await,
                Op::ApplyTopic { name, meta } => {
                    match meta {
                        Some(meta) => {
                            self.topics.borrow_mut().insert(name.clone(), meta.clone());
                            if let Err(e) = self.open_topic(&name, &meta).await {
                                warn!(topic = %name, error = %e.message, "opening a partition failed");
                                return Err(e);
                            }
                        }
                        None => self.drop_topic(&name).await,
                    }
                    Ok(OpOk::Done)
                }
                Op::Metrics => Ok(OpOk::Metrics(self.samples())),
                Op::ListGroups => Ok(OpOk::Groups(
                    self.groups.all().iter().map(|g| g.summary()).collect(),
                )),
                Op::Group { req, host } => self.group_request(req, host).await.map(OpOk::Response),
            }
        })
    }

    async fn group_request(
        self: &Rc<Self>,
        req: levee_schemas::proto::Request,
        host: String,
    ) -> Result<levee_schemas::proto::Response, OpError> {
        use levee_schemas::proto::{GroupResult, OffsetsResponse, Request, Response};
        let ok = |group: String| {
            Response::GroupResult(Box::new(GroupResult {
                group: Some(group),
                error: ErrorCode::None,
                message: None,
            }))
        };
        let unknown = |g: &str| {
            OpError::new(
                ErrorCode::UnknownGroup,
                format!("group `{g}` does not exist"),
            )
        };
        match req {
            Request::JoinGroup(j) => {
                let g = self.groups.open(&j.group).await?;
                let r = g.join(self, &self.groups, *j, host).await?;
                Ok(Response::JoinGroupResponse(Box::new(r)))
            }
            Request::Heartbeat(h) => {
                let g = self.groups.get(&h.group).ok_or_else(|| unknown(&h.group))?;
                g.heartbeat(&h.member_id, h.generation)?;
                Ok(ok(h.group))
            }
            Request::LeaveGroup(l) => {
                let g = self.groups.get(&l.group).ok_or_else(|| unknown(&l.group))?;
                g.leave(&l.member_id)?;
                Ok(ok(l.group))
            }
            Request::CommitOffsets(c) => {
                let g = self.groups.open(&c.group).await?;
                Ok(Response::OffsetsResponse(Box::new(
                    g.commit(self, *c).await?,
                )))
            }
            Request::FetchOffsets(f) => {
                crate::groups::validate_group_name(&f.group)?;
                let offsets = match self.groups.get(&f.group) {
                    Some(g) => g.offsets(f.partitions.as_deref()),
                    None => Vec::new(),
                };
                Ok(Response::OffsetsResponse(Box::new(OffsetsResponse {
                    group: Some(f.group),
                    error: ErrorCode::None,
                    message: None,
                    offsets: Some(offsets),
                    failed: None,
                })))
            }
            Request::DescribeGroup(d) => {
                let g = self.groups.get(&d.group).ok_or_else(|| unknown(&d.group))?;
                Ok(Response::GroupDescription(Box::new(g.describe())))
            }
            Request::DeleteGroup(d) => {
                self.groups.delete(&d.group).await?;
                Ok(ok(d.group))
            }
            _ => Err(OpError::new(
                ErrorCode::InvalidRequest,
                "not a consumer-group request",
            )),
        }
    }

    async fn create_topic(self: Rc<Self>, name: String, meta: TopicMeta) -> OpResult {
        let _l = self
            .admin_lock
            .acquire_permit(1)
            .await
            .map_err(|_| OpError::new(ErrorCode::ShuttingDown, "shutting down"))?;
        topics::validate_name(&name).map_err(|m| OpError::new(ErrorCode::InvalidTopicName, m))?;
        if meta.partitions == 0 || meta.partitions > 100_000 {
            return Err(OpError::new(
                ErrorCode::InvalidConfig,
                format!("partitions must be 1 to 100000, not {}", meta.partitions),
            ));
        }
        if meta.replication_factor != 1 {
            return Err(OpError::new(
                ErrorCode::InvalidConfig,
                format!(
                    "replication factor {} needs a cluster; a single node supports 1",
                    meta.replication_factor
                ),
            ));
        }
        if !meta.fsync.is_empty() {
            parse_fsync(&meta.fsync).map_err(|m| OpError::new(ErrorCode::InvalidConfig, m))?;
        }
        if meta.segment_bytes >= 0 && !(4096..=(u32::MAX as i64)).contains(&meta.segment_bytes) {
            return Err(OpError::new(
                ErrorCode::InvalidConfig,
                "segment_bytes must be between 4096 and 4 GiB",
            ));
        }
        if self.topics.borrow().contains_key(&name) {
            return Err(OpError::new(
                ErrorCode::TopicAlreadyExists,
                format!("topic `{name}` already exists"),
            ));
        }
        let mut all = self.topics.borrow().clone();
        all.insert(name.clone(), meta.clone());
        topics::store(&self.cfg.data_dir, &all).map_err(|e| {
            OpError::new(
                ErrorCode::StorageError,
                format!("writing topic metadata: {e}"),
            )
        })?;
        let res = self.broadcast(&name, Some(meta)).await;
        info!(topic = %name, "created topic");
        res
    }

    async fn delete_topic(self: Rc<Self>, name: String) -> OpResult {
        let _l = self
            .admin_lock
            .acquire_permit(1)
            .await
            .map_err(|_| OpError::new(ErrorCode::ShuttingDown, "shutting down"))?;
        if !self.topics.borrow().contains_key(&name) {
            return Err(OpError::new(
                ErrorCode::UnknownTopicOrPartition,
                format!("topic `{name}` does not exist"),
            ));
        }
        let mut all = self.topics.borrow().clone();
        all.remove(&name);
        topics::store(&self.cfg.data_dir, &all).map_err(|e| {
            OpError::new(
                ErrorCode::StorageError,
                format!("writing topic metadata: {e}"),
            )
        })?;
        let res = self.broadcast(&name, None).await;
        info!(topic = %name, "deleted topic");
        res
    }

    async fn broadcast(self: &Rc<Self>, name: &str, meta: Option<TopicMeta>) -> OpResult {
        let tasks: Vec<_> = (0..self.nshards)
            .map(|s| {
                let op = Op::ApplyTopic {
                    name: name.to_string(),
                    meta: meta.clone(),
                };
                glommio::spawn_local(self.call(s, op))
            })
            .collect();
        let mut first_err = None;
        for t in tasks {
            if let Err(e) = t.await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(OpOk::Done), Err)
    }

    pub async fn drop_topic(&self, name: &str) {
        self.topics.borrow_mut().remove(name);
        let gone: Vec<Rc<Partition>> = {
            let mut parts = self.parts.borrow_mut();
            let keys: Vec<_> = parts.keys().filter(|(t, _)| t == name).cloned().collect();
            keys.iter().filter_map(|k| parts.remove(k)).collect()
        };
        for p in gone {
            let _ = p.log.close().await;
            let dir = topics::partition_dir(&self.cfg.data_dir, &p.topic, p.partition);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                warn!(dir = %dir.display(), error = %e, "removing a deleted partition's directory failed");
            }
        }
    }

    fn samples(&self) -> Vec<Sample> {
        let shard = format!("shard=\"{}\"", self.id);
        let mut out = Vec::new();
        let v = |family: &'static str, labels: &str, value: f64| Sample::Value {
            family,
            labels: labels.to_string(),
            value,
        };
        for p in self.parts.borrow().values() {
            let l = format!(
                "topic=\"{}\",partition=\"{}\"",
                label(&p.topic),
                p.partition
            );
            let st = p.state();
            out.push(v(
                "levee_partition_bytes_in_total",
                &l,
                p.bytes_in.get() as f64,
            ));
            out.push(v(
                "levee_partition_messages_in_total",
                &l,
                p.msgs_in.get() as f64,
            ));
            out.push(v(
                "levee_partition_bytes_out_total",
                &l,
                p.bytes_out.get() as f64,
            ));
            out.push(v(
                "levee_partition_messages_out_total",
                &l,
                p.msgs_out.get() as f64,
            ));
            out.push(v("levee_partition_log_end_offset", &l, st.log_end as f64));
            out.push(v(
                "levee_partition_log_start_offset",
                &l,
                st.log_start as f64,
            ));
            out.push(v("levee_partition_size_bytes", &l, st.size_bytes as f64));
            out.push(v("levee_partition_backlog_bytes", &l, p.backlog() as f64));
        }
        let m = &self.metrics;
        out.push(Sample::Histogram {
            family: "levee_produce_latency_seconds",
            labels: shard.clone(),
            h: m.produce_latency.snapshot(),
        });
        out.push(Sample::Histogram {
            family: "levee_fetch_latency_seconds",
            labels: shard.clone(),
            h: m.fetch_latency.snapshot(),
        });
        let used = self.inflight_limit - self.inflight.available().min(self.inflight_limit);
        out.push(v("levee_shard_inflight_bytes", &shard, used as f64));
        out.push(v(
            "levee_shard_inflight_limit_bytes",
            &shard,
            self.inflight_limit as f64,
        ));
        let busy = glommio::executor().executor_stats().total_runtime();
        out.push(v(
            "levee_shard_busy_seconds_total",
            &shard,
            busy.as_secs_f64(),
        ));
        out.push(v(
            "levee_shard_connections",
            &shard,
            m.connections.get() as f64,
        ));
        out.push(v(
            "levee_shard_requests_total",
            &format!("{shard},outcome=\"ok\""),
            m.requests_ok.get() as f64,
        ));
        out.push(v(
            "levee_shard_requests_total",
            &format!("{shard},outcome=\"error\""),
            m.errors.get() as f64,
        ));
        out.push(v("levee_shard_errors_total", &shard, m.errors.get() as f64));
        out.push(v(
            "levee_shard_forwarded_total",
            &shard,
            m.forwarded.get() as f64,
        ));
        out
    }
}

/// Splits `data` into whole batches, checks the backlog bound, appends each
/// batch, and for acks=all waits until the last one is durable.
async fn produce(
    shard: &Shard,
    p: &Partition,
    acks: i8,
    timeout: Duration,
    data: Vec<u8>,
) -> OpResult {
    p.check_leader()?;
    let (clustered, epoch) = {
        let r = p.repl.borrow();
        if r.role == crate::replication::Role::Leader && acks == -1 {
            let isr = r.isr.len();
            if isr < r.min_insync {
                return Err(OpError::new(
                    ErrorCode::NotEnoughReplicas,
                    format!(
                        "partition {} of `{}` has {isr} in-sync replicas {:?} of {}; acks=all needs {} (min_insync_replicas). Bring the other replicas back, or use acks=1",
                        p.partition,
                        p.topic,
                        r.isr,
                        r.replicas.len(),
                        r.min_insync
                    ),
                ));
            }
        }
        (r.role == crate::replication::Role::Leader, r.epoch)
    };
    let batch_epoch = crate::replication::batch_epoch(epoch);
    let mut bounds = Vec::new();
    let mut pos = 0usize;
    let mut msgs = 0u64;
    while pos < data.len() {
        let rest = &data[pos..];
        let h = BatchHeader::parse(rest).map_err(|e| {
            OpError::new(
                ErrorCode::CorruptBatch,
                format!("record batch at byte {pos}: {e}"),
            )
        })?;
        let len = h.len();
        if len < HEADER_LEN || len > rest.len() {
            return Err(OpError::new(
                ErrorCode::CorruptBatch,
                format!(
                    "record batch at byte {pos} declares {len} bytes but {} remain",
                    rest.len()
                ),
            ));
        }
        msgs += u64::from(h.record_count());
        bounds.push(pos..pos + len);
        pos += len;
    }
    if bounds.is_empty() {
        return Err(OpError::new(
            ErrorCode::InvalidRequest,
            "produce carries no record batch",
        ));
    }
    if let Some(max) = p.max_backlog {
        if p.backlog() + data.len() as u64 > max {
            return Err(OpError::new(
                ErrorCode::BacklogFull,
                format!(
                    "partition {} of `{}` has a backlog of {} bytes, its max_backlog_bytes is {max}: consumers must catch up before more is accepted",
                    p.partition, p.topic, p.backlog()
                ),
            ));
        }
    }
    let total = data.len() as u64;
    let mut first = None;
    let mut last = 0;
    let single = bounds.len() == 1;
    let mut data = Some(data);
    for r in bounds {
        let batch = if single {
            data.take().unwrap_or_default()
        } else {
            data.as_ref().map(|d| d[r].to_vec()).unwrap_or_default()
        };
        // Leadership may have moved while an earlier batch was appended.
        if clustered
            && (p.role() != crate::replication::Role::Leader || p.repl.borrow().epoch != epoch)
        {
            p.check_leader()?;
        }
        let info = p
            .log
            .append_with_epoch(batch, batch_epoch)
            .await
            .map_err(OpError::from_log)?;
        first.get_or_insert(info.base_offset);
        last = info.last_offset;
        p.appended.notify();
    }
    if clustered {
        p.recompute_hw(u64::from(shard.cfg.node_id));
    }
    p.bytes_in.set(p.bytes_in.get() + total);
    p.msgs_in.set(p.msgs_in.get() + msgs);
    p.produced.set(p.produced.get() + total);
    if acks == -1 {
        let durable =
            futures_lite::future::or(async { Some(p.log.wait_durable(last).await) }, async {
                glommio::timer::sleep(timeout).await;
                None
            })
            .await;
        match durable {
            Some(r) => r.map_err(OpError::from_log)?,
            None => {
                return Err(OpError::new(
                    ErrorCode::RequestTimedOut,
                    format!(
                        "the batch was appended but not flushed within {} ms",
                        timeout.as_millis()
                    ),
                ))
            }
        }
        if clustered {
            crate::replication::wait_committed(p, epoch, last, timeout).await?;
        }
    }
    Ok(OpOk::Produced {
        base: first.unwrap_or(0),
        last,
        log_start: p.log.log_start_offset(),
    })
}
