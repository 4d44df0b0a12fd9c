//! The coordinator: the Raft loop, the TCP transport, the client RPC server
//! and the controller, all as tasks on the current glommio executor.
//!
//! Storage I/O is blocking `std::fs` on this thread (see [`crate::storage`]):
//! the coordinator shard is not on the data path.

use crate::config::CoordinatorConfig;
use crate::error::{CoordError, StartError};
use crate::state::{controller_actions, Command, Metadata, TopicConfig};
use crate::storage::DiskStorage;
use crate::wire::{self, Applied, PeerStatus, Request, Response, Role, Status};
use futures_channel::oneshot;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use levee_core::LocalEvent;
use protobuf::Message as PbMessage;
use raft::eraftpb::{EntryType, Message, MessageType};
use raft::{RawNode, StateRole, Storage};
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// Inbound Raft messages queued for the Raft loop before new ones are
/// dropped (Raft retransmits).
const INBOUND_QUEUE: usize = 4096;

/// What a committed log entry carries: the command plus who proposed it, so
/// the proposer can answer its caller when it applies.
#[derive(Serialize, Deserialize)]
struct Envelope {
    origin: u64,
    nonce: u64,
    seq: u64,
    command: Command,
}

enum Event {
    Raft(Box<Message>),
    Propose {
        command: Command,
        reply: Option<oneshot::Sender<Result<Applied, CoordError>>>,
    },
    CreateTopic {
        name: String,
        config: TopicConfig,
        assignment: Vec<Vec<u64>>,
        reply: oneshot::Sender<Result<Applied, CoordError>>,
    },
    AddPartitions {
        name: String,
        count: u32,
        assignment: Vec<Vec<u64>>,
        reply: oneshot::Sender<Result<Applied, CoordError>>,
    },
    Heartbeat {
        node_id: u64,
        reply: oneshot::Sender<Result<(), CoordError>>,
    },
}

struct Peer {
    id: u64,
    addr: SocketAddr,
    queue: RefCell<VecDeque<Vec<u8>>>,
    queued: LocalEvent,
    connected: Cell<bool>,
    last_heard: Cell<Option<Instant>>,
}

struct Inner {
    cfg: CoordinatorConfig,
    addr: SocketAddr,
    peers: BTreeMap<u64, Rc<Peer>>,
    events: RefCell<VecDeque<Event>>,
    event_notify: LocalEvent,
    metadata: RefCell<Rc<Metadata>>,
    metadata_notify: LocalEvent,
    status: RefCell<Status>,
    stopped: Cell<bool>,
    stop_notify: LocalEvent,
    loop_done: LocalEvent,
    loop_running: Cell<bool>,
    /// Connections accepted by the listener.
    accepted: Cell<u64>,
}

/// Entry point: see [`Coordinator::start`].
pub struct Coordinator;

/// A running coordinator. Cheap to clone; lives on the executor that
/// started it (it is `!Send`).
#[derive(Clone)]
pub struct CoordinatorHandle {
    inner: Rc<Inner>,
}

/// Forwards raft's slog records to `tracing`.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, r: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        match r.level() {
            slog::Level::Critical | slog::Level::Error => {
                error!(target: "raft", "{}", r.msg())
            }
            slog::Level::Warning => warn!(target: "raft", "{}", r.msg()),
            slog::Level::Info => info!(target: "raft", "{}", r.msg()),
            _ => debug!(target: "raft", "{}", r.msg()),
        }
        Ok(())
    }
}

/// Runs `fut` until it finishes or the coordinator stops.
async fn until_stopped<F: std::future::Future<Output = ()>>(inner: &Inner, fut: F) {
    let seen = inner.stop_notify.generation();
    if inner.stopped.get() {
        return;
    }
    futures_lite::future::or(fut, inner.stop_notify.wait(seen)).await
}

