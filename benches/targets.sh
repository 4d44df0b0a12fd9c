#!/usr/bin/env bash
# Issue 20's targets, measured in one sitting for one or more `levee`
# builds (interleaved round by round), against the machine's limits taken
# at the start and the end (fio direct I/O, iperf3 loopback):
#
#   ingest    2 producers, 1 KiB, acks=1, --direct-batches, 4 partitions,
#             fsync never, no consumer: MB/s
#   consumer  the same with one verifying consumer: MB/s
#   half      the same as consumer at half of that build's median consumer
#             figure (--rate): ack p99 and p99.99, end-to-end p99
#   durable   1 producer, acks=all, fsync always, batches of 10 messages,
#             one in flight, 1 partition: ack p50
#   catchup   3 GB produced, the broker restarted (its cache cold), then 2
#             consumers read it all: MB/s
#   p10k      ingest with 10,000 partitions: MB/s
#   idle      broker RSS growth per partition after creating 10,000 idle
#             partitions (VmRSS from /proc)
#   3 nodes   benches/cluster-throughput.sh per build (3 nodes RF=3
#             acks=all over a single node's acks=1, per-broker CPU per byte)
#
#   benches/targets.sh SCRATCH_DIR BIN [BIN ...]
#
# SCRATCH_DIR must be on the data disk; the script makes and removes only
# its own subdirectories there. ROUNDS (default 3) rounds of each
# measurement; every broker is fresh (`levee serve --cores 2`) on an empty
# data directory. Output: lines "MEASURE bN rR: ..." and a summary of
# medians per build at the end (also in SCRATCH_DIR/targets.txt). One
# load generator drives every build: `levee bench` of BENCH, or of the last
# BIN given.
set -euo pipefail
scratch=$(realpath -m "${1:?scratch directory}")
shift
[ $# -gt 0 ] || { echo "usage: benches/targets.sh SCRATCH_DIR BIN [BIN ...]" >&2; exit 2; }
bins=()
for b in "$@"; do bins+=("$(realpath "$b")"); done
rounds=${ROUNDS:-3}
port=${PORT:-39392} admin=${ADMIN_PORT:-39844}
cd "$(dirname "$0")/.."
mkdir -p "$scratch"
work="$scratch/targets-work"
log="$scratch/targets.txt"
rm -rf "$work"
mkdir -p "$work/fio" "$work/json"
: > "$log"
say() { echo "$*" | tee -a "$log"; }

broker="" data=""
stop_broker() {
  if [ -n "$broker" ]; then kill -INT "$broker" 2>/dev/null || true; wait "$broker" 2>/dev/null || true; fi
  broker=""
}
cleanup() { stop_broker; rm -rf "$work"; }
trap cleanup EXIT

start_broker() { # bin [keep]: a fresh data directory unless keep
  local bin=$1
  if [ "${2:-}" != keep ]; then
    rm -rf "$work/data"
    mkdir -p "$work/data"
    # Bounded disk use: 1 GiB per partition at most.
    printf '[log]\nsegment_bytes = 268435456\nretention_bytes = 1073741824\nretention_check_interval_ms = 500\n' \
      > "$work/levee.toml"
  fi
  "$bin" serve --config "$work/levee.toml" --data-dir "$work/data/d" --listen "127.0.0.1:$port" \
    --kafka-listen none --admin-listen "127.0.0.1:$admin" --cores 2 > "$work/serve.log" 2>&1 &
  broker=$!
  for _ in $(seq 200); do curl -sf "127.0.0.1:$admin/health" >/dev/null && return 0; sleep 0.05; done
  echo "the broker did not start: $(tail -5 "$work/serve.log")" >&2
  exit 1
}

# One load generator for every build: BENCH, else the last build given.
bench_bin=$(realpath "${BENCH:-${bins[-1]}}")
bench() { # bin json args...
  local json=$2
  shift 2
  "$bench_bin" bench --bootstrap "127.0.0.1:$port" --admin "127.0.0.1:$admin" --message-size 1024 \
    --quiet --json "$json" "$@" > "$json.log" 2>&1 || true
}

limits() { # label
  local l
  l=$(benches/disk-limits.sh "$work/fio" 1G | tr '\n' ';')
  iperf3 -s -D -p 5399 >/dev/null 2>&1
  sleep 1
  l="$l $(iperf3 -c 127.0.0.1 -p 5399 -t 3 -f g | grep receiver | awk '{print "iperf3 loopback: " $7 " Gbit/s"}')"
  pkill -f "iperf3 -s -D -p 5399" || true
  say "limits $1: $l"
}

j() { # json expr: print a field
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {"d": d}))' "$1" "$2" 2>/dev/null || echo "nan"
}

limits start
common=(--direct-batches --topic-fsync never --duration 6 --warmup 1 --partitions 4)
for r in $(seq "$rounds"); do
  for n in "${!bins[@]}"; do
    b=${bins[$n]} id="b$((n + 1))"
    start_broker "$b"
    f="$work/json/ingest-$id-r$r.json"
    bench "$b" "$f" --topic ti --producers 2 --consumers 0 --acks 1 "${common[@]}"
    stop_broker
    say "ingest $id r$r: $(j "$f" 'round(d["produce"]["mb_s"],1)') MB/s, ack p99 $(j "$f" 'd["ack_latency"]["p99_ms"]') ms"
    start_broker "$b"
    f="$work/json/consumer-$id-r$r.json"
    bench "$b" "$f" --topic tc --producers 2 --consumers 1 --acks 1 "${common[@]}"
    stop_broker
    say "consumer $id r$r: $(j "$f" 'round(d["produce"]["mb_s"],1)') MB/s, verification $(j "$f" 'd["verification"]')"
  done
