//! [`Client`]: a reconnecting handle on a broker with the admin requests and
//! the raw produce and fetch requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use levee_schemas::proto::{
    self, CreateTopic, DeleteRecords, DeleteRecordsPartition, DeleteTopic, DescribeTopic,
    ErrorCode, Fetch, FetchPartition, ListOffsets, ListOffsetsPartition, ListTopics, Metadata,
    Produce, ProducePartition, Request, Response,
};
use levee_schemas::{payload_slice, DEFAULT_MAX_FRAME_BYTES};
use tokio::sync::Mutex;

use crate::connection::{unexpected, Connection, Reply};
use crate::error::{ClientError, Result};

pub use proto::PartitionInfo;

/// How to reach the cluster.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` addresses, tried in order until one answers.
    pub bootstrap: Vec<String>,
    /// Sent in `Hello`; shows up in the broker's logs.
    pub client_id: String,
    /// How long to wait for a response (a fetch adds its `max_wait`, a
    /// produce its broker-side timeout). Also bounds connecting.
    pub request_timeout: Duration,
    /// Largest response frame accepted.
    pub max_frame_bytes: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            bootstrap: vec!["127.0.0.1:9192".to_string()],
            client_id: "levee-client".to_string(),
            request_timeout: Duration::from_secs(30),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES as usize,
        }
    }
}

impl ClientConfig {
    /// A configuration for these bootstrap addresses, defaults otherwise.
    pub fn new<S: Into<String>>(bootstrap: impl IntoIterator<Item = S>) -> ClientConfig {
        ClientConfig {
            bootstrap: bootstrap.into_iter().map(Into::into).collect(),
            ..ClientConfig::default()
        }
    }
}

/// A topic's settings, for creating it and as described by the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSettings {
    /// Number of partitions (at least 1).
    pub partitions: u32,
    /// Replicas per partition.
    pub replication_factor: u16,
    /// Retention by size per partition; `None`: unlimited.
    pub retention_bytes: Option<i64>,
    /// Retention by age in ms; `None`: unlimited.
    pub retention_ms: Option<i64>,
    /// `always`, `never` or `interval:<ms>`; `None`: the broker's default.
    pub fsync: Option<String>,
    /// Produce fails with `BacklogFull` past this many unconsumed bytes; `None`: off.
    pub max_backlog_bytes: Option<i64>,
    /// Segment size; `None`: the broker's default.
    pub segment_bytes: Option<i64>,
    /// The largest record batch producers may write (Kafka's
    /// `max.message.bytes`); `None`: the broker's `log.max_batch_bytes`.
    pub max_message_bytes: Option<i64>,
}

impl Default for TopicSettings {
    fn default() -> Self {
        TopicSettings {
            partitions: 1,
            replication_factor: 1,
            retention_bytes: None,
            retention_ms: None,
            fsync: None,
            max_backlog_bytes: None,
            segment_bytes: None,
            max_message_bytes: None,
        }
    }
}

fn opt(v: i64) -> Option<i64> {
    (v >= 0).then_some(v)
}

impl TopicSettings {
    fn to_proto(&self) -> proto::TopicConfig {
        proto::TopicConfig {
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            retention_bytes: self.retention_bytes.unwrap_or(-1),
            retention_ms: self.retention_ms.unwrap_or(-1),
            fsync: self.fsync.clone(),
            max_backlog_bytes: self.max_backlog_bytes.unwrap_or(-1),
            segment_bytes: self.segment_bytes.unwrap_or(-1),
            max_message_bytes: self.max_message_bytes.unwrap_or(-1),
        }
    }

    fn from_proto(c: &proto::TopicConfig) -> TopicSettings {
        TopicSettings {
            partitions: c.partitions,
            replication_factor: c.replication_factor,
            retention_bytes: opt(c.retention_bytes),
            retention_ms: opt(c.retention_ms),
            fsync: c.fsync.clone().filter(|s| !s.is_empty()),
            max_backlog_bytes: opt(c.max_backlog_bytes),
            segment_bytes: opt(c.segment_bytes),
            max_message_bytes: opt(c.max_message_bytes),
        }
    }
}

/// Changes to a topic's settings ([`Client::alter_topic`]): each `Some`
/// is set; the settings named in `reset` (by their Kafka config names:
/// `retention.ms`, `retention.bytes`, `segment.bytes`, `levee.fsync`,
/// `levee.max.backlog.bytes`) go back to the broker's defaults; the rest
/// keep their values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicChanges {
    /// Retention by size per partition, in bytes.
    pub retention_bytes: Option<i64>,
    /// Retention by age, in ms.
    pub retention_ms: Option<i64>,
    /// Segment size (new segments).
    pub segment_bytes: Option<i64>,
    /// `always`, `never` or `interval:<ms>`.
    pub fsync: Option<String>,
    /// Produce fails with `BacklogFull` past this many unconsumed bytes.
    pub max_backlog_bytes: Option<i64>,
    /// The largest record batch producers may write (`max.message.bytes`).
    pub max_message_bytes: Option<i64>,
    /// Settings to put back to the broker's defaults, by Kafka config name.
    pub reset: Vec<String>,
}

impl TopicChanges {
    /// The changes as (Kafka config name, value; `None`: the default).
    pub fn entries(&self) -> Vec<(String, Option<String>)> {
        let mut out: Vec<(String, Option<String>)> = [
            (
                "retention.bytes",
                self.retention_bytes.map(|v| v.to_string()),
            ),
            ("retention.ms", self.retention_ms.map(|v| v.to_string())),
            ("segment.bytes", self.segment_bytes.map(|v| v.to_string())),
            ("levee.fsync", self.fsync.clone()),
            (
                "levee.max.backlog.bytes",
                self.max_backlog_bytes.map(|v| v.to_string()),
            ),
            (
                "max.message.bytes",
                self.max_message_bytes.map(|v| v.to_string()),
            ),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_string(), Some(v))))
        .collect();
        out.extend(self.reset.iter().map(|k| (k.clone(), None)));
        out
    }

    /// Whether nothing would change.
    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }
}

/// A topic as described by the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// The topic's name.
    pub name: String,
    /// Its settings.
    pub settings: TopicSettings,
    /// Its partitions, ordered by partition number.
    pub partitions: Vec<PartitionInfo>,
    /// Its id (a UUID as text; empty from a broker that has none): a topic
    /// deleted and created again under the same name has a new one.
    pub id: String,
}

impl TopicInfo {
    /// Number of partitions (from the partition list, else the settings).
    pub fn partition_count(&self) -> u32 {
        if self.partitions.is_empty() {
            self.settings.partitions
        } else {
            self.partitions.len() as u32
        }
    }
}

/// The answer to a metadata request.
#[derive(Debug, Clone)]
pub struct ClusterMetadata {
    /// The brokers of the cluster.
    pub brokers: Vec<proto::Broker>,
    /// One entry per topic asked for (every topic if none was named): the
    /// description, or why it could not be described.
    pub topics: Vec<(String, Result<TopicInfo>)>,
}

/// Where to look up an offset with [`Client::list_offsets`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The first offset still stored (log start).
    Earliest,
    /// The offset the next record will get (high watermark).
    Latest,
    /// The first offset whose batch holds records at or after this time (ms).
    Timestamp(i64),
}

