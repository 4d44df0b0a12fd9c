//! Fault injection for the client: an in-process broker double that speaks
//! the real wire protocol (frames, Hello, admin, produce, fetch, list
//! offsets) over real TCP and can be told to misbehave in ways the real
//! broker cannot be made to on demand (NotLeader replies, corrupted fetch
//! bytes, dropped connections mid-request). The client's behaviour against
//! the real `levee` binary is tested in the top-level `tests/` folder.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use levee_client::{
    Client, ClientConfig, ClientError, Compression, Consumer, ConsumerConfig, ErrorCode,
    OffsetSpec, Producer, ProducerConfig, StartPosition, TopicSettings,
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

#[derive(Default)]
struct State {
    topics: BTreeMap<String, Vec<Log>>,
    corrupt_fetch: AtomicBool,
    /// Close the connection instead of answering the next fetch.
    drop_next_fetch: AtomicBool,
    /// Answer this many produce requests with NotLeader first.
    not_leader: AtomicUsize,
    produce_requests: AtomicUsize,
    connections: AtomicUsize,
}

async fn start() -> (String, Arc<Mutex<State>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let state = Arc::new(Mutex::new(State::default()));
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
            config: Some(Box::new(TopicConfig {
                partitions: logs.len() as u32,
                replication_factor: 1,
                retention_bytes: -1,
                retention_ms: -1,
                fsync: Some("never".into()),
                max_backlog_bytes: -1,
                segment_bytes: -1,
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
                assert_eq!(h.min_version, 1);
                reply(
                    id,
                    Response::HelloResponse(Box::new(HelloResponse {
                        version: 1,
                        server: Some("mock".into()),
                        node_id: 0,
                        max_frame_bytes: 64 << 20,
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
            Request::Metadata(_) => unimplemented!(),
            Request::Produce(p) => {
                st.produce_requests.fetch_add(1, Ordering::SeqCst);
                let not_leader = st.not_leader.load(Ordering::SeqCst) > 0;
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
                if st.drop_next_fetch.swap(false, Ordering::SeqCst) {
                    return Action::Close;
                }
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
                        None => r.error = ErrorCode::UnknownTopicOrPartition,
                        Some(log) if e.offset > log.next => {
                            r.error = ErrorCode::OffsetOutOfRange;
                            r.high_watermark = log.next;
                        }
                        Some(log) => {
                            r.high_watermark = log.next;
                            r.payload_offset = data.len() as u32;
                            for b in &log.batches {
                                let h = BatchHeader::parse(b).unwrap();
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
            // Consumer groups are not simulated here; tests/groups.rs covers
            // them against the real broker.
            _ => return Action::Close,
        }
    };
    Action::Reply(frame, delay)
}

fn config(addr: &str) -> ClientConfig {
    let mut c = ClientConfig::new([addr]);
    c.request_timeout = Duration::from_secs(5);
    c
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
        );
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

    let producer = Producer::new(client.clone(), ProducerConfig::default());
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
    );
    let f = producer.send("nope", None, b"x".to_vec()).await.unwrap();
    assert!(matches!(
        f.await,
        Err(ClientError::UnknownTopicOrPartition { .. })
    ));
}

#[tokio::test]
async fn acks_zero_and_retries() {
    let (addr, state) = start().await;
    let client = Client::connect(config(&addr)).await.unwrap();
    client
        .create_topic("t", &TopicSettings::default())
        .await
        .unwrap();
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            acks: levee_client::Acks::None,
            ..Default::default()
        },
    );
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
    );
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
    );
    let f = producer.send("t", None, b"c".to_vec()).await.unwrap();
    assert_eq!(f.await.unwrap_err().code(), Some(ErrorCode::NotLeader));
}

#[tokio::test]
async fn corrupt_fetch_is_a_checksum_error() {
    let (addr, state) = start().await;
    let client = Client::connect(config(&addr)).await.unwrap();
    client
        .create_topic("t", &TopicSettings::default())
        .await
        .unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default());
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
    let client = Client::connect(config(&addr)).await.unwrap();
    client
        .create_topic("t", &TopicSettings::default())
        .await
        .unwrap();
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
    let err = consumer.poll().await.unwrap_err();
    assert!(matches!(err, ClientError::ConnectionLost { .. }), "{err}");
    assert!(err.is_retriable());
    // The next call reconnects.
    assert!(consumer.poll().await.unwrap().is_empty());
    assert_eq!(state.lock().unwrap().connections.load(Ordering::SeqCst), 2);
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
