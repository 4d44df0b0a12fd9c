//! Helpers for the Kafka-compatibility tests (`tests/kafka_*.rs`): rdkafka
//! (librdkafka) clients with short timeouts whose logs go to the test's
//! output, owned copies of consumed messages for comparisons, the external
//! tools (kcat, Python clients) that `tests/kafka/setup.sh` installs, and a
//! raw Kafka-protocol client over a blocking socket for hand-made requests.
//!
//! Included by the Kafka tests only (`#[path = "common/kafka.rs"] mod
//! kafka;`), so the other multi-process tests do not compile rdkafka code.
#![allow(dead_code)]

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message, Timestamp};
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer as _, ProducerContext};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The repository's top folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Set to 1 to skip the tests that need tools from `tests/kafka/setup.sh`.
pub const SKIP_VAR: &str = "LEVEE_SKIP_KAFKA_CLIENT_TESTS";

/// Whether a test that needs an external tool runs. The tool missing is a
/// failure that names the setup script, unless the developer set
/// `LEVEE_SKIP_KAFKA_CLIENT_TESTS=1` (then: false, and the test returns).
/// `check` is a command that succeeds when the tool is there.
pub fn need_tool(what: &str, check: &[&str]) -> bool {
    if std::env::var(SKIP_VAR).is_ok_and(|v| v == "1") {
        eprintln!("skipped ({SKIP_VAR}=1): this test needs {what}");
        return false;
    }
    let ok = Command::new(check[0])
        .args(&check[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{what} is not installed (`{}` failed): run tests/kafka/setup.sh (as root) \
         to install the Kafka test tools, or set {SKIP_VAR}=1 to skip these tests",
        check.join(" ")
    );
    true
}

/// A message as delivered or consumed, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub partition: i32,
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

pub fn owned(m: &BorrowedMessage<'_>) -> Msg {
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.map(|v| v.to_vec())))
                .collect()
        })
        .unwrap_or_default();
    Msg {
        partition: m.partition(),
        offset: m.offset(),
        timestamp: match m.timestamp() {
            Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => t,
            Timestamp::NotAvailable => -1,
        },
        key: m.key().map(|k| k.to_vec()),
        value: m.payload().map(|v| v.to_vec()),
        headers,
    }
}

/// One delivery report: the message and its fate.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub msg: Msg,
    pub error: Option<String>,
}

/// The context of every rdkafka client in these tests: librdkafka's log
/// lines and errors go to stderr (shown when a test fails), and a
/// producer's delivery reports are kept.
pub struct Ctx {
    pub name: String,
    pub deliveries: Arc<Mutex<Vec<Delivery>>>,
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        eprintln!("[rdkafka {} {level:?} {fac}] {log_message}", self.name);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        eprintln!("[rdkafka {} error] {error}: {reason}", self.name);
    }
}

impl ConsumerContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        let d = match r {
            Ok(m) => Delivery {
                msg: owned(m),
                error: None,
            },
            Err((e, m)) => Delivery {
                msg: owned(m),
                error: Some(e.to_string()),
            },
        };
        self.deliveries.lock().unwrap().push(d);
    }
}

pub type KProducer = BaseProducer<Ctx>;
pub type KConsumer = BaseConsumer<Ctx>;

fn ctx(name: &str) -> Ctx {
    Ctx {
        name: name.to_string(),
        deliveries: Arc::new(Mutex::new(Vec::new())),
    }
}

/// Settings every test client shares: short timeouts and backoffs, and
/// librdkafka's debug contexts when `LEVEE_KAFKA_DEBUG` names some (e.g.
/// `protocol,broker,cgrp`).
pub fn base_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("client.id", "levee-kafka-tests")
        .set("socket.timeout.ms", "10000")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "500")
        .set("topic.metadata.refresh.interval.ms", "2000")
        .set("retry.backoff.ms", "50")
        .set("retry.backoff.max.ms", "500");
    if let Ok(d) = std::env::var("LEVEE_KAFKA_DEBUG") {
        c.set("debug", d);
    }
    c
}