impl OffsetSpec {
    fn to_wire(self) -> i64 {
        match self {
            OffsetSpec::Earliest => -2,
            OffsetSpec::Latest => -1,
            OffsetSpec::Timestamp(t) => t,
        }
    }
}

/// One partition's answer to a produce request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducedPartition {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// `ErrorCode::None` on success.
    pub error: ErrorCode,
    /// The broker's message, if any.
    pub message: Option<String>,
    /// Offset of the first record written.
    pub base_offset: u64,
    /// Offset of the last record written.
    pub last_offset: u64,
    /// The partition's log start offset.
    pub log_start_offset: u64,
}

impl ProducedPartition {
    /// `(base_offset, last_offset)`, or the entry's error as a `ClientError`.
    pub fn result(&self) -> Result<(u64, u64)> {
        if self.error == ErrorCode::None {
            Ok((self.base_offset, self.last_offset))
        } else {
            Err(ClientError::from_code(
                self.error,
                self.message.clone(),
                &self.topic,
                Some(self.partition),
            ))
        }
    }
}

/// One partition to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequestPartition {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// First offset wanted.
    pub offset: u64,
    /// At most this many bytes for this partition (at least one batch is returned).
    pub max_bytes: u32,
}

/// One partition's answer to a fetch.
#[derive(Debug, Clone)]
pub struct FetchedPartition {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// `ErrorCode::None` on success.
    pub error: ErrorCode,
    /// The broker's message, if any.
    pub message: Option<String>,
    /// Offset after the last visible record.
    pub high_watermark: u64,
    /// First offset still stored.
    pub log_start_offset: u64,
    /// Stored batches, end to end, exactly as the broker returned them.
    pub batches: Bytes,
    /// Below it no transaction is open (a read_committed fetch stops there).
    pub last_stable_offset: u64,
    /// A read_committed fetch: the aborted transactions overlapping the
    /// batches returned, whose transactional batches a consumer skips.
    pub aborted: Vec<AbortedTxn>,
}

/// A transaction aborted on a partition: the producer's transactional
/// batches from `first_offset` to its abort marker at `last_offset` are
/// not to be read (Kafka's read_committed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: u64,
    pub last_offset: u64,
}

impl AbortedTxn {
    /// Whether a batch (its producer id, first offset, and whether it is
    /// transactional) belongs to this aborted transaction.
    pub fn covers(&self, producer_id: i64, base_offset: u64, transactional: bool) -> bool {
        transactional
            && producer_id == self.producer_id
            && (self.first_offset..=self.last_offset).contains(&base_offset)
    }
}

/// `PartitionInfo::leader` when a partition has no leader right now.
pub const NO_LEADER: u32 = u32::MAX;

/// How long after a metadata refresh another one may start (a burst of
/// NotLeader answers costs one refresh, not one per partition).
const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(20);

/// The routing part of the cluster metadata.
#[derive(Debug, Default)]
struct MetaCache {
    /// node id → `host:port`.
    brokers: HashMap<u32, String>,
    /// (topic, partition) → (leader node id, leader epoch).
    leaders: HashMap<(String, u32), (u32, u64)>,
    /// Set when an answer showed the cache is out of date.
    stale: bool,
    /// Whether a refresh ever succeeded.
    loaded: bool,
    /// Bumped by each refresh.
    generation: u64,
    /// When the last refresh finished.
    refreshed_at: Option<Instant>,
}

/// A connection to one broker node, made lazily.
#[derive(Debug)]
struct NodeSlot {
    addr: String,
    conn: Mutex<Option<Arc<Connection>>>,
}

#[derive(Debug)]
struct Inner {
    config: ClientConfig,
    /// The bootstrap connection (admin and group requests) and the
    /// bootstrap address it was made to.
    conn: Mutex<Option<(String, Arc<Connection>)>>,
    /// A copy of the bootstrap connection readable without waiting.
    boot: StdMutex<Option<Arc<Connection>>>,
    meta: StdMutex<MetaCache>,
    /// One metadata refresh at a time.
    refreshing: Mutex<()>,
    /// Connections to partition leaders, by node id.
    nodes: StdMutex<HashMap<u32, Arc<NodeSlot>>>,
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where one partition of a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Route {
    /// The leader's node id.
    Node(u32),
    /// Not in the metadata (unknown topic, or a topic just created): the
    /// bootstrap connection, whose broker answers for it.
    Bootstrap,
    /// The partition has no leader right now.
    NoLeader,
}

/// The answer to a cluster-status request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// One entry per node.
    pub nodes: Vec<proto::NodeStatus>,
    /// Coordinators reachable by the quorum.
    pub coordinators_up: u32,
    /// Coordinators configured.
    pub coordinators_total: u32,
    /// The quorum's leader, if it has one.
    pub leader: Option<u64>,
}

/// A handle on the cluster: a bootstrap connection for admin and group
/// requests, and one connection per partition leader for produce, fetch
/// and offset lookups, routed by a metadata cache that is refreshed when
/// an answer shows it is out of date. Connections are re-established on
/// the next call after they fail. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

pub(crate) fn required<T>(v: Option<T>) -> Vec<T::Item>
where
    T: IntoIterator,
{
    v.into_iter().flatten().collect()
}

/// The host part of `host:port` (without IPv6 brackets).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// `host:port` for a broker's advertised address; an unspecified host
/// (0.0.0.0, ::) is replaced by the host of the address `via` that the
/// metadata was read through.
pub(crate) fn broker_addr(host: &str, port: u16, via: &str) -> String {
    let host = host.trim().trim_start_matches('[').trim_end_matches(']');
    let unspecified = host.is_empty()
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified());
    let host = if unspecified { host_of(via) } else { host };
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Whether a per-partition error code means the routing is out of date.
fn routing_stale(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NotLeader
            | ErrorCode::FencedLeaderEpoch
            | ErrorCode::UnknownTopicOrPartition
            | ErrorCode::NotEnoughReplicas
    )
}

/// Whether a whole-request failure means the node may be gone.
fn transport_failure(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::ConnectionLost { .. }
            | ClientError::Connect { .. }
            | ClientError::Timeout { .. }
    ) || e.code().is_some_and(|c| c == ErrorCode::ShuttingDown)
}

fn no_leader_message(topic: &str, partition: u32) -> String {
    format!("{topic}/{partition} has no leader right now (leader election in progress)")
}

/// Groups request positions by route, keeping first-seen order.
fn group_by_route(routes: &[Route]) -> Vec<(Route, Vec<usize>)> {
    let mut out: Vec<(Route, Vec<usize>)> = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        match out.iter_mut().find(|(k, _)| k == r) {
            Some((_, v)) => v.push(i),
            None => out.push((*r, vec![i])),
        }
    }
    out
}

