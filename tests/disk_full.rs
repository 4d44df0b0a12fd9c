//! A broker whose disk fills up stays operable (issue 19, item 3), on a
//! real full filesystem: a 128 MiB ext4 image mounted through a loop
//! device, with the data directory on it.
//!
//! - Produce (acks=all) until the disk is full: produce fails with a
//!   storage error that says the disk is full (Kafka: KAFKA_STORAGE_ERROR);
//!   every acknowledged batch reads back intact at its offsets; `/health` answers 503 "degraded:
//!   disk full" and `/metrics` has `levee_disk_full 1`; deleting a
//!   consumer group works.
//! - `levee topic delete` of a second topic works on the full disk (the
//!   space reserve is given up for `topics.toml`), produce works again at
//!   once, without a restart, and `levee_disk_full` returns to 0.
//! - Filled again, `levee topic alter --retention-bytes` frees space at
//!   once and produce works again.
//!
//! Needs root and loop devices (mount); without them it prints why and
//! passes without checking anything. It unmounts and removes only what it
//! created.

mod common;
#[path = "common/kafka.rs"]
mod kafka;

use common::loopfs::LoopFs;
use common::raw::Raw;
use common::{levee, Broker};
use levee_engine::batch::{build_batch, records, split_batches, BatchHeader, Record};
use levee_schemas::proto::{ErrorCode, ProducePartitionResponse};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const RECORDS: usize = 64;
const VALUE_LEN: usize = 2000;

/// Record `k` of batch `i`: its numbers, then filler.
fn value(i: u64, k: usize) -> Vec<u8> {
    let mut v = format!("{i}:{k}:").into_bytes();
    v.resize(VALUE_LEN, b'a' + (i % 26) as u8);
    v
}

fn batch(i: u64) -> Vec<u8> {
    batch_of(i, RECORDS)
}

fn batch_of(i: u64, n: usize) -> Vec<u8> {
    let recs: Vec<Record> = (0..n)
        .map(|k| Record {
            timestamp: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            key: None,
            value: Some(value(i, k)),
            headers: vec![],
        })
        .collect();
    build_batch(&recs)
}

/// An acknowledged batch: its number and first offset.
#[derive(Debug, Clone, Copy)]
struct Acked {
    seq: u64,
    base: u64,
    records: usize,
}

/// Produces numbered batches (acks=all) from `seq` on until one fails,
/// then batches of one record until one fails too, so that not even a
/// block is left; returns those acknowledged and the last failure.
fn fill(raw: &mut Raw, topic: &str, seq: &mut u64) -> (Vec<Acked>, ProducePartitionResponse) {
    let mut acked = Vec::new();
    for records in [RECORDS, 1] {
        // 128 MiB holds under 1,000 batches of 128 KiB, and what is left
        // after them under 100 of one record.
        let mut failed = None;
        for _ in 0..3000 {
            let r = raw.produce(topic, 0, &batch_of(*seq, records));
            if r.error != ErrorCode::None {
                failed = Some(r);
                break;
            }
            acked.push(Acked {
                seq: *seq,
                base: r.base_offset,
                records,
            });
            *seq += 1;
        }
        let failed = failed.expect("3,000 batches fitted on a 128 MiB disk: it never filled");
        if records == 1 {
            return (acked, failed);
        }
    }
    unreachable!()
}

/// Every acknowledged batch reads back whole, at its offset.
fn verify(raw: &mut Raw, topic: &str, acked: &[Acked]) {
    for a in acked {
        let (r, data) = raw.fetch(topic, 0, a.base);
        assert_eq!(
            r.error,
            ErrorCode::None,
            "fetch at {}: {:?}",
            a.base,
            r.message
        );
        let b = split_batches(&data)
            .next()
            .unwrap_or_else(|| panic!("nothing at offset {}", a.base));
        let h = BatchHeader::parse(b).expect("a stored batch header");
        assert_eq!(h.base_offset(), a.base, "batch {} moved", a.seq);
        let recs = records(b).expect("records decode");
        assert_eq!(recs.len(), a.records, "batch {}", a.seq);
        for (k, rec) in recs.iter().enumerate() {
            assert_eq!(
                rec.value,
                Some(&value(a.seq, k)[..]),
                "batch {} record {k} damaged",
                a.seq
            );
        }
    }
}

