//! Fault injection for the client: an in-process broker double that speaks
//! the real wire protocol (frames, Hello, admin, produce, fetch, list
//! offsets) over real TCP and can be told to misbehave in ways the real
//! broker cannot be made to on demand (NotLeader replies, corrupted fetch
//! bytes, dropped connections mid-request, expelled group members). It also
//! runs a minimal group coordinator (join returns at once; a membership
//! change makes the other members' heartbeats answer RebalanceInProgress
//! until they join again). The client's behaviour against the real `levee`
//! binary is tested in the top-level `tests/` folder.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use levee_client::{
    Client, ClientConfig, ClientError, Compression, ConsumedRecord, Consumer, ConsumerConfig,
    ErrorCode, GroupConsumer, GroupConsumerConfig, OffsetCommit, OffsetReset, OffsetSpec, Producer,
    ProducerConfig, StartPosition, TopicSettings,
};
use levee_engine::batch::{self, BatchHeader};
use levee_schemas::proto::*;
use levee_schemas::{decode_request, frame_len, response_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Log {
    batches: Vec<Vec<u8>>,
    next: u64,
}

struct Member {
    id: String,
    topics: Vec<String>,
    /// The group changed since this member joined: heartbeats answer
    /// RebalanceInProgress until it joins again.
    stale: bool,
    /// The generation it joined.
    generation: i32,
}

#[derive(Default)]
struct Group {
    generation: i32,
    members: Vec<Member>,
    offsets: BTreeMap<(String, u32), i64>,
    next_id: u32,
}

impl Group {
    fn changed(&mut self) {
        self.generation += 1;
        for m in &mut self.members {
            m.stale = true;
        }
    }

    /// Round robin over the members, in join order.
    fn assignment(
        &self,
        topics: &BTreeMap<String, Vec<Log>>,
        member: &str,
    ) -> Vec<TopicPartitions> {
        let mut subscribed: Vec<&String> = self.members.iter().flat_map(|m| &m.topics).collect();
        subscribed.sort();
        subscribed.dedup();
        let all: Vec<(String, u32)> = subscribed
            .into_iter()
            .flat_map(|t| {
                let n = topics.get(t).map_or(0, Vec::len) as u32;
                (0..n).map(move |p| (t.clone(), p))
            })
            .collect();
        let Some(idx) = self.members.iter().position(|m| m.id == member) else {
            return Vec::new();
        };
        let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (i, (t, p)) in all.into_iter().enumerate() {
            if i % self.members.len() == idx {
                out.entry(t).or_default().push(p);
            }
        }
        out.into_iter()
            .map(|(topic, ps)| TopicPartitions {
                topic,
                partitions: Some(ps),
            })
            .collect()
    }
}

/// Brokers, and each partition's leader.
type ClusterView = (Vec<Broker>, BTreeMap<(String, u32), u32>);

#[derive(Default)]
struct State {
    topics: BTreeMap<String, Vec<Log>>,
    groups: BTreeMap<String, Group>,
    corrupt_fetch: AtomicBool,
    /// Close the connection instead of answering the next fetch.
    drop_next_fetch: AtomicBool,
    /// Answer this many produce requests with NotLeader first.
    not_leader: AtomicUsize,
    produce_requests: AtomicUsize,
    connections: AtomicUsize,
    heartbeats: AtomicUsize,
    /// This double's node id (in Hello and its own metadata).
    node_id: u32,
    /// Its address, `127.0.0.1:PORT`.
    addr: String,
    /// What Metadata answers instead of "just me, leading everything":
    /// the brokers, and each partition's leader (u32::MAX: none).
    cluster: Option<ClusterView>,
    /// Answer every produce and fetch partition with NotLeader.
    not_leader_always: AtomicBool,
    metadata_requests: AtomicUsize,
    fetch_requests: AtomicUsize,
    /// The largest batch this double says (in Hello) it accepts; 0: says nothing.
    max_batch_bytes: u32,
}

async fn start() -> (String, Arc<Mutex<State>>) {
    start_node(0).await
}

async fn start_node(node_id: u32) -> (String, Arc<Mutex<State>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let state = Arc::new(Mutex::new(State {
        node_id,
        addr: addr.clone(),
        ..State::default()
    }));
    let s = state.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            s.lock().unwrap().connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(sock, s.clone()));
        }
    });
    (addr, state)
}

fn reply(id: u64, r: Response, payload: &[u8]) -> Vec<u8> {
    response_frame(
        &ResponseHeader {
            correlation_id: id,
            error: ErrorCode::None,
            message: None,
            response: Some(r),
        },
        payload,
    )
}

fn describe(name: &str, logs: Option<&Vec<Log>>) -> TopicDescription {
    match logs {
        None => TopicDescription {
            name: Some(name.into()),
            error: ErrorCode::UnknownTopicOrPartition,
            ..Default::default()
        },
        Some(logs) => TopicDescription {
            name: Some(name.into()),
            error: ErrorCode::None,
            message: None,
            id: None,
            config: Some(Box::new(TopicConfig {
                partitions: logs.len() as u32,
                replication_factor: 1,
                retention_bytes: -1,
                retention_ms: -1,
                fsync: Some("never".into()),
                max_backlog_bytes: -1,
                segment_bytes: -1,
                max_message_bytes: -1,
            })),
            partitions: Some(
                logs.iter()
                    .enumerate()
                    .map(|(i, l)| PartitionInfo {
                        partition: i as u32,
                        log_end_offset: l.next,
                        high_watermark: l.next,
                        size_bytes: l.batches.iter().map(Vec::len).sum::<usize>() as u64,
                        ..Default::default()
                    })
                    .collect(),
            ),
        },
    }
}

enum Action {
    Reply(Vec<u8>, Duration),
    Nothing,
    Close,
}

async fn serve(mut sock: TcpStream, state: Arc<Mutex<State>>) {
    loop {
        let mut prefix = [0u8; 4];
        if sock.read_exact(&mut prefix).await.is_err() {
            return;
        }
        let len = frame_len(prefix, 64 << 20).unwrap();
        let mut body = vec![0u8; len];
        sock.read_exact(&mut body).await.unwrap();
        let action = handle(&state, &body);
        match action {
            Action::Reply(frame, delay) => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if sock.write_all(&frame).await.is_err() {
                    return;
                }
            }
            Action::Nothing => {}
            Action::Close => return,
        }
    }
}