/// Matches a sub-request's answers to its positions: by (topic,
/// partition), else by position. `keys[i]` is the i-th entry of the
/// sub-request. Returns, per answer, the index into `keys`.
fn match_entries<'a>(
    keys: &[(&str, u32)],
    answers: impl Iterator<Item = (Option<&'a str>, u32)>,
) -> Vec<Option<usize>> {
    let mut used = vec![false; keys.len()];
    let mut out = Vec::new();
    for (j, (topic, partition)) in answers.enumerate() {
        let found = match topic {
            Some(t) if !t.is_empty() => keys
                .iter()
                .enumerate()
                .position(|(i, k)| !used[i] && k.0 == t && k.1 == partition),
            _ => (j < keys.len() && !used[j]).then_some(j),
        };
        if let Some(i) = found {
            used[i] = true;
        }
        out.push(found);
    }
    out
}

impl Client {
    /// Connects to the first bootstrap address that answers.
    pub async fn connect(config: ClientConfig) -> Result<Client> {
        if config.bootstrap.is_empty() {
            return Err(ClientError::InvalidArgument(
                "no bootstrap address given".into(),
            ));
        }
        let client = Client {
            inner: Arc::new(Inner {
                config,
                conn: Mutex::new(None),
                boot: StdMutex::new(None),
                meta: StdMutex::new(MetaCache::default()),
                refreshing: Mutex::new(()),
                nodes: StdMutex::new(HashMap::new()),
            }),
        };
        client.connection().await?;
        Ok(client)
    }

    /// The configuration this client was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The largest record batch the broker accepts, as its handshake on
    /// the bootstrap connection said; the broker's default
    /// (`log.max_batch_bytes`, [`levee_engine::LogConfig`]) when it did not.
    pub fn max_batch_bytes(&self) -> usize {
        lock(&self.inner.boot)
            .as_ref()
            .and_then(|c| c.broker_max_batch_bytes())
            .unwrap_or_else(|| levee_engine::LogConfig::default().max_batch_bytes)
    }

    /// The largest frame the broker accepts (from the bootstrap handshake;
    /// this client's `max_frame_bytes` when not connected).
    pub fn max_frame_bytes(&self) -> usize {
        lock(&self.inner.boot)
            .as_ref()
            .map_or(self.inner.config.max_frame_bytes, |c| {
                c.broker_max_frame_bytes()
            })
    }

    /// The bootstrap connection (admin and group requests), reconnecting
    /// if it failed: to the first bootstrap address that answers.
    pub async fn connection(&self) -> Result<Arc<Connection>> {
        self.bootstrap().await.map(|(_, c)| c)
    }

    async fn bootstrap(&self) -> Result<(String, Arc<Connection>)> {
        let mut guard = self.inner.conn.lock().await;
        if let Some((addr, c)) = guard.as_ref() {
            if !c.is_closed() {
                return Ok((addr.clone(), c.clone()));
            }
        }
        *guard = None;
        *lock(&self.inner.boot) = None;
        let cfg = &self.inner.config;
        let mut last = None;
        for addr in &cfg.bootstrap {
            match Connection::connect(
                addr,
                &cfg.client_id,
                cfg.max_frame_bytes,
                cfg.request_timeout,
            )
            .await
            {
                Ok(c) => {
                    let c = Arc::new(c);
                    *guard = Some((addr.clone(), c.clone()));
                    *lock(&self.inner.boot) = Some(c.clone());
                    return Ok((addr.clone(), c));
                }
                Err(e) => {
                    tracing::debug!(addr, error = %e, "connect failed");
                    last = Some(e);
                }
            }
        }
        Err(match last {
            Some(ClientError::Connect { reason, .. }) => ClientError::Connect {
                addrs: cfg.bootstrap.join(","),
                reason,
            },
            Some(e) => e,
            None => ClientError::InvalidArgument("no bootstrap address given".into()),
        })
    }

    pub(crate) async fn call(
        &self,
        request: Request,
        payload: Vec<Bytes>,
        extra: Duration,
        what: &str,
    ) -> Result<Reply> {
        let conn = self.connection().await?;
        conn.call(
            request,
            payload,
            self.inner.config.request_timeout + extra,
            what,
        )
        .await
    }

    /// Marks the cached partition leaders out of date: the next produce,
    /// fetch or offset lookup reads the metadata again first.
    pub fn invalidate_metadata(&self) {
        lock(&self.inner.meta).stale = true;
    }

    /// The cached leader of a partition and its epoch (`None`: unknown, or
    /// no leader right now). Reads the metadata if it was never read.
    pub async fn leader(&self, topic: &str, partition: u32) -> Result<Option<(u32, u64)>> {
        let key = (topic.to_string(), partition);
        if !lock(&self.inner.meta).loaded {
            self.refresh_metadata().await?;
        }
        let meta = lock(&self.inner.meta);
        Ok(meta
            .leaders
            .get(&key)
            .copied()
            .filter(|(l, _)| *l != NO_LEADER))
    }

