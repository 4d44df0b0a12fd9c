//! A three-node cluster (each node a broker and a coordinator) serving
//! Kafka clients: Metadata names every node with its own Kafka address and
//! each partition's leader, replicas and ISR; an rdkafka producer (acks=all,
//! retries, no idempotence) and consumer keep running while the leader of a
//! partition is killed with kill -9, and every acknowledged message is
//! consumed afterwards (duplicates counted, none lost); partitions added
//! are replicated; topic settings altered reach every replica; the group
//! coordinator's node is killed and the group goes on.

mod common;
#[path = "common/kafka.rs"]
mod kafka;

use common::{levee, Broker};
use kafka::raw_group;
use kafka::*;
use rdkafka::consumer::Consumer;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Cluster {
    nodes: Vec<Broker>,
}

impl Cluster {
    fn start(name: &str) -> Cluster {
        let (nodes, _) = common::start_three_nodes(
            name,
            "broker_lease_ms = 1500\nheartbeat_interval_ms = 250\nreplica_lag_time_max_ms = 3000\n[log]\nfsync = \"never\"\n",
        );
        let c = Cluster { nodes };
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let (ok, out, err) = levee(&c.native_bootstrap(), &["cluster", "status"], None);
            let s = String::from_utf8_lossy(&out);
            if ok && s.contains("leader: node") && s.matches("live").count() >= 3 {
                return c;
            }
            assert!(Instant::now() < until, "cluster did not form: {s}{err}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn native_bootstrap(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.bootstrap())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Creates `name` with `partitions` partitions on all three nodes.
    fn create_topic(&self, name: &str, partitions: u32) {
        let (ok, out, err) = levee(
            &self.native_bootstrap(),
            &[
                "topic",
                "create",
                name,
                "--partitions",
                &partitions.to_string(),
                "--replication-factor",
                "3",
            ],
            None,
        );
        assert!(ok, "topic create: {err}{}", String::from_utf8_lossy(&out));
    }

    fn kafka_bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.kafka.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Waits until Kafka Metadata (from `c`) shows every partition of `topic`
/// with a leader among `live` and an ISR of `isr` nodes.
fn wait_metadata(c: &KConsumer, topic: &str, live: &[i32], isr: usize) -> Vec<PartMeta> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, parts) = metadata(c, Some(topic));
        if !parts.is_empty()
            && parts
                .iter()
                .all(|p| p.error.is_none() && live.contains(&p.leader) && p.isr.len() == isr)
        {
            return parts;
        }
        assert!(
            Instant::now() < until,
            "Kafka Metadata never showed {topic} led by {live:?} with {isr} in sync: {parts:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn leader_kill_during_kafka_produce_and_consume_loses_no_acknowledged_message() {
    let mut cluster = Cluster::start("kafka-ha");
    let boot = cluster.kafka_bootstrap();
    cluster.create_topic("ha", 3);

    // Metadata: every node with its own Kafka address.
    let probe = consumer("probe", &reader_config(&boot));
    let (mut brokers, _) = metadata(&probe, None);
    brokers.sort();
    let want: Vec<(i32, String)> = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (i as i32 + 1, n.kafka.to_string()))
        .collect();
    assert_eq!(brokers, want, "brokers in Kafka Metadata");
    let parts = wait_metadata(&probe, "ha", &[1, 2, 3], 3);
    for p in &parts {
        let mut r = p.replicas.clone();
        r.sort();
        assert_eq!(r, vec![1, 2, 3], "replicas of partition {}", p.id);
    }
    let victim = parts.iter().find(|p| p.id == 0).unwrap().leader;

    // A produce or fetch sent to a replica that does not lead the
    // partition: NOT_LEADER_OR_FOLLOWER (clients then refresh metadata),
    // and nothing written.
    {
        use levee_client::codec::build_batch;
        use levee_engine::{Compression, Record};
        let follower = if victim == 1 { 2 } else { 1 };
        let mut raw = KafkaRaw::connect(cluster.nodes[follower - 1].kafka);
        let rec = Record {
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(b"to a follower".to_vec()),
            headers: vec![],
        };
        let b = build_batch(&[rec], Compression::None).unwrap();
        assert_eq!(
            raw.produce("ha", 0, &b).0,
            6,
            "produce to node {follower}, a follower"
        );
        assert_eq!(
            raw.fetch("ha", 0, 0).0,
            6,
            "fetch from node {follower}, a follower"
        );
    }

    // Producer thread: numbered messages round-robin over the partitions
    // until told to stop; delivery reports say which were acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let next_seq = Arc::new(AtomicUsize::new(0));
    let mut pcfg = producer_config(&boot, "all", "none");
    pcfg.set("retries", "1000000")
        .set("message.timeout.ms", "40000")
        .set("request.timeout.ms", "5000");
    let prod = producer("ha-producer", &pcfg);
    let deliveries = prod.context().deliveries.clone();
    let producing = {
        let stop = stop.clone();
        let next_seq = next_seq.clone();
        std::thread::spawn(move || {
            let mut seq = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let v = format!("m-{seq}");
                let r = BaseRecord::<[u8], [u8]>::to("ha")
                    .partition((seq % 3) as i32)
                    .payload(v.as_bytes());
                match prod.send(r) {
                    Ok(()) => {
                        seq += 1;
                        next_seq.store(seq, Ordering::SeqCst);
                    }
                    Err((e, _)) => eprintln!("send m-{seq}: {e} (retrying)"),
                }
                prod.poll(Duration::from_millis(3));
            }
            let flushed = prod.flush(Duration::from_secs(60));
            (seq, flushed)
        })
    };
    // Consumer thread: reads every partition from the start until told to
    // stop.
    let consumed = Arc::new(Mutex::new(Vec::<String>::new()));
    let reading = {
        let stop = Arc::new(AtomicBool::new(false));
        let consumed = consumed.clone();
        let boot = boot.clone();
        let s = stop.clone();
        let h = std::thread::spawn(move || {
            let c = consumer("ha-consumer", &reader_config(&boot));
            let mut tpl = TopicPartitionList::new();
            for p in 0..3 {
                tpl.add_partition_offset("ha", p, Offset::Beginning)
                    .unwrap();
            }
            c.assign(&tpl).unwrap();
            while !s.load(Ordering::SeqCst) {
                match c.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => consumed
                        .lock()
                        .unwrap()
                        .push(String::from_utf8(owned(&m).value.unwrap()).unwrap()),
                    Some(Err(e)) => eprintln!("consumer: {e}"),
                    None => {}
                }
            }
        });
        (stop, h)
    };

    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        deliveries.lock().unwrap().iter().any(|d| d.error.is_none()),
        "nothing acknowledged before the kill"
    );
    let kill_seq = next_seq.load(Ordering::SeqCst);
    eprintln!("killing node {victim}, leader of ha/0");
    cluster.nodes[victim as usize - 1].kill();
    // Keep producing through the failover and a while after it.
    let live: Vec<i32> = (1..=3).filter(|&i| i != victim).collect();
    let after = wait_metadata(&probe, "ha", &live, 2);
    eprintln!("after the kill: {after:?}");
    std::thread::sleep(Duration::from_millis(2000));
    stop.store(true, Ordering::SeqCst);
    let (sent, flushed) = producing.join().unwrap();
    assert!(flushed.is_ok(), "producer flush: {flushed:?}");

    let reports = deliveries.lock().unwrap().clone();
    assert_eq!(reports.len(), sent, "a delivery report per message");
    let acked: BTreeSet<String> = reports
        .iter()
        .filter(|d| d.error.is_none())
        .map(|d| String::from_utf8(d.msg.value.clone().unwrap()).unwrap())
        .collect();
    let failed: Vec<&Delivery> = reports.iter().filter(|d| d.error.is_some()).collect();
    eprintln!(
        "{sent} sent, {} acknowledged, {} failed{}",
        acked.len(),
        failed.len(),
        failed
            .first()
            .map(|d| format!(" (first: {:?})", d.error))
            .unwrap_or_default()
    );
    // The producer went on against the new leader of partition 0.
    let seq_of = |v: &str| v[2..].parse::<usize>().unwrap();
    let late_p0 = acked
        .iter()
        .filter(|v| seq_of(v) % 3 == 0 && seq_of(v) >= kill_seq)
        .count();
    assert!(
        late_p0 > 0,
        "no message to partition 0 was acknowledged after the failover"
    );

    // Every acknowledged message is consumed.
    let until = Instant::now() + Duration::from_secs(30);
    let missing = loop {
        let seen: BTreeSet<String> = consumed.lock().unwrap().iter().cloned().collect();
        let missing: Vec<&String> = acked.difference(&seen).collect();
        if missing.is_empty() || Instant::now() > until {
            break missing.len();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    reading.0.store(true, Ordering::SeqCst);
    reading.1.join().unwrap();
    let all = consumed.lock().unwrap().clone();
    let mut counts: BTreeMap<&String, usize> = BTreeMap::new();
    for v in &all {
        *counts.entry(v).or_default() += 1;
    }
    let duplicates: usize = counts.values().map(|&n| n - 1).sum();
    eprintln!(
        "consumed {} records, {} distinct, {duplicates} duplicates",
        all.len(),
        counts.len()
    );
    assert_eq!(
        missing,
        0,
        "acknowledged messages never consumed (of {} acknowledged)",
        acked.len()
    );
}

/// Partitions added on a cluster (native `levee topic add-partitions`, then
/// Kafka's CreatePartitions with a manual assignment) are placed on every
/// node, replicated, led by their first replica, and keep every
/// acknowledged message through a kill -9 of the new partition's leader.
#[test]
fn partitions_added_on_a_cluster_are_replicated_and_survive_a_leader_kill() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    use rdkafka::client::DefaultClientContext;
    let mut cluster = Cluster::start("kafka-grow");
    let boot = cluster.kafka_bootstrap();
    let native = cluster.native_bootstrap();
    let run = |args: &[&str]| {
        let (ok, out, err) = levee(&native, args, None);
        assert!(ok, "{args:?}: {err}{}", String::from_utf8_lossy(&out));
        String::from_utf8_lossy(&out).to_string()
    };
    run(&[
        "topic",
        "create",
        "grow",
        "--partitions",
        "2",
        "--replication-factor",
        "3",
    ]);
    let out = run(&["topic", "add-partitions", "grow", "--partitions", "5"]);
    assert!(out.contains("now has 5 partition"), "{out}");
    // A shrink is refused with a one-line error, and changes nothing.
    let (ok, _, err) = levee(
        &native,
        &["topic", "add-partitions", "grow", "--partitions", "3"],
        None,
    );
    assert!(!ok && err.contains("invalid_partitions"), "{err}");

    let admin: AdminClient<DefaultClientContext> =
        base_config(&boot).create().expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let r = rt
        .block_on(admin.create_partitions(
            &[NewPartitions::new("grow", 6).assign(&[&[3, 1, 2]])],
            &opts,
        ))
        .unwrap();
    assert!(r[0].is_ok(), "CreatePartitions with an assignment: {r:?}");

    // CreateTopics with a manual assignment: placed as given.
    let r = rt
        .block_on(admin.create_topics(
            &[rdkafka::admin::NewTopic::new(
                "placed",
                2,
                rdkafka::admin::TopicReplication::Variable(&[&[2, 3], &[3, 1]]),
            )],
            &opts,
        ))
        .unwrap();
    assert!(r[0].is_ok(), "CreateTopics with an assignment: {r:?}");
    let probe = consumer("grow-probe", &reader_config(&boot));
    let placed = wait_metadata(&probe, "placed", &[1, 2, 3], 2);
    let got: Vec<(i32, Vec<i32>, i32)> = placed
        .iter()
        .map(|p| (p.id, p.replicas.clone(), p.leader))
        .collect();
    assert_eq!(got, vec![(0, vec![2, 3], 2), (1, vec![3, 1], 3)]);
    let parts = wait_metadata(&probe, "grow", &[1, 2, 3], 3);
    assert_eq!(parts.len(), 6, "{parts:?}");
    let p5 = parts.iter().find(|p| p.id == 5).unwrap();
    assert_eq!(p5.replicas, vec![3, 1, 2], "the given assignment");
    assert_eq!(p5.leader, 3, "the first replica leads");
    let new_leaders: BTreeSet<i32> = parts
        .iter()
        .filter(|p| (2..5).contains(&p.id))
        .map(|p| p.leader)
        .collect();
    assert_eq!(
        new_leaders.len(),
        3,
        "new partitions' leaders spread: {parts:?}"
    );

    let mut pcfg = producer_config(&boot, "all", "none");
    pcfg.set("retries", "1000000")
        .set("message.timeout.ms", "40000");
    let prod = producer("grow-producer", &pcfg);
    for i in 0..60 {
        let v = format!("g-{i}");
        prod.send(
            BaseRecord::<[u8], [u8]>::to("grow")
                .partition(i % 6)
                .payload(v.as_bytes()),
        )
        .unwrap_or_else(|(e, _)| panic!("send: {e}"));
    }
    flush_all_delivered(&prod, 60);
    drop(prod);

    cluster.nodes[2].kill();
    wait_metadata(&probe, "grow", &[1, 2], 2);
    let reader = consumer("grow-reader", &reader_config(&boot));
    let mut tpl = TopicPartitionList::new();
    for p in 0..6 {
        tpl.add_partition_offset("grow", p, Offset::Beginning)
            .unwrap();
    }
    reader.assign(&tpl).unwrap();
    // Connection errors to the killed node are expected; anything else fails.
    let mut got = Vec::new();
    let until = Instant::now() + Duration::from_secs(40);
    while got.len() < 60 && Instant::now() < until {
        match reader.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => got.push(owned(&m)),
            Some(Err(rdkafka::error::KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure,
            ))) => {}
            Some(Err(e)) => panic!("grow-reader: {e}"),
            None => {}
        }
    }
    let values: BTreeSet<String> = got
        .iter()
        .map(|m| String::from_utf8(m.value.clone().unwrap()).unwrap())
        .collect();
    let want: BTreeSet<String> = (0..60).map(|i| format!("g-{i}")).collect();
    assert_eq!(values, want, "every acknowledged message after the kill");
    let per_part: BTreeMap<i32, usize> = got.iter().fold(BTreeMap::new(), |mut m, g| {
        *m.entry(g.partition).or_default() += 1;
        m
    });
    assert_eq!(per_part.values().copied().collect::<Vec<_>>(), vec![10; 6]);
}

