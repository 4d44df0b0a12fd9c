//! Consumer groups with librdkafka (the classic protocol, client-side
//! assignors) against a real `levee serve`:
//!
//! - three members split six partitions two each (disjoint, complete) with
//!   each assignor librdkafka offers (range, roundrobin,
//!   cooperative-sticky), read what is produced to their own partitions
//!   only, commit; one member leaves and the other two take over its
//!   partitions (three each) and resume at its committed offsets;
//! - committed offsets survive a kill -9 of the broker: after a restart on
//!   the same data directory a new member of the group reads from them;
//! - Kafka and native consumers see one group: `levee group describe`
//!   shows a Kafka member, its partitions and its commits; a native
//!   consumer cannot join a Kafka group (a clear error) and a Kafka
//!   consumer cannot join a native one.

mod common;
#[path = "common/kafka.rs"]
mod kafka;

use common::{levee, levee_bin, Broker};
use kafka::*;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::BaseRecord;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

fn member(boot: &str, group: &str, name: &str, strategy: &str, topic: &str) -> KConsumer {
    let mut cfg = consumer_config(boot, group);
    cfg.set("partition.assignment.strategy", strategy);
    let c = consumer(name, &cfg);
    c.subscribe(&[topic]).unwrap();
    c
}

fn assigned(c: &KConsumer) -> BTreeSet<i32> {
    c.assignment()
        .unwrap()
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect()
}

/// Polls every member until each holds `each` partitions, disjoint, and
/// together all of `0..total`. Messages polled meanwhile are returned.
fn wait_split(members: &[&KConsumer], each: usize, total: i32, within: Duration) -> Vec<Msg> {
    let until = Instant::now() + within;
    let mut polled = Vec::new();
    loop {
        for c in members {
            match c.poll(Duration::from_millis(20)) {
                Some(Ok(m)) => polled.push(owned(&m)),
                Some(Err(e)) => panic!("{}: {e}", c.context().name),
                None => {}
            }
        }
        let sets: Vec<BTreeSet<i32>> = members.iter().map(|c| assigned(c)).collect();
        let union: BTreeSet<i32> = sets.iter().flatten().copied().collect();
        let sizes: usize = sets.iter().map(|s| s.len()).sum();
        if sets.iter().all(|s| s.len() == each)
            && sizes == union.len()
            && union == (0..total).collect()
        {
            return polled;
        }
        assert!(
            Instant::now() < until,
            "no split of {total} partitions into {each} each within {within:?}: {sets:?}"
        );
    }
}

/// Produces `per_partition` messages to each of `partitions` partitions.
fn produce(boot: &str, topic: &str, partitions: i32, per_partition: usize, tag: &str) {
    let p = producer(
        &format!("{topic}-{tag}-producer"),
        &producer_config(boot, "all", "lz4"),
    );
    for i in 0..per_partition {
        for part in 0..partitions {
            let v = format!("{tag}-{part}-{i}");
            p.send(
                BaseRecord::<[u8], [u8]>::to(topic)
                    .partition(part)
                    .payload(v.as_bytes()),
            )
            .unwrap_or_else(|(e, _)| panic!("send: {e}"));
        }
        p.poll(Duration::ZERO);
    }
    flush_all_delivered(&p, per_partition * partitions as usize);
}

/// Polls every member until `n` messages arrived in all; checks that each
/// member read only its own partitions and returns (member index, msg).
fn read_all(members: &[&KConsumer], n: usize, within: Duration) -> Vec<(usize, Msg)> {
    let owned_by: Vec<BTreeSet<i32>> = members.iter().map(|c| assigned(c)).collect();
    let until = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < until {
        for (i, c) in members.iter().enumerate() {
            match c.poll(Duration::from_millis(20)) {
                Some(Ok(m)) => {
                    let m = owned(&m);
                    assert!(
                        owned_by[i].contains(&m.partition),
                        "{} read partition {} but holds {:?}",
                        c.context().name,
                        m.partition,
                        owned_by[i]
                    );
                    got.push((i, m));
                }
                Some(Err(e)) => panic!("{}: {e}", c.context().name),
                None => {}
            }
        }
    }
    assert_eq!(got.len(), n, "messages read by the group within {within:?}");
    got
}