/// A producer with no idempotence (not served by every Levee setup the
/// tests use), `acks` ("0", "1", "all") and `codec` (none, gzip, snappy,
/// lz4, zstd).
pub fn producer_config(bootstrap: &str, acks: &str, codec: &str) -> ClientConfig {
    let mut c = base_config(bootstrap);
    c.set("enable.idempotence", "false")
        .set("acks", acks)
        .set("compression.codec", codec)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000");
    c
}

pub fn producer(name: &str, config: &ClientConfig) -> KProducer {
    config
        .create_with_context(ctx(name))
        .unwrap_or_else(|e| panic!("creating producer {name}: {e}"))
}

/// A consumer for `assign`ed partitions: it never joins or commits, but
/// librdkafka's consumer wants a group id all the same.
pub fn reader_config(bootstrap: &str) -> ClientConfig {
    let mut c = base_config(bootstrap);
    c.set("group.id", "levee-test-reader")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        .set("enable.partition.eof", "false");
    c
}

/// A consumer in `group` that commits only when told to and starts from
/// the earliest offset when the group has none.
pub fn consumer_config(bootstrap: &str, group: &str) -> ClientConfig {
    let mut c = reader_config(bootstrap);
    c.set("group.id", group)
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "300");
    c
}

pub fn consumer(name: &str, config: &ClientConfig) -> KConsumer {
    config
        .create_with_context(ctx(name))
        .unwrap_or_else(|e| panic!("creating consumer {name}: {e}"))
}

/// Flushes a producer and returns its delivery reports, asserting that
/// every message was delivered.
pub fn flush_all_delivered(p: &KProducer, expected: usize) -> Vec<Delivery> {
    p.flush(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("flush of {}: {e}", p.context().name));
    let d = p.context().deliveries.lock().unwrap().clone();
    let failed: Vec<_> = d.iter().filter(|d| d.error.is_some()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} messages failed, first: {:?}",
        failed.len(),
        d.len(),
        failed[0]
    );
    assert_eq!(d.len(), expected, "delivery reports");
    d
}

/// Polls until `n` messages arrived or `within` passed; a consumer error
/// fails the test.
pub fn consume_n(c: &KConsumer, n: usize, within: Duration) -> Vec<Msg> {
    let until = Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < until {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => out.push(owned(&m)),
            Some(Err(e)) => panic!("consumer {}: {e}", c.context().name),
            None => {}
        }
    }
    out
}

/// Polls for `d` and returns whatever arrived (for "nothing more" checks).
pub fn consume_for(c: &KConsumer, d: Duration) -> Vec<Msg> {
    consume_n(c, usize::MAX, d)
}

/// The Kafka metadata as rdkafka sees it: (broker id, host:port) and per
/// partition of `topic` (id, leader, replicas, isr).
pub fn metadata(c: &KConsumer, topic: Option<&str>) -> (Vec<(i32, String)>, Vec<PartMeta>) {
    let md = c
        .fetch_metadata(topic, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("metadata: {e}"));
    let brokers = md
        .brokers()
        .iter()
        .map(|b| (b.id(), format!("{}:{}", b.host(), b.port())))
        .collect();
    let parts = md
        .topics()
        .iter()
        .filter(|t| Some(t.name()) == topic)
        .flat_map(|t| {
            t.partitions().iter().map(|p| PartMeta {
                id: p.id(),
                leader: p.leader(),
                replicas: p.replicas().to_vec(),
                isr: p.isr().to_vec(),
                error: p.error(),
            })
        })
        .collect();
    (brokers, parts)
}

#[derive(Debug, Clone)]
pub struct PartMeta {
    pub id: i32,
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub error: Option<rdkafka::types::RDKafkaRespErr>,
}

// ---------------------------------------------------------------------
// A raw Kafka client: requests encoded by hand, non-flexible versions only
// (request header v1: api key, version, correlation id, client id).

