#!/usr/bin/env bash
# Same-sitting before/after comparison of two `levee` builds on one host:
# the machine's limits (fio direct I/O, iperf3 loopback) first and last, and
# between them interleaved rounds of `levee bench` against a fresh
# `levee serve --cores 2` per run (2 producers, 1 KiB, 4 partitions, 6 s):
# direct batches without and with a verifying consumer, the per-message
# producer API, and acks=all with and without idempotence (after only).
#
#   benches/before-after.sh BEFORE_BIN AFTER_BIN [SCRATCH_DIR]
#
# SCRATCH_DIR (default /tmp/levee-before-after) holds the broker's data and
# fio's files; the script removes only what it creates there. Report the
# medians of the rounds.
set -euo pipefail
BEFORE=${1:?before binary}
AFTER=${2:?after binary}
DIR=${3:-/tmp/levee-before-after}
ROUNDS=${ROUNDS:-3}
cd "$(dirname "$0")/.."
mkdir -p "$DIR/fio"
benches/disk-limits.sh "$DIR/fio" 1G
iperf3 -s -D -p 5299 >/dev/null 2>&1; sleep 1
iperf3 -c 127.0.0.1 -p 5299 -t 3 -f g | grep receiver || true
pkill -f "iperf3 -s -D -p 5299" || true
run() { # bin label consumers extra...
  local bin=$1 label=$2 cons=$3; shift 3
  rm -rf "$DIR/data"
  "$bin" serve --data-dir "$DIR/data" --cores 2 --listen 127.0.0.1:39292 \
    --kafka-listen none --admin-listen 127.0.0.1:39744 > "$DIR/serve.log" 2>&1 &
  local pid=$!; sleep 1.5
  "$bin" bench --bootstrap 127.0.0.1:39292 --admin 127.0.0.1:39744 --topic bs \
    --partitions 4 --producers 2 --consumers "$cons" --message-size 1024 \
    --duration 6 --warmup 1 "$@" 2>&1 \
    | grep -E "^produce:|ack latency|^verification" | sed "s/^/$label /" || true
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
for round in $(seq 1 "$ROUNDS"); do
  run "$BEFORE" "r$round before direct-noc" 0 --acks 1 --direct-batches
  run "$AFTER"  "r$round after  direct-noc" 0 --acks 1 --direct-batches
  run "$BEFORE" "r$round before direct" 1 --acks 1 --direct-batches
  run "$AFTER"  "r$round after  direct" 1 --acks 1 --direct-batches
  run "$BEFORE" "r$round before permsg" 1 --acks 1
  run "$AFTER"  "r$round after  permsg" 1 --acks 1
done
for round in $(seq 1 "$ROUNDS"); do
  run "$AFTER" "r$round idem-on  all" 1 --acks all
  run "$AFTER" "r$round idem-off all" 1 --acks all --no-idempotence
done
rm -rf "$DIR/data" "$DIR/serve.log"
benches/disk-limits.sh "$DIR/fio" 1G
