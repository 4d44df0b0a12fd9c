//! The native protocol against the real broker, spoken raw: bad frames, bad
//! batches and unknown topics get typed errors and never disturb other
//! connections.

mod common;

use common::raw::{batch, Raw};
use common::Broker;
use levee_engine::batch::split_batches;
use levee_schemas::proto::*;
use levee_schemas::request_frame;
use std::io::Write;

#[test]
fn produce_then_fetch_returns_the_stored_bytes() {
    let b = Broker::start("proto-roundtrip");
    let mut c = Raw::hello(&b);
    c.create("t", 4);
    for p in 0..4 {
        let r = c.produce("t", p, &batch(&["a", "b", "c"]));
        assert_eq!(
            (r.error, r.base_offset, r.last_offset),
            (ErrorCode::None, 0, 2),
            "{:?}",
            r.message
        );
        let r = c.produce("t", p, &batch(&["d"]));
        assert_eq!(r.base_offset, 3);
    }
    let (r, data) = c.fetch("t", 2, 0);
    assert_eq!(r.error, ErrorCode::None);
    assert_eq!(r.high_watermark, 4);
    let batches: Vec<_> = split_batches(&data).collect();
    assert_eq!(batches.len(), 2);
    let recs = levee_engine::batch::records(batches[1]).unwrap();
    assert_eq!((recs[0].offset, recs[0].value), (3, Some(&b"d"[..])));
    // Fetching at the end returns nothing, past it is a typed error.
    let (r, data) = c.fetch("t", 2, 4);
    assert!(data.is_empty() && r.error == ErrorCode::None);
    let (r, _) = c.fetch("t", 2, 99);
    assert_eq!(r.error, ErrorCode::OffsetOutOfRange);
}

#[test]
fn the_first_request_must_be_hello() {
    let b = Broker::start("proto-hello");
    let mut c = Raw::connect(&b);
    let (h, _) = c.call(Request::ListTopics(Box::new(ListTopics {})), &[]);
    assert_eq!(h.error, ErrorCode::UnsupportedVersion);
    assert!(c.recv().is_none(), "the connection is closed");
    let mut c = Raw::connect(&b);
    let (h, _) = c.call(
        Request::Hello(Box::new(Hello {
            client_id: None,
            min_version: 7,
            max_version: 9,
        })),
        &[],
    );
    assert_eq!(h.error, ErrorCode::UnsupportedVersion);
    assert!(h.message.unwrap().contains("7..=9"));
}

#[test]
fn garbage_oversized_and_corrupt_input_get_errors_and_others_keep_working() {
    let b = Broker::start_with("proto-garbage", &["--cores", "2"]);
    let mut good = Raw::hello(&b);
    good.create("g", 2);

    // Garbage inside a well-formed frame: an error response, the connection lives on.
    let mut bad = Raw::hello(&b);
    let mut frame = 100u32.to_le_bytes().to_vec();
    frame.extend_from_slice(&20u32.to_le_bytes());
    frame.extend((0..96).map(|i| (i * 37 % 251) as u8));
    bad.s.write_all(&frame).unwrap();
    let (h, _) = bad.recv().expect("an error response");
    assert_eq!(h.error, ErrorCode::InvalidRequest, "{:?}", h.message);
    let (h, _) = bad.call(Request::ListTopics(Box::new(ListTopics {})), &[]);
    assert_eq!(h.error, ErrorCode::None);

    // A header length past the frame.
    bad.s
        .write_all(&[8, 0, 0, 0, 255, 255, 0, 0, 1, 2, 3, 4])
        .unwrap();
    let (h, _) = bad.recv().expect("an error response");
    assert_eq!(h.error, ErrorCode::InvalidRequest);

    // A frame over max_frame_bytes: MessageTooLarge naming the correlation id, then close.
    let mut big = Raw::hello(&b);
    let mut f = request_frame(
        &RequestHeader {
            correlation_id: 77,
            request: Request::ListTopics(Box::new(ListTopics {})),
        },
        &[],
    );
    f[..4].copy_from_slice(&(1u32 << 30).to_le_bytes());
    big.s.write_all(&f).unwrap();
    let (h, _) = big.recv().expect("an error response");
    assert_eq!(
        (h.error, h.correlation_id),
        (ErrorCode::MessageTooLarge, 77)
    );
    assert!(big.recv().is_none(), "the connection is closed");

    // A batch with a wrong CRC is refused and nothing is written.
    let mut bytes = batch(&["x", "y"]);
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    let r = good.produce("g", 0, &bytes);
    assert_eq!(r.error, ErrorCode::CorruptBatch, "{:?}", r.message);
    assert!(r.message.unwrap().contains("CRC"));
    // Trailing bytes that are not a whole batch are refused too.
    let mut bytes = batch(&["x"]);
    bytes.extend_from_slice(&[1, 2, 3]);
    assert_eq!(good.produce("g", 0, &bytes).error, ErrorCode::CorruptBatch);
    let (r, data) = good.fetch("g", 0, 0);
    assert_eq!((r.high_watermark, data.len()), (0, 0));

    // Unknown topic and partition.
    let r = good.produce("nope", 0, &batch(&["x"]));
    assert_eq!(r.error, ErrorCode::UnknownTopicOrPartition);
    assert!(r.message.unwrap().contains("`nope` does not exist"));
    assert_eq!(
        good.produce("g", 9, &batch(&["x"])).error,
        ErrorCode::UnknownTopicOrPartition
    );

    // A payload slice outside the payload.
    let (h, _) = good.call(
        Request::Produce(Box::new(Produce {
            acks: 1,
            timeout_ms: 1000,
            partitions: Some(vec![ProducePartition {
                topic: "g".into(),
                partition: 1,
                payload_offset: 5,
                payload_len: u32::MAX,
            }]),
        })),
        &[0; 10],
    );
    match h.response {
        Some(Response::ProduceResponse(p)) => {
            assert_eq!(p.partitions.unwrap()[0].error, ErrorCode::InvalidRequest)
        }
        other => panic!("{other:?}"),
    }

    // After all that, the good connection still works on both shards.
    for p in 0..2 {
        let r = good.produce("g", p, &batch(&["ok"]));
        assert_eq!((r.error, r.base_offset), (ErrorCode::None, 0));
    }
    assert!(!b.log_text().contains("panicked"));
}