pub mod api {
    pub const PRODUCE: i16 = 0;
    pub const FETCH: i16 = 1;
    pub const LIST_OFFSETS: i16 = 2;
    pub const METADATA: i16 = 3;
    pub const API_VERSIONS: i16 = 18;
}

/// Big-endian encoder for request bodies.
#[derive(Default)]
pub struct Enc(pub Vec<u8>);

impl Enc {
    pub fn i8(&mut self, v: i8) -> &mut Self {
        self.0.push(v as u8);
        self
    }
    pub fn i16(&mut self, v: i16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn i32(&mut self, v: i32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.i16(s.len() as i16);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    pub fn null_str(&mut self) -> &mut Self {
        self.i16(-1)
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.i32(b.len() as i32);
        self.0.extend_from_slice(b);
        self
    }
}

/// Big-endian decoder for response bodies; panics on truncation (a
/// response the broker got wrong).
pub struct Dec<'a> {
    pub b: &'a [u8],
    pub pos: usize,
}

impl<'a> Dec<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Dec { b, pos: 0 }
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let s = self
            .b
            .get(self.pos..self.pos + n)
            .unwrap_or_else(|| panic!("response truncated at byte {}", self.pos));
        self.pos += n;
        s
    }
    pub fn i8(&mut self) -> i8 {
        self.take(1)[0] as i8
    }
    pub fn i16(&mut self) -> i16 {
        i16::from_be_bytes(self.take(2).try_into().unwrap())
    }
    pub fn i32(&mut self) -> i32 {
        i32::from_be_bytes(self.take(4).try_into().unwrap())
    }
    pub fn i64(&mut self) -> i64 {
        i64::from_be_bytes(self.take(8).try_into().unwrap())
    }
    pub fn str(&mut self) -> Option<String> {
        let n = self.i16();
        (n >= 0).then(|| String::from_utf8_lossy(self.take(n as usize)).into_owned())
    }
    pub fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.i32();
        (n >= 0).then(|| self.take(n as usize).to_vec())
    }
}

pub struct KafkaRaw {
    pub s: TcpStream,
    next: i32,
}

impl KafkaRaw {
    pub fn connect(addr: SocketAddr) -> KafkaRaw {
        let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.set_nodelay(true).unwrap();
        KafkaRaw { s, next: 1 }
    }

    /// Sends one request (header v1) and returns its correlation id.
    pub fn send(&mut self, api: i16, version: i16, body: &[u8]) -> i32 {
        let corr = self.next;
        self.next += 1;
        let mut h = Enc::default();
        h.i16(api).i16(version).i32(corr).str("raw-kafka-test");
        let mut frame = ((h.0.len() + body.len()) as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&h.0);
        frame.extend_from_slice(body);
        self.s.write_all(&frame).unwrap();
        corr
    }

