//! Criterion benchmarks of the storage engine's hot paths.
//!
//! Append throughput (1 KiB records in batches of 64 KiB and 1 MiB, with
//! `fsync = never` and `always`) and sequential read throughput from disk,
//! plus batch validation (CRC32C) and index lookup. The data directory is
//! `LEVEE_BENCH_DIR` or the build's temporary directory; it must be on a
//! filesystem with O_DIRECT (not tmpfs).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use levee_engine::batch::{self, Record};
use levee_engine::index::SegmentIndex;
use levee_engine::{FsyncPolicy, Log, LogConfig};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

fn bench_dir() -> PathBuf {
    let base = std::env::var("LEVEE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    let d = base.join(format!("levee-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn executor() -> glommio::LocalExecutor {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .expect("glommio executor")
}

/// Lets a benchmark run try other write shapes: LEVEE_BENCH_CHUNK_KIB,
/// LEVEE_BENCH_INFLIGHT.
fn tune_from_env(cfg: &mut LogConfig) {
    if let Some(v) = std::env::var("LEVEE_BENCH_CHUNK_KIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        cfg.write_chunk_bytes = v << 10;
    }
    if let Some(v) = std::env::var("LEVEE_BENCH_INFLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.max_inflight_writes = v;
    }
}

/// A batch of `batch_bytes / 1 KiB` records of 1 KiB values.
fn batch_of(batch_bytes: usize) -> Vec<u8> {
    let n = (batch_bytes / 1024).max(1);
    let recs: Vec<Record> = (0..n)
        .map(|i| Record {
            timestamp: 1_700_000_000_000 + i as i64,
            key: None,
            value: Some(vec![(i % 251) as u8; 1024 - 8]),
            headers: vec![],
        })
        .collect();
    batch::build_batch(&recs)
}

const APPEND_BYTES: u64 = 256 << 20;
/// Bytes the producers keep in flight together, whatever the batch size.
const IN_FLIGHT_BYTES: usize = 16 << 20;

/// Producers appending concurrently (each waits for its batch to be durable
/// before sending the next, like a producer with one request in flight):
/// enough to keep `IN_FLIGHT_BYTES` in flight with batches of `batch_len`
/// (16 for 1 MiB batches, 256 for 64 KiB), or `LEVEE_BENCH_PRODUCERS`.
///
/// Under `fsync = always` the bytes in flight, not the batch size, set how
/// much one group commit can cover, so both batch sizes get the same.
fn producers(batch_len: usize) -> usize {
    std::env::var("LEVEE_BENCH_PRODUCERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(IN_FLIGHT_BYTES / batch_len.max(1))
        .max(1)
}

/// Appends `APPEND_BYTES` of copies of `proto` from `producers()`
/// concurrent producers, each waiting for its batch to be durable, then
/// flushes; returns the time taken.
async fn append_all(log: &Rc<Log>, proto: &[u8]) -> Duration {
    let n = (APPEND_BYTES / proto.len() as u64).max(1) as usize;
    // Batches arrive as owned buffers (from the network, in the broker):
    // build them untimed.
    let mut per_producer: Vec<Vec<Vec<u8>>> = vec![Vec::new(); producers(proto.len())];
    for i in 0..n {
        let k = i % per_producer.len();
        per_producer[k].push(proto.to_vec());
    }
    let start = Instant::now();
    // Concurrent producers keep appends in flight so group commit has
    // something to group.
    let mut tasks = Vec::new();
    for batches in per_producer {
        let log = log.clone();
        tasks.push(glommio::spawn_local(async move {
            for b in batches {
                log.append_durable(b).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await;
    }
    log.flush().await.unwrap();
    start.elapsed()
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("append");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Bytes(APPEND_BYTES));
    for (policy, name) in [
        (FsyncPolicy::Never, "never"),
        (FsyncPolicy::Always, "always"),
    ] {
        for batch_bytes in [64 << 10, 1 << 20] {
            let proto = batch_of(batch_bytes);
            let id = BenchmarkId::new(format!("fsync_{name}"), format!("{}KiB", batch_bytes >> 10));
            g.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let dir = bench_dir();
                        let proto = proto.clone();
                        total += executor().run(async move {
                            let mut cfg = LogConfig {
                                fsync: policy,
                                ..LogConfig::default()
                            };
                            tune_from_env(&mut cfg);
                            let log = Rc::new(Log::open(&dir, cfg).await.unwrap());
                            let el = append_all(&log, &proto).await;
                            log.close().await.unwrap();
                            drop(log);
                            // Let the reactor run the files' asynchronous closes.
                            glommio::timer::sleep(Duration::from_millis(1)).await;
                            let _ = std::fs::remove_dir_all(&dir);
                            el
                        });
                    }
                    total
                })
            });
        }
    }
    // Steady state of a log at its retention limit: 64 MiB segments, 128 MiB
    // retained, a retention pass every 10 ms, and 256 MiB appended untimed
    // first, so every segment of the timed part reuses a retired file
    // (`recycle_segments`) instead of newly allocated blocks.
    for batch_bytes in [64 << 10, 1 << 20] {
        let proto = batch_of(batch_bytes);
        let id = BenchmarkId::new(
            "fsync_always_at_retention",
            format!("{}KiB", batch_bytes >> 10),
        );
        g.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let dir = bench_dir();
                    let proto = proto.clone();
                    total += executor().run(async move {
                        let mut cfg = LogConfig {
                            fsync: FsyncPolicy::Always,
                            segment_bytes: 64 << 20,
                            retention_bytes: Some(128 << 20),
                            ..LogConfig::default()
                        };
                        tune_from_env(&mut cfg);
                        let log = Rc::new(Log::open(&dir, cfg).await.unwrap());
                        let stop = Rc::new(std::cell::Cell::new(false));
                        let retention = {
                            let (log, stop) = (log.clone(), stop.clone());
                            glommio::spawn_local(async move {
                                while !stop.get() {
                                    log.enforce_retention().await.unwrap();
                                    glommio::timer::sleep(Duration::from_millis(10)).await;
                                }
                            })
                        };
                        let _warm = append_all(&log, &proto).await;
                        let el = append_all(&log, &proto).await;
                        stop.set(true);
                        retention.await;
                        log.close().await.unwrap();
                        drop(log);
                        glommio::timer::sleep(Duration::from_millis(1)).await;
                        let _ = std::fs::remove_dir_all(&dir);
                        el
                    });
                }
                total
            })
        });
    }
    g.finish();
}