fn handle(state: &Mutex<State>, body: &[u8]) -> Action {
    let (header, payload) = decode_request(body).unwrap();
    let id = header.correlation_id;
    let mut delay = Duration::ZERO;
    let frame = {
        let mut st = state.lock().unwrap();
        match header.request {
            Request::Hello(h) => {
                assert_eq!(id, 0);
                assert_eq!(h.min_version, levee_schemas::PROTOCOL_VERSION);
                reply(
                    id,
                    Response::HelloResponse(Box::new(HelloResponse {
                        version: levee_schemas::PROTOCOL_VERSION,
                        server: Some("mock".into()),
                        node_id: st.node_id,
                        max_frame_bytes: 64 << 20,
                        max_batch_bytes: st.max_batch_bytes,
                    })),
                    &[],
                )
            }
            Request::CreateTopic(c) => {
                let error = if st.topics.contains_key(&c.name) {
                    ErrorCode::TopicAlreadyExists
                } else {
                    let n = c.config.map_or(1, |c| c.partitions);
                    st.topics
                        .insert(c.name.clone(), (0..n).map(|_| Log::default()).collect());
                    ErrorCode::None
                };
                reply(
                    id,
                    Response::TopicResult(Box::new(TopicResult {
                        name: Some(c.name),
                        error,
                        message: None,
                    })),
                    &[],
                )
            }
            Request::DeleteTopic(d) => {
                let error = match st.topics.remove(&d.name) {
                    Some(_) => ErrorCode::None,
                    None => ErrorCode::UnknownTopicOrPartition,
                };
                reply(
                    id,
                    Response::TopicResult(Box::new(TopicResult {
                        name: Some(d.name),
                        error,
                        message: None,
                    })),
                    &[],
                )
            }
            Request::ListTopics(_) => reply(
                id,
                Response::ListTopicsResponse(Box::new(ListTopicsResponse {
                    names: Some(st.topics.keys().cloned().collect()),
                })),
                &[],
            ),
            Request::DescribeTopic(d) => reply(
                id,
                Response::TopicDescription(Box::new(describe(&d.name, st.topics.get(&d.name)))),
                &[],
            ),
            Request::Metadata(_) => {
                st.metadata_requests.fetch_add(1, Ordering::SeqCst);
                let (brokers, leaders) = match &st.cluster {
                    Some((b, l)) => (b.clone(), l.clone()),
                    None => {
                        let (host, port) = st.addr.rsplit_once(':').unwrap();
                        (
                            vec![Broker {
                                node_id: st.node_id,
                                host: Some(host.to_string()),
                                port: port.parse().unwrap(),
                            }],
                            BTreeMap::new(),
                        )
                    }
                };
                let topics = st
                    .topics
                    .iter()
                    .map(|(name, logs)| {
                        let mut d = describe(name, Some(logs));
                        for p in d.partitions.iter_mut().flatten() {
                            p.leader = leaders
                                .get(&(name.clone(), p.partition))
                                .copied()
                                .unwrap_or(st.node_id);
                            p.leader_epoch = 1;
                        }
                        d
                    })
                    .collect();
                reply(
                    id,
                    Response::MetadataResponse(Box::new(MetadataResponse {
                        brokers: Some(brokers),
                        topics: Some(topics),
                    })),
                    &[],
                )
            }
            // Idempotent producers (the default with acks=all) take an id
            // first; this fake broker does not check their sequences.
            Request::InitProducerId(_) => reply(
                id,
                Response::ProducerIdResponse(Box::new(ProducerIdResponse {
                    error: ErrorCode::None,
                    message: None,
                    producer_id: 1,
                    producer_epoch: 0,
                })),
                &[],
            ),
            Request::OffsetForLeaderEpoch(_)
            | Request::ClusterStatus(_)
            | Request::AddPartitions(_)
            | Request::AlterTopic(_)
            | Request::ListTransactions(_)
            | Request::WriteTxnMarker(_)
            | Request::CommitTxnOffsets(_)
            | Request::AddTxnOffsets(_)
            | Request::FindTxnCoordinator(_)
            | Request::AddPartitionsToTxn(_)
            | Request::AddOffsetsToTxn(_)
            | Request::TxnOffsetCommit(_)
            | Request::EndTxn(_)
            | Request::DeleteRecords(_) => unimplemented!(),
            Request::Produce(p) => {
                st.produce_requests.fetch_add(1, Ordering::SeqCst);
                let not_leader = st.not_leader.load(Ordering::SeqCst) > 0
                    || st.not_leader_always.load(Ordering::SeqCst);
                if not_leader {
                    st.not_leader.fetch_sub(1, Ordering::SeqCst);
                }
                let mut out = Vec::new();
                for e in p.partitions.unwrap_or_default() {
                    let mut r = ProducePartitionResponse {
                        topic: Some(e.topic.clone()),
                        partition: e.partition,
                        ..Default::default()
                    };
                    let log = st
                        .topics
                        .get_mut(&e.topic)
                        .and_then(|l| l.get_mut(e.partition as usize));
                    match log {
                        _ if not_leader => r.error = ErrorCode::NotLeader,
                        None => r.error = ErrorCode::UnknownTopicOrPartition,
                        Some(log) => {
                            let bytes = levee_schemas::payload_slice(
                                payload,
                                e.payload_offset,
                                e.payload_len,
                            )
                            .unwrap();
                            r.base_offset = log.next;
                            for b in batch::split_batches(bytes) {
                                let h = batch::validate_produced(b, 1 << 24).unwrap();
                                let n = u64::from(h.record_count());
                                let mut b = b.to_vec();
                                batch::assign(&mut b, log.next, 0);
                                log.next += n;
                                log.batches.push(b);
                            }
                            r.last_offset = log.next - 1;
                        }
                    }
                    out.push(r);
                }
                if p.acks == 0 {
                    return Action::Nothing;
                }
                reply(
                    id,
                    Response::ProduceResponse(Box::new(ProduceResponse {
                        partitions: Some(out),
                    })),
                    &[],
                )
            }
            Request::Fetch(f) => {
                st.fetch_requests.fetch_add(1, Ordering::SeqCst);
                if st.drop_next_fetch.swap(false, Ordering::SeqCst) {
                    return Action::Close;
                }
                let not_leader = st.not_leader_always.load(Ordering::SeqCst);
                let mut data = Vec::new();
                let mut out = Vec::new();
                for e in f.partitions.unwrap_or_default() {
                    let mut r = FetchPartitionResponse {
                        topic: Some(e.topic.clone()),
                        partition: e.partition,
                        ..Default::default()
                    };
                    match st
                        .topics
                        .get(&e.topic)
                        .and_then(|l| l.get(e.partition as usize))
                    {
                        _ if not_leader => r.error = ErrorCode::NotLeader,
                        None => r.error = ErrorCode::UnknownTopicOrPartition,
                        Some(log) if e.offset > log.next => {
                            r.error = ErrorCode::OffsetOutOfRange;
                            r.high_watermark = log.next;
                        }
                        Some(log) => {
                            r.high_watermark = log.next;
                            r.payload_offset = data.len() as u32;
                            let start = data.len();
                            for b in &log.batches {
                                let h = BatchHeader::parse(b).unwrap();
                                // Whole batches up to max_bytes, at least one.
                                if data.len() > start
                                    && data.len() - start + b.len() > e.max_bytes as usize
                                {
                                    break;
                                }
                                if h.next_offset() > e.offset {
                                    data.extend_from_slice(b);
                                }
                            }
                            r.payload_len = data.len() as u32 - r.payload_offset;
                        }
                    }
                    out.push(r);
                }
                if data.is_empty() {
                    // Long poll: pretend to wait.
                    delay = Duration::from_millis(u64::from(f.max_wait_ms).min(50));
                }
                if st.corrupt_fetch.load(Ordering::SeqCst) && !data.is_empty() {
                    let last = data.len() - 1;
                    data[last] ^= 1;
                }
                reply(
                    id,
                    Response::FetchResponse(Box::new(FetchResponse {
                        partitions: Some(out),
                    })),
                    &data,
                )
            }
            Request::ListOffsets(l) => {
                let mut out = Vec::new();
                for e in l.partitions.unwrap_or_default() {
                    let log = st
                        .topics
                        .get(&e.topic)
                        .and_then(|l| l.get(e.partition as usize));
                    out.push(ListOffsetsPartitionResponse {
                        topic: Some(e.topic.clone()),
                        partition: e.partition,
                        error: if log.is_some() {
                            ErrorCode::None
                        } else {
                            ErrorCode::UnknownTopicOrPartition
                        },
                        message: None,
                        offset: match (e.spec, log) {
                            (-2, _) => 0,
                            (_, Some(l)) => l.next as i64,
                            _ => -1,
                        },
                    });
                }
                reply(
                    id,
                    Response::ListOffsetsResponse(Box::new(ListOffsetsResponse {
                        partitions: Some(out),
                    })),
                    &[],
                )
            }
            // A minimal coordinator; tests/ covers the real broker's.
            Request::JoinGroup(j) => {
                let st = &mut *st;
                let g = st.groups.entry(j.group.clone()).or_default();
                let mut mid = j.member_id.clone().unwrap_or_default();
                let topics = j.topics.clone().unwrap_or_default();
                let error = if mid.is_empty() {
                    g.next_id += 1;
                    mid = format!("member-{}", g.next_id);
                    g.changed();
                    g.members.push(Member {
                        id: mid.clone(),
                        topics,
                        stale: false,
                        generation: 0,
                    });
                    ErrorCode::None
                } else if g.members.iter().any(|m| m.id == mid) {
                    ErrorCode::None
                } else {
                    ErrorCode::UnknownMemberId
                };
                let generation = g.generation;
                if let Some(m) = g.members.iter_mut().find(|m| m.id == mid) {
                    m.stale = false;
                    m.generation = generation;
                }
                let assignment = g.assignment(&st.topics, &mid);
                reply(
                    id,
                    Response::JoinGroupResponse(Box::new(JoinGroupResponse {
                        error,
                        message: None,
                        generation,
                        member_id: Some(mid),
                        strategy: Some("roundrobin".into()),
                        assignment: Some(assignment),
                        heartbeat_interval_ms: 100,
                    })),
                    &[],
                )
            }
            Request::Heartbeat(h) => {
                let error = match st.groups.get(&h.group).and_then(|g| {
                    g.members
                        .iter()
                        .find(|m| m.id == h.member_id)
                        .map(|m| (g, m))
                }) {
                    None => ErrorCode::UnknownMemberId,
                    Some((_, m)) if m.stale => ErrorCode::RebalanceInProgress,
                    Some((g, _)) if g.generation != h.generation => ErrorCode::IllegalGeneration,
                    Some(_) => ErrorCode::None,
                };
                st.heartbeats.fetch_add(1, Ordering::SeqCst);
                if error == ErrorCode::None {
                    group_result(id, &h.group, error)
                } else {
                    // As the real broker does: the error in the header.
                    response_frame(
                        &ResponseHeader {
                            correlation_id: id,
                            error,
                            message: Some("refused".into()),
                            response: None,
                        },
                        &[],
                    )
                }
            }
            Request::LeaveGroup(l) => {
                let error = match st.groups.get_mut(&l.group) {
                    Some(g) if g.members.iter().any(|m| m.id == l.member_id) => {
                        g.members.retain(|m| m.id != l.member_id);
                        g.changed();
                        ErrorCode::None
                    }
                    _ => ErrorCode::UnknownMemberId,
                };
                group_result(id, &l.group, error)
            }
            Request::CommitOffsets(c) => {
                let g = st.groups.entry(c.group.clone()).or_default();
                let member_id = c.member_id.clone().unwrap_or_default();
                let error = if member_id.is_empty() {
                    if g.members.is_empty() {
                        ErrorCode::None
                    } else {
                        ErrorCode::GroupNotEmpty
                    }
                } else {
                    match g.members.iter().find(|m| m.id == member_id) {
                        None => ErrorCode::UnknownMemberId,
                        Some(m) if m.generation != c.generation => ErrorCode::IllegalGeneration,
                        Some(_) => ErrorCode::None,
                    }
                };
                if error == ErrorCode::None {
                    for o in c.offsets.unwrap_or_default() {
                        if o.offset < 0 {
                            g.offsets.remove(&(o.topic, o.partition));
                        } else {
                            g.offsets.insert((o.topic, o.partition), o.offset);
                        }
                    }
                }
                reply(
                    id,
                    Response::OffsetsResponse(Box::new(OffsetsResponse {
                        group: Some(c.group),
                        error,
                        ..Default::default()
                    })),
                    &[],
                )
            }
            Request::FetchOffsets(f) => {
                let wanted: Vec<(String, u32)> = f
                    .partitions
                    .unwrap_or_default()
                    .into_iter()
                    .flat_map(|tp| {
                        let t = tp.topic;
                        tp.partitions
                            .unwrap_or_default()
                            .into_iter()
                            .map(move |p| (t.clone(), p))
                    })
                    .collect();
                let offsets = st
                    .groups
                    .get(&f.group)
                    .map(|g| committed(g, |k| wanted.is_empty() || wanted.contains(k)))
                    .unwrap_or_default();
                reply(
                    id,
                    Response::OffsetsResponse(Box::new(OffsetsResponse {
                        group: Some(f.group),
                        offsets: Some(offsets),
                        ..Default::default()
                    })),
                    &[],
                )
            }
            Request::ListGroups(_) => reply(
                id,
                Response::ListGroupsResponse(Box::new(ListGroupsResponse {
                    groups: Some(
                        st.groups
                            .iter()
                            .map(|(name, g)| GroupSummary {
                                group: Some(name.clone()),
                                state: Some(group_state(g).into()),
                                members: g.members.len() as u32,
                            })
                            .collect(),
                    ),
                })),
                &[],
            ),
            Request::DescribeGroup(d) => {
                let desc = match st.groups.get(&d.group) {
                    None => GroupDescription {
                        group: Some(d.group),
                        error: ErrorCode::UnknownGroup,
                        ..Default::default()
                    },
                    Some(g) => GroupDescription {
                        group: Some(d.group),
                        state: Some(group_state(g).into()),
                        generation: g.generation,
                        strategy: Some("roundrobin".into()),
                        members: Some(
                            g.members
                                .iter()
                                .map(|m| GroupMember {
                                    member_id: Some(m.id.clone()),
                                    client_id: Some("c".into()),
                                    host: Some("127.0.0.1".into()),
                                    assignment: Some(g.assignment(&st.topics, &m.id)),
                                })
                                .collect(),
                        ),
                        offsets: Some(committed(g, |_| true)),
                        ..Default::default()
                    },
                };
                reply(id, Response::GroupDescription(Box::new(desc)), &[])
            }
            Request::DeleteGroup(d) => {
                let error = match st.groups.get(&d.group) {
                    None => ErrorCode::UnknownGroup,
                    Some(g) if !g.members.is_empty() => ErrorCode::GroupNotEmpty,
                    Some(_) => {
                        st.groups.remove(&d.group);
                        ErrorCode::None
                    }
                };
                group_result(id, &d.group, error)
            }
        }
    };
    Action::Reply(frame, delay)
}

