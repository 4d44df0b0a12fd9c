//! librdkafka (the `rdkafka` crate) against a real `levee serve` on its
//! Kafka port:
//!
//! - produce with every codec (none, gzip, snappy, lz4, zstd) at acks 0, 1
//!   and all, with keys, null keys, binary values and headers (a null
//!   header value, a repeated header name), explicit timestamps; consume
//!   everything back and compare every field, offsets included; the stored
//!   batches carry the codec the client chose;
//! - consume from earliest, from latest, and from a timestamp
//!   (offsets_for_times), and read the watermarks;
//! - the Kafka admin API: create topics, see them in Metadata, describe a
//!   topic's configs, delete a topic, add partitions (a group member then
//!   reads the new ones);
//! - across protocols: records from the native `levee-client` Producer read
//!   by an rdkafka consumer, and records from an rdkafka producer read by
//!   the native Consumer, with identical keys, values, headers and
//!   timestamps; the stored batches fetched over both protocols are the
//!   same bytes.

mod common;
#[path = "common/kafka.rs"]
mod kafka;

use common::Broker;
use kafka::*;
use levee_client::{
    Client, ClientConfig as NativeConfig, Compression, Consumer as NativeConsumer, ConsumerConfig,
    FetchRequestPartition, Producer as NativeProducer, ProducerConfig, StartPosition,
};
use levee_engine::Record;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};
use std::time::Duration;

const CODECS: [(&str, i16); 5] = [
    ("none", 0),
    ("gzip", 1),
    ("snappy", 2),
    ("lz4", 3),
    ("zstd", 4),
];

/// A value that compresses (so librdkafka keeps the compressed batch) and
/// holds every byte value.
fn value_for(tag: &str, i: usize) -> Vec<u8> {
    let mut v = format!("{tag} message {i} ").repeat(8).into_bytes();
    v.extend(0u8..=255);
    v
}

fn headers_for(i: usize) -> Vec<(String, Option<Vec<u8>>)> {
    vec![
        ("trace-id".into(), Some(format!("t-{i}").into_bytes())),
        ("empty".into(), Some(Vec::new())),
        ("null".into(), None),
        ("trace-id".into(), Some(b"repeated name".to_vec())),
    ]
}

fn owned_headers(h: &[(String, Option<Vec<u8>>)]) -> OwnedHeaders {
    h.iter().fold(OwnedHeaders::new(), |acc, (k, v)| {
        acc.insert(Header {
            key: k.as_str(),
            value: v.as_ref(),
        })
    })
}

/// Sends `msg` (partition, key, value, headers, timestamp as given).
fn send(p: &KProducer, topic: &str, m: &Msg) {
    let headers = owned_headers(&m.headers);
    let mut r: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
        .partition(m.partition)
        .timestamp(m.timestamp)
        .headers(headers);
    if let Some(k) = &m.key {
        r = r.key(k.as_slice());
    }
    if let Some(v) = &m.value {
        r = r.payload(v.as_slice());
    }
    p.send(r)
        .unwrap_or_else(|(e, _)| panic!("send to {topic}: {e}"));
    p.poll(Duration::ZERO);
}

fn assign_all(c: &KConsumer, topic: &str, partitions: i32, at: Offset) {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, at).unwrap();
    }
    c.assign(&tpl).unwrap();
}

/// Sorted by partition, then offset.
fn by_position(mut v: Vec<Msg>) -> Vec<Msg> {
    v.sort_by_key(|m| (m.partition, m.offset));
    v
}

/// Compares everything but offsets, message by message, for a clear
/// failure message.
fn assert_same_records(got: &[Msg], want: &[Msg], what: &str) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: {} messages read, {} expected",
        got.len(),
        want.len()
    );
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            (&g.partition, &g.timestamp, &g.key, &g.headers),
            (&w.partition, &w.timestamp, &w.key, &w.headers),
            "{what}: message {i} (offset {})",
            g.offset
        );
        assert!(
            g.value == w.value,
            "{what}: message {i} (offset {}): value differs",
            g.offset
        );
    }
}