    /// Writes bytes as they are (for malformed frames).
    pub fn send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.s.write_all(bytes)
    }

    /// One response: (correlation id, the body after it). None when the
    /// broker closed the connection (or reset it); no answer within the
    /// read timeout fails the test.
    pub fn recv(&mut self) -> Option<(i32, Vec<u8>)> {
        let mut len = [0u8; 4];
        self.read_or_closed(&mut len)?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        self.read_or_closed(&mut body)?;
        let corr = i32::from_be_bytes(body[..4].try_into().unwrap());
        Some((corr, body[4..].to_vec()))
    }

    fn read_or_closed(&mut self, buf: &mut [u8]) -> Option<()> {
        use std::io::ErrorKind::*;
        match self.s.read_exact(buf) {
            Ok(()) => Some(()),
            Err(e) if matches!(e.kind(), UnexpectedEof | ConnectionReset | BrokenPipe) => None,
            Err(e) => panic!("no answer from the broker: {e}"),
        }
    }

    /// Whether the broker closed the connection: a read sees EOF or a reset
    /// (not a timeout, which fails the test).
    pub fn closed_by_broker(&mut self) -> bool {
        let mut b = [0u8; 1];
        match self.s.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => true,
            Err(e) => panic!("waiting for the broker to close the connection: {e}"),
        }
    }

    pub fn call(&mut self, api: i16, version: i16, body: &[u8]) -> Vec<u8> {
        let corr = self.send(api, version, body);
        let (c, b) = self
            .recv()
            .unwrap_or_else(|| panic!("no response to api {api} v{version}: connection closed"));
        assert_eq!(c, corr, "correlation id of api {api} v{version}");
        b
    }

    /// One request encoded by the `kafka-protocol` crate (any version,
    /// flexible ones too), and its decoded response.
    pub fn call_encoded<Req, Resp>(
        &mut self,
        key: kafka_protocol::messages::ApiKey,
        version: i16,
        req: &Req,
    ) -> Resp
    where
        Req: kafka_protocol::protocol::Encodable,
        Resp: kafka_protocol::protocol::Decodable,
    {
        use kafka_protocol::messages::{RequestHeader, ResponseHeader};
        use kafka_protocol::protocol::{Decodable, Encodable};
        let corr = self.next;
        self.next += 1;
        let mut h = RequestHeader::default();
        h.request_api_key = key as i16;
        h.request_api_version = version;
        h.correlation_id = corr;
        let mut buf = bytes::BytesMut::new();
        h.encode(&mut buf, key.request_header_version(version))
            .unwrap();
        req.encode(&mut buf, version).unwrap();
        let mut frame = (buf.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&buf);
        self.s.write_all(&frame).unwrap();
        let mut len = [0u8; 4];
        self.s.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        self.s.read_exact(&mut body).unwrap();
        let mut b = bytes::Bytes::from(body);
        let rh = ResponseHeader::decode(&mut b, key.response_header_version(version)).unwrap();
        assert_eq!(
            rh.correlation_id, corr,
            "correlation id of {key:?} v{version}"
        );
        Resp::decode(&mut b, version).unwrap()
    }

    /// ApiVersions v0: (error, [(api key, min, max)]).
    pub fn api_versions(&mut self) -> (i16, Vec<(i16, i16, i16)>) {
        let b = self.call(api::API_VERSIONS, 0, &[]);
        parse_api_versions(&b)
    }

    /// Produce v3 of one batch to one partition: (error, base offset).
    pub fn produce(&mut self, topic: &str, partition: i32, batch: &[u8]) -> (i16, i64) {
        let mut e = Enc::default();
        e.null_str().i16(1).i32(10_000).i32(1).str(topic).i32(1);
        e.i32(partition).bytes(batch);
        let b = self.call(api::PRODUCE, 3, &e.0);
        let mut d = Dec::new(&b);
        assert_eq!(d.i32(), 1, "topics in the produce response");
        assert_eq!(d.str().as_deref(), Some(topic));
        assert_eq!(d.i32(), 1, "partitions in the produce response");
        assert_eq!(d.i32(), partition);
        let err = d.i16();
        let base = d.i64();
        (err, base)
    }

    /// Fetch v4 of one partition from `offset` (no wait): (error, high
    /// watermark, the record batches as returned).
    pub fn fetch(&mut self, topic: &str, partition: i32, offset: i64) -> (i16, i64, Vec<u8>) {
        let mut e = Enc::default();
        e.i32(-1).i32(0).i32(0).i32(64 << 20).i8(0);
        e.i32(1).str(topic).i32(1);
        e.i32(partition).i64(offset).i32(32 << 20);
        let b = self.call(api::FETCH, 4, &e.0);
        let mut d = Dec::new(&b);
        let _throttle = d.i32();
        assert_eq!(d.i32(), 1, "topics in the fetch response");
        assert_eq!(d.str().as_deref(), Some(topic));
        assert_eq!(d.i32(), 1, "partitions in the fetch response");
        assert_eq!(d.i32(), partition);
        let err = d.i16();
        let hw = d.i64();
        let _lso = d.i64();
        let aborted = d.i32();
        for _ in 0..aborted.max(0) {
            d.i64();
            d.i64();
        }
        (err, hw, d.bytes().unwrap_or_default())
    }

    /// ListOffsets v1 of one partition at `time` (-2 earliest, -1 latest):
    /// (error, offset).
    pub fn list_offset(&mut self, topic: &str, partition: i32, time: i64) -> (i16, i64) {
        let mut e = Enc::default();
        e.i32(-1).i32(1).str(topic).i32(1).i32(partition).i64(time);
        let b = self.call(api::LIST_OFFSETS, 1, &e.0);
        let mut d = Dec::new(&b);
        assert_eq!(d.i32(), 1);
        assert_eq!(d.str().as_deref(), Some(topic));
        assert_eq!(d.i32(), 1);
        assert_eq!(d.i32(), partition);
        let err = d.i16();
        let _ts = d.i64();
        (err, d.i64())
    }
}