/// The node coordinating `group`: the leader of its partition of the
/// offsets topic, as Kafka Metadata shows it.
fn group_coordinator(c: &KConsumer, group: &str) -> i32 {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, parts) = metadata(c, Some(levee_core::OFFSETS_TOPIC));
        if !parts.is_empty() {
            let p = levee_core::group_partition(group, parts.len() as u32) as i32;
            if let Some(pm) = parts.iter().find(|pm| pm.id == p && pm.leader > 0) {
                return pm.leader;
            }
        }
        assert!(
            Instant::now() < until,
            "no coordinator for {group}: {parts:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A group of three rdkafka consumers on a 3-node RF=3 cluster, reading 6
/// partitions while a producer (acks=all) runs; the group coordinator's
/// node is killed with kill -9. The members find the new coordinator (the
/// new leader of the group's offsets partition, which loads the group from
/// its replicated log), no committed offset moves backwards, and after a
/// final drain every acknowledged message was processed at least once;
/// duplicates (re-reads after the last commit before the kill) are counted.
#[test]
fn group_coordinator_kill_keeps_committed_offsets_and_the_group_goes_on() {
    use rdkafka::consumer::CommitMode;
    let mut cluster = Cluster::start("kafka-gc-kill");
    let boot = cluster.kafka_bootstrap();
    cluster.create_topic("gc", 6);
    let group = "gc-group";

    let stop = Arc::new(AtomicBool::new(false));
    let mut pcfg = producer_config(&boot, "all", "none");
    pcfg.set("retries", "1000000")
        .set("message.timeout.ms", "60000")
        .set("request.timeout.ms", "5000");
    let prod = producer("gc-producer", &pcfg);
    let deliveries = prod.context().deliveries.clone();
    let producing = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seq = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let v = format!("m-{seq}");
                let r = BaseRecord::<[u8], [u8]>::to("gc")
                    .partition((seq % 6) as i32)
                    .payload(v.as_bytes());
                if prod.send(r).is_ok() {
                    seq += 1;
                }
                prod.poll(Duration::from_millis(2));
            }
            prod.flush(Duration::from_secs(60))
        })
    };

    // Each member: process (record) every message, commit every 200 ms;
    // every successful commit is logged with the offsets it stored.
    type Reads = Vec<(String, i64, i64, Instant)>;
    let processed = Arc::new(Mutex::new(Reads::new()));
    let commits = Arc::new(Mutex::new(common::Commits::new()));
    let drain = Arc::new(AtomicBool::new(false));
    let members: Vec<_> = (0..3)
        .map(|i| {
            let (boot, processed, commits, drain) = (
                boot.clone(),
                processed.clone(),
                commits.clone(),
                drain.clone(),
            );
            std::thread::spawn(move || {
                let mut cfg = consumer_config(&boot, group);
                cfg.set("partition.assignment.strategy", "range");
                let c = consumer(&format!("gc-member-{i}"), &cfg);
                c.subscribe(&["gc"]).unwrap();
                let mut last_commit = Instant::now();
                let mut quiet_since: Option<Instant> = None;
                loop {
                    match c.poll(Duration::from_millis(100)) {
                        Some(Ok(m)) => {
                            quiet_since = None;
                            let m = owned(&m);
                            processed.lock().unwrap().push((
                                String::from_utf8(m.value.unwrap()).unwrap(),
                                m.partition as i64,
                                m.offset,
                                Instant::now(),
                            ));
                        }
                        Some(Err(e)) => eprintln!("member {i}: {e}"),
                        None => {
                            if drain.load(Ordering::SeqCst) {
                                let q = *quiet_since.get_or_insert_with(Instant::now);
                                if q.elapsed() > Duration::from_secs(3) {
                                    break;
                                }
                            }
                        }
                    }
                    if last_commit.elapsed() > Duration::from_millis(200) {
                        last_commit = Instant::now();
                        if let Ok(pos) = c.position() {
                            if c.commit_consumer_state(CommitMode::Sync).is_ok() {
                                let stored: BTreeMap<i64, i64> = pos
                                    .elements()
                                    .iter()
                                    .filter_map(|e| match e.offset() {
                                        Offset::Offset(o) => Some((e.partition() as i64, o)),
                                        _ => None,
                                    })
                                    .collect();
                                commits.lock().unwrap().push((Instant::now(), stored));
                            }
                        }
                    }
                }
                let _ = c.commit_consumer_state(CommitMode::Sync);
            })
        })
        .collect();

    let probe = consumer("gc-probe", &reader_config(&boot));
    // The members consume and commit for a while first (on a loaded
    // machine the first commit may take longer than the 4 s waited).
    std::thread::sleep(Duration::from_secs(4));
    let until = Instant::now() + Duration::from_secs(30);
    while commits.lock().unwrap().iter().all(|(_, c)| c.is_empty())
        || processed.lock().unwrap().is_empty()
    {
        assert!(
            Instant::now() < until,
            "nothing processed and committed before the kill"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let victim = group_coordinator(&probe, group);
    // The offsets topic of a 3-node cluster: 16 partitions, each on all
    // three nodes.
    let (_, parts) = metadata(&probe, Some(levee_core::OFFSETS_TOPIC));
    assert_eq!(parts.len(), 16, "{parts:?}");
    assert!(
        parts.iter().all(|p| p.replicas.len() == 3),
        "replication factor 3: {parts:?}"
    );
    // A node that does not coordinate the group answers its group
    // requests with NOT_COORDINATOR (clients then find the coordinator).
    {
        use kafka_protocol::messages::offset_commit_request::{
            OffsetCommitRequestPartition, OffsetCommitRequestTopic,
        };
        use kafka_protocol::messages::{
            ApiKey, GroupId, OffsetCommitRequest, OffsetCommitResponse, TopicName,
        };
        use kafka_protocol::protocol::StrBytes;
        let other = if victim == 1 { 2 } else { 1 };
        let mut raw = KafkaRaw::connect(cluster.nodes[other as usize - 1].kafka);
        let mut p = OffsetCommitRequestPartition::default();
        p.partition_index = 0;
        p.committed_offset = 0;
        let mut t = OffsetCommitRequestTopic::default();
        t.name = TopicName(StrBytes::from_static_str("gc"));
        t.partitions = vec![p];
        let mut req = OffsetCommitRequest::default();
        req.group_id = GroupId(StrBytes::from_static_str(group));
        req.generation_id_or_member_epoch = -1;
        req.topics = vec![t];
        let r: OffsetCommitResponse = raw.call_encoded(ApiKey::OffsetCommit, 8, &req);
        assert_eq!(
            r.topics[0].partitions[0].error_code, 16,
            "an offset commit sent to node {other}, not the group's coordinator"
        );
    }
    let before_kill = processed.lock().unwrap().len();
    assert!(before_kill > 0, "nothing processed before the kill");
    let committed_before = common::committed_by(&commits.lock().unwrap(), Instant::now());
    assert!(!committed_before.is_empty(), "no commit before the kill");
    eprintln!(
        "killing node {victim}, coordinator of {group}; committed so far {committed_before:?}"
    );
    let killed_at = Instant::now();
    cluster.nodes[victim as usize - 1].kill();

    // The offsets partition gets a new leader: a surviving node.
    let until = Instant::now() + Duration::from_secs(30);
    let new_coord = loop {
        let c = group_coordinator(&probe, group);
        if c != victim {
            break c;
        }
        assert!(
            Instant::now() < until,
            "the coordinator did not move off node {victim}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "new coordinator: node {new_coord} after {:?}",
        killed_at.elapsed()
    );
    // As soon as the new coordinator answers, it has every offset
    // acknowledged before the kill.
    let committed_now = |name: &str| -> Option<BTreeMap<i64, i64>> {
        let reader = consumer(name, &consumer_config(&boot, group));
        let mut q = TopicPartitionList::new();
        for p in 0..6 {
            q.add_partition("gc", p);
        }
        match reader.committed_offsets(q, Duration::from_secs(10)) {
            Ok(l) => Some(
                l.elements()
                    .iter()
                    .filter_map(|e| match e.offset() {
                        Offset::Offset(o) => Some((e.partition() as i64, o)),
                        _ => None,
                    })
                    .collect(),
            ),
            Err(e) => {
                eprintln!("committed offsets during the failover: {e}");
                None
            }
        }
    };
    let until = Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let Some(c) = committed_now("gc-first") {
            break c;
        }
        assert!(
            Instant::now() < until,
            "no coordinator answered after the kill"
        );
    };
    let answered = killed_at.elapsed();
    for (p, o) in &committed_before {
        assert!(
            first.get(p).is_some_and(|f| f >= o),
            "partition {p}: a commit of {o} was acknowledged before the kill; the new coordinator's first answer has {:?}",
            first.get(p)
        );
    }

    // The group goes on: commits succeed again after the kill.
    let first_commit = common::commits_resumed(&commits, killed_at, Duration::from_secs(30));
    eprintln!("offsets read after {answered:?}; first commit after {first_commit:?}");
    // Within the failover time (broker lease 1.5 s; a Raft election if the
    // victim led the coordinators; the members' rejoin), with a margin for
    // a loaded host.
    assert!(
        first_commit < Duration::from_secs(15),
        "the members took {first_commit:?} to commit again after the kill"
    );
    // All three members are back in the group, as the CLI (through any
    // live node) describes it.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out, err) = levee(
            &cluster.native_bootstrap(),
            &["group", "describe", group],
            None,
        );
        let text = String::from_utf8_lossy(&out).to_string();
        if ok && text.contains("members: 3") && text.contains("state: Stable") {
            assert!(
                text.contains(&format!("coordinator: node {new_coord}")),
                "{text}"
            );
            break;
        }
        assert!(
            Instant::now() < until,
            "the group after the kill: {text}{err}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    let flushed = producing.join().unwrap();
    assert!(flushed.is_ok(), "producer flush: {flushed:?}");
    drain.store(true, Ordering::SeqCst);

    // Every acknowledged message processed at least once.
    let acked: BTreeSet<String> = deliveries
        .lock()
        .unwrap()
        .iter()
        .filter(|d| d.error.is_none())
        .map(|d| String::from_utf8(d.msg.value.clone().unwrap()).unwrap())
        .collect();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let seen: BTreeSet<String> = processed
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.0.clone())
            .collect();
        let missing = acked.difference(&seen).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "{missing} acknowledged messages never processed (of {})",
            acked.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for m in members {
        m.join().unwrap();
    }

    // No committed offset moved backwards: the group's offsets now (from
    // the new coordinator) are at least what was committed before the kill.
    let now = committed_now("gc-final").expect("committed offsets after the drain");
    for (p, o) in &committed_before {
        assert!(
            now.get(p).is_some_and(|n| n >= o),
            "partition {p}: committed {o} before the kill, {:?} after",
            now.get(p)
        );
    }
    // Records were read again only past commits acknowledged before they
    // were read again: duplicates come only from reads after the last
    // commit (before the kill, or before a rebalance).
    let all = processed.lock().unwrap().clone();
    let reads: Vec<(i64, i64, Instant)> = all.iter().map(|r| (r.1, r.2, r.3)).collect();
    let (rereads, after_kill) = common::check_rereads(&reads, &commits.lock().unwrap(), killed_at);
    let distinct: BTreeSet<&String> = all.iter().map(|r| &r.0).collect();
    eprintln!(
        "acknowledged {}, processed {} records, {} distinct, {} duplicates ({} of them read after the kill)",
        acked.len(),
        all.len(),
        distinct.len(),
        rereads,
        after_kill
    );
}