#[test]
fn every_codec_and_acks_level_round_trips_keys_headers_and_timestamps() {
    let b = Broker::start("kafka-codecs");
    let boot = b.kafka.to_string();
    let mut raw = KafkaRaw::connect(b.kafka);
    for (codec, codec_id) in CODECS {
        let topic = format!("codec-{codec}");
        create_topic(&b, &topic, 2);
        // Sent in order per partition: one producer per acks level, each
        // flushed before the next starts.
        let mut sent: Vec<Msg> = Vec::new();
        let mut offsets_reported: Vec<(i32, i64, Vec<u8>)> = Vec::new();
        for (n, acks) in ["0", "1", "all"].into_iter().enumerate() {
            let p = producer(
                &format!("{codec}-acks-{acks}"),
                &producer_config(&boot, acks, codec),
            );
            let batch: Vec<Msg> = (0..12)
                .map(|i| Msg {
                    partition: (i % 2) as i32,
                    offset: -1,
                    timestamp: 1_700_000_000_000 + (n * 100 + i) as i64 * 7,
                    key: (i % 4 != 0).then(|| format!("key-{acks}-{i}").into_bytes()),
                    value: Some(value_for(&format!("{codec}/acks={acks}"), i)),
                    headers: headers_for(i),
                })
                .collect();
            for m in &batch {
                send(&p, &topic, m);
            }
            let reports = flush_all_delivered(&p, batch.len());
            if acks != "0" {
                for r in reports {
                    assert!(
                        r.msg.offset >= 0,
                        "acks={acks} {codec}: delivery report without an offset"
                    );
                    offsets_reported.push((
                        r.msg.partition,
                        r.msg.offset,
                        r.msg.value.clone().unwrap(),
                    ));
                }
            }
            sent.extend(batch);
        }
        let c = consumer(&format!("{codec}-reader"), &reader_config(&boot));
        assign_all(&c, &topic, 2, Offset::Beginning);
        let got = by_position(consume_n(&c, sent.len(), Duration::from_secs(20)));
        // Expected: per partition, in send order.
        let mut want: Vec<Msg> = Vec::new();
        for part in 0..2 {
            want.extend(sent.iter().filter(|m| m.partition == part).cloned());
        }
        assert_same_records(&got, &want, &format!("codec {codec}"));
        for part in 0..2 {
            let offs: Vec<i64> = got
                .iter()
                .filter(|m| m.partition == part)
                .map(|m| m.offset)
                .collect();
            assert_eq!(
                offs,
                (0..18).collect::<Vec<i64>>(),
                "{codec} p{part} offsets"
            );
        }
        // Delivery reports name the offsets the records were read at.
        for (part, off, value) in offsets_reported {
            let m = got
                .iter()
                .find(|m| m.partition == part && m.offset == off)
                .unwrap_or_else(|| panic!("{codec}: reported offset {off} of p{part} not read"));
            assert!(
                m.value.as_deref() == Some(&value[..]),
                "{codec}: p{part} offset {off} holds another record than reported"
            );
        }
        // The stored batches are compressed with the producer's codec.
        for part in 0..2 {
            let (err, hw, data) = raw.fetch(&topic, part, 0);
            assert_eq!(
                (err, hw),
                (0, 18),
                "{codec} p{part}: fetch error, high watermark"
            );
            let batches = split_batches(&data);
            assert!(!batches.is_empty());
            for bt in batches {
                assert_eq!(batch_codec(bt), codec_id, "{codec} p{part}: stored codec");
                assert_eq!(bt[16], 2, "magic");
            }
        }
    }
}

