//! Kafka's DeleteRecords and the topic config `max.message.bytes` against
//! real `levee serve` processes:
//!
//! - one node: `tests/kafka/delete_records.py check` (confluent-kafka's
//!   and kafka-python's admin clients: low watermarks, -1, offsets past the
//!   high watermark, unknown topics and partitions, fetches below the new
//!   start; a topic created with `max.message.bytes` refusing a bigger
//!   batch), and `levee topic delete-records` (the native request); then
//!   the deleted-to offsets survive kill -9 and a graceful restart;
//! - three nodes, replication factor 3: the rdkafka crate's
//!   `AdminClient::delete_records`; every replica's log start follows the
//!   leader's (the metric `levee_partition_log_start_offset`), and after
//!   kill -9 of the leader the new leader's earliest offset is the
//!   deleted-to offset; the killed node comes back with it.
//!
//! The Python clients come from `tests/kafka/setup.sh`; without them the
//! test fails and says so, unless `LEVEE_SKIP_KAFKA_CLIENT_TESTS=1`.

mod common;
#[path = "common/kafka.rs"]
mod kafka;

use common::{levee, Broker};
use kafka::*;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::producer::BaseRecord;
use rdkafka::{Offset, TopicPartitionList};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

fn script(args: &[&str]) {
    let path = repo_root().join("tests/kafka/delete_records.py");
    let (ok, out) = run_with_timeout(
        Command::new(python()).arg(&path).args(args),
        Duration::from_secs(150),
    );
    eprintln!("delete_records.py {args:?}:\n{out}");
    assert!(ok, "delete_records.py {args:?} failed:\n{out}");
}

fn have_python_clients() -> bool {
    need_tool(
        "the Python packages confluent-kafka and kafka-python",
        &[&python(), "-c", "import confluent_kafka, kafka"],
    )
}

#[test]
fn delete_records_with_python_clients_survives_restarts() {
    if !have_python_clients() {
        return;
    }
    let mut b = Broker::start("kafka-delrec");
    let boot = b.kafka.to_string();
    script(&["check", &boot]);
    // The native request, through the CLI: dr-kp/0 holds offsets 25..30.
    let native = b.bootstrap();
    let (ok, out, err) = levee(
        &native,
        &[
            "topic",
            "delete-records",
            "dr-kp",
            "--partition",
            "0",
            "--before",
            "28",
        ],
        None,
    );
    let out = String::from_utf8_lossy(&out);
    assert!(ok && out.contains("dr-kp/0: log start 28"), "{out}{err}");
    let (ok, _, err) = levee(
        &native,
        &["topic", "delete-records", "dr-kp", "--before", "31"],
        None,
    );
    assert!(!ok && err.contains("offset_out_of_range"), "{err}");
    let (ok, _, err) = levee(
        &native,
        &[
            "topic",
            "delete-records",
            "no-such",
            "--partition",
            "0",
            "--before",
            "end",
        ],
        None,
    );
    assert!(!ok && err.contains("does not exist"), "{err}");
    // max.message.bytes from the CLI (the native CreateTopic and
    // AlterTopic): a batch over it is refused, one under it taken.
    let run = |args: &[&str], stdin: Option<&[u8]>| {
        let (ok, out, err) = levee(&native, args, stdin);
        (ok, format!("{}{err}", String::from_utf8_lossy(&out)))
    };
    let (ok, out) = run(
        &[
            "topic",
            "create",
            "cli-small",
            "--max-message-bytes",
            "1000",
        ],
        None,
    );
    assert!(ok, "{out}");
    let (ok, out) = run(&["topic", "describe", "cli-small"], None);
    assert!(ok && out.contains("max_message_bytes: 1000"), "{out}");
    let big = format!("{}\n", "x".repeat(2000));
    let (ok, out) = run(&["produce", "cli-small"], Some(big.as_bytes()));
    assert!(!ok && out.contains("message_too_large"), "{out}");
    let (ok, out) = run(&["produce", "cli-small"], Some(b"small\n"));
    assert!(ok, "{out}");
    let (ok, out) = run(
        &["topic", "alter", "cli-small", "--max-message-bytes", "5000"],
        None,
    );
    assert!(ok, "{out}");
    let (ok, out) = run(&["produce", "cli-small"], Some(big.as_bytes()));
    assert!(ok, "{out}");
    let (ok, out) = run(
        &["topic", "create", "cli-tiny", "--max-message-bytes", "10"],
        None,
    );
    assert!(!ok && out.contains("invalid_config"), "{out}");
    b.kill();
    b.restart();
    let boot = b.kafka.to_string();
    script(&["earliest", &boot, "dr-kept", "0", "40", "100"]);
    script(&["earliest", &boot, "dr-kept", "1", "50", "50"]);
    b.stop();
    b.restart();
    let boot = b.kafka.to_string();
    script(&["earliest", &boot, "dr-kept", "0", "40", "100"]);
    script(&["earliest", &boot, "dr-kp", "0", "28", "30"]);
}

fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// The node's `levee_partition_log_start_offset` for `topic`/`partition`.
fn log_start_metric(admin: SocketAddr, topic: &str, partition: u32) -> Option<u64> {
    let want =
        format!("levee_partition_log_start_offset{{topic=\"{topic}\",partition=\"{partition}\"}} ");
    http_get(admin, "/metrics")?
        .lines()
        .find_map(|l| l.strip_prefix(&want)?.trim().parse().ok())
}

fn wait_log_start(node: &Broker, topic: &str, partition: u32, want: u64) {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let got = log_start_metric(node.admin, topic, partition);
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < until,
            "node at {}: log start of {topic}/{partition} is {got:?}, not {want}",
            node.admin
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn delete_records_on_a_cluster_reaches_every_replica_and_survives_a_leader_kill() {
    let (mut nodes, _) = common::start_three_nodes(
        "kafka-delrec-cluster",
        "broker_lease_ms = 1500\nheartbeat_interval_ms = 250\nreplica_lag_time_max_ms = 3000\n",
    );
    let native = || {
        nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.bootstrap())
            .collect::<Vec<_>>()
            .join(",")
    };
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out, err) = levee(&native(), &["cluster", "status"], None);
        let s = String::from_utf8_lossy(&out);
        if ok && s.contains("leader: node") && s.matches("live").count() >= 3 {
            break;
        }
        assert!(Instant::now() < until, "cluster did not form: {s}{err}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, out, err) = levee(
        &native(),
        &[
            "topic",
            "create",
            "trim",
            "--partitions",
            "1",
            "--replication-factor",
            "3",
        ],
        None,
    );
    assert!(ok, "{err}{}", String::from_utf8_lossy(&out));
    let boot = nodes
        .iter()
        .map(|n| n.kafka.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut pcfg = producer_config(&boot, "all", "none");
    pcfg.set("retries", "1000000")
        .set("message.timeout.ms", "40000");
    let prod = producer("trim-producer", &pcfg);
    for i in 0..100 {
        let v = format!("t-{i}");
        prod.send(
            BaseRecord::<[u8], [u8]>::to("trim")
                .partition(0)
                .payload(v.as_bytes()),
        )
        .unwrap_or_else(|(e, _)| panic!("send: {e}"));
    }
    flush_all_delivered(&prod, 100);
    drop(prod);

    let admin: AdminClient<DefaultClientContext> =
        base_config(&boot).create().expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("trim", 0, Offset::Offset(60))
        .unwrap();
    let res = rt
        .block_on(admin.delete_records(&tpl, &opts))
        .expect("delete_records");
    let e = res.find_partition("trim", 0).expect("trim/0 in the result");
    assert!(e.error().is_ok(), "delete_records: {:?}", e.error());
    assert_eq!(e.offset(), Offset::Offset(60), "the low watermark");
    // An offset past the high watermark: OFFSET_OUT_OF_RANGE.
    let mut past = TopicPartitionList::new();
    past.add_partition_offset("trim", 0, Offset::Offset(1000))
        .unwrap();
    let res = rt
        .block_on(admin.delete_records(&past, &opts))
        .expect("delete_records");
    let e = res.find_partition("trim", 0).unwrap();
    assert!(
        format!("{:?}", e.error()).contains("OffsetOutOfRange"),
        "{:?}",
        e.error()
    );

    // Every in-sync replica's log start followed (the leader's, carried
    // in the followers' fetches) before DeleteRecords was answered.
    for n in &nodes {
        assert_eq!(
            log_start_metric(n.admin, "trim", 0),
            Some(60),
            "node at {}: DeleteRecords answered before this replica dropped the records",
            n.admin
        );
    }
    let probe = consumer("trim-probe", &reader_config(&boot));
    let (_, parts) = metadata(&probe, Some("trim"));
    let leader = parts[0].leader;
    assert!((1..=3).contains(&leader), "{parts:?}");
    drop(probe);
    drop(admin);

    eprintln!("killing node {leader}, leader of trim/0");
    nodes[leader as usize - 1].kill();
    let live = nodes
        .iter()
        .filter(|n| n.child.is_some())
        .map(|n| n.kafka.to_string())
        .collect::<Vec<_>>()
        .join(",");
    if have_python_clients() {
        script(&["earliest", &live, "trim", "0", "60", "100"]);
    }
    let c = consumer("trim-wm", &reader_config(&live));
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match c.fetch_watermarks("trim", 0, Duration::from_secs(5)) {
            Ok((lo, hi)) if (lo, hi) == (60, 100) => break,
            other => assert!(
                Instant::now() < until,
                "watermarks after the kill: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The killed node comes back with the deleted-to start.
    nodes[leader as usize - 1].restart();
    wait_log_start(&nodes[leader as usize - 1], "trim", 0, 60);
}
