#!/usr/bin/env python3
"""DeleteRecords and the topic config max.message.bytes, with Kafka's own
Python clients against a Kafka-compatible broker.

Usage:
  delete_records.py check HOST:PORT
      confluent-kafka's AdminClient.delete_records (an offset, -1 for the
      high watermark, an offset past it, an unknown topic) and
      kafka-python's KafkaAdminClient.delete_records; the low watermark
      (ListOffsets earliest) and consumers follow; a fetch below it is out
      of range. A topic created with max.message.bytes=10000 refuses a
      bigger batch with MSG_SIZE_TOO_LARGE and takes a smaller one.
      Leaves topic `dr-kept` (partition 0 deleted up to 40 of 100) for
      `earliest` after a restart.
  delete_records.py earliest HOST:PORT TOPIC PARTITION EXPECTED [HIGH]
      The partition's low watermark is EXPECTED (and the high one HIGH),
      waiting up to 30 s (a leader that just took over), and a consumer
      from the beginning starts there.
Exits non-zero with a message naming what failed.
"""
import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def fail(msg):
    print(f"FAIL (delete_records.py): {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def admin_for(boot):
    return AdminClient({"bootstrap.servers": boot})


def create(admin, topic, partitions, config=None, replication=1):
    fs = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=replication,
                  config=config or {})],
        request_timeout=15)
    fs[topic].result(timeout=20)


def produce(boot, topic, partition, n, size=10):
    p = Producer({"bootstrap.servers": boot, "acks": "all", "linger.ms": 5})
    errors = []
    for i in range(n):
        p.produce(topic, value=(b"%06d" % i).ljust(size, b"x"), partition=partition,
                  on_delivery=lambda e, m: errors.append(e) if e else None)
    left = p.flush(30)
    check(left == 0 and not errors, f"produce to {topic}/{partition}: {left} left, {errors[:3]}")


def watermarks(boot, topic, partition):
    c = Consumer({"bootstrap.servers": boot, "group.id": "dr-wm"})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
    finally:
        c.close()


