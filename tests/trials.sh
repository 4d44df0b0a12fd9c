#!/usr/bin/env bash
# The long run of the seeded fault trials (issue 19), unattended: COUNT
# trials (default 1000) from seed SEED (default 10000) in LANES parallel
# lanes (default 2; each lane runs its own 3-node cluster), against a
# release build of the broker. Each lane's output goes to OUT/lane-N.log
# (default OUT=target/trials); at the end (or with SUMMARY_ONLY=1, from the
# logs already there) it prints and writes OUT/summary.txt: trials, the
# faults by kind, acknowledged records, lost / duplicated / divergent /
# group commits lost, failing seeds with the command that replays each, and
# the time to a full ISR after a fault (p50, p99).
#
#   tests/trials.sh                        1000 trials, 2 lanes
#   COUNT=100 LANES=3 tests/trials.sh      a shorter run
#   LEVEE_BIN=/tmp/levee tests/trials.sh   against that broker binary
#
# The full-disk fault needs root and loop devices (see tests/trials.rs).
# A failing trial keeps its brokers' logs and replicas in
# /tmp/levee-trial-SEED-node*.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-1000}
SEED=${SEED:-10000}
LANES=${LANES:-2}
OUT=${OUT:-target/trials}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

if [ -z "${SUMMARY_ONLY:-}" ]; then
  # LEVEE_BIN picks a broker binary built elsewhere (say, a copy of the
  # commit under test, so that rebuilding the tree does not change it midway).
  if [ -z "${LEVEE_BIN:-}" ]; then
    cargo build -q --release -p levee-cli --bin levee
    LEVEE_BIN=$PWD/target/release/levee
  fi
  cargo test -q -p levee-cli --test trials --no-run
  per=$(((COUNT + LANES - 1) / LANES))
  pids=()
  for lane in $(seq 0 $((LANES - 1))); do
    first=$((SEED + lane * per))
    n=$((COUNT - lane * per < per ? COUNT - lane * per : per))
    [ "$n" -le 0 ] && continue
    # Ports of their own per lane (14000-19999 split, below the range other
    # tests pick from), so that two lanes, or a lane and another test
    # run, never pick the same one.
    span=$((6000 / LANES))
    ports="$((14000 + lane * span))-$((14000 + (lane + 1) * span - 1))"
    LEVEE_TEST_PORTS=$ports LEVEE_BIN=$LEVEE_BIN TRIAL_SEED=$first TRIALS=$n \
      cargo test -q -p levee-cli --test trials seeded -- --nocapture \
      >"$OUT/lane-$lane.log" 2>&1 &
    pids+=($!)
    echo "lane $lane: seeds $first..$((first + n - 1)) -> $OUT/lane-$lane.log"
  done
  for p in "${pids[@]}"; do wait "$p" || true; done
fi

python3 - "$OUT" <<'PY' | tee "$OUT/summary.txt"
import glob, re, sys, collections
out = sys.argv[1]
trials, failed = 0, []
faults = collections.Counter()
tot = collections.Counter()
recover = []
for f in sorted(glob.glob(f"{out}/lane-*.log")):
    for line in open(f, errors="replace"):
        m = re.match(r"trial (\d+) \(fsync (\w+)\)(:? ok| FAILED)(.*)", line)
        if not m:
            continue
        trials += 1
        seed, rest = int(m.group(1)), m.group(4)
        if m.group(3).strip() == "FAILED":
            failed.append((seed, rest.strip()[:300]))
        o = re.search(r"Outcome \{ faults: \{(.*?)\}, acked: (\d+), lost: (\d+), duplicated: (\d+), commits_lost: (\d+), commits: (\d+), divergent: (\d+), recover_ms: \[(.*?)\]", rest)
        if not o:
            continue
        for k, v in re.findall(r'"([^"]+)": (\d+)', o.group(1)):
            faults[k] += int(v)
        for i, k in enumerate(["acked", "lost", "duplicated", "commits_lost", "commits", "divergent"], start=2):
            tot[k] += int(o.group(i))
        recover += [int(x) for x in o.group(8).split(",") if x.strip()]
recover.sort()
def pct(q):
    return recover[min(len(recover) - 1, int(q * len(recover)))] if recover else 0
print(f"trials: {trials}, failed: {len(failed)}")
print("faults: " + ", ".join(f"{k} {v}" for k, v in sorted(faults.items())))
print(f"acknowledged records: {tot['acked']}; lost {tot['lost']}, duplicated {tot['duplicated']}, divergent {tot['divergent']}; group commits {tot['commits']}, lost {tot['commits_lost']}")
print(f"time to a full ISR after a fault: p50 {pct(0.5)} ms, p99 {pct(0.99)} ms ({len(recover)} faults)")
for seed, why in failed:
    print(f"FAILED seed {seed}: {why}")
    print(f"  replay: LEVEE_BIN=$PWD/target/release/levee TRIAL_SEED={seed} TRIALS=1 cargo test -p levee-cli --test trials seeded -- --nocapture")
PY
