#!/usr/bin/env python3
"""kafka-python against a Kafka-compatible broker, with the client's default
settings (its producer is idempotent by default): admin create and list
topics, produce with every codec, keys, a null key and headers, consume
everything back, a consumer group that commits and a second member that
resumes at the commit, create partitions, alter and describe topic
configs, list the groups.

Usage: kafka_python_check.py HOST:PORT
Exits non-zero with a message naming what failed.
"""
import sys
import uuid

import kafka
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic


def fail(msg):
    print(f"FAIL (kafka-python): {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def consume(c, n, timeout_s):
    out = []
    for _ in range(int(timeout_s * 4)):
        if len(out) >= n:
            break
        for records in c.poll(timeout_ms=250).values():
            out.extend(records)
    return out


def main():
    boot = sys.argv[1]
    run = uuid.uuid4().hex[:8]
    topic = f"kp-{run}"
    group = f"kp-group-{run}"

    admin = KafkaAdminClient(bootstrap_servers=boot, client_id="kafka-python-check")
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    topics = admin.list_topics()
    check(topic in topics, f"list_topics does not show {topic}: {topics}")

    sent = {}
    for codec in [None, "gzip", "snappy", "lz4", "zstd"]:
        p = KafkaProducer(bootstrap_servers=boot, compression_type=codec, linger_ms=5)
        futures = []
        for i in range(10):
            key = None if i == 0 else f"{codec}-key-{i}".encode()
            value = (f"{codec} value {i} " * 20).encode()
            headers = [("codec", str(codec).encode()), ("index", str(i).encode())]
            ts = 1_700_000_000_000 + len(sent)
            futures.append(p.send(topic, value=value, key=key, headers=headers,
                                  partition=i % 3, timestamp_ms=ts))
            sent[value] = (key, headers, ts, i % 3)
        for f in futures:
            try:
                f.get(timeout=15)
            except Exception as e:  # noqa: BLE001
                fail(f"produce with codec {codec}: {e!r}")
        p.close()

    c = KafkaConsumer(topic, bootstrap_servers=boot, group_id=group,
                      auto_offset_reset="earliest", enable_auto_commit=False)
    got = consume(c, len(sent), 30)
    check(len(got) == len(sent), f"consumed {len(got)} of {len(sent)} messages")
    for m in got:
        want = sent.get(m.value)
        check(want is not None, f"unexpected value {m.value[:40]!r}")
        key, headers, ts, part = want
        check(m.key == key, f"key {m.key!r}, expected {key!r}")
        check(list(m.headers) == headers, f"headers {m.headers}, expected {headers}")
        check(m.timestamp == ts, f"timestamp {m.timestamp}, expected {ts}")
        check(m.partition == part, f"partition {m.partition}, expected {part}")
    c.commit()
    committed = [c.committed(TopicPartition(topic, p)) for p in range(3)]
    check(committed == [20, 15, 15], f"committed offsets {committed}")
    c.close()

    p = KafkaProducer(bootstrap_servers=boot)
    p.send(topic, value=b"after the commit", partition=1).get(timeout=15)
    p.close()
    c = KafkaConsumer(topic, bootstrap_servers=boot, group_id=group,
                      auto_offset_reset="earliest", enable_auto_commit=False)
    got = consume(c, 1, 30)
    check([m.value for m in got] == [b"after the commit"],
          f"the resumed member read {[m.value[:40] for m in got]}")
    check(got[0].offset == 15, f"resumed at offset {got[0].offset}")
    check(not consume(c, 1, 1), "the resumed member read more than the new message")

    if int(kafka.__version__.split(".")[0]) < 3:
        admin_2x(admin, topic, group)
        c.close()
        admin.close()
        print(f"kafka-python {kafka.__version__}: OK")
        return

    # CreatePartitions: validate only (nothing changes), then grow to 5 with
    # a manual assignment; a shrink is refused with INVALID_PARTITIONS.
    admin.create_partitions({topic: 4}, validate_only=True)
    check(len(admin.describe_topics([topic])[0]["partitions"]) == 3,
          "validate_only create_partitions changed the topic")
    admin.create_partitions({topic: {"count": 5, "assignments": [[0], [0]]}})
    parts = admin.describe_topics([topic])[0]["partitions"]
    check(len(parts) == 5, f"after create_partitions: {len(parts)} partitions")
    r = admin.create_partitions({topic: 2}, raise_errors=False)
    check(r.results[0].error_code == 37,
          f"shrinking: error {r.results[0].error_code}, expected 37 (INVALID_PARTITIONS)")
    r = admin.create_partitions({topic: {"count": 6, "assignments": [[7]]}}, raise_errors=False)
    check(r.results[0].error_code == 39,
          f"unknown broker: error {r.results[0].error_code}, expected 39 (INVALID_REPLICA_ASSIGNMENT)")
    p = KafkaProducer(bootstrap_servers=boot)
    md = p.send(topic, value=b"to a new partition", partition=4).get(timeout=15)
    check(md.partition == 4, f"sent to partition {md.partition}")
    p.close()

    # CreateTopics with a manual assignment, and with both an assignment and
    # a partition count (INVALID_REQUEST, 42).
    placed = f"kp-placed-{run}"
    admin.create_topics([NewTopic(placed, num_partitions=-1, replication_factor=-1,
                                  replica_assignments={0: [0], 1: [0]})])
    parts = admin.describe_topics([placed])[0]["partitions"]
    check(len(parts) == 2, f"placed topic: {len(parts)} partitions")
    r = admin.create_topics([NewTopic(f"kp-both-{run}", num_partitions=2, replication_factor=1,
                                      replica_assignments={0: [0], 1: [0]})], raise_errors=False)
    codes = [t["error_code"] for t in r["topics"]]
    check(codes == [42], f"assignment and count together: errors {codes}, expected [42]")

    # Topic configs: alter_configs (IncrementalAlterConfigs by default, and
    # AlterConfigs), seen by describe_configs; a bad value and an unknown
    # config are refused with INVALID_CONFIG (40).
    from kafka.admin import ConfigResource, ConfigResourceType

    def configs(name):
        d = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)],
                                   config_filter="all")
        return {k: v["value"] for k, v in d["topic"][name].items()}

    def alter(cfg, **kw):
        return admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs=cfg)],
                                   **kw)["topic"][topic]

    default_ms = configs(topic)["retention.ms"]
    r = alter({"retention.bytes": "20971520", "retention.ms": "7200000"})
    check(r == "OK", f"alter_configs: {r}")
    cfg = configs(topic)
    check((cfg["retention.bytes"], cfg["retention.ms"]) == ("20971520", "7200000"),
          f"after alter_configs: {cfg}")
    r = alter({"retention.ms": ("DELETE", None)})
    check(r == "OK" and configs(topic)["retention.ms"] == default_ms,
          f"DELETE of retention.ms: {r}, {configs(topic)['retention.ms']}")
    # AlterConfigs (the client adds the topic's other modified configs).
    r = alter({"segment.bytes": "2097152"}, incremental=False)
    cfg = configs(topic)
    check(r == "OK" and (cfg["segment.bytes"], cfg["retention.bytes"]) == ("2097152", "20971520"),
          f"non-incremental alter_configs: {r}, {cfg}")
    r = alter({"retention.ms": "soon"})
    check("Error 40" in r or "InvalidConfig" in r, f"a bad retention.ms: {r}")
    r = alter({"min.insync.replicas": "2"}, raise_on_unknown=False)
    check("Error 40" in r or "InvalidConfig" in r, f"an unknown config: {r}")
    check(configs(topic)["segment.bytes"] == "2097152", "a refused change changed something")

    groups = [g["group_id"] for g in admin.list_groups()]
    check(group in groups, f"list_consumer_groups does not show {group}: {groups}")
    c.close()
    admin.close()
    print(f"kafka-python {kafka.__version__}: OK")


