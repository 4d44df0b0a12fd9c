//! Bounded memory: connections that open and close, and long-poll fetches
//! that time out, leave the broker's resident memory where it was. Each
//! connection task and each long poll waits on events (shutdown, new data);
//! a waiter that goes away must take its registration with it.
//!
//! In `cargo test`: 20,000 connections and 100,000 timed-out long polls.
//! `LEVEE_MEMORY_FULL=1`: 100,000 and 1,000,000 (a few minutes).

mod common;

use common::raw::Raw;
use common::Broker;
use levee_schemas::proto::*;
use std::time::{Duration, Instant};

fn rss_kib(b: &Broker) -> u64 {
    let pid = b.child.as_ref().expect("running").id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Opens `n` connections from 4 threads, each saying Hello, then resets it
/// (no TIME_WAIT left to exhaust the ports).
fn churn_connections(b: &Broker, n: usize) {
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let b = Broker::shim(b.addr);
            std::thread::spawn(move || {
                for _ in 0..n / 4 {
                    let r = Raw::hello(&b);
                    let s = socket2::Socket::from(r.s);
                    s.set_linger(Some(Duration::ZERO)).unwrap();
                    drop(s);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("connection churn");
    }
}

/// `n` long-poll fetches at the end of an empty partition that time out
/// after 1 ms, over 16 connections.
fn churn_long_polls(b: &Broker, n: usize) {
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let b = Broker::shim(b.addr);
            std::thread::spawn(move || {
                let mut r = Raw::hello(&b);
                for _ in 0..n / 16 {
                    let (h, _) = r.call(
                        Request::Fetch(Box::new(Fetch {
                            max_wait_ms: 1,
                            min_bytes: 1,
                            max_bytes: 1 << 20,
                            partitions: Some(vec![FetchPartition {
                                topic: "idle".into(),
                                partition: (i % 2) as u32,
                                offset: 0,
                                max_bytes: 1 << 20,
                                leader_epoch: -1,
                                log_start_offset: -1,
                            }]),
                            replica_id: -1,
                            isolation_level: 0,
                        })),
                        &[],
                    );
                    assert_eq!(h.error, ErrorCode::None, "{:?}", h.message);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("long polls");
    }
}

#[test]
fn connections_and_timed_out_long_polls_leave_memory_bounded() {
    let full = std::env::var_os("LEVEE_MEMORY_FULL").is_some();
    let (conns, polls) = if full {
        (100_000, 1_000_000)
    } else {
        (20_000, 100_000)
    };
    let b = Broker::start_with("memory-bound", &["--cores", "2"]);
    Raw::hello(&b).create("idle", 2);
    // Warm up: buffer pools, allocator arenas, the first segments.
    churn_connections(&b, 2_000);
    churn_long_polls(&b, 10_000);
    std::thread::sleep(Duration::from_millis(200));
    let before = rss_kib(&b);
    let t = Instant::now();
    churn_connections(&b, conns);
    churn_long_polls(&b, polls);
    std::thread::sleep(Duration::from_millis(200));
    let after = rss_kib(&b);
    println!(
        "{conns} connections and {polls} timed-out long polls in {:.1} s: RSS {before} KiB -> {after} KiB ({:+} KiB)",
        t.elapsed().as_secs_f64(),
        after as i64 - before as i64
    );
    // Still serving.
    let mut r = Raw::hello(&b);
    let (f, _) = r.fetch("idle", 0, 0);
    assert_eq!(f.error, ErrorCode::None);
    assert!(
        after <= before + 16 * 1024,
        "RSS grew from {before} KiB to {after} KiB over {conns} connections and {polls} long polls"
    );
}
