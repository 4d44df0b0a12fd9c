//! A small Kafka-protocol client for `levee bench --protocol kafka`: enough
//! to drive any Kafka-compatible broker (Levee's Kafka port, Apache Kafka,
//! Redpanda) with the bench's own record batches and to read them back —
//! Metadata, CreateTopics, Produce (pipelined), Fetch and ListOffsets, at
//! fixed versions every current broker serves. It sends the batches the
//! bench builds, so a side-by-side run compares brokers, not client
//! libraries.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

const METADATA_V: i16 = 9;
const PRODUCE_V: i16 = 9;
const FETCH_V: i16 = 11;
const LIST_OFFSETS_V: i16 = 5;
const CREATE_TOPICS_V: i16 = 5;
const FIND_COORDINATOR_V: i16 = 1;
const JOIN_GROUP_V: i16 = 5;
const SYNC_GROUP_V: i16 = 3;
const HEARTBEAT_V: i16 = 3;
const LEAVE_GROUP_V: i16 = 1;
const OFFSET_COMMIT_V: i16 = 7;
const OFFSET_FETCH_V: i16 = 5;
const DESCRIBE_GROUPS_V: i16 = 3;

/// Kafka error codes that say the group's coordinator moved or is not
/// ready: COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE,
/// NOT_COORDINATOR.
pub fn coordinator_moved(code: i16) -> bool {
    matches!(code, 14..=16)
}

/// Kafka error codes a producer retries.
pub fn retriable(code: i16) -> bool {
    // NOT_LEADER_OR_FOLLOWER, LEADER_NOT_AVAILABLE, REQUEST_TIMED_OUT,
    // NOT_ENOUGH_REPLICAS(_AFTER_APPEND), UNKNOWN_TOPIC_OR_PARTITION (new
    // topics), THROTTLING_QUOTA_EXCEEDED (Levee's backlog bound).
    matches!(code, 3 | 5 | 6 | 7 | 19 | 20 | 89)
}

type Reply = oneshot::Sender<Result<Bytes, String>>;
/// (partition, offset) pairs.
type Positions = Vec<(u32, u64)>;

/// One pipelined connection: requests written in order, responses matched
/// in order (Kafka answers a connection's requests in order).
struct Conn {
    tx: mpsc::UnboundedSender<(Vec<u8>, Option<Reply>)>,
}

impl Conn {
    async fn connect(addr: &str) -> Result<Conn, String> {
        let s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let _ = s.set_nodelay(true);
        let (mut r, mut w) = s.into_split();
        let waiting: Arc<Mutex<VecDeque<Reply>>> = Arc::default();
        let (tx, mut rx) = mpsc::unbounded_channel::<(Vec<u8>, Option<Reply>)>();
        let w_waiting = waiting.clone();
        tokio::spawn(async move {
            while let Some((frame, reply)) = rx.recv().await {
                if let Some(reply) = reply {
                    w_waiting
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_back(reply);
                }
                if w.write_all(&frame).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            loop {
                let mut len = [0u8; 4];
                if r.read_exact(&mut len).await.is_err() {
                    break;
                }
                let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
                if r.read_exact(&mut body).await.is_err() {
                    break;
                }
                let reply = waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .pop_front();
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(Bytes::from(body)));
                }
            }
            for reply in waiting.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
                let _ = reply.send(Err("connection closed".into()));
            }
        });
        Ok(Conn { tx })
    }

    /// Sends a request now; the returned receiver gets the response body
    /// (after the response header). `expect_reply` false: no response
    /// (Produce with acks=0).
    fn send<R: Encodable>(
        &self,
        key: ApiKey,
        version: i16,
        req: &R,
        expect_reply: bool,
    ) -> Result<Option<oneshot::Receiver<Result<Bytes, String>>>, String> {
        let mut header = RequestHeader::default();
        header.request_api_key = key as i16;
        header.request_api_version = version;
        header.correlation_id = 0;
        header.client_id = Some(StrBytes::from_static_str("levee-bench"));
        let mut buf = BytesMut::with_capacity(256);
        buf.extend_from_slice(&[0; 4]);
        header
            .encode(&mut buf, key.request_header_version(version))
            .map_err(|e| e.to_string())?;
        req.encode(&mut buf, version).map_err(|e| e.to_string())?;
        let len = (buf.len() - 4) as u32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        let (reply, rx) = if expect_reply {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        self.tx
            .send((buf.to_vec(), reply))
            .map_err(|_| "connection closed".to_string())?;
        Ok(rx)
    }

    async fn call<R: Encodable, T: Decodable>(
        &self,
        key: ApiKey,
        version: i16,
        req: &R,
    ) -> Result<T, String> {
        let rx = self.send(key, version, req, true)?.ok_or("no reply")?;
        let body = rx.await.map_err(|_| "connection closed".to_string())??;
        decode_response(key, version, body)
    }
}

