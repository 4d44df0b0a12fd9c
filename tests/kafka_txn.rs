//! Kafka transactions (KIP-98) against a real `levee serve`, with
//! librdkafka (the `rdkafka` crate) and confluent-kafka (Python):
//!
//! - committed transactions are seen by read_committed consumers, aborted
//!   ones are not (read_uncommitted sees both), and an open transaction
//!   holds read_committed consumers at its first offset (the LSO) until it
//!   commits;
//! - a second producer with the same transactional id fences the first:
//!   the first's open transaction is aborted, and its commit fails;
//! - consumer offsets committed in a transaction (send_offsets_to_transaction)
//!   become the group's on commit and are dropped on abort;
//! - consume-transform-produce (read A in a group, write B and C, commit the
//!   offsets in the transaction) with the transformer process killed with
//!   SIGKILL at seeded moments, `TXN_TRIALS` trials (3 by default): B and C
//!   hold each input record's output exactly once, read_committed;
//! - the broker (the transaction coordinator) killed in the middle of a
//!   commit (a test-only fault): after the restart the transaction is
//!   visible on every partition;
//! - confluent-kafka (Python) commits and aborts transactions
//!   (`tests/kafka/confluent_kafka_txn.py`);
//! - native consumers read_committed too; `levee txn list|describe` and
//!   the oldest-open-transaction gauge; a transaction past its timeout is
//!   aborted; a broker killed with a transaction open aborts it after the
//!   restart; transactions on a 3-node cluster (partitions led by every
//!   node, offsets to another node's group) survive a kill -9 of the
//!   coordinator;
//! - `txn_commit_rate` (ignored: a benchmark) measures transactions of 100
//!   records over 3 partitions per second and their commit latency.

mod common;
#[path = "common/kafka.rs"]
mod kafka;

