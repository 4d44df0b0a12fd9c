#!/usr/bin/env python3
"""confluent-kafka (librdkafka) against a Kafka-compatible broker, with the
client's default settings: admin create and list topics, produce with every
codec, keys, a null key and headers, consume everything back, a consumer
group that commits and a second member that resumes at the commit, topic
ids, create partitions, alter and describe topic configs, list, describe
and delete the groups, describe the cluster and the broker's configs.

Usage: confluent_kafka_check.py HOST:PORT
Exits non-zero with a message naming what failed.
"""
import sys
import time
import uuid
import warnings

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (AdminClient, ConfigResource, NewPartitions, NewTopic,
                                   ResourceType)


def fail(msg):
    print(f"FAIL (confluent-kafka): {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def consume(c, n, timeout_s):
    """Polls until n messages arrived or timeout_s passed."""
    out = []
    for _ in range(int(timeout_s * 10)):
        if len(out) >= n:
            break
        m = c.poll(0.1)
        if m is None:
            continue
        if m.error():
            fail(f"consumer error: {m.error()}")
        out.append(m)
    return out


def alter_and_describe_configs(admin, topic, run):
    """IncrementalAlterConfigs (SET, DELETE) and AlterConfigs (replaces) of
    topic configs, seen by DescribeConfigs; validate_only changes nothing;
    bad values, unknown configs, unknown topics and broker resources are
    refused with their error codes."""
    from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource,
                                       ResourceType)

    def described(name):
        res = ConfigResource(ResourceType.TOPIC, name)
        got = admin.describe_configs([res], request_timeout=10)[res].result(timeout=15)
        return {k: v.value for k, v in got.items()}, got

    def incremental(name, entries, validate_only=False, restype=ResourceType.TOPIC):
        ops = {"SET": AlterConfigOpType.SET, "DELETE": AlterConfigOpType.DELETE,
               "APPEND": AlterConfigOpType.APPEND}
        res = ConfigResource(restype, name, incremental_configs=[
            ConfigEntry(k, v, incremental_operation=ops[op]) for k, op, v in entries])
        return admin.incremental_alter_configs([res], request_timeout=10,
                                               validate_only=validate_only)[res].result(timeout=15)

    def refused(what, f, code):
        try:
            f()
        except KafkaException as e:
            check(e.args[0].name() == code, f"{what}: refused with {e.args[0].name()}, expected {code}")
            return
        fail(f"{what} was accepted")

    default_ms = described(topic)[0]["retention.ms"]
    incremental(topic, [("retention.bytes", "SET", "10485760"),
                        ("retention.ms", "SET", "3600000"),
                        ("levee.fsync", "SET", "interval:50")])
    cfg, entries = described(topic)
    check((cfg["retention.bytes"], cfg["retention.ms"], cfg["levee.fsync"]) ==
          ("10485760", "3600000", "interval:50"), f"after incremental_alter_configs: {cfg}")
    check(not entries["retention.bytes"].is_read_only, "retention.bytes is described read-only")
    check(entries["retention.bytes"].source == 1, "retention.bytes: source is not the topic's")
    # DELETE puts a config back to the broker default; validate_only changes nothing.
    incremental(topic, [("retention.ms", "DELETE", None)])
    incremental(topic, [("retention.bytes", "SET", "1")], validate_only=True)
    cfg, _ = described(topic)
    check((cfg["retention.ms"], cfg["retention.bytes"]) == (default_ms, "10485760"),
          f"after DELETE and a validate_only SET: {cfg}")
    # AlterConfigs replaces the whole set: what it does not name is reset.
    res = ConfigResource(ResourceType.TOPIC, topic, set_config={"segment.bytes": "1048576"})
    admin.alter_configs([res], request_timeout=10)[res].result(timeout=15)
    cfg, _ = described(topic)
    check(cfg["segment.bytes"] == "1048576", f"after alter_configs: {cfg}")
    check(cfg["retention.bytes"] == "-1" and cfg["levee.fsync"] != "interval:50",
          f"alter_configs did not reset the configs it does not name: {cfg}")
    # Refusals, each naming its error.
    refused("a non-integer retention.ms",
            lambda: incremental(topic, [("retention.ms", "SET", "soon")]), "INVALID_CONFIG")
    refused("segment.bytes of 100",
            lambda: incremental(topic, [("segment.bytes", "SET", "100")]), "INVALID_CONFIG")
    refused("an unknown config",
            lambda: incremental(topic, [("min.insync.replicas", "SET", "2")]), "INVALID_CONFIG")
    refused("APPEND to a single-valued config",
            lambda: incremental(topic, [("retention.ms", "APPEND", "1")]), "INVALID_CONFIG")
    bad = ConfigResource(ResourceType.TOPIC, topic, set_config={"cleanup.policy": "compact"})
    refused("alter_configs cleanup.policy=compact",
            lambda: admin.alter_configs([bad], request_timeout=10)[bad].result(timeout=15),
            "INVALID_CONFIG")
    refused("an unknown topic",
            lambda: incremental(f"missing-{run}", [("retention.ms", "SET", "1000")]),
            "UNKNOWN_TOPIC_OR_PART")
    refused("a broker config",
            lambda: incremental("0", [("log.retention.ms", "SET", "1000")],
                                restype=ResourceType.BROKER), "INVALID_REQUEST")
    cfg, _ = described(topic)
    check(cfg["segment.bytes"] == "1048576" and cfg["retention.ms"] == default_ms,
          f"a refused change changed something: {cfg}")