def admin_2x(admin, topic, group):
    """The admin calls of kafka-python 2.x, whose API differs from 3.x:
    describe the topic (Metadata with authorized operations), grow it with
    NewPartitions (validate only first), read its configs, list groups."""
    from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions

    d = admin.describe_topics([topic])[0]
    check(len(d["partitions"]) == 3, f"describe_topics: {d}")
    check("READ" in d.get("authorized_operations", []),
          f"authorized operations of the topic: {d.get('authorized_operations')}")
    admin.create_partitions({topic: NewPartitions(4)}, validate_only=True)
    check(len(admin.describe_topics([topic])[0]["partitions"]) == 3,
          "validate_only create_partitions changed the topic")
    admin.create_partitions({topic: NewPartitions(5)})
    check(len(admin.describe_topics([topic])[0]["partitions"]) == 5,
          "create_partitions did not grow the topic to 5")
    cluster = admin.describe_cluster()
    check(cluster.get("cluster_id"), f"describe_cluster: {cluster}")
    r = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    names = [e[0] for res in r for t in res.resources for e in t[4]]
    check("retention.ms" in names, f"describe_configs: {names}")
    groups = [g[0] for g in admin.list_consumer_groups()]
    check(group in groups, f"list_consumer_groups does not show {group}: {groups}")
    desc = admin.describe_consumer_groups([group])[0]
    check(desc.group == group, f"describe_consumer_groups: {desc}")


if __name__ == "__main__":
    main()