pub fn parse_api_versions(b: &[u8]) -> (i16, Vec<(i16, i16, i16)>) {
    let mut d = Dec::new(b);
    let err = d.i16();
    let n = d.i32();
    let apis = (0..n.max(0)).map(|_| (d.i16(), d.i16(), d.i16())).collect();
    (err, apis)
}

/// Splits concatenated record batches (as a fetch returns them) into
/// whole batches; a trailing partial batch is dropped, as clients do.
pub fn split_batches(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 12 {
        let len = i32::from_be_bytes(data[8..12].try_into().unwrap()) as usize + 12;
        if len > data.len() {
            break;
        }
        out.push(&data[..len]);
        data = &data[len..];
    }
    out
}

/// A batch's compression codec: attributes (byte 21..23) & 7.
pub fn batch_codec(batch: &[u8]) -> i16 {
    i16::from_be_bytes([batch[21], batch[22]]) & 7
}

/// Creates a topic over the native protocol (`levee topic create`), so a
/// test's subject is not also its setup.
pub fn create_topic(b: &crate::common::Broker, name: &str, partitions: u32) {
    let (ok, out, err) = crate::common::levee(
        &b.bootstrap(),
        &[
            "topic",
            "create",
            name,
            "--partitions",
            &partitions.to_string(),
        ],
        None,
    );
    assert!(
        ok,
        "levee topic create {name}: {err} {}",
        String::from_utf8_lossy(&out)
    );
}

/// Runs a command with a deadline; returns (success, stdout + stderr).
/// Past the deadline the command is killed and the test fails.
pub fn run_with_timeout(cmd: &mut Command, within: Duration) -> (bool, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let until = Instant::now() + within;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = format!(
        "--- stdout\n{}--- stderr\n{}",
        o.join().unwrap(),
        e.join().unwrap()
    );
    match status {
        Some(st) => (st.success(), text),
        None => panic!("{cmd:?} did not finish within {within:?}:\n{text}"),
    }
}

/// A group member speaking the Kafka group protocol by hand (JoinGroup v5,
/// SyncGroup v3, OffsetCommit v8, OffsetFetch v5), for tests of the
/// coordinator's answers that a client library would hide.
pub mod raw_group {
    use super::KafkaRaw;
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;

    fn s(v: &str) -> StrBytes {
        StrBytes::from_string(v.to_string())
    }

    /// A joined member: its id and generation.
    #[derive(Debug, Clone)]
    pub struct Member {
        pub id: String,
        pub generation: i32,
    }

