//! The native transactional producer (`levee_client::Producer` with a
//! transactional id) against a real `levee serve`:
//!
//! - committed transactions are seen by read_committed consumers, native
//!   and Kafka (librdkafka) alike; aborted ones are not, but
//!   read_uncommitted sees them; an open transaction holds read_committed
//!   readers until it commits;
//! - a second producer with the same transactional id (native, then a
//!   Kafka one: the same coordinator serves both) fences the first: its
//!   open transaction is aborted and it gets `ProducerFenced`;
//! - offsets sent to a transaction become the group's on commit only; a
//!   member that is no longer in the group's generation makes the
//!   transaction abortable;
//! - consume-transform-produce with native clients, the transformer
//!   process killed with SIGKILL at seeded moments (`NATIVE_TXN_TRIALS`, 2
//!   by default): each input record's outputs appear exactly once,
//!   read_committed.

mod common;
#[path = "common/kafka.rs"]
mod kafka;

use common::Broker;
use kafka::*;
use levee_client::{
    Client, ClientConfig, ClientError, ConsumerConfig, GroupConsumer, GroupConsumerConfig,
    OffsetReset, Producer, ProducerConfig, StartPosition,
};
use rdkafka::consumer::Consumer as _;
use rdkafka::producer::Producer as _;
use rdkafka::{Offset, TopicPartitionList};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn client(bs: &str) -> Client {
    Client::connect(ClientConfig::new([bs.to_string()]))
        .await
        .expect("connect")
}

fn txn_config(id: &str) -> ProducerConfig {
    ProducerConfig {
        transactional_id: Some(id.to_string()),
        linger: Duration::from_millis(2),
        ..ProducerConfig::default()
    }
}

async fn txn_producer(c: &Client, id: &str) -> Producer {
    let p = Producer::new(c.clone(), txn_config(id)).expect("producer");
    p.init_transactions().await.expect("init_transactions");
    p
}

/// Sends `n` records `{tag}-{i}` spread over `partitions` partitions
/// (without waiting for them).
async fn send_n(p: &Producer, topic: &str, partitions: u32, tag: &str, n: usize) {
    for i in 0..n {
        let rec = levee_client::Record {
            timestamp: 0,
            key: None,
            value: Some(format!("{tag}-{i}").into_bytes()),
            headers: Vec::new(),
        };
        p.send_record(topic, Some(i as u32 % partitions), rec)
            .await
            .expect("send");
    }
}

fn tagged(tags: &[(&str, usize)]) -> Vec<String> {
    let mut v: Vec<String> = tags
        .iter()
        .flat_map(|(t, n)| (0..*n).map(move |i| format!("{t}-{i}")))
        .collect();
    v.sort();
    v
}

/// Every value of `topic` from the start, read by a native consumer
/// (read_committed or not) until nothing came for a second.
async fn native_values(c: &Client, topic: &str, committed: bool) -> Vec<String> {
    let mut con = levee_client::Consumer::new(
        c.clone(),
        ConsumerConfig {
            read_committed: committed,
            max_wait: Duration::from_millis(200),
            ..ConsumerConfig::default()
        },
    );
    con.assign(topic, None, StartPosition::Earliest)
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(1) {
        let got = con.poll().await.expect("poll");
        if !got.is_empty() {
            quiet_since = Instant::now();
        }
        out.extend(
            got.into_iter()
                .map(|r| String::from_utf8_lossy(&r.value.unwrap_or_default()).into_owned()),
        );
    }
    out.sort();
    out
}