done

median_of() { # measure id field-expr
  python3 - "$work/json" "$1" "$2" "$3" <<'PY'
import glob, json, statistics, sys
d, m, i, e = sys.argv[1:]
v = [eval(e, {"d": json.load(open(f))}) for f in sorted(glob.glob(f"{d}/{m}-{i}-r*.json"))]
print(statistics.median(v) if v else 0)
PY
}

for r in $(seq "$rounds"); do
  for n in "${!bins[@]}"; do
    b=${bins[$n]} id="b$((n + 1))"
    rate=$(python3 -c "print(int(float('$(median_of consumer "$id" 'd["produce"]["mb_s"]')') / 2))")
    start_broker "$b"
    f="$work/json/half-$id-r$r.json"
    bench "$b" "$f" --topic th --producers 2 --consumers 1 --acks 1 --rate "$rate" "${common[@]}"
    stop_broker
    say "half $id r$r: --rate $rate: $(j "$f" 'round(d["produce"]["mb_s"],1)') MB/s, ack p99 $(j "$f" 'd["ack_latency"]["p99_ms"]') ms, p99.99 $(j "$f" 'd["ack_latency"]["p99_99_ms"]') ms, e2e p99 $(j "$f" 'd["e2e_latency"]["p99_ms"]') ms"
    start_broker "$b"
    f="$work/json/durable-$id-r$r.json"
    bench "$b" "$f" --topic td --producers 1 --consumers 0 --acks all --partitions 1 \
      --topic-fsync always --batch-size 10360 --max-in-flight 1 --direct-batches --duration 6 --warmup 1
    stop_broker
    say "durable $id r$r: ack p50 $(j "$f" 'd["ack_latency"]["p50_ms"]') ms, p99 $(j "$f" 'd["ack_latency"]["p99_ms"]') ms, $(j "$f" 'round(d["produce"]["mb_s"],1)') MB/s"
  done
done

for r in $(seq "$rounds"); do
  for n in "${!bins[@]}"; do
    b=${bins[$n]} id="b$((n + 1))"
    start_broker "$b"
    bench "$b" "$work/json/fill-$id-r$r.json" --topic tk --producers 2 --consumers 0 --acks 1 \
      --partitions 4 --topic-fsync never --direct-batches --messages 3000000
    stop_broker
    start_broker "$b" keep
    f="$work/json/catchup-$id-r$r.json"
    bench "$b" "$f" --topic tk --producers 0 --consumers 2 --direct-batches
    stop_broker
    say "catchup $id r$r: $(j "$f" 'round(d["consume"]["mb_s"],1)') MB/s ($(j "$f" 'd["consume"]["messages"]') messages)"
  done
done

for n in "${!bins[@]}"; do
  b=${bins[$n]} id="b$((n + 1))"
  start_broker "$b"
  f="$work/json/p10k-$id-r1.json"
  bench "$b" "$f" --topic tp --producers 2 --consumers 0 --acks 1 --partitions 10000 \
    --direct-batches --topic-fsync never --duration 10 --warmup 2
  stop_broker
  say "p10k $id: $(j "$f" 'round(d["produce"]["mb_s"],1)') MB/s"
  start_broker "$b"
  sleep 2
  before=$(awk '/VmRSS/{print $2}' "/proc/$broker/status")
  "$b" topic create idle --partitions 10000 --bootstrap "127.0.0.1:$port" > /dev/null
  sleep 10
  after=$(awk '/VmRSS/{print $2}' "/proc/$broker/status")
  stop_broker
  say "idle $id: RSS $before KiB with no topic, $after KiB with 10,000 idle partitions: $(( (after - before) * 1024 / 10000 )) bytes per partition"
done

for n in "${!bins[@]}"; do
  b=${bins[$n]} id="b$((n + 1))"
  say "3nodes $id: $(ROUNDS=$rounds DURATION=10 LEVEE_BIN=$b WORK_DIR=$work/cluster benches/cluster-throughput.sh | tr '\n' ';')"
done

limits end

say "--- medians per build (${rounds} rounds)"
for n in "${!bins[@]}"; do
  id="b$((n + 1))"
  say "$id ${bins[$n]}: ingest $(median_of ingest "$id" 'd["produce"]["mb_s"]') MB/s;" \
    "consumer $(median_of consumer "$id" 'd["produce"]["mb_s"]') MB/s;" \
    "half-load ack p99 $(median_of half "$id" 'd["ack_latency"]["p99_ms"]') ms, p99.99 $(median_of half "$id" 'd["ack_latency"]["p99_99_ms"]') ms;" \
    "durable ack p50 $(median_of durable "$id" 'd["ack_latency"]["p50_ms"]') ms;" \
    "catch-up $(median_of catchup "$id" 'd["consume"]["mb_s"]') MB/s"
done