    /// Joins `group` (retrying once with the id the broker hands out on
    /// MEMBER_ID_REQUIRED) and syncs as its leader with an empty
    /// assignment. Err(code) if either step fails.
    pub fn join_and_sync(raw: &mut KafkaRaw, group: &str, session_ms: i32) -> Result<Member, i16> {
        find_coordinator(raw, group)?;
        let mut member = String::new();
        let joined = loop {
            let mut p = JoinGroupRequestProtocol::default();
            p.name = s("range");
            p.metadata = bytes::Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            let mut req = JoinGroupRequest::default();
            req.group_id = GroupId(s(group));
            req.session_timeout_ms = session_ms;
            req.rebalance_timeout_ms = session_ms;
            req.member_id = s(&member);
            req.protocol_type = s("consumer");
            req.protocols = vec![p];
            let r: JoinGroupResponse = raw.call_encoded(ApiKey::JoinGroup, 5, &req);
            if r.error_code == 79 && member.is_empty() {
                member = r.member_id.to_string();
                continue;
            }
            if r.error_code != 0 {
                return Err(r.error_code);
            }
            break r;
        };
        let id = joined.member_id.to_string();
        let mut a = SyncGroupRequestAssignment::default();
        a.member_id = joined.member_id.clone();
        a.assignment = bytes::Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let mut req = SyncGroupRequest::default();
        req.group_id = GroupId(s(group));
        req.generation_id = joined.generation_id;
        req.member_id = joined.member_id;
        req.assignments = if joined.leader.as_str() == id {
            vec![a]
        } else {
            vec![]
        };
        let r: SyncGroupResponse = raw.call_encoded(ApiKey::SyncGroup, 3, &req);
        if r.error_code != 0 {
            return Err(r.error_code);
        }
        Ok(Member {
            id,
            generation: joined.generation_id,
        })
    }

    /// FindCoordinator v1 for `group` (the first one creates the offsets
    /// topic; COORDINATOR_NOT_AVAILABLE is retried for up to 10 s): the
    /// coordinator's node id, or the error code.
    pub fn find_coordinator(raw: &mut KafkaRaw, group: &str) -> Result<i32, i16> {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let mut req = FindCoordinatorRequest::default();
            req.key = s(group);
            let r: FindCoordinatorResponse = raw.call_encoded(ApiKey::FindCoordinator, 1, &req);
            match r.error_code {
                0 => return Ok(r.node_id.0),
                15 if std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(100))
                }
                e => return Err(e),
            }
        }
    }

    /// OffsetCommit v8 of `offsets` (topic, partition, offset) as `member`
    /// in `generation`: each partition's error code, in request order.
    pub fn commit(
        raw: &mut KafkaRaw,
        group: &str,
        member: &str,
        generation: i32,
        offsets: &[(&str, i32, i64)],
    ) -> Vec<(String, i32, i16)> {
        let mut topics: Vec<OffsetCommitRequestTopic> = Vec::new();
        for (t, p, o) in offsets {
            let mut part = OffsetCommitRequestPartition::default();
            part.partition_index = *p;
            part.committed_offset = *o;
            match topics.iter_mut().find(|x| x.name.as_str() == *t) {
                Some(x) => x.partitions.push(part),
                None => {
                    let mut x = OffsetCommitRequestTopic::default();
                    x.name = TopicName(s(t));
                    x.partitions = vec![part];
                    topics.push(x);
                }
            }
        }
        let mut req = OffsetCommitRequest::default();
        req.group_id = GroupId(s(group));
        req.generation_id_or_member_epoch = generation;
        req.member_id = s(member);
        req.topics = topics;
        let r: OffsetCommitResponse = raw.call_encoded(ApiKey::OffsetCommit, 8, &req);
        r.topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (t.name.to_string(), p.partition_index, p.error_code))
            })
            .collect()
    }

    /// OffsetFetch v5 of `partitions` of `topic`: (the group-level error,
    /// [(partition, offset, error)]).
    pub fn fetch(
        raw: &mut KafkaRaw,
        group: &str,
        topic: &str,
        partitions: &[i32],
    ) -> (i16, Vec<(i32, i64, i16)>) {
        let mut t = OffsetFetchRequestTopic::default();
        t.name = TopicName(s(topic));
        t.partition_indexes = partitions.to_vec();
        let mut req = OffsetFetchRequest::default();
        req.group_id = GroupId(s(group));
        req.topics = Some(vec![t]);
        let r: OffsetFetchResponse = raw.call_encoded(ApiKey::OffsetFetch, 5, &req);
        let parts = r
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (p.partition_index, p.committed_offset, p.error_code))
            })
            .collect();
        (r.error_code, parts)
    }
}
