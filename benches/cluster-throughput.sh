#!/usr/bin/env bash
# Replicated acks=all throughput on three local nodes as a ratio of
# single-node acks=1 throughput, alternating the two setups ROUNDS times
# (default 3) and printing the median ratio. Every node and the load
# generator share this host's CPUs and disk, so on a small host the ratio
# mostly shows that three brokers do three times the work.
# Also prints each broker's CPU time per byte produced (user + system from
# /proc/PID/stat over the measured window, after the warmup).
#   ROUNDS=3 DURATION=15 [LEVEE_BIN=path] benches/cluster-throughput.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
duration=${DURATION:-15}
if [ -n "${LEVEE_BIN:-}" ]; then
  L=$LEVEE_BIN
else
  cargo build --release -p levee-cli --bin levee >/dev/null 2>&1
  L=target/release/levee
fi
out=target/cluster-throughput
work=${WORK_DIR:-target/cluster-throughput-data}
rm -rf "$out" "$work" && mkdir -p "$out" "$work"
cpus=$(nproc)
# Bounded retention: the benchmark never fills the disk.
cat > "$work/levee.toml" <<EOF
[log]
fsync = "never"
segment_bytes = 268435456
retention_bytes = 1073741824
retention_check_interval_ms = 1000
EOF
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; pids=(); }
trap 'cleanup; rm -rf "$work"' EXIT
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
ticks() { # pid: user + system clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}
bench() { # bootstrap acks json
  local b t0=() t1=() k
  "$L" bench --bootstrap "$1" --topic bt --partitions 6 --acks "$2" --message-size 1024 \
    --producers 2 --duration "$duration" --warmup 2 --direct-batches --quiet --json "$3" >/dev/null &
  b=$!
  sleep 2.5
  for k in "${pids[@]}"; do t0+=("$(ticks "$k")"); done
  sleep "$((duration - 1))"
  for k in "${pids[@]}"; do t1+=("$(ticks "$k")"); done
  wait "$b"
  # CPU seconds of each broker over the $((duration - 1)) s window.
  for k in "${!t0[@]}"; do
    echo "$(( t1[k] - t0[k] )) $(getconf CLK_TCK) $((duration - 1))"
  done > "$3.cpu"
}
for i in $(seq 1 "$rounds"); do
  # Single node, every core, acks=1.
  rm -rf "$work/single"
  "$L" serve --config "$work/levee.toml" --data-dir "$work/single" --listen 127.0.0.1:9301 \
    --admin-listen "" --kafka-listen none >"$out/single-$i.log" 2>&1 & pids+=($!)
  wait_port 9301
  "$L" topic create bt --partitions 6 --bootstrap 127.0.0.1:9301 >/dev/null
  bench 127.0.0.1:9301 1 "$out/single-$i.json"
  cleanup
  # Three nodes, one shard each spread over the CPUs, RF 3, acks=all.
  C=1@127.0.0.1:9311,2@127.0.0.1:9312,3@127.0.0.1:9313
  for n in 1 2 3; do
    rm -rf "$work/n$n"
    cpu=$(( (n - 1) % cpus ))
    "$L" serve --config "$work/levee.toml" --data-dir "$work/n$n" --listen 127.0.0.1:930$((n + 1)) \
      --admin-listen "" --kafka-listen none --node-id $n --coordinators $C --cores "$cpu-$cpu" >"$out/n$n-$i.log" 2>&1 & pids+=($!)
  done
  for n in 1 2 3; do wait_port 930$((n + 1)); done
  B=127.0.0.1:9302,127.0.0.1:9303,127.0.0.1:9304
  for _ in $(seq 1 100); do
    "$L" topic create bt --partitions 6 --replication-factor 3 --bootstrap $B >/dev/null 2>&1 && break
    sleep 0.2
  done
  sleep 1
  bench $B all "$out/cluster-$i.json"
  cleanup
done
python3 - "$out" "$rounds" <<'PY'
import json, sys, statistics
out, rounds = sys.argv[1], int(sys.argv[2])
mb = lambda f: json.load(open(f))["produce"]["mb_s"]
s = [mb(f"{out}/single-{i}.json") for i in range(1, rounds + 1)]
c = [mb(f"{out}/cluster-{i}.json") for i in range(1, rounds + 1)]
r = [b / a for a, b in zip(s, c)]
print(f"single node acks=1 MB/s: {[round(x) for x in s]}")
print(f"3 nodes RF3 acks=all MB/s: {[round(x) for x in c]}")
print(f"median ratio {statistics.median(r):.1%} (range {min(r):.0%}..{max(r):.0%})")
def ns_per_byte(name, i):
    mbs = mb(f"{out}/{name}-{i}.json")
    rows = [l.split() for l in open(f"{out}/{name}-{i}.json.cpu")]
    return [int(t) / int(hz) / (mbs * 1e6 * int(w)) * 1e9 for t, hz, w in rows]
for name in ["single", "cluster"]:
    per = [ns_per_byte(name, i) for i in range(1, rounds + 1)]
    med = [statistics.median(run[n] for run in per) for n in range(len(per[0]))]
    print(f"{name}: broker CPU ns per produced byte, median per broker: {[round(x, 2) for x in med]}"
          f" (sum {sum(med):.2f})")
PY