fn three_members_split_six_partitions_then_one_leaves(strategy: &str) {
    let b = Broker::start(&format!("kafka-group-{strategy}"));
    let boot = b.kafka.to_string();
    let topic = "six";
    create_topic(&b, topic, 6);
    let group = format!("split-{strategy}");
    let m1 = member(&boot, &group, "m1", strategy, topic);
    let m2 = member(&boot, &group, "m2", strategy, topic);
    let m3 = member(&boot, &group, "m3", strategy, topic);
    let early = wait_split(&[&m1, &m2, &m3], 2, 6, Duration::from_secs(30));
    assert!(early.is_empty(), "read from an empty topic: {early:?}");

    // Each member reads its own partitions, every message once.
    produce(&boot, topic, 6, 10, "first");
    let got = read_all(&[&m1, &m2, &m3], 60, Duration::from_secs(20));
    let keys: BTreeSet<(i32, i64)> = got.iter().map(|(_, m)| (m.partition, m.offset)).collect();
    assert_eq!(keys.len(), 60, "a message was read twice");
    let before: Vec<BTreeSet<i32>> = [&m1, &m2, &m3].iter().map(|c| assigned(c)).collect();
    for c in [&m1, &m2, &m3] {
        c.commit_consumer_state(CommitMode::Sync)
            .unwrap_or_else(|e| panic!("{} commit: {e}", c.context().name));
    }

    // m3 leaves (close sends LeaveGroup): m1 and m2 share its partitions.
    drop(m3);
    let early = wait_split(&[&m1, &m2], 3, 6, Duration::from_secs(30));
    assert!(early.is_empty(), "read after the commit: {early:?}");
    let after: Vec<BTreeSet<i32>> = [&m1, &m2].iter().map(|c| assigned(c)).collect();
    let taken: BTreeSet<i32> = after.iter().flatten().copied().collect();
    assert!(before[2].is_subset(&taken));

    // They resume at the committed offsets: only the new messages.
    produce(&boot, topic, 6, 5, "second");
    let got = read_all(&[&m1, &m2], 30, Duration::from_secs(20));
    for (_, m) in &got {
        assert!(
            (10..15).contains(&m.offset),
            "partition {} read from offset {} (committed: 10)",
            m.partition,
            m.offset
        );
        assert!(m.value.as_deref().unwrap().starts_with(b"second-"));
    }
    let keys: BTreeSet<(i32, i64)> = got.iter().map(|(_, m)| (m.partition, m.offset)).collect();
    assert_eq!(keys.len(), 30, "a message was read twice");
}

#[test]
fn group_of_three_range() {
    three_members_split_six_partitions_then_one_leaves("range");
}

#[test]
fn group_of_three_roundrobin() {
    three_members_split_six_partitions_then_one_leaves("roundrobin");
}

#[test]
fn group_of_three_cooperative_sticky() {
    three_members_split_six_partitions_then_one_leaves("cooperative-sticky");
}

#[test]
fn committed_offsets_survive_a_kill_9_of_the_broker() {
    let mut b = Broker::start("kafka-commit-restart");
    let boot = b.kafka.to_string();
    create_topic(&b, "commits", 3);
    produce(&boot, "commits", 3, 10, "m");

    let c = member(&boot, "resume", "before", "range", "commits");
    let got = consume_n(&c, 30, Duration::from_secs(30));
    assert_eq!(got.len(), 30, "messages read before the commit");
    // Commit positions short of the end: 4, 5 and 6.
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset("commits", p, Offset::Offset(4 + p as i64))
            .unwrap();
    }
    c.commit(&tpl, CommitMode::Sync).expect("commit");
    let committed = |c: &KConsumer| -> BTreeMap<i32, Offset> {
        let mut q = TopicPartitionList::new();
        for p in 0..3 {
            q.add_partition("commits", p);
        }
        c.committed_offsets(q, Duration::from_secs(10))
            .expect("committed offsets")
            .elements()
            .iter()
            .map(|e| (e.partition(), e.offset()))
            .collect()
    };
    let want: BTreeMap<i32, Offset> = (0..3).map(|p| (p, Offset::Offset(4 + p as i64))).collect();
    assert_eq!(committed(&c), want, "committed before the restart");
    drop(c);

    b.kill();
    b.spawn();

    let c = member(&boot, "resume", "after", "range", "commits");
    assert_eq!(committed(&c), want, "committed after kill -9 and restart");
    let got = consume_n(&c, 15, Duration::from_secs(30));
    assert_eq!(got.len(), 15, "messages after the committed offsets");
    for p in 0..3 {
        let offs: Vec<i64> = got
            .iter()
            .filter(|m| m.partition == p)
            .map(|m| m.offset)
            .collect();
        assert_eq!(
            offs,
            (4 + p as i64..10).collect::<Vec<_>>(),
            "partition {p} resumed from its committed offset"
        );
    }
    let more = consume_for(&c, Duration::from_millis(500));
    assert!(more.is_empty(), "read past the end: {more:?}");
}