/// `levee topic alter` on a cluster goes through the coordinators
/// (AlterTopicConfig): every node's replicas take the new retention at
/// once and cut their logs, every node's DescribeConfigs shows it, and a
/// bad value is refused without changing anything.
#[test]
fn topic_settings_altered_on_a_cluster_apply_on_every_replica() {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let cluster = Cluster::start("kafka-alter");
    let native = cluster.native_bootstrap();
    let run = |args: &[&str], stdin: Option<&[u8]>| {
        let (ok, out, err) = levee(&native, args, stdin);
        assert!(ok, "{args:?}: {err}{}", String::from_utf8_lossy(&out));
        String::from_utf8_lossy(&out).to_string()
    };
    run(
        &[
            "topic",
            "create",
            "tuned",
            "--replication-factor",
            "3",
            "--segment-bytes",
            "65536",
        ],
        None,
    );
    let lines: String = (0..3000).map(|i| format!("{i:0>999}\n")).collect();
    run(
        &["produce", "tuned", "--acks", "all"],
        Some(lines.as_bytes()),
    );
    let out = run(
        &["topic", "alter", "tuned", "--retention-bytes", "200000"],
        None,
    );
    assert!(out.contains("retention.bytes=200000"), "{out}");
    let (ok, _, err) = levee(
        &native,
        &["topic", "alter", "tuned", "--segment-bytes", "100"],
        None,
    );
    assert!(!ok && err.contains("invalid_config"), "{err}");

    // Each node's own replica: log start moved, size within retention.
    let until = Instant::now() + Duration::from_secs(20);
    for n in &cluster.nodes {
        loop {
            let (ok, out, err) = levee(&n.bootstrap(), &["topic", "describe", "tuned"], None);
            let d = String::from_utf8_lossy(&out).to_string();
            assert!(ok, "{err}");
            assert!(d.contains("retention_bytes: 200000"), "{d}");
            assert!(
                d.contains("segment_bytes: 65536"),
                "the refused alter changed it: {d}"
            );
            let row: Vec<u64> = d
                .lines()
                .find(|l| l.starts_with("0\t"))
                .map(|l| l.split('\t').filter_map(|v| v.parse().ok()).collect())
                .unwrap_or_default();
            // partition, leader, log_start, log_end, high_watermark, size_bytes, ...
            if row.len() >= 6 && row[2] > 0 && row[5] <= 200_000 + 65536 {
                assert_eq!(row[3], 3000, "{d}");
                break;
            }
            assert!(
                Instant::now() < until,
                "node {} did not apply the retention: {d}",
                n.addr
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // Every node answers DescribeConfigs with the new value.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    for n in &cluster.nodes {
        let admin: AdminClient<DefaultClientContext> = base_config(&n.kafka.to_string())
            .create()
            .expect("admin client");
        let described = rt
            .block_on(admin.describe_configs(&[ResourceSpecifier::Topic("tuned")], &opts))
            .unwrap();
        let cfg = described[0].as_ref().expect("describe_configs tuned");
        let v = cfg
            .get("retention.bytes")
            .and_then(|e| e.value.clone())
            .unwrap_or_else(|| panic!("no retention.bytes in {:?}", cfg.entries));
        assert_eq!(v, "200000", "node {}", n.kafka);
    }
}

/// The node that leads `group`'s offsets partition, asked of `via` with
/// FindCoordinator until it names a node other than `not` (up to 30 s).
fn coordinator_other_than(via: &Broker, group: &str, not: i32) -> i32 {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let mut raw = KafkaRaw::connect(via.kafka);
        match raw_group::find_coordinator(&mut raw, group) {
            Ok(n) if n != not => return n,
            r => assert!(
                Instant::now() < until,
                "the coordinator of {group} did not move off node {not}: {r:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Joins `group` on node `b` (the coordinator), retrying while it takes
/// over (COORDINATOR_LOAD_IN_PROGRESS, NOT_COORDINATOR) for up to 30 s.
fn join_on(b: &Broker, group: &str) -> (KafkaRaw, raw_group::Member) {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let mut raw = KafkaRaw::connect(b.kafka);
        match raw_group::join_and_sync(&mut raw, group, 6000) {
            Ok(m) => return (raw, m),
            Err(e) => assert!(
                Instant::now() < until,
                "joining {group} on node {}: error {e}",
                b.kafka
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kafka protocol: the group coordinator is paused (SIGSTOP) for longer
/// than the broker lease and the session timeout; its offsets partition
/// gets a new leader, where a new member joins in a later generation and
/// commits. Resumed (SIGCONT), the old node answers the old member's
/// commit with NOT_COORDINATOR (it no longer leads the partition in the
/// epoch it loaded the group in), and the committed offset stays the new
/// member's, on every node's answer.
#[test]
fn a_paused_kafka_coordinator_accepts_no_commit_from_the_old_generation() {
    let cluster = Cluster::start("kafka-gc-stop");
    cluster.create_topic("kps", 2);
    let group = "kafka-paused";
    let coord = coordinator_other_than(&cluster.nodes[0], group, -1);
    let x = &cluster.nodes[coord as usize - 1];
    let (mut old, m) = join_on(x, group);
    let r = raw_group::commit(&mut old, group, &m.id, m.generation, &[("kps", 0, 10)]);
    assert_eq!(r[0].2, 0, "{r:?}");

    x.signal("STOP");
    let other = cluster.nodes.iter().find(|n| n.kafka != x.kafka).unwrap();
    let new_coord = coordinator_other_than(other, group, coord);
    let y = &cluster.nodes[new_coord as usize - 1];
    let (mut new, n) = join_on(y, group);
    assert!(
        n.generation > m.generation,
        "generations go on: {} after {}",
        n.generation,
        m.generation
    );
    let r = raw_group::commit(&mut new, group, &n.id, n.generation, &[("kps", 0, 20)]);
    assert_eq!(r[0].2, 0, "the new member's commit: {r:?}");
    std::thread::sleep(Duration::from_secs(7));

    x.signal("CONT");
    let r = raw_group::commit(&mut old, group, &m.id, m.generation, &[("kps", 0, 5)]);
    eprintln!("the resumed old coordinator answered the old member's commit with {r:?}");
    assert_eq!(
        r[0].2, 16,
        "NOT_COORDINATOR from the resumed old coordinator"
    );
    let (e, got) = raw_group::fetch(&mut new, group, "kps", &[0]);
    assert_eq!((e, got), (0, vec![(0, 20, 0)]));
    // Once it has caught up, the old node points to the new coordinator
    // and its copy of the offsets does not bring the fenced commit back.
    assert_eq!(coordinator_other_than(x, group, coord), new_coord);
    let (e, got) = raw_group::fetch(&mut new, group, "kps", &[0]);
    assert_eq!((e, got), (0, vec![(0, 20, 0)]));
}

/// A graceful stop (SIGTERM) of the group coordinator's node moves the
/// coordinator: another node leads the offsets partition, loads the group
/// and answers with the committed offsets; the stopped node's members are
/// unknown there (they rejoin, as after a failover).
#[test]
fn a_graceful_stop_moves_the_group_coordinator_with_its_offsets() {
    let mut cluster = Cluster::start("kafka-gc-term");
    cluster.create_topic("kts", 2);
    let group = "kafka-stopped";
    let coord = coordinator_other_than(&cluster.nodes[0], group, -1);
    let (mut raw, m) = join_on(&cluster.nodes[coord as usize - 1], group);
    let r = raw_group::commit(
        &mut raw,
        group,
        &m.id,
        m.generation,
        &[("kts", 0, 31), ("kts", 1, 32)],
    );
    assert!(r.iter().all(|x| x.2 == 0), "{r:?}");
    drop(raw);

    let stopped_at = Instant::now();
    let status = cluster.nodes[coord as usize - 1].stop();
    assert!(status.success(), "levee exited with {status:?} on SIGTERM");
    let other = cluster.nodes.iter().find(|n| n.child.is_some()).unwrap();
    let new_coord = coordinator_other_than(other, group, coord);
    let y = &cluster.nodes[new_coord as usize - 1];
    let until = Instant::now() + Duration::from_secs(30);
    let got = loop {
        let mut raw = KafkaRaw::connect(y.kafka);
        match raw_group::fetch(&mut raw, group, "kts", &[0, 1]) {
            (0, got) => break got,
            (e, _) => assert!(Instant::now() < until, "offsets on node {new_coord}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "coordinator moved from node {coord} to node {new_coord}; offsets served {:?} after the stop",
        stopped_at.elapsed()
    );
    assert_eq!(got, vec![(0, 31, 0), (1, 32, 0)]);
    let mut raw = KafkaRaw::connect(y.kafka);
    let r = raw_group::commit(&mut raw, group, &m.id, m.generation, &[("kts", 0, 40)]);
    assert_eq!(r[0].2, 25, "UNKNOWN_MEMBER_ID for the old member: {r:?}");
    let (_, m2) = join_on(y, group);
    assert!(m2.generation > m.generation);
}

/// The offsets topic keeps min(3, brokers) copies of every partition even
/// when a cluster's first group request comes while a node is down: group
/// requests get COORDINATOR_NOT_AVAILABLE (retriable) until the node is
/// back, then the topic is created with all three replicas.
#[test]
fn the_offsets_topic_waits_for_three_live_brokers() {
    let mut cluster = Cluster::start("kafka-offsets-rf");
    cluster.nodes[2].kill();
    // Until the coordinators declare node 3 down.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out, _) = levee(&cluster.native_bootstrap(), &["cluster", "status"], None);
        if ok && String::from_utf8_lossy(&out).contains("\tdown\t") {
            break;
        }
        assert!(Instant::now() < until, "node 3 still live");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut raw = KafkaRaw::connect(cluster.nodes[0].kafka);
    assert_eq!(
        raw_group::find_coordinator(&mut raw, "rf-group"),
        Err(15),
        "COORDINATOR_NOT_AVAILABLE while a node is down"
    );
    cluster.nodes[2].spawn();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match raw_group::find_coordinator(&mut raw, "rf-group") {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < until, "no coordinator: {e}"),
        }
    }
    let probe = consumer("rf-probe", &reader_config(&cluster.kafka_bootstrap()));
    let (_, parts) = metadata(&probe, Some(levee_core::OFFSETS_TOPIC));
    assert_eq!(parts.len(), 16, "{parts:?}");
    assert!(
        parts.iter().all(|p| p.replicas.len() == 3),
        "three replicas of every partition: {parts:?}"
    );
}
