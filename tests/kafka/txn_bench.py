#!/usr/bin/env python3
"""Transactions per second and commit latency with confluent-kafka
(librdkafka): one transactional producer commits N transactions of 100
records of 100 bytes over the 3 partitions of TOPIC, one after the other.

Usage: txn_bench.py HOST:PORT TOPIC N
Prints one line: transactions/s and the commit latency's p50 and p99
(commit_transaction: the records' delivery, then EndTxn).
"""
import sys
import time
import uuid

from confluent_kafka import Producer


def main():
    boot, topic, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    p = Producer({
        "bootstrap.servers": boot,
        "transactional.id": f"bench-{uuid.uuid4()}",
        "linger.ms": 5,
    })
    p.init_transactions(30)

    def one(lat):
        p.begin_transaction()
        for j in range(100):
            p.produce(topic, value=b"x" * 100, partition=j % 3)
        t = time.perf_counter()
        p.commit_transaction(30)
        if lat is not None:
            lat.append((time.perf_counter() - t) * 1000)

    for _ in range(20):
        one(None)
    lat = []
    start = time.perf_counter()
    for _ in range(n):
        one(lat)
    secs = time.perf_counter() - start
    lat.sort()
    pct = lambda q: lat[min(int(len(lat) * q), len(lat) - 1)]
    print(f"{topic}: {n} transactions of 100 records x 3 partitions: "
          f"{n / secs:.1f} committed/s; commit latency p50 {pct(0.5):.2f} ms, "
          f"p99 {pct(0.99):.2f} ms")


if __name__ == "__main__":
    main()
