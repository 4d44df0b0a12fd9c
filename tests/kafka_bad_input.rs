//! Bad input on the Kafka port, over raw TCP: a frame over
//! `max_frame_bytes`, frames too short for a header, undecodable requests,
//! an unknown API key, unsupported versions, a batch with a wrong CRC
//! (CORRUPT_MESSAGE), fetch sessions (FETCH_SESSION_ID_NOT_FOUND), magic 0 and 1 batches (UNSUPPORTED_FOR_MESSAGE_FORMAT), an
//! unknown topic (UNKNOWN_TOPIC_OR_PARTITION). Each gets a Kafka error code
//! or a closed connection, for that connection only: a well-behaved
//! librdkafka producer keeps producing throughout and a raw client on its
//! own connection keeps getting answers, and nothing is stored from the
//! bad batches.

mod common;
#[path = "common/kafka.rs"]
mod kafka;

use common::Broker;
use kafka::*;
use levee_client::codec::build_batch;
use levee_client::Compression;
use levee_engine::Record;
use rdkafka::consumer::Consumer;
use rdkafka::producer::BaseRecord;
use rdkafka::{Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CORRUPT_MESSAGE: i16 = 2;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const UNSUPPORTED_VERSION: i16 = 35;
const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
/// The broker's default `max_frame_bytes`.
const MAX_FRAME: u32 = 64 << 20;

fn batch(n: usize) -> Vec<u8> {
    let recs: Vec<Record> = (0..n)
        .map(|i| Record {
            timestamp: 1_700_000_000_000,
            key: Some(format!("k{i}").into_bytes()),
            value: Some(format!("raw value {i}").into_bytes()),
            headers: vec![],
        })
        .collect();
    build_batch(&recs, Compression::None).unwrap()
}

/// A frame holding only `body` after the size.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// The well-behaved raw client: ApiVersions and a produce still work, and
/// the partition holds exactly what it produced.
fn check_good(good: &mut KafkaRaw, produced: &mut i64, step: &str) {
    let (err, apis) = good.api_versions();
    assert_eq!(err, 0, "{step}: ApiVersions on the good connection");
    assert!(apis.iter().any(|a| a.0 == api::PRODUCE), "{step}");
    let (err, base) = good.produce("good", 0, &batch(2));
    assert_eq!(
        (err, base),
        (0, *produced),
        "{step}: produce on the good connection"
    );
    *produced += 2;
    assert_eq!(good.list_offset("good", 0, -1), (0, *produced), "{step}");
}

/// The partition `bad/0` still holds nothing.
fn check_untouched(good: &mut KafkaRaw, step: &str) {
    assert_eq!(
        good.list_offset("bad", 0, -1),
        (0, 0),
        "{step}: bad/0 changed"
    );
}

#[test]
fn bad_requests_get_an_error_or_a_closed_connection_and_other_clients_keep_working() {
    let b = Broker::start("kafka-bad-input");
    create_topic(&b, "good", 1);
    create_topic(&b, "bad", 1);
    create_topic(&b, "background", 2);
    let boot = b.kafka.to_string();

    // An rdkafka producer keeps producing during the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let stop = stop.clone();
        let boot = boot.clone();
        std::thread::spawn(move || {
            let p = producer("background", &producer_config(&boot, "all", "zstd"));
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let v = format!("bg-{n}");
                p.send(
                    BaseRecord::<[u8], [u8]>::to("background")
                        .partition((n % 2) as i32)
                        .payload(v.as_bytes()),
                )
                .unwrap_or_else(|(e, _)| panic!("background send: {e}"));
                n += 1;
                p.poll(Duration::from_millis(10));
            }
            flush_all_delivered(&p, n);
            n
        })
    };

    let mut good = KafkaRaw::connect(b.kafka);
    let mut produced = 0i64;
    check_good(&mut good, &mut produced, "start");

    // A frame over max_frame_bytes: the connection is closed without the
    // broker reading (or allocating) the body.
    let mut bad = KafkaRaw::connect(b.kafka);
    bad.send_bytes(&(MAX_FRAME + 1).to_be_bytes()).unwrap();
    assert!(bad.closed_by_broker(), "oversized frame");
    check_good(&mut good, &mut produced, "oversized frame");

    // A negative size, and a frame too short for a request header.
    for (what, bytes) in [
        ("negative size", (-5i32).to_be_bytes().to_vec()),
        ("4-byte frame", frame(&[0, 3, 0, 1])),
    ] {
        let mut bad = KafkaRaw::connect(b.kafka);
        bad.send_bytes(&bytes).unwrap();
        assert!(bad.closed_by_broker(), "{what}");
        check_good(&mut good, &mut produced, what);
    }

    // Undecodable requests: a header cut inside the client id; Metadata v1
    // claiming 1000 topics and holding none; Produce v3 whose records
    // length runs past the frame. An error or a close, never a hang.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("cut client id", {
            let mut e = Enc::default();
            e.i16(api::METADATA).i16(1).i32(77).i16(40);
            e.0.extend_from_slice(b"short");
            e.0
        }),
        ("metadata with missing topics", {
            let mut e = Enc::default();
            e.i16(api::METADATA)
                .i16(1)
                .i32(77)
                .str("bad-client")
                .i32(1000);
            e.0
        }),
        ("produce with a records length past the frame", {
            let mut e = Enc::default();
            e.i16(api::PRODUCE).i16(3).i32(77).str("bad-client");
            e.null_str()
                .i16(1)
                .i32(1000)
                .i32(1)
                .str("bad")
                .i32(1)
                .i32(0);
            e.i32(1 << 20);
            e.0.extend_from_slice(&batch(1));
            e.0
        }),
    ];
    for (what, body) in cases {
        let mut bad = KafkaRaw::connect(b.kafka);
        bad.send_bytes(&frame(&body)).unwrap();
        match bad.recv() {
            None => {}
            Some((corr, resp)) => {
                assert_eq!(corr, 77, "{what}: correlation id");
                eprintln!("{what}: answered with {} bytes", resp.len());
            }
        }
        check_good(&mut good, &mut produced, what);
        check_untouched(&mut good, what);
    }

    // The longest client id the protocol can carry (32767 bytes): an
    // ordinary answer, and the connection stays usable.
    let mut big = KafkaRaw::connect(b.kafka);
    let mut e = Enc::default();
    e.i16(api::METADATA)
        .i16(1)
        .i32(78)
        .str(&"c".repeat(i16::MAX as usize))
        .i32(1)
        .str("good");
    big.send_bytes(&frame(&e.0)).unwrap();
    let (corr, resp) = big
        .recv()
        .expect("an answer to a request with a 32767-byte client id");
    assert_eq!(corr, 78);
    assert!(resp.len() > 8, "a Metadata answer: {resp:?}");
    let resp = big.call(api::METADATA, 1, &[0, 0, 0, 0]);
    assert!(!resp.is_empty(), "the connection still answers");
    check_good(&mut good, &mut produced, "longest client id");

    // An unknown API key and unsupported versions: UNSUPPORTED_VERSION,
    // and the connection stays usable.
    let mut bad = KafkaRaw::connect(b.kafka);
    for (what, key, version) in [
        ("unknown API key 999", 999i16, 0i16),
        ("unknown API key -1", -1, 0),
        ("Produce v0 (magic 0 era)", api::PRODUCE, 0),
        ("Metadata v99", api::METADATA, 99),
        ("ElectLeaders (not served)", 43, 0),
    ] {
        let resp = bad.call(key, version, &[0; 16]);
        assert_eq!(
            i16::from_be_bytes([resp[0], resp[1]]),
            UNSUPPORTED_VERSION,
            "{what}"
        );
    }
    // ApiVersions at a version the broker does not know: the v0 answer,
    // with UNSUPPORTED_VERSION and the served APIs.
    let resp = bad.call(api::API_VERSIONS, 99, &[]);
    let (err, apis) = parse_api_versions(&resp);
    assert_eq!(err, UNSUPPORTED_VERSION, "ApiVersions v99");
    assert!(
        apis.iter()
            .any(|&(k, min, max)| k == api::API_VERSIONS && min == 0 && max >= 3),
        "ApiVersions v99 lists the versions served: {apis:?}"
    );
    assert_eq!(bad.api_versions().0, 0, "the same connection after them");
    check_good(&mut good, &mut produced, "unsupported versions");

    // A batch whose CRC is wrong: CORRUPT_MESSAGE, nothing stored.
    let mut corrupt = batch(3);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x55;
    assert_eq!(
        bad.produce("bad", 0, &corrupt).0,
        CORRUPT_MESSAGE,
        "wrong CRC"
    );
    check_untouched(&mut good, "wrong CRC");

    // Batches of magic 0 and 1 (the pre-0.11 message set formats).
    for magic in [0u8, 1] {
        let mut old = batch(3);
        old[16] = magic;
        assert_eq!(
            bad.produce("bad", 0, &old).0,
            UNSUPPORTED_FOR_MESSAGE_FORMAT,
            "magic {magic}"
        );
        check_untouched(&mut good, "magic 0 or 1");
    }

    // An unknown topic (auto-creation is off), an unknown partition.
    assert_eq!(
        bad.produce("no-such-topic", 0, &batch(1)).0,
        UNKNOWN_TOPIC_OR_PARTITION,
        "produce to an unknown topic"
    );
    assert_eq!(
        bad.produce("bad", 7, &batch(1)).0,
        UNKNOWN_TOPIC_OR_PARTITION,
        "produce to an unknown partition"
    );
    assert_eq!(
        bad.fetch("no-such-topic", 0, 0).0,
        UNKNOWN_TOPIC_OR_PARTITION,
        "fetch from an unknown topic"
    );
    assert_eq!(
        bad.list_offset("no-such-topic", 0, -1).0,
        UNKNOWN_TOPIC_OR_PARTITION,
        "list offsets of an unknown topic"
    );
    check_untouched(&mut good, "unknown topic");

    // Fetch sessions (KIP-227) are declined: a full fetch (session id 0,
    // epoch 0 or -1) gets session id 0 back; an incremental one (a session
    // id, or an epoch past 0) FETCH_SESSION_ID_NOT_FOUND.
    for (session, epoch, want) in [(0, -1, 0i16), (0, 0, 0), (7, 1, 70), (0, 3, 70), (7, 0, 70)] {
        use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
        use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse, TopicName};
        use kafka_protocol::protocol::StrBytes;
        let mut p = FetchPartition::default();
        p.partition = 0;
        p.partition_max_bytes = 1 << 20;
        let mut t = FetchTopic::default();
        t.topic = TopicName(StrBytes::from_static_str("bad"));
        t.partitions = vec![p];
        let mut req = FetchRequest::default();
        req.replica_id = kafka_protocol::messages::BrokerId(-1);
        req.max_wait_ms = 10;
        req.max_bytes = 1 << 20;
        req.session_id = session;
        req.session_epoch = epoch;
        req.topics = vec![t];
        let r: FetchResponse = bad.call_encoded(ApiKey::Fetch, 12, &req);
        assert_eq!(
            (r.error_code, r.session_id),
            (want, 0),
            "fetch with session id {session}, epoch {epoch}"
        );
        if want == 0 {
            assert_eq!(r.responses.len(), 1, "a full fetch answers its partitions");
        }
    }

    // After all that, the same connection still produces.
    assert_eq!(bad.produce("bad", 0, &batch(2)), (0, 0), "a valid batch");
    check_good(&mut good, &mut produced, "end");

    stop.store(true, Ordering::SeqCst);
    let n = background.join().expect("background producer");
    assert!(n > 0);
    let c = consumer("background-reader", &reader_config(&boot));
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition_offset("background", p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let got = consume_n(&c, n, Duration::from_secs(20));
    assert_eq!(got.len(), n, "background messages read back");
    let mut values: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8(m.value.clone().unwrap()).unwrap())
        .collect();
    values.sort_by_key(|v| v[3..].parse::<usize>().unwrap());
    assert_eq!(
        values,
        (0..n).map(|i| format!("bg-{i}")).collect::<Vec<_>>()
    );
    let log = b.log_text();
    assert!(
        !log.contains("panicked"),
        "the broker logged a panic:\n{log}"
    );
}