use common::Broker;
use kafka::*;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::{BaseRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

fn txn_config(boot: &str, id: &str) -> rdkafka::config::ClientConfig {
    let mut c = base_config(boot);
    c.set("transactional.id", id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("transaction.timeout.ms", "60000")
        .set("message.timeout.ms", "30000");
    c
}

fn txn_producer(boot: &str, id: &str) -> KProducer {
    producer(id, &txn_config(boot, id))
}

/// Sends `n` records `{tag}-{i}` spread over `partitions` partitions.
fn send_n(p: &KProducer, topic: &str, partitions: i32, tag: &str, n: usize) {
    for i in 0..n {
        let v = format!("{tag}-{i}");
        let mut r: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
            .partition(i as i32 % partitions)
            .payload(v.as_bytes());
        loop {
            match p.send(r) {
                Ok(()) => break,
                Err((e, back)) => {
                    assert!(
                        matches!(
                            e,
                            rdkafka::error::KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull
                            )
                        ),
                        "send: {e}"
                    );
                    r = back;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
        p.poll(Duration::ZERO);
    }
}

/// A reader of every partition of `topic` from the start, at the given
/// isolation level.
fn reader(boot: &str, topic: &str, partitions: i32, committed: bool) -> KConsumer {
    let mut cfg = reader_config(boot);
    cfg.set(
        "isolation.level",
        if committed {
            "read_committed"
        } else {
            "read_uncommitted"
        },
    );
    let c = consumer(
        if committed {
            "read-committed"
        } else {
            "read-uncommitted"
        },
        &cfg,
    );
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    c
}

fn values(msgs: &[Msg]) -> Vec<String> {
    let mut v: Vec<String> = msgs
        .iter()
        .map(|m| String::from_utf8_lossy(m.value.as_deref().unwrap_or_default()).into_owned())
        .collect();
    v.sort();
    v
}

fn tagged(tag: &str, n: usize) -> Vec<String> {
    let mut v: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
    v.sort();
    v
}

#[test]
fn read_committed_sees_committed_transactions_only_and_stops_at_an_open_one() {
    let b = Broker::start("kafka-txn-basic");
    let boot = b.kafka.to_string();
    create_topic(&b, "tx", 2);
    let p = txn_producer(&boot, "basic");
    p.init_transactions(T).expect("init_transactions");

    p.begin_transaction().unwrap();
    send_n(&p, "tx", 2, "c", 20);
    p.commit_transaction(T).expect("commit");
    p.begin_transaction().unwrap();
    send_n(&p, "tx", 2, "a", 20);
    p.flush(T).unwrap();
    p.abort_transaction(T).expect("abort");
    p.begin_transaction().unwrap();
    send_n(&p, "tx", 2, "d", 10);
    p.commit_transaction(T).expect("commit");

    let rc = reader(&boot, "tx", 2, true);
    let got = consume_n(&rc, 30, T);
    let mut want = tagged("c", 20);
    want.extend(tagged("d", 10));
    want.sort();
    assert_eq!(values(&got), want, "read_committed: the committed records");
    assert!(
        consume_for(&rc, Duration::from_secs(1)).is_empty(),
        "read_committed delivered an aborted record"
    );
    // Per partition, in order.
    for part in 0..2 {
        let offs: Vec<i64> = got
            .iter()
            .filter(|m| m.partition == part)
            .map(|m| m.offset)
            .collect();
        assert!(offs.windows(2).all(|w| w[0] < w[1]), "in order: {offs:?}");
    }
    let ru = reader(&boot, "tx", 2, false);
    let all = consume_n(&ru, 50, T);
    let mut want_all = want.clone();
    want_all.extend(tagged("a", 20));
    want_all.sort();
    assert_eq!(values(&all), want_all, "read_uncommitted: every record");

    // An open transaction: read_uncommitted sees its records at once,
    // read_committed only once it commits.
    p.begin_transaction().unwrap();
    send_n(&p, "tx", 2, "o", 10);
    p.flush(T).unwrap();
    assert_eq!(values(&consume_n(&ru, 10, T)), tagged("o", 10));
    assert!(
        consume_for(&rc, Duration::from_secs(1)).is_empty(),
        "read_committed passed an open transaction"
    );
    // Partition 0 holds 10 + 1 marker, 10 + 1, 5 + 1, then the open
    // transaction's 5: read_committed's end (the LSO) stops before them.
    let (_, lso) = rc.fetch_watermarks("tx", 0, T).expect("watermarks");
    let (_, hw) = ru.fetch_watermarks("tx", 0, T).expect("watermarks");
    assert_eq!((lso, hw), (28, 33), "(last stable offset, high watermark)");
    p.commit_transaction(T).expect("commit");
    assert_eq!(values(&consume_n(&rc, 10, T)), tagged("o", 10));
}

/// `levee consume` (the native consumer) of every partition of `topic`
/// from the start: the values, sorted.
fn native_values(b: &Broker, topic: &str, committed: bool) -> Vec<String> {
    let mut args = vec![
        "consume",
        topic,
        "--from",
        "earliest",
        "--timeout-ms",
        "1500",
    ];
    if committed {
        args.push("--read-committed");
    }
    let (ok, out, err) = common::levee(&b.bootstrap(), &args, None);
    assert!(ok, "levee consume: {err}");
    let mut v: Vec<String> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

#[test]
fn native_consumers_read_committed_too() {
    let b = Broker::start("kafka-txn-native");
    let boot = b.kafka.to_string();
    create_topic(&b, "nt", 2);
    let p = txn_producer(&boot, "native-id");
    p.init_transactions(T).unwrap();
    p.begin_transaction().unwrap();
    send_n(&p, "nt", 2, "c", 10);
    p.commit_transaction(T).unwrap();
    p.begin_transaction().unwrap();
    send_n(&p, "nt", 2, "a", 10);
    p.flush(T).unwrap();
    p.abort_transaction(T).unwrap();
    p.begin_transaction().unwrap();
    send_n(&p, "nt", 2, "d", 6);
    p.commit_transaction(T).unwrap();
    p.begin_transaction().unwrap();
    send_n(&p, "nt", 2, "o", 4);
    p.flush(T).unwrap();

    let mut committed = tagged("c", 10);
    committed.extend(tagged("d", 6));
    committed.sort();
    assert_eq!(native_values(&b, "nt", true), committed, "read_committed");
    let mut all = committed.clone();
    all.extend(tagged("a", 10));
    all.extend(tagged("o", 4));
    all.sort();
    assert_eq!(native_values(&b, "nt", false), all, "read_uncommitted");
    p.commit_transaction(T).unwrap();
    committed.extend(tagged("o", 4));
    committed.sort();
    assert_eq!(native_values(&b, "nt", true), committed, "after the commit");
}

#[test]
fn a_new_producer_with_the_same_transactional_id_fences_the_old_one() {
    let b = Broker::start("kafka-txn-fence");
    let boot = b.kafka.to_string();
    create_topic(&b, "fence", 2);
    let old = txn_producer(&boot, "fenced-id");
    old.init_transactions(T).expect("init old");
    old.begin_transaction().unwrap();
    send_n(&old, "fence", 2, "zombie", 10);
    old.flush(T).unwrap();

    let new = txn_producer(&boot, "fenced-id");
    new.init_transactions(T)
        .expect("init new (aborts the old transaction)");
    new.begin_transaction().unwrap();
    send_n(&new, "fence", 2, "new", 10);
    new.commit_transaction(T).expect("commit new");

    // The zombie cannot commit (fenced), nor write more.
    send_n(&old, "fence", 2, "zombie2", 4);
    let res = old.commit_transaction(T);
    let err = res.expect_err("the fenced producer committed");
    eprintln!("the fenced producer's commit failed as it should: {err}");

    let rc = reader(&boot, "fence", 2, true);
    assert_eq!(values(&consume_n(&rc, 10, T)), tagged("new", 10));
    assert!(
        consume_for(&rc, Duration::from_secs(1)).is_empty(),
        "read_committed delivered the zombie's records"
    );
}

fn committed(c: &KConsumer, topic: &str, partitions: i32) -> BTreeMap<i32, Offset> {
    let mut q = TopicPartitionList::new();
    for p in 0..partitions {
        q.add_partition(topic, p);
    }
    c.committed_offsets(q, T)
        .expect("committed offsets")
        .elements()
        .iter()
        .map(|e| (e.partition(), e.offset()))
        .collect()
}

#[test]
fn offsets_sent_to_a_transaction_are_committed_with_it_and_dropped_on_abort() {
    let b = Broker::start("kafka-txn-offsets");
    let boot = b.kafka.to_string();
    create_topic(&b, "in", 2);
    create_topic(&b, "out", 1);
    let plain = producer("plain", &producer_config(&boot, "all", "none"));
    send_n(&plain, "in", 2, "in", 10);
    flush_all_delivered(&plain, 10);

    let mut cfg = consumer_config(&boot, "eos");
    cfg.set("isolation.level", "read_committed");
    let c = consumer("eos-member", &cfg);
    c.subscribe(&["in"]).unwrap();
    assert_eq!(consume_n(&c, 10, T).len(), 10);

    let p = txn_producer(&boot, "offsets-id");
    p.init_transactions(T).unwrap();
    p.begin_transaction().unwrap();
    send_n(&p, "out", 1, "out", 10);
    let pos = c.position().unwrap();
    let cgm = c.group_metadata().expect("group metadata");
    p.send_offsets_to_transaction(&pos, &cgm, T)
        .expect("send_offsets_to_transaction");
    // Sent, not committed: unstable for a read_committed consumer
    // (require_stable: librdkafka retries until its timeout), none yet for
    // a read_uncommitted one.
    let mut q = TopicPartitionList::new();
    q.add_partition("in", 0);
    let stable = consumer("stable", &cfg);
    let r = stable.committed_offsets(q.clone(), Duration::from_secs(2));
    assert!(r.is_err(), "the pending offsets were read as stable: {r:?}");
    let mut ucfg = consumer_config(&boot, "eos");
    ucfg.set("isolation.level", "read_uncommitted");
    let unstable = consumer("unstable", &ucfg);
    let r = unstable
        .committed_offsets(q, T)
        .expect("committed, read_uncommitted");
    assert_eq!(
        r.elements()[0].offset(),
        Offset::Invalid,
        "not committed yet"
    );
    p.commit_transaction(T).expect("commit");
    let want: BTreeMap<i32, Offset> = (0..2).map(|p| (p, Offset::Offset(5))).collect();
    assert_eq!(committed(&stable, "in", 2), want, "stable once committed");
    assert_eq!(
        committed(&c, "in", 2),
        want,
        "committed with the transaction"
    );

    // Aborted: the offsets stay where they were.
    send_n(&plain, "in", 2, "more", 4);
    flush_all_delivered(&plain, 14);
    assert_eq!(consume_n(&c, 4, T).len(), 4);
    p.begin_transaction().unwrap();
    send_n(&p, "out", 1, "dropped", 4);
    let pos = c.position().unwrap();
    p.send_offsets_to_transaction(&pos, &cgm, T).unwrap();
    p.flush(T).unwrap();
    p.abort_transaction(T).expect("abort");
    assert_eq!(committed(&c, "in", 2), want, "an abort commits no offset");
    c.commit(&pos, CommitMode::Sync).ok();
}

#[test]
fn a_coordinator_killed_in_the_middle_of_a_commit_completes_it_after_restart() {
    let mut b = Broker::start_with_env(
        "kafka-txn-crash",
        &[],
        &[("LEVEE_FAULT_TXN_CRASH_AFTER_MARKERS", "1")],
    );
    let boot = b.kafka.to_string();
    create_topic(&b, "crash", 3);
    let p = txn_producer(&boot, "crash-id");
    p.init_transactions(T).unwrap();
    p.begin_transaction().unwrap();
    send_n(&p, "crash", 3, "all-or-none", 30);
    p.flush(T).unwrap();
    // The broker stops after the first of three markers.
    let res = p.commit_transaction(Duration::from_secs(5));
    eprintln!("commit while the broker crashed: {res:?}");
    let until = Instant::now() + T;
    while !b
        .log_text()
        .contains("fault injection: stopping the broker")
    {
        assert!(
            Instant::now() < until,
            "the fault did not fire:\n{}",
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    b.kill();
    drop(p);
    b.env.clear();
    b.spawn();
    // The coordinator finds the commit prepared and writes every marker.
    let rc = reader(&boot, "crash", 3, true);
    let got = consume_n(&rc, 30, T);
    assert_eq!(values(&got), tagged("all-or-none", 30));
    for part in 0..3 {
        assert_eq!(
            got.iter().filter(|m| m.partition == part).count(),
            10,
            "partition {part}"
        );
    }
    assert!(consume_for(&rc, Duration::from_millis(500)).is_empty());
}

#[test]
fn a_broker_killed_during_an_open_transaction_aborts_it_after_restart() {
    let mut b = Broker::start("kafka-txn-open-kill");
    let boot = b.kafka.to_string();
    create_topic(&b, "open", 3);
    let mut cfg = txn_config(&boot, "open-id");
    cfg.set("transaction.timeout.ms", "3000")
        .set("message.timeout.ms", "3000")
        .set("socket.timeout.ms", "3000");
    let p = producer("open-id", &cfg);
    p.init_transactions(T).unwrap();
    p.begin_transaction().unwrap();
    send_n(&p, "open", 3, "committed", 9);
    p.commit_transaction(T).unwrap();
    p.begin_transaction().unwrap();
    send_n(&p, "open", 3, "never", 9);
    p.flush(T).unwrap();
    // kill -9 with the transaction open (its records written on every
    // partition, no EndTxn).
    b.kill();
    drop(p);
    b.spawn();
    // After the restart the coordinator finds it Ongoing and aborts it
    // once its timeout passes: read_committed gets past it, seeing none of
    // it.
    let rc = reader(&boot, "open", 3, true);
    assert_eq!(values(&consume_n(&rc, 9, T)), tagged("committed", 9));
    let until = Instant::now() + T;
    for part in 0..3 {
        loop {
            // 3 committed + marker, 3 open + abort marker.
            let (_, lso) = rc.fetch_watermarks("open", part, T).unwrap();
            if lso == 8 {
                break;
            }
            assert!(
                Instant::now() < until,
                "partition {part}: LSO {lso}, the open transaction was not aborted"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert!(consume_for(&rc, Duration::from_secs(1)).is_empty());
    let ru = reader(&boot, "open", 3, false);
    assert_eq!(
        consume_n(&ru, 18, T).len(),
        18,
        "read_uncommitted sees both"
    );
}

// ---------------------------------------------------------------------
// Consume-transform-produce with the transformer killed (SIGKILL).

const TRANSFORMER_ENV: &str = "LEVEE_TXN_TRANSFORMER";

/// The transformer, in a process of its own: this test binary started
/// again with `TRANSFORMER_ENV` set (`boot,input,group,txn id,B,C`). Reads
/// the input in a group, and for each record writes `B:<value>` to B and
/// `C:<value>` to C, committing the input offsets in the same
/// transaction; exits on any error (its parent starts it again).
#[test]
fn transformer_process() {
    let Ok(args) = std::env::var(TRANSFORMER_ENV) else {
        return;
    };
    let a: Vec<&str> = args.split(',').collect();
    let (boot, input, group, id, out_b, out_c) = (a[0], a[1], a[2], a[3], a[4], a[5]);
    let p = txn_producer(boot, id);
    p.init_transactions(T).expect("init_transactions");
    let mut cfg = consumer_config(boot, group);
    cfg.set("isolation.level", "read_committed")
        .set("session.timeout.ms", "2000")
        .set("heartbeat.interval.ms", "200");
    let c = consumer("transformer", &cfg);
    c.subscribe(&[input]).unwrap();
    loop {
        let mut batch = Vec::new();
        let until = Instant::now() + Duration::from_millis(100);
        while batch.len() < 10 && Instant::now() < until {
            match c.poll(Duration::from_millis(20)) {
                Some(Ok(m)) => batch.push(owned(&m)),
                Some(Err(e)) => panic!("transformer consumer: {e}"),
                None => {}
            }
        }
        if batch.is_empty() {
            continue;
        }
        p.begin_transaction().expect("begin");
        for m in &batch {
            let v = String::from_utf8_lossy(m.value.as_deref().unwrap_or_default()).into_owned();
            for (topic, tag) in [(out_b, "B"), (out_c, "C")] {
                let out = format!("{tag}:{v}");
                let r: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(out.as_bytes());
                p.send(r).map_err(|(e, _)| e).expect("send");
            }
        }
        let pos = c.position().expect("position");
        let cgm = c.group_metadata().expect("group metadata");
        p.send_offsets_to_transaction(&pos, &cgm, T)
            .expect("send_offsets_to_transaction");
        p.commit_transaction(T).expect("commit");
    }
}

/// xorshift64*: the trials' seeded kill times.
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
            "transformer_process",
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

/// Every value of `topic` (3 partitions? any number) read_committed, until
/// `n` arrived or `within` passed.
fn read_values(
    boot: &str,
    topic: &str,
    partitions: i32,
    n: usize,
    within: Duration,
) -> Vec<String> {
    let rc = reader(boot, topic, partitions, true);
    let mut got = consume_n(&rc, n, within);
    got.extend(consume_for(&rc, Duration::from_millis(300)));
    values(&got)
}

#[test]
fn consume_transform_produce_survives_kill_9_of_the_transformer_exactly_once() {
    let trials: u64 = std::env::var("TXN_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let b = Broker::start("kafka-txn-ctp");
    let boot = b.kafka.to_string();
    let records = 1000usize;
    for trial in 0..trials {
        let seed = 0x5eed_0000 + trial;
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let (a, bt, ct) = (
            format!("a{trial}"),
            format!("b{trial}"),
            format!("c{trial}"),
        );
        create_topic(&b, &a, 3);
        create_topic(&b, &bt, 2);
        create_topic(&b, &ct, 1);
        let plain = producer("input", &producer_config(&boot, "all", "none"));
        send_n(&plain, &a, 3, "r", records);
        flush_all_delivered(&plain, records);
        let args = format!("{boot},{a},ctp{trial},transformer{trial},{bt},{ct}");
        let log = b
            .data_dir()
            .with_extension(format!("transformer{trial}.log"));
        // Each transformer is killed once the outputs reach a point of the
        // input (so that kills land in the middle of the work), plus a
        // seeded delay that puts it anywhere in a transaction.
        let kills = rng.range(2, 5) as usize;
        let progress = reader(&boot, &bt, 2, true);
        let mut seen = 0usize;
        for k in 0..kills {
            let mut child = spawn_transformer(&args, &log);
            let target = records * (k + 1) / (kills + 1);
            let until = Instant::now() + Duration::from_secs(60);
            while seen < target && Instant::now() < until {
                seen += consume_n(&progress, target - seen, Duration::from_millis(200)).len();
            }
            let ms = rng.range(0, 300);
            std::thread::sleep(Duration::from_millis(ms));
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            eprintln!(
                "trial {trial} (seed {seed:#x}): killed the transformer {ms} ms after {seen} of {records} outputs ({}/{kills})",
                k + 1
            );
        }
        // A last transformer finishes the input.
        let mut child = spawn_transformer(&args, &log);
        let until = Instant::now() + Duration::from_secs(90);
        let mut got_b = Vec::new();
        while Instant::now() < until {
            got_b = read_values(&boot, &bt, 2, records, Duration::from_secs(3));
            if got_b.len() >= records {
                break;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let got_c = read_values(&boot, &ct, 1, records, Duration::from_secs(10));
        let want = |tag: &str| {
            let mut v: Vec<String> = (0..records).map(|i| format!("{tag}:r-{i}")).collect();
            v.sort();
            v
        };
        let replay = format!(
            "replay: TXN_TRIALS={} cargo test -p levee-cli --test kafka_txn consume_transform (seed {seed:#x}); transformer log {}",
            trial + 1,
            log.display()
        );
        assert_eq!(
            got_b,
            want("B"),
            "trial {trial}: B holds each output once; {replay}"
        );
        assert_eq!(
            got_c,
            want("C"),
            "trial {trial}: C holds each output once; {replay}"
        );
    }
}

fn metric(admin: std::net::SocketAddr, family: &str) -> f64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.lines()
        .filter(|l| l.starts_with(family) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, f64::max)
}

#[test]
fn levee_txn_list_and_describe_show_an_open_transaction_and_the_metric_its_age() {
    let b = Broker::start("kafka-txn-cli");
    let boot = b.kafka.to_string();
    create_topic(&b, "shown", 3);
    let p = txn_producer(&boot, "shown-id");
    p.init_transactions(T).unwrap();
    p.begin_transaction().unwrap();
    send_n(&p, "shown", 3, "x", 6);
    p.flush(T).unwrap();
    std::thread::sleep(Duration::from_millis(1200));

    let (ok, out, err) = common::levee(&b.bootstrap(), &["txn", "list", "--open"], None);
    assert!(ok, "levee txn list: {err}");
    let out = String::from_utf8(out).unwrap();
    let line = out
        .lines()
        .find(|l| l.starts_with("shown-id\t"))
        .unwrap_or_else(|| panic!("no shown-id in:\n{out}"));
    let f: Vec<&str> = line.split('\t').collect();
    assert_eq!(f[1], "Ongoing", "{line}");
    assert!(f[4].parse::<i64>().unwrap() >= 1000, "age: {line}");
    assert_eq!(f[5], "3", "partitions: {line}");

    let (ok, out, err) = common::levee(&b.bootstrap(), &["txn", "describe", "shown-id"], None);
    assert!(ok, "levee txn describe: {err}");
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("state: Ongoing"), "{out}");
    for part in 0..3 {
        assert!(out.contains(&format!("  shown\t{part}")), "{out}");
    }
    assert!(metric(b.admin, "levee_transaction_oldest_open_age_seconds") >= 1.0);
    assert_eq!(metric(b.admin, "levee_transactions_open"), 1.0);

    p.commit_transaction(T).unwrap();
    let (ok, out, _) = common::levee(&b.bootstrap(), &["txn", "describe", "shown-id"], None);
    assert!(ok);
    assert!(String::from_utf8(out)
        .unwrap()
        .contains("state: CompleteCommit"));
    assert_eq!(
        metric(b.admin, "levee_transaction_oldest_open_age_seconds"),
        0.0
    );
    let (ok, _, err) = common::levee(&b.bootstrap(), &["txn", "describe", "nobody"], None);
    assert!(!ok && err.contains("transactional_id_not_found"), "{err}");
}

#[test]
fn a_transaction_past_its_timeout_is_aborted_and_its_producer_fenced() {
    let b = Broker::start("kafka-txn-timeout");
    let boot = b.kafka.to_string();
    create_topic(&b, "slow", 1);
    let mut cfg = txn_config(&boot, "slow-id");
    cfg.set("transaction.timeout.ms", "2000")
        .set("message.timeout.ms", "2000")
        .set("socket.timeout.ms", "2000");
    let p = producer("slow-id", &cfg);
    p.init_transactions(T).unwrap();
    p.begin_transaction().unwrap();
    send_n(&p, "slow", 1, "late", 5);
    p.flush(T).unwrap();
    let rc = reader(&boot, "slow", 1, true);
    assert!(consume_for(&rc, Duration::from_secs(1)).is_empty());
    // The coordinator aborts it: read_committed moves past it, seeing
    // nothing of it.
    let ru = reader(&boot, "slow", 1, false);
    assert_eq!(consume_n(&ru, 5, T).len(), 5);
    let until = Instant::now() + T;
    loop {
        let (_, lso) = rc.fetch_watermarks("slow", 0, T).unwrap();
        if lso == 6 {
            break; // 5 records and the abort marker
        }
        assert!(
            Instant::now() < until,
            "the timed-out transaction was not aborted (LSO {lso})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(consume_for(&rc, Duration::from_secs(1)).is_empty());
    assert!(
        p.commit_transaction(T).is_err(),
        "a timed-out transaction committed"
    );
}

/// WriteTxnMarkers, as Kafka's admin `abortTransaction` (and
/// `kafka-transactions.sh abort`) sends it to a partition's leader to end
/// a transaction that holds read_committed consumers: an abort marker
/// written this way ends the transaction on that partition. No client at
/// hand sends this API (it is Kafka's inter-broker and admin one), so the
/// request is built by hand.
#[test]
fn write_txn_markers_ends_an_open_transaction_on_a_partition() {
    let b = Broker::start("kafka-txn-markers");
    let boot = b.kafka.to_string();
    create_topic(&b, "hang", 1);
    let p = txn_producer(&boot, "hang-id");
    p.init_transactions(T).unwrap();
    p.begin_transaction().unwrap();
    send_n(&p, "hang", 1, "open", 5);
    p.flush(T).unwrap();
    let plain = producer("plain", &producer_config(&boot, "all", "none"));
    send_n(&plain, "hang", 1, "after", 3);
    flush_all_delivered(&plain, 3);
    let rc = reader(&boot, "hang", 1, true);
    assert!(
        consume_for(&rc, Duration::from_secs(2)).is_empty(),
        "read_committed read past an open transaction"
    );

    let (ok, out, err) = common::levee(&b.bootstrap(), &["txn", "list", "--open"], None);
    assert!(ok, "levee txn list: {err}");
    let out = String::from_utf8(out).unwrap();
    let f: Vec<String> = out
        .lines()
        .find(|l| l.starts_with("hang-id\t"))
        .unwrap_or_else(|| panic!("no hang-id in:\n{out}"))
        .split('\t')
        .map(str::to_string)
        .collect();
    let (pid, epoch): (i64, i16) = (f[2].parse().unwrap(), f[3].parse().unwrap());

    // WriteTxnMarkers v1 (flexible; Kafka 4 dropped v0): one marker
    // (abort) for hang/0 and for a topic that does not exist; then again
    // with an epoch older than the producer's.
    let mut k = KafkaRaw::connect(b.kafka);
    let mut write_markers = |epoch: i16| -> Vec<(String, i32, i16)> {
        use kafka_protocol::messages::write_txn_markers_request::{
            WritableTxnMarker, WritableTxnMarkerTopic,
        };
        use kafka_protocol::messages::*;
        use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
        let topic = |n: &str| {
            let mut t = WritableTxnMarkerTopic::default();
            t.name = TopicName(StrBytes::from_string(n.to_string()));
            t.partition_indexes = vec![0];
            t
        };
        let mut m = WritableTxnMarker::default();
        m.producer_id = ProducerId(pid);
        m.producer_epoch = epoch;
        m.transaction_result = false;
        m.topics = vec![topic("hang"), topic("nope")];
        let mut req = WriteTxnMarkersRequest::default();
        req.markers = vec![m];
        let mut h = RequestHeader::default();
        h.request_api_key = ApiKey::WriteTxnMarkers as i16;
        h.request_api_version = 1;
        h.correlation_id = 7;
        let mut buf = bytes::BytesMut::new();
        h.encode(&mut buf, ApiKey::WriteTxnMarkers.request_header_version(1))
            .unwrap();
        req.encode(&mut buf, 1).unwrap();
        let mut frame = (buf.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&buf);
        k.send_bytes(&frame).unwrap();
        let (corr, body) = k.recv().expect("a WriteTxnMarkers answer");
        assert_eq!(corr, 7);
        // The rest of response header v1: its tagged fields (none).
        let mut b = bytes::Bytes::from(body[1..].to_vec());
        assert_eq!(body[0], 0, "response header tagged fields");
        let r = WriteTxnMarkersResponse::decode(&mut b, 1).unwrap();
        assert_eq!(r.markers.len(), 1);
        assert_eq!(r.markers[0].producer_id, ProducerId(pid));
        r.markers[0]
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (t.name.as_str().to_string(), p.partition_index, p.error_code))
            })
            .collect()
    };
    let got = write_markers(epoch);
    assert_eq!(
        got,
        vec![("hang".to_string(), 0, 0), ("nope".to_string(), 0, 3)],
        "written on hang/0, UNKNOWN_TOPIC_OR_PARTITION for nope"
    );
    assert_eq!(
        values(&consume_n(&rc, 3, T)),
        tagged("after", 3),
        "after the abort marker: the records after it, none of the transaction's"
    );
    assert!(consume_for(&rc, Duration::from_secs(1)).is_empty());
    let got = write_markers(epoch - 1);
    assert_eq!(
        got[0],
        ("hang".to_string(), 0, 47),
        "INVALID_PRODUCER_EPOCH"
    );
    // The producer's own abort goes through its coordinator as usual.
    p.abort_transaction(T).expect("abort");
}

// ---------------------------------------------------------------------
// A three-node cluster.

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
    let live: Vec<String> = nodes
        .iter()
        .filter(|n| n.child.is_some())
        .map(|n| n.bootstrap())
        .collect();
    let (ok, out, err) = common::levee(
        &live.join(","),
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

/// The leaders of every partition of `topic`, once all have one.
fn leaders(c: &KConsumer, topic: &str, partitions: usize) -> Vec<i32> {
    let until = Instant::now() + T;
    loop {
        let (_, parts) = metadata(c, Some(topic));
        if parts.len() == partitions && parts.iter().all(|p| p.error.is_none() && p.leader > 0) {
            let mut by_id: Vec<(i32, i32)> = parts.iter().map(|p| (p.id, p.leader)).collect();
            by_id.sort();
            return by_id.into_iter().map(|(_, l)| l).collect();
        }
        assert!(Instant::now() < until, "{topic} has no leaders: {parts:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn transactions_on_a_cluster_span_every_node_and_survive_a_coordinator_kill() {
    let mut nodes = cluster("kafka-txn-cluster");
    let boot = nodes
        .iter()
        .map(|n| n.kafka.to_string())
        .collect::<Vec<_>>()
        .join(",");
    create_replicated(&nodes, "ct", 6);
    create_replicated(&nodes, "cin", 3);
    let probe = consumer("probe", &reader_config(&boot));
    let led = leaders(&probe, "ct", 6);
    let distinct: std::collections::BTreeSet<i32> = led.iter().copied().collect();
    assert!(
        distinct.len() >= 2,
        "partitions led by one node only: {led:?}"
    );

    let p = txn_producer(&boot, "cluster-id");
    p.init_transactions(T).expect("init_transactions");
    p.begin_transaction().unwrap();
    send_n(&p, "ct", 6, "k", 60);
    p.commit_transaction(T).expect("commit");
    p.begin_transaction().unwrap();
    send_n(&p, "ct", 6, "ab", 60);
    p.flush(T).unwrap();
    p.abort_transaction(T).expect("abort");

    // Offsets of a group in a transaction (the group's coordinator may be
    // another node than the transaction's).
    let plain = producer("plain", &producer_config(&boot, "all", "none"));
    send_n(&plain, "cin", 3, "in", 30);
    flush_all_delivered(&plain, 30);
    let mut cfg = consumer_config(&boot, "cluster-eos");
    cfg.set("isolation.level", "read_committed");
    let c = consumer("cluster-eos", &cfg);
    c.subscribe(&["cin"]).unwrap();
    assert_eq!(consume_n(&c, 30, T).len(), 30);
    p.begin_transaction().unwrap();
    send_n(&p, "ct", 6, "o", 6);
    let pos = c.position().unwrap();
    let cgm = c.group_metadata().unwrap();
    p.send_offsets_to_transaction(&pos, &cgm, T)
        .expect("send offsets");
    p.commit_transaction(T).expect("commit with offsets");
    let want: BTreeMap<i32, Offset> = (0..3).map(|p| (p, Offset::Offset(10))).collect();
    assert_eq!(committed(&c, "cin", 3), want);

    let rc = reader(&boot, "ct", 6, true);
    let mut want = tagged("k", 60);
    want.extend(tagged("o", 6));
    want.sort();
    assert_eq!(values(&consume_n(&rc, 66, T)), want);
    assert!(consume_for(&rc, Duration::from_secs(1)).is_empty());

    // Kill -9 the transaction coordinator's node: a new producer with the
    // same id goes on with the next coordinator.
    let (_, tparts) = metadata(&probe, Some(levee_core::TXN_TOPIC));
    let index = levee_core::group_partition("cluster-id", tparts.len() as u32) as i32;
    let coord = tparts.iter().find(|t| t.id == index).unwrap().leader;
    eprintln!("killing node {coord}, the coordinator of cluster-id");
    drop(p);
    nodes[(coord - 1) as usize].kill();
    let boot_live = nodes
        .iter()
        .filter(|n| n.child.is_some())
        .map(|n| n.kafka.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let p2 = txn_producer(&boot_live, "cluster-id");
    p2.init_transactions(Duration::from_secs(60))
        .expect("init_transactions after the coordinator's kill");
    p2.begin_transaction().unwrap();
    send_n(&p2, "ct", 6, "after", 12);
    p2.commit_transaction(Duration::from_secs(60))
        .expect("commit after the kill");
    let rc2 = reader(&boot_live, "ct", 6, true);
    want.extend(tagged("after", 12));
    want.sort();
    assert_eq!(values(&consume_n(&rc2, 78, Duration::from_secs(60))), want);
}

/// KIP-447 across a failover: offsets a transaction sent are unstable for
/// a read_committed consumer until the transaction completes, also when
/// the group's coordinator is killed in between and another node takes
/// the group over (the mark is stored with the group's state).
#[test]
fn pending_transactional_offsets_stay_unstable_when_the_group_coordinator_dies() {
    let mut nodes = cluster("kafka-txn-pending");
    let boot = nodes
        .iter()
        .map(|n| n.kafka.to_string())
        .collect::<Vec<_>>()
        .join(",");
    create_replicated(&nodes, "pin", 1);
    create_replicated(&nodes, "pout", 1);
    let plain = producer("plain", &producer_config(&boot, "all", "none"));
    send_n(&plain, "pin", 1, "in", 10);
    flush_all_delivered(&plain, 10);
    let mut cfg = consumer_config(&boot, "pending-eos");
    cfg.set("isolation.level", "read_committed");
    let c = consumer("pending-eos", &cfg);
    c.subscribe(&["pin"]).unwrap();
    assert_eq!(consume_n(&c, 10, T).len(), 10);

    let p = txn_producer(&boot, "pending-id");
    p.init_transactions(T).unwrap();
    p.begin_transaction().unwrap();
    send_n(&p, "pout", 1, "out", 5);
    let pos = c.position().unwrap();
    let cgm = c.group_metadata().unwrap();
    p.send_offsets_to_transaction(&pos, &cgm, T)
        .expect("send_offsets_to_transaction");

    // Kill -9 the group's coordinator (the transaction's may be another).
    let probe = consumer("probe", &reader_config(&boot));
    let (_, oparts) = metadata(&probe, Some(levee_core::OFFSETS_TOPIC));
    let index = levee_core::group_partition("pending-eos", oparts.len() as u32) as i32;
    let coord = oparts.iter().find(|t| t.id == index).unwrap().leader;
    eprintln!("killing node {coord}, the coordinator of group pending-eos");
    nodes[(coord - 1) as usize].kill();
    let live = nodes
        .iter()
        .filter(|n| n.child.is_some())
        .map(|n| n.kafka.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut q = TopicPartitionList::new();
    q.add_partition("pin", 0);
    // The new coordinator answers (a read_uncommitted fetch: no offset
    // committed yet) ...
    let mut ucfg = consumer_config(&live, "pending-eos");
    ucfg.set("isolation.level", "read_uncommitted");
    let unstable = consumer("after-uncommitted", &ucfg);
    let r = unstable
        .committed_offsets(q.clone(), Duration::from_secs(60))
        .expect("the group's new coordinator answers");
    assert_eq!(r.elements()[0].offset(), Offset::Invalid);
    // ... and still holds the offsets unstable for a read_committed one.
    let mut scfg = consumer_config(&live, "pending-eos");
    scfg.set("isolation.level", "read_committed");
    let stable = consumer("after-committed", &scfg);
    let r = stable.committed_offsets(q.clone(), Duration::from_secs(3));
    assert!(
        r.is_err(),
        "the new coordinator lost the pending mark: {r:?}"
    );
    // The transaction commits: the offsets are stable, and there.
    p.commit_transaction(Duration::from_secs(60))
        .expect("commit after the group coordinator's kill");
    let r = stable
        .committed_offsets(q, Duration::from_secs(30))
        .expect("stable once committed");
    assert_eq!(r.elements()[0].offset(), Offset::Offset(10));
}

// ---------------------------------------------------------------------
// Benchmark: transactions of 100 records over 3 partitions, one producer,
// measured with confluent-kafka (`tests/kafka/txn_bench.py`): the Rust
// crate's commit_transaction flushes in 100 ms polling steps, which would
// be measured instead.

fn txn_bench(boot: &str, topic: &str, n: usize) {
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let script = repo_root().join("tests/kafka/txn_bench.py");
    let out = Command::new(&py)
        .arg(&script)
        .arg(boot)
        .arg(topic)
        .arg(n.to_string())
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{}", String::from_utf8_lossy(&out.stdout));
}

/// `LEVEE_BIN=target/release/levee cargo test -p levee-cli --test kafka_txn
/// txn_commit_rate -- --ignored --nocapture` (README numbers).
#[test]
#[ignore = "a benchmark: run with --ignored (and a release LEVEE_BIN)"]
fn txn_commit_rate() {
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    if !need_tool(
        "confluent-kafka (Python)",
        &[&py, "-c", "import confluent_kafka"],
    ) {
        return;
    }
    let n: usize = std::env::var("TXN_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let b = Broker::start("kafka-txn-bench");
    create_topic(&b, "bench1", 3);
    txn_bench(&b.kafka.to_string(), "bench1", n);
    drop(b);
    let nodes = cluster("kafka-txn-bench3");
    create_replicated(&nodes, "bench3", 3);
    let boot = nodes
        .iter()
        .map(|n| n.kafka.to_string())
        .collect::<Vec<_>>()
        .join(",");
    txn_bench(&boot, "bench3", n);
}

// ---------------------------------------------------------------------

#[test]
fn confluent_kafka_python_transactions() {
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    if !need_tool(
        "confluent-kafka (Python)",
        &[&py, "-c", "import confluent_kafka"],
    ) {
        return;
    }
    let b = Broker::start("kafka-txn-python");
    create_topic(&b, "pytxn", 2);
    let script = repo_root().join("tests/kafka/confluent_kafka_txn.py");
    let out = Command::new(&py)
        .arg(&script)
        .arg(b.kafka.to_string())
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}:\n{}\n{}\nbroker log:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        b.log_text()
    );
}
