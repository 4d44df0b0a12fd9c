#!/usr/bin/env bash
# Runs a selection of librdkafka's own regression tests against a real
# `levee serve`. Not part of `cargo test` (it takes a while); the selection
# and the latest results are in tests/kafka-conformance.md.
#
#   tests/kafka/conformance.sh              # the selection below
#   TESTS_ONLY="0012 0017" tests/kafka/conformance.sh   # some of them
#
# What it does:
#  1. copies librdkafka's source (with its tests/) out of the rdkafka-sys
#     crate (`cargo fetch` brings it) into target/kafka-conformance/ and
#     builds the library and the suite's test-runner there (once; never in
#     the source tree, never committed);
#  2. builds the `levee` binary (cargo build, or $LEVEE_BIN);
#  3. for each selected test: starts `levee serve --auto-create-topics` (or
#     without auto-creation for the tests of the "noautocreate" scenario;
#     a 3-node cluster for the tests that create topics with replication
#     factor 3) on fresh data directories and free ports, with 4 partitions
#     for auto-created topics as librdkafka's scenarios have
#     (num.partitions=4), writes test.conf pointing at it, runs the test
#     with TEST_KAFKA_VERSION=4.0.0 in quick mode (but for one test that
#     only runs in full) under a timeout, stops the broker;
#  4. writes target/kafka-conformance/summary.txt (PASS / FAIL / SKIP per
#     test, with the first failure line) and keeps each test's output and
#     broker log in target/kafka-conformance/logs/.
#
# Needs: make, gcc, g++, zlib, zstd and RapidJSON headers (apt-get install
# build-essential zlib1g-dev libzstd-dev rapidjson-dev; installed here when
# missing and running as root), Python 3.
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
work=$target/kafka-conformance
logs=$work/logs
per_test_timeout=${PER_TEST_TIMEOUT:-240}
kafka_version=${TEST_KAFKA_VERSION:-4.0.0}

# The selection: tests of the features Levee has (produce, consume,
# offsets, consumer groups on the classic protocol, topic admin basics).
# Why the others are left out: tests/kafka-conformance.md.
SELECTED="
0001_multiobj 0002_unkpart 0003_msgmaxsize 0005_order 0007_autotopic
0008_reqacks 0011_produce_batch 0012_produce_consume 0013_null_msgs
0014_reconsume_191 0015_offsets_seek 0017_compression 0018_cgrp_term
0019_list_groups 0020_destroy_hang 0021_rkt_destroy 0022_consume_batch
0026_consume_pause 0029_assign_offset 0030_offset_commit 0031_get_offsets
0033_regex_subscribe 0034_offset_reset 0035_api_version 0036_partial_fetch
0038_performance 0039_event_dr 0040_io_event 0041_fetch_max_bytes
0042_many_topics 0044_partition_cnt 0045_subscribe_update
0045_subscribe_update_topic_remove
0045_subscribe_update_non_exist_and_partchange 0045_resubscribe_with_regex
0045_subscribe_many_updates 0048_partitioner 0050_subscribe_adds
0051_assign_adds 0053_stats 0054_offset_time 0055_producer_latency
0056_balanced_group_mt 0057_invalid_topic 0059_bsearch 0060_op_prio
0061_consumer_lag 0063_clusterid 0064_interceptors 0065_yield
0067_empty_topic 0069_consumer_add_parts 0070_null_empty 0073_headers
0081_admin 0082_fetch_max_bytes 0083_cb_event 0084_destroy_flags
0085_headers 0086_purge_remote 0089_max_poll_interval 0090_idempotence
0091_max_poll_interval_timeout 0093_holb_consumer 0099_commit_metadata
0102_static_group_rebalance 0107_topic_recreate 0109_auto_create_topics
0110_batch_size 0111_delay_create_topics 0112_assign_unknown_part
0113_cooperative_rebalance 0114_sticky_partitioning 0118_commit_rebalance
0122_buffer_cleaning_after_rebalance 0123_connections_max_idle 0125_immediate_flush
0127_fetch_queue_backoff 0130_store_offsets 0132_strategy_ordering
0137_barrier_batch_consume 0140_commit_metadata 0153_memberid
0103_transactions 0129_fetch_aborted_msgs 0094_idempotence_msg_timeout
"
# Tests that skip themselves in quick mode: run in full.
NOT_QUICK="0082_fetch_max_bytes"
# Socket-emulation tests (client-side network faults, librdkafka's sockem)
# that apply to the broker: run without -E.
SOCKEM="0094_idempotence_msg_timeout"
# Tests of librdkafka's "noautocreate" scenario: the broker must not create
# topics on Metadata or Produce.
# Tests that create topics with replication factor 3 (librdkafka's
# scenarios are 3-broker clusters): run against a 3-node Levee cluster.
CLUSTER="0107_topic_recreate 0111_delay_create_topics 0103_transactions"
NOAUTOCREATE="0045_subscribe_update_topic_remove
0045_subscribe_update_non_exist_and_partchange 0107_topic_recreate
0111_delay_create_topics"

