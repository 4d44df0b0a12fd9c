//! [`Client`]: a reconnecting handle on a broker with the admin requests and
//! the raw produce and fetch requests.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use levee_schemas::proto::{
    self, CreateTopic, DeleteTopic, DescribeTopic, ErrorCode, Fetch, FetchPartition, ListOffsets,
    ListOffsetsPartition, ListTopics, Metadata, Produce, ProducePartition, Request, Response,
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
            bootstrap: vec!["127.0.0.1:9092".to_string()],
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
        }
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
}

#[derive(Debug)]
struct Inner {
    config: ClientConfig,
    conn: Mutex<Option<Arc<Connection>>>,
}

/// A handle on the cluster: one pipelined connection, re-established on the
/// next call after it fails. Cheap to clone (shared).
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
            }),
        };
        client.connection().await?;
        Ok(client)
    }

    /// The configuration this client was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The current connection, reconnecting if it failed.
    pub async fn connection(&self) -> Result<Arc<Connection>> {
        let mut guard = self.inner.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        *guard = None;
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
                    *guard = Some(c.clone());
                    return Ok(c);
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

    /// Looks up one offset per partition of `topic`. `None`: no record
    /// matches the timestamp.
    pub async fn list_offsets(
        &self,
        topic: &str,
        partitions: &[u32],
        spec: OffsetSpec,
    ) -> Result<Vec<(u32, Option<u64>)>> {
        let req = Request::ListOffsets(Box::new(ListOffsets {
            partitions: Some(
                partitions
                    .iter()
                    .map(|&p| ListOffsetsPartition {
                        topic: topic.to_string(),
                        partition: p,
                        spec: spec.to_wire(),
                    })
                    .collect(),
            ),
        }));
        let reply = self
            .call(req, Vec::new(), Duration::ZERO, "list offsets")
            .await?;
        let entries = match reply.header.response {
            Some(Response::ListOffsetsResponse(r)) => required(r.partitions),
            other => return Err(unexpected("ListOffsetsResponse", other.as_ref())),
        };
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            if e.error != ErrorCode::None {
                return Err(ClientError::from_code(
                    e.error,
                    e.message,
                    e.topic.as_deref().unwrap_or(topic),
                    Some(e.partition),
                ));
            }
            out.push((e.partition, u64::try_from(e.offset).ok()));
        }
        Ok(out)
    }

    /// Produces batches (each `(topic, partition, batch bytes)`) and waits
    /// for the response. With `acks = 0` the result is empty once written.
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

    /// Queues a produce request on the connection now, and returns the handle
    /// that waits for its outcome. Requests started one after another are
    /// written, appended and answered in that order, which is how a producer
    /// keeps per-partition order with several requests in flight.
    pub async fn start_produce(
        &self,
        acks: i8,
        timeout: Duration,
        batches: Vec<(String, u32, Bytes)>,
    ) -> Result<InFlightProduce> {
        let mut partitions = Vec::with_capacity(batches.len());
        let mut payload = Vec::with_capacity(batches.len());
        let mut pos: u64 = 0;
        for (topic, partition, bytes) in batches {
            let len = u32::try_from(bytes.len()).ok();
            let off = u32::try_from(pos).ok();
            let (Some(len), Some(off)) = (len, off) else {
                return Err(ClientError::InvalidArgument(
                    "produce payload exceeds 4 GiB".into(),
                ));
            };
            partitions.push(ProducePartition {
                topic,
                partition,
                payload_offset: off,
                payload_len: len,
            });
            pos += u64::from(len);
            payload.push(bytes);
        }
        let conn = self.connection().await?;
        let max = conn.broker_max_frame_bytes() as u64;
        if pos + 4096 > max {
            return Err(ClientError::Server {
                code: ErrorCode::MessageTooLarge,
                message: format!(
                    "produce request of {pos} bytes exceeds the broker's max_frame_bytes {max}"
                ),
            });
        }
        let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        let req = Request::Produce(Box::new(Produce {
            acks,
            timeout_ms,
            partitions: Some(partitions),
        }));
        let wait = self.inner.config.request_timeout + timeout;
        let pending = if acks == 0 {
            Pending::Written(conn.enqueue_only(req, payload)?)
        } else {
            Pending::Reply(conn.enqueue(req, payload)?)
        };
        Ok(InFlightProduce {
            conn,
            pending,
            wait,
        })
    }

    /// Fetches stored batches. The broker waits up to `max_wait` for
    /// `min_bytes`; the response is at most `max_bytes` (at least one batch
    /// per partition with data). Batches are returned unvalidated: see
    /// [`crate::consumer::Consumer`] for validation and decoding.
    pub async fn fetch(
        &self,
        max_wait: Duration,
        min_bytes: u32,
        max_bytes: u32,
        partitions: &[FetchRequestPartition],
    ) -> Result<Vec<FetchedPartition>> {
        let req = Request::Fetch(Box::new(Fetch {
            max_wait_ms: u32::try_from(max_wait.as_millis()).unwrap_or(u32::MAX),
            min_bytes,
            max_bytes,
            partitions: Some(
                partitions
                    .iter()
                    .map(|p| FetchPartition {
                        topic: p.topic.clone(),
                        partition: p.partition,
                        offset: p.offset,
                        max_bytes: p.max_bytes,
                        leader_epoch: -1,
                    })
                    .collect(),
            ),
            replica_id: -1,
        }));
        let reply = self.call(req, Vec::new(), max_wait, "fetch").await?;
        let payload = reply.payload;
        let entries = match reply.header.response {
            Some(Response::FetchResponse(r)) => required(r.partitions),
            other => return Err(unexpected("FetchResponse", other.as_ref())),
        };
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let batches = if e.payload_len == 0 {
                Bytes::new()
            } else {
                let s = payload_slice(&payload, e.payload_offset, e.payload_len)
                    .map_err(|err| ClientError::Protocol(format!("fetch response: {err}")))?;
                payload.slice_ref(s)
            };
            out.push(FetchedPartition {
                topic: e.topic.unwrap_or_default(),
                partition: e.partition,
                error: e.error,
                message: e.message,
                high_watermark: e.high_watermark,
                log_start_offset: e.log_start_offset,
                batches,
            });
        }
        Ok(out)
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
    })
}

enum Pending {
    Reply(crate::connection::PendingReply),
    Written(crate::connection::PendingWrite),
}

/// A produce request already queued on its connection; see
/// [`Client::start_produce`].
pub struct InFlightProduce {
    conn: Arc<Connection>,
    pending: Pending,
    wait: Duration,
}

impl InFlightProduce {
    /// Waits for the response (or, with `acks = 0`, for the write).
    pub async fn wait(self) -> Result<Vec<ProducedPartition>> {
        let reply = match self.pending {
            Pending::Written(w) => {
                self.conn.wait_written(w, self.wait, "produce").await?;
                return Ok(Vec::new());
            }
            Pending::Reply(r) => self.conn.wait(r, self.wait, "produce").await?,
        };
        match reply.header.response {
            Some(Response::ProduceResponse(r)) => Ok(required(r.partitions)
                .into_iter()
                .map(|p| ProducedPartition {
                    topic: p.topic.unwrap_or_default(),
                    partition: p.partition,
                    error: p.error,
                    message: p.message,
                    base_offset: p.base_offset,
                    last_offset: p.last_offset,
                    log_start_offset: p.log_start_offset,
                })
                .collect()),
            other => Err(unexpected("ProduceResponse", other.as_ref())),
        }
    }
}