fn group_state(g: &Group) -> &'static str {
    if g.members.is_empty() {
        "Empty"
    } else if g.members.iter().any(|m| m.stale) {
        "PreparingRebalance"
    } else {
        "Stable"
    }
}

fn committed(g: &Group, keep: impl Fn(&(String, u32)) -> bool) -> Vec<CommittedOffset> {
    g.offsets
        .iter()
        .filter(|(k, _)| keep(k))
        .map(|((t, p), o)| CommittedOffset {
            topic: t.clone(),
            partition: *p,
            offset: *o,
            ..Default::default()
        })
        .collect()
}

fn group_result(id: u64, group: &str, error: ErrorCode) -> Vec<u8> {
    reply(
        id,
        Response::GroupResult(Box::new(GroupResult {
            group: Some(group.into()),
            error,
            message: None,
        })),
        &[],
    )
}

fn config(addr: &str) -> ClientConfig {
    let mut c = ClientConfig::new([addr]);
    c.request_timeout = Duration::from_secs(5);
    c
}

/// A client of the fake broker at `addr`, with topic "t" created.
async fn client_with_topic_t(addr: &str) -> Client {
    let client = Client::connect(config(addr)).await.unwrap();
    client
        .create_topic("t", &TopicSettings::default())
        .await
        .unwrap();
    client
}