#[test]
fn max_backlog_bytes_refuses_produce_until_consumers_catch_up() {
    let b = Broker::start("proto-backlog");
    let mut c = Raw::hello(&b);
    let mut cfg = common::raw::config(1);
    cfg.max_backlog_bytes = 4096;
    c.create_with("bl", cfg);
    let big = batch(&[&"x".repeat(1500)]);
    let mut accepted = 0;
    let err = loop {
        let r = c.produce("bl", 0, &big);
        if r.error != ErrorCode::None {
            break r;
        }
        accepted += 1;
        assert!(accepted < 10, "the backlog bound was never enforced");
    };
    assert_eq!(err.error, ErrorCode::BacklogFull);
    assert!(err.message.unwrap().contains("max_backlog_bytes"));
    assert_eq!(accepted, 2);
    // A consumer reads to the end: produce is accepted again.
    let mut next = 0;
    loop {
        let (r, data) = c.fetch("bl", 0, next);
        assert_eq!(r.error, ErrorCode::None);
        match split_batches(&data).last() {
            Some(last) => {
                next = levee_engine::BatchHeader::parse(last)
                    .unwrap()
                    .next_offset()
            }
            None => break,
        }
    }
    assert_eq!(c.produce("bl", 0, &big).error, ErrorCode::None);
}

#[test]
fn long_poll_fetch_wakes_when_data_arrives_on_another_shard() {
    let b = Broker::start_with("proto-longpoll", &["--cores", "2"]);
    let mut c = Raw::hello(&b);
    c.create("lp", 2);
    let addr = b.addr;
    let producer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let mut p = Raw::hello(&Broker::shim(addr));
        p.produce("lp", 1, &batch(&["late"]))
    });
    let started = std::time::Instant::now();
    let (h, payload) = c.call(
        Request::Fetch(Box::new(Fetch {
            max_wait_ms: 8000,
            min_bytes: 1,
            max_bytes: 1 << 20,
            partitions: Some(
                (0..2)
                    .map(|p| FetchPartition {
                        topic: "lp".into(),
                        partition: p,
                        offset: 0,
                        max_bytes: 1 << 20,
                        leader_epoch: -1,
                        log_start_offset: -1,
                    })
                    .collect(),
            ),
            replica_id: -1,
            isolation_level: 0,
        })),
        &[],
    );
    let waited = started.elapsed();
    assert_eq!(producer.join().unwrap().error, ErrorCode::None);
    assert!(
        waited < std::time::Duration::from_secs(6),
        "the long poll was not woken ({waited:?})"
    );
    let Some(Response::FetchResponse(f)) = h.response else {
        panic!("{:?}", h.message)
    };
    let parts = f.partitions.unwrap();
    assert_eq!(parts[1].payload_len as usize, payload.len());
    let recs = levee_engine::batch::records(&payload).unwrap();
    assert_eq!(recs[0].value, Some(&b"late"[..]));
}