/// The same with librdkafka, read_committed.
fn kafka_committed_values(b: &Broker, topic: &str, partitions: i32) -> Vec<String> {
    let mut cfg = reader_config(&b.kafka.to_string());
    cfg.set("isolation.level", "read_committed");
    let c = consumer("kafka-read-committed", &cfg);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut v: Vec<String> = consume_for(&c, Duration::from_secs(3))
        .iter()
        .map(|m| String::from_utf8_lossy(m.value.as_deref().unwrap_or_default()).into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn native_transactions_commit_and_abort() {
    let b = Broker::start("native-txn-basic");
    create_topic(&b, "nt", 2);
    let bs = b.bootstrap();
    rt().block_on(async {
        let c = client(&bs).await;
        let p = txn_producer(&c, "native-basic").await;
        // Sends outside a transaction are refused.
        let e = p.send("nt", None, b"x".to_vec()).await.unwrap_err();
        assert!(matches!(e, ClientError::InvalidTxnState(_)), "{e}");

        p.begin_transaction().unwrap();
        send_n(&p, "nt", 2, "c", 20).await;
        p.commit_transaction().await.expect("commit");
        // Aborted after its records were delivered.
        p.begin_transaction().unwrap();
        send_n(&p, "nt", 2, "a", 20).await;
        p.flush().await.unwrap();
        p.abort_transaction().await.expect("abort");
        // Aborted at once, records perhaps not sent yet.
        p.begin_transaction().unwrap();
        send_n(&p, "nt", 2, "x", 5).await;
        p.abort_transaction().await.expect("abort at once");
        p.begin_transaction().unwrap();
        send_n(&p, "nt", 2, "d", 10).await;
        p.commit_transaction().await.expect("commit");
        // An open transaction.
        p.begin_transaction().unwrap();
        send_n(&p, "nt", 2, "o", 4).await;
        p.flush().await.unwrap();

        let committed = tagged(&[("c", 20), ("d", 10)]);
        assert_eq!(
            native_values(&c, "nt", true).await,
            committed,
            "native read_committed"
        );
        assert_eq!(
            kafka_committed_values(&b, "nt", 2),
            committed,
            "Kafka read_committed"
        );
        // read_uncommitted: everything written (the records aborted at
        // once may or may not have been sent before the abort).
        let all: Vec<String> = native_values(&c, "nt", false)
            .await
            .into_iter()
            .filter(|v| !v.starts_with("x-"))
            .collect();
        assert_eq!(
            all,
            tagged(&[("c", 20), ("d", 10), ("a", 20), ("o", 4)]),
            "native read_uncommitted"
        );
        p.commit_transaction().await.expect("commit the open one");
        let committed = tagged(&[("c", 20), ("d", 10), ("o", 4)]);
        assert_eq!(native_values(&c, "nt", true).await, committed);
        assert_eq!(kafka_committed_values(&b, "nt", 2), committed);

        // A partition that cannot be added (there is no partition 7): the
        // record fails, the transaction must be aborted, the next one works.
        p.begin_transaction().unwrap();
        send_n(&p, "nt", 2, "e", 2).await;
        let bad = p
            .send_record(
                "nt",
                Some(7),
                levee_client::Record {
                    timestamp: 0,
                    key: None,
                    value: Some(b"nowhere".to_vec()),
                    headers: Vec::new(),
                },
            )
            .await
            .expect("queued");
        assert!(bad.await.is_err(), "a record for partition 7 was delivered");
        let e = p.commit_transaction().await.unwrap_err();
        assert!(matches!(e, ClientError::AbortableTransaction { .. }), "{e}");
        assert!(matches!(
            p.send("nt", None, b"x".to_vec()).await,
            Err(ClientError::AbortableTransaction { .. })
        ));
        p.abort_transaction()
            .await
            .expect("abort after the failure");
        p.begin_transaction().unwrap();
        send_n(&p, "nt", 2, "f", 4).await;
        p.commit_transaction().await.expect("commit after an abort");
        let committed = tagged(&[("c", 20), ("d", 10), ("o", 4), ("f", 4)]);
        assert_eq!(native_values(&c, "nt", true).await, committed);

        // A commit with nothing in it, and the state checks.
        p.begin_transaction().unwrap();
        p.commit_transaction().await.expect("an empty commit");
        assert!(matches!(
            p.commit_transaction().await,
            Err(ClientError::InvalidTxnState(_))
        ));
        assert!(matches!(
            p.abort_transaction().await,
            Err(ClientError::InvalidTxnState(_))
        ));
        let info = c.describe_transaction("native-basic").await.unwrap();
        assert_eq!(info.state, "CompleteCommit", "{info:?}");
    });
}

#[test]
fn a_second_producer_with_the_same_transactional_id_fences_the_first() {
    let b = Broker::start("native-txn-fence");
    create_topic(&b, "fz", 2);
    let bs = b.bootstrap();
    rt().block_on(async {
        let c = client(&bs).await;
        let p1 = txn_producer(&c, "fence-id").await;
        p1.begin_transaction().unwrap();
        send_n(&p1, "fz", 2, "zombie", 6).await;
        p1.flush().await.unwrap();

        // The new instance: the zombie's transaction is aborted.
        let c2 = client(&bs).await;
        let p2 = txn_producer(&c2, "fence-id").await;
        let e = p1.commit_transaction().await.unwrap_err();
        assert!(matches!(e, ClientError::ProducerFenced { .. }), "{e}");
        // Fatal: nothing else works.
        assert!(matches!(
            p1.send("fz", None, b"more".to_vec()).await,
            Err(ClientError::ProducerFenced { .. })
        ));
        assert!(matches!(
            p1.abort_transaction().await,
            Err(ClientError::ProducerFenced { .. })
        ));
        assert!(matches!(
            p1.begin_transaction(),
            Err(ClientError::ProducerFenced { .. })
        ));

        p2.begin_transaction().unwrap();
        send_n(&p2, "fz", 2, "new", 4).await;
        p2.commit_transaction()
            .await
            .expect("the new producer commits");

        // A Kafka producer with the same id fences the native one too (one
        // coordinator for both protocols).
        p2.begin_transaction().unwrap();
        send_n(&p2, "fz", 2, "open", 4).await;
        p2.flush().await.unwrap();
        let kboot = b.kafka.to_string();
        let mut kcfg = base_config(&kboot);
        kcfg.set("transactional.id", "fence-id")
            .set("enable.idempotence", "true")
            .set("acks", "all");
        let kp = producer("kafka-fencer", &kcfg);
        tokio::task::block_in_place(|| kp.init_transactions(T)).expect("Kafka init_transactions");
        let e = p2.commit_transaction().await.unwrap_err();
        assert!(matches!(e, ClientError::ProducerFenced { .. }), "{e}");

        assert_eq!(
            native_values(&c, "fz", true).await,
            tagged(&[("new", 4)]),
            "only the new producer's committed records"
        );
        assert_eq!(kafka_committed_values(&b, "fz", 2), tagged(&[("new", 4)]));
    });
}

#[test]
fn offsets_sent_to_a_native_transaction_are_committed_only_with_it() {
    let b = Broker::start("native-txn-offsets");
    create_topic(&b, "in", 2);
    create_topic(&b, "out", 1);
    let bs = b.bootstrap();
    rt().block_on(async {
        let c = client(&bs).await;
        let plain = Producer::new(c.clone(), ProducerConfig::default()).unwrap();
        let mut input = Vec::new();
        for i in 0..10u32 {
            let rec = levee_client::Record {
                timestamp: 0,
                key: None,
                value: Some(format!("in-{i}").into_bytes()),
                headers: Vec::new(),
            };
            input.push(plain.send_record("in", Some(i % 2), rec).await.unwrap());
        }
        for d in input {
            d.await.expect("input delivered");
        }
        let mut gcfg = GroupConsumerConfig::new("neos", ["in"]);
        gcfg.auto_commit = None;
        gcfg.reset = OffsetReset::Earliest;
        gcfg.fetch.read_committed = true;
        let mut g = GroupConsumer::join(c.clone(), gcfg).await.expect("join");
        let mut seen = 0;
        let until = Instant::now() + T;
        while seen < 10 && Instant::now() < until {
            seen += g.poll().await.expect("poll").len();
        }
        assert_eq!(seen, 10);
        let committed = |c: Client| async move {
            let mut a = levee_client::Assignment::new();
            a.insert("in".to_string(), vec![0, 1]);
            let mut v: Vec<(u32, u64)> = c
                .fetch_offsets("neos", &a)
                .await
                .unwrap()
                .into_iter()
                .map(|o| (o.partition, o.offset))
                .collect();
            v.sort();
            v
        };

        let p = txn_producer(&c, "offsets-native").await;
        p.begin_transaction().unwrap();
        send_n(&p, "out", 1, "out", 5).await;
        p.send_offsets_to_transaction(&g.positions(), &g.group_metadata())
            .await
            .expect("send_offsets_to_transaction");
        assert_eq!(committed(c.clone()).await, vec![], "not before the commit");
        p.commit_transaction().await.expect("commit");
        assert_eq!(
            committed(c.clone()).await,
            vec![(0, 5), (1, 5)],
            "committed with the transaction"
        );

        // Aborted: the offsets stay.
        for i in 10..14u32 {
            plain
                .send_record(
                    "in",
                    Some(i % 2),
                    levee_client::Record {
                        timestamp: 0,
                        key: None,
                        value: Some(b"more".to_vec()),
                        headers: Vec::new(),
                    },
                )
                .await
                .unwrap();
        }
        plain.flush().await.unwrap();
        let mut seen = 0;
        while seen < 4 && Instant::now() < until + T {
            seen += g.poll().await.expect("poll").len();
        }
        p.begin_transaction().unwrap();
        send_n(&p, "out", 1, "dropped", 3).await;
        p.send_offsets_to_transaction(&g.positions(), &g.group_metadata())
            .await
            .unwrap();
        p.abort_transaction().await.expect("abort");
        assert_eq!(
            committed(c.clone()).await,
            vec![(0, 5), (1, 5)],
            "an abort commits no offset"
        );

        // A stale generation: refused, the transaction must be aborted.
        p.begin_transaction().unwrap();
        send_n(&p, "out", 1, "stale", 2).await;
        let mut stale = g.group_metadata();
        stale.generation += 7;
        let e = p
            .send_offsets_to_transaction(&g.positions(), &stale)
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::AbortableTransaction { .. }), "{e}");
        assert!(matches!(
            p.commit_transaction().await,
            Err(ClientError::AbortableTransaction { .. })
        ));
        p.abort_transaction()
            .await
            .expect("abort after the failure");
        p.begin_transaction().unwrap();
        send_n(&p, "out", 1, "last", 2).await;
        p.send_offsets_to_transaction(&g.positions(), &g.group_metadata())
            .await
            .unwrap();
        p.commit_transaction().await.expect("commit");
        assert_eq!(committed(c.clone()).await, vec![(0, 7), (1, 7)]);
        assert_eq!(
            native_values(&c, "out", true).await,
            tagged(&[("out", 5), ("last", 2)])
        );
    });
}