#[tokio::test]
async fn admin_produce_consume_round_trip() {
    let (addr, _state) = start().await;
    // A dead address first: the client tries the next one.
    let mut cfg = config(&addr);
    cfg.bootstrap.insert(0, "127.0.0.1:1".into());
    let client = Client::connect(cfg).await.unwrap();
    client
        .create_topic(
            "t",
            &TopicSettings {
                partitions: 3,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let err = client
        .create_topic("t", &TopicSettings::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TopicAlreadyExists));
    assert_eq!(client.list_topics().await.unwrap(), vec!["t".to_string()]);

    for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
        let producer = Producer::new(
            client.clone(),
            ProducerConfig {
                compression,
                batch_size: 2000,
                linger: Duration::from_millis(2),
                buffer_bytes: 20_000,
                ..Default::default()
            },
        )
        .unwrap();
        let mut futures = Vec::new();
        for i in 0..1000 {
            let key = (i % 2 == 0).then(|| format!("key-{}", i % 17).into_bytes());
            futures.push((
                key.clone(),
                producer
                    .send("t", key, format!("v{i}").into_bytes())
                    .await
                    .unwrap(),
            ));
        }
        producer.flush().await.unwrap();
        for (key, f) in futures {
            let report = f.await.unwrap();
            assert!(report.offset.is_some());
            if let Some(k) = key {
                assert_eq!(report.partition, levee_client::partition_for_key(&k, 3));
            }
        }
    }
    let info = client.describe_topic("t").await.unwrap();
    assert_eq!(info.partition_count(), 3);
    assert_eq!(info.settings.fsync.as_deref(), Some("never"));
    let total: u64 = info.partitions.iter().map(|p| p.high_watermark).sum();
    assert_eq!(total, 3000);

    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
    assert_eq!(
        consumer
            .assign("t", None, StartPosition::Earliest)
            .await
            .unwrap(),
        vec![0, 1, 2]
    );
    let mut got = Vec::new();
    while got.len() < 3000 {
        let recs = consumer.poll().await.unwrap();
        assert!(!recs.is_empty());
        got.extend(recs);
    }
    let mut values: Vec<String> = got
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap())
        .collect();
    values.sort();
    let mut want: Vec<String> = (0..3)
        .flat_map(|_| (0..1000).map(|i| format!("v{i}")))
        .collect();
    want.sort();
    assert_eq!(values, want);
    // Offsets are dense per partition.
    for p in 0..3 {
        let offs: Vec<u64> = got
            .iter()
            .filter(|r| r.partition == p)
            .map(|r| r.offset)
            .collect();
        assert_eq!(offs, (0..offs.len() as u64).collect::<Vec<_>>());
        assert_eq!(consumer.position("t", p), Some(offs.len() as u64));
    }
    assert!(consumer.poll().await.unwrap().is_empty());

    // Starting inside a batch skips the records before the offset.
    let mut c2 = Consumer::new(client.clone(), ConsumerConfig::default());
    c2.assign("t", Some(vec![1]), StartPosition::Offset(5))
        .await
        .unwrap();
    let recs = c2.poll().await.unwrap();
    assert_eq!(recs[0].offset, 5);
    let latest = client
        .list_offsets("t", &[0, 1, 2], OffsetSpec::Latest)
        .await
        .unwrap();
    assert_eq!(latest.len(), 3);

    client.delete_topic("t").await.unwrap();
    assert!(client.list_topics().await.unwrap().is_empty());
}