#[test]
fn retention_deletes_old_segments_by_broker_default_and_topic_override() {
    let dir = common::temp_dir("proto-retention-cfg");
    let cfg = dir.join("levee.toml");
    std::fs::write(
        &cfg,
        "[log]\nsegment_bytes = 65536\nretention_bytes = 262144\nretention_ms = -1\nretention_check_interval_ms = 100\npreallocate_bytes = 65536\n",
    )
    .unwrap();
    let b = Broker::start_with("proto-retention", &["--config", cfg.to_str().unwrap()]);
    let mut c = Raw::hello(&b);
    c.create("inherits", 1);
    let mut own = common::raw::config(1);
    own.retention_bytes = 131072;
    c.create_with("own", own);
    let big = batch(&[&"r".repeat(8000)]);
    for _ in 0..200 {
        for t in ["inherits", "own"] {
            assert_eq!(c.produce(t, 0, &big).error, ErrorCode::None);
        }
    }
    // About 1.6 MB went into each; retention keeps about its bound.
    let start = std::time::Instant::now();
    loop {
        let (a, _) = c.fetch("inherits", 0, 199);
        let (o, _) = c.fetch("own", 0, 199);
        let kept_a = 200 - a.log_start_offset;
        let kept_o = 200 - o.log_start_offset;
        // Each batch is about 8 KiB: the broker default keeps at most 256 KiB
        // plus a segment, the topic's own bound half of that. Retention runs
        // every 100 ms, so wait for the pass after the last append.
        let bound_a = (262_144 + 65_536) / 8000 + 1;
        let bound_o = (131_072 + 65_536) / 8000 + 1;
        if kept_a <= bound_a && kept_o <= bound_o {
            assert!(a.log_start_offset > 0 && o.log_start_offset > 0);
            assert!(
                kept_o < kept_a,
                "the topic's own bound is smaller: own kept {kept_o}, inherits kept {kept_a}"
            );
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "retention did not bring the logs down to their bounds: inherits kept {kept_a} (bound {bound_a}), own kept {kept_o} (bound {bound_o})"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Below the log start is a typed error.
    let (r, _) = c.fetch("own", 0, 0);
    assert_eq!(r.error, ErrorCode::OffsetOutOfRange);
}

fn metric(b: &Broker, family: &str, topic: &str, partition: u32) -> f64 {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(b.admin).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let prefix = format!("{family}{{topic=\"{topic}\",partition=\"{partition}\"");
    out.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

/// Fetches `parts` of `topic` from offset 0 in one request.
fn fetch_many(r: &mut Raw, topic: &str, parts: &[u32], max_bytes: u32, min_bytes: u32) -> Vec<u64> {
    let (h, _) = r.call(
        Request::Fetch(Box::new(Fetch {
            max_wait_ms: 300,
            min_bytes,
            max_bytes,
            partitions: Some(
                parts
                    .iter()
                    .map(|&p| FetchPartition {
                        topic: topic.into(),
                        partition: p,
                        offset: 0,
                        max_bytes: 1 << 20,
                        leader_epoch: -1,
                        log_start_offset: -1,
                    })
                    .collect(),
            ),
            replica_id: -1,
            isolation_level: 0,
        })),
        &[],
    );
    match h.response {
        Some(Response::FetchResponse(f)) => f
            .partitions
            .unwrap()
            .iter()
            .map(|p| u64::from(p.payload_len))
            .collect(),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn fetch_metrics_count_what_the_response_carries_once() {
    let b = Broker::start_with("fetch-accounting", &["--cores", "2"]);
    let mut r = Raw::hello(&b);
    r.create("acct", 2);
    let big: Vec<String> = (0..50).map(|i| format!("{i:0>1000}")).collect();
    let big: Vec<&str> = big.iter().map(String::as_str).collect();
    r.produce("acct", 0, &batch(&big));
    r.produce("acct", 1, &batch(&big));
    let out = |p| metric(&b, "levee_partition_bytes_out_total", "acct", p);
    let backlog = |p| metric(&b, "levee_partition_backlog_bytes", "acct", p);
    assert!(backlog(1) > 50_000.0);

    // A response limited to 1 KiB carries partition 0's batch (the first
    // is always sent) and nothing of partition 1: only partition 0 counts.
    let sent = fetch_many(&mut r, "acct", &[0, 1], 1024, 0);
    assert!(sent[0] > 50_000 && sent[1] == 0, "{sent:?}");
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(out(0), sent[0] as f64);
    assert_eq!(out(1), 0.0, "partition 1 sent nothing");
    assert!(
        backlog(1) > 50_000.0,
        "partition 1's backlog is still there"
    );

    // A long poll that waits for more than there is reads partition 1
    // several times, but sends it once.
    let sent = fetch_many(&mut r, "acct", &[1], 1 << 20, 1 << 20);
    assert!(sent[0] > 50_000, "{sent:?}");
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(out(1), sent[0] as f64, "counted once");
    assert_eq!(backlog(1), 0.0);
}