mkdir -p "$work" "$logs"

# --- 1. librdkafka and its test-runner ---------------------------------
rdver=$(grep -A1 '^name = "rdkafka-sys"' "$root/Cargo.lock" | sed -n 's/^version = "\(.*\)"/\1/p')
[ -n "$rdver" ] || { echo "conformance.sh: rdkafka-sys is not in Cargo.lock" >&2; exit 1; }
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"rdkafka-sys-$rdver"/librdkafka 2>/dev/null | head -1)
if [ -z "$src" ]; then
  (cd "$root" && cargo fetch -q)
  src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"rdkafka-sys-$rdver"/librdkafka | head -1)
fi
build=$work/librdkafka-$rdver
runner=$build/tests/test-runner
# (Rebuilt when an earlier build lacked RapidJSON, which two tests need.)
if [ ! -x "$runner" ] || ! grep -q "WITH_RAPIDJSON 1" "$build/config.h"; then
  missing=()
  for h in zlib.h zstd.h rapidjson/schema.h; do [ -e "/usr/include/$h" ] || missing+=("$h"); done
  if [ ${#missing[@]} -gt 0 ] || ! command -v g++ >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
      echo "conformance.sh: installing build dependencies (apt-get)"
      DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential zlib1g-dev libzstd-dev rapidjson-dev >/dev/null
    else
      echo "conformance.sh: needs build-essential zlib1g-dev libzstd-dev rapidjson-dev" >&2
      exit 1
    fi
  fi
  echo "conformance.sh: building librdkafka $rdver and its test-runner in $build (a few minutes)"
  rm -rf "$build"
  cp -a "$src" "$build"
  chmod -R u+w "$build"
  (
    cd "$build" &&
      ./configure --disable-ssl --disable-gssapi --disable-curl \
        --enable-zstd --enable-zlib >"$work/configure.log" 2>&1 &&
      make -j"$(nproc)" -C src >"$work/build.log" 2>&1 &&
      make -j"$(nproc)" -C src-cpp >>"$work/build.log" 2>&1 &&
      make -j"$(nproc)" -C tests test-runner >>"$work/build.log" 2>&1
  ) || { echo "conformance.sh: build failed, see $work/configure.log and $work/build.log" >&2; exit 1; }
fi

# --- 2. levee ------------------------------------------------------------
if [ -z "${LEVEE_BIN:-}" ]; then
  (cd "$root" && cargo build -q -p levee-cli --bin levee) || exit 1
  LEVEE_BIN=$target/debug/levee
fi

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_brokers NAME NODES [--auto-create-topics]: starts one node, or a
# cluster of NODES nodes each a coordinator, on fresh data directories;
# sets $pids, $datas and $bootstrap (the Kafka addresses).
start_brokers() {
  local name=$1 nodes=$2 auto=${3:-} i coords="" args
  local -a kports nports cports
  pids=() datas=() bootstrap=""
  for i in $(seq "$nodes"); do
    kports[i]=$(free_port) nports[i]=$(free_port) cports[i]=$(free_port)
    coords+="${coords:+,}$i@127.0.0.1:${cports[i]}"
  done
  for i in $(seq "$nodes"); do
    datas+=("$(mktemp -d "$work/data-$name-$i-XXXX")")
    args=()
    [ "$nodes" -gt 1 ] && args=(--node-id "$i" --coordinators "$coords" --cores 1)
    "$LEVEE_BIN" serve --config "$work/levee.toml" --data-dir "${datas[-1]}" \
      --listen "127.0.0.1:${nports[i]}" --kafka-listen "127.0.0.1:${kports[i]}" \
      --admin-listen "" $auto "${args[@]}" >"$logs/$name.broker$i.log" 2>&1 &
    pids+=($!)
    bootstrap+="${bootstrap:+,}127.0.0.1:${kports[i]}"
  done
  for i in $(seq "$nodes"); do
    for _ in $(seq 100); do
      (exec 3<>"/dev/tcp/127.0.0.1/${kports[i]}") 2>/dev/null && break
      sleep 0.1
    done
  done
  if [ "$nodes" -gt 1 ]; then
    local native="" status=""
    for i in $(seq "$nodes"); do native+="${native:+,}127.0.0.1:${nports[i]}"; done
    for _ in $(seq 150); do
      status=$(LEVEE_BOOTSTRAP=$native "$LEVEE_BIN" cluster status 2>&1)
      if echo "$status" | grep -q "leader: node" && [ "$(echo "$status" | grep -c live)" -ge "$nodes" ]; then
        break
      fi
      sleep 0.2
    done
  fi
}

stop_brokers() {
  kill "${pids[@]}" 2>/dev/null
  wait "${pids[@]}" 2>/dev/null
  rm -rf "${datas[@]}"
}

# --- 3. run --------------------------------------------------------------
# librdkafka's test scenarios run brokers whose auto-created topics get 4
# partitions (Kafka's num.partitions); Levee's equivalent:
cat >"$work/levee.toml" <<EOF
[log]
default_partitions = 4
EOF
tests=${TESTS_ONLY:-$SELECTED}
summary=$work/summary.txt
: >"$summary"
pass=0 fail=0 skip=0
for t in $tests; do
  # TESTS_ONLY may name a test by number alone.
  name=$(echo "$SELECTED" | tr ' ' '\n' | grep -m1 "^$t" || echo "$t")
  auto=--auto-create-topics scenario=default nodes=1 quick=-Q nosockem=-E
  if echo "$SOCKEM" | grep -qw "$name"; then nosockem=; fi
  if echo "$NOAUTOCREATE" | grep -qw "$name"; then auto= scenario=noautocreate; fi
  if echo "$CLUSTER" | grep -qw "$name"; then nodes=3; fi
  if echo "$NOT_QUICK" | grep -qw "$name"; then quick=; fi
  start_brokers "$name" "$nodes" $auto
  cat >"$build/tests/test.conf" <<EOF
metadata.broker.list=$bootstrap
test.timeout.multiplier=2
EOF
  {
    (
      cd "$build/tests" &&
        LD_LIBRARY_PATH=../src:../src-cpp TESTS=$name TEST_KAFKA_VERSION=$kafka_version \
          TEST_SCENARIO=$scenario TEST_LEVEL=2 timeout "$per_test_timeout" ./test-runner $quick $nosockem -L -p1
    ) >"$logs/$name.log" 2>&1
    rc=$?
  } 2>/dev/null
  stop_brokers
  log=$logs/$name.log
  plain=$logs/$name.txt
  sed 's/\x1b\[[0-9;]*m//g' "$log" >"$plain"
  # The runner's summary table: "| <name> | PASSED | 2.0s |".
  row=$(grep -m1 -E "^\| +$name +\|" "$plain" || grep -m1 -E "^\| +$name[^ |]* +\|" "$plain")
  state=$(echo "$row" | awk -F'|' '{gsub(/ /,"",$3); print $3}')
  # A failure: the "### Test ... failed at FILE:LINE:FUNC() ..." line and
  # the message after it.
  first_failure=$(grep -m1 -A1 '^### Test ".*" failed at' "$plain" | sed 's/ at [A-Z][a-z][a-z] [A-Z].*###$//' | tr '\n' ' ' | cut -c1-400)
  if [ $rc = 124 ]; then
    result=FAIL why="timed out after ${per_test_timeout}s; ${first_failure:-$(tail -1 "$plain" | cut -c1-200)}"
  elif [ "$state" = SKIPPED ]; then
    result=SKIP why=$(echo "$row" | awk -F'|' '{print $5}' | sed 's/^ *//' | cut -c1-200)
  elif [ "$state" = PASSED ] && [ $rc = 0 ]; then
    result=PASS why=
  else
    result=FAIL why="${first_failure:-exit $rc: $(tail -1 "$plain" | cut -c1-200)}"
  fi
  case $result in PASS) pass=$((pass + 1)) ;; FAIL) fail=$((fail + 1)) ;; SKIP) skip=$((skip + 1)) ;; esac
  printf '%-50s %s %s\n' "$name" "$result" "$why" | tee -a "$summary"
done
echo "passed $pass, failed $fail, skipped $skip (TEST_KAFKA_VERSION=$kafka_version); logs in $logs" | tee -a "$summary"
[ "$fail" = 0 ]