#[tokio::test]
async fn unknown_topic_is_a_typed_error_naming_the_topic() {
    let (addr, _state) = start().await;
    let client = Client::connect(config(&addr)).await.unwrap();
    let err = client.describe_topic("nope").await.unwrap_err();
    assert!(matches!(err, ClientError::UnknownTopicOrPartition { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("`nope`") && msg.contains("levee topic create nope"),
        "{msg}"
    );

    let producer = Producer::new(client.clone(), ProducerConfig::default()).unwrap();
    let f = producer.send("nope", None, b"x".to_vec()).await.unwrap();
    assert!(matches!(
        f.await,
        Err(ClientError::UnknownTopicOrPartition { .. })
    ));
    // Fixed partition: the broker's per-partition error fails the message.
    let producer = Producer::new(
        client,
        ProducerConfig {
            partition: Some(0),
            ..Default::default()
        },
    )
    .unwrap();
    let f = producer.send("nope", None, b"x".to_vec()).await.unwrap();
    assert!(matches!(
        f.await,
        Err(ClientError::UnknownTopicOrPartition { .. })
    ));
}

#[tokio::test]
async fn batch_size_is_checked_against_the_brokers_max_batch_bytes() {
    // A broker that does not say: its default limit (16 MiB) applies.
    let (addr, _state) = start().await;
    let client = client_with_topic_t(&addr).await;
    assert_eq!(client.max_batch_bytes(), 16 << 20);
    let too_big = ProducerConfig {
        batch_size: 32 << 20,
        ..Default::default()
    };
    assert!(Producer::new(client.clone(), too_big).is_err());

    // A broker that says 1 MiB.
    let (addr, state) = start().await;
    state.lock().unwrap().max_batch_bytes = 1 << 20;
    let client = client_with_topic_t(&addr).await;
    assert_eq!(client.max_batch_bytes(), 1 << 20);
    let err = Producer::new(
        client.clone(),
        ProducerConfig {
            batch_size: 2 << 20,
            ..Default::default()
        },
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("batch_size 2097152") && msg.contains("max_batch_bytes 1048576"),
        "{msg}"
    );
    // The default batch size fits; a record too large even alone fails
    // by itself, and the producer goes on.
    let producer = Producer::new(client, ProducerConfig::default()).unwrap();
    let big = producer.send("t", None, vec![0; 2 << 20]).await.unwrap();
    let small = producer.send("t", None, b"x".to_vec()).await.unwrap();
    let err = big.await.unwrap_err().to_string();
    assert!(err.contains("max_batch_bytes 1048576"), "{err}");
    assert_eq!(small.await.unwrap().offset, Some(0));
}

#[tokio::test]
async fn acks_zero_and_retries() {
    let (addr, state) = start().await;
    let client = client_with_topic_t(&addr).await;
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            acks: levee_client::Acks::None,
            ..Default::default()
        },
    )
    .unwrap();
    let f = producer.send("t", None, b"a".to_vec()).await.unwrap();
    let r = f.await.unwrap();
    assert_eq!(r.offset, None);
    // The connection still works after a request without a response.
    assert_eq!(
        client.describe_topic("t").await.unwrap().partitions[0].high_watermark,
        1
    );

    // Two NotLeader answers, then success.
    state.lock().unwrap().not_leader.store(2, Ordering::SeqCst);
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            retry_backoff: Duration::from_millis(1),
            ..Default::default()
        },
    )
    .unwrap();
    let f = producer.send("t", None, b"b".to_vec()).await.unwrap();
    assert_eq!(f.await.unwrap().offset, Some(1));
    // Out of retries: the retriable error reaches the caller.
    state.lock().unwrap().not_leader.store(10, Ordering::SeqCst);
    let producer = Producer::new(
        client,
        ProducerConfig {
            retries: 1,
            retry_backoff: Duration::from_millis(1),
            ..Default::default()
        },
    )
    .unwrap();
    let f = producer.send("t", None, b"c".to_vec()).await.unwrap();
    assert_eq!(f.await.unwrap_err().code(), Some(ErrorCode::NotLeader));
}

#[tokio::test]
async fn corrupt_fetch_is_a_checksum_error() {
    let (addr, state) = start().await;
    let client = client_with_topic_t(&addr).await;
    let producer = Producer::new(client.clone(), ProducerConfig::default()).unwrap();
    producer
        .send("t", None, b"hello".to_vec())
        .await
        .unwrap()
        .await
        .unwrap();
    state
        .lock()
        .unwrap()
        .corrupt_fetch
        .store(true, Ordering::SeqCst);
    let mut consumer = Consumer::new(client, ConsumerConfig::default());
    consumer
        .assign("t", None, StartPosition::Earliest)
        .await
        .unwrap();
    let err = consumer.poll().await.unwrap_err();
    assert!(matches!(err, ClientError::Checksum { .. }), "{err}");
    assert_eq!(consumer.position("t", 0), Some(0));
}