def main():
    # alter_configs is deprecated in favour of incremental_alter_configs,
    # but clients still send it: it is checked on purpose.
    warnings.filterwarnings("ignore", category=DeprecationWarning, message="alter_configs")
    boot = sys.argv[1]
    run = uuid.uuid4().hex[:8]
    topic = f"ck-{run}"
    group = f"ck-group-{run}"
    base = {"bootstrap.servers": boot}

    admin = AdminClient(base)
    for t, f in admin.create_topics(
        [NewTopic(topic, num_partitions=3, replication_factor=1)], operation_timeout=10
    ).items():
        try:
            f.result(timeout=15)
        except Exception as e:  # noqa: BLE001
            fail(f"create_topics {t}: {e}")
    md = admin.list_topics(timeout=10)
    check(topic in md.topics, f"list_topics does not show {topic}: {list(md.topics)}")
    check(len(md.topics[topic].partitions) == 3, "list_topics: partitions of the new topic")
    check(len(md.brokers) == 1, f"list_topics: brokers {md.brokers}")

    sent = {}
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"]:
        p = Producer({**base, "compression.type": codec, "linger.ms": 5})
        errors = []

        def report(err, msg, errors=errors):
            if err is not None:
                errors.append(err)

        for i in range(10):
            key = None if i == 0 else f"{codec}-key-{i}".encode()
            value = (f"{codec} value {i} " * 20).encode()
            headers = [("codec", codec.encode()), ("index", str(i).encode())]
            ts = 1_700_000_000_000 + len(sent)
            p.produce(topic, value=value, key=key, headers=headers, partition=i % 3,
                      timestamp=ts, on_delivery=report)
            sent[value] = (key, headers, ts, i % 3)
        left = p.flush(15)
        check(left == 0, f"{codec}: {left} messages not delivered after 15 s")
        check(not errors, f"{codec}: delivery errors {errors[:3]}")

    c = Consumer({**base, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    c.subscribe([topic])
    got = consume(c, len(sent), 30)
    check(len(got) == len(sent), f"consumed {len(got)} of {len(sent)} messages")
    for m in got:
        want = sent.get(m.value())
        check(want is not None, f"unexpected value {m.value()[:40]!r}")
        key, headers, ts, part = want
        check(m.key() == key, f"key {m.key()!r}, expected {key!r}")
        check(m.headers() == headers, f"headers {m.headers()}, expected {headers}")
        check(m.timestamp()[1] == ts, f"timestamp {m.timestamp()}, expected {ts}")
        check(m.partition() == part, f"partition {m.partition()}, expected {part}")
    c.commit(asynchronous=False)
    committed = c.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)
    check([tp.offset for tp in committed] == [20, 15, 15],
          f"committed offsets {[(tp.partition, tp.offset) for tp in committed]}")
    c.close()

    # A new member of the group starts at the committed offsets.
    p = Producer(base)
    p.produce(topic, value=b"after the commit", partition=1)
    check(p.flush(15) == 0, "produce after the commit")
    c = Consumer({**base, "group.id": group, "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    got = consume(c, 1, 30)
    check([m.value() for m in got] == [b"after the commit"],
          f"the resumed member read {[m.value()[:40] for m in got]}")
    check(got[0].offset() == 15, f"resumed at offset {got[0].offset()}")
    extra = consume(c, 1, 1)
    check(not extra, "the resumed member read more than the new message")

    # Topic ids (Metadata v10+): a topic has one, and a topic deleted and
    # created again under the same name gets another.
    def topic_id(name):
        from confluent_kafka import TopicCollection
        d = admin.describe_topics(TopicCollection([name]), request_timeout=10)[name].result(timeout=15)
        return str(d.topic_id)

    def recreate(name):
        for _, f in admin.delete_topics([name], operation_timeout=10).items():
            f.result(timeout=15)
        for _ in range(50):
            fs = admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)],
                                     operation_timeout=10)
            try:
                fs[name].result(timeout=15)
                return
            except KafkaException:
                time.sleep(0.1)
        fail(f"could not create {name} again")

    again = f"ck-ids-{run}"
    for _, f in admin.create_topics([NewTopic(again, num_partitions=1, replication_factor=1)],
                                    operation_timeout=10).items():
        f.result(timeout=15)
    first_id = topic_id(again)
    check(first_id not in ("", "AAAAAAAAAAAAAAAAAAAAAA", "None"), f"topic id {first_id!r}")
    recreate(again)
    second_id = topic_id(again)
    check(second_id != first_id, f"the recreated topic kept its id {first_id}")

    # CreatePartitions: grow to 5; refusals of a shrink and an unknown topic.
    grown = admin.create_partitions([NewPartitions(topic, 5)], operation_timeout=10)
    try:
        grown[topic].result(timeout=15)
    except Exception as e:  # noqa: BLE001
        fail(f"create_partitions {topic} to 5: {e}")
    md = admin.list_topics(topic=topic, timeout=10)
    check(len(md.topics[topic].partitions) == 5,
          f"after create_partitions: {len(md.topics[topic].partitions)} partitions")
    for bad, why in [(NewPartitions(topic, 4), "INVALID_PARTITIONS"),
                     (NewPartitions(f"missing-{run}", 2), "UNKNOWN_TOPIC_OR_PART")]:
        try:
            admin.create_partitions([bad], operation_timeout=10)[bad.topic].result(timeout=15)
            fail(f"create_partitions {bad.topic} to {bad.new_total_count} was accepted")
        except KafkaException as e:
            check(why in e.args[0].name(), f"create_partitions refusal: {e.args[0].name()}, expected {why}")
    p = Producer(base)
    p.produce(topic, value=b"to a new partition", partition=4)
    check(p.flush(15) == 0, "produce to partition 4 after create_partitions")

    alter_and_describe_configs(admin, topic, run)

    groups = admin.list_consumer_groups(request_timeout=10).result()
    names = [g.group_id for g in groups.valid]
    check(group in names, f"list_consumer_groups does not show {group}: {names}")

    # DescribeGroups: the member and its partitions.
    d = admin.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
    check(d.group_id == group and len(d.members) == 1,
          f"describe_consumer_groups: {len(d.members)} members, {d}")
    assigned = d.members[0].assignment.topic_partitions if d.members[0].assignment else []
    check(any(tp.topic == topic for tp in assigned),
          f"describe_consumer_groups assignment: {assigned}")
    # DescribeCluster, and the broker's configs (DescribeConfigs, BROKER).
    cl = admin.describe_cluster(request_timeout=10).result(timeout=15)
    check(len(cl.nodes) == 1 and cl.controller is not None and cl.cluster_id,
          f"describe_cluster: {cl.cluster_id} controller {cl.controller} nodes {cl.nodes}")
    broker = ConfigResource(ResourceType.BROKER, str(cl.nodes[0].id))
    bc = admin.describe_configs([broker], request_timeout=10)[broker].result(timeout=15)
    check(len(bc) > 0, "describe_configs of the broker returned nothing")
    c.close()
    # DeleteGroups: the group (empty once its member left) and its offsets.
    admin.delete_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
    groups = admin.list_consumer_groups(request_timeout=10).result()
    names = [g.group_id for g in groups.valid]
    check(group not in names, f"{group} still listed after delete_consumer_groups: {names}")
    print(f"confluent-kafka {__import__('confluent_kafka').version()[0]}: OK")


if __name__ == "__main__":
    main()