fn read(c: &mut Criterion) {
    let dir = bench_dir();
    let proto = batch_of(256 << 10);
    let total = executor().run({
        let dir = dir.clone();
        async move {
            let cfg = LogConfig {
                fsync: FsyncPolicy::Never,
                ..LogConfig::default()
            };
            let log = Log::open(&dir, cfg).await.unwrap();
            let mut written = 0u64;
            while written < APPEND_BYTES {
                log.append(proto.clone()).await.unwrap();
                written += proto.len() as u64;
            }
            log.close().await.unwrap();
            drop(log);
            glommio::timer::sleep(Duration::from_millis(1)).await;
            written
        }
    });
    let mut g = c.benchmark_group("read");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(15));
    g.throughput(Throughput::Bytes(total));
    for max_bytes in [1 << 20, 4 << 20] {
        g.bench_function(
            BenchmarkId::new("sequential", format!("{}MiB", max_bytes >> 20)),
            |b| {
                b.iter_custom(|iters| {
                    let dir = dir.clone();
                    executor().run(async move {
                        // A fresh open has an empty tail cache: every byte comes from disk.
                        let cfg = LogConfig {
                            read_ahead_bytes: max_bytes,
                            ..LogConfig::default()
                        };
                        let log = Log::open(&dir, cfg).await.unwrap();
                        let start = Instant::now();
                        for _ in 0..iters {
                            let mut at = 0;
                            let end = log.log_end_offset();
                            while at < end {
                                at = log.read(at, max_bytes, None).await.unwrap().next_offset;
                            }
                        }
                        let el = start.elapsed();
                        log.close().await.unwrap();
                        drop(log);
                        glommio::timer::sleep(Duration::from_millis(1)).await;
                        el
                    })
                })
            },
        );
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

fn validate(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch");
    let mut b = batch_of(64 << 10);
    batch::assign(&mut b, 42, 1);
    g.throughput(Throughput::Bytes(b.len() as u64));
    g.bench_function("validate_stored_64KiB", |bn| {
        bn.iter(|| {
            batch::validate_stored(std::hint::black_box(&b), usize::MAX)
                .unwrap()
                .record_count()
        })
    });
    g.finish();
    let mut idx = SegmentIndex::default();
    for i in 0..262_144u32 {
        idx.maybe_add(i * 4, u64::from(i) * 4096, i64::from(i), 4096);
    }
    c.bench_function("index_lookup_256k_entries", |bn| {
        let mut x = 0u32;
        bn.iter(|| {
            x = x.wrapping_add(7919) % (262_144 * 4);
            idx.lookup(std::hint::black_box(x))
        })
    });
}

criterion_group!(benches, validate, append, read);
criterion_main!(benches);
