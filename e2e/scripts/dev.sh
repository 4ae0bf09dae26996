#!/usr/bin/env bash
# Run the whole Tally stack locally (what `make dev` runs):
#
#   nats-server (JetStream) -> ClickHouse -> tally-processor -> tally-collector
#
# Installs the pinned servers into the cache (install-servers.sh), builds the
# release binaries, starts everything bound to 127.0.0.1 with the resources in
# examples/, waits until each answers, prints what to curl, and runs until
# Ctrl-C. Ctrl-C (or SIGTERM, SIGHUP) stops the services in reverse order and exits 0.
# If a service dies on its own, its log tail is printed and the script exits 1.
#
# Usage: e2e/scripts/dev.sh [--no-build] [--reset] [--help]
#   --no-build   use the binaries already in $CARGO_TARGET_DIR/release
#   --reset      delete the data directory first (fresh NATS stream and ClickHouse)
#
# Environment (defaults in brackets):
#   SITE                 site id used in the printed examples [shop]
#   NATS_PORT            NATS client port [4222]
#   NATS_MONITOR_PORT    NATS monitoring port (/healthz) [8222]
#   CLICKHOUSE_HTTP_PORT ClickHouse HTTP port [8123]
#   CLICKHOUSE_TCP_PORT  ClickHouse native TCP port [9000]
#   PROCESSOR_PORT       processor health/metrics port [9091]
#   COLLECTOR_PORT       collector HTTP port [8080]
#   TALLY_DEV_DIR        data directory [$TALLY_CACHE/dev]; logs in its logs/
#   TALLY_CONFIG         resources the services read [examples/]
#   RUST_LOG             log filter for the Tally services [info]
#   TALLY_CACHE, CARGO_TARGET_DIR  see lib.sh [~/.cache/tally, $TALLY_CACHE/cargo-target]
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SITE="${SITE:-shop}"
NATS_PORT="${NATS_PORT:-4222}"
NATS_MONITOR_PORT="${NATS_MONITOR_PORT:-8222}"
CLICKHOUSE_HTTP_PORT="${CLICKHOUSE_HTTP_PORT:-8123}"
CLICKHOUSE_TCP_PORT="${CLICKHOUSE_TCP_PORT:-9000}"
PROCESSOR_PORT="${PROCESSOR_PORT:-9091}"
COLLECTOR_PORT="${COLLECTOR_PORT:-8080}"
DEV_DIR="${TALLY_DEV_DIR:-$TALLY_CACHE/dev}"
CONFIG="${TALLY_CONFIG:-$TALLY_ROOT/examples/}"
LOG_DIR="$DEV_DIR/logs"
export RUST_LOG="${RUST_LOG:-info}"
STARTUP_TIMEOUT=60 # seconds each service gets to become ready
STOP_TIMEOUT=20    # seconds each service gets to stop before SIGKILL

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

build=1
reset=0
for arg in "$@"; do
  case "$arg" in
    -h | --help) usage; exit 0 ;;
    --no-build) build=0 ;;
    --reset) reset=1 ;;
    *) usage >&2; exit 2 ;;
  esac
done

# --- services: started in order, stopped in reverse ------------------------
NAMES=()
PIDS=()
stopping=0

# start NAME CMD... — run CMD in the background, output to $LOG_DIR/NAME.log.
# setsid puts it in its own process group, so the terminal's Ctrl-C reaches
# only this script, which then stops the services one by one.
start() {
  local name="$1"
  shift
  log "starting $name (log: $LOG_DIR/$name.log)"
  setsid "$@" >"$LOG_DIR/$name.log" 2>&1 </dev/null &
  NAMES+=("$name")
  PIDS+=("$!")
}

log_tail() {
  local name="$1"
  echo "----- last lines of $LOG_DIR/$name.log -----" >&2
  tail -n 40 "$LOG_DIR/$name.log" >&2 || true
  echo "-----" >&2
}

stop_all() {
  local i pid name
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid="${PIDS[$i]}"
    name="${NAMES[$i]}"
    kill -0 "$pid" 2>/dev/null || continue
    log "stopping $name"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name did not stop within ${STOP_TIMEOUT}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
}

on_signal() {
  ((stopping)) && return
  stopping=1
  echo >&2
  log "stopping ($1)"
  stop_all
  log "stopped; data kept in $DEV_DIR"
  exit 0
}

# fail NAME WHAT — a service failed: show its log, stop the rest, exit 1.
fail() {
  stopping=1
  log "error: $1 $2"
  log_tail "$1"
  stop_all
  exit 1
}

trap 'on_signal Ctrl-C' INT
trap 'on_signal SIGTERM' TERM
trap 'on_signal SIGHUP' HUP
trap 'stopping=1; stop_all' EXIT