fn decode_response<T: Decodable>(key: ApiKey, version: i16, mut body: Bytes) -> Result<T, String> {
    ResponseHeader::decode(&mut body, key.response_header_version(version))
        .map_err(|e| e.to_string())?;
    T::decode(&mut body, version).map_err(|e| format!("{key:?} response: {e}"))
}

/// A produce request on its way; resolve it with [`PendingProduce::wait`].
pub struct PendingProduce {
    rx: Option<oneshot::Receiver<Result<Bytes, String>>>,
}

impl PendingProduce {
    /// The partition's error code (0: acknowledged), or a transport error.
    pub async fn wait(self) -> Result<i16, String> {
        let Some(rx) = self.rx else {
            return Ok(0);
        };
        let body = rx.await.map_err(|_| "connection closed".to_string())??;
        let resp: ProduceResponse = decode_response(ApiKey::Produce, PRODUCE_V, body)?;
        resp.responses
            .first()
            .and_then(|t| t.partition_responses.first())
            .map(|p| p.error_code)
            .ok_or_else(|| "an empty produce response".to_string())
    }
}

/// Partition leaders and broker addresses from Metadata.
#[derive(Default)]
struct Meta {
    brokers: HashMap<i32, String>,
    leaders: HashMap<(String, i32), i32>,
}

/// A Kafka client over a few pipelined connections (one per broker).
pub struct KafkaClient {
    bootstrap: Vec<String>,
    conns: tokio::sync::Mutex<HashMap<i32, Arc<Conn>>>,
    meta: Mutex<Meta>,
    /// Each group's coordinator, once found.
    coordinators: tokio::sync::Mutex<HashMap<String, Arc<Conn>>>,
}

impl KafkaClient {
    pub async fn connect(bootstrap: &[String]) -> Result<KafkaClient, String> {
        let c = KafkaClient {
            bootstrap: bootstrap.to_vec(),
            conns: Default::default(),
            meta: Default::default(),
            coordinators: Default::default(),
        };
        c.refresh(&[]).await?;
        Ok(c)
    }

