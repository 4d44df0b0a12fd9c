#!/usr/bin/env bash
# Levee benchmark suite (issue 4): the host's limits, then the broker's
# throughput, latency, burst absorption and scaling measured against them,
# written as one report. Run it on a dedicated host, with nothing else busy.
#
#   benches/run-suite.sh                 full run (about 8-10 minutes)
#   QUICK=1 benches/run-suite.sh         short points (about 4 minutes)
#   OUT=/some/dir benches/run-suite.sh   where the report goes
#
# What it measures, in order (each step starts a fresh broker on an empty
# data directory and deletes it afterwards):
#   1. limits: fio direct-I/O sequential write and read bandwidth (1 MiB, QD8)
#      and fdatasync latency (benches/disk-limits.sh; taken at the start and
#      again at the end), loopback TCP bandwidth (iperf3,
#      installed with apt-get if missing; else a python3 socket test).
#   Steps 2 and 4 also run fio right before and after their measurements
#   (fio-s2a/s2b/s2c, fio-s4a/s4b): their ratios divide by the mean of the
#   fio runs around them, since the disk's bandwidth drifts within minutes.
#   2. max produce (2 producers, --direct-batches, 1 MiB batches, acks=1,
#      fsync never; and acks=all, fsync always) and max consume catching up
#      from disk (a backlog of BACKLOG_GB produced first, the broker restarted
#      so its tail cache is cold, then 2 consumers with 8 MiB fetches), as
#      ratios of the disk's write / read bandwidth and of loopback TCP.
#   3. latency at 25/50/75% of the max produce rate (acks=1, fsync never, 2
#      producers, 2 consumers): ack and end-to-end p50/p99/p99.9; plus one
#      light-load point through the client's Producer API (10 MB/s, linger 0).
#   4. burst absorption: producers at BASE, then 5x the consumers' drain rate
#      for PEAK seconds (--burst, --consume-rate), then a catch-up read; pass or
#      fail on ack p99 during the burst (<= 1.5x its empty-backlog value),
#      broker RSS growth (< 64 MiB) and catch-up read speed (>= 80% of fio).
#   5. scaling: partitions (1, 100, 1000; 10000 unless QUICK), producers (1, 4,
#      16, 64, 100 with --keys random) and message size (100 B .. 1 MiB).
#
# Output: $OUT/report.md, and per run $OUT/json/NAME.json and
# $OUT/html/NAME.html (the bench's own figures and per-second time series),
# $OUT/logs/ (bench and broker output), $OUT/limits.json.
#
# Options (environment variables):
#   QUICK=1            3 s points, smaller backlog and burst, no 10000 partitions
#   OUT=DIR            report directory (default target/bench-suite)
#   DATA=DIR           broker data directory, on the disk under test; it is
#                      DELETED between steps (default target/bench-suite-data)
#   LEVEE=PATH         levee binary (default: cargo build --release, then
#                      target/release/levee)
#   PORT=N             broker port (admin: PORT+552); default 49092
#   MIN_FREE_GB=N      skip a step when the data disk has less free (default 20);
#                      a run is killed if free space falls under half of it
#   DURATION=S         seconds per point (default 8, QUICK 3); WARMUP=S (2, QUICK 1)
#   BACKLOG_GB=N       catch-up backlog (default 3, QUICK 2)
#   BURST_DRAIN=MBPS   consumers' drain rate in the burst step (default 40)
#   STEPS="1 2 3 4 5"  which steps to run (1 is needed for the ratios)
#   REPORT_ONLY=1      rebuild $OUT/report.md from the files of an earlier run
#
# Every broker is started with a config that bounds retention (1 GiB per
# partition, checked every second) so the suite cannot fill the disk.
# Brokers it starts are stopped on exit (trap EXIT) and their data deleted.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

quick=${QUICK:-0}
out=$(realpath -m "${OUT:-target/bench-suite}")
data=$(realpath -m "${DATA:-target/bench-suite-data}")
port=${PORT:-49092}
admin_port=$((port + 552))
min_free=${MIN_FREE_GB:-20}
steps=${STEPS:-"1 2 3 4 5"}
if [ "$quick" = 1 ]; then
  dur=${DURATION:-3}; warm=${WARMUP:-1}; backlog_gb=${BACKLOG_GB:-2}
  burst_peak=5; burst_period=12; part_points="1 100 1000"
else
  dur=${DURATION:-8}; warm=${WARMUP:-2}; backlog_gb=${BACKLOG_GB:-3}
  burst_peak=8; burst_period=20; part_points="1 100 1000 10000"
fi
burst_drain=${BURST_DRAIN:-40}

if [ "${REPORT_ONLY:-0}" = 1 ]; then
  LEVEE=${LEVEE:-$root/target/release/levee}
