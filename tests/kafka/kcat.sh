#!/usr/bin/env bash
# kcat -L, -P and -C against a Kafka-compatible broker that creates topics
# on first use (`levee serve --auto-create-topics`), as kcat's producer
# expects. Usage: tests/kafka/kcat.sh HOST:PORT
# Exits non-zero with a message naming the step that failed.
set -euo pipefail
broker=${1:?usage: kcat.sh HOST:PORT}
topic=kcat-$$-$RANDOM
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL (kcat): $*" >&2; exit 1; }
k() { timeout 30 kcat -b "$broker" "$@"; }

# -L: the broker lists itself at the address the client used.
k -L -m 10 >"$tmp/md" 2>"$tmp/err" || fail "-L: $(cat "$tmp/err")"
grep -q "broker [0-9]* at $broker" "$tmp/md" || fail "-L does not list $broker: $(cat "$tmp/md")"

# -P: keyed lines with a header, to a topic created by the produce.
seq 1 100 | sed 's/.*/key-&:value &/' >"$tmp/in"
k -P -t "$topic" -K: -H source=kcat -z lz4 <"$tmp/in" 2>"$tmp/err" || fail "-P: $(cat "$tmp/err")"

# -L for the topic: one partition, led by the broker.
k -L -t "$topic" -m 10 >"$tmp/md" 2>"$tmp/err" || fail "-L -t: $(cat "$tmp/err")"
grep -q "topic \"$topic\" with 1 partitions" "$tmp/md" || fail "-L -t: $(cat "$tmp/md")"

# -C from the beginning: every line back, with its key and header.
k -C -t "$topic" -o beginning -e -q -f '%k:%s\n' >"$tmp/out" 2>"$tmp/err" || fail "-C: $(cat "$tmp/err")"
diff -u "$tmp/in" "$tmp/out" >"$tmp/diff" || fail "-C read other records: $(head -20 "$tmp/diff")"
k -C -t "$topic" -o beginning -c 1 -e -q -f '%h|%o|%p\n' >"$tmp/out" 2>"$tmp/err" || fail "-C -f %h: $(cat "$tmp/err")"
[ "$(cat "$tmp/out")" = "source=kcat|0|0" ] || fail "-C header/offset/partition: $(cat "$tmp/out")"

# -C from an offset relative to the end: the last three.
k -C -t "$topic" -o -3 -e -q -f '%s\n' >"$tmp/out" 2>"$tmp/err" || fail "-C -o -3: $(cat "$tmp/err")"
[ "$(tr '\n' ' ' <"$tmp/out")" = "value 98 value 99 value 100 " ] || fail "-C -o -3: $(cat "$tmp/out")"

echo "kcat: OK ($(kcat -V 2>&1 | grep -o -e 'Version [0-9.]*' -e 'librdkafka [0-9.]*' | tr '\n' ' '))"