#[tokio::test]
async fn dead_connection_fails_pending_and_reconnects() {
    let (addr, state) = start().await;
    let client = client_with_topic_t(&addr).await;
    state
        .lock()
        .unwrap()
        .drop_next_fetch
        .store(true, Ordering::SeqCst);
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
    consumer
        .assign("t", None, StartPosition::Earliest)
        .await
        .unwrap();
    // The lost connection is retriable: the poll returns nothing, the
    // position stays, and the next poll reconnects.
    assert!(consumer.poll().await.unwrap().is_empty());
    assert_eq!(consumer.position("t", 0), Some(0));
    assert!(consumer.poll().await.unwrap().is_empty());
    assert_eq!(state.lock().unwrap().connections.load(Ordering::SeqCst), 2);
    // A raw fetch reports the lost connection.
    state
        .lock()
        .unwrap()
        .drop_next_fetch
        .store(true, Ordering::SeqCst);
    let req = [levee_client::FetchRequestPartition {
        topic: "t".into(),
        partition: 0,
        offset: 0,
        max_bytes: 1 << 20,
    }];
    let err = client
        .fetch(Duration::from_millis(10), 1, 1 << 20, &req)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::ConnectionLost { .. }), "{err}");
    assert!(err.is_retriable());

    // A broker that stays unreachable fails the poll after retry_timeout.
    let mut consumer = Consumer::new(
        client.clone(),
        ConsumerConfig {
            retry_timeout: Duration::from_millis(300),
            ..ConsumerConfig::default()
        },
    );
    consumer.seek("t", 0, 0);
    state
        .lock()
        .unwrap()
        .not_leader_always
        .store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let err = loop {
        match consumer.poll().await {
            Ok(r) => assert!(r.is_empty()),
            Err(e) => break e,
        }
        assert!(started.elapsed() < Duration::from_secs(5));
    };
    assert_eq!(err.code(), Some(ErrorCode::NotLeader), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn pipelined_requests_on_one_connection() {
    let (addr, state) = start().await;
    let client = Client::connect(config(&addr)).await.unwrap();
    client
        .create_topic(
            "t",
            &TopicSettings {
                partitions: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..50u32 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let b = levee_client::codec::build_batch(
                &[levee_engine::Record {
                    timestamp: 1,
                    value: Some(vec![i as u8]),
                    ..Default::default()
                }],
                Compression::None,
            )
            .unwrap();
            c.produce(
                1,
                Duration::from_secs(1),
                vec![("t".into(), i % 2, b.into())],
            )
            .await
            .unwrap()
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.len(), 1);
        r[0].result().unwrap();
    }
    let st = state.lock().unwrap();
    assert_eq!(st.connections.load(Ordering::SeqCst), 1);
    assert_eq!(st.produce_requests.load(Ordering::SeqCst), 50);
}

#[tokio::test]
async fn connect_failure_names_the_addresses() {
    let err = Client::connect(ClientConfig::new(["127.0.0.1:1", "127.0.0.1:2"]))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("127.0.0.1:1,127.0.0.1:2"), "{msg}");
    assert!(err.is_retriable());
}

async fn produce_values(client: &Client, topic: &str, values: impl IntoIterator<Item = String>) {
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            linger: Duration::from_millis(1),
            ..Default::default()
        },
    )
    .unwrap();
    let mut futures = Vec::new();
    for v in values {
        futures.push(producer.send(topic, None, v.into_bytes()).await.unwrap());
    }
    producer.flush().await.unwrap();
    for f in futures {
        f.await.unwrap();
    }
}

fn group_config(group: &str, reset: OffsetReset) -> GroupConsumerConfig {
    GroupConsumerConfig {
        auto_commit: None,
        reset,
        session_timeout: Duration::from_secs(3),
        fetch: ConsumerConfig {
            max_wait: Duration::from_millis(50),
            ..Default::default()
        },
        ..GroupConsumerConfig::new(group, ["t"])
    }
}

fn values(records: &[ConsumedRecord]) -> Vec<String> {
    let mut v: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap())
        .collect();
    v.sort();
    v
}