    /// Reads the cluster metadata again (from the bootstrap connection,
    /// else from any known broker) into the routing cache.
    pub async fn refresh_metadata(&self) -> Result<()> {
        let generation = lock(&self.inner.meta).generation;
        let _one = self.inner.refreshing.lock().await;
        let last = {
            let meta = lock(&self.inner.meta);
            if meta.generation != generation {
                // Another caller refreshed while this one waited.
                return Ok(());
            }
            meta.refreshed_at
        };
        if let Some(at) = last {
            let next = at + MIN_REFRESH_INTERVAL;
            if next > Instant::now() {
                tokio::time::sleep_until(next.into()).await;
            }
        }
        let mut last_err = match self.bootstrap().await {
            Ok((addr, conn)) => match self.metadata_on(&conn, &addr).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            },
            Err(e) => e,
        };
        let known: Vec<String> = {
            let meta = lock(&self.inner.meta);
            let mut v: Vec<String> = meta.brokers.values().cloned().collect();
            v.sort();
            v
        };
        let cfg = &self.inner.config;
        for addr in known {
            if cfg.bootstrap.contains(&addr) {
                continue;
            }
            let conn = match Connection::connect(
                &addr,
                &cfg.client_id,
                cfg.max_frame_bytes,
                cfg.request_timeout,
            )
            .await
            {
                Ok(c) => c,
                Err(e) => {
                    last_err = e;
                    continue;
                }
            };
            match self.metadata_on(&conn, &addr).await {
                Ok(()) => return Ok(()),
                Err(e) => last_err = e,
            }
        }
        lock(&self.inner.meta).refreshed_at = Some(Instant::now());
        Err(last_err)
    }

    async fn metadata_on(&self, conn: &Connection, via: &str) -> Result<()> {
        let req = Request::Metadata(Box::new(Metadata {
            topics: Some(Vec::new()),
        }));
        let reply = conn
            .call(
                req,
                Vec::new(),
                self.inner.config.request_timeout,
                "metadata",
            )
            .await?;
        let m = match reply.header.response {
            Some(Response::MetadataResponse(m)) => m,
            other => return Err(unexpected("MetadataResponse", other.as_ref())),
        };
        let brokers: HashMap<u32, String> = required(m.brokers)
            .into_iter()
            .map(|b| {
                let addr = broker_addr(b.host.as_deref().unwrap_or(""), b.port, via);
                (b.node_id, addr)
            })
            .collect();
        let mut leaders = HashMap::new();
        for d in required(m.topics) {
            if d.error != ErrorCode::None {
                continue;
            }
            let Some(name) = d.name else { continue };
            for p in required(d.partitions) {
                leaders.insert((name.clone(), p.partition), (p.leader, p.leader_epoch));
            }
        }
        let mut meta = lock(&self.inner.meta);
        meta.brokers = brokers;
        meta.leaders = leaders;
        meta.stale = false;
        meta.loaded = true;
        meta.generation += 1;
        meta.refreshed_at = Some(Instant::now());
        Ok(())
    }

    /// The route of each partition, reading the metadata first if it is
    /// missing, stale, or lacks a leader for one of them.
    async fn routes(&self, keys: &[(&str, u32)]) -> Vec<Route> {
        let lookup = |meta: &MetaCache| -> (Vec<Route>, bool) {
            let mut incomplete = !meta.loaded || meta.stale;
            let routes = keys
                .iter()
                .map(|(t, p)| match meta.leaders.get(&(t.to_string(), *p)) {
                    Some((l, _)) if *l == NO_LEADER => {
                        incomplete = true;
                        Route::NoLeader
                    }
                    Some((l, _)) if meta.brokers.contains_key(l) => Route::Node(*l),
                    Some(_) => {
                        incomplete = true;
                        Route::NoLeader
                    }
                    None => {
                        incomplete = true;
                        Route::Bootstrap
                    }
                })
                .collect();
            (routes, incomplete)
        };
        let (before, incomplete, was_stale) = {
            let meta = lock(&self.inner.meta);
            let (r, i) = lookup(&meta);
            (r, i, meta.stale || !meta.loaded)
        };
        if !incomplete {
            return before;
        }
        if let Err(e) = self.refresh_metadata().await {
            tracing::debug!(error = %e, "metadata refresh failed");
            // Leave the cache as it was; the broker answers will tell.
            lock(&self.inner.meta).stale = true;
            return before;
        }
        let meta = lock(&self.inner.meta);
        let (after, _) = lookup(&meta);
        if was_stale {
            return after;
        }
        // The refresh was for other partitions: a partition that had a
        // leader keeps the route it had (see `Client::cached_route`).
        before
            .into_iter()
            .zip(after)
            .map(|(b, a)| if matches!(b, Route::Node(_)) { b } else { a })
            .collect()
    }

    /// Where a produce for this partition would go now without reading the
    /// metadata again: its leader's node id, or `None` when the cache is
    /// stale, never read, or has no leader for it. A request started right
    /// after this answered `Some(n)` goes to node `n`.
    pub fn cached_route(&self, topic: &str, partition: u32) -> Option<u32> {
        let meta = lock(&self.inner.meta);
        if meta.stale || !meta.loaded {
            return None;
        }
        match meta.leaders.get(&(topic.to_string(), partition)) {
            Some((l, _)) if *l != NO_LEADER && meta.brokers.contains_key(l) => Some(*l),
            _ => None,
        }
    }

    /// The node that coordinates `group`: the leader of its partition of
    /// the offsets topic. `None`: that topic is not in the metadata yet.
    pub async fn group_coordinator(&self, group: &str) -> Result<Option<u32>> {
        let (loaded, stale) = {
            let m = lock(&self.inner.meta);
            (m.loaded, m.stale)
        };
        if !loaded || stale {
            self.refresh_metadata().await?;
        }
        let meta = lock(&self.inner.meta);
        let n = meta
            .leaders
            .keys()
            .filter(|(t, _)| t == levee_core::OFFSETS_TOPIC)
            .count() as u32;
        if n == 0 {
            return Ok(None);
        }
        let p = levee_core::group_partition(group, n);
        Ok(meta
            .leaders
            .get(&(levee_core::OFFSETS_TOPIC.to_string(), p))
            .map(|(l, _)| *l)
            .filter(|l| *l != NO_LEADER))
    }

    /// The connection to a node, connecting if needed. On failure the
    /// metadata is marked stale.
    pub(crate) async fn node_connection(&self, node: u32) -> Result<Arc<Connection>> {
        if let Some(c) = lock(&self.inner.boot).as_ref() {
            if !c.is_closed() && c.hello().node_id == node {
                return Ok(c.clone());
            }
        }
        let addr = lock(&self.inner.meta).brokers.get(&node).cloned();
        let Some(addr) = addr else {
            self.invalidate_metadata();
            return Err(ClientError::Server {
                code: ErrorCode::NotLeader,
                message: format!("node {node} is not in the cluster metadata"),
            });
        };
        let slot = {
            let mut nodes = lock(&self.inner.nodes);
            let slot = nodes.entry(node).or_insert_with(|| {
                Arc::new(NodeSlot {
                    addr: addr.clone(),
                    conn: Mutex::new(None),
                })
            });
            if slot.addr != addr {
                *slot = Arc::new(NodeSlot {
                    addr: addr.clone(),
                    conn: Mutex::new(None),
                });
            }
            slot.clone()
        };
        let mut guard = slot.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        *guard = None;
        let cfg = &self.inner.config;
        match Connection::connect(
            &addr,
            &cfg.client_id,
            cfg.max_frame_bytes,
            cfg.request_timeout,
        )
        .await
        {
            Ok(c) => {
                let c = Arc::new(c);
                *guard = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                tracing::debug!(node, addr, error = %e, "connecting to a partition leader failed");
                self.invalidate_metadata();
                Err(e)
            }
        }
    }

    async fn route_connection(&self, route: Route) -> Result<Arc<Connection>> {
        match route {
            Route::Node(n) => self.node_connection(n).await,
            Route::Bootstrap => self.connection().await,
            Route::NoLeader => Err(ClientError::Server {
                code: ErrorCode::NotLeader,
                message: "no leader".into(),
            }),
        }
    }

    /// Notes a whole-request failure: the node may be gone.
    fn request_failed(&self, e: &ClientError) {
        if transport_failure(e) || e.code().is_some_and(routing_stale) {
            self.invalidate_metadata();
        }
    }

    /// Notes a per-partition error code.
    fn partition_error(&self, code: ErrorCode) {
        if routing_stale(code) {
            self.invalidate_metadata();
        }
    }

    /// The cluster's status: every node's role, liveness and partitions,
    /// and the coordinator quorum's state. A single-node broker answers
    /// with an `InvalidRequest` error.
    pub async fn cluster_status(&self) -> Result<ClusterStatus> {
        let req = Request::ClusterStatus(Box::new(proto::ClusterStatus {}));
        let reply = self
            .call(req, Vec::new(), Duration::ZERO, "cluster status")
            .await?;
        match reply.header.response {
            Some(Response::ClusterStatusResponse(r)) => {
                if r.error != ErrorCode::None {
                    return Err(ClientError::Server {
                        code: r.error,
                        message: r.message.unwrap_or_default(),
                    });
                }
                Ok(ClusterStatus {
                    nodes: required(r.nodes),
                    coordinators_up: r.coordinators_up,
                    coordinators_total: r.coordinators_total,
                    leader: if r.has_leader {
                        u64::try_from(r.leader_id).ok()
                    } else {
                        None
                    },
                })
            }
            other => Err(unexpected("ClusterStatusResponse", other.as_ref())),
        }
    }

    /// Creates a topic.
    pub async fn create_topic(&self, name: &str, settings: &TopicSettings) -> Result<()> {
        let req = Request::CreateTopic(Box::new(CreateTopic {
            name: name.to_string(),
            config: Some(Box::new(settings.to_proto())),
        }));
        let reply = self
            .call(req, Vec::new(), Duration::ZERO, "create topic")
            .await?;
        topic_result(reply, name)
    }

    /// Grows a topic to `count` partitions (partitions can only be added;
    /// existing ones keep their data and offsets). `assignment`: one list of
    /// node ids per new partition, or empty to let the broker place them.
    /// `validate_only`: the broker checks the request and changes nothing.
    pub async fn add_partitions(
        &self,
        name: &str,
        count: u32,
        assignment: &[Vec<u32>],
        validate_only: bool,
    ) -> Result<()> {
        let req = Request::AddPartitions(Box::new(proto::AddPartitions {
            name: name.to_string(),
            count,
            assignment: (!assignment.is_empty()).then(|| {
                assignment
                    .iter()
                    .map(|r| proto::ReplicaList {
                        nodes: Some(r.clone()),
                    })
                    .collect()
            }),
            validate_only,
        }));
        let reply = self
            .call(req, Vec::new(), Duration::ZERO, "add partitions")
            .await?;
        topic_result(reply, name)
    }

    /// A producer id and epoch for an idempotent producer: a new id, or
    /// with `existing` the same id at the next epoch.
    pub async fn init_producer_id(&self, existing: Option<(i64, i16)>) -> Result<(i64, i16)> {
        let (producer_id, producer_epoch) = existing.unwrap_or((-1, -1));
        let req = Request::InitProducerId(Box::new(proto::InitProducerId {
            producer_id,
            producer_epoch,
            transactional_id: None,
            transaction_timeout_ms: 0,
        }));
        let reply = self
            .call(req, Vec::new(), Duration::ZERO, "init producer id")
            .await?;
        match reply.header.response {
            Some(Response::ProducerIdResponse(r)) => {
                if r.error != ErrorCode::None {
                    return Err(ClientError::Server {
                        code: r.error,
                        message: r.message.unwrap_or_default(),
                    });
                }
                Ok((r.producer_id, r.producer_epoch))
            }
            other => Err(unexpected("ProducerIdResponse", other.as_ref())),
        }
    }

    /// Changes a topic's settings: the broker stores them and its open
    /// partitions take them at once (a lower retention deletes segments at
    /// once, which frees a full disk). `validate_only`: the broker checks
    /// the changes and changes nothing.
    pub async fn alter_topic(
        &self,
        name: &str,
        changes: &TopicChanges,
        validate_only: bool,
    ) -> Result<()> {
        let req = Request::AlterTopic(Box::new(proto::AlterTopic {
            name: name.to_string(),
            configs: Some(
                changes
                    .entries()
                    .into_iter()
                    .map(|(name, value)| proto::ConfigEntry { name, value })
                    .collect(),
            ),
            validate_only,
        }));
        let reply = self
            .call(req, Vec::new(), Duration::ZERO, "alter topic")
            .await?;
        topic_result(reply, name)
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let req = Request::DeleteTopic(Box::new(DeleteTopic {
            name: name.to_string(),
        }));
        let reply = self
            .call(req, Vec::new(), Duration::ZERO, "delete topic")
            .await?;
        topic_result(reply, name)
    }

    /// Names of every topic.
    pub async fn list_topics(&self) -> Result<Vec<String>> {
        let req = Request::ListTopics(Box::new(ListTopics {}));
        let reply = self
            .call(req, Vec::new(), Duration::ZERO, "list topics")
            .await?;
        match reply.header.response {
            Some(Response::ListTopicsResponse(r)) => Ok(required(r.names)),
            other => Err(unexpected("ListTopicsResponse", other.as_ref())),
        }
    }

    /// Describes one topic: settings and per-partition offsets.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicInfo> {
        let req = Request::DescribeTopic(Box::new(DescribeTopic {
            name: name.to_string(),
        }));
        let reply = self
            .call(req, Vec::new(), Duration::ZERO, "describe topic")
            .await?;
        match reply.header.response {
            Some(Response::TopicDescription(d)) => topic_info(*d, name),
            other => Err(unexpected("TopicDescription", other.as_ref())),
        }
    }

    /// Brokers and topic descriptions (`topics` empty: every topic).
    pub async fn metadata(&self, topics: &[String]) -> Result<ClusterMetadata> {
        let req = Request::Metadata(Box::new(Metadata {
            topics: Some(topics.to_vec()),
        }));
        let reply = self
            .call(req, Vec::new(), Duration::ZERO, "metadata")
            .await?;
        match reply.header.response {
            Some(Response::MetadataResponse(m)) => {
                let topics = required(m.topics)
                    .into_iter()
                    .map(|d| {
                        let name = d.name.clone().unwrap_or_default();
                        let info = topic_info(d, &name);
                        (name, info)
                    })
                    .collect();
                Ok(ClusterMetadata {
                    brokers: required(m.brokers),
                    topics,
                })
            }
            other => Err(unexpected("MetadataResponse", other.as_ref())),
        }
    }

    /// Queues one request per leader among `routes` (built by `build` from
    /// the positions it carries), in the order the leaders first appear.
    /// Requests queued one after another on one connection keep their order.
    async fn send_routed(
        &self,
        routes: &[Route],
        no_response: bool,
        build: impl Fn(&[usize]) -> (Request, Vec<Bytes>),
    ) -> Vec<Sub> {
        let mut subs = Vec::new();
        for (route, idx) in group_by_route(routes) {
            if route == Route::NoLeader {
                subs.push(Sub {
                    route,
                    idx,
                    state: SubState::NoLeader,
                });
                continue;
            }
            let conn = match self.route_connection(route).await {
                Ok(c) => c,
                Err(e) => {
                    subs.push(Sub {
                        route,
                        idx,
                        state: SubState::Failed(e),
                    });
                    continue;
                }
            };
            let (req, payload) = build(&idx);
            let len: u64 = payload.iter().map(|b| b.len() as u64).sum();
            let max = conn.broker_max_frame_bytes() as u64;
            if len > 0 && len + header_bound(&req) > max {
                subs.push(Sub {
                    route,
                    idx,
                    state: SubState::Failed(ClientError::Server {
                        code: ErrorCode::MessageTooLarge,
                        message: format!(
                            "produce request of {len} bytes exceeds the broker's max_frame_bytes {max}"
                        ),
                    }),
                });
                continue;
            }
            let state = if no_response {
                conn.enqueue_only(req, payload)
                    .map(|w| SubState::Written(conn.clone(), w))
            } else {
                conn.enqueue(req, payload)
                    .map(|r| SubState::Queued(conn.clone(), r))
            };
            let state = state.unwrap_or_else(|e| {
                self.request_failed(&e);
                SubState::Failed(e)
            });
            subs.push(Sub { route, idx, state });
        }
        subs
    }

    /// Looks up one offset per partition of `topic`, in the order given.
    /// `None`: no record matches the timestamp.
    pub async fn list_offsets(
        &self,
        topic: &str,
        partitions: &[u32],
        spec: OffsetSpec,
    ) -> Result<Vec<(u32, Option<u64>)>> {
        self.offsets_of(topic, partitions, "list offsets", |idx| {
            Request::ListOffsets(Box::new(ListOffsets {
                partitions: Some(
                    idx.iter()
                        .map(|&i| ListOffsetsPartition {
                            topic: topic.to_string(),
                            partition: partitions[i],
                            spec: spec.to_wire(),
                        })
                        .collect(),
                ),
            }))
        })
        .await
    }

    /// Deletes the records of each `(partition, offset)` of `topic` before
    /// that offset (Kafka's DeleteRecords; `None`: before the high
    /// watermark, i.e. all of them): each partition's leader advances its
    /// log start, and answers once every in-sync replica has. Returns each
    /// partition's log start afterwards (the lowest of its replicas), in
    /// the order given.
    pub async fn delete_records(
        &self,
        topic: &str,
        before: &[(u32, Option<u64>)],
    ) -> Result<Vec<(u32, u64)>> {
        let partitions: Vec<u32> = before.iter().map(|b| b.0).collect();
        let mut wire = Vec::with_capacity(before.len());
        for &(p, o) in before {
            wire.push(match o {
                None => -1,
                Some(o) => i64::try_from(o).map_err(|_| {
                    ClientError::InvalidArgument(format!(
                        "offset {o} of partition {p} is past the largest offset"
                    ))
                })?,
            });
        }
        let request_timeout = self.inner.config.request_timeout;
        let out = self
            .offsets_of(topic, &partitions, "delete records", |idx| {
                Request::DeleteRecords(Box::new(DeleteRecords {
                    partitions: Some(
                        idx.iter()
                            .map(|&i| DeleteRecordsPartition {
                                topic: topic.to_string(),
                                partition: partitions[i],
                                offset: wire[i],
                            })
                            .collect(),
                    ),
                    // Within the request's own timeout, so that a replica
                    // that lags gets an answer that says so.
                    timeout_ms: (request_timeout.as_millis() as u32)
                        .saturating_sub(1000)
                        .max(1),
                }))
            })
            .await?;
        Ok(out
            .into_iter()
            .map(|(p, o)| (p, o.unwrap_or_default()))
            .collect())
    }

    /// Sends a per-partition offsets request (`build` makes it for the
    /// partitions at the given indexes) to each partition's leader and
    /// gathers the ListOffsetsResponses, in the order of `partitions`.
    async fn offsets_of(
        &self,
        topic: &str,
        partitions: &[u32],
        what: &str,
        build: impl Fn(&[usize]) -> Request,
    ) -> Result<Vec<(u32, Option<u64>)>> {
        let keys: Vec<(&str, u32)> = partitions.iter().map(|&p| (topic, p)).collect();
        let routes = self.routes(&keys).await;
        let subs = self
            .send_routed(&routes, false, |idx| (build(idx), Vec::new()))
            .await;
        let mut out: Vec<Option<Result<OffsetEntry>>> = vec![None; partitions.len()];
        let timeout = self.inner.config.request_timeout;
        for sub in subs {
            let reply = match sub.state {
                SubState::Queued(conn, pending) => conn.wait(pending, timeout, what).await,
                SubState::Written(..) => Err(ClientError::Protocol("no response".into())),
                SubState::Failed(e) => Err(e),
                SubState::NoLeader => {
                    for &i in &sub.idx {
                        out[i] = Some(Err(ClientError::Server {
                            code: ErrorCode::NotLeader,
                            message: no_leader_message(topic, partitions[i]),
                        }));
                    }
                    continue;
                }
            };
            let entries = match reply {
                Ok(reply) => match reply.header.response {
                    Some(Response::ListOffsetsResponse(r)) => required(r.partitions),
                    other => return Err(unexpected("ListOffsetsResponse", other.as_ref())),
                },
                Err(e) => {
                    self.request_failed(&e);
                    for &i in &sub.idx {
                        out[i] = Some(Err(e.clone()));
                    }
                    continue;
                }
            };
            let sub_keys: Vec<(&str, u32)> = sub.idx.iter().map(|&i| keys[i]).collect();
            let matched = match_entries(
                &sub_keys,
                entries.iter().map(|e| (e.topic.as_deref(), e.partition)),
            );
            for (e, m) in entries.into_iter().zip(matched) {
                let Some(j) = m else { continue };
                let r = if e.error != ErrorCode::None {
                    self.partition_error(e.error);
                    Err(ClientError::from_code(
                        e.error,
                        e.message,
                        e.topic.as_deref().unwrap_or(topic),
                        Some(e.partition),
                    ))
                } else {
                    Ok((e.partition, u64::try_from(e.offset).ok()))
                };
                out[sub.idx[j]] = Some(r);
            }
        }
        out.into_iter().flatten().collect()
    }

    /// Produces batches (each `(topic, partition, batch bytes)`) and waits
    /// for the response. With `acks = 0` the result is empty once written.
    /// Each partition goes to its leader; the entries come back in the order
    /// of `batches`.
    pub async fn produce(
        &self,
        acks: i8,
        timeout: Duration,
        batches: Vec<(String, u32, Bytes)>,
    ) -> Result<Vec<ProducedPartition>> {
        self.start_produce(acks, timeout, batches)
            .await?
            .wait()
            .await
    }

    /// Queues a produce request on each partition leader's connection now
    /// (one request per leader), and returns the handle that waits for the
    /// outcome. Requests started one after another are written, appended
    /// and answered in that order on each leader, which is how a producer
    /// keeps per-partition order with several requests in flight.
    pub async fn start_produce(
        &self,
        acks: i8,
        timeout: Duration,
        batches: Vec<(String, u32, Bytes)>,
    ) -> Result<InFlightProduce> {
        let batches = batches
            .into_iter()
            .map(|(t, p, b)| (t, p, vec![b]))
            .collect();
        self.start_produce_chunks(acks, timeout, batches).await
    }

    /// [`Client::start_produce`] with each partition's batches given as
    /// chunks (whole batches, end to end), written one after another
    /// without being copied into one buffer.
    pub async fn start_produce_chunks(
        &self,
        acks: i8,
        timeout: Duration,
        batches: Vec<(String, u32, Vec<Bytes>)>,
    ) -> Result<InFlightProduce> {
        for (_, _, chunks) in &batches {
            let len: usize = chunks.iter().map(Bytes::len).sum();
            if u32::try_from(len).is_err() {
                return Err(ClientError::InvalidArgument(
                    "produce payload exceeds 4 GiB".into(),
                ));
            }
        }
        let keys: Vec<(&str, u32)> = batches.iter().map(|(t, p, _)| (t.as_str(), *p)).collect();
        let routes = self.routes(&keys).await;
        let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        let mut too_big = false;
        let subs = self
            .send_routed(&routes, acks == 0, |idx| {
                let mut partitions = Vec::with_capacity(idx.len());
                let mut payload = Vec::with_capacity(idx.len());
                let mut pos: u64 = 0;
                for &i in idx {
                    let (topic, partition, chunks) = &batches[i];
                    let off = u32::try_from(pos).unwrap_or(u32::MAX);
                    let len: usize = chunks.iter().map(Bytes::len).sum();
                    partitions.push(ProducePartition {
                        topic: topic.clone(),
                        partition: *partition,
                        payload_offset: off,
                        payload_len: len as u32,
                    });
                    pos += len as u64;
                    payload.extend(chunks.iter().cloned());
                }
                let req = Request::Produce(Box::new(Produce {
                    acks,
                    timeout_ms,
                    partitions: Some(partitions),
                }));
                (req, payload)
            })
            .await;
        for s in &subs {
            if let SubState::Failed(e) = &s.state {
                too_big |= e.code() == Some(ErrorCode::MessageTooLarge);
            }
        }
        if too_big && subs.len() == 1 {
            if let Some(Sub {
                state: SubState::Failed(e),
                ..
            }) = subs.into_iter().next()
            {
                return Err(e);
            }
            return Err(ClientError::Protocol("produce request vanished".into()));
        }
        Ok(InFlightProduce {
            client: self.clone(),
            keys: batches.into_iter().map(|(t, p, _)| (t, p)).collect(),
            subs,
            wait: self.inner.config.request_timeout + timeout,
        })
    }

    /// Fetches stored batches. The broker waits up to `max_wait` for
    /// `min_bytes`; the response is at most `max_bytes` (at least one batch
    /// per partition with data). Batches are returned unvalidated: see
    /// [`crate::consumer::Consumer`] for validation and decoding. Each
    /// partition is read from its leader; the entries come back in the
    /// order of `partitions`. A partition without a leader right now comes
    /// back with `NotLeader`.
    pub async fn fetch(
        &self,
        max_wait: Duration,
        min_bytes: u32,
        max_bytes: u32,
        partitions: &[FetchRequestPartition],
    ) -> Result<Vec<FetchedPartition>> {
        self.fetch_each(max_wait, min_bytes, max_bytes, partitions)
            .await
            .into_iter()
            .collect()
    }

    /// As [`Client::fetch`], with one result per requested partition: a
    /// leader whose request failed fails only its own partitions.
    pub async fn fetch_each(
        &self,
        max_wait: Duration,
        min_bytes: u32,
        max_bytes: u32,
        partitions: &[FetchRequestPartition],
    ) -> Vec<Result<FetchedPartition>> {
        self.fetch_each_isolated(max_wait, min_bytes, max_bytes, partitions, false)
            .await
    }

    /// As [`Client::fetch_each`]; `read_committed`: only below each
    /// partition's last stable offset, with the aborted transactions to
    /// skip (Kafka's isolation level read_committed).
    pub async fn fetch_each_isolated(
        &self,
        max_wait: Duration,
        min_bytes: u32,
        max_bytes: u32,
        partitions: &[FetchRequestPartition],
        read_committed: bool,
    ) -> Vec<Result<FetchedPartition>> {
        let keys: Vec<(&str, u32)> = partitions
            .iter()
            .map(|p| (p.topic.as_str(), p.partition))
            .collect();
        let routes = self.routes(&keys).await;
        let subs = self
            .send_routed(&routes, false, |idx| {
                let req = Request::Fetch(Box::new(Fetch {
                    max_wait_ms: u32::try_from(max_wait.as_millis()).unwrap_or(u32::MAX),
                    min_bytes,
                    max_bytes,
                    partitions: Some(
                        idx.iter()
                            .map(|&i| {
                                let p = &partitions[i];
                                FetchPartition {
                                    topic: p.topic.clone(),
                                    partition: p.partition,
                                    offset: p.offset,
                                    max_bytes: p.max_bytes,
                                    leader_epoch: -1,
                                    log_start_offset: -1,
                                }
                            })
                            .collect(),
                    ),
                    replica_id: -1,
                    isolation_level: u8::from(read_committed),
                }));
                (req, Vec::new())
            })
            .await;
        let mut out: Vec<Option<Result<FetchedPartition>>> = vec![None; partitions.len()];
        let timeout = self.inner.config.request_timeout + max_wait;
        for sub in subs {
            let reply = match sub.state {
                SubState::Queued(conn, pending) => conn.wait(pending, timeout, "fetch").await,
                SubState::Written(..) => Err(ClientError::Protocol("no response".into())),
                SubState::Failed(e) => Err(e),
                SubState::NoLeader => {
                    for &i in &sub.idx {
                        let p = &partitions[i];
                        out[i] = Some(Ok(FetchedPartition {
                            topic: p.topic.clone(),
                            partition: p.partition,
                            error: ErrorCode::NotLeader,
                            message: Some(no_leader_message(&p.topic, p.partition)),
                            high_watermark: 0,
                            log_start_offset: 0,
                            batches: Bytes::new(),
                            last_stable_offset: 0,
                            aborted: Vec::new(),
                        }));
                    }
                    continue;
                }
            };
            let parsed = reply.and_then(|reply| {
                let payload = reply.payload;
                match reply.header.response {
                    Some(Response::FetchResponse(r)) => Ok((required(r.partitions), payload)),
                    other => Err(unexpected("FetchResponse", other.as_ref())),
                }
            });
            let (entries, payload) = match parsed {
                Ok(v) => v,
                Err(e) => {
                    self.request_failed(&e);
                    for &i in &sub.idx {
                        out[i] = Some(Err(e.clone()));
                    }
                    continue;
                }
            };
            let sub_keys: Vec<(&str, u32)> = sub.idx.iter().map(|&i| keys[i]).collect();
            let matched = match_entries(
                &sub_keys,
                entries.iter().map(|e| (e.topic.as_deref(), e.partition)),
            );
            for (e, m) in entries.into_iter().zip(matched) {
                let Some(j) = m else { continue };
                let i = sub.idx[j];
                if e.error != ErrorCode::None {
                    self.partition_error(e.error);
                }
                let batches = if e.payload_len == 0 {
                    Ok(Bytes::new())
                } else {
                    payload_slice(&payload, e.payload_offset, e.payload_len)
                        .map(|s| payload.slice_ref(s))
                        .map_err(|err| ClientError::Protocol(format!("fetch response: {err}")))
                };
                out[i] = Some(batches.map(|batches| {
                    FetchedPartition {
                        topic: e.topic.unwrap_or_else(|| partitions[i].topic.clone()),
                        partition: e.partition,
                        error: e.error,
                        message: e.message,
                        high_watermark: e.high_watermark,
                        log_start_offset: e.log_start_offset,
                        batches,
                        last_stable_offset: e.last_stable_offset,
                        aborted: e
                            .aborted
                            .unwrap_or_default()
                            .into_iter()
                            .map(|a| AbortedTxn {
                                producer_id: a.producer_id,
                                first_offset: a.first_offset,
                                last_offset: a.last_offset,
                            })
                            .collect(),
                    }
                }));
            }
        }
        out.into_iter().flatten().collect()
    }
}

