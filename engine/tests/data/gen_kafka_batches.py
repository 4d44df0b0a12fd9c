"""Golden record batches built by a real Kafka client library (kafka-python's
DefaultRecordBatchBuilder), for Levee's byte-for-byte format tests.

    pip install kafka-python==3.0.12 python-snappy lz4 zstandard
    python3 gen_kafka_batches.py > kafka_batches.txt

Each line: codec name, then the batch as hex. The records are fixed (see
RECORDS) so the Rust tests can rebuild them; the uncompressed batch must
equal Levee's encoding byte for byte, the compressed ones must decode to
the same records.
"""
from kafka.record.default_records import DefaultRecordBatchBuilder

BASE_TS = 1_700_000_000_000
# (timestamp delta, key, value, headers)
RECORDS = [
    (0, b"k0", b"value zero", []),
    (1, None, b"value one", [("h1", b"x"), ("h2", None)]),
    (5, b"k2", None, []),
    (7, b"", b"", [("", b"")]),
    (9, b"k4", b"v" * 300, []),
]
CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}

for name, codec in CODECS.items():
    b = DefaultRecordBatchBuilder(
        magic=2, compression_type=codec, is_transactional=False,
        producer_id=-1, producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    for i, (dt, k, v, h) in enumerate(RECORDS):
        b.append(i, BASE_TS + dt, k, v, h)
    print(name, bytes(b.build()).hex())
