#!/usr/bin/env python3
"""confluent-kafka (librdkafka) transactions against a Kafka-compatible
broker: a transactional producer commits one transaction and aborts
another on topic `pytxn` (2 partitions, created by the caller); a
read_committed consumer sees only the committed records, a
read_uncommitted one sees both; a group consumer's offsets committed in a
transaction (send_offsets_to_transaction) become the group's.

Usage: confluent_kafka_txn.py HOST:PORT
Exits non-zero with a message naming what failed.
"""
import sys
import uuid

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition


def fail(msg):
    print(f"FAIL (confluent-kafka transactions): {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def consume(c, n, timeout_s):
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


def reader(boot, isolation):
    c = Consumer({
        "bootstrap.servers": boot,
        "group.id": f"reader-{uuid.uuid4()}",
        "enable.auto.commit": False,
        "isolation.level": isolation,
    })
    c.assign([TopicPartition("pytxn", p, 0) for p in range(2)])
    return c


def main():
    boot = sys.argv[1]
    p = Producer({"bootstrap.servers": boot, "transactional.id": "py-txn"})
    p.init_transactions(30)
    p.begin_transaction()
    for i in range(10):
        p.produce("pytxn", value=f"commit-{i}".encode(), partition=i % 2)
    p.commit_transaction(30)
    p.begin_transaction()
    for i in range(10):
        p.produce("pytxn", value=f"abort-{i}".encode(), partition=i % 2)
    p.flush(30)
    p.abort_transaction(30)

    rc = reader(boot, "read_committed")
    got = sorted(m.value().decode() for m in consume(rc, 10, 20))
    want = sorted(f"commit-{i}" for i in range(10))
    check(got == want, f"read_committed got {got}, want {want}")
    extra = consume(rc, 1, 1)
    check(not extra, f"read_committed delivered {[m.value() for m in extra]}")
    rc.close()
    ru = reader(boot, "read_uncommitted")
    got = consume(ru, 20, 20)
    check(len(got) == 20, f"read_uncommitted got {len(got)} records, want 20")
    ru.close()

    # Offsets in a transaction.
    c = Consumer({
        "bootstrap.servers": boot,
        "group.id": "py-eos",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
    })
    c.subscribe(["pytxn"])
    got = consume(c, 10, 30)
    check(len(got) == 10, f"group member read {len(got)} records, want 10")
    p.begin_transaction()
    p.produce("pytxn", value=b"with-offsets", partition=0)
    pos = c.position(c.assignment())
    p.send_offsets_to_transaction(pos, c.consumer_group_metadata(), 30)
    p.commit_transaction(30)
    committed = c.committed([TopicPartition("pytxn", 0), TopicPartition("pytxn", 1)], 10)
    offs = sorted((tp.partition, tp.offset) for tp in committed)
    want = sorted((tp.partition, tp.offset) for tp in pos)
    check(all(o > 0 for _, o in want), f"positions {want}")
    check(offs == want, f"committed {offs} with the transaction, want {want}")
    c.close()
    print("ok")


if __name__ == "__main__":
    try:
        main()
    except KafkaException as e:
        fail(str(e))
