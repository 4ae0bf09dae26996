#!/usr/bin/env bash
# The test suite (what `make test` and CI run): installs the pinned servers (with the
# Jaeger trace backend, built from the Go module proxy by install-jaeger.sh) and
# builds the pinned Kubernetes control plane (k8s-build.sh),
# exports TALLY_NATS_SERVER, TALLY_CLICKHOUSE_SERVER and TALLY_JAEGER (from servers.env) for
# the tests that start real servers, checks the Helm chart, fuzzes the collector's parsing
# for TALLY_FUZZ_SECONDS (60; fuzz.sh), builds the binaries the e2e tests run, then runs
#   cargo test --workspace --locked [ARGS...]
# Extra arguments go to cargo test, e.g. `e2e/scripts/test.sh -p tally-processor`.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

"$TALLY_SCRIPTS/install-servers.sh"
# The operator's e2e tests start a real control plane: build it (cached by version) and
# install kubectl/helm before the tests, so a cold build shows up here, not in a test.
"$TALLY_SCRIPTS/k8s-build.sh"
"$TALLY_SCRIPTS/install-kube-tools.sh"
# shellcheck disable=SC1090
source "$TALLY_SERVERS_ENV"

command -v cargo >/dev/null || die "cargo not found (install Rust with rustup)"
cd "$TALLY_ROOT"
# The Helm chart, offline: lint (Helm 3 and 4), template, strict schema validation. The
# e2e test tests/chart.rs installs it into a real control plane.
"$TALLY_SCRIPTS/chart-test.sh"
# The collector's request parsing under coverage-guided fuzzing (cargo-fuzz, nightly), for
# a bounded time; a crash fails the suite with the input that caused it.
"$TALLY_SCRIPTS/fuzz.sh" "${TALLY_FUZZ_SECONDS:-60}"

# The e2e tests run the real binaries, which `cargo test` alone does not build.
log "cargo build --workspace --bins --locked (target dir $CARGO_TARGET_DIR)"
cargo build --workspace --bins --locked
log "cargo test --workspace --locked $*"
# Each test binary prints its own "test result" line; end with the sum of them all.
results="$(mktemp)"
trap 'rm -f "$results"' EXIT
status=0
cargo test --workspace --locked "$@" 2>&1 | tee "$results" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$results"
exit "$status"
