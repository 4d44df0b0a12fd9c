//! Seeded fault trials against a real 3-node RF=3 cluster (issue 19, first
//! part): a native producer (acks=all, idempotent) writes numbered records
//! while faults chosen by a seeded RNG hit the nodes — kill -9 and restart,
//! SIGSTOP for longer than the broker lease then SIGCONT — and a checker
//! verifies the history once the cluster has healed:
//!
//! - every acknowledged record is readable at its acknowledged offset;
//! - no record was written twice (idempotence across the faults);
//! - the three replicas of every partition hold the same batches, byte for
//!   byte, up to the shortest replica's end (read from their segment files
//!   after a clean stop).
//!
//! Network faults go through fault-injecting proxies
//! (`common::ProxiedCluster`): every connection to a node (clients, the
//! other nodes' followers) and every coordinator link between two nodes
//! passes one, and a fault isolates a node both ways, cuts only what it
//! sends to the coordinators, or slows all its links.
//!
//! A failing trial prints its seed and the command that replays it. CI runs
//! eight seeds (1, 2, 4006, 4007, 6002, 11013, 13014, 13510: among them
//! every kind of fault but slow links); `TRIALS=N` runs N more (seeds from `TRIAL_SEED`, default 1000,
//! upwards) and prints a summary. `TRIAL_SEED=S TRIALS=1` replays one.
//! Half the kills also tear the last batch of the killed node's newest
//! segment (zeros or garbage from a point inside it). Even seeds run with
//! `fsync = always`, odd ones with `fsync = never` (durability from
//! replication alone, Kafka's default).
//! A group member reads the topic and commits every 200 ms throughout;
//! the checker also verifies that every acknowledged commit is still the
//! group's committed offset (or a later one is) after healing.
//! A full disk: each node's data directory is on a 256 MiB ext4 image of
//! its own, loop-mounted (needs root and loop devices; without them the
//! trials run without this fault and say so). After a fault has healed, a
//! third RNG (so that the other faults of a seed stay what they were)
//! may fill one node's filesystem for 2-4 s, and until the node finds it
//! full, up to 10 s (every free block taken by files beside the data
//! directory), and then free it: the node must keep
//! what it acknowledged, and its replicas catch up again without a restart.

mod common;

use common::loopfs::LoopFs;
use common::{levee, Broker};
use levee_client::{
    Client, ClientConfig, GroupConsumer, GroupConsumerConfig, OffsetReset, Producer, ProducerConfig,
};
use levee_engine::batch;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PARTITIONS: u32 = 3;
const GROUP: &str = "trial-group";
const PAD: &str = "................................................................................................................................................................................................";

/// A record's value without its padding, for reports.
fn short(v: &str) -> &str {
    v.strip_suffix(PAD)
        .and_then(|s| s.strip_suffix('-'))
        .unwrap_or(v)
}

/// Node `b`'s gauge `levee_disk_full` (1: a write found its disk full), or
/// `None` when its admin port does not answer.
fn disk_full_gauge(b: &Broker) -> Option<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&b.admin, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.lines()
        .find_map(|l| l.strip_prefix("levee_disk_full")?.trim().parse().ok())
}

#[derive(Debug, Default, Clone)]
struct Outcome {
    faults: BTreeMap<&'static str, usize>,
    acked: usize,
    lost: usize,
    duplicated: usize,
    /// Group commits acknowledged whose offset is no longer the group's
    /// committed one (or a later one) after healing.
    commits_lost: usize,
    commits: usize,
    divergent: usize,
    /// Per fault: from its end (restart, SIGCONT) to a full ISR again.
    recover_ms: Vec<u128>,
    /// The first lost records: where they were acknowledged, what that
    /// offset holds now and where (if anywhere) the record is stored.
    detail: Vec<String>,
}

fn bootstrap(nodes: &[Broker]) -> String {
    nodes
        .iter()
        .filter(|n| n.child.is_some())
        .map(|n| n.bootstrap())
        .collect::<Vec<_>>()
        .join(",")
}

fn signal(b: &Broker, sig: &str) {
    if let Some(c) = b.child.as_ref() {
        let _ = std::process::Command::new("kill")
            .args([sig, &c.id().to_string()])
            .status();
    }
}