# await NAME URL — wait until URL answers 2xx while the last started service lives.
await() {
  local name="$1" url="$2" pid="${PIDS[-1]}"
  if ! wait_for_http "$url" "$STARTUP_TIMEOUT" "$pid"; then
    if kill -0 "$pid" 2>/dev/null; then
      fail "$name" "did not answer $url within ${STARTUP_TIMEOUT}s"
    fi
    fail "$name" "exited during startup"
  fi
  log "$name ready"
}

# --- preflight ---------------------------------------------------------------
for var in NATS_PORT NATS_MONITOR_PORT CLICKHOUSE_HTTP_PORT CLICKHOUSE_TCP_PORT PROCESSOR_PORT COLLECTOR_PORT; do
  if port_in_use "${!var}"; then
    die "port ${!var} ($var) is already in use on 127.0.0.1; stop what holds it or set $var"
  fi
done
[[ -e "$CONFIG" ]] || die "no resources at $CONFIG (set TALLY_CONFIG)"

"$TALLY_SCRIPTS/install-servers.sh"
# shellcheck disable=SC1090
source "$TALLY_SERVERS_ENV"

if ((build)); then
  log "building tally-collector and tally-processor (release)"
  (cd "$TALLY_ROOT" && cargo build --release -p tally-collector -p tally-processor)
fi
COLLECTOR_BIN="$CARGO_TARGET_DIR/release/tally-collector"
PROCESSOR_BIN="$CARGO_TARGET_DIR/release/tally-processor"
for bin in "$COLLECTOR_BIN" "$PROCESSOR_BIN"; do
  [[ -x "$bin" ]] || die "$bin is missing; run without --no-build"
done

if ((reset)); then
  log "deleting $DEV_DIR"
  rm -rf "$DEV_DIR"
fi
mkdir -p "$DEV_DIR/nats" "$DEV_DIR/clickhouse" "$LOG_DIR"
cd "$TALLY_ROOT"

# --- start -------------------------------------------------------------------
start nats "$TALLY_NATS_SERVER" -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MONITOR_PORT" \
  -js -sd "$DEV_DIR/nats"
await nats "http://127.0.0.1:$NATS_MONITOR_PORT/healthz?js-enabled-only=true"

start clickhouse "$TALLY_CLICKHOUSE_SERVER" --data-dir "$DEV_DIR/clickhouse" \
  --http-port "$CLICKHOUSE_HTTP_PORT" --tcp-port "$CLICKHOUSE_TCP_PORT"
await clickhouse "http://127.0.0.1:$CLICKHOUSE_HTTP_PORT/ping"

NATS_URL="nats://127.0.0.1:$NATS_PORT"
CLICKHOUSE_URL="http://127.0.0.1:$CLICKHOUSE_HTTP_PORT"

start processor "$PROCESSOR_BIN" --config "$CONFIG" --nats-url "$NATS_URL" \
  --clickhouse-url "$CLICKHOUSE_URL" --listen "127.0.0.1:$PROCESSOR_PORT"
await processor "http://127.0.0.1:$PROCESSOR_PORT/readyz"

start collector "$COLLECTOR_BIN" --config "$CONFIG" --nats-url "$NATS_URL" \
  --clickhouse-url "$CLICKHOUSE_URL" --listen "127.0.0.1:$COLLECTOR_PORT"
await collector "http://127.0.0.1:$COLLECTOR_PORT/readyz"

C="http://127.0.0.1:$COLLECTOR_PORT"
cat <<EOF

Tally is running.
  collector   $C
  processor   http://127.0.0.1:$PROCESSOR_PORT/metrics
  NATS        $NATS_URL   (monitoring http://127.0.0.1:$NATS_MONITOR_PORT)
  ClickHouse  $CLICKHOUSE_URL   (native tcp 127.0.0.1:$CLICKHOUSE_TCP_PORT)
  data        $DEV_DIR
  logs        $LOG_DIR/{nats,clickhouse,processor,collector}.log
              follow them with: tail -F $LOG_DIR/*.log

Send an event:
  curl -i -X POST $C/v1/events -H 'content-type: application/json' \\
    -d '{"site_id":"$SITE","type":"page_view","url":"https://$SITE.example/","path":"/"}'

Today's stats:
  curl -sS "$C/v1/stats?site_id=$SITE&date=$(date -u +%F)"

SQL:
  curl -sS $CLICKHOUSE_URL/ --data-binary 'SHOW DATABASES'

Press Ctrl-C to stop.
EOF

# --- supervise ---------------------------------------------------------------
while true; do
  for i in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
      rc=0
      wait "${PIDS[$i]}" || rc=$?
      fail "${NAMES[$i]}" "exited unexpectedly (exit code $rc)"
    fi
  done
  # A background sleep keeps the signal traps responsive.
  sleep 1 &
  wait $! || true
done
