#!/usr/bin/env bash
# Installs what the Kafka-compatibility tests need beyond the Rust toolchain:
# kcat (Debian package) and pinned Python Kafka clients (pip). Idempotent
# and quiet: when everything is already there it only checks and returns.
# Run as root (or with sudo available) on Debian 12; .ci/run calls it.
#
# librdkafka itself needs nothing here: the rdkafka crate builds the copy
# vendored in rdkafka-sys with ./configure and make (no cmake, no system
# librdkafka).
set -euo pipefail

# Pinned versions (checked on Debian 12 with Python 3.11). The compression
# modules let kafka-python produce and read every codec.
PIP_PACKAGES=(
  "confluent-kafka==2.16.1"
  "kafka-python==3.0.12"
  "lz4==4.4.5"
  "python-snappy==0.7.3"
  "zstandard==0.25.0"
)
PYTHON=${PYTHON:-python3}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v kcat >/dev/null 2>&1; then
  echo "setup.sh: installing kcat (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq >/dev/null
  as_root apt-get install -y -qq kcat >/dev/null
fi

# Every pinned package present at its pinned version?
missing=$("$PYTHON" - "${PIP_PACKAGES[@]}" <<'PY'
import sys
from importlib.metadata import version, PackageNotFoundError
out = []
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    try:
        have = version(name)
    except PackageNotFoundError:
        have = None
    if have != want:
        out.append(spec)
print(" ".join(out))
PY
)
if [ -n "$missing" ]; then
  echo "setup.sh: installing $missing (pip)"
  # Debian's own Python refuses pip installs outside a venv (PEP 668);
  # this is a CI machine dedicated to the tests, so install anyway.
  # shellcheck disable=SC2086
  PIP_BREAK_SYSTEM_PACKAGES=1 "$PYTHON" -m pip install -q --disable-pip-version-check $missing
fi

# kafka-python 2.x beside 3.x: its own directory, put first on PYTHONPATH
# by the test that runs it (tests/kafka_tools.rs).
KAFKA_PYTHON2=${LEVEE_KAFKA_PYTHON2_DIR:-/opt/levee-test-clients/kafka-python-2.3.3}
if [ "$(PYTHONPATH="$KAFKA_PYTHON2" "$PYTHON" -c 'import kafka; print(kafka.__version__)' 2>/dev/null)" != "2.3.3" ]; then
  echo "setup.sh: installing kafka-python==2.3.3 into $KAFKA_PYTHON2 (pip)"
  as_root mkdir -p "$KAFKA_PYTHON2"
  PIP_BREAK_SYSTEM_PACKAGES=1 as_root "$PYTHON" -m pip install -q --disable-pip-version-check --root-user-action=ignore \
    --no-deps --upgrade --target "$KAFKA_PYTHON2" "kafka-python==2.3.3"
fi

# What the tests will use, or a clear failure now.
command -v kcat >/dev/null || { echo "setup.sh: kcat is still missing" >&2; exit 1; }
"$PYTHON" -c 'import confluent_kafka, kafka, lz4, snappy, zstandard' \
  || { echo "setup.sh: a Python Kafka module does not import" >&2; exit 1; }
[ "$(PYTHONPATH="$KAFKA_PYTHON2" "$PYTHON" -c 'import kafka; print(kafka.__version__)')" = "2.3.3" ] \
  || { echo "setup.sh: kafka-python 2.3.3 does not import from $KAFKA_PYTHON2" >&2; exit 1; }
