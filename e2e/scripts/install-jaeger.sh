#!/usr/bin/env bash
# Build the pinned Jaeger (the trace backend of the tracing e2e test) into the Tally cache:
#
#   $TALLY_CACHE/jaeger-$JAEGER_VERSION/bin/jaeger
#
# Jaeger is built from the Go module proxy: e2e/jaeger is a small Go module whose go.mod
# holds `tool github.com/jaegertracing/jaeger/cmd/jaeger` at $JAEGER_VERSION (lib.sh), and
# `go build` of that package gives the all-in-one binary (OTLP receivers, in-memory
# storage, the query API). Module and build caches are the Tally cache's Go caches
# ($TALLY_CACHE/go), shared with k8s-build.sh.
#
# Idempotent: the binary is rebuilt only when it is missing or its inputs (the pin, the
# ldflags, go.mod, go.sum) changed since it was built (a stamp file records them). Atomic:
# it is built in a temporary directory beside bin/ and renamed into place, under a lock.
# A cold build (empty Go caches) downloads ~1.3 GB of modules and compiles for minutes;
# go runs under `nice -n 10`.
#
# Usage: install-jaeger.sh            build if needed; prints the binary's path on stdout
#        install-jaeger.sh --update   regenerate e2e/jaeger/go.mod and go.sum for the pin
#                                     (needs the Go module proxy)
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

update=0
case "${1:-}" in
  --update) update=1 ;;
  -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) die "usage: $0 [--update]" ;;
esac

command -v go >/dev/null 2>&1 || die "go not found on PATH (Jaeger $JAEGER_VERSION is built from source; need Go >= 1.24)"
export GOMODCACHE="$TALLY_CACHE/go/mod"
export GOCACHE="$TALLY_CACHE/go/build"
export GOTOOLCHAIN=local
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
export CGO_ENABLED=0

module="$TALLY_ROOT/e2e/jaeger"
package=github.com/jaegertracing/jaeger/cmd/jaeger

if ((update)); then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  (
    cd "$tmp"
    go mod init tally/e2e/jaeger >/dev/null 2>&1
    go get -tool "$package@$JAEGER_VERSION"
    # The lowest `go` line the pinned release allows: its own.
    upstream="$(go mod download -json "github.com/jaegertracing/jaeger@$JAEGER_VERSION" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
    go mod edit -go="$(sed -n 's/^go \([^ ]*\)$/\1/p' "$upstream")"
    go mod tidy
  )
  mkdir -p "$module"
  cp "$tmp/go.mod" "$tmp/go.sum" "$module/"
  log "wrote e2e/jaeger/go.mod and go.sum for Jaeger $JAEGER_VERSION"
  exit 0
fi

grep -qE "^[[:space:]]*github\.com/jaegertracing/jaeger $JAEGER_VERSION( |\$)" "$module/go.mod" ||
  die "e2e/jaeger/go.mod does not require github.com/jaegertracing/jaeger $JAEGER_VERSION: run e2e/scripts/install-jaeger.sh --update"

bin="$TALLY_JAEGER_DIR/bin"
ldflags="-s -w -X github.com/jaegertracing/jaeger/internal/version.latestVersion=$JAEGER_VERSION"
stamp="$({ printf '%s|%s\n' "$JAEGER_VERSION" "$ldflags"; cat "$module/go.mod" "$module/go.sum"; } | sha256sum | cut -c1-16)"
if [[ -x "$bin/jaeger" && "$(cat "$bin/.jaeger.stamp" 2>/dev/null)" == "$stamp" ]]; then
  printf '%s\n' "$bin/jaeger"
  exit 0
fi

mkdir -p "$bin" "$GOMODCACHE" "$GOCACHE"
exec 8>"$TALLY_JAEGER_DIR/.build.lock"
if ! flock -n 8; then
  log "another install-jaeger.sh is running; waiting for it"
  flock 8
fi
# Holding the lock, the other run may have built it meanwhile.
if [[ -x "$bin/jaeger" && "$(cat "$bin/.jaeger.stamp" 2>/dev/null)" == "$stamp" ]]; then
  printf '%s\n' "$bin/jaeger"
  exit 0
fi

tmp="$(mktemp -d "$TALLY_JAEGER_DIR/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
log "building Jaeger $JAEGER_VERSION ($(go env GOVERSION)) into $bin; a cold build takes minutes"
t0=$SECONDS
env -C "$module" nice -n 10 go build -trimpath -ldflags "$ldflags" -o "$tmp/jaeger" "$package" >&2
version="$("$tmp/jaeger" version 2>/dev/null)" || die "the built jaeger does not run"
[[ "$version" == *"\"gitVersion\":\"$JAEGER_VERSION\""* ]] || die "expected Jaeger $JAEGER_VERSION, got: $version"
chmod 0755 "$tmp/jaeger"
mv -f "$tmp/jaeger" "$bin/jaeger"
printf '%s\n' "$stamp" >"$tmp/.jaeger.stamp"
mv -f "$tmp/.jaeger.stamp" "$bin/.jaeger.stamp"
log "built Jaeger $JAEGER_VERSION in $((SECONDS - t0))s"
printf '%s\n' "$bin/jaeger"
