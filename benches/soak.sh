#!/usr/bin/env bash
# Soak: one broker under 70% of its measured maximum produce rate, with a
# consumer in step, for an hour (issue 19). Every minute it records the
# broker's resident memory, its open files and the producer's ack p99 (of
# that minute), and at the end prints the table and the drift of each as a
# ratio of the last minute to the first. Not part of CI.
#
#   benches/soak.sh                      one hour (about 62 minutes in all)
#   MINUTES=10 benches/soak.sh           a shorter run
#   OUT=/some/dir benches/soak.sh        where the figures go (default target/soak)
#   RETENTION_MIB=2048 benches/soak.sh   kept per partition (4 partitions)
#
# It builds the release binary (or takes $LEVEE_BIN), starts a fresh broker
# on a new data directory under $OUT (deleted at the end: only that
# directory, which this script creates), measures the maximum with a 10 s
# unlimited run (2 producers, 1 KiB messages, acks=1, --direct-batches, one
# verifying consumer), then runs the soak at 70% of it.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-60}
OUT=${OUT:-target/soak}
PARTITIONS=${PARTITIONS:-4}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [ -z "${LEVEE_BIN:-}" ]; then
  cargo build -q --release -p levee-cli --bin levee
  LEVEE_BIN=$PWD/target/release/levee
fi
data=$(mktemp -d "$OUT/data.XXXXXX")
port=${PORT:-29392}
admin=${ADMIN_PORT:-29394}
cleanup() {
  [ -n "${broker:-}" ] && kill "$broker" 2>/dev/null && wait "$broker" 2>/dev/null
  rm -rf -- "$data"
}
trap cleanup EXIT
# Retention keeps the disk from filling: an hour at hundreds of MB/s is more
# than any development disk holds. Each partition keeps about
# RETENTION_MIB (default 2048) in 256 MiB segments, checked every 5 s, so
# the soak also runs retention as a peak-shaving broker does.
cat >"$OUT/soak.toml" <<EOF
[log]
segment_bytes = 268435456
retention_bytes = $((${RETENTION_MIB:-2048} * 1024 * 1024))
retention_check_interval_ms = 5000
EOF
"$LEVEE_BIN" serve --config "$OUT/soak.toml" --data-dir "$data" --listen "127.0.0.1:$port" --kafka-listen none \
  --admin-listen "127.0.0.1:$admin" >"$OUT/broker.log" 2>&1 &
broker=$!
sleep 2
bench() {
  "$LEVEE_BIN" bench --bootstrap "127.0.0.1:$port" --admin "127.0.0.1:$admin" \
    --topic soak --partitions "$PARTITIONS" --producers 2 --consumers 1 \
    --message-size 1024 --acks 1 --direct-batches "$@"
}
echo "== measuring the maximum (10 s)"
bench --duration 10 --warmup 2 --json "$OUT/max.json" >"$OUT/max.txt" 2>&1
max=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['produce']['mb_s'])" "$OUT/max.json")
rate=$(python3 -c "print(round($max * 0.7, 1))")
echo "maximum $max MB/s; soaking at $rate MB/s for $MINUTES min"
bench --duration $((MINUTES * 60)) --warmup 0 --rate "$rate" --json "$OUT/soak.json" \
  >"$OUT/soak.txt" 2>&1 &
load=$!
echo "minute,rss_kib,open_files,ack_p99_ms,data_mib" >"$OUT/minutes.csv"
for m in $(seq 1 "$MINUTES"); do
  sleep 60
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$broker/status")
  fds=$(ls "/proc/$broker/fd" | wc -l)
  # The progress line of the last second: "... | ack p99  1.234 ms | ...".
  p99=$(grep -a 'ack p99' "$OUT/soak.txt" | tail -1 | sed -E 's/.*ack p99 +([0-9.]+) ms.*/\1/')
  disk=$(du -sm "$data" | cut -f1)
  echo "$m,$rss,$fds,$p99,$disk" | tee -a "$OUT/minutes.csv"
done
wait "$load" || true
python3 - "$OUT/minutes.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
first, last = rows[0], rows[-1]
def ratio(k):
    a, b = float(first[k]), float(last[k])
    return b / a if a else float("nan")
print(f"minutes: {len(rows)}")
for k in ("rss_kib", "open_files", "ack_p99_ms", "data_mib"):
    print(f"{k}: first {first[k]}, last {last[k]}, max {max(float(r[k]) for r in rows)}, last/first {ratio(k):.2f}")
PY
grep -a -E "^(produce|consume|ack latency|verification|result)" "$OUT/soak.txt" || true
