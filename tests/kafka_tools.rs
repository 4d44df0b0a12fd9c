//! Kafka clients and tools other than the rdkafka crate, run against a real
//! `levee serve` by the scripts in `tests/kafka/`:
//!
//! - `confluent_kafka_check.py` (Python confluent-kafka) and
//!   `kafka_python_check.py` (kafka-python), each with the client's default
//!   settings: admin create and list topics, produce with every codec, keys
//!   and headers, consume back, a group commit and a member resuming at it,
//!   create partitions, alter topic configs (IncrementalAlterConfigs and
//!   AlterConfigs; bad values and unknown configs refused with
//!   INVALID_CONFIG) and describe them, list groups;
//!   the same script also runs with kafka-python 2.x;
//! - `kcat.sh`: `kcat -L`, `-P` (to a topic auto-created by the produce)
//!   and `-C`.
//!
//! The tools come from `tests/kafka/setup.sh`; a missing one fails the test
//! with a message naming it, unless `LEVEE_SKIP_KAFKA_CLIENT_TESTS=1`.

mod common;
#[path = "common/kafka.rs"]
mod kafka;

use common::Broker;
use kafka::*;
use std::process::Command;
use std::time::Duration;

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

fn run_script(b: &Broker, program: &str, script: &str) {
    let path = repo_root().join("tests/kafka").join(script);
    let (ok, out) = run_with_timeout(
        Command::new(program).arg(&path).arg(b.kafka.to_string()),
        Duration::from_secs(120),
    );
    eprintln!("{script}:\n{out}");
    assert!(ok, "{script} failed against levee serve:\n{out}");
}

#[test]
fn python_confluent_kafka() {
    let py = python();
    if !need_tool(
        "the Python package confluent-kafka",
        &[&py, "-c", "import confluent_kafka"],
    ) {
        return;
    }
    let b = Broker::start("kafka-confluent-python");
    run_script(&b, &py, "confluent_kafka_check.py");
}

#[test]
fn python_kafka_python() {
    let py = python();
    if !need_tool(
        "the Python package kafka-python (with lz4, python-snappy, zstandard)",
        &[&py, "-c", "import kafka, lz4, snappy, zstandard"],
    ) {
        return;
    }
    let b = Broker::start("kafka-kafka-python");
    run_script(&b, &py, "kafka_python_check.py");
}

/// The same script with kafka-python 2.x (its admin API differs; it asks
/// Metadata for authorized operations), installed by `setup.sh` into its
/// own directory (`LEVEE_KAFKA_PYTHON2_DIR`).
#[test]
fn python_kafka_python_2() {
    let py = python();
    let dir = std::env::var("LEVEE_KAFKA_PYTHON2_DIR")
        .unwrap_or_else(|_| "/opt/levee-test-clients/kafka-python-2.3.3".into());
    let check = format!(
        "import os, sys; sys.path.insert(0, {dir:?}); import kafka, lz4, snappy, zstandard; assert kafka.__version__.startswith('2.')"
    );
    if !need_tool(
        &format!("kafka-python 2.x in {dir} (tests/kafka/setup.sh)"),
        &[&py, "-c", &check],
    ) {
        return;
    }
    let b = Broker::start("kafka-kafka-python-2");
    let path = repo_root().join("tests/kafka/kafka_python_check.py");
    let (ok, out) = run_with_timeout(
        Command::new(&py)
            .arg(&path)
            .arg(b.kafka.to_string())
            .env("PYTHONPATH", &dir),
        Duration::from_secs(120),
    );
    eprintln!("kafka_python_check.py (2.x):\n{out}");
    assert!(ok, "kafka-python 2.x failed against levee serve:\n{out}");
    assert!(out.contains("kafka-python 2."), "{out}");
}

#[test]
fn kcat_lists_produces_and_consumes() {
    if !need_tool("kcat", &["kcat", "-V"]) {
        return;
    }
    let b = Broker::start_with("kafka-kcat", &["--auto-create-topics"]);
    run_script(&b, "bash", "kcat.sh");
}

/// `levee bench --protocol kafka` against Levee's Kafka port: producers
/// send the bench's own batches without `--direct-batches`, and a group of
/// three consumers (JoinGroup, SyncGroup with the range assignor,
/// heartbeats, commits, all over the Kafka API) reads everything back:
/// the run exits 0 with nothing lost, duplicated or corrupt, and the
/// group's committed offsets reach the end of every partition.
#[test]
fn levee_bench_runs_a_kafka_consumer_group() {
    let b = Broker::start("kafka-bench-group");
    let dir = common::temp_dir("kafka-bench-group-out");
    let json = dir.join("bench.json");
    let (ok, out) = run_with_timeout(
        Command::new(common::levee_bin()).args([
            "bench",
            "--protocol",
            "kafka",
            "--bootstrap",
            &b.kafka.to_string(),
            "--admin",
            &b.admin.to_string(),
            "--topic",
            "kbench",
            "--partitions",
            "6",
            "--producers",
            "1",
            "--consumers",
            "3",
            "--group",
            "kbench-group",
            "--commit-interval-ms",
            "100",
            "--rate",
            "5",
            "--duration",
            "3",
            "--warmup",
            "0.5",
            "--json",
            json.to_str().unwrap(),
        ]),
        Duration::from_secs(120),
    );
    eprintln!("{out}");
    assert!(ok, "levee bench --protocol kafka --group failed:\n{out}");
    let report = std::fs::read_to_string(&json).unwrap();
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    let counts = &v["verification"]["counts"];
    assert_eq!(v["verification"]["loss"]["lost"], 0, "{report}");
    assert_eq!(counts["corrupt"], 0, "{report}");
    assert_eq!(counts["duplicates"], 0, "{report}");
    assert!(
        counts["own"].as_u64().unwrap_or(0) > 1000,
        "records read back: {report}"
    );
    assert!(v["group"].is_object(), "a group section: {report}");
    assert_eq!(v["group"]["end_lag_msgs"], 0, "{report}");
}
