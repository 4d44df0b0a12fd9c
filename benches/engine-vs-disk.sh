#!/usr/bin/env bash
# The engine's append and read throughput next to the disk's direct-I/O
# limits, as ratios. fio and the engine benchmarks alternate ROUNDS times
# (default 3): fio, engine, fio, engine, ..., fio. Each engine figure is
# divided by the mean of the fio runs just before and just after it, and the
# script prints the median of those ratios with their range, because on a
# shared host the disk's bandwidth moves by 2x within minutes.
#   ROUNDS=3 benches/engine-vs-disk.sh          (about 4 minutes per round)
#   FILTER='append/fsync_never' benches/engine-vs-disk.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
filter=${FILTER:-'append|read'}
out=target/engine-vs-disk
rm -rf "$out" && mkdir -p "$out"
cargo bench -p levee-engine --bench engine --no-run >/dev/null 2>&1
for i in $(seq 1 "$rounds"); do
  benches/disk-limits.sh > "$out/fio-$i.txt"
  sed 's/^/  /' "$out/fio-$i.txt"
  cargo bench -p levee-engine --bench engine -- "$filter" > "$out/engine-$i.log" 2>&1
  grep -E '^(append|read)/|thrpt:' "$out/engine-$i.log" | grep -v '%' | sed 's/^/  /' || true
done
benches/disk-limits.sh > "$out/fio-$((rounds + 1)).txt"
sed 's/^/  /' "$out/fio-$((rounds + 1)).txt"
python3 - "$out" "$rounds" <<'PY'
import re, sys, statistics
out, rounds = sys.argv[1], int(sys.argv[2])
def fio(i):
    t = open(f"{out}/fio-{i}.txt").read()
    return (float(re.search(r"write 1 MiB QD8: ([\d.]+)", t).group(1)),
            float(re.search(r"read  1 MiB QD8: ([\d.]+)", t).group(1)))
def engine(i):
    res, name = {}, None
    for line in open(f"{out}/engine-{i}.log"):
        m = re.match(r"^((append|read)/\S+)", line)
        if m:
            name = m.group(1)
        m = re.search(r"thrpt:\s+\[\S+ \S+ ([\d.]+) (MiB|GiB)/s", line)
        if m and name and "%" not in line:
            res[name] = float(m.group(1)) * (1024 if m.group(2) == "GiB" else 1)
            name = None
    return res
limits = [fio(i) for i in range(1, rounds + 2)]
runs = [engine(i) for i in range(1, rounds + 1)]
print(f"\nfio write MiB/s: {[round(l[0]) for l in limits]}   read: {[round(l[1]) for l in limits]}")
print(f"{'benchmark':34s} {'median MiB/s':>12s} {'median ratio':>12s}  range of ratios")
for name in sorted({n for r in runs for n in r}):
    k = 0 if name.startswith("append") else 1
    vals, ratios = [], []
    for i, r in enumerate(runs):
        if name in r:
            lim = (limits[i][k] + limits[i + 1][k]) / 2
            vals.append(r[name]); ratios.append(r[name] / lim)
    print(f"{name:34s} {statistics.median(vals):12.0f} {statistics.median(ratios):12.1%}  "
          f"{min(ratios):.0%}..{max(ratios):.0%} of fio {'write' if k == 0 else 'read'}")
PY