const TRANSFORMER_ENV: &str = "LEVEE_NATIVE_TXN_TRANSFORMER";

/// Not a test: the transformer process of the kill -9 test (started by it
/// with the arguments in `TRANSFORMER_ENV`). Reads `input` in a group,
/// writes each record to two topics, and commits the input offsets in
/// the same transaction.
#[test]
fn native_transformer_process() {
    let Ok(args) = std::env::var(TRANSFORMER_ENV) else {
        return;
    };
    let a: Vec<String> = args.split(',').map(str::to_string).collect();
    rt().block_on(async move {
        let (bs, input, group, id, out_b, out_c) = (&a[0], &a[1], &a[2], &a[3], &a[4], &a[5]);
        let c = client(bs).await;
        // First: this fences an earlier transformer and aborts (or
        // completes) its transaction, so the offsets read next are final.
        let p = txn_producer(&c, id).await;
        let mut gcfg = GroupConsumerConfig::new(group.clone(), [input.clone()]);
        gcfg.auto_commit = None;
        gcfg.reset = OffsetReset::Earliest;
        gcfg.session_timeout = Duration::from_secs(2);
        gcfg.fetch.read_committed = true;
        gcfg.fetch.max_wait = Duration::from_millis(100);
        loop {
            // (Re)joined: positions are the group's committed offsets.
            let mut g = GroupConsumer::join(c.clone(), gcfg.clone())
                .await
                .expect("join");
            loop {
                let batch = match g.poll().await {
                    Ok(b) => b,
                    Err(e) if e.needs_rejoin() => continue,
                    Err(e) => panic!("transformer consumer: {e}"),
                };
                // Transactions of up to 10 records, each committing the
                // offsets after its own records.
                let mut failed = false;
                for chunk in batch.chunks(10) {
                    p.begin_transaction().expect("begin");
                    let mut offsets = std::collections::BTreeMap::new();
                    for r in chunk {
                        let v = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default())
                            .into_owned();
                        for (topic, tag) in [(out_b, "B"), (out_c, "C")] {
                            p.send(topic, None, format!("{tag}:{v}").into_bytes())
                                .await
                                .expect("send");
                        }
                        offsets.insert((r.topic.clone(), r.partition), r.offset + 1);
                    }
                    let offsets: Vec<levee_client::OffsetCommit> = offsets
                        .into_iter()
                        .map(|((t, p), o)| levee_client::OffsetCommit::new(t, p, o))
                        .collect();
                    let res = match p
                        .send_offsets_to_transaction(&offsets, &g.group_metadata())
                        .await
                    {
                        Ok(()) => p.commit_transaction().await,
                        Err(e) => Err(e),
                    };
                    match res {
                        Ok(()) => {}
                        Err(e @ ClientError::AbortableTransaction { .. }) => {
                            // A rebalance took the generation away: abort,
                            // and start again from the group's committed
                            // offsets.
                            eprintln!("transformer: {e}; aborting and rejoining");
                            p.abort_transaction().await.expect("abort");
                            failed = true;
                            break;
                        }
                        Err(e) => panic!("transformer: {e}"),
                    }
                }
                if failed {
                    break;
                }
            }
            let _ = g.close().await;
        }
    });
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