/// Waits until every partition of `topic` has a leader and an ISR of
/// `isr` nodes; the time it took.
fn wait_healed(
    nodes: &[Broker],
    topic: &str,
    isr: usize,
    within: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let (ok, out, err) = levee(&bootstrap(nodes), &["topic", "describe", topic], None);
        let text = String::from_utf8_lossy(&out).to_string();
        if ok {
            let rows: Vec<&str> = text
                .lines()
                .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_digit()))
                .collect();
            let healed = rows.len() == PARTITIONS as usize
                && rows.iter().all(|r| {
                    let f: Vec<&str> = r.split('\t').collect();
                    f.len() >= 9 && f[1] != "none" && f[8].split(',').count() >= isr
                });
            if healed {
                return Ok(started.elapsed());
            }
        }
        if started.elapsed() > within {
            return Err(format!(
                "the cluster did not heal within {within:?}: {text}{err}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every stored batch of a partition directory, end to end, by reading its
/// segment files (the broker stopped).
fn replica_batches(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let mut segs: Vec<_> = std::fs::read_dir(dir)
        .map(|es| {
            es.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect()
        })
        .unwrap_or_default();
    segs.sort();
    let mut out = Vec::new();
    for s in segs {
        let data = std::fs::read(&s).unwrap_or_default();
        let mut pos = 0usize;
        while pos + 12 <= data.len() {
            let len = i32::from_be_bytes(data[pos + 8..pos + 12].try_into().unwrap());
            if len <= 0 || pos + 12 + len as usize > data.len() {
                break;
            }
            let b = &data[pos..pos + 12 + len as usize];
            if batch::validate_stored(b, 64 << 20).is_err() {
                break;
            }
            out.push(b.to_vec());
            pos += 12 + len as usize;
        }
    }
    out
}

/// Tears the last stored batch of `dir`'s newest segment, as a crash in
/// the middle of a write would: either its end never reached the disk
/// (zeros from a point inside it) or some of its bytes are garbage. The
/// node must find the damage on restart (CRC), drop that batch and what
/// follows, and fetch it again from the leader. Returns the fault's name,
/// or `None` if the segment holds no batch yet.
fn tear_tail(dir: &std::path::Path, rng: &mut StdRng) -> Option<&'static str> {
    let mut segs: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segs.sort();
    // Only the newest segment: a roll synced the ones before it, so no
    // crash can tear them (one just rolled holds no batch yet: then there
    // is nothing to tear).
    tear_segment(segs.last()?, rng)
}

/// The bytes of segment `seg` its offset index's last checkpoint covers
/// (header: magic `LVIX`, count, covered length), 0 without one. Recovery
/// trusts them (it scans from there): they were written and synced before
/// the checkpoint was, so no crash can tear them (damage there is media
/// corruption, which reads catch by CRC, not a crash).
fn checkpointed_len(seg: &std::path::Path) -> usize {
    std::fs::read(seg.with_extension("index"))
        .ok()
        .filter(|b| b.starts_with(b"LVIX"))
        .and_then(|b| Some(u64::from_le_bytes(b.get(8..16)?.try_into().ok()?) as usize))
        .unwrap_or(0)
}

fn tear_segment(seg: &std::path::Path, rng: &mut StdRng) -> Option<&'static str> {
    use std::io::{Seek, SeekFrom, Write};
    let newest = seg;
    let data = std::fs::read(newest).ok()?;
    let (mut pos, mut last) = (0usize, None);
    while pos + 12 <= data.len() {
        let len = i32::from_be_bytes(data[pos + 8..pos + 12].try_into().ok()?);
        if len <= 0 || pos + 12 + len as usize > data.len() {
            break;
        }
        let end = pos + 12 + len as usize;
        if batch::validate_stored(&data[pos..end], 64 << 20).is_err() {
            break;
        }
        last = Some((pos, end));
        pos = end;
    }
    let (start, end) = last?;
    // Only a batch past the last index checkpoint can be torn by a crash.
    if start < checkpointed_len(newest) {
        return None;
    }
    let mut f = std::fs::OpenOptions::new().write(true).open(newest).ok()?;
    if rng.gen_bool(0.5) {
        let from = rng.gen_range(start + 1..end);
        f.seek(SeekFrom::Start(from as u64)).ok()?;
        f.write_all(&vec![0u8; end - from]).ok()?;
        f.sync_all().ok()?;
        Some("torn tail (zeros)")
    } else {
        let at = rng.gen_range(start + 12..end);
        let garbage: Vec<u8> = (0..(end - at).min(64)).map(|_| rng.r#gen()).collect();
        f.seek(SeekFrom::Start(at as u64)).ok()?;
        f.write_all(&garbage).ok()?;
        f.sync_all().ok()?;
        Some("torn tail (garbage)")
    }
}

fn fsync_of(seed: u64) -> &'static str {
    if seed.is_multiple_of(2) {
        "always"
    } else {
        "never"
    }
}

fn run_trial(seed: u64) -> Result<Outcome, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tear_rng = StdRng::seed_from_u64(seed ^ 0x7e42_7a11);
    // Even seeds flush every acknowledged batch (fsync = always); odd ones
    // leave durability to replication (fsync = never, Kafka's default), so
    // a killed node loses its unflushed tail and must not take back what
    // the others acknowledged.
    let fsync = fsync_of(seed);
    let mut disk_rng = StdRng::seed_from_u64(seed ^ 0x0d15_cf11);
    // Declared before the nodes, so dropped (unmounted) after they stop.
    let disks: Option<Vec<LoopFs>> = match (0..3).map(|_| LoopFs::create(256)).collect() {
        Ok(d) => Some(d),
        Err(why) => {
            eprintln!("trial {seed}: no full-disk faults: {why}");
            None
        }
    };
    let dirs = disks
        .as_ref()
        .map(|d| d.iter().map(LoopFs::data_dir).collect::<Vec<_>>());
    let mut net = common::ProxiedCluster::start_in(
        &format!("trial-{seed}"),
        &format!("broker_lease_ms = 1500\nheartbeat_interval_ms = 250\nreplica_lag_time_max_ms = 3000\n[log]\nfsync = \"{fsync}\"\nsegment_bytes = 262144\n"),
        dirs,
    );
    let mut nodes = std::mem::take(&mut net.nodes);
    let mut faults = Faults {
        rng: &mut rng,
        tear_rng: &mut tear_rng,
        disk_rng: &mut disk_rng,
        disks: disks.as_deref(),
    };
    let res = trial_on(seed, &mut faults, &mut nodes, &net);
    if res.is_err() {
        // Keep the brokers' logs of a failing trial for diagnosis.
        for (i, n) in nodes.iter().enumerate() {
            let path = std::env::temp_dir().join(format!("levee-trial-{seed}-node{}.log", i + 1));
            let _ = std::fs::write(&path, n.log_text());
            // And the trial topic's replicas, as they are on disk.
            let keep = std::env::temp_dir().join(format!("levee-trial-{seed}-node{}-data", i + 1));
            let _ = std::fs::remove_dir_all(&keep);
            let _ = std::fs::create_dir_all(&keep);
            for p in 0..PARTITIONS {
                let _ = std::process::Command::new("cp")
                    .arg("-a")
                    .arg(n.data_dir().join(format!("tr-{p}")))
                    .arg(&keep)
                    .status();
            }
        }
    }
    res.map_err(|e| {
        format!(
            "{e}; broker logs and the topic's replicas kept in {}",
            std::env::temp_dir()
                .join(format!("levee-trial-{seed}-node*"))
                .display()
        )
    })
}