/// Polls until `until` holds for the consumer (checked after each poll).
async fn poll_until(
    c: &mut GroupConsumer,
    got: &mut Vec<ConsumedRecord>,
    until: impl Fn(&GroupConsumer, &[ConsumedRecord]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !until(c, got) {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        got.extend(c.poll().await.unwrap());
    }
}

fn committed_sum(state: &Mutex<State>, group: &str) -> i64 {
    state.lock().unwrap().groups[group].offsets.values().sum()
}

#[tokio::test]
async fn group_members_split_partitions_commit_and_follow_rebalances() {
    let (addr, state) = start().await;
    let client = Client::connect(config(&addr)).await.unwrap();
    client
        .create_topic(
            "t",
            &TopicSettings {
                partitions: 4,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    produce_values(&client, "t", (0..400).map(|i| format!("a{i:03}"))).await;

    let mut a = GroupConsumer::join(client.clone(), group_config("g", OffsetReset::Earliest))
        .await
        .unwrap();
    assert_eq!(a.assignment()["t"], vec![0, 1, 2, 3]);
    assert!(a.member_id().starts_with("member-"));
    let first_generation = a.generation();
    let mut got = Vec::new();
    poll_until(&mut a, &mut got, |_, g| g.len() >= 400).await;
    assert_eq!(
        values(&got),
        (0..400).map(|i| format!("a{i:03}")).collect::<Vec<_>>()
    );
    a.commit().await.unwrap();
    assert_eq!(committed_sum(&state, "g"), 400);
    // Nothing changed: no second commit request needed, and none fails.
    a.commit().await.unwrap();

    // A second member: the first one's heartbeat sees the rebalance and it
    // joins again inside poll, keeping half of the partitions.
    let mut b = GroupConsumer::join(client.clone(), group_config("g", OffsetReset::Earliest))
        .await
        .unwrap();
    assert_eq!(b.assignment()["t"], vec![1, 3]);
    let mut got_a = Vec::new();
    poll_until(&mut a, &mut got_a, |c, _| c.generation() > first_generation).await;
    assert_eq!(a.assignment()["t"], vec![0, 2]);
    // Only a heartbeat could have told a.
    assert!(state.lock().unwrap().heartbeats.load(Ordering::SeqCst) > 0);
    // Kept partitions keep their positions; b starts from the commits.
    assert_eq!(a.position("t", 0), a.committed("t", 0));
    assert!(got_a.is_empty(), "nothing new was produced");

    produce_values(&client, "t", (0..400).map(|i| format!("b{i:03}"))).await;
    let mut got_b = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got_a.len() + got_b.len() < 400 {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        got_a.extend(a.poll().await.unwrap());
        got_b.extend(b.poll().await.unwrap());
    }
    assert!(got_a.iter().all(|r| r.partition % 2 == 0));
    assert!(got_b.iter().all(|r| r.partition % 2 == 1));
    let mut all = got_a.clone();
    all.extend(got_b.iter().cloned());
    assert_eq!(
        values(&all),
        (0..400).map(|i| format!("b{i:03}")).collect::<Vec<_>>()
    );
    a.commit().await.unwrap();
    b.commit().await.unwrap();
    assert_eq!(committed_sum(&state, "g"), 800);

    let info = client.describe_group("g").await.unwrap();
    assert_eq!(info.members.len(), 2);
    assert_eq!(info.offsets.len(), 4);
    let groups = client.list_groups().await.unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!((groups[0].group.as_str(), groups[0].members), ("g", 2));

    // Administrative operations are refused while the group has members.
    let err = client.delete_group("g").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::GroupNotEmpty));
    assert!(err.to_string().contains("active members"), "{err}");
    let err = client
        .commit_offsets("g", "", -1, &[OffsetCommit::new("t", 0, 0)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Group {
                code: ErrorCode::GroupNotEmpty,
                ..
            }
        ),
        "{err}"
    );

    // b leaves: a gets every partition back at the next rebalance.
    b.close().await.unwrap();
    let mut rest = Vec::new();
    poll_until(&mut a, &mut rest, |c, _| c.assignment()["t"].len() == 4).await;
    poll_until(&mut a, &mut rest, |_, _| true).await;
    assert!(
        rest.is_empty(),
        "b's partitions resume from b's commits: {rest:?}"
    );
    a.close().await.unwrap();

    assert_eq!(client.list_groups().await.unwrap()[0].members, 0);
    // Reset offsets of the now empty group, then delete it.
    client
        .commit_offsets(
            "g",
            "",
            -1,
            &[
                OffsetCommit::new("t", 0, 5),
                OffsetCommit {
                    offset: None,
                    ..OffsetCommit::new("t", 1, 0)
                },
            ],
        )
        .await
        .unwrap();
    let offsets = client
        .fetch_offsets("g", &[("t".to_string(), vec![0, 1])].into_iter().collect())
        .await
        .unwrap();
    assert_eq!(offsets.len(), 1);
    assert_eq!((offsets[0].partition, offsets[0].offset), (0, 5));
    client.delete_group("g").await.unwrap();
    let err = client.describe_group("g").await.unwrap_err();
    assert!(err.to_string().contains("`g` does not exist"), "{err}");
}

#[tokio::test]
async fn expelled_member_joins_again_and_resumes_from_commits() {
    let (addr, state) = start().await;
    let client = Client::connect(config(&addr)).await.unwrap();
    client
        .create_topic(
            "t",
            &TopicSettings {
                partitions: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    produce_values(&client, "t", (0..50).map(|i| format!("x{i:02}"))).await;
    let mut a = GroupConsumer::join(client.clone(), group_config("g", OffsetReset::Earliest))
        .await
        .unwrap();
    let mut got = Vec::new();
    poll_until(&mut a, &mut got, |_, g| g.len() >= 50).await;
    a.commit().await.unwrap();
    let old_id = a.member_id().to_string();

    // The broker drops the member (as after a missed session timeout).
    {
        let mut st = state.lock().unwrap();
        let g = st.groups.get_mut("g").unwrap();
        g.members.clear();
        g.changed();
    }
    // A commit under the old id is fenced, and the next poll joins with a
    // new id. (On a loaded host the background heartbeat may learn of the
    // expulsion first: then the poll has already joined again, and the
    // commit goes through under the new id, never the old one.)
    produce_values(&client, "t", (0..10).map(|i| format!("y{i}"))).await;
    let mut more = Vec::new();
    poll_until(&mut a, &mut more, |_, g| !g.is_empty()).await;
    match a.commit().await {
        Err(err) => {
            assert!(
                matches!(
                    err,
                    ClientError::Fenced {
                        code: ErrorCode::UnknownMemberId,
                        ..
                    }
                ),
                "{err}"
            );
            assert!(err.needs_rejoin());
        }
        Ok(()) => assert_ne!(
            a.member_id(),
            old_id,
            "a commit went through under the expelled member's id"
        ),
    }
    poll_until(&mut a, &mut more, |c, g| {
        c.member_id() != old_id && g.len() >= 10
    })
    .await;
    // At least once: the uncommitted records may come again, nothing is lost.
    let v = values(&more);
    for i in 0..10 {
        assert!(v.contains(&format!("y{i}")), "{v:?}");
    }
    assert!(v.iter().all(|s| s.starts_with('y')), "{v:?}");
    a.commit().await.unwrap();
    assert_eq!(committed_sum(&state, "g"), 60);
    a.close().await.unwrap();
}

#[tokio::test]
async fn reset_policy_applies_without_committed_offsets() {
    let (addr, _state) = start().await;
    let client = client_with_topic_t(&addr).await;
    produce_values(&client, "t", (0..5).map(|i| format!("old{i}"))).await;

    let err = GroupConsumer::join(client.clone(), group_config("e", OffsetReset::Error))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::NoCommittedOffset { .. }),
        "{err}"
    );

    let mut l = GroupConsumer::join(client.clone(), group_config("l", OffsetReset::Latest))
        .await
        .unwrap();
    assert_eq!(l.position("t", 0), Some(5));
    assert!(l.poll().await.unwrap().is_empty());
    produce_values(&client, "t", (0..3).map(|i| format!("new{i}"))).await;
    let mut got = Vec::new();
    poll_until(&mut l, &mut got, |_, g| g.len() >= 3).await;
    assert_eq!(values(&got), vec!["new0", "new1", "new2"]);
    // A position past the end of the log follows the reset policy.
    l.seek("t", 0, 1000).unwrap();
    assert!(l.seek("t", 1, 0).is_err(), "partition 1 is not assigned");
    assert!(l.poll().await.unwrap().is_empty());
    assert_eq!(l.position("t", 0), Some(8));
    l.close().await.unwrap();
}

fn broker(node_id: u32, addr: &str) -> Broker {
    let (host, port) = addr.rsplit_once(':').unwrap();
    Broker {
        node_id,
        host: Some(host.to_string()),
        port: port.parse().unwrap(),
    }
}

/// Sets what both doubles' Metadata answers: t/0 led by `leader`.
fn set_leader(states: &[&Arc<Mutex<State>>], brokers: &[Broker], leader: u32) {
    for s in states {
        let leaders = BTreeMap::from([(("t".to_string(), 0u32), leader)]);
        s.lock().unwrap().cluster = Some((brokers.to_vec(), leaders));
    }
}

fn count(state: &Mutex<State>, f: impl Fn(&State) -> &AtomicUsize) -> usize {
    f(&state.lock().unwrap()).load(Ordering::SeqCst)
}

#[tokio::test]
async fn produce_and_fetch_follow_the_partition_leader_through_a_failover() {
    let (addr_a, a) = start_node(1).await;
    let (addr_b, b) = start_node(2).await;
    // The cluster's client address of node 1 is advertised as 0.0.0.0: the
    // client reaches it through the host it bootstrapped from.
    let port_a = addr_a.rsplit_once(':').unwrap().1;
    let brokers = vec![broker(1, &format!("0.0.0.0:{port_a}")), broker(2, &addr_b)];
    set_leader(&[&a, &b], &brokers, 2);
    for addr in [&addr_a, &addr_b] {
        Client::connect(config(addr))
            .await
            .unwrap()
            .create_topic("t", &TopicSettings::default())
            .await
            .unwrap();
    }
    // Bootstrap through A only; t/0 is led by B.
    let client = Client::connect(config(&addr_a)).await.unwrap();
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            partition: Some(0),
            linger: Duration::from_millis(1),
            batch_size: 200,
            delivery_timeout: Duration::from_secs(5),
            ..Default::default()
        },
    )
    .unwrap();
    let mut futures = Vec::new();
    for i in 0..20 {
        futures.push(
            producer
                .send("t", None, format!("b{i}").into_bytes())
                .await
                .unwrap(),
        );
    }
    for (i, f) in futures.into_iter().enumerate() {
        let r = f.await.unwrap();
        assert_eq!(r.offset, Some(i as u64));
    }
    assert_eq!(count(&a, |s| &s.produce_requests), 0);
    assert!(count(&b, |s| &s.produce_requests) > 0);
    assert_eq!(client.leader("t", 0).await.unwrap(), Some((2, 1)));

    // Failover: B stops leading; for a while nobody leads, then A does.
    b.lock()
        .unwrap()
        .not_leader_always
        .store(true, Ordering::SeqCst);
    set_leader(&[&a, &b], &brokers, u32::MAX);
    {
        let (a, b, brokers) = (a.clone(), b.clone(), brokers.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            set_leader(&[&a, &b], &brokers, 1);
        });
    }
    let mut futures = Vec::new();
    for i in 0..200 {
        futures.push(
            producer
                .send("t", None, format!("a{i}").into_bytes())
                .await
                .unwrap(),
        );
        if i % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    producer.flush().await.unwrap();
    for f in futures {
        let r = f.await.expect("no error surfaces during the failover");
        assert!(r.offset.is_some());
    }
    assert!(count(&a, |s| &s.produce_requests) > 0);
    assert!(count(&a, |s| &s.metadata_requests) >= 3);

    // The new leader holds every message once, in send order (the double
    // never half-applies a request, so no duplicates either).
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
    consumer
        .assign("t", Some(vec![0]), StartPosition::Earliest)
        .await
        .unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.len() < 200 {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        got.extend(consumer.poll().await.unwrap());
    }
    let in_order: Vec<String> = got
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap())
        .collect();
    assert_eq!(
        in_order,
        (0..200).map(|i| format!("a{i}")).collect::<Vec<_>>()
    );
    assert!(count(&a, |s| &s.fetch_requests) > 0);
    assert_eq!(count(&b, |s| &s.fetch_requests), 0);
}