/// A partition and its offset, as [`Client::list_offsets`] returns them.
type OffsetEntry = (u32, Option<u64>);

/// One leader's part of a routed request.
struct Sub {
    route: Route,
    /// Positions in the caller's request.
    idx: Vec<usize>,
    state: SubState,
}

enum SubState {
    Queued(Arc<Connection>, crate::connection::PendingReply),
    Written(Arc<Connection>, crate::connection::PendingWrite),
    Failed(ClientError),
    NoLeader,
}

/// An upper bound of the bytes a request's frame takes beside its payload:
/// the length prefix and the flatbuffer header (for a produce request, a
/// fixed part and one entry per partition).
fn header_bound(req: &Request) -> u64 {
    match req {
        Request::Produce(p) => {
            256 + p.partitions.as_ref().map_or(0, |ps| {
                ps.iter().map(|x| x.topic.len() as u64 + 64).sum::<u64>()
            })
        }
        _ => 4096,
    }
}

fn topic_result(reply: Reply, name: &str) -> Result<()> {
    match reply.header.response {
        Some(Response::TopicResult(r)) => {
            if r.error == ErrorCode::None {
                Ok(())
            } else {
                Err(ClientError::from_code(r.error, r.message, name, None))
            }
        }
        other => Err(unexpected("TopicResult", other.as_ref())),
    }
}

