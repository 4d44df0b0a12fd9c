#!/usr/bin/env bash
# What idempotence costs (issue 18): `levee bench` through the client's
# Producer API, acks=all, 2 producers, 1 consumer, 1 KiB, 4 partitions,
# with and without idempotence, interleaved ROUNDS times (default 5), each
# run on a fresh `levee serve --cores 2`. Prints every run and the medians
# and their ratio.
#
#   benches/idempotence.sh SCRATCH_DIR [BIN]
#
# SCRATCH_DIR must be on the data disk; the script makes and removes only
# its own subdirectory there.
set -euo pipefail
scratch=$(realpath -m "${1:?scratch directory}")
bin=$(realpath "${2:-target/release/levee}")
rounds=${ROUNDS:-5}
port=${PORT:-39492} admin=${ADMIN_PORT:-39944}
work="$scratch/idempotence-work"
rm -rf "$work"
mkdir -p "$work"
broker=""
stop_broker() {
  if [ -n "$broker" ]; then kill -INT "$broker" 2>/dev/null || true; wait "$broker" 2>/dev/null || true; fi
  broker=""
}
trap 'stop_broker; rm -rf "$work"' EXIT
run() { # label json extra...
  local label=$1 json=$2
  shift 2
  rm -rf "$work/data"
  printf '[log]\nsegment_bytes = 268435456\nretention_bytes = 1073741824\nretention_check_interval_ms = 500\n' \
    > "$work/levee.toml"
  "$bin" serve --config "$work/levee.toml" --data-dir "$work/data" --listen "127.0.0.1:$port" \
    --kafka-listen none --admin-listen "127.0.0.1:$admin" --cores 2 > "$work/serve.log" 2>&1 &
  broker=$!
  for _ in $(seq 200); do curl -sf "127.0.0.1:$admin/health" >/dev/null && break; sleep 0.05; done
  "$bin" bench --bootstrap "127.0.0.1:$port" --admin "127.0.0.1:$admin" --topic ti --partitions 4 \
    --producers 2 --consumers 1 --message-size 1024 --acks all --duration 6 --warmup 1 \
    --quiet --json "$json" "$@" > /dev/null 2>&1 || true
  stop_broker
  python3 - "$json" "$label" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
v, a = d["verification"], d["ack_latency"]
print(f'{sys.argv[2]}: {d["produce"]["mb_s"]:.1f} MB/s, ack p50 {a["p50_ms"]:.2f} ms, '
      f'p99 {a["p99_ms"]:.2f} ms, lost {v["loss"]["lost"]}, duplicates {v["counts"]["duplicates"]}, '
      f'reordered {v["counts"]["reordered"]}')
PY
}
for r in $(seq "$rounds"); do
  run "r$r idempotence on " "$work/on-$r.json"
  run "r$r idempotence off" "$work/off-$r.json" --no-idempotence
done
python3 - "$work" "$rounds" <<'PY'
import json, statistics, sys
w, n = sys.argv[1], int(sys.argv[2])
mb = lambda k: [json.load(open(f"{w}/{k}-{i}.json"))["produce"]["mb_s"] for i in range(1, n + 1)]
on, off = mb("on"), mb("off")
print(f"on:  {[round(x) for x in on]} median {statistics.median(on):.1f} MB/s")
print(f"off: {[round(x) for x in off]} median {statistics.median(off):.1f} MB/s")
print(f"ratio of medians {statistics.median(on) / statistics.median(off):.3f}; "
      f"per-round ratios {[round(a / b, 2) for a, b in zip(on, off)]}")
PY
