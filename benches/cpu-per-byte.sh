#!/usr/bin/env bash
# CPU per byte of the broker (issue 20): runs a workload against a fresh
# `levee serve --cores 2` RUNS times per binary (interleaved), measures the
# broker process's CPU time with `perf stat -e task-clock` over a window
# after the warmup, divides it by the record-batch bytes the broker counted
# in that window (levee_partition_bytes_in_total / _bytes_out_total), and
# prints "cycles" per byte at GHZ (task-clock x GHZ: the development VM has
# no PMU, so perf cannot count real cycles there) with the median per binary.
#   benches/cpu-per-byte.sh a target/release/levee [OTHER_BINARY ...]
# Workloads (1 KiB messages, --direct-batches, 4 partitions unless said):
#   a  2 producers, acks=1, fsync never, no consumer
#   b  the same with one consumer
#   r  the same as b at --rate 400 (about half the maximum)
#   f  the same as a at --rate 300: the same load for every binary, so the
#      share of idle spinning and parking does not move with throughput
#   c  1 producer, acks=all, fsync always, batches of 10 messages, one in flight, 1 partition
# PROFILE=1 records a call graph of the window instead (perf record -g,
# cpu-clock, into $OUT/NAME/perf.data). EXTRA="idle_spin_us = 0" adds a
# top-level line to the broker's configuration. Data lives in a fresh
# directory under $TMPDIR, removed after each run.
set -euo pipefail
w=${1:?workload a, b, c, r or f}
shift
[ $# -gt 0 ] || set -- target/release/levee
runs=${RUNS:-3} warm=${WARM:-3} win=${WIN:-5} ghz=${GHZ:-2.6}
out=${OUT:-target/cpu-per-byte}
port=${PORT:-29192} admin=${ADMIN_PORT:-29644}
mkdir -p "$out"
common="--message-size 1024 --direct-batches --duration $((win + warm + 1)) --warmup 1 --quiet"
case $w in
a) args="--producers 2 --consumers 0 --acks 1 --partitions 4 --topic-fsync never";;
b) args="--producers 2 --consumers 1 --acks 1 --partitions 4 --topic-fsync never";;
r) args="--producers 2 --consumers 1 --acks 1 --partitions 4 --topic-fsync never --rate 400";;
f) args="--producers 2 --consumers 0 --acks 1 --partitions 4 --topic-fsync never --rate 300";;
c) args="--producers 1 --consumers 0 --acks all --partitions 1 --topic-fsync always --batch-size 10360 --max-in-flight 1";;
*) echo "unknown workload $w" >&2; exit 2;;
esac
counters() {
  curl -s "127.0.0.1:$admin/metrics" | awk '/^levee_partition_bytes_in_total/{i+=$2}
    /^levee_partition_bytes_out_total/{o+=$2} END{printf "%.0f %.0f\n", i, o}'
}
data="" broker=""
cleanup() {
  if [ -n "$broker" ]; then kill -INT "$broker" 2>/dev/null || true; wait "$broker" 2>/dev/null || true; fi
  if [ -n "$data" ]; then rm -rf "$data"; fi
  broker="" data=""
}
one() { # binary name
  local bin=$1 name=$2 bench i0 o0 i1 o1
  if ss -ltn | grep -qE "127.0.0.1:($port|$admin) "; then
    echo "port $port or $admin is in use: set PORT and ADMIN_PORT" >&2
    exit 2
  fi
  data=$(mktemp -d "${TMPDIR:-/tmp}/levee-cpb.XXXXXX")
  # Bounded disk use: at 1 GB/s a run would otherwise write 10 GB or more.
  printf '%s\n[log]\nsegment_bytes = 134217728\nretention_bytes = 268435456\nretention_check_interval_ms = 250\n' \
    "${EXTRA:-}" > "$data/levee.toml"
  "$bin" serve --config "$data/levee.toml" --data-dir "$data/d" --listen "127.0.0.1:$port" \
    --kafka-listen none --admin-listen "127.0.0.1:$admin" --cores 2 > "$out/$name.broker.log" 2>&1 &
  broker=$!
  for _ in $(seq 100); do curl -sf "127.0.0.1:$admin/health" >/dev/null && break; sleep 0.1; done
  # shellcheck disable=SC2086
  "$bin" bench --bootstrap "127.0.0.1:$port" --admin "127.0.0.1:$admin" --topic "t$w" $args $common \
    > "$out/$name.bench.log" 2>&1 &
  bench=$!
  sleep "$warm"
  read -r i0 o0 < <(counters)
  if [ -n "${PROFILE:-}" ]; then
    mkdir -p "$out/$name"
    perf record -e cpu-clock -F 999 -g --call-graph dwarf,16384 -o "$out/$name/perf.data" \
      -p "$broker" -- sleep "$win" 2>/dev/null
    echo "0,msec,task-clock" > "$out/$name.stat"
  else
    perf stat -e task-clock -x, -o "$out/$name.stat" -p "$broker" -- sleep "$win"
  fi
  read -r i1 o1 < <(counters)
  wait "$bench" || echo "$name: the bench failed (see $out/$name.bench.log)" >&2
  cleanup
  python3 - "$out/$name.stat" "$name" "$((i1 - i0))" "$((o1 - o0))" "$win" "$ghz" <<'PY'
import sys
stat, name, di, do, win, ghz = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
ms = next(float(l.split(",")[0]) for l in open(stat) if ",task-clock," in l)
cyc = ms * 1e-3 * ghz * 1e9
print(f"{name}: in {di / 1e6 / win:.0f} MB/s, out {do / 1e6 / win:.0f} MB/s, broker CPU {ms / 1e3:.2f} s,"
      f" cycles/B in {cyc / max(di, 1):.3f}, cycles/B in+out {cyc / max(di + do, 1):.3f}")
PY
  grep -h "ack latency" "$out/$name.bench.log" | sed 's/ *(mean.*//; s/^/    /' || true
}
{
  # (In the pipeline's subshell, where the brokers are started.)
  trap cleanup EXIT
  for r in $(seq "$runs"); do
    n=0
    for bin in "$@"; do
      n=$((n + 1))
      one "$bin" "$w-bin$n-run$r"
    done
  done
} | tee "$out/$w.txt"
python3 - "$out/$w.txt" "$#" <<'PY'
import re, statistics, sys
lines, n = open(sys.argv[1]).read().splitlines(), int(sys.argv[2])
for b in range(1, n + 1):
    rows = [l for l in lines if re.match(rf"\S+-bin{b}-run\d+:", l)]
    if not rows:
        continue
    col = lambda k: statistics.median(float(re.search(k, l).group(1)) for l in rows)
    cin, cio, mbs = col(r"cycles/B in ([\d.]+)"), col(r"in\+out ([\d.]+)"), col(r"in (\d+) MB/s")
    print(f"binary {b}: median cycles/B in {cin:.3f}, in+out {cio:.3f}, in {mbs:.0f} MB/s ({len(rows)} runs)")
PY
