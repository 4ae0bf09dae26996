#!/usr/bin/env bash
# Check Grafana dashboards (JSON files) against the dashboard model of Grafana's foundation
# SDK (e2e/grafana/, pinned in its go.mod): unknown fields, wrong types and panel options
# that the panel's plugin does not have are errors. Builds the checker once into
# $TALLY_CACHE, keyed by its go.sum and source (Go modules from the module proxy, cached in
# $TALLY_CACHE/go like the other Go builds).
#
#   e2e/scripts/check-dashboards.sh charts/tally/dashboards/*.json
#
# Prints one line per valid dashboard; exits 1 naming the first problem.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

(($# > 0)) || die "usage: check-dashboards.sh FILE..."
command -v go >/dev/null || die "go is needed to build the dashboard checker (e2e/grafana/)"
export GOMODCACHE="$TALLY_CACHE/go/mod"
export GOCACHE="$TALLY_CACHE/go/build"
export GOTOOLCHAIN=local CGO_ENABLED="${CGO_ENABLED:-0}"
export GOFLAGS="${GOFLAGS:--buildvcs=false} -mod=readonly"
src="$TALLY_ROOT/e2e/grafana"
key="$(cat "$src/go.sum" "$src/main.go" | cksum | cut -d' ' -f1)"
bin="$TALLY_CACHE/check-dashboards-$key/check-dashboards"
if [[ ! -x "$bin" ]]; then
  mkdir -p "$(dirname "$bin")" "$GOMODCACHE" "$GOCACHE"
  log "building the dashboard checker (Grafana foundation SDK, e2e/grafana/go.mod)"
  (cd "$src" && go build -o "$bin.tmp" .) || die "could not build e2e/grafana/"
  mv -f "$bin.tmp" "$bin"
fi
exec "$bin" "$@"