    async fn any_conn(&self) -> Result<Arc<Conn>, String> {
        let mut last = String::from("no bootstrap address");
        for b in &self.bootstrap {
            match Conn::connect(b).await {
                Ok(c) => return Ok(Arc::new(c)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Reloads metadata (for `topics`, or only the brokers when empty);
    /// returns each topic's partition count (missing: unknown topic).
    async fn refresh(&self, topics: &[&str]) -> Result<HashMap<String, u32>, String> {
        let conn = self.any_conn().await?;
        let mut req = MetadataRequest::default();
        req.topics = Some(
            topics
                .iter()
                .map(|t| {
                    let mut mt = metadata_request::MetadataRequestTopic::default();
                    mt.name = Some(TopicName(StrBytes::from_string(t.to_string())));
                    mt
                })
                .collect(),
        );
        let resp: MetadataResponse = conn.call(ApiKey::Metadata, METADATA_V, &req).await?;
        let mut counts = HashMap::new();
        let mut m = self.meta.lock().unwrap_or_else(|p| p.into_inner());
        for b in &resp.brokers {
            m.brokers
                .insert(b.node_id.0, format!("{}:{}", b.host.as_str(), b.port));
        }
        for t in &resp.topics {
            let Some(name) = &t.name else { continue };
            if t.error_code != 0 {
                continue;
            }
            counts.insert(name.as_str().to_string(), t.partitions.len() as u32);
            for p in &t.partitions {
                m.leaders.insert(
                    (name.as_str().to_string(), p.partition_index),
                    p.leader_id.0,
                );
            }
        }
        Ok(counts)
    }

    async fn leader_conn(&self, topic: &str, partition: i32) -> Result<Arc<Conn>, String> {
        let node = {
            let m = self.meta.lock().unwrap_or_else(|p| p.into_inner());
            m.leaders.get(&(topic.to_string(), partition)).copied()
        };
        let node = match node {
            Some(n) if n >= 0 => n,
            _ => {
                self.refresh(&[topic]).await?;
                let m = self.meta.lock().unwrap_or_else(|p| p.into_inner());
                m.leaders
                    .get(&(topic.to_string(), partition))
                    .copied()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| format!("no leader for {topic}/{partition}"))?
            }
        };
        let mut conns = self.conns.lock().await;
        if let Some(c) = conns.get(&node) {
            return Ok(c.clone());
        }
        let addr = {
            let m = self.meta.lock().unwrap_or_else(|p| p.into_inner());
            m.brokers.get(&node).cloned()
        }
        .ok_or_else(|| format!("broker {node} is not in the metadata"))?;
        let c = Arc::new(Conn::connect(&addr).await?);
        conns.insert(node, c.clone());
        Ok(c)
    }

    /// Forgets leaders and connections, after an error that says they moved.
    pub async fn invalidate(&self) {
        self.meta
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .leaders
            .clear();
        self.conns.lock().await.clear();
    }

    /// The topic's partition count, creating it with `partitions` (and
    /// replication factor `rf`) when it does not exist.
    pub async fn ensure_topic(&self, topic: &str, partitions: u32, rf: i16) -> Result<u32, String> {
        if let Some(&n) = self.refresh(&[topic]).await?.get(topic) {
            return Ok(n);
        }
        let conn = self.any_conn().await?;
        let mut t = create_topics_request::CreatableTopic::default();
        t.name = TopicName(StrBytes::from_string(topic.to_string()));
        t.num_partitions = partitions as i32;
        t.replication_factor = rf;
        let mut req = CreateTopicsRequest::default();
        req.topics = vec![t];
        req.timeout_ms = 10_000;
        let resp: CreateTopicsResponse = conn
            .call(ApiKey::CreateTopics, CREATE_TOPICS_V, &req)
            .await?;
        if let Some(r) = resp.topics.first() {
            if r.error_code != 0 && r.error_code != 36 {
                return Err(format!(
                    "creating topic `{topic}`: Kafka error {} {}",
                    r.error_code,
                    r.error_message.as_ref().map_or("", |m| m.as_str())
                ));
            }
        }
        for _ in 0..100 {
            if let Some(&n) = self.refresh(&[topic]).await?.get(topic) {
                return Ok(n);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("topic `{topic}` did not appear in the metadata"))
    }

    /// Sends one batch to its partition's leader; the acknowledgement is
    /// awaited separately (pipelining).
    pub async fn start_produce(
        &self,
        topic: &str,
        partition: u32,
        acks: i16,
        batch: Bytes,
    ) -> Result<PendingProduce, String> {
        let conn = self.leader_conn(topic, partition as i32).await?;
        let mut pd = produce_request::PartitionProduceData::default();
        pd.index = partition as i32;
        pd.records = Some(batch);
        let mut td = produce_request::TopicProduceData::default();
        td.name = TopicName(StrBytes::from_string(topic.to_string()));
        td.partition_data = vec![pd];
        let mut req = ProduceRequest::default();
        req.acks = acks;
        req.timeout_ms = 30_000;
        req.topic_data = vec![td];
        let rx = conn.send(ApiKey::Produce, PRODUCE_V, &req, acks != 0)?;
        Ok(PendingProduce { rx })
    }

    /// One fetch of `parts` ((partition, offset)) from their leaders: per
    /// partition, the stored batches and the high watermark, or a Kafka
    /// error code.
    pub async fn fetch(
        &self,
        topic: &str,
        parts: &[(u32, u64)],
        max_wait: Duration,
        max_bytes: i32,
        partition_max_bytes: i32,
    ) -> Result<Vec<(u32, Result<(Bytes, i64), i16>)>, String> {
        // Group by leader, then one request per leader.
        let mut by_conn: Vec<(Arc<Conn>, Positions)> = Vec::new();
        for &(p, off) in parts {
            let c = self.leader_conn(topic, p as i32).await?;
            match by_conn.iter_mut().find(|(k, _)| Arc::ptr_eq(k, &c)) {
                Some((_, v)) => v.push((p, off)),
                None => by_conn.push((c, vec![(p, off)])),
            }
        }
        let mut waits = Vec::new();
        for (conn, ps) in &by_conn {
            let mut ft = fetch_request::FetchTopic::default();
            ft.topic = TopicName(StrBytes::from_string(topic.to_string()));
            ft.partitions = ps
                .iter()
                .map(|&(p, off)| {
                    let mut fp = fetch_request::FetchPartition::default();
                    fp.partition = p as i32;
                    fp.fetch_offset = off as i64;
                    fp.partition_max_bytes = partition_max_bytes;
                    fp.current_leader_epoch = -1;
                    fp.log_start_offset = -1;
                    fp
                })
                .collect();
            let mut req = FetchRequest::default();
            req.replica_id = BrokerId(-1);
            req.max_wait_ms = max_wait.as_millis() as i32;
            req.min_bytes = 1;
            req.max_bytes = max_bytes;
            req.session_epoch = -1;
            req.topics = vec![ft];
            let rx = conn
                .send(ApiKey::Fetch, FETCH_V, &req, true)?
                .ok_or("no reply")?;
            waits.push(rx);
        }
        let mut out = Vec::new();
        for rx in waits {
            let body = rx.await.map_err(|_| "connection closed".to_string())??;
            let resp: FetchResponse = decode_response(ApiKey::Fetch, FETCH_V, body)?;
            for t in resp.responses {
                for p in t.partitions {
                    let r = if p.error_code == 0 {
                        Ok((p.records.unwrap_or_default(), p.high_watermark))
                    } else {
                        Err(p.error_code)
                    };
                    out.push((p.partition_index as u32, r));
                }
            }
        }
        Ok(out)
    }

    /// Each partition's offset for `spec` (-2 earliest, -1 latest).
    pub async fn list_offsets(
        &self,
        topic: &str,
        partitions: u32,
        spec: i64,
    ) -> Result<HashMap<u32, u64>, String> {
        let mut out = HashMap::new();
        for p in 0..partitions {
            let conn = self.leader_conn(topic, p as i32).await?;
            let mut lp = list_offsets_request::ListOffsetsPartition::default();
            lp.partition_index = p as i32;
            lp.timestamp = spec;
            lp.current_leader_epoch = -1;
            let mut lt = list_offsets_request::ListOffsetsTopic::default();
            lt.name = TopicName(StrBytes::from_string(topic.to_string()));
            lt.partitions = vec![lp];
            let mut req = ListOffsetsRequest::default();
            req.replica_id = BrokerId(-1);
            req.topics = vec![lt];
            let resp: ListOffsetsResponse =
                conn.call(ApiKey::ListOffsets, LIST_OFFSETS_V, &req).await?;
            let r = resp
                .topics
                .first()
                .and_then(|t| t.partitions.first())
                .ok_or("an empty list-offsets response")?;
            if r.error_code != 0 {
                return Err(format!(
                    "list offsets of {topic}/{p}: Kafka error {}",
                    r.error_code
                ));
            }
            out.insert(p, r.offset.max(0) as u64);
        }
        Ok(out)
    }

    /// The connection to `group`'s coordinator (FindCoordinator, retried
    /// while the coordinator is not available, up to 10 s).
    async fn coordinator(&self, group: &str) -> Result<Arc<Conn>, String> {
        if let Some(c) = self.coordinators.lock().await.get(group) {
            return Ok(c.clone());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let addr = loop {
            let conn = self.any_conn().await?;
            let mut req = FindCoordinatorRequest::default();
            req.key = StrBytes::from_string(group.to_string());
            let resp: FindCoordinatorResponse = conn
                .call(ApiKey::FindCoordinator, FIND_COORDINATOR_V, &req)
                .await?;
            if resp.error_code == 0 {
                break format!("{}:{}", resp.host.as_str(), resp.port);
            }
            if !coordinator_moved(resp.error_code) || tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "finding the coordinator of group `{group}`: Kafka error {}",
                    resp.error_code
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let c = Arc::new(Conn::connect(&addr).await?);
        self.coordinators
            .lock()
            .await
            .insert(group.to_string(), c.clone());
        Ok(c)
    }

    /// Forgets `group`'s coordinator, after an error that says it moved.
    pub async fn forget_coordinator(&self, group: &str) {
        self.coordinators.lock().await.remove(group);
    }

    /// A group request to its coordinator; a transport error forgets it.
    async fn group_call<R: Encodable, T: Decodable>(
        &self,
        group: &str,
        key: ApiKey,
        version: i16,
        req: &R,
    ) -> Result<T, String> {
        let conn = self.coordinator(group).await?;
        let r = conn.call(key, version, req).await;
        if r.is_err() {
            self.forget_coordinator(group).await;
        }
        r
    }

    /// JoinGroup (classic protocol, type `consumer`, the range assignor)
    /// subscribing to `topic`.
    pub async fn join_group(
        &self,
        group: &str,
        member_id: &str,
        topic: &str,
        session_ms: i32,
    ) -> Result<JoinGroupResponse, String> {
        let mut sub = ConsumerProtocolSubscription::default();
        sub.topics = vec![StrBytes::from_string(topic.to_string())];
        let mut meta = BytesMut::new();
        meta.extend_from_slice(&0i16.to_be_bytes());
        sub.encode(&mut meta, 0).map_err(|e| e.to_string())?;
        let mut p = join_group_request::JoinGroupRequestProtocol::default();
        p.name = StrBytes::from_static_str("range");
        p.metadata = meta.freeze();
        let mut req = JoinGroupRequest::default();
        req.group_id = GroupId(StrBytes::from_string(group.to_string()));
        req.session_timeout_ms = session_ms;
        req.rebalance_timeout_ms = session_ms;
        req.member_id = StrBytes::from_string(member_id.to_string());
        req.protocol_type = StrBytes::from_static_str("consumer");
        req.protocols = vec![p];
        self.group_call(group, ApiKey::JoinGroup, JOIN_GROUP_V, &req)
            .await
    }

    /// SyncGroup: the leader sends every member's partitions of `topic`;
    /// the others send none. Returns (error, this member's partitions).
    pub async fn sync_group(
        &self,
        group: &str,
        generation: i32,
        member_id: &str,
        topic: &str,
        assignments: &[(String, Vec<i32>)],
    ) -> Result<(i16, Vec<u32>), String> {
        let mut req = SyncGroupRequest::default();
        req.group_id = GroupId(StrBytes::from_string(group.to_string()));
        req.generation_id = generation;
        req.member_id = StrBytes::from_string(member_id.to_string());
        for (member, parts) in assignments {
            let mut tp = consumer_protocol_assignment::TopicPartition::default();
            tp.topic = TopicName(StrBytes::from_string(topic.to_string()));
            tp.partitions = parts.clone();
            let mut a = ConsumerProtocolAssignment::default();
            a.assigned_partitions = vec![tp];
            let mut buf = BytesMut::new();
            buf.extend_from_slice(&0i16.to_be_bytes());
            a.encode(&mut buf, 0).map_err(|e| e.to_string())?;
            let mut sa = sync_group_request::SyncGroupRequestAssignment::default();
            sa.member_id = StrBytes::from_string(member.clone());
            sa.assignment = buf.freeze();
            req.assignments.push(sa);
        }
        let resp: SyncGroupResponse = self
            .group_call(group, ApiKey::SyncGroup, SYNC_GROUP_V, &req)
            .await?;
        if resp.error_code != 0 {
            return Ok((resp.error_code, Vec::new()));
        }
        let mut body = resp.assignment;
        if body.len() < 2 {
            return Ok((0, Vec::new()));
        }
        let version = i16::from_be_bytes([body[0], body[1]]);
        let _ = body.split_to(2);
        let a = ConsumerProtocolAssignment::decode(&mut body, version.clamp(0, 3))
            .map_err(|e| format!("a SyncGroup assignment: {e}"))?;
        Ok((
            0,
            a.assigned_partitions
                .iter()
                .filter(|t| t.topic.as_str() == topic)
                .flat_map(|t| t.partitions.iter().map(|p| *p as u32))
                .collect(),
        ))
    }

    /// Heartbeat: the error code (0: still a member of that generation).
    pub async fn heartbeat(
        &self,
        group: &str,
        generation: i32,
        member_id: &str,
    ) -> Result<i16, String> {
        let mut req = HeartbeatRequest::default();
        req.group_id = GroupId(StrBytes::from_string(group.to_string()));
        req.generation_id = generation;
        req.member_id = StrBytes::from_string(member_id.to_string());
        let resp: HeartbeatResponse = self
            .group_call(group, ApiKey::Heartbeat, HEARTBEAT_V, &req)
            .await?;
        Ok(resp.error_code)
    }

    /// LeaveGroup of one member.
    pub async fn leave_group(&self, group: &str, member_id: &str) -> Result<i16, String> {
        let mut req = LeaveGroupRequest::default();
        req.group_id = GroupId(StrBytes::from_string(group.to_string()));
        req.member_id = StrBytes::from_string(member_id.to_string());
        let resp: LeaveGroupResponse = self
            .group_call(group, ApiKey::LeaveGroup, LEAVE_GROUP_V, &req)
            .await?;
        Ok(resp.error_code)
    }

    /// OffsetCommit of `offsets` ((partition, offset)) of `topic` as
    /// `member_id` in `generation` (an administrative commit: "" and -1).
    /// Ok(0), or the first error code.
    pub async fn offset_commit(
        &self,
        group: &str,
        generation: i32,
        member_id: &str,
        topic: &str,
        offsets: &[(u32, u64)],
    ) -> Result<i16, String> {
        let mut t = offset_commit_request::OffsetCommitRequestTopic::default();
        t.name = TopicName(StrBytes::from_string(topic.to_string()));
        t.partitions = offsets
            .iter()
            .map(|&(p, o)| {
                let mut op = offset_commit_request::OffsetCommitRequestPartition::default();
                op.partition_index = p as i32;
                op.committed_offset = o as i64;
                op.committed_leader_epoch = -1;
                op
            })
            .collect();
        let mut req = OffsetCommitRequest::default();
        req.group_id = GroupId(StrBytes::from_string(group.to_string()));
        req.generation_id_or_member_epoch = generation;
        req.member_id = StrBytes::from_string(member_id.to_string());
        req.topics = vec![t];
        let resp: OffsetCommitResponse = self
            .group_call(group, ApiKey::OffsetCommit, OFFSET_COMMIT_V, &req)
            .await?;
        Ok(resp
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .find(|e| *e != 0)
            .unwrap_or(0))
    }

    /// The group's committed offsets of `topic`'s first `partitions`
    /// partitions (those with none are left out).
    pub async fn offset_fetch(
        &self,
        group: &str,
        topic: &str,
        partitions: u32,
    ) -> Result<HashMap<u32, u64>, String> {
        let mut t = offset_fetch_request::OffsetFetchRequestTopic::default();
        t.name = TopicName(StrBytes::from_string(topic.to_string()));
        t.partition_indexes = (0..partitions as i32).collect();
        let mut req = OffsetFetchRequest::default();
        req.group_id = GroupId(StrBytes::from_string(group.to_string()));
        req.topics = Some(vec![t]);
        let resp: OffsetFetchResponse = self
            .group_call(group, ApiKey::OffsetFetch, OFFSET_FETCH_V, &req)
            .await?;
        if resp.error_code != 0 {
            if coordinator_moved(resp.error_code) {
                self.forget_coordinator(group).await;
            }
            return Err(format!(
                "offsets of group `{group}`: Kafka error {}",
                resp.error_code
            ));
        }
        Ok(resp
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter())
            .filter(|p| p.error_code == 0 && p.committed_offset >= 0)
            .map(|p| (p.partition_index as u32, p.committed_offset as u64))
            .collect())
    }

    /// The group's state, member count and generation (DescribeGroups).
    pub async fn describe_group(&self, group: &str) -> Result<(String, usize, i32), String> {
        let mut req = DescribeGroupsRequest::default();
        req.groups = vec![GroupId(StrBytes::from_string(group.to_string()))];
        let resp: DescribeGroupsResponse = self
            .group_call(group, ApiKey::DescribeGroups, DESCRIBE_GROUPS_V, &req)
            .await?;
        let g = resp
            .groups
            .first()
            .ok_or("an empty DescribeGroups response")?;
        if g.error_code != 0 {
            if coordinator_moved(g.error_code) {
                self.forget_coordinator(group).await;
            }
            return Err(format!(
                "describe group `{group}`: Kafka error {}",
                g.error_code
            ));
        }
        // DescribeGroups v3 has no generation; the members' count and the
        // state are what the bench needs. -1: unknown.
        Ok((g.group_state.to_string(), g.members.len(), -1))
    }
}