/// What a trial draws its faults from: the seed's RNGs (one per kind of
/// fault added after the first, so that adding one left the others'
/// schedules as they were) and the nodes' filesystems, when they are of
/// their own.
struct Faults<'a> {
    rng: &'a mut StdRng,
    tear_rng: &'a mut StdRng,
    disk_rng: &'a mut StdRng,
    disks: Option<&'a [LoopFs]>,
}

fn trial_on(
    seed: u64,
    faults: &mut Faults<'_>,
    nodes: &mut [Broker],
    net: &common::ProxiedCluster,
) -> Result<Outcome, String> {
    let mut out = Outcome::default();
    wait_healed_cluster(nodes)?;
    let (ok, o, e) = levee(
        &bootstrap(nodes),
        &[
            "topic",
            "create",
            "tr",
            "--partitions",
            "3",
            "--replication-factor",
            "3",
        ],
        None,
    );
    if !ok {
        return Err(format!("topic create: {e}{}", String::from_utf8_lossy(&o)));
    }
    wait_healed(nodes, "tr", 3, Duration::from_secs(30))?;

    // The producer: numbered records, partition i % 3; every acknowledged
    // (partition, offset, value) is recorded.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<(u32, u64, String)>::new()));
    let all_boot = bootstrap(nodes);
    let producing = {
        let (stop, acked) = (stop.clone(), acked.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let client =
                    Client::connect(ClientConfig::new(all_boot.split(',').map(str::to_string)))
                        .await
                        .unwrap();
                let producer = Producer::new(
                    client,
                    ProducerConfig {
                        linger: Duration::from_millis(2),
                        delivery_timeout: Duration::from_secs(120),
                        ..Default::default()
                    },
                )
                .unwrap();
                let mut i = 0u64;
                let mut pending = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    // 192 bytes of padding: segments (256 KiB) roll every
                    // second or so, so a full disk bites within its 2-4 s.
                    let v = format!("r-{i}-{PAD}");
                    let p = (i % u64::from(PARTITIONS)) as u32;
                    let rec = levee_client::Record {
                        // Now: a timestamp years old would have retention
                        // (7 days by age) delete sealed segments a minute in.
                        timestamp: std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as i64),
                        key: None,
                        value: Some(v.clone().into_bytes()),
                        headers: vec![],
                    };
                    if let Ok(d) = producer.send_record("tr", Some(p), rec).await {
                        pending.push((v, d));
                    }
                    i += 1;
                    if pending.len() >= 20 {
                        for (v, d) in pending.drain(..) {
                            if let Ok(r) = d.await {
                                if let Some(off) = r.offset {
                                    acked.lock().unwrap().push((r.partition, off, v));
                                }
                            }
                        }
                    }
                }
                for (v, d) in pending.drain(..) {
                    if let Ok(r) = d.await {
                        if let Some(off) = r.offset {
                            acked.lock().unwrap().push((r.partition, off, v));
                        }
                    }
                }
            })
        })
    };

    // A group member reads the topic and commits every 200 ms; every
    // acknowledged commit is recorded (the highest offset per partition).
    let acked_commits = Arc::new(Mutex::new(BTreeMap::<u32, u64>::new()));
    let n_commits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let consuming = {
        let (stop, acked_commits, n_commits) =
            (stop.clone(), acked_commits.clone(), n_commits.clone());
        let boot = bootstrap(nodes);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let Ok(client) =
                    Client::connect(ClientConfig::new(boot.split(',').map(str::to_string))).await
                else {
                    return;
                };
                let mut cfg = GroupConsumerConfig::new(GROUP, ["tr"]);
                cfg.reset = OffsetReset::Earliest;
                cfg.session_timeout = Duration::from_secs(6);
                cfg.auto_commit = None;
                let mut c = loop {
                    match GroupConsumer::join(client.clone(), cfg.clone()).await {
                        Ok(c) => break c,
                        Err(_) if !stop.load(Ordering::SeqCst) => {
                            tokio::time::sleep(Duration::from_millis(200)).await
                        }
                        Err(_) => return,
                    }
                };
                let mut last_commit = Instant::now();
                while !stop.load(Ordering::SeqCst) {
                    if c.poll().await.is_err() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    if last_commit.elapsed() > Duration::from_millis(200) {
                        last_commit = Instant::now();
                        if c.commit().await.is_ok() {
                            n_commits.fetch_add(1, Ordering::SeqCst);
                            let mut a = acked_commits.lock().unwrap();
                            for p in 0..PARTITIONS {
                                if let Some(o) = c.committed("tr", p) {
                                    let e = a.entry(p).or_insert(o);
                                    *e = (*e).max(o);
                                }
                            }
                        }
                    }
                }
                let _ = c.close().await;
            })
        })
    };

    // Faults, chosen by the seed.
    let rng = &mut *faults.rng;
    let tear_rng = &mut *faults.tear_rng;
    let n_faults = rng.gen_range(2..=3);
    for _ in 0..n_faults {
        std::thread::sleep(Duration::from_millis(rng.gen_range(500..1500)));
        let victim = rng.gen_range(0..3usize);
        let kind = rng.gen_range(0..5u32);
        if kind >= 3 {
            // Network faults, through the proxies every node-to-node and
            // client connection passes: the victim isolated (both ways),
            // or only what it sends to the coordinators cut (it still
            // hears clients and followers, but cannot renew its lease or
            // learn new metadata), or all its links slowed.
            let mode = rng.gen_range(0..3u32);
            let held = Duration::from_millis(rng.gen_range(2000..4000));
            match mode {
                0 => {
                    *out.faults.entry("network: isolated").or_default() += 1;
                    net.links_of(victim).iter().for_each(|p| p.cut());
                }
                1 => {
                    *out.faults
                        .entry("network: one-way (its sends cut)")
                        .or_default() += 1;
                    net.outbound_of(victim).iter().for_each(|p| p.cut());
                }
                _ => {
                    *out.faults.entry("network: slow links").or_default() += 1;
                    let ms = rng.gen_range(20..100);
                    net.links_of(victim).iter().for_each(|p| p.delay(ms));
                }
            }
            std::thread::sleep(held);
            net.heal();
        } else if kind < 2 {
            *out.faults.entry("kill -9").or_default() += 1;
            nodes[victim].kill();
            // Half the kills also tear the tail of the node's newest write
            // (decided by a second RNG, so the kill schedule of a seed
            // stays what it was before torn tails existed).
            if tear_rng.gen_bool(0.5) {
                let p = tear_rng.gen_range(0..PARTITIONS);
                let dir = nodes[victim].data_dir().join(format!("tr-{p}"));
                if let Some(what) = tear_tail(&dir, tear_rng) {
                    *out.faults.entry(what).or_default() += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(rng.gen_range(500..2500)));
            nodes[victim].spawn();
        } else {
            *out.faults.entry("SIGSTOP").or_default() += 1;
            signal(&nodes[victim], "-STOP");
            std::thread::sleep(Duration::from_millis(rng.gen_range(2000..4000)));
            signal(&nodes[victim], "-CONT");
        }
        // Recovered: every partition led, and all three replicas in sync
        // again (the time this takes is the trial's recovery time).
        let healed = wait_healed(nodes, "tr", 3, Duration::from_secs(60))?;
        out.recover_ms.push(healed.as_millis());
        // Then, sometimes, a full disk on one node for 2-4 s.
        if let Some(disks) = faults.disks {
            if faults.disk_rng.gen_bool(0.4) {
                let victim = faults.disk_rng.gen_range(0..3usize);
                let held = Duration::from_millis(faults.disk_rng.gen_range(2000..4000));
                *out.faults.entry("disk full").or_default() += 1;
                disks[victim].fill();
                // Held for the drawn time, and until the node has found
                // its disk full (a write failed), up to 10 s.
                let since = Instant::now();
                let mut felt = false;
                while since.elapsed() < held || (!felt && since.elapsed() < Duration::from_secs(10))
                {
                    felt |= disk_full_gauge(&nodes[victim]) == Some(1.0);
                    std::thread::sleep(Duration::from_millis(200));
                }
                disks[victim].unfill();
                if felt {
                    *out.faults.entry("disk full: ENOSPC reported").or_default() += 1;
                }
                let healed = wait_healed(nodes, "tr", 3, Duration::from_secs(60))
                    .map_err(|e| format!("after node {}'s disk was full: {e}", victim + 1))?;
                out.recover_ms.push(healed.as_millis());
            }
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    consuming
        .join()
        .map_err(|_| "the group member's thread panicked".to_string())?;
    producing
        .join()
        .map_err(|_| "the producer thread panicked".to_string())?;
    wait_healed(nodes, "tr", 3, Duration::from_secs(60))?;

    // Check 1: every acknowledged record at its offset; none twice.
    let acked = acked.lock().unwrap().clone();
    out.acked = acked.len();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut need = [0u64; PARTITIONS as usize];
    for (p, off, _) in &acked {
        need[*p as usize] = need[*p as usize].max(off + 1);
    }
    let visible_by = Instant::now() + Duration::from_secs(30);
    let stored: BTreeMap<(u32, u64), String> = rt.block_on(async {
        let client = Client::connect(ClientConfig::new(
            bootstrap(nodes).split(',').map(str::to_string),
        ))
        .await
        .map_err(|e| e.to_string())?;
        let mut all = BTreeMap::new();
        for p in 0..PARTITIONS {
            let mut offset = 0u64;
            loop {
                let want = levee_client::FetchRequestPartition {
                    topic: "tr".into(),
                    partition: p,
                    offset,
                    max_bytes: 1 << 20,
                };
                let got = client
                    .fetch(Duration::ZERO, 0, 1 << 20, &[want])
                    .await
                    .map_err(|e| e.to_string())?;
                let got = &got[0];
                if offset >= got.high_watermark {
                    // A leader that just took over publishes its HW once
                    // the followers fetched in its epoch: acknowledged
                    // records may become visible a moment after healing.
                    // Wait for them (bounded); what never shows is lost.
                    if offset < need[p as usize] && Instant::now() < visible_by {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    break;
                }
                let before = offset;
                for b in batch::split_batches(&got.batches) {
                    for r in batch::records(b).map_err(|e| e.to_string())? {
                        if r.offset >= offset {
                            let v =
                                String::from_utf8_lossy(r.value.unwrap_or_default()).to_string();
                            all.insert((p, r.offset), v);
                            offset = r.offset + 1;
                        }
                    }
                }
                if offset == before {
                    return Err(format!("partition {p}: no progress reading at {offset}"));
                }
            }
        }
        Ok::<_, String>(all)
    })?;
    let at: BTreeMap<&String, (u32, u64)> = stored.iter().map(|(k, v)| (v, *k)).collect();
    for (p, off, v) in &acked {
        if stored.get(&(*p, *off)) != Some(v) {
            out.lost += 1;
            if out.detail.len() < 20 {
                out.detail.push(format!(
                    "{} acked at {p}/{off}, which holds {:?}; {} is at {:?}",
                    short(v),
                    stored.get(&(*p, *off)).map(|s| short(s)),
                    short(v),
                    at.get(v)
                ));
            }
        }
    }
    let mut seen: BTreeMap<&String, Vec<(u32, u64)>> = BTreeMap::new();
    for (k, v) in &stored {
        seen.entry(v).or_default().push(*k);
    }
    for (v, at) in seen.iter().filter(|(_, at)| at.len() > 1) {
        out.duplicated += 1;
        if out.detail.len() < 20 {
            out.detail.push(format!("{} stored at {at:?}", short(v)));
        }
    }

    // Check 3: every acknowledged group commit is still committed (or a
    // later offset is).
    let acked_commits = acked_commits.lock().unwrap().clone();
    out.commits = n_commits.load(Ordering::SeqCst);
    let now_committed: BTreeMap<u32, u64> = rt.block_on(async {
        let client = Client::connect(ClientConfig::new(
            bootstrap(nodes).split(',').map(str::to_string),
        ))
        .await
        .map_err(|e| e.to_string())?;
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            match client.fetch_offsets(GROUP, &Default::default()).await {
                Ok(v) => {
                    return Ok::<_, String>(
                        v.into_iter()
                            .filter(|o| o.topic == "tr")
                            .map(|o| (o.partition, o.offset))
                            .collect(),
                    )
                }
                Err(e) if Instant::now() > until => return Err(format!("fetch offsets: {e}")),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })?;
    for (p, o) in &acked_commits {
        if now_committed.get(p).is_none_or(|c| c < o) {
            out.commits_lost += 1;
            out.detail.push(format!(
                "commit of {o} on partition {p} acknowledged, now committed {:?}",
                now_committed.get(p)
            ));
        }
    }

    // Check 2: the replicas agree byte for byte up to the shortest one.
    for n in nodes.iter_mut() {
        n.stop();
    }
    for p in 0..PARTITIONS {
        let logs: Vec<Vec<Vec<u8>>> = nodes
            .iter()
            .map(|n| replica_batches(&n.data_dir().join(format!("tr-{p}"))))
            .collect();
        let common = logs.iter().map(Vec::len).min().unwrap_or(0);
        for i in 0..common {
            if logs.iter().any(|l| l[i] != logs[0][i]) {
                out.divergent += 1;
                break;
            }
        }
    }
    if out.lost > 0 || out.duplicated > 0 || out.divergent > 0 || out.commits_lost > 0 {
        return Err(format!("seed {seed}: {out:?}"));
    }
    Ok(out)
}

fn wait_healed_cluster(nodes: &[Broker]) -> Result<(), String> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out, err) = levee(&bootstrap(nodes), &["cluster", "status"], None);
        let s = String::from_utf8_lossy(&out);
        if ok && s.contains("leader: node") && s.matches("live").count() >= 3 {
            return Ok(());
        }
        if Instant::now() > until {
            return Err(format!("cluster did not form: {s}{err}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn replay(seed: u64) -> String {
    format!(
        "TRIAL_SEED={seed} TRIALS=1 cargo test -p levee-cli --test trials seeded -- --nocapture"
    )
}

fn pct(v: &mut [u128], q: f64) -> u128 {
    v.sort_unstable();
    v.get(((v.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(0)
}

#[test]
fn seeded_fault_trials() {
    let extra: u64 = std::env::var("TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let seeds: Vec<u64> = if extra > 0 {
        let first: u64 = std::env::var("TRIAL_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        (first..first + extra).collect()
    } else {
        // Between them: kill -9, SIGSTOP, a torn tail, an isolated node,
        // a one-way cut, and full disks: 6002 stopped a replica's log and
        // a new leader's epoch write; 11013 lost 2,320 acknowledged
        // records to an epoch write that failed; 13014 and 13510 left
        // replicas divergent (a follower appended a fetch answered by a
        // leader it no longer followed; the timing that needs is not
        // certain to recur on every run).
        vec![1, 2, 4006, 4007, 6002, 11013, 13014, 13510]
    };
    let started = Instant::now();
    let mut faults: BTreeMap<&'static str, usize> = BTreeMap::new();
    let (mut acked, mut lost, mut divergent) = (0, 0, 0);
    let mut recover = Vec::new();
    let mut failed = Vec::new();
    for seed in &seeds {
        // A panic in the harness (a broker that could not start) fails
        // this trial, not the ones after it.
        let res = std::panic::catch_unwind(|| run_trial(*seed)).unwrap_or_else(|p| {
            let what = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("the trial panicked: {what}"))
        });
        match res {
            Ok(o) => {
                eprintln!("trial {seed} (fsync {}): ok {o:?}", fsync_of(*seed));
                for (k, v) in &o.faults {
                    *faults.entry(k).or_default() += v;
                }
                acked += o.acked;
                recover.extend(o.recover_ms);
            }
            Err(e) => {
                eprintln!(
                    "trial {seed} (fsync {}) FAILED: {e}\n  replay: {}",
                    fsync_of(*seed),
                    replay(*seed)
                );
                // A checker failure carries its counts ("lost: N, ...").
                if e.contains("lost: ") && !e.contains("lost: 0,") {
                    lost += 1;
                }
                if e.contains("divergent: ") && !e.contains("divergent: 0,") {
                    divergent += 1;
                }
                failed.push(*seed);
            }
        }
    }
    eprintln!(
        "trials {}, failed {} {failed:?}, faults {faults:?}, acknowledged records {acked}, trials with loss {lost}, with divergence {divergent}, time to recover a full ISR after a fault: p50 {} ms, p99 {} ms, took {:?}",
        seeds.len(),
        failed.len(),
        pct(&mut recover.clone(), 0.5),
        pct(&mut recover, 0.99),
        started.elapsed()
    );
    assert!(
        failed.is_empty(),
        "failing seeds {failed:?}; replay one with {}",
        replay(failed[0])
    );
}