fn topic_info(d: proto::TopicDescription, name: &str) -> Result<TopicInfo> {
    if d.error != ErrorCode::None {
        return Err(ClientError::from_code(d.error, d.message, name, None));
    }
    let settings = d
        .config
        .as_deref()
        .map(TopicSettings::from_proto)
        .unwrap_or_default();
    let mut partitions = required(d.partitions);
    partitions.sort_by_key(|p| p.partition);
    Ok(TopicInfo {
        name: d.name.unwrap_or_else(|| name.to_string()),
        settings,
        partitions,
        id: d.id.unwrap_or_default(),
    })
}

/// A produce request already queued on its leaders' connections; see
/// [`Client::start_produce`].
pub struct InFlightProduce {
    client: Client,
    keys: Vec<(String, u32)>,
    subs: Vec<Sub>,
    wait: Duration,
}

/// What happened to one partition of a produce request.
#[derive(Debug, Clone)]
pub enum ProduceOutcome {
    /// Written to the socket (acks = 0: no answer comes).
    Written,
    /// The broker's answer for the partition (which may be an error code).
    Answered(ProducedPartition),
    /// The request carrying the partition failed as a whole.
    Failed(ClientError),
}

impl InFlightProduce {
    /// The node each batch was sent to, in the order the batches were
    /// given (`None`: the bootstrap connection, or not sent).
    pub fn leaders(&self) -> Vec<Option<u32>> {
        let mut out = vec![None; self.keys.len()];
        for sub in &self.subs {
            if let (Route::Node(n), SubState::Queued(..) | SubState::Written(..)) =
                (sub.route, &sub.state)
            {
                for &i in &sub.idx {
                    out[i] = Some(n);
                }
            }
        }
        out
    }