def first_offset_read(boot, topic, partition):
    """The offset of the first record a consumer from the beginning gets."""
    c = Consumer({"bootstrap.servers": boot, "group.id": "dr-reader",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        c.assign([TopicPartition(topic, partition, -2)])
        until = time.time() + 20
        while time.time() < until:
            m = c.poll(0.2)
            if m is None:
                continue
            check(not m.error(), f"consumer of {topic}/{partition}: {m.error()}")
            return m.offset()
        fail(f"nothing read from {topic}/{partition}")
    finally:
        c.close()


def fetch_below_is_out_of_range(boot, topic, partition, offset):
    """A consumer told to start at `offset` (below the log start) with
    auto.offset.reset=error gets OFFSET_OUT_OF_RANGE (librdkafka reports it
    as _AUTO_OFFSET_RESET)."""
    c = Consumer({"bootstrap.servers": boot, "group.id": "dr-oor",
                  "enable.auto.commit": False, "auto.offset.reset": "error"})
    try:
        c.assign([TopicPartition(topic, partition, offset)])
        until = time.time() + 20
        while time.time() < until:
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error():
                check(m.error().code() in (KafkaError._AUTO_OFFSET_RESET,
                                           KafkaError.OFFSET_OUT_OF_RANGE),
                      f"fetch at {offset} of {topic}/{partition}: {m.error()}")
                check("out of range" in m.error().str().lower()
                      or "offset_out_of_range" in m.error().str().lower(),
                      f"fetch at {offset}: {m.error().str()}")
                return
            fail(f"fetch at {offset} of {topic}/{partition} returned offset {m.offset()}")
        fail(f"fetch at {offset} of {topic}/{partition}: no error within 20 s")
    finally:
        c.close()


def delete(admin, offsets):
    """confluent-kafka's delete_records: {TopicPartition: future}."""
    fs = admin.delete_records([TopicPartition(t, p, o) for (t, p, o) in offsets],
                              request_timeout=15, operation_timeout=15)
    out = {}
    for tp, f in fs.items():
        try:
            r = f.result(timeout=20)
            out[(tp.topic, tp.partition)] = ("ok", r.low_watermark)
        except KafkaException as e:
            out[(tp.topic, tp.partition)] = ("error", e.args[0].code())
    return out


def check_all(boot):
    admin = admin_for(boot)
    create(admin, "dr-kept", 2)
    produce(boot, "dr-kept", 0, 100)
    produce(boot, "dr-kept", 1, 50)

    # An offset, and -1 (the high watermark).
    got = delete(admin, [("dr-kept", 0, 40), ("dr-kept", 1, -1)])
    check(got[("dr-kept", 0)] == ("ok", 40), f"delete p0 before 40: {got}")
    check(got[("dr-kept", 1)] == ("ok", 50), f"delete p1 before the high watermark: {got}")
    check(watermarks(boot, "dr-kept", 0) == (40, 100),
          f"p0 watermarks {watermarks(boot, 'dr-kept', 0)}")
    check(watermarks(boot, "dr-kept", 1) == (50, 50),
          f"p1 watermarks {watermarks(boot, 'dr-kept', 1)}")
    check(first_offset_read(boot, "dr-kept", 0) == 40, "a consumer from the beginning starts at 40")
    fetch_below_is_out_of_range(boot, "dr-kept", 0, 10)
    # Lower than the log start: nothing changes, the low watermark is kept.
    got = delete(admin, [("dr-kept", 0, 20)])
    check(got[("dr-kept", 0)] == ("ok", 40), f"delete before 20 after 40: {got}")

    # Past the high watermark, an unknown topic, an unknown partition.
    got = delete(admin, [("dr-kept", 0, 101)])
    check(got[("dr-kept", 0)] == ("error", KafkaError.OFFSET_OUT_OF_RANGE),
          f"delete past the high watermark: {got}")
    # (librdkafka finds no leader for these and does not ask: _NOENT; the
    # broker's answer is checked with kafka-python below.)
    got = delete(admin, [("dr-no-such-topic", 0, 1)])
    check(got[("dr-no-such-topic", 0)][0] == "error", f"unknown topic: {got}")
    got = delete(admin, [("dr-kept", 7, 1)])
    check(got[("dr-kept", 7)][0] == "error", f"unknown partition: {got}")
    check(watermarks(boot, "dr-kept", 0) == (40, 100), "refused deletes change nothing")

    # kafka-python's admin client.
    from kafka import KafkaAdminClient
    from kafka.structs import TopicPartition as KTP
    create(admin, "dr-kp", 1)
    produce(boot, "dr-kp", 0, 30)
    ka = KafkaAdminClient(bootstrap_servers=boot)
    try:
        res = ka.delete_records({KTP("dr-kp", 0): 25})
        low = res[KTP("dr-kp", 0)]["low_watermark"]
        check(low == 25, f"kafka-python delete_records: {res}")
        # Sent to the broker as is (no metadata lookup): its own answers.
        node = ka.describe_cluster()["brokers"][0]["broker_id"]
        for tp, want in [(KTP("dr-no-such-topic", 0), 3), (KTP("dr-kp", 5), 3),
                         (KTP("dr-kp", 0), 1)]:
            offset = 31 if tp.partition == 0 else 1
            try:
                res = ka.delete_records({tp: offset}, partition_leader_id=node)
                fail(f"kafka-python delete_records {tp} before {offset} answered {res}")
            except Exception as e:  # kafka.errors.BrokerResponseError subclasses
                check(getattr(e, "errno", None) == want,
                      f"kafka-python delete_records {tp} before {offset}: {e!r}, expected error {want}")
    finally:
        ka.close()
    check(watermarks(boot, "dr-kp", 0) == (25, 30), "kafka-python's delete moved the low watermark")

    # max.message.bytes on CreateTopics, DescribeConfigs, and on produce.
    create(admin, "dr-small", 1, {"max.message.bytes": "10000"})
    from confluent_kafka.admin import ConfigResource, ResourceType
    res = ConfigResource(ResourceType.TOPIC, "dr-small")
    described = admin.describe_configs([res], request_timeout=10)[res].result(timeout=15)
    check(described["max.message.bytes"].value == "10000",
          f"describe max.message.bytes: {described['max.message.bytes']}")
    p = Producer({"bootstrap.servers": boot, "acks": "all", "compression.type": "none",
                  "retries": 0})
    results = []
    p.produce("dr-small", value=b"y" * 20000, partition=0,
              on_delivery=lambda e, m: results.append(e))
    p.flush(30)
    check(len(results) == 1 and results[0] is not None
          and results[0].code() == KafkaError.MSG_SIZE_TOO_LARGE,
          f"a 20,000-byte batch to a topic of max.message.bytes=10000: {results}")
    results.clear()
    p.produce("dr-small", value=b"y" * 5000, partition=0,
              on_delivery=lambda e, m: results.append(e))
    p.flush(30)
    check(results == [None], f"a 5,000-byte batch: {results}")
    # Raised with IncrementalAlterConfigs: the 20,000-byte batch goes in;
    # back to the broker default (DELETE) as well.
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry
    for op, value in [(AlterConfigOpType.SET, "30000"), (AlterConfigOpType.DELETE, None)]:
        r = ConfigResource(ResourceType.TOPIC, "dr-small", incremental_configs=[
            ConfigEntry("max.message.bytes", value, incremental_operation=op)])
        admin.incremental_alter_configs([r], request_timeout=10)[r].result(timeout=15)
        results.clear()
        p.produce("dr-small", value=b"z" * 20000, partition=0,
                  on_delivery=lambda e, m: results.append(e))
        p.flush(30)
        check(results == [None], f"a 20,000-byte batch after max.message.bytes {op} {value}: {results}")
    # A value below a batch header is refused per topic, with a message.
    fs = admin.create_topics([NewTopic("dr-tiny", 1, 1, config={"max.message.bytes": "10"})],
                             request_timeout=15)
    try:
        fs["dr-tiny"].result(timeout=20)
        fail("max.message.bytes=10 was accepted")
    except KafkaException as e:
        check(e.args[0].code() == KafkaError.INVALID_CONFIG, f"max.message.bytes=10: {e}")
    print("delete_records.py check: ok")


def earliest(boot, topic, partition, expected, high=None):
    until = time.time() + 30
    while True:
        try:
            lo, hi = watermarks(boot, topic, partition)
        except KafkaException as e:
            lo, hi = None, str(e)
        if lo == expected and (high is None or hi == high):
            break
        if time.time() > until:
            fail(f"{topic}/{partition} watermarks ({lo}, {hi}), expected ({expected}, {high})")
        time.sleep(0.3)
    if hi != lo:
        first = first_offset_read(boot, topic, partition)
        check(first == expected,
              f"{topic}/{partition}: a consumer from the beginning read {first} first")
    print(f"delete_records.py earliest {topic}/{partition}: {lo} ok")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "check":
        check_all(sys.argv[2])
    elif len(sys.argv) >= 6 and sys.argv[1] == "earliest":
        earliest(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]),
                 int(sys.argv[6]) if len(sys.argv) > 6 else None)
    else:
        fail(__doc__)
