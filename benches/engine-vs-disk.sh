#!/usr/bin/env bash
# The engine's append and read throughput next to the disk's direct-I/O
# limits, measured in the same sitting, as ratios.
#   benches/engine-vs-disk.sh            (takes about 4 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
limits=$(benches/disk-limits.sh)
echo "$limits"
cargo bench -p levee-engine --bench engine -- 'append|read' 2>&1 | tee target/engine-bench.log \
  | grep -E '^(append|read)/|thrpt:' | grep -v '%' || true
python3 - "$limits" <<'PY'
import re, sys
limits = sys.argv[1]
w = float(re.search(r"write 1 MiB QD8: ([\d.]+)", limits).group(1))
r = float(re.search(r"read  1 MiB QD8: ([\d.]+)", limits).group(1))
name = None
for line in open("target/engine-bench.log"):
    m = re.match(r"^((append|read)/\S+)", line)
    if m:
        name = m.group(1)
    m = re.search(r"thrpt:\s+\[\S+ \S+ ([\d.]+) (MiB|GiB)/s", line)
    if m and name and "%" not in line:
        v = float(m.group(1)) * (1024 if m.group(2) == "GiB" else 1)
        lim = w if name.startswith("append") else r
        print(f"{name:32s} {v:8.0f} MiB/s  = {v / lim:5.1%} of fio {'write' if lim == w else 'read'} {lim:.0f} MiB/s")
        name = None
PY