    /// Waits for the responses (or, with `acks = 0`, for the writes). A
    /// leader whose request failed as a whole fails the call.
    pub async fn wait(self) -> Result<Vec<ProducedPartition>> {
        let mut out = Vec::new();
        for o in self.wait_each().await {
            match o {
                ProduceOutcome::Written => {}
                ProduceOutcome::Answered(p) => out.push(p),
                ProduceOutcome::Failed(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Waits for every leader's response; one outcome per batch, in the
    /// order the batches were given.
    pub async fn wait_each(self) -> Vec<ProduceOutcome> {
        let InFlightProduce {
            client,
            keys,
            subs,
            wait,
        } = self;
        let mut out: Vec<Option<ProduceOutcome>> = vec![None; keys.len()];
        for sub in subs {
            let reply = match sub.state {
                SubState::Written(conn, w) => match conn.wait_written(w, wait, "produce").await {
                    Ok(()) => {
                        for &i in &sub.idx {
                            out[i] = Some(ProduceOutcome::Written);
                        }
                        continue;
                    }
                    Err(e) => Err(e),
                },
                SubState::Queued(conn, r) => conn.wait(r, wait, "produce").await,
                SubState::Failed(e) => Err(e),
                SubState::NoLeader => {
                    for &i in &sub.idx {
                        let (topic, partition) = &keys[i];
                        out[i] = Some(ProduceOutcome::Answered(ProducedPartition {
                            topic: topic.clone(),
                            partition: *partition,
                            error: ErrorCode::NotLeader,
                            message: Some(no_leader_message(topic, *partition)),
                            base_offset: 0,
                            last_offset: 0,
                            log_start_offset: 0,
                        }));
                    }
                    continue;
                }
            };
            let entries = reply.and_then(|reply| match reply.header.response {
                Some(Response::ProduceResponse(r)) => Ok(required(r.partitions)),
                other => Err(unexpected("ProduceResponse", other.as_ref())),
            });
            let entries = match entries {
                Ok(e) => e,
                Err(e) => {
                    client.request_failed(&e);
                    for &i in &sub.idx {
                        out[i] = Some(ProduceOutcome::Failed(e.clone()));
                    }
                    continue;
                }
            };
            let sub_keys: Vec<(&str, u32)> = sub
                .idx
                .iter()
                .map(|&i| (keys[i].0.as_str(), keys[i].1))
                .collect();
            let matched = match_entries(
                &sub_keys,
                entries.iter().map(|e| (e.topic.as_deref(), e.partition)),
            );
            for (p, m) in entries.into_iter().zip(matched) {
                let Some(j) = m else { continue };
                let i = sub.idx[j];
                if p.error != ErrorCode::None {
                    client.partition_error(p.error);
                }
                out[i] = Some(ProduceOutcome::Answered(ProducedPartition {
                    topic: p.topic.unwrap_or_else(|| keys[i].0.clone()),
                    partition: p.partition,
                    error: p.error,
                    message: p.message,
                    base_offset: p.base_offset,
                    last_offset: p.last_offset,
                    log_start_offset: p.log_start_offset,
                }));
            }
            for &i in &sub.idx {
                if out[i].is_none() {
                    out[i] = Some(ProduceOutcome::Failed(ClientError::Protocol(format!(
                        "the produce response has no entry for {}/{}",
                        keys[i].0, keys[i].1
                    ))));
                }
            }
        }
        out.into_iter()
            .map(|o| o.unwrap_or(ProduceOutcome::Failed(ClientError::Closed)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use levee_schemas::proto::{Produce, ProducePartition, RequestHeader};

    #[test]
    fn the_produce_header_bound_holds_for_any_partition_count_and_name() {
        for n in [1usize, 2, 7, 100, 1000] {
            for name_len in [1usize, 13, 249] {
                let req = Request::Produce(Box::new(Produce {
                    acks: -1,
                    timeout_ms: 30_000,
                    partitions: Some(
                        (0..n)
                            .map(|p| ProducePartition {
                                topic: "t".repeat(name_len),
                                partition: u32::MAX - p as u32,
                                payload_offset: u32::MAX,
                                payload_len: u32::MAX,
                            })
                            .collect(),
                    ),
                }));
                let bound = header_bound(&req);
                let frame = levee_schemas::request_frame(
                    &RequestHeader {
                        correlation_id: u64::MAX,
                        request: req,
                    },
                    &[],
                );
                assert!(
                    frame.len() as u64 <= bound,
                    "{n} partitions, names of {name_len}: frame {} > bound {bound}",
                    frame.len()
                );
            }
        }
    }
}