/// (status line, body) of an admin GET.
fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

fn metric(b: &Broker, name: &str) -> f64 {
    let (_, body) = http_get(b.admin, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Waits (up to 15 s) until metric `name` is `want`; returns how long.
fn wait_metric(b: &Broker, name: &str, want: f64) -> Duration {
    let t = Instant::now();
    loop {
        let got = metric(b, name);
        if got == want {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "{name} stayed {got} for 15 s, not {want}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_disk_full(b: &Broker, want: f64) -> Duration {
    wait_metric(b, "levee_disk_full", want)
}

fn assert_disk_full_error(r: &ProducePartitionResponse) {
    assert_eq!(r.error, ErrorCode::StorageError, "{:?}", r.message);
    let m = r.message.as_deref().unwrap_or("");
    assert!(
        m.contains("disk is full") && m.contains("No space left on device"),
        "{m}"
    );
}

fn cli(b: &Broker, args: &[&str]) -> String {
    let (ok, out, err) = levee(&b.bootstrap(), args, None);
    assert!(ok, "levee {args:?} failed: {err}");
    String::from_utf8_lossy(&out).into_owned()
}

fn used_mib(dir: &Path) -> u64 {
    let out = Command::new("du")
        .arg("-sm")
        .arg(dir)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_broker_on_a_full_disk_stays_operable() {
    let fs = match LoopFs::create(128) {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("SKIPPED a_broker_on_a_full_disk_stays_operable: {why}");
            return;
        }
    };
    // Declared after `fs`: the broker stops before the unmount.
    let b = Broker::start_in("disk-full", fs.data_dir(), &["--cores", "1"]);
    assert!(
        b.data_dir().join("space.reserve").exists(),
        "no space reserve at start"
    );
    for t in ["events", "filler"] {
        cli(&b, &["topic", "create", t, "--segment-bytes", "4194304"]);
    }
    let mut raw = Raw::hello(&b);
    // A consumer group with a committed offset, to delete on the full disk.
    raw.produce("events", 0, &batch(0));
    cli(
        &b,
        &[
            "consume",
            "events",
            "--group",
            "dfg",
            "--from",
            "earliest",
            "--count",
            "1",
            "--timeout-ms",
            "5000",
        ],
    );
    assert!(cli(&b, &["group", "list"]).contains("dfg"));
    // 40 MB of a topic to delete later.
    for i in 0..300 {
        let r = raw.produce("filler", 0, &batch(i));
        assert_eq!(r.error, ErrorCode::None, "{:?}", r.message);
    }

    // 1. Fill the disk.
    let mut seq = 1;
    let (mut acked, failed) = fill(&mut raw, "events", &mut seq);
    assert!(acked.len() > 100, "only {} batches fitted", acked.len());
    assert_disk_full_error(&failed);
    let slack = fs.top_up("hog-1");
    wait_disk_full(&b, 1.0);
    let (status, body) = http_get(b.admin, "/health");
    assert!(status.contains("503"), "{status}\n{body}");
    assert!(body.starts_with("degraded: disk full"), "{body}");
    assert!(body.contains("levee topic delete"), "{body}");
    // What was acknowledged reads back intact; a retry still fails.
    verify(&mut raw, "events", &acked);
    assert_disk_full_error(&raw.produce("events", 0, &batch(seq)));
    // Over Kafka: produce gets KAFKA_STORAGE_ERROR (56), fetch works.
    let mut k = kafka::KafkaRaw::connect(b.kafka);
    assert_eq!(k.produce("events", 0, &batch(seq)).0, 56);
    let (err, _, data) = k.fetch("events", 0, acked[0].base as i64);
    assert_eq!(err, 0, "Kafka fetch on the full disk");
    assert!(!data.is_empty());

    // 2. Deleting a topic works on the full disk, and produce resumes.
    let t = Instant::now();
    cli(&b, &["topic", "delete", "filler"]);
    let deleted = t.elapsed();
    assert!(
        b.log_text().contains("released the space reserve"),
        "the topic was deleted without the reserve: the disk was not full?"
    );
    let r = raw.produce("events", 0, &batch(seq));
    assert_eq!(r.error, ErrorCode::None, "{:?}", r.message);
    let produced = t.elapsed();
    acked.push(Acked {
        seq,
        base: r.base_offset,
        records: RECORDS,
    });
    seq += 1;
    wait_disk_full(&b, 0.0);
    let cleared = t.elapsed();
    let (status, body) = http_get(b.admin, "/health");
    assert!(status.contains("200"), "{status}\n{body}");
    // Re-created once the filesystem counts the freed blocks as free.
    wait_metric(&b, "levee_space_reserve_bytes", 8388608.0);
    let reserve = t.elapsed();
    verify(&mut raw, "events", &acked);
    eprintln!("produce left {slack} bytes of the disk for another writer to take");
    eprintln!(
        "topic delete on the full disk: {:.1} ms; first produce acknowledged {:.1} ms after the delete started; levee_disk_full back to 0 after {:.0} ms, the reserve back (seen) after {:.0} ms",
        deleted.as_secs_f64() * 1e3,
        produced.as_secs_f64() * 1e3,
        cleared.as_secs_f64() * 1e3,
        reserve.as_secs_f64() * 1e3
    );

    // 3. Full again: deleting a consumer group works (and frees its log,
    // taken again by produce), and a lower retention frees space at once.
    let (more, failed) = fill(&mut raw, "events", &mut seq);
    assert_disk_full_error(&failed);
    acked.extend(more);
    fs.top_up("hog-2");
    wait_disk_full(&b, 1.0);
    cli(&b, &["group", "delete", "dfg"]);
    assert!(!cli(&b, &["group", "list"]).contains("dfg"));
    let (more, failed) = fill(&mut raw, "events", &mut seq);
    assert_disk_full_error(&failed);
    acked.extend(more);
    fs.top_up("hog-3");
    let before = used_mib(b.data_dir());
    let t = Instant::now();
    let out = cli(
        &b,
        &["topic", "alter", "events", "--retention-bytes", "16777216"],
    );
    assert!(out.contains("retention.bytes=16777216"), "{out}");
    let r = raw.produce("events", 0, &batch(seq));
    assert_eq!(r.error, ErrorCode::None, "{:?}", r.message);
    let produced = t.elapsed();
    wait_disk_full(&b, 0.0);
    let cleared = t.elapsed();
    let after = used_mib(b.data_dir());
    assert_eq!(
        b.log_text().matches("released the space reserve").count(),
        2,
        "the alter was written without the reserve: the disk was not full?"
    );
    assert!(
        after + 40 < before,
        "{before} MiB used before, {after} after"
    );
    let d = cli(&b, &["topic", "describe", "events"]);
    assert!(d.contains("retention_bytes: 16777216"), "{d}");
    // Retention removed the oldest batches; the ones it kept read back.
    let log_start: u64 = d
        .lines()
        .find(|l| l.starts_with("0\t"))
        .and_then(|l| l.split('\t').nth(2)?.parse().ok())
        .unwrap_or_else(|| panic!("no partition 0 in {d}"));
    assert!(log_start > 0, "{d}");
    let (r0, _) = raw.fetch("events", 0, 0);
    assert_eq!(r0.error, ErrorCode::OffsetOutOfRange, "{:?}", r0.message);
    let kept: Vec<Acked> = acked
        .iter()
        .copied()
        .filter(|a| a.base >= log_start)
        .collect();
    assert!(!kept.is_empty());
    verify(&mut raw, "events", &kept);
    eprintln!(
        "retention lowered on the full disk: {before} MiB -> {after} MiB; produce acknowledged {:.1} ms after the alter started; levee_disk_full back to 0 after {:.0} ms",
        produced.as_secs_f64() * 1e3,
        cleared.as_secs_f64() * 1e3
    );
}
