#!/usr/bin/env bash
# Measures the disk's direct-I/O limits with fio, for comparison with Levee's
# own figures taken in the same sitting.
#   benches/disk-limits.sh [DIR] [SIZE]
# DIR must be on the disk that holds the data directory (default: target/tmp).
set -euo pipefail
dir=${1:-"$(dirname "$0")/../target/tmp/fio"}
size=${2:-1G}
# Only what this script makes is removed afterwards: its fio job files, and
# the directory if it did not exist before (never a directory it was given
# that holds anything else).
made_dir=
[ -d "$dir" ] || made_dir=1
mkdir -p "$dir"
if ! command -v fio >/dev/null; then
  echo "fio is missing: installing it (Debian package fio)" >&2
  (apt-get install -y fio || (apt-get update && apt-get install -y fio)) >/dev/null
fi
run() { fio --name=levee --directory="$dir" --size="$size" --ioengine=io_uring --direct=1 \
            --output-format=json "$@" 2>/dev/null; }
mibs() { python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; print(round(j[sys.argv[1]]["bw_bytes"]/1048576,1))' "$1"; }
w=$(run --rw=write --bs=1M --iodepth=8 --end_fsync=1 | mibs write)
r=$(run --rw=read --bs=1M --iodepth=8 | mibs read)
s=$(run --rw=write --bs=4k --size=16M --iodepth=1 --fdatasync=1 --ioengine=sync \
    | python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]["sync"]["lat_ns"]["percentile"]; print(round(j["50.000000"]/1e6,2), round(j["99.000000"]/1e6,2))')
rm -f "$dir"/levee.[0-9]*.[0-9]*
[ -z "$made_dir" ] || rmdir "$dir" 2>/dev/null || true
echo "fio direct sequential write 1 MiB QD8: $w MiB/s"
echo "fio direct sequential read  1 MiB QD8: $r MiB/s"
echo "fio fdatasync latency 4 KiB writes (p50 p99 ms): $s"
