//! Cross-shard forwarding: the same operation run on the owning shard and
//! sent to it from another shard over the channel mesh (two pinned glommio
//! executors spinning `idle_spin_us` before parking, as the broker's do; real
//! partitions on disk). The difference is the cost of a hop.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use levee_engine::batch::{build_batch, Record};
use levee_server::config::ServerConfig;
use levee_server::shard::Shard;
use levee_server::topics::TopicMeta;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy)]
enum Kind {
    Info,
    Produce64K,
}

type Cmd = (Kind, bool, u64, mpsc::Sender<Duration>);

fn bench(c: &mut Criterion) {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("forward-bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = Arc::new(ServerConfig {
        data_dir: dir.clone(),
        ..Default::default()
    });
    let mut topics = BTreeMap::new();
    topics.insert(
        "fwd".to_string(),
        TopicMeta {
            partitions: 2,
            replication_factor: 1,
            retention_bytes: -1,
            retention_ms: -1,
            fsync: "never".into(),
            max_backlog_bytes: -1,
            segment_bytes: -1,
            max_message_bytes: -1,
            id: String::new(),
        },
    );
    let mesh = MeshBuilder::full(2, 1024);
    let (cmd_tx, cmd_rx) = mpsc::channel::<Cmd>();
    let cmd_rx = Arc::new(std::sync::Mutex::new(Some(cmd_rx)));
    let done = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let handles: Vec<_> = (0..2)
        .map(|i| {
            let (cfg, topics, mesh, cmd_rx, done, ready) = (
                cfg.clone(),
                topics.clone(),
                mesh.clone(),
                cmd_rx.clone(),
                done.clone(),
                ready.clone(),
            );
            let spin = cfg.idle_spin_us;
            let b = LocalExecutorBuilder::new(Placement::Fixed(i % cpus));
            let b = if spin > 0 {
                b.spin_before_park(Duration::from_micros(spin))
            } else {
                b
            };
            b.spawn(move || async move {
                let (senders, receivers) = mesh.join().await.unwrap();
                let id = senders.peer_id();
                let shard = Shard::new(
                    id,
                    2,
                    cfg.clone(),
                    topics.clone(),
                    Some(senders),
                    None,
                    Arc::new(levee_server::space::SpaceState::new(&cfg.data_dir, 0)),
                );
                shard.serve_mesh(receivers);
                shard.open_topic("fwd", &topics["fwd"]).await.unwrap();
                // Both shards own an open partition before any call.
                ready.fetch_add(1, Ordering::SeqCst);
                while ready.load(Ordering::SeqCst) < 2 {
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
                let rx = if id == 0 {
                    cmd_rx.lock().unwrap().take()
                } else {
                    None
                };
                let local = (0..2).find(|&p| shard.owner("fwd", p) == id).unwrap();
                let remote = 1 - local;
                let batch = build_batch(
                    &(0..64)
                        .map(|_| Record {
                            timestamp: 0,
                            key: None,
                            value: Some(vec![1u8; 1000]),
                            headers: vec![],
                        })
                        .collect::<Vec<_>>(),
                );
                loop {
                    if done.load(Ordering::SeqCst) {
                        break;
                    }
                    let Some(rx) = &rx else {
                        glommio::timer::sleep(Duration::from_millis(1)).await;
                        continue;
                    };
                    match rx.try_recv() {
                        Ok((kind, hop, iters, reply)) => {
                            let p = if hop { remote } else { local };
                            let owner = shard.owner("fwd", p);
                            let start = Instant::now();
                            for _ in 0..iters {
                                let res = match kind {
                                    Kind::Info => shard
                                        .submit_to(owner, move |s| async move {
                                            s.partition("fwd", p).map(|part| part.state())
                                        })
                                        .await
                                        .map(drop),
                                    Kind::Produce64K => {
                                        let data = bytes::Bytes::from(batch.clone());
                                        shard
                                            .submit_to(owner, move |s| async move {
                                                s.partition("fwd", p)?
                                                    .produce(1, Duration::from_secs(10), data, 0)
                                                    .await
                                            })
                                            .await
                                            .map(drop)
                                    }
                                };
                                if let Err(e) = res {
                                    panic!(
                                        "shard {id} (local partition {local}) to shard {owner} for partition {p} failed: {} {}",
                                        e.message,
                                        levee_schemas::error_name(e.code)
                                    );
                                }
                            }
                            let _ = reply.send(start.elapsed());
                        }
                        Err(mpsc::TryRecvError::Empty) => {
                            glommio::timer::sleep(Duration::from_micros(200)).await
                        }
                        Err(mpsc::TryRecvError::Disconnected) => break,
                    }
                }
                done.store(true, Ordering::SeqCst);
                shard.close_all().await;
            })
            .unwrap()
        })
        .collect();
    let run = |kind: Kind, hop: bool, iters: u64| {
        let (tx, rx) = mpsc::channel();
        cmd_tx.send((kind, hop, iters, tx)).unwrap();
        rx.recv().unwrap()
    };
    let mut g = c.benchmark_group("shard_call");
    g.throughput(Throughput::Elements(1));
    for (name, kind) in [("info", Kind::Info), ("produce_64k", Kind::Produce64K)] {
        for (where_, hop) in [("local", false), ("forwarded", true)] {
            g.bench_function(format!("{name}/{where_}"), |b| {
                b.iter_custom(|iters| run(kind, hop, iters))
            });
        }
    }
    g.finish();
    drop(cmd_tx);
    done.store(true, Ordering::SeqCst);
    for h in handles {
        let _ = h.join();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