elif [ -z "${LEVEE:-}" ]; then
  echo "building levee (cargo build --release -p levee-cli)" >&2
  cargo build --release -p levee-cli >/dev/null 2>&1 || cargo build --release -p levee-cli
  LEVEE=$root/target/release/levee
fi
levee=$(realpath -m "$LEVEE")

mkdir -p "$out"/{json,html,logs,conf}
if [ "${REPORT_ONLY:-0}" = 1 ]; then
  steps=""
else
  rm -f "$out"/json/*.json "$out"/html/*.html "$out"/notes.txt "$out"/limits.json "$out"/logs/*
  : > "$out/notes.txt"
fi
note() { echo "$*" | tee -a "$out/notes.txt" >&2; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
t_start=$(date +%s)

broker_pid=""
stop_broker() {
  if [ -n "$broker_pid" ] && kill -0 "$broker_pid" 2>/dev/null; then
    kill -INT "$broker_pid" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$broker_pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$broker_pid" 2>/dev/null; then
      note "broker $broker_pid did not stop within 15 s of SIGINT: killed"
      kill -KILL "$broker_pid" 2>/dev/null || true
    fi
    wait "$broker_pid" 2>/dev/null || true
  fi
  broker_pid=""
}
cleanup() {
  stop_broker
  rm -rf "$data" "$out/fio-tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_gb() { df -P -BG "$(dirname "$data")" | awk 'NR==2 { sub("G", "", $4); print $4 }'; }
# check_space STEP: 0 if there is room for a step, else notes the skip.
check_space() {
  local f; f=$(free_gb)
  if [ "$f" -lt "$min_free" ]; then
    note "step '$1' skipped: only ${f} GB free on the data disk (MIN_FREE_GB=$min_free)"
    return 1
  fi
}

# write_conf NAME [extra [log] lines...]: a broker config with bounded retention.
write_conf() {
  local name=$1; shift
  {
    echo "data_dir = \"$data\""
    echo "listen = \"127.0.0.1:$port\""
    echo "admin_listen = \"127.0.0.1:$admin_port\""
    echo "[log]"
    echo "retention_bytes = 1073741824"
    echo "retention_check_interval_ms = 1000"
    if [ $# -eq 0 ]; then echo "segment_bytes = 268435456"; fi
    for l in "$@"; do echo "$l"; done
  } > "$out/conf/$name.toml"
  echo "$out/conf/$name.toml"
}

# start_broker CONF NAME [keep]: start a broker (on an empty data dir unless keep).
start_broker() {
  local conf=$1 name=$2 keep=${3:-}
  stop_broker
  [ -n "$keep" ] || rm -rf "$data"
  mkdir -p "$data"
  "$levee" serve --config "$conf" >> "$out/logs/broker-$name.log" 2>&1 &
  broker_pid=$!
  for _ in $(seq 1 300); do
    if curl -fs "http://127.0.0.1:$admin_port/health" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$broker_pid" 2>/dev/null; then break; fi
    sleep 0.1
  done
  note "broker for '$name' did not start (see logs/broker-$name.log)"
  tail -5 "$out/logs/broker-$name.log" >&2 || true
  return 1
}

# bench NAME ARGS...: one levee bench run against the broker, JSON and HTML
# kept; killed (with the broker) if the data disk runs low on space.
bench() {
  local name=$1; shift
  log "bench $name: $*"
  echo "levee bench $*" > "$out/logs/bench-$name.cmd"
  "$levee" bench --bootstrap "127.0.0.1:$port" --admin "127.0.0.1:$admin_port" --quiet \
    --json "$out/json/$name.json" --report "$out/html/$name.html" "$@" \
    > "$out/logs/bench-$name.log" 2>&1 &
  local pid=$! rc=0
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$(free_gb)" -lt $((min_free / 2)) ]; then
      note "bench $name killed: the data disk fell under $((min_free / 2)) GB free"
      kill "$pid" 2>/dev/null || true
      stop_broker; rm -rf "$data"
    fi
    sleep 0.5
  done
  wait "$pid" || rc=$?
  echo "$rc" > "$out/logs/bench-$name.rc"
  if [ "$rc" != 0 ]; then
    note "bench $name exited $rc: $(grep -E '^(result|error|levee bench:)' "$out/logs/bench-$name.log" | tail -2 | tr '\n' ' ')"
  fi
  if [ -n "$broker_pid" ] && ! kill -0 "$broker_pid" 2>/dev/null; then
    note "the broker died during bench $name (see logs/broker-*.log)"
    broker_pid=""
  fi
  grep -E '^(produce|consume|ack latency|e2e latency|broker RSS):' "$out/logs/bench-$name.log" | sed 's/^/    /' >&2 || true
  return 0
}

jget() { python3 -c 'import json,sys
try:
    j=json.load(open(sys.argv[1]))
    for k in sys.argv[2].split("."): j=j[k]
    print(j)
except Exception: print(sys.argv[3])' "$@"; }

# ---------------------------------------------------------------- 1. limits
limits() {  # limits TAG: fio into $out/logs/fio-TAG.txt
  check_space "disk limits" || return 0
  log "disk limits (fio, $1)"
  if ! "$root/benches/disk-limits.sh" "$out/fio-tmp" 1G > "$out/logs/fio-$1.txt" 2> "$out/logs/fio-$1.err"; then
    note "benches/disk-limits.sh failed ($1): $(tail -1 "$out/logs/fio-$1.err")"
  fi
  sed 's/^/    /' "$out/logs/fio-$1.txt" >&2
}
net_limit() {
  log "loopback TCP bandwidth"
  if ! command -v iperf3 >/dev/null; then
    echo "iperf3 is missing: installing it (Debian package iperf3)" >&2
    (apt-get install -y iperf3 || (apt-get update && apt-get install -y iperf3)) >/dev/null 2>&1 || true
  fi
  if command -v iperf3 >/dev/null; then
    local ip=$((port + 7))
    iperf3 -s -1 -p "$ip" >/dev/null 2>&1 &
    local spid=$!
    sleep 0.5
    local ok=1
    for streams in 1 2; do
      if iperf3 -c 127.0.0.1 -p "$ip" -t "$((quick == 1 ? 3 : 5))" -P "$streams" -J > "$out/logs/iperf3-P$streams.json" 2>/dev/null; then
        python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(round(j["end"]["sum_received"]["bits_per_second"]/8/1048576,1))' \
          "$out/logs/iperf3-P$streams.json" > "$out/logs/net-P$streams.txt" || ok=0
      else ok=0; fi
      kill "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true
      iperf3 -s -1 -p "$ip" >/dev/null 2>&1 & spid=$!; sleep 0.5
    done
    kill "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true
    if [ "$ok" = 1 ]; then echo iperf3 > "$out/logs/net-tool.txt"; return 0; fi
    note "iperf3 failed; falling back to a python3 socket test"
  else
    note "iperf3 is not installed and could not be installed: loopback TCP measured with a python3 socket test (one stream; it is CPU-bound in python and understates the kernel's limit)"
  fi
  python3 - "$((port + 8))" "$((quick == 1 ? 3 : 5))" > "$out/logs/net-P1.txt" <<'PY'
import socket, sys, threading, time
port, secs = int(sys.argv[1]), float(sys.argv[2])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port)); srv.listen(1)
got = [0]
def sink():
    c, _ = srv.accept(); buf = bytearray(1 << 20); v = memoryview(buf)
    while True:
        n = c.recv_into(v)
        if not n: break
        got[0] += n
t = threading.Thread(target=sink); t.start()
s = socket.create_connection(("127.0.0.1", port)); blk = b"\0" * (1 << 20)
t0 = time.time()
while time.time() - t0 < secs: s.sendall(blk)
s.close(); t.join(); el = time.time() - t0
print(round(got[0] / el / 1048576, 1))
PY
  echo python3 > "$out/logs/net-tool.txt"
  cp "$out/logs/net-P1.txt" "$out/logs/net-P2.txt"
}

if [[ " $steps " == *" 1 "* ]]; then limits start; net_limit; fi

# ------------------------------------------------------ 2. max throughput
pmax=""
if [[ " $steps " == *" 2 "* ]] && check_space "max throughput"; then
  conf=$(write_conf default)
  # fio right before and after each pair of runs: the ratios use the disk's
  # bandwidth of those minutes (it moves by 2x within minutes on shared hosts).
  limits s2a
  start_broker "$conf" produce-never || true
  bench produce-max --producers 2 --consumers 0 --direct-batches --batch-size 1048576 \
    --partitions 4 --topic-fsync never --acks 1 --duration "$dur" --warmup "$warm"
  start_broker "$conf" produce-all-always || true
  bench produce-max-acks-all --producers 2 --consumers 0 --direct-batches --batch-size 1048576 \
    --partitions 4 --topic-fsync always --acks all --duration "$dur" --warmup "$warm"
  stop_broker
  limits s2b
  # Catch-up: a backlog, a graceful restart (cold tail cache), then read it all.
  start_broker "$conf" catchup || true
  msgs=$((backlog_gb * 1000000000 / 1024))
  bench catchup-backlog --producers 2 --consumers 0 --direct-batches --batch-size 1048576 \
    --partitions 4 --topic-fsync never --messages "$msgs"
  start_broker "$conf" catchup keep || true
  bench consume-catchup --producers 0 --consumers 2 --fetch-partition-bytes 8388608
  stop_broker; rm -rf "$data"
  limits s2c
fi
pmax=$(jget "$out/json/produce-max.json" produce.mb_s "")

# ---------------------------------------------------------------- 3. latency
if [[ " $steps " == *" 3 "* ]] && check_space "latency"; then
  conf=$(write_conf default)
  if [ -z "$pmax" ]; then note "no max produce figure: latency points at 100/200/300 MB/s"; fi
  for pct in 25 50 75; do
    rate=$(python3 -c "import sys; print(round(float(sys.argv[1] or 400) * $pct / 100))" "$pmax")
    start_broker "$conf" "latency-$pct" || true
    bench "latency-$pct" --producers 2 --consumers 2 --direct-batches --batch-size 65536 \
      --partitions 4 --topic-fsync never --acks 1 --rate "$rate" --duration "$dur" --warmup "$warm"
  done
  start_broker "$conf" latency-light || true
  bench latency-light --producers 1 --consumers 1 --partitions 4 --topic-fsync never --acks 1 \
    --rate 10 --linger-ms 0 --duration "$dur" --warmup "$warm"
  stop_broker; rm -rf "$data"
fi

# ------------------------------------------------------------------ 4. burst
if [[ " $steps " == *" 4 "* ]] && check_space "burst"; then
  conf=$(write_conf burst)
  base=$(python3 -c "print(round($burst_drain / 2, 3))")
  peak=$((burst_drain * 5))
  limits s4a
  # Empty-backlog reference: the base rate alone, consumers keeping up.
  start_broker "$conf" burst-baseline || true
  bench burst-baseline --producers 2 --consumers 2 --partitions 4 --topic-fsync never --acks 1 \
    --rate "$base" --consume-rate "$burst_drain" --duration "$dur" --warmup "$warm"
  start_broker "$conf" burst || true
  # --consume-rate also paces the drain, so the drain is cut short and the
  # catch-up speed is measured by an unthrottled read right after.
  bench burst --producers 2 --consumers 2 --partitions 4 --topic-fsync never --acks 1 \
    --burst "$base:$peak:$burst_peak:$burst_period" --consume-rate "$burst_drain" \
    --duration "$burst_period" --drain-timeout 3
  bench burst-catchup --producers 0 --consumers 2 --fetch-partition-bytes 8388608
  limits s4b
  echo "$base $peak $burst_peak $burst_period $burst_drain" > "$out/logs/burst-params.txt"
  stop_broker; rm -rf "$data"
fi

# ---------------------------------------------------------------- 5. scaling
if [[ " $steps " == *" 5 "* ]]; then
  for p in $part_points; do
    check_space "partitions $p" || continue
    prealloc=4194304
    need=$(( p * prealloc / 1073741824 + min_free + 2 ))
    if [ "$(free_gb)" -lt "$need" ]; then
      prealloc=1048576
      need=$(( p * prealloc / 1073741824 + min_free + 2 ))
      if [ "$(free_gb)" -lt "$need" ]; then
        note "partitions $p skipped: preallocation needs more free disk than there is"
        continue
      fi
      note "partitions $p: preallocate_bytes lowered to 1 MiB ($p x 4 MiB would leave under $min_free GB free)"
    fi
    conf=$(write_conf "parts-$p" "segment_bytes = 16777216" "write_chunk_bytes = 65536" \
      "tail_cache_bytes = 262144" "preallocate_bytes = $prealloc" "index_cache_bytes = 65536")
    start_broker "$conf" "parts-$p" || continue
    bench "parts-$p" --producers 2 --consumers 0 --direct-batches --batch-size 1048576 \
      --partitions "$p" --topic-fsync never --acks 1 --duration "$dur" --warmup "$warm"
  done
  conf=$(write_conf default)
  for n in 1 4 16 64 100; do
    check_space "producers $n" || continue
    start_broker "$conf" "producers-$n" || continue
    bench "producers-$n" --producers "$n" --consumers 0 --keys random --partitions 4 \
      --topic-fsync never --acks 1 --duration "$dur" --warmup "$warm"
  done
  for s in 100 1024 10240 102400 1048576; do
    check_space "message size $s" || continue
    start_broker "$conf" "msgsize-$s" || continue
    bench "msgsize-$s" --producers 2 --consumers 0 --direct-batches --batch-size 1048576 \
      --message-size "$s" --partitions 4 --topic-fsync never --acks 1 --duration "$dur" --warmup "$warm"
  done
  stop_broker; rm -rf "$data"
fi

if [[ " $steps " == *" 1 "* ]]; then limits end; fi
t_end=$(date +%s)
if [ "${REPORT_ONLY:-0}" = 1 ]; then
  t_start=$((t_end - $(cat "$out/logs/runtime-s.txt" 2>/dev/null || echo 0)))
else
  echo $((t_end - t_start)) > "$out/logs/runtime-s.txt"
fi

# ----------------------------------------------------------------- report
python3 - "$out" "$quick" "$((t_end - t_start))" "$dur" "$warm" "$levee" <<'PY'
import json, os, re, statistics, sys, platform, datetime, subprocess
out, quick, runtime, dur, warm, levee = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
MIB = 1e6 / 1048576  # MB/s (10^6) -> MiB/s
def load(name):
    try: return json.load(open(f"{out}/json/{name}.json"))
    except Exception: return None
def rc(name):
    try: return open(f"{out}/logs/bench-{name}.rc").read().strip()
    except Exception: return "-"
def cmd(name):
    try: return open(f"{out}/logs/bench-{name}.cmd").read().strip()
    except Exception: return ""
def fio(tag):
    try: t = open(f"{out}/logs/fio-{tag}.txt").read()
    except Exception: return None
    try:
        w = float(re.search(r"write 1 MiB QD8: ([\d.]+)", t).group(1))
        r = float(re.search(r"read  1 MiB QD8: ([\d.]+)", t).group(1))
        s = re.search(r"\(p50 p99 ms\): ([\d.]+) ([\d.]+)", t)
        return dict(w=w, r=r, s50=float(s.group(1)), s99=float(s.group(2)))
    except Exception: return None
def num(path):
    try: return float(open(path).read().strip())
    except Exception: return None
f0, f1 = fio("start"), fio("end")
fs = [f for f in (f0, f1) if f]
W = statistics.mean(f["w"] for f in fs) if fs else None
R = statistics.mean(f["r"] for f in fs) if fs else None
def near(k, *tags):
    """fio's bandwidth (k: 'w' or 'r') averaged over the runs taken right
    before and after a measurement; the whole run's mean if there are none."""
    fx = [x[k] for x in map(fio, tags) if x]
    return statistics.mean(fx) if fx else (W if k == "w" else R)
def near_txt(k, *tags):
    fx = [x[k] for x in map(fio, tags) if x]
    return " / ".join(f(x, 0) for x in fx) if fx else "run mean"
N1, N2 = num(f"{out}/logs/net-P1.txt"), num(f"{out}/logs/net-P2.txt")
NET = max([x for x in (N1, N2) if x] or [0]) or None
try: net_tool = open(f"{out}/logs/net-tool.txt").read().strip()
except Exception: net_tool = "none"
json.dump(dict(fio_start=f0, fio_end=f1, fio_write_mib_s=W, fio_read_mib_s=R,
               net_mib_s_1stream=N1, net_mib_s_2streams=N2, net_tool=net_tool),
          open(f"{out}/limits.json", "w"), indent=1)
def f(x, d=0):
    return "-" if x is None else f"{x:,.{d}f}"
def ms(x):
    if x is None: return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}" if x < 1000 else f"{x:,.0f}"
def ratio(mb, lim):
    return "-" if mb is None or not lim else f"{mb * MIB / lim:.0%}"
def mbs(j, k): return j[k]["mb_s"] if j else None
def lat(j, k, p): return j[f"{k}_latency"][p] if j and j[f"{k}_latency"]["count"] else None
def rss(j):
    m = j and j.get("memory")
    if not m or m.get("start_bytes") is None: return "-"
    return f"{m['start_bytes']/1048576:.0f} / {m['max_bytes']/1048576:.0f}"
L = []
p = L.append
host = platform.node()
try: cpus = os.cpu_count()
except Exception: cpus = "?"
try:
    mem = [l for l in open("/proc/meminfo") if l.startswith("MemTotal")][0].split()[1]
    mem = f"{int(mem)/1048576:.1f} GiB"
except Exception: mem = "?"
p(f"# Levee benchmark suite report")
p("")
p(f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, host `{host}`: {cpus} CPUs, {mem} RAM, "
  f"kernel {platform.release()}. {'QUICK run' if quick else 'Full run'}: {dur} s per point after {warm} s warmup; "
  f"suite runtime {runtime//60} min {runtime%60} s. Binary: `{levee}`.")
p("")
p("Rates: the bench reports MB/s (10^6 B/s) of payload; ratios convert them to MiB/s "
  "(x 0.9537) and divide by fio's MiB/s. The load generator runs on the same host as the broker "
  f"and takes CPU from it: on a {cpus}-CPU host this caps every ratio below.")
p("")
try:
    notes = [l.strip() for l in open(f"{out}/notes.txt") if l.strip()]
except Exception: notes = []
if notes:
    p("**Notes from the run:**"); p("")
    for n in notes: p(f"- {n}")
    p("")
p("## 1. Machine limits"); p("")
p("| measure | start | end | used for ratios |"); p("|---|---:|---:|---:|")
g = lambda fx, k: f(fx[k], 1) if fx else "-"
p(f"| fio direct sequential write, 1 MiB QD8 (MiB/s) | {g(f0,'w')} | {g(f1,'w')} | {f(W,1)} |")
p(f"| fio direct sequential read, 1 MiB QD8 (MiB/s) | {g(f0,'r')} | {g(f1,'r')} | {f(R,1)} |")
g2 = lambda fx, k: f(fx[k], 2) if fx else "-"
p(f"| fio fdatasync latency after 4 KiB writes, p50 (ms) | {g2(f0,'s50')} | {g2(f1,'s50')} | |")
p(f"| fio fdatasync latency after 4 KiB writes, p99 (ms) | {g2(f0,'s99')} | {g2(f1,'s99')} | |")
p(f"| loopback TCP ({net_tool}), 1 stream (MiB/s) | {f(N1,1)} | | |")
p(f"| loopback TCP ({net_tool}), 2 streams (MiB/s) | {f(N2,1)} | | {f(NET,1)} |")
p("")
p("## 2. Maximum throughput"); p("")
p("| run | MB/s | MiB/s | ratio to disk | fio before / after (MiB/s) | ratio to loopback TCP | ack p50 / p99 (ms) | broker RSS start / max (MiB) | exit |")
p("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
rows = [("produce-max", "produce, acks=1, fsync never", "produce", ("w", "s2a", "s2b")),
        ("produce-max-acks-all", "produce, acks=all, fsync always", "produce", ("w", "s2a", "s2b")),
        ("consume-catchup", "consume catch-up from disk (cold tail cache)", "consume", ("r", "s2b", "s2c"))]
for name, label, k, bracket in rows:
    j = load(name)
    v = mbs(j, k)
    lim = near(*bracket)
    lt = f"{ms(lat(j,'ack','p50_ms'))} / {ms(lat(j,'ack','p99_ms'))}" if k == "produce" else "-"
    p(f"| {label} | {f(v,0)} | {f(v*MIB if v else None,0)} | {ratio(v, lim)} of {'write' if k=='produce' else 'read'} | {near_txt(*bracket)} | {ratio(v, NET)} | {lt} | {rss(j)} | {rc(name)} |")
p("\nRatios divide by the mean of the fio runs taken right before and right after each pair of runs "
  "(the column \"fio before / after\"); section 1 has the whole run's start and end.")
jb = load("catchup-backlog")
if jb: p(f"\nCatch-up backlog: {jb['produce']['bytes']/1e9:.2f} GB in {jb['partitions']} partitions, then a graceful broker restart.")
p("\nAck latencies at unlimited rate include queueing in the producers' buffers.")
p("\nCommands:\n")
for name, *_ in rows: p(f"    {cmd(name)}")
p("")
p("## 3. Latency under load (acks=1, fsync never, 2 producers, 2 consumers)"); p("")
p("| target rate | achieved MB/s | % of max | ack p50 | ack p99 | ack p99.9 | e2e p50 | e2e p99 | e2e p99.9 | exit |")
p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
pmax = mbs(load("produce-max"), "produce")
for pct in (25, 50, 75):
    j = load(f"latency-{pct}")
    if not j: continue
    v = mbs(j, "produce")
    p(f"| {pct}% of max ({j['params']['produce_rate']}) | {f(v,0)} | {ratio(v, pmax*MIB) if pmax else '-'} | "
      + " | ".join(ms(lat(j, k, q)) for k in ("ack", "e2e") for q in ("p50_ms", "p99_ms", "p99_9_ms"))
      + f" | {rc(f'latency-{pct}')} |")
j = load("latency-light")
if j:
    v = mbs(j, "produce")
    p(f"| light load, Producer API, 1 producer, linger 0 ({j['params']['produce_rate']}) | {f(v,1)} | {ratio(v, pmax*MIB) if pmax else '-'} | "
      + " | ".join(ms(lat(j, k, q)) for k in ("ack", "e2e") for q in ("p50_ms", "p99_ms", "p99_9_ms"))
      + f" | {rc('latency-light')} |")
p("\nLatencies in ms. The 25/50/75% points use `--direct-batches` with 64 KiB batches (each "
  "acknowledgement is timed when it arrives, by a task waiting for it); the light-load row goes "
  "through the client's per-message Producer API. On a 2-CPU host the producers and consumers "
  "of the load generator compete with the broker for the CPUs, which shows in the tails.")
p("\nCommands:\n")
for n in ("latency-25", "latency-50", "latency-75", "latency-light"):
    if cmd(n): p(f"    {cmd(n)}")
p("")
p("## 4. Burst absorption"); p("")
jb, jbase, jc = load("burst"), load("burst-baseline"), load("burst-catchup")
try:
    base, peak, peak_s, period, drain = open(f"{out}/logs/burst-params.txt").read().split()
except Exception:
    base = None
if jb and base:
    ts = jb["timeseries"]
    peak_s, period = float(peak_s), float(period)
    # Peak seconds: the last PEAK_SECS of each period (second t covers (t-1, t]).
    def in_peak(t): return (round(t) - 1) % period >= period - peak_s
    meas = [s for s in ts if s["phase"] != "drain"]
    pk = [s for s in meas if in_peak(s["t_s"]) and s["ack_p99_ms"] is not None]
    pre = [s for s in meas if not in_peak(s["t_s"]) and s["t_s"] > 2.0 and s["ack_p99_ms"] is not None]
    pk99 = [s["ack_p99_ms"] for s in pk]
    pre99 = [s["ack_p99_ms"] for s in pre]
    ref = lat(jbase, "ack", "p99_ms")
    ref_src = "separate run at the base rate"
    if ref is None and pre99:
        ref, ref_src = statistics.median(pre99), "median per-second p99 before the peak"
    pk_med = statistics.median(pk99) if pk99 else None
    pk_max = max(pk99) if pk99 else None
    rs = [s["rss_bytes"] for s in ts if s.get("rss_bytes")]
    m = jb["memory"]
    growth = (m["max_bytes"] - m["start_bytes"]) / 1048576 if m.get("start_bytes") is not None else None
    dr = [s["consume_mb_s"] for s in ts if s["phase"] == "drain"]
    cu = mbs(jc, "consume")
    p(f"Profile: base {base} MB/s, peak {peak} MB/s (5x the drain rate) for the last {peak_s:g} s of a {period:g} s period, "
      f"consumers limited to {drain} MB/s; 2 producers (Producer API), 2 consumers, 4 partitions, acks=1, fsync never. "
      f"Backlog at its largest: {jb['backlog']['max_bytes']/1e6:,.0f} MB at {jb['backlog']['max_at_s']:.0f} s.")
    p("")
    p("| criterion | measured | target | result |"); p("|---|---|---|---|")
    ok1 = pk_med is not None and ref is not None and pk_med <= 1.5 * ref
    p(f"| producer ack p99 during the burst vs empty backlog | median of per-second p99 over peak seconds {ms(pk_med)} ms "
      f"(worst second {ms(pk_max)} ms) vs {ms(ref)} ms ({ref_src}; in-run pre-peak median {ms(statistics.median(pre99) if pre99 else None)} ms) "
      f"= {pk_med/ref if pk_med and ref else float('nan'):.2f}x | <= 1.5x | {'PASS' if ok1 else 'FAIL'} |")
    ok2 = growth is not None and growth < 64
    p(f"| broker memory flat | RSS start {m['start_bytes']/1048576:.0f} MiB, max {m['max_bytes']/1048576:.0f} MiB, end {m['end_bytes']/1048576:.0f} MiB: growth {f(growth,1)} MiB | < 64 MiB | {'PASS' if ok2 else 'FAIL'} |")
    crc = rc("burst-catchup")
    cerr = ""
    if crc != "0":
        try:
            cerr = [l.strip() for l in open(f"{out}/logs/bench-burst-catchup.log") if l.startswith("error:")][-1]
        except Exception: cerr = "see logs/bench-burst-catchup.log"
        cerr = f" **The catch-up run exited {crc}** (`{cerr}`), so it stopped before the end of the backlog."
    R4 = near("r", "s4a", "s4b")
    ok3 = cu is not None and R4 and cu * MIB / R4 >= 0.8 and crc == "0"
    p(f"| consumers catch up at disk read speed | unthrottled catch-up read right after the burst, no broker restart: {f(cu,0)} MB/s = {ratio(cu, R4)} of fio read "
      f"(fio before the step / after the catch-up: {near_txt('r', 's4a', 's4b')} MiB/s){cerr} "
      f"(the run's own drain, still throttled by --consume-rate: {f(statistics.mean(dr) if dr else None,0)} MB/s) | >= 80% | {'PASS' if ok3 else 'FAIL'} |")
    p("")
    p(f"Burst run: produce {f(mbs(jb,'produce'),0)} MB/s average, {jb['produce_failed']} failed; ack p99 over the whole run {ms(lat(jb,'ack','p99_ms'))} ms; "
      f"verification: {'complete' if jb['verification']['complete'] else 'incomplete (drain cut short on purpose)'}, "
      f"{jb['verification']['loss']['lost']} lost, {jb['verification']['counts']['corrupt']} corrupt, {jb['verification']['counts']['duplicates']} duplicates. "
      f"Catch-up run (exit {rc('burst-catchup')}): {jc['consume']['bytes']/1e9 if jc else 0:.2f} GB of {jb['produce']['bytes']/1e9:.2f} GB read from the start of the topic; "
      f"verification {jc['verification']['loss']['lost'] if jc else '-'} lost, {jc['verification']['counts']['corrupt'] if jc else '-'} corrupt.")
    p("")
    p("Per-second series of the burst run:\n")
    p("| t (s) | phase | produce MB/s | consume MB/s | ack p99 (ms) | backlog (MB) | RSS (MiB) |")
    p("|---:|---|---:|---:|---:|---:|---:|")
    for s in ts:
        ph = s["phase"] + (" (peak)" if s["phase"] != "drain" and in_peak(s["t_s"]) else "")
        p(f"| {s['t_s']:.0f} | {ph} | {s['produce_mb_s']:.0f} | {s['consume_mb_s']:.0f} | {ms(s['ack_p99_ms'])} | "
          f"{s['backlog_bytes']/1e6:,.0f} | {(s['rss_bytes'] or 0)/1048576:.0f} |")
    p("\nCommands:\n")
    for n in ("burst-baseline", "burst", "burst-catchup"): p(f"    {cmd(n)}")
else:
    p("(not run)")
p("")
p("## 5. Scaling"); p("")
def scale_table(title, names, label, note):
    rows = [(x, load(n), n) for x, n in names]
    rows = [r for r in rows if r[1]]
    if not rows: return
    p(f"### {title}\n")
    p(f"| {label} | produce MB/s | MiB/s | ratio to disk write | msg/s | ack p50 (ms) | ack p99 (ms) | ack p99.9 (ms) | broker RSS start / max (MiB) | exit |")
    p("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for x, j, n in rows:
        v = mbs(j, "produce")
        p(f"| {x} | {f(v,0)} | {f(v*MIB,0)} | {ratio(v, W)} | {f(j['produce']['msgs_s'],0)} | {ms(lat(j,'ack','p50_ms'))} | "
          f"{ms(lat(j,'ack','p99_ms'))} | {ms(lat(j,'ack','p99_9_ms'))} | {rss(j)} | {rc(n)} |")
    p(f"\n{note}\n\nCommand of the last point:\n\n    {cmd(rows[-1][2])}\n")
scale_table("Partitions", [(n, f"parts-{n}") for n in (1, 100, 1000, 10000)], "partitions",
    "2 producers, --direct-batches, 1 MiB batches, 1 KiB messages, acks=1, fsync never, no consumers. "
    "Every point of this series uses a small-partition broker config: `write_chunk_bytes = 65536`, "
    "`tail_cache_bytes = 262144`, `preallocate_bytes = 4194304`, `segment_bytes = 16777216`, "
    "`index_cache_bytes = 65536` (the defaults, 512 KiB write chunk and 2 MiB tail cache per partition, "
    "would need several GiB of memory at 10,000 partitions). Unlimited rate: latencies include queueing.")
scale_table("Producers", [(n, f"producers-{n}") for n in (1, 4, 16, 64, 100)], "producers",
    "Producer API (not --direct-batches), --keys random, 64 KiB batches, linger 5 ms, 1 KiB messages, "
    "4 partitions, acks=1, fsync never, no consumers; each producer has its own connection and a 32 MiB "
    "buffer. Unlimited rate: latencies include queueing in the buffers; throughput here is bound by the "
    "load generator's CPU, which shares the host with the broker.")
scale_table("Message size", [(s, f"msgsize-{n}") for s, n in
    (("100 B", 100), ("1 KiB", 1024), ("10 KiB", 10240), ("100 KiB", 102400), ("1 MiB", 1048576))], "message size",
    "2 producers, --direct-batches, 1 MiB batches (a 1 MiB message is a batch of one), 4 partitions, "
    "acks=1, fsync never, no consumers. Unlimited rate: latencies include queueing.")
p("## Files\n")
p("`json/NAME.json` holds every figure and the per-second series of each run, `html/NAME.html` its charts, "
  "`logs/` the bench and broker output and the exact commands, `conf/` the broker configs, `limits.json` step 1.")
open(f"{out}/report.md", "w").write("\n".join(L) + "\n")
print(f"wrote {out}/report.md")
PY
log "done in $(( (t_end - t_start) / 60 )) min $(( (t_end - t_start) % 60 )) s: $out/report.md"
