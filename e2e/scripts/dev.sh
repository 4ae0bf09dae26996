#!/usr/bin/env bash
# Run the whole Tally stack locally (what `make dev` runs):
#
#   nats-server (JetStream) -> ClickHouse -> tally-processor -> tally-collector, tally-query
#
# A thin entry point: installs the pinned servers into the cache
# (install-servers.sh), builds the release binaries, then runs tally-dev
# (e2e/src/dev.rs), which starts everything through the e2e harness
# (tally_e2e::Stack) bound to 127.0.0.1 with the resources in examples/, prints
# what to curl, and runs until Ctrl-C; then it stops the services in reverse
# order and exits 0.
#
# Usage: e2e/scripts/dev.sh [--no-build] [--reset] [--help]
#   --no-build   use the binaries already in $CARGO_TARGET_DIR/release
#   --reset      delete the data directory first (fresh NATS stream and ClickHouse)
#   --help       every option and environment variable (tally-dev --help)
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

build=1
help=0
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    -h | --help) help=1 ;;
  esac
done

command -v cargo >/dev/null || die "cargo not found (install Rust with rustup)"
cd "$TALLY_ROOT"
DEV_BIN="$CARGO_TARGET_DIR/release/tally-dev"
if ((help)); then
  # The help needs no servers, only the program.
  [[ -x "$DEV_BIN" ]] || cargo build --release --quiet -p tally-e2e --bin tally-dev
  exec "$DEV_BIN" "$@"
fi

"$TALLY_SCRIPTS/install-servers.sh"
# shellcheck disable=SC1090
source "$TALLY_SERVERS_ENV"

if ((build)); then
  log "building tally-collector, tally-processor, tally-query and tally-dev (release)"
  cargo build --release -p tally-collector -p tally-processor -p tally-query -p tally-e2e \
    --bin tally-collector --bin tally-processor --bin tally-query --bin tally-dev
fi
[[ -x "$DEV_BIN" ]] || die "$DEV_BIN is missing; run without --no-build"
exec "$DEV_BIN" "$@"