#[test]
fn consume_from_earliest_latest_and_a_timestamp() {
    let b = Broker::start("kafka-offsets");
    let boot = b.kafka.to_string();
    create_topic(&b, "times", 1);
    let t0 = 1_700_000_000_000i64;
    let p = producer("times-producer", &producer_config(&boot, "all", "none"));
    let msg = |i: i64| Msg {
        partition: 0,
        offset: -1,
        timestamp: t0 + i * 1000,
        key: None,
        value: Some(format!("m{i}").into_bytes()),
        headers: Vec::new(),
    };
    for i in 0..10 {
        send(&p, "times", &msg(i));
        // One batch per message, so that timestamp lookups resolve to
        // single records.
        p.flush(Duration::from_secs(10)).unwrap();
    }
    flush_all_delivered(&p, 10);

    let c = consumer("times-earliest", &reader_config(&boot));
    assert_eq!(
        c.fetch_watermarks("times", 0, Duration::from_secs(5))
            .unwrap(),
        (0, 10),
        "watermarks"
    );

    // Earliest.
    assign_all(&c, "times", 1, Offset::Beginning);
    let got = consume_n(&c, 10, Duration::from_secs(10));
    assert_eq!(
        got.iter().map(|m| m.offset).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    assert_eq!(got[3].timestamp, t0 + 3000);

    // Latest: nothing old, then only what is produced after.
    let latest = consumer("times-latest", &reader_config(&boot));
    assign_all(&latest, "times", 1, Offset::End);
    let old = consume_for(&latest, Duration::from_millis(1500));
    assert!(old.is_empty(), "a consumer at the end read {old:?}");
    for i in 10..13 {
        send(&p, "times", &msg(i));
    }
    p.flush(Duration::from_secs(10)).unwrap();
    let new = consume_n(&latest, 3, Duration::from_secs(10));
    assert_eq!(
        new.iter()
            .map(|m| (m.offset, m.value.clone().unwrap()))
            .collect::<Vec<_>>(),
        (10..13)
            .map(|i| (i, format!("m{i}").into_bytes()))
            .collect::<Vec<_>>()
    );
    let more = consume_for(&latest, Duration::from_millis(500));
    assert!(more.is_empty(), "read past what was produced: {more:?}");

    // By timestamp: the first record at or after t0 + 4.5 s is offset 5;
    // exactly t0 + 7 s is offset 7; past the last record there is none.
    let c = consumer("times-by-time", &reader_config(&boot));
    for (t, want) in [
        (t0 + 4500, Offset::Offset(5)),
        (t0 + 7000, Offset::Offset(7)),
    ] {
        let mut q = TopicPartitionList::new();
        q.add_partition_offset("times", 0, Offset::Offset(t))
            .unwrap();
        let found = c.offsets_for_times(q, Duration::from_secs(10)).unwrap();
        let e = found.find_partition("times", 0).unwrap();
        assert_eq!(e.error(), Ok(()), "offsets_for_times({t})");
        assert_eq!(e.offset(), want, "offsets_for_times({t})");
    }
    let mut q = TopicPartitionList::new();
    q.add_partition_offset("times", 0, Offset::Offset(t0 + 1_000_000))
        .unwrap();
    let found = c.offsets_for_times(q, Duration::from_secs(10)).unwrap();
    assert_eq!(
        found.find_partition("times", 0).unwrap().offset(),
        Offset::End,
        "offsets_for_times past the last record"
    );
    // ListOffsets (v4) by time also answers the found record's own
    // timestamp; earliest and latest answer timestamp -1.
    {
        use kafka_protocol::messages::list_offsets_request::{
            ListOffsetsPartition, ListOffsetsTopic,
        };
        use kafka_protocol::messages::{
            ApiKey, ListOffsetsRequest, ListOffsetsResponse, TopicName,
        };
        use kafka_protocol::protocol::StrBytes;
        let mut raw = KafkaRaw::connect(b.kafka);
        for (spec, want) in [
            (t0 + 4500, (5, t0 + 5000)),
            (t0 + 7000, (7, t0 + 7000)),
            (t0 + 1_000_000, (-1, -1)),
            (-2, (0, -1)),
            (-1, (13, -1)),
        ] {
            let mut p = ListOffsetsPartition::default();
            p.timestamp = spec;
            let mut t = ListOffsetsTopic::default();
            t.name = TopicName(StrBytes::from_static_str("times"));
            t.partitions = vec![p];
            let mut req = ListOffsetsRequest::default();
            req.replica_id = kafka_protocol::messages::BrokerId(-1);
            req.topics = vec![t];
            let r: ListOffsetsResponse = raw.call_encoded(ApiKey::ListOffsets, 4, &req);
            let got = &r.topics[0].partitions[0];
            assert_eq!(got.error_code, 0, "ListOffsets({spec})");
            assert_eq!((got.offset, got.timestamp), want, "ListOffsets({spec})");
        }
    }
    // Consuming from the offset found for a time.
    assign_all(&c, "times", 1, Offset::Offset(5));
    let got = consume_n(&c, 8, Duration::from_secs(10));
    assert_eq!(
        got.first().map(|m| (m.offset, m.timestamp)),
        Some((5, t0 + 5000))
    );
    assert_eq!(got.len(), 8);
}

#[test]
fn admin_client_creates_describes_and_deletes_topics() {
    let b = Broker::start("kafka-admin");
    let boot = b.kafka.to_string();
    let admin: AdminClient<DefaultClientContext> =
        base_config(&boot).create().expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let topics = [
        NewTopic::new("admin-a", 3, TopicReplication::Fixed(1)),
        NewTopic::new("admin-b", 1, TopicReplication::Fixed(1)).set("retention.ms", "3600000"),
    ];
    let created = rt.block_on(admin.create_topics(&topics, &opts)).unwrap();
    for r in &created {
        assert!(r.is_ok(), "create_topics: {r:?}");
    }
    // Creating one again: TOPIC_ALREADY_EXISTS.
    let again = rt
        .block_on(admin.create_topics(&topics[..1], &opts))
        .unwrap();
    assert!(
        matches!(
            &again[0],
            Err((t, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) if t == "admin-a"
        ),
        "create an existing topic: {again:?}"
    );

    let c = consumer("admin-metadata", &reader_config(&boot));
    let (brokers, parts) = metadata(&c, Some("admin-a"));
    assert_eq!(brokers, vec![(0, boot.clone())], "brokers in Metadata");
    assert_eq!(parts.len(), 3, "partitions of admin-a: {parts:?}");
    for p in &parts {
        assert_eq!((p.leader, p.error), (0, None), "{p:?}");
    }

    let described = rt
        .block_on(admin.describe_configs(&[ResourceSpecifier::Topic("admin-b")], &opts))
        .unwrap();
    let cfg = described[0].as_ref().expect("describe_configs admin-b");
    let retention = cfg
        .get("retention.ms")
        .and_then(|e| e.value.clone())
        .unwrap_or_else(|| panic!("no retention.ms in {:?}", cfg.entries));
    assert_eq!(retention, "3600000");

    let deleted = rt
        .block_on(admin.delete_topics(&["admin-b"], &opts))
        .unwrap();
    assert!(deleted[0].is_ok(), "delete_topics: {deleted:?}");
    // Kafka brokers delete asynchronously: Metadata may list the topic
    // for a moment.
    let until = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let md = c.fetch_metadata(None, Duration::from_secs(10)).unwrap();
        // Internal topics (the groups' __consumer_offsets, created when
        // the reader looked its group coordinator up) are listed too, as
        // by Kafka.
        let mut names: Vec<String> = md
            .topics()
            .iter()
            .map(|t| t.name().to_string())
            .filter(|n| !n.starts_with("__"))
            .collect();
        names.sort();
        if names == ["admin-a"] {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "topics after the delete: {names:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// CreatePartitions through librdkafka's admin client: a topic grows from
/// 2 to 5 partitions while a group member consumes it; the member gets the
/// new partitions (librdkafka's leader sees them in Metadata and the group
/// rebalances) and reads what is produced to them; a shrink, an unknown
/// topic and a repeated grow are refused with Kafka's codes; validate-only
/// changes nothing; after a restart the topic still has 5 partitions and
/// every message.
#[test]
fn admin_client_adds_partitions_and_a_group_consumes_them() {
    use rdkafka::admin::NewPartitions;
    use rdkafka::types::RDKafkaErrorCode as Code;
    let mut b = Broker::start("kafka-add-partitions");
    let boot = b.kafka.to_string();
    let admin: AdminClient<DefaultClientContext> =
        base_config(&boot).create().expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let created = rt
        .block_on(admin.create_topics(
            &[NewTopic::new("grow", 2, TopicReplication::Fixed(1))],
            &opts,
        ))
        .unwrap();
    assert!(created[0].is_ok(), "{created:?}");

    let mut cfg = consumer_config(&boot, "grow-group");
    cfg.set("topic.metadata.refresh.interval.ms", "500");
    let member = consumer("grow-member", &cfg);
    member.subscribe(&["grow"]).unwrap();
    let p = producer("grow-producer", &producer_config(&boot, "all", "none"));
    let before: Vec<Msg> = (0..2)
        .map(|i| Msg {
            partition: i,
            offset: 0,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(format!("before {i}").into_bytes()),
            headers: Vec::new(),
        })
        .collect();
    for m in &before {
        send(&p, "grow", m);
    }
    flush_all_delivered(&p, 2);
    let got = consume_n(&member, 2, Duration::from_secs(30));
    assert_eq!(got.len(), 2, "read before the grow: {got:?}");
    // Committed, so that the rebalance onto 5 partitions resumes here.
    member
        .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
        .unwrap();

    // Validate only: accepted, nothing changes.
    let check_only = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .validate_only(true);
    let r = rt
        .block_on(admin.create_partitions(&[NewPartitions::new("grow", 4)], &check_only))
        .unwrap();
    assert!(r[0].is_ok(), "validate-only grow: {r:?}");
    assert_eq!(metadata(&member, Some("grow")).1.len(), 2);

    let r = rt
        .block_on(admin.create_partitions(&[NewPartitions::new("grow", 5)], &opts))
        .unwrap();
    assert!(r[0].is_ok(), "grow to 5: {r:?}");
    let (_, parts) = metadata(&member, Some("grow"));
    assert_eq!(parts.len(), 5, "{parts:?}");
    for p in &parts {
        assert_eq!((p.leader, p.error), (0, None), "{p:?}");
    }
    for (req, code) in [
        (NewPartitions::new("grow", 5), Code::InvalidPartitions),
        (NewPartitions::new("grow", 3), Code::InvalidPartitions),
        (
            NewPartitions::new("no-such-topic", 3),
            Code::UnknownTopicOrPartition,
        ),
    ] {
        let r = rt.block_on(admin.create_partitions(&[req], &opts)).unwrap();
        assert!(
            matches!(&r[0], Err((_, c)) if *c == code),
            "expected {code:?}, got {r:?}"
        );
    }

    // The member is given the new partitions and reads from them. (A new
    // producer: the first one learns of the partitions only at its next
    // metadata refresh, and librdkafka refuses unknown partitions locally.)
    drop(p);
    let p = producer("grow-producer-2", &producer_config(&boot, "all", "none"));
    let after: Vec<Msg> = (2..5)
        .map(|i| Msg {
            partition: i,
            offset: 0,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(format!("after {i}").into_bytes()),
            headers: Vec::new(),
        })
        .collect();
    for m in &after {
        send(&p, "grow", m);
    }
    flush_all_delivered(&p, 3);
    let got = by_position(consume_n(&member, 3, Duration::from_secs(30)));
    assert_eq!(
        got.iter()
            .map(|m| (m.partition, m.offset))
            .collect::<Vec<_>>(),
        vec![(2, 0), (3, 0), (4, 0)],
        "the group member read from the new partitions: {got:?}"
    );
    drop(member);
    drop(p);

    // After a restart: 5 partitions, every message.
    b.restart();
    let reader = consumer("grow-reader", &reader_config(&b.kafka.to_string()));
    assert_eq!(metadata(&reader, Some("grow")).1.len(), 5);
    assign_all(&reader, "grow", 5, Offset::Beginning);
    let all = by_position(consume_n(&reader, 5, Duration::from_secs(30)));
    let values: Vec<Vec<u8>> = all.iter().filter_map(|m| m.value.clone()).collect();
    let want: Vec<Vec<u8>> = before
        .iter()
        .chain(&after)
        .filter_map(|m| m.value.clone())
        .collect();
    assert_eq!(values, want);
}

fn native_client(b: &Broker, rt: &tokio::runtime::Runtime) -> Client {
    rt.block_on(Client::connect(NativeConfig::new([b.bootstrap()])))
        .expect("native client")
}

/// The partition's stored batches fetched over the native protocol.
fn native_batches(rt: &tokio::runtime::Runtime, c: &Client, topic: &str, p: u32) -> Vec<u8> {
    let got = rt
        .block_on(c.fetch(
            Duration::ZERO,
            0,
            64 << 20,
            &[FetchRequestPartition {
                topic: topic.into(),
                partition: p,
                offset: 0,
                max_bytes: 32 << 20,
            }],
        ))
        .expect("native fetch");
    got[0].batches.to_vec()
}

#[test]
fn native_producer_to_rdkafka_consumer_and_back_with_identical_records_and_bytes() {
    let b = Broker::start("kafka-cross");
    let boot = b.kafka.to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client = native_client(&b, &rt);
    let mut raw = KafkaRaw::connect(b.kafka);

    // Native → Kafka: one partition per codec the native producer offers.
    let codecs = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];
    create_topic(&b, "from-native", codecs.len() as u32);
    let mut want: Vec<Msg> = Vec::new();
    let mut deliveries = Vec::new();
    for (part, codec) in codecs.iter().enumerate() {
        let prod = rt.block_on(async {
            NativeProducer::new(
                client.clone(),
                ProducerConfig {
                    compression: *codec,
                    ..ProducerConfig::default()
                },
            )
            .expect("native producer")
        });
        for i in 0..15 {
            let m = Msg {
                partition: part as i32,
                offset: i,
                timestamp: 1_650_000_000_000 + part as i64 * 1000 + i * 3,
                key: (i % 3 != 0).then(|| format!("nk-{i}").into_bytes()),
                value: Some(value_for(&format!("native {codec:?}"), i as usize)),
                headers: headers_for(i as usize),
            };
            let rec = Record {
                timestamp: m.timestamp,
                key: m.key.clone(),
                value: m.value.clone(),
                headers: m
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
                    .collect(),
            };
            let delivery = rt
                .block_on(prod.send_record("from-native", Some(part as u32), rec))
                .expect("native send");
            deliveries.push(delivery);
            want.push(m);
        }
        rt.block_on(prod.flush()).expect("native flush");
        for (i, d) in deliveries.drain(..).enumerate() {
            let report = rt.block_on(d).expect("native delivery");
            assert_eq!(
                (report.partition, report.offset),
                (part as u32, Some(i as u64)),
                "native delivery report"
            );
        }
    }
    let c = consumer("cross-reader", &reader_config(&boot));
    assign_all(&c, "from-native", codecs.len() as i32, Offset::Beginning);
    let got = by_position(consume_n(&c, want.len(), Duration::from_secs(20)));
    assert_same_records(&got, &want, "native producer -> rdkafka consumer");
    assert_eq!(
        got.iter().map(|m| m.offset).collect::<Vec<_>>(),
        want.iter().map(|m| m.offset).collect::<Vec<_>>(),
        "offsets"
    );
    for (part, codec) in codecs.iter().enumerate() {
        let native = native_batches(&rt, &client, "from-native", part as u32);
        let (err, _, kafka) = raw.fetch("from-native", part as i32, 0);
        assert_eq!(err, 0);
        assert!(
            native == kafka,
            "{codec:?}: the batches fetched over Kafka ({} bytes) differ from the native fetch ({} bytes)",
            kafka.len(),
            native.len()
        );
        for bt in split_batches(&kafka) {
            assert_eq!(batch_codec(bt), *codec as i16, "stored codec");
        }
    }

    // Kafka → native: every librdkafka codec.
    create_topic(&b, "from-kafka", CODECS.len() as u32);
    let mut want: Vec<Msg> = Vec::new();
    for (part, (codec, _)) in CODECS.iter().enumerate() {
        let p = producer(
            &format!("cross-{codec}"),
            &producer_config(&boot, "all", codec),
        );
        for i in 0..15 {
            let m = Msg {
                partition: part as i32,
                offset: i,
                timestamp: 1_660_000_000_000 + part as i64 * 1000 + i * 3,
                key: (i % 3 != 1).then(|| format!("kk-{i}").into_bytes()),
                value: Some(value_for(&format!("kafka {codec}"), i as usize)),
                headers: headers_for(i as usize),
            };
            send(&p, "from-kafka", &m);
            want.push(m);
        }
        flush_all_delivered(&p, 15);
    }
    let mut nc = NativeConsumer::new(client.clone(), ConsumerConfig::default());
    rt.block_on(nc.assign("from-kafka", None, StartPosition::Earliest))
        .expect("native assign");
    let mut got: Vec<Msg> = Vec::new();
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while got.len() < want.len() && std::time::Instant::now() < until {
        for r in rt.block_on(nc.poll()).expect("native poll") {
            got.push(Msg {
                partition: r.partition as i32,
                offset: r.offset as i64,
                timestamp: r.timestamp,
                key: r.key,
                value: r.value,
                headers: r
                    .headers
                    .into_iter()
                    .map(|(k, v)| (String::from_utf8(k).expect("utf-8 header name"), v))
                    .collect(),
            });
        }
    }
    let got = by_position(got);
    assert_same_records(&got, &want, "rdkafka producer -> native consumer");
    assert_eq!(
        got.iter().map(|m| m.offset).collect::<Vec<_>>(),
        want.iter().map(|m| m.offset).collect::<Vec<_>>(),
        "offsets"
    );
    for (part, (codec, id)) in CODECS.iter().enumerate() {
        let native = native_batches(&rt, &client, "from-kafka", part as u32);
        let (err, _, kafka) = raw.fetch("from-kafka", part as i32, 0);
        assert_eq!(err, 0);
        assert!(
            native == kafka,
            "{codec}: the batches fetched over Kafka ({} bytes) differ from the native fetch ({} bytes)",
            kafka.len(),
            native.len()
        );
        for bt in split_batches(&native) {
            assert_eq!(batch_codec(bt), *id, "{codec}: stored codec");
        }
    }
}

/// A Kafka listener on a wildcard address needs an advertised address:
/// `levee serve --kafka-listen 0.0.0.0:P` alone refuses to start and names
/// `kafka_advertise`; with `--kafka-advertise localhost:P`, Metadata
/// returns that address and a librdkafka producer bootstrapped at
/// 127.0.0.1 goes on through it; a malformed advertised address is refused.
#[test]
fn a_wildcard_kafka_listener_needs_and_advertises_kafka_advertise() {
    use std::process::{Command, Stdio};
    let dir = common::temp_dir("kafka-advertise");
    let (native, kport, admin) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let serve = |extra: &[&str]| {
        let mut c = Command::new(common::levee_bin());
        c.arg("serve")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen", &format!("127.0.0.1:{native}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--kafka-listen", &format!("0.0.0.0:{kport}")])
            .args(extra);
        c
    };
    for (extra, says) in [
        (&[][..], "kafka_advertise"),
        (&["--kafka-advertise", "no-port"][..], "not HOST:PORT"),
    ] {
        let out = serve(extra).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "levee serve {extra:?} started");
        assert!(err.contains(says), "levee serve {extra:?}: {err}");
    }

    let log = std::fs::File::create(dir.join("levee.log")).unwrap();
    let advertised = format!("localhost:{kport}");
    let mut child = serve(&["--kafka-advertise", &advertised])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", kport)).is_err() {
        assert!(
            std::time::Instant::now() < until,
            "no Kafka listener on port {kport}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let boot = format!("127.0.0.1:{kport}");
    let c = consumer("advertise-probe", &reader_config(&boot));
    let (brokers, _) = metadata(&c, None);
    assert_eq!(brokers, vec![(0, advertised.clone())]);
    let mut cfg = producer_config(&boot, "all", "none");
    cfg.set("allow.auto.create.topics", "false");
    let admin: AdminClient<DefaultClientContext> = base_config(&boot).create().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let made = rt
        .block_on(admin.create_topics(
            &[NewTopic::new("adv", 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        ))
        .unwrap();
    assert!(made[0].is_ok(), "{made:?}");
    let p = producer("advertise-producer", &cfg);
    for i in 0..5 {
        p.send(BaseRecord::<[u8], [u8]>::to("adv").payload(format!("a{i}").as_bytes()))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let d = flush_all_delivered(&p, 5);
    assert!(d.iter().all(|d| d.error.is_none()), "{d:?}");
    let _ = child.kill();
    let _ = child.wait();
}