fn spawn_transformer(args: &str, log: &std::path::Path) -> std::process::Child {
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "native_transformer_process",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(TRANSFORMER_ENV, args)
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("start the transformer")
}

#[test]
fn native_consume_transform_produce_survives_kill_9_exactly_once() {
    let trials: u64 = std::env::var("NATIVE_TXN_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let b = Broker::start("native-txn-ctp");
    let bs = b.bootstrap();
    let records = 1500usize;
    let rt = rt();
    for trial in 0..trials {
        let seed = 0x0a7e_0000 + trial;
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let (a, bt, ct) = (
            format!("a{trial}"),
            format!("b{trial}"),
            format!("c{trial}"),
        );
        create_topic(&b, &a, 3);
        create_topic(&b, &bt, 2);
        create_topic(&b, &ct, 1);
        rt.block_on(async {
            let c = client(&bs).await;
            let plain = Producer::new(c.clone(), ProducerConfig::default()).unwrap();
            send_n(&plain, &a, 3, "r", records).await;
            plain.flush().await.unwrap();
        });
        let args = format!("{bs},{a},nctp{trial},ntransformer{trial},{bt},{ct}");
        let log = b
            .data_dir()
            .with_extension(format!("ntransformer{trial}.log"));
        let kills = rng.range(2, 4) as usize;
        // Follows B's progress, read_committed, without waiting.
        let mut progress = rt.block_on(async {
            let mut con = levee_client::Consumer::new(
                client(&bs).await,
                ConsumerConfig {
                    read_committed: true,
                    max_wait: Duration::from_millis(20),
                    ..ConsumerConfig::default()
                },
            );
            con.assign(&bt, None, StartPosition::Earliest)
                .await
                .unwrap();
            con
        });
        let mut seen = 0;
        for k in 0..kills {
            let mut child = spawn_transformer(&args, &log);
            let target = records * (k + 1) / (kills + 1);
            let until = Instant::now() + Duration::from_secs(60);
            while seen < target && Instant::now() < until {
                seen += rt.block_on(progress.poll()).expect("progress").len();
            }
            let ms = rng.range(0, 150);
            std::thread::sleep(Duration::from_millis(ms));
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            eprintln!(
                "trial {trial} (seed {seed:#x}): killed the transformer {ms} ms after {seen} of {records} outputs ({}/{kills})",
                k + 1
            );
        }
        let mut child = spawn_transformer(&args, &log);
        let until = Instant::now() + Duration::from_secs(90);
        let (mut got_b, mut got_c) = (Vec::new(), Vec::new());
        while Instant::now() < until {
            (got_b, got_c) = rt.block_on(async {
                let c = client(&bs).await;
                (
                    native_values(&c, &bt, true).await,
                    native_values(&c, &ct, true).await,
                )
            });
            if got_b.len() >= records && got_c.len() >= records {
                break;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let written = rt.block_on(async {
            let c = client(&bs).await;
            native_values(&c, &bt, false).await.len()
        });
        eprintln!(
            "trial {trial}: B holds {written} records read_uncommitted (aborted ones included) for {records} inputs"
        );
        let want = |tag: &str| {
            let mut v: Vec<String> = (0..records).map(|i| format!("{tag}:r-{i}")).collect();
            v.sort();
            v
        };
        let replay = format!(
            "replay: NATIVE_TXN_TRIALS={} cargo test -p levee-cli --test native_txn consume_transform (seed {seed:#x}); transformer log {}",
            trial + 1,
            log.display()
        );
        assert_eq!(got_b, want("B"), "trial {trial}: B exactly once; {replay}");
        assert_eq!(got_c, want("C"), "trial {trial}: C exactly once; {replay}");
    }
}

#[test]
fn levee_produce_with_a_transactional_id_commits_each_chunk() {
    let b = Broker::start("native-txn-cli");
    create_topic(&b, "cli", 2);
    let input: String = (0..600).map(|i| format!("l-{i}\n")).collect();
    let (ok, _, err) = common::levee(
        &b.bootstrap(),
        &["produce", "cli", "--transactional-id", "cli-producer"],
        Some(input.as_bytes()),
    );
    assert!(ok, "levee produce --transactional-id: {err}");
    let bs = b.bootstrap();
    rt().block_on(async {
        let c = client(&bs).await;
        assert_eq!(native_values(&c, "cli", true).await, tagged(&[("l", 600)]));
        let info = c.describe_transaction("cli-producer").await.unwrap();
        assert_eq!(info.state, "CompleteCommit", "{info:?}");
    });
    assert_eq!(kafka_committed_values(&b, "cli", 2), tagged(&[("l", 600)]));
}

fn cluster(name: &str) -> Vec<Broker> {
    let (nodes, _) = common::start_three_nodes(
        name,
        "broker_lease_ms = 1500\nheartbeat_interval_ms = 250\nreplica_lag_time_max_ms = 3000\n",
    );
    let native = nodes
        .iter()
        .map(|n| n.bootstrap())
        .collect::<Vec<_>>()
        .join(",");
    let until = Instant::now() + T;
    loop {
        let (ok, out, err) = common::levee(&native, &["cluster", "status"], None);
        let st = String::from_utf8_lossy(&out);
        if ok && st.contains("leader: node") && st.matches("live").count() >= 3 {
            return nodes;
        }
        assert!(Instant::now() < until, "cluster did not form: {st}{err}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn create_replicated(nodes: &[Broker], topic: &str, partitions: u32) {
    let (ok, out, err) = common::levee(
        &nodes[0].bootstrap(),
        &[
            "topic",
            "create",
            topic,
            "--partitions",
            &partitions.to_string(),
            "--replication-factor",
            "3",
        ],
        None,
    );
    assert!(ok, "topic create: {err}{}", String::from_utf8_lossy(&out));
}

/// On a 3-node cluster: partitions led by every node, a group coordinated
/// by any node; then the transaction coordinator's node is killed with
/// SIGKILL between two transactions and the same producer goes on (it
/// finds the next coordinator).
#[test]
fn native_transactions_on_a_cluster_survive_a_coordinator_kill() {
    let mut nodes = cluster("native-txn-cluster");
    create_replicated(&nodes, "nct", 6);
    create_replicated(&nodes, "ncin", 3);
    let all: Vec<String> = nodes.iter().map(|n| n.bootstrap()).collect();
    let rt = rt();
    let (c, p, coord) = rt.block_on(async {
        let c = Client::connect(ClientConfig::new(all.clone()))
            .await
            .expect("connect");
        // Every partition has a leader.
        let until = Instant::now() + T;
        loop {
            let info = c.describe_topic("nct").await.unwrap();
            let led = info
                .partitions
                .iter()
                .filter(|p| p.leader != levee_client::NO_LEADER)
                .count();
            if led == 6 {
                break;
            }
            assert!(Instant::now() < until, "nct has no leaders: {info:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let p = txn_producer(&c, "ncluster-id").await;
        p.begin_transaction().unwrap();
        send_n(&p, "nct", 6, "k", 60).await;
        p.commit_transaction().await.expect("commit");
        p.begin_transaction().unwrap();
        send_n(&p, "nct", 6, "ab", 60).await;
        p.flush().await.unwrap();
        p.abort_transaction().await.expect("abort");

        // Offsets of a group (its coordinator may be another node).
        let plain = Producer::new(c.clone(), ProducerConfig::default()).unwrap();
        send_n(&plain, "ncin", 3, "in", 30).await;
        plain.flush().await.unwrap();
        let mut gcfg = GroupConsumerConfig::new("ncluster-eos", ["ncin"]);
        gcfg.auto_commit = None;
        gcfg.reset = OffsetReset::Earliest;
        gcfg.fetch.read_committed = true;
        let mut g = GroupConsumer::join(c.clone(), gcfg).await.expect("join");
        let mut seen = 0;
        while seen < 30 && Instant::now() < until + T {
            seen += g.poll().await.unwrap().len();
        }
        assert_eq!(seen, 30);
        p.begin_transaction().unwrap();
        send_n(&p, "nct", 6, "o", 6).await;
        p.send_offsets_to_transaction(&g.positions(), &g.group_metadata())
            .await
            .expect("send offsets");
        p.commit_transaction().await.expect("commit with offsets");
        let mut a = levee_client::Assignment::new();
        a.insert("ncin".to_string(), vec![0, 1, 2]);
        let got: Vec<u64> = c
            .fetch_offsets("ncluster-eos", &a)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.offset)
            .collect();
        assert_eq!(got, vec![10, 10, 10]);
        let _ = g.close().await;
        let coord = c.find_txn_coordinator("ncluster-id").await.unwrap();
        (c, p, coord)
    });
    eprintln!("killing node {coord}, the coordinator of ncluster-id");
    nodes[(coord - 1) as usize].kill();
    rt.block_on(async {
        p.begin_transaction().unwrap();
        send_n(&p, "nct", 6, "after", 12).await;
        p.commit_transaction()
            .await
            .expect("commit after the coordinator's kill");
        let mut want = tagged(&[("k", 60), ("o", 6), ("after", 12)]);
        want.sort();
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let got = native_values(&c, "nct", true).await;
            if got == want || Instant::now() > until {
                assert_eq!(got, want, "read_committed on the cluster");
                break;
            }
        }
    });
}
