//! The engine's demo: appends records to a partition log in `./levee-data`
//! with `fsync = always` (group commit), reopens it as after a restart, reads
//! everything back verifying every batch, and prints what it measured.
//!
//!     cargo run --release -p levee-engine --example demo [MiB] [DIR]

use levee_engine::batch::{self, Record};
use levee_engine::{FsyncPolicy, Log, LogConfig};
use std::rc::Rc;
use std::time::Instant;

fn main() {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let dir = std::env::args()
        .nth(2)
        .unwrap_or_else(|| "levee-data/demo-partition".to_string());
    let _ = std::fs::remove_dir_all(&dir);
    glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(0))
        .name("shard-0")
        .make()
        .expect("glommio executor (io_uring) could not start")
        .run(async move {
            let cfg = LogConfig {
                fsync: FsyncPolicy::Always,
                segment_bytes: 64 << 20,
                ..LogConfig::default()
            };
            // 64 records of 1 KiB per batch, like a producer's 64 KiB batch.
            let recs: Vec<Record> = (0..64)
                .map(|i| Record {
                    timestamp: 1_700_000_000_000 + i,
                    key: Some(format!("key-{i}").into_bytes()),
                    value: Some(vec![b'x'; 1000]),
                    headers: vec![],
                })
                .collect();
            let proto = batch::build_batch(&recs);
            let batches = (mib << 20) / proto.len() as u64;
            let log = Rc::new(Log::open(&dir, cfg.clone()).await.expect("open"));
            let start = Instant::now();
            let mut tasks = Vec::new();
            for p in 0..4 {
                let (log, proto) = (log.clone(), proto.clone());
                tasks.push(glommio::spawn_local(async move {
                    for _ in (p..batches).step_by(4) {
                        log.append_durable(proto.clone()).await.expect("append");
                    }
                }));
            }
            for t in tasks {
                t.await;
            }
            let el = start.elapsed().as_secs_f64();
            let bytes = batches * proto.len() as u64;
            let stats = log.stats();
            println!(
                "appended {} records ({} MiB) in {:.2} s: {:.0} MiB/s, {} fdatasyncs, {} segments",
                stats.log_end_offset,
                bytes >> 20,
                el,
                bytes as f64 / el / 1048576.0,
                stats.flushes,
                stats.segments
            );
            log.close().await.expect("close");
            drop(log);

            let start = Instant::now();
            let log = Log::open(&dir, cfg).await.expect("reopen");
            println!(
                "reopened after a clean shutdown in {:.1} ms",
                start.elapsed().as_secs_f64() * 1e3
            );
            let start = Instant::now();
            let (mut at, mut n, mut read) = (0, 0u64, 0u64);
            while at < log.log_end_offset() {
                let out = log.read(at, 1 << 20, None).await.expect("read");
                for b in batch::split_batches(&out.data) {
                    batch::validate_stored(b, usize::MAX).expect("valid batch");
                    n += u64::from(batch::BatchHeader::parse(b).expect("header").record_count());
                }
                read += out.data.len() as u64;
                at = out.next_offset;
            }
            let el = start.elapsed().as_secs_f64();
            println!(
                "read back {n} records ({} MiB), every CRC checked, in {:.2} s: {:.0} MiB/s",
                read >> 20,
                el,
                read as f64 / el / 1048576.0
            );
            println!("data directory: {dir}");
            log.close().await.expect("close");
        });
}