impl Coordinator {
    /// Opens the storage in `<data_dir>/coordinator/`, binds the listener
    /// and spawns the coordinator's tasks on the current glommio executor.
    /// Must be called from inside a glommio executor.
    pub async fn start(cfg: CoordinatorConfig) -> Result<CoordinatorHandle, StartError> {
        cfg.validate().map_err(StartError::Config)?;
        let addr = cfg
            .listen_addr()
            .ok_or_else(|| StartError::Config("no listen address".into()))?;
        let dir = cfg.data_dir.join("coordinator");
        let storage = DiskStorage::open(&dir, cfg.node_id, &cfg.voter_ids())?;
        if storage.truncated_bytes > 0 {
            warn!(
                bytes = storage.truncated_bytes,
                "coordinator log: torn tail cut off"
            );
        }
        let metadata: Metadata = match storage.last_snapshot() {
            Some(s) => serde_json::from_slice(&s.data).map_err(|e| {
                StartError::Storage(crate::StorageError::Corrupt {
                    path: dir.clone(),
                    reason: format!("snapshot state does not decode: {e}"),
                })
            })?,
            None => Metadata::default(),
        };
        let raft_cfg = raft::Config {
            id: cfg.node_id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied: storage.snapshot_index(),
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        raft_cfg
            .validate()
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let logger = slog::Logger::root(slog::Fuse(TracingDrain), slog::o!());
        let node = RawNode::new(&raft_cfg, storage, &logger)
            .map_err(|e| StartError::Raft(e.to_string()))?;
        // glommio listens with SO_REUSEPORT, which would let another
        // process listening the same way share (and split) this port.
        if crate::someone_listens(addr) {
            return Err(StartError::Listen {
                addr: addr.to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another process listens there (another broker or coordinator?)",
                ),
            });
        }
        let listener = TcpListener::bind(addr).map_err(|e| StartError::Listen {
            addr: addr.to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let addr = listener.local_addr().unwrap_or(addr);
        let peers: BTreeMap<u64, Rc<Peer>> = cfg
            .coordinators
            .iter()
            .filter(|p| p.id != cfg.node_id)
            .map(|p| {
                (
                    p.id,
                    Rc::new(Peer {
                        id: p.id,
                        addr: p.addr,
                        queue: RefCell::new(VecDeque::new()),
                        queued: LocalEvent::default(),
                        connected: Cell::new(false),
                        last_heard: Cell::new(None),
                    }),
                )
            })
            .collect();
        let status = Status {
            node_id: cfg.node_id,
            addr: addr.to_string(),
            role: Role::Follower,
            term: 0,
            leader_id: None,
            commit_index: 0,
            applied_index: 0,
            metadata_version: metadata.version,
            reachable: 1,
            total: cfg.coordinators.len(),
            peers: Vec::new(),
            connections_accepted: 0,
        };
        let inner = Rc::new(Inner {
            cfg,
            addr,
            peers,
            events: RefCell::new(VecDeque::new()),
            event_notify: LocalEvent::default(),
            metadata: RefCell::new(Rc::new(metadata.clone())),
            metadata_notify: LocalEvent::default(),
            status: RefCell::new(status),
            stopped: Cell::new(false),
            stop_notify: LocalEvent::default(),
            loop_done: LocalEvent::default(),
            loop_running: Cell::new(true),
            accepted: Cell::new(0),
        });
        info!(
            node = inner.cfg.node_id,
            %addr,
            coordinators = inner.cfg.coordinators.len(),
            "coordinator starting"
        );
        for peer in inner.peers.values() {
            let (i, p) = (inner.clone(), peer.clone());
            glommio::spawn_local(async move {
                let i2 = i.clone();
                until_stopped(&i, peer_sender(i2, p)).await
            })
            .detach();
        }
        {
            let i = inner.clone();
            glommio::spawn_local(async move {
                let i2 = i.clone();
                until_stopped(&i, accept_loop(i2, listener)).await
            })
            .detach();
        }
        {
            let i = inner.clone();
            glommio::spawn_local(async move {
                let mut rl = RaftLoop::new(i.clone(), node, metadata);
                let i2 = i.clone();
                until_stopped(&i, async move { rl.run().await }).await;
                i2.loop_running.set(false);
                i2.loop_done.notify();
            })
            .detach();
        }
        Ok(CoordinatorHandle { inner })
    }
}

impl CoordinatorHandle {
    pub fn node_id(&self) -> u64 {
        self.inner.cfg.node_id
    }

    /// The address the coordinator listens on (peers and client RPC).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    fn push(&self, ev: Event) -> Result<(), CoordError> {
        if self.inner.stopped.get() {
            return Err(CoordError::Stopped("shut down".into()));
        }
        self.inner.events.borrow_mut().push_back(ev);
        self.inner.event_notify.notify();
        Ok(())
    }

    async fn wait_reply<T>(
        &self,
        rx: oneshot::Receiver<Result<T, CoordError>>,
    ) -> Result<T, CoordError> {
        rx.await
            .unwrap_or_else(|_| Err(CoordError::Stopped("coordinator stopped".into())))
    }

    /// Commits `command` and waits until this node applied it. Works on any
    /// coordinator (a follower forwards the proposal to the leader through
    /// Raft). Fails with `NoQuorum` (or `Timeout` if a quorum seemed
    /// reachable) after `propose_timeout_ms`, and with `Rejected` if the
    /// state machine refused the command.
    pub async fn propose(&self, command: Command) -> Result<Applied, CoordError> {
        let (tx, rx) = oneshot::channel();
        self.push(Event::Propose {
            command,
            reply: Some(tx),
        })?;
        self.wait_reply(rx).await
    }

    /// Creates a topic with a placement computed from the leader's metadata.
    /// Leader only: a follower answers `NotLeader`.
    pub async fn create_topic(
        &self,
        name: &str,
        config: TopicConfig,
    ) -> Result<Applied, CoordError> {
        self.create_topic_placed(name, config, Vec::new()).await
    }

    /// Creates a topic placed as `assignment` says (one replica list per
    /// partition; empty: by the leader). Leader only.
    pub async fn create_topic_placed(
        &self,
        name: &str,
        config: TopicConfig,
        assignment: Vec<Vec<u64>>,
    ) -> Result<Applied, CoordError> {
        let (tx, rx) = oneshot::channel();
        self.push(Event::CreateTopic {
            name: name.to_string(),
            config,
            assignment,
            reply: tx,
        })?;
        self.wait_reply(rx).await
    }

    /// Grows topic `name` to `count` partitions, placed by `assignment` (one
    /// replica list per new partition) or, when it is empty, by the leader.
    /// Leader only: a follower answers `NotLeader`.
    pub async fn add_partitions(
        &self,
        name: &str,
        count: u32,
        assignment: Vec<Vec<u64>>,
    ) -> Result<Applied, CoordError> {
        let (tx, rx) = oneshot::channel();
        self.push(Event::AddPartitions {
            name: name.to_string(),
            count,
            assignment,
            reply: tx,
        })?;
        self.wait_reply(rx).await
    }

    /// Renews broker `node_id`'s lease. A follower records it too, but
    /// answers `NotLeader`. A broker that was down is brought back up (`BrokerUp`).
    pub async fn heartbeat(&self, node_id: u64) -> Result<(), CoordError> {
        let (tx, rx) = oneshot::channel();
        self.push(Event::Heartbeat { node_id, reply: tx })?;
        self.wait_reply(rx).await
    }

    /// The metadata this node has applied (cheap: a shared snapshot).
    pub fn metadata(&self) -> Rc<Metadata> {
        self.inner.metadata.borrow().clone()
    }

    /// Waits until the applied metadata's version is greater than
    /// `version`, then returns it.
    pub async fn changed(&self, version: u64) -> Rc<Metadata> {
        loop {
            let seen = self.inner.metadata_notify.generation();
            let md = self.metadata();
            if md.version > version || self.inner.stopped.get() {
                return md;
            }
            futures_lite::future::or(
                self.inner.metadata_notify.wait(seen),
                self.inner
                    .stop_notify
                    .wait(self.inner.stop_notify.generation()),
            )
            .await;
        }
    }

    /// Raft role, term, leader, indexes and peer connectivity.
    pub fn status(&self) -> Status {
        let mut st = self.inner.status.borrow().clone();
        st.connections_accepted = self.inner.accepted.get();
        st
    }

    pub fn is_leader(&self) -> bool {
        self.inner.status.borrow().role == Role::Leader
    }

    /// Stops every task of this coordinator (listener, connections, Raft
    /// loop) and waits for the Raft loop to finish. Everything acknowledged
    /// is already on disk.
    pub async fn shutdown(&self) {
        if !self.inner.stopped.replace(true) {
            info!(node = self.inner.cfg.node_id, "coordinator stopping");
        }
        let seen = self.inner.loop_done.generation();
        self.inner.stop_notify.notify();
        if self.inner.loop_running.get() {
            self.inner.loop_done.wait(seen).await;
        }
    }
}

// ---------------------------------------------------------------- transport

/// Dials one peer and writes its queued frames; reconnects with backoff.
async fn peer_sender(inner: Rc<Inner>, peer: Rc<Peer>) {
    let mut backoff = Duration::from_millis(20);
    loop {
        match TcpStream::connect_timeout(peer.addr, Duration::from_secs(1)).await {
            Ok(mut s) => {
                let _ = s.set_nodelay(true);
                debug!(
                    node = inner.cfg.node_id,
                    peer = peer.id,
                    "connected to peer"
                );
                peer.connected.set(true);
                backoff = Duration::from_millis(20);
                loop {
                    let seen = peer.queued.generation();
                    let batch: Vec<Vec<u8>> = peer.queue.borrow_mut().drain(..).collect();
                    if batch.is_empty() {
                        peer.queued.wait(seen).await;
                        continue;
                    }
                    let mut buf = Vec::with_capacity(batch.iter().map(|b| b.len()).sum());
                    for b in batch {
                        buf.extend_from_slice(&b);
                    }
                    if let Err(e) = s.write_all(&buf).await {
                        debug!(peer = peer.id, "peer connection lost: {e}");
                        break;
                    }
                }
                peer.connected.set(false);
            }
            Err(e) => {
                peer.connected.set(false);
                debug!(peer = peer.id, "cannot connect to peer: {e}");
                // Stale messages are useless after a long outage.
                peer.queue.borrow_mut().clear();
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
    }
}

async fn accept_loop(inner: Rc<Inner>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(s) => {
                inner.accepted.set(inner.accepted.get() + 1);
                let _ = s.set_nodelay(true);
                let i = inner.clone();
                glommio::spawn_local(async move {
                    let i2 = i.clone();
                    until_stopped(&i, serve_conn(i2, s)).await
                })
                .detach();
            }
            Err(e) => {
                warn!("coordinator accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Reads frames from one connection, one after the other (a client may
/// send many requests on one connection; each is answered in order).
/// Malformed input closes it. A frame's length is checked against its tag
/// before its body is read, and the body is read as it arrives (see
/// [`wire::read_chunked_async`]): a peer declaring a large frame does not
/// make the coordinator allocate it up front.
async fn serve_conn(inner: Rc<Inner>, mut s: TcpStream) {
    loop {
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).await.is_err() {
            return;
        }
        let declared = u32::from_le_bytes(len);
        let Some(len) = wire::check_len(declared) else {
            warn!(
                len = declared,
                "coordinator connection sent a bad frame length; closing it"
            );
            return;
        };
        let mut tag = [0u8; 1];
        if s.read_exact(&mut tag).await.is_err() {
            return;
        }
        let tag = tag[0];
        // A coordinator is sent Raft messages and client requests only.
        let max = match (tag, wire::max_payload(tag)) {
            (wire::TAG_RAFT | wire::TAG_REQUEST, Some(max)) => max,
            _ => {
                warn!(tag, "unknown frame tag; closing the connection");
                return;
            }
        };
        if len > max {
            warn!(
                tag,
                len,
                max,
                "coordinator connection declared a frame larger than its tag allows; \
                 closing it without reading the frame"
            );
            return;
        }
        let mut body = Vec::new();
        if wire::read_chunked_async(&mut s, len - 1, &mut body)
            .await
            .is_err()
        {
            return;
        }
        match tag {
            wire::TAG_RAFT => {
                let Ok(m) = Message::parse_from_bytes(&body) else {
                    warn!("undecodable raft message; closing the connection");
                    return;
                };
                let Some(peer) = inner.peers.get(&m.from) else {
                    warn!(from = m.from, "raft message from an unknown node; closing");
                    return;
                };
                if m.to != inner.cfg.node_id {
                    warn!(to = m.to, "raft message for another node; closing");
                    return;
                }
                peer.last_heard.set(Some(Instant::now()));
                let mut q = inner.events.borrow_mut();
                if q.len() < INBOUND_QUEUE {
                    q.push_back(Event::Raft(Box::new(m)));
                    drop(q);
                    inner.event_notify.notify();
                }
            }
            wire::TAG_REQUEST => {
                let resp = match serde_json::from_slice::<Request>(&body) {
                    Ok(req) => handle_request(&inner, req).await,
                    Err(e) => {
                        warn!("undecodable client request: {e}; closing");
                        return;
                    }
                };
                let body = match serde_json::to_vec(&resp) {
                    Ok(b) => b,
                    Err(e) => {
                        error!("cannot encode a response: {e}");
                        return;
                    }
                };
                if s.write_all(&wire::frame(wire::TAG_RESPONSE, &body))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            tag => {
                warn!(tag, "unknown frame tag; closing the connection");
                return;
            }
        }
    }
}

async fn handle_request(inner: &Rc<Inner>, req: Request) -> Response {
    let h = CoordinatorHandle {
        inner: inner.clone(),
    };
    match req {
        Request::Status => Response::Status(h.status()),
        Request::Metadata => Response::Metadata((*h.metadata()).clone()),
        Request::WatchMetadata { after, wait_ms } => {
            let wait = Duration::from_millis(wait_ms.min(60_000));
            let md = futures_lite::future::or(h.changed(after), async {
                glommio::timer::sleep(wait).await;
                h.metadata()
            })
            .await;
            Response::Metadata((*md).clone())
        }
        Request::Propose { command } => match h.propose(command).await {
            Ok(a) => Response::Applied(a),
            Err(e) => Response::Error(e),
        },
        Request::CreateTopic {
            name,
            config,
            assignment,
        } => match h.create_topic_placed(&name, config, assignment).await {
            Ok(a) => Response::Applied(a),
            Err(e) => Response::Error(e),
        },
        Request::AddPartitions {
            name,
            count,
            assignment,
        } => match h.add_partitions(&name, count, assignment).await {
            Ok(a) => Response::Applied(a),
            Err(e) => Response::Error(e),
        },
        Request::Heartbeat { node_id } => match h.heartbeat(node_id).await {
            Ok(()) => Response::HeartbeatOk,
            Err(e) => Response::Error(e),
        },
    }
}

// ---------------------------------------------------------------- raft loop

struct Pending {
    reply: Option<oneshot::Sender<Result<Applied, CoordError>>>,
    deadline: Instant,
    /// Encoded envelope while not yet accepted by Raft (no leader known).
    unsubmitted: Option<Vec<u8>>,
}

struct RaftLoop {
    inner: Rc<Inner>,
    node: RawNode<DiskStorage>,
    sm: Metadata,
    nonce: u64,
    seq: u64,
    pending: BTreeMap<u64, Pending>,
    /// Broker leases: last heartbeat per broker (a follower records them
    /// too, for when it becomes leader).
    leases: HashMap<u64, Instant>,
    /// Controller commands in flight, to avoid proposing them again.
    in_flight: HashMap<String, Instant>,
    was_leader: bool,
    /// A ready a full disk kept from being written: its number and the
    /// messages to send once it is.
    unsynced: Option<(u64, Vec<raft::eraftpb::Message>)>,
    /// Since when writes of the log have found the disk full.
    storage_full_since: Option<Instant>,
}

impl RaftLoop {
    fn new(inner: Rc<Inner>, node: RawNode<DiskStorage>, sm: Metadata) -> Self {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        RaftLoop {
            inner,
            node,
            sm,
            nonce,
            seq: 0,
            pending: BTreeMap::new(),
            leases: HashMap::new(),
            in_flight: HashMap::new(),
            was_leader: false,
            unsynced: None,
            storage_full_since: None,
        }
    }

    fn tick_interval(&self) -> Duration {
        Duration::from_millis(self.inner.cfg.tick_ms)
    }

    async fn run(&mut self) {
        let mut next_tick = Instant::now() + self.tick_interval();
        self.publish_status();
        loop {
            let seen = self.inner.event_notify.generation();
            let events: Vec<Event> = self.inner.events.borrow_mut().drain(..).collect();
            for ev in events {
                self.handle_event(ev);
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + self.tick_interval();
                self.node.tick();
                self.on_tick(now);
            }
            if let Err(e) = self.handle_ready() {
                error!(
                    node = self.inner.cfg.node_id,
                    "coordinator storage failed: {e}; stopping"
                );
                self.fail_all(CoordError::Stopped(format!("storage failure: {e}")));
                self.inner.stopped.set(true);
                self.inner.stop_notify.notify();
                return;
            }
            self.publish_status();
            if !self.inner.events.borrow().is_empty() {
                continue;
            }
            let wait = next_tick.saturating_duration_since(Instant::now());
            futures_lite::future::or(
                self.inner.event_notify.wait(seen),
                glommio::timer::sleep(wait),
            )
            .await;
        }
    }

    fn leader_hint(&self) -> CoordError {
        let id = self.node.raft.leader_id;
        let (leader_id, leader_addr) = if id == raft::INVALID_ID {
            (None, None)
        } else {
            let addr = self
                .inner
                .cfg
                .coordinators
                .iter()
                .find(|p| p.id == id)
                .map(|p| p.addr.to_string());
            (Some(id), addr)
        };
        CoordError::NotLeader {
            leader_id,
            leader_addr,
        }
    }

    fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    fn handle_event(&mut self, ev: Event) {
        match ev {
            Event::Raft(m) => {
                if let Err(e) = self.node.step(*m) {
                    debug!("raft step: {e}");
                }
            }
            Event::Propose { command, reply } => {
                // A registration is a sign of life: a broker that restarted
                // within its lease must not be declared down right after it
                // registered because its lease still dates from before.
                if let Command::RegisterBroker { node_id, .. } = &command {
                    self.leases.insert(*node_id, Instant::now());
                }
                self.propose(command, reply)
            }
            Event::CreateTopic {
                name,
                mut config,
                assignment,
                reply,
            } => {
                if config.id.is_empty() {
                    config.id = crate::state::new_topic_id();
                }
                if !self.is_leader() {
                    let _ = reply.send(Err(self.leader_hint()));
                    return;
                }
                if let Err(e) = crate::state::validate_topic_name(&name) {
                    let _ = reply.send(Err(CoordError::Invalid(e)));
                    return;
                }
                if self.sm.topics.contains_key(&name) {
                    let _ = reply.send(Err(CoordError::Rejected(format!(
                        "topic `{name}` already exists"
                    ))));
                    return;
                }
                let placed = if assignment.is_empty() {
                    self.sm.place(&config)
                } else {
                    Ok(assignment)
                };
                match placed {
                    Ok(replicas) => self.propose(
                        Command::CreateTopic {
                            name,
                            config,
                            replicas,
                        },
                        Some(reply),
                    ),
                    Err(e) => {
                        let _ = reply.send(Err(CoordError::Invalid(e)));
                    }
                }
            }
            Event::AddPartitions {
                name,
                count,
                assignment,
                reply,
            } => {
                if !self.is_leader() {
                    let _ = reply.send(Err(self.leader_hint()));
                    return;
                }
                let placed = if assignment.is_empty() {
                    self.sm.place_more(&name, count)
                } else {
                    match self.sm.topics.get(&name) {
                        None => Err(format!("topic `{name}` does not exist")),
                        Some(t) => {
                            let first = t.partitions.len() as u32;
                            if u64::from(first) + assignment.len() as u64 != u64::from(count) {
                                Err(format!(
                                    "topic `{name}` has {first} partitions: growing it to {count} needs {} replica lists, {} were given",
                                    i64::from(count) - i64::from(first),
                                    assignment.len()
                                ))
                            } else {
                                Ok((first, assignment))
                            }
                        }
                    }
                };
                match placed {
                    Ok((first, replicas)) => self.propose(
                        Command::AddPartitions {
                            name,
                            first,
                            replicas,
                        },
                        Some(reply),
                    ),
                    Err(e) => {
                        let _ = reply.send(Err(CoordError::Invalid(e)));
                    }
                }
            }
            Event::Heartbeat { node_id, reply } => {
                if !self.is_leader() {
                    // Kept so that, should this node become leader, it
                    // knows which brokers were alive.
                    self.leases.insert(node_id, Instant::now());
                    let _ = reply.send(Err(self.leader_hint()));
                    return;
                }
                let Some(b) = self.sm.brokers.get(&node_id) else {
                    let _ = reply.send(Err(CoordError::Invalid(format!(
                        "broker {node_id} is not registered; register it first"
                    ))));
                    return;
                };
                let alive = b.alive;
                self.leases.insert(node_id, Instant::now());
                if !alive {
                    self.controller_propose(Command::BrokerUp { node_id });
                }
                let _ = reply.send(Ok(()));
            }
        }
    }

    fn propose(
        &mut self,
        command: Command,
        reply: Option<oneshot::Sender<Result<Applied, CoordError>>>,
    ) {
        self.seq += 1;
        let env = Envelope {
            origin: self.inner.cfg.node_id,
            nonce: self.nonce,
            seq: self.seq,
            command,
        };
        let data = match serde_json::to_vec(&env) {
            Ok(d) => d,
            Err(e) => {
                if let Some(r) = reply {
                    let _ = r.send(Err(CoordError::Invalid(e.to_string())));
                }
                return;
            }
        };
        let deadline = Instant::now() + Duration::from_millis(self.inner.cfg.propose_timeout_ms);
        let mut p = Pending {
            reply,
            deadline,
            unsubmitted: Some(data),
        };
        self.submit(&mut p);
        self.pending.insert(self.seq, p);
    }

    /// Hands a proposal to Raft if a leader is known (Raft forwards it from
    /// a follower); otherwise it stays queued and is retried every tick.
    fn submit(&mut self, p: &mut Pending) {
        if self.node.raft.leader_id == raft::INVALID_ID {
            return;
        }
        if let Some(data) = p.unsubmitted.take() {
            if let Err(e) = self.node.propose(vec![], data.clone()) {
                debug!("proposal not accepted yet: {e}");
                p.unsubmitted = Some(data);
            }
        }
    }

    /// Reachable coordinators, this one included: peers we heard from
    /// within two election timeouts, or whose connection is up.
    fn reachable(&self) -> usize {
        let window = Duration::from_millis(
            self.inner.cfg.tick_ms * self.inner.cfg.election_ticks as u64 * 2,
        );
        1 + self
            .inner
            .peers
            .values()
            .filter(|p| {
                p.last_heard.get().is_some_and(|t| t.elapsed() < window)
                    || (p.connected.get() && self.is_leader())
            })
            .count()
    }

    fn timeout_error(&self) -> CoordError {
        let total = self.inner.cfg.coordinators.len();
        let reachable = self.reachable();
        if reachable * 2 <= total {
            CoordError::NoQuorum { reachable, total }
        } else {
            CoordError::Timeout {
                timeout_ms: self.inner.cfg.propose_timeout_ms,
            }
        }
    }

    fn on_tick(&mut self, now: Instant) {
        // Retry proposals that had no leader; expire overdue ones.
        let seqs: Vec<u64> = self.pending.keys().copied().collect();
        for seq in seqs {
            let Some(mut p) = self.pending.remove(&seq) else {
                continue;
            };
            if now >= p.deadline {
                if let Some(r) = p.reply.take() {
                    let _ = r.send(Err(self.timeout_error()));
                }
                continue;
            }
            if p.unsubmitted.is_some() {
                self.submit(&mut p);
            }
            self.pending.insert(seq, p);
        }
        let leader = self.is_leader();
        if leader != self.was_leader {
            self.was_leader = leader;
            self.in_flight.clear();
            if leader {
                // Brokers heartbeat every coordinator. A new leader counts
                // the heartbeats it saw as a follower, but gives every live
                // broker at least half a lease from now (its record may be
                // stale, e.g. after a partition).
                let lease = Duration::from_millis(self.inner.cfg.broker_lease_ms);
                let floor = now.checked_sub(lease / 2).unwrap_or(now);
                for t in self.leases.values_mut() {
                    *t = (*t).max(floor);
                }
                info!(
                    node = self.inner.cfg.node_id,
                    term = self.node.raft.term,
                    "became coordinator leader"
                );
            }
        }
        if leader {
            self.run_controller(now);
        }
    }

    fn controller_propose(&mut self, cmd: Command) {
        let key = format!("{cmd:?}");
        let retry = Duration::from_millis(self.inner.cfg.propose_timeout_ms);
        if self
            .in_flight
            .get(&key)
            .is_some_and(|t| t.elapsed() < retry)
        {
            return;
        }
        self.in_flight.insert(key, Instant::now());
        self.propose(cmd, None);
    }

    /// Leader only: expires leases and repairs partition leadership.
    fn run_controller(&mut self, now: Instant) {
        // Decide only on metadata that includes everything committed before
        // this term (the term's first entry is committed and applied).
        if !self.node.raft.commit_to_current_term()
            || self.node.raft.raft_log.applied < self.node.raft.raft_log.committed
        {
            return;
        }
        let lease = Duration::from_millis(self.inner.cfg.broker_lease_ms);
        let alive: Vec<u64> = self
            .sm
            .brokers
            .values()
            .filter(|b| b.alive)
            .map(|b| b.node_id)
            .collect();
        let mut expired = Vec::new();
        for id in alive {
            // A broker never heard from gets a full lease from now.
            let t = *self.leases.entry(id).or_insert(now);
            if now.duration_since(t) > lease {
                warn!(broker = id, "broker lease expired; declaring it down");
                self.controller_propose(Command::BrokerDown { node_id: id });
                expired.push(id);
            }
        }
        // New leaders are chosen as if those BrokerDowns had applied, and
        // proposed right behind them (they apply in order), which saves a
        // round of the controller in a failover.
        let actions = if expired.is_empty() {
            controller_actions(&self.sm)
        } else {
            let mut projected = self.sm.clone();
            for id in &expired {
                let _ = projected.apply(&Command::BrokerDown { node_id: *id });
            }
            controller_actions(&projected)
        };
        for cmd in actions {
            if let Command::SetLeader {
                topic,
                partition,
                leader: None,
                ..
            } = &cmd
            {
                warn!(
                    %topic,
                    partition,
                    "no live in-sync replica; partition left without a leader (no unclean election)"
                );
            }
            self.controller_propose(cmd);
        }
    }

    fn fail_all(&mut self, e: CoordError) {
        for (_, mut p) in std::mem::take(&mut self.pending) {
            if let Some(r) = p.reply.take() {
                let _ = r.send(Err(e.clone()));
            }
        }
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            let to = m.to;
            let is_snap = m.get_msg_type() == MessageType::MsgSnapshot;
            let Some(peer) = self.inner.peers.get(&to) else {
                continue;
            };
            let body = match m.write_to_bytes() {
                Ok(b) => b,
                Err(e) => {
                    error!("cannot encode a raft message: {e}");
                    continue;
                }
            };
            let mut q = peer.queue.borrow_mut();
            if q.len() >= self.inner.cfg.peer_queue {
                drop(q);
                debug!(peer = to, "peer queue full; dropping a raft message");
                if is_snap {
                    self.node.report_snapshot(to, raft::SnapshotStatus::Failure);
                }
                continue;
            }
            q.push_back(wire::frame(wire::TAG_RAFT, &body));
            drop(q);
            peer.queued.notify();
            if is_snap {
                self.node.report_snapshot(to, raft::SnapshotStatus::Finish);
            }
        }
    }

    fn handle_ready(&mut self) -> Result<(), crate::StorageError> {
        // Records a full disk kept from being written go first; until they
        // are on disk raft hands out no other ready, and the messages that
        // had to wait for them (votes, acknowledgements) wait with them.
        if let Some((number, msgs)) = self.unsynced.take() {
            if let Err(e) = self.sync_storage() {
                if !e.is_out_of_space() {
                    return Err(e);
                }
                self.unsynced = Some((number, msgs));
                return Ok(());
            }
            self.storage_has_room();
            self.send(msgs);
            self.node.on_persist_ready(number);
        }
        if !self.node.has_ready() {
            return Ok(());
        }
        let ready = self.node.ready();
        let (mut ready, mut changed) = self.take_ready(ready)?;
        match self.sync_storage() {
            Ok(()) => {
                self.storage_has_room();
                // The messages that had to wait for the records to be on disk.
                if !ready.persisted_messages().is_empty() {
                    let m = ready.take_persisted_messages();
                    self.send(m);
                }
                let light = self.node.advance(ready);
                changed |= self.finish_ready(light);
            }
            Err(e) if e.is_out_of_space() => {
                // Raft's asynchronous persistence: the ready is handed over
                // now and reported persisted once its records are written.
                let msgs = ready.take_persisted_messages();
                let number = ready.number();
                self.node.advance_append_async(ready);
                self.node.advance_apply();
                self.unsynced = Some((number, msgs));
            }
            Err(e) => return Err(e),
        }
        if changed {
            *self.inner.metadata.borrow_mut() = Rc::new(self.sm.clone());
            self.inner.metadata_notify.notify();
        }
        if self.unsynced.is_some() {
            return Ok(());
        }
        if let Err(e) = self.maybe_compact() {
            if !matches!(e, crate::StorageError::Io { .. }) {
                return Err(e);
            }
            // The log file is as it was (a superset of the snapshot taken
            // in memory): only its compaction waits for the next one.
            warn!(
                node = self.inner.cfg.node_id,
                "coordinator log compaction failed; the log stays uncompacted until the next: {e}"
            );
        }
        Ok(())
    }

    fn storage_has_room(&mut self) {
        if let Some(since) = self.storage_full_since.take() {
            info!(
                node = self.inner.cfg.node_id,
                waited_ms = since.elapsed().as_millis() as u64,
                "coordinator storage: the disk has room again; the coordinator goes on"
            );
        }
    }

    /// Writes the buffered records of a ready. A full disk is reported to
    /// the broker (which gives up its space reserve) and the write is tried
    /// once more; if it still fails, the coordinator waits for space: it
    /// neither votes nor acknowledges until the records are on disk.
    fn sync_storage(&mut self) -> Result<(), crate::StorageError> {
        match self.node.mut_store().sync() {
            Err(e) if e.is_out_of_space() && self.storage_full_since.is_none() => {
                self.storage_full_since = Some(Instant::now());
                warn!(
                    node = self.inner.cfg.node_id,
                    "coordinator storage: the disk is full; the coordinator waits until space is freed: {e}"
                );
                let freed = self
                    .inner
                    .cfg
                    .on_out_of_space
                    .as_ref()
                    .map_or(0, |h| (h.0)("coordinator log"));
                if freed > 0 {
                    self.node.mut_store().sync()
                } else {
                    Err(e)
                }
            }
            other => other,
        }
    }

    /// The first half of a ready: messages, a snapshot, committed entries
    /// applied, entries and hard state buffered (not yet written).
    fn take_ready(
        &mut self,
        mut ready: raft::Ready,
    ) -> Result<(raft::Ready, bool), crate::StorageError> {
        if !ready.messages().is_empty() {
            let m = ready.take_messages();
            self.send(m);
        }
        let mut changed = false;
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            match serde_json::from_slice::<Metadata>(&snap.data) {
                Ok(md) => {
                    info!(
                        node = self.inner.cfg.node_id,
                        index = snap.get_metadata().index,
                        "installing a snapshot from the leader"
                    );
                    self.node.mut_store().apply_snapshot(snap)?;
                    self.sm = md;
                    changed = true;
                }
                Err(e) => {
                    return Err(crate::StorageError::Corrupt {
                        path: self.inner.cfg.data_dir.join("coordinator"),
                        reason: format!("snapshot from the leader does not decode: {e}"),
                    })
                }
            }
        }
        let committed = ready.take_committed_entries();
        changed |= self.apply(committed);
        if !ready.entries().is_empty() {
            let ents = ready.entries().clone();
            self.node.mut_store().append(&ents)?;
        }
        if let Some(hs) = ready.hs() {
            let hs = hs.clone();
            self.node.mut_store().set_hard_state(&hs);
        }
        Ok((ready, changed))
    }

    /// After `advance`: the commit index, messages and entries committed
    /// meanwhile. Whether the state machine changed.
    fn finish_ready(&mut self, mut light: raft::LightReady) -> bool {
        let mut changed = false;
        if let Some(commit) = light.commit_index() {
            // Not fsync'ed on its own: a lost commit index is re-learned
            // from the leader; it goes to disk with the next sync.
            self.node.mut_store().set_commit(commit);
        }
        let m = light.take_messages();
        self.send(m);
        let committed = light.take_committed_entries();
        changed |= self.apply(committed);
        self.node.advance_apply();
        changed
    }

    /// Applies committed entries to the state machine; answers local
    /// proposers. Returns whether anything was applied.
    fn apply(&mut self, entries: Vec<raft::eraftpb::Entry>) -> bool {
        let mut any = false;
        for e in entries {
            any = true;
            self.sm.applied_index = e.index;
            if e.get_entry_type() != EntryType::EntryNormal || e.data.is_empty() {
                if e.get_entry_type() != EntryType::EntryNormal {
                    warn!(index = e.index, "ignoring a membership change entry");
                }
                continue;
            }
            let env = match serde_json::from_slice::<Envelope>(&e.data) {
                Ok(env) => env,
                Err(err) => {
                    error!(index = e.index, "undecodable command in the log: {err}");
                    continue;
                }
            };
            let result = self.sm.apply(&env.command);
            match &result {
                Ok(()) => {
                    debug!(index = e.index, version = self.sm.version, cmd = ?env.command, "applied")
                }
                Err(why) => debug!(index = e.index, "command rejected: {why}"),
            }
            if env.origin == self.inner.cfg.node_id && env.nonce == self.nonce {
                if let Some(mut p) = self.pending.remove(&env.seq) {
                    if let Some(r) = p.reply.take() {
                        let _ = r.send(
                            result
                                .map(|()| Applied {
                                    index: e.index,
                                    version: self.sm.version,
                                })
                                .map_err(CoordError::Rejected),
                        );
                    }
                }
            }
        }
        any
    }

    fn maybe_compact(&mut self) -> Result<(), crate::StorageError> {
        let applied = self.node.raft.raft_log.applied;
        let store = self.node.store();
        if store.entries_len() <= self.inner.cfg.snapshot_entries
            || applied <= store.snapshot_index()
            || applied > store.last_index().unwrap_or(0)
        {
            return Ok(());
        }
        let data = serde_json::to_vec(&self.sm).map_err(|e| crate::StorageError::Corrupt {
            path: self.inner.cfg.data_dir.join("coordinator"),
            reason: format!("cannot encode the state machine: {e}"),
        })?;
        self.node.mut_store().compact(applied, data)?;
        info!(
            node = self.inner.cfg.node_id,
            index = applied,
            "coordinator snapshot taken; log compacted"
        );
        Ok(())
    }

    fn publish_status(&self) {
        let r = &self.node.raft;
        let role = match r.state {
            StateRole::Leader => Role::Leader,
            StateRole::Follower => Role::Follower,
            StateRole::Candidate => Role::Candidate,
            StateRole::PreCandidate => Role::PreCandidate,
        };
        let mut st = self.inner.status.borrow_mut();
        st.role = role;
        st.term = r.term;
        st.leader_id = (r.leader_id != raft::INVALID_ID).then_some(r.leader_id);
        st.commit_index = r.raft_log.committed;
        st.applied_index = r.raft_log.applied;
        st.metadata_version = self.sm.version;
        st.reachable = self.reachable();
        st.peers = self
            .inner
            .peers
            .values()
            .map(|p| PeerStatus {
                id: p.id,
                addr: p.addr.to_string(),
                connected: p.connected.get(),
                last_heard_ms: p.last_heard.get().map(|t| t.elapsed().as_millis() as u64),
            })
            .collect();
    }
}