#[test]
fn kafka_and_native_consumers_see_one_group() {
    let b = Broker::start("kafka-mixed-group");
    let boot = b.kafka.to_string();
    create_topic(&b, "mixed", 2);
    produce(&boot, "mixed", 2, 5, "m");

    // A Kafka member takes both partitions, reads and commits everything.
    let k = member(&boot, "kgroup", "k1", "range", "mixed");
    let got = consume_n(&k, 10, Duration::from_secs(30));
    assert_eq!(got.len(), 10, "messages read by the Kafka member");
    k.commit_consumer_state(CommitMode::Sync).expect("commit");

    // The native CLI describes the Kafka member, its partitions and its
    // commits (one group coordinator, one offsets store).
    let (ok, out, err) = levee(&b.bootstrap(), &["group", "describe", "kgroup"], None);
    assert!(ok, "group describe failed: {err}");
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("members: 1"), "{out}");
    assert!(out.contains("levee-kafka-tests"), "Kafka client id: {out}");
    for p in 0..2 {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("mixed\t{p}\t5\t5\t0\t"))),
            "partition {p}: committed 5 of 5, lag 0: {out}"
        );
    }

    // A native consumer cannot join the Kafka group.
    let (ok, _, err) = levee(
        &b.bootstrap(),
        &[
            "consume",
            "mixed",
            "--group",
            "kgroup",
            "--count",
            "1",
            "--timeout-ms",
            "5000",
        ],
        None,
    );
    assert!(!ok, "a native consumer joined a Kafka group");
    assert!(err.contains("Kafka consumers"), "{err}");
    drop(k);

    // A Kafka consumer cannot join a native group while it has members.
    let mut native = std::process::Command::new(levee_bin())
        .args([
            "consume",
            "mixed",
            "--group",
            "ngroup",
            "--timeout-ms",
            "60000",
        ])
        .env("LEVEE_BOOTSTRAP", b.bootstrap())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start a native group member");
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out, _) = levee(&b.bootstrap(), &["group", "describe", "ngroup"], None);
        if String::from_utf8_lossy(&out).contains("members: 1") {
            break;
        }
        assert!(Instant::now() < until, "the native member never joined");
        std::thread::sleep(Duration::from_millis(100));
    }
    let k = member(&boot, "ngroup", "k2", "range", "mixed");
    let until = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        if let Some(Err(e)) = k.poll(Duration::from_millis(100)) {
            break e.to_string();
        }
        assert!(
            Instant::now() < until,
            "the Kafka consumer was neither refused nor reported an error"
        );
    };
    assert!(
        refused
            .to_lowercase()
            .contains("inconsistent group protocol"),
        "{refused}"
    );
    assert!(assigned(&k).is_empty(), "the Kafka consumer got partitions");
    let _ = native.kill();
    let _ = native.wait();
}

/// Kafka's fencing and per-partition errors for OffsetCommit, on the wire:
/// a commit from an old generation gets ILLEGAL_GENERATION, one from a
/// member the group does not know UNKNOWN_MEMBER_ID, and nothing of either
/// is stored; in one commit, a partition the topic does not have and a
/// topic that does not exist get UNKNOWN_TOPIC_OR_PARTITION each while the
/// request's good partition is stored.
#[test]
fn kafka_commits_are_fenced_and_refused_per_partition() {
    use kafka::raw_group;
    let b = Broker::start("kafka-commit-fencing");
    create_topic(&b, "fenced", 2);
    let group = "fencing";
    let mut raw = KafkaRaw::connect(b.kafka);
    let m = raw_group::join_and_sync(&mut raw, group, 30_000).expect("join and sync");
    assert!(m.generation >= 1, "{m:?}");

    let ok = raw_group::commit(&mut raw, group, &m.id, m.generation, &[("fenced", 0, 3)]);
    assert_eq!(ok, vec![("fenced".to_string(), 0, 0)]);

    let stale = raw_group::commit(
        &mut raw,
        group,
        &m.id,
        m.generation - 1,
        &[("fenced", 0, 1), ("fenced", 1, 1)],
    );
    assert!(
        stale.iter().all(|(_, _, e)| *e == 22),
        "ILLEGAL_GENERATION for an old generation: {stale:?}"
    );
    let ahead = raw_group::commit(
        &mut raw,
        group,
        &m.id,
        m.generation + 1,
        &[("fenced", 0, 1)],
    );
    assert_eq!(ahead[0].2, 22, "ILLEGAL_GENERATION for a future generation");
    let stranger = raw_group::commit(
        &mut raw,
        group,
        "not-a-member",
        m.generation,
        &[("fenced", 0, 1)],
    );
    assert_eq!(stranger[0].2, 25, "UNKNOWN_MEMBER_ID: {stranger:?}");

    let mixed = raw_group::commit(
        &mut raw,
        group,
        &m.id,
        m.generation,
        &[("fenced", 1, 7), ("fenced", 9, 7), ("no-such-topic", 0, 7)],
    );
    assert_eq!(
        mixed,
        vec![
            ("fenced".to_string(), 1, 0),
            ("fenced".to_string(), 9, 3),
            ("no-such-topic".to_string(), 0, 3),
        ],
        "per-partition answers"
    );
    let (e, got) = raw_group::fetch(&mut raw, group, "fenced", &[0, 1]);
    assert_eq!(e, 0);
    assert_eq!(
        got,
        vec![(0, 3, 0), (1, 7, 0)],
        "only the member's own commits in its generation are stored"
    );
    // A single node's offsets topic: one partition, one replica.
    let probe = consumer("fencing-probe", &reader_config(&b.kafka.to_string()));
    let (_, parts) = metadata(&probe, Some(levee_core::OFFSETS_TOPIC));
    assert_eq!(parts.len(), 1, "{parts:?}");
    assert_eq!(parts[0].replicas.len(), 1, "{parts:?}");
}