#[tokio::test]
async fn fetch_ahead_is_used_in_order_and_dropped_after_a_seek() {
    let (addr, state) = start().await;
    let client = client_with_topic_t(&addr).await;
    // Small batches (one per send wave) and a small per-partition fetch, so
    // reading them takes many polls.
    for wave in 0..20 {
        produce_values(
            &client,
            "t",
            (0..10).map(|i| format!("{:04}", wave * 10 + i)),
        )
        .await;
    }
    let mut consumer = Consumer::new(
        client.clone(),
        ConsumerConfig {
            max_wait: Duration::from_millis(20),
            partition_max_bytes: 1,
            ..ConsumerConfig::default()
        },
    );
    consumer.seek("t", 0, 0);
    let fetches = || state.lock().unwrap().fetch_requests.load(Ordering::SeqCst);
    let before = fetches();
    let first = consumer.poll().await.unwrap();
    assert!(!first.is_empty() && first.len() < 200, "{}", first.len());
    assert_eq!(first[0].offset, 0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fetches(), before + 2, "no fetch was sent ahead");
    // The fetch sent ahead was for the position after `first`: a seek back
    // must not return it.
    consumer.seek("t", 0, 3);
    let again = consumer.poll().await.unwrap();
    assert_eq!(
        again[0].offset, 3,
        "a seek was ignored by the fetch sent ahead"
    );
    // Reading on: every offset once, in order.
    let mut got: Vec<u64> = again.iter().map(|r| r.offset).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.last() != Some(&199) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out at {got:?}"
        );
        got.extend(consumer.poll().await.unwrap().iter().map(|r| r.offset));
    }
    assert_eq!(got, (3..200).collect::<Vec<u64>>());
    // Without fetch-ahead, the same.
    let mut plain = Consumer::new(
        client.clone(),
        ConsumerConfig {
            max_wait: Duration::from_millis(20),
            partition_max_bytes: 1,
            fetch_ahead: false,
            ..ConsumerConfig::default()
        },
    );
    plain.seek("t", 0, 0);
    let mut got = Vec::new();
    while got.last() != Some(&199) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out at {got:?}"
        );
        got.extend(plain.poll().await.unwrap().iter().map(|r| r.offset));
    }
    assert_eq!(got, (0..200).collect::<Vec<u64>>());
}
