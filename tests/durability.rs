//! kill -9 of the broker while producers wait for acks=all with
//! fsync=always: every acknowledged batch is there after the restart, byte
//! for byte, at the offset it was acknowledged with.

mod common;

use common::raw::{batch, config, Raw};
use common::Broker;
use levee_engine::batch::{records, split_batches};
use levee_schemas::proto::ErrorCode;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const PARTITIONS: u32 = 4;

/// Reads every record of a partition: offset -> value.
fn read_all(c: &mut Raw, topic: &str, partition: u32) -> BTreeMap<u64, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut next = 0;
    loop {
        let (r, data) = c.fetch(topic, partition, next);
        assert_eq!(r.error, ErrorCode::None, "{:?}", r.message);
        if data.is_empty() {
            return out;
        }
        for b in split_batches(&data) {
            for rec in records(b).unwrap() {
                out.insert(rec.offset, rec.value.unwrap().to_vec());
                next = rec.offset + 1;
            }
        }
    }
}

#[test]
fn kill_9_during_acks_all_loses_nothing_acknowledged() {
    let mut b = Broker::start_with("durability", &["--cores", "2"]);
    {
        let mut c = Raw::hello(&b);
        let mut cfg = config(PARTITIONS);
        cfg.fsync = Some("always".into());
        c.create_with("d", cfg);
    }
    // (partition, offset) -> value of every acknowledged record.
    let mut acked: BTreeMap<(u32, u64), Vec<u8>> = BTreeMap::new();
    for round in 0..3 {
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let (b_addr, stop) = (b.addr, stop.clone());
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    let shim = common::Broker::shim(b_addr);
                    let mut c = Raw::hello(&shim);
                    let mut n = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let p = (t + n as u32) % PARTITIONS;
                        let vals: Vec<String> =
                            (0..8).map(|i| format!("r{round}-t{t}-n{n}-i{i}")).collect();
                        let refs: Vec<&str> = vals.iter().map(String::as_str).collect();
                        match c.try_produce("d", p, &batch(&refs)) {
                            Ok(r) if r.error == ErrorCode::None => {
                                for (i, v) in vals.iter().enumerate() {
                                    mine.push((
                                        (p, r.base_offset + i as u64),
                                        v.clone().into_bytes(),
                                    ));
                                }
                            }
                            _ => break,
                        }
                        n += 1;
                    }
                    mine
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(700));
        b.kill();
        stop.store(true, Ordering::SeqCst);
        let mut this_round = 0;
        for t in threads {
            for (k, v) in t.join().unwrap() {
                assert!(
                    acked.insert(k, v).is_none(),
                    "offset {k:?} acknowledged twice"
                );
                this_round += 1;
            }
        }
        eprintln!("round {round}: {this_round} records acknowledged before kill -9");
        assert!(
            this_round > 100,
            "round {round}: only {this_round} records acknowledged"
        );
        b.spawn();
        let mut c = Raw::hello(&b);
        let mut stored = BTreeMap::new();
        for p in 0..PARTITIONS {
            for (o, v) in read_all(&mut c, "d", p) {
                stored.insert((p, o), v);
            }
        }
        for (k, v) in &acked {
            assert_eq!(
                stored.get(k),
                Some(v),
                "acknowledged record {k:?} lost or changed after kill -9"
            );
        }
    }
}
