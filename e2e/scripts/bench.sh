#!/usr/bin/env bash
# Benchmark Tally on this machine (what `make bench` runs): installs the pinned
# servers (install-servers.sh), builds the release binaries, then runs
# tally-bench (the bench/ crate), which starts its own stack through the e2e
# harness the way `make dev` does (real nats-server and ClickHouse, release
# collector and processor, on free loopback ports), measures, prints a table,
# writes a JSON report, and stops every process it started.
# docs/performance.md explains the figures.
#
# Usage: e2e/scripts/bench.sh [tally-bench options]
#   --quick            smaller sizes, shorter runs (a smoke run of a few minutes)
#   --target URL       measure a running stack instead (e.g. http://127.0.0.1:8080
#                      of `make dev`; with --nats-url, --clickhouse-url, --config)
#   --out PATH         the JSON report [$CARGO_TARGET_DIR/bench/tally-bench-<time>.json]
#   --phases LIST      some of baseline,single,batch,overload,e2e,reads,isolation
#   --help             every option of tally-bench
#
# Environment: TALLY_CACHE, CARGO_TARGET_DIR (see lib.sh).
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

"$TALLY_SCRIPTS/install-servers.sh"
# shellcheck disable=SC1090
source "$TALLY_SERVERS_ENV"

command -v cargo >/dev/null || die "cargo not found (install Rust with rustup)"
cd "$TALLY_ROOT"
log "building tally-collector, tally-processor, tally-query, tally-import and tally-bench (release)"
cargo build --release -p tally-collector -p tally-processor -p tally-query -p tally-import -p tally-bench --bins
log "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
exec "$CARGO_TARGET_DIR/release/tally-bench" "$@"