/// `group_partitions` sets how many partitions the offsets topic gets.
#[test]
fn group_partitions_sets_the_offsets_topics_partitions() {
    let cfg = common::temp_dir("kafka-group-partitions-cfg").join("levee.toml");
    std::fs::write(&cfg, "group_partitions = 4\n").unwrap();
    let b = Broker::start_with(
        "kafka-group-partitions",
        &["--config", cfg.to_str().unwrap()],
    );
    let mut raw = KafkaRaw::connect(b.kafka);
    assert_eq!(kafka::raw_group::find_coordinator(&mut raw, "gp"), Ok(0));
    let probe = consumer("gp-probe", &reader_config(&b.kafka.to_string()));
    let (_, parts) = metadata(&probe, Some(levee_core::OFFSETS_TOPIC));
    assert_eq!(parts.len(), 4, "{parts:?}");
}

/// A coordinator that has not read its groups from the offsets topic yet
/// answers COORDINATOR_LOAD_IN_PROGRESS (after waiting up to 5 s for the
/// load), and a librdkafka consumer retries until it gets the offsets. The
/// load is held back 10 s by a test-only fault
/// (`LEVEE_FAULT_GROUP_LOAD_DELAY_MS`) after a restart.
#[test]
fn a_coordinator_still_loading_its_groups_answers_load_in_progress() {
    use kafka::raw_group;
    let mut b = Broker::start("kafka-group-loading");
    create_topic(&b, "loading", 2);
    let group = "loading-g";
    let mut raw = KafkaRaw::connect(b.kafka);
    let m = raw_group::join_and_sync(&mut raw, group, 30_000).expect("join and sync");
    let ok = raw_group::commit(
        &mut raw,
        group,
        &m.id,
        m.generation,
        &[("loading", 0, 11), ("loading", 1, 12)],
    );
    assert!(ok.iter().all(|(_, _, e)| *e == 0), "{ok:?}");
    drop(raw);

    b.stop();
    b.env
        .push(("LEVEE_FAULT_GROUP_LOAD_DELAY_MS".into(), "10000".into()));
    b.spawn();
    let started = Instant::now();
    let mut raw = KafkaRaw::connect(b.kafka);
    let (e, _) = raw_group::fetch(&mut raw, group, "loading", &[0, 1]);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(10),
        "the load finished before the check ({waited:?}); the fault did not hold it"
    );
    assert_eq!(e, 14, "COORDINATOR_LOAD_IN_PROGRESS while loading");

    let c = consumer(
        "loading-reader",
        &consumer_config(&b.kafka.to_string(), group),
    );
    let mut q = TopicPartitionList::new();
    q.add_partition("loading", 0);
    q.add_partition("loading", 1);
    let got: Vec<(i32, Offset)> = c
        .committed_offsets(q, Duration::from_secs(30))
        .expect("committed offsets once loaded")
        .elements()
        .iter()
        .map(|e| (e.partition(), e.offset()))
        .collect();
    eprintln!("offsets read {:?} after the restart", started.elapsed());
    assert_eq!(
        got,
        vec![(0, Offset::Offset(11)), (1, Offset::Offset(12))],
        "the committed offsets, once loaded"
    );
}
