#!/usr/bin/env bash
# Fuzz the collector's request parsing for a bounded time: the libFuzzer target
# `ingest_body` of collector/fuzz (cargo-fuzz), coverage-guided, starting from the
# committed seed corpus. `make test` runs it for 60 s; `make fuzz ARGS=600` for longer.
#
# Usage: e2e/scripts/fuzz.sh [SECONDS]   (default 60)
#
# Needs the nightly toolchain (rustup's `nightly`; instrumented builds use -Z flags).
# Installs the pinned cargo-fuzz into $TALLY_CACHE/cargo-fuzz-<version> once, and builds
# the target into $TALLY_CACHE/fuzz-target (instrumented with AddressSanitizer and with
# debug assertions on, so an arithmetic overflow is a crash too). It replays the inputs of
# collector/fuzz/regressions/ once each, then fuzzes a copy of the corpus in a temporary
# directory, so the work tree is left as it was. When libFuzzer finds a crash (a panic, a
# failed assertion, a memory error, a timeout, or more memory than -rss_limit_mb), the
# script fails with the input's path and base64; replay it with `<binary> <file>` (the
# binary's path is printed), and once fixed, add it to collector/fuzz/regressions/.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CARGO_FUZZ_VERSION=0.13.2
FUZZ_TARGET=ingest_body
# One input may take at most this long, and the process at most this much memory. A request
# is bounded by maxBodyBytes (1 MiB) before and after decompression; the fuzzer's own
# bookkeeping and AddressSanitizer's quarantine take the rest.
FUZZ_TIMEOUT_SECONDS=10
FUZZ_RSS_LIMIT_MB=2048

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

seconds="${1:-60}"
case "$seconds" in
  -h | --help) usage; exit 0 ;;
esac
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || die "SECONDS must be a positive whole number, not '$seconds' (usage: $0 [SECONDS])"
(($# <= 1)) || die "usage: $0 [SECONDS]"

fuzz_dir="$TALLY_ROOT/collector/fuzz"
cargo_fuzz_root="$TALLY_CACHE/cargo-fuzz-$CARGO_FUZZ_VERSION"
cargo_fuzz="$cargo_fuzz_root/bin/cargo-fuzz"
target_dir="$TALLY_CACHE/fuzz-target"

command -v rustup >/dev/null || die "rustup not found: the fuzz target needs rustup's nightly toolchain"
rustup run nightly rustc --version >/dev/null 2>&1 ||
  die "the nightly toolchain is not installed (rustup toolchain install nightly): cargo-fuzz needs it"

mkdir -p "$TALLY_CACHE"
# cargo-fuzz itself, pinned and cached by version (one installer at a time).
(
  flock 9
  if [[ ! -x "$cargo_fuzz" ]]; then
    log "installing cargo-fuzz $CARGO_FUZZ_VERSION into $cargo_fuzz_root"
    t0=$SECONDS
    # Its own temporary build directory, not the workspace's target dir.
    env -u CARGO_TARGET_DIR cargo install --locked --quiet cargo-fuzz \
      --version "$CARGO_FUZZ_VERSION" --root "$cargo_fuzz_root" ||
      die "cargo install cargo-fuzz $CARGO_FUZZ_VERSION failed"
    log "cargo-fuzz $CARGO_FUZZ_VERSION installed in $((SECONDS - t0)) s"
  fi
) 9>"$TALLY_CACHE/.cargo-fuzz.lock"

log "building the fuzz target $FUZZ_TARGET ($(rustup run nightly rustc --version); target dir $target_dir)"
t0=$SECONDS
# cargo-fuzz has no --locked: check first that the fuzz crate's committed Cargo.lock holds.
rustup run nightly cargo metadata --locked --format-version 1 \
  --manifest-path "$fuzz_dir/Cargo.toml" >/dev/null ||
  die "collector/fuzz/Cargo.lock is out of date: update it (cargo +nightly update --workspace --manifest-path collector/fuzz/Cargo.toml) and commit it"
# Release mode with sanitizer-coverage, AddressSanitizer and debug assertions.
(cd "$TALLY_ROOT/collector" && rustup run nightly "$cargo_fuzz" build "$FUZZ_TARGET" \
  --fuzz-dir "$fuzz_dir" --target-dir "$target_dir" --debug-assertions) ||
  die "building the fuzz target failed"
triple="$(rustup run nightly rustc -vV | sed -n 's/^host: //p')"
binary="$target_dir/$triple/release/$FUZZ_TARGET"
[[ -x "$binary" ]] || die "the build left no fuzz binary at $binary"
log "built in $((SECONDS - t0)) s: $binary"

work="$(mktemp -d "${TMPDIR:-/tmp}/tally-fuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/corpus" "$work/artifacts"
cp "$fuzz_dir/corpus/$FUZZ_TARGET"/* "$work/corpus/"

# excerpt LOG — the end of a libFuzzer log, then the lines that say what failed.
excerpt() {
  tail -n 40 "$1" >&2
  log "what failed:"
  { grep -E -A1 '^Running: |panicked at |ERROR: ' "$1" | grep -v '^--$' | head -n 20 >&2; } || true
}

# Inputs that once found a bug are replayed first, each once. They are kept out of the
# fuzzing corpus: most inflate to a megabyte and would slow every mutation of them.
regressions=("$fuzz_dir/regressions/$FUZZ_TARGET"/*)
if [[ -e "${regressions[0]}" ]]; then
  log "replaying ${#regressions[@]} regression inputs of collector/fuzz/regressions/$FUZZ_TARGET"
  "$binary" -timeout="$FUZZ_TIMEOUT_SECONDS" -rss_limit_mb="$FUZZ_RSS_LIMIT_MB" \
    -artifact_prefix="$work/artifacts/" "${regressions[@]}" >"$work/regressions.log" 2>&1 || {
    trap - EXIT
    excerpt "$work/regressions.log"
    die "a regression input fails again (the last 'Running:' above); all output in $work"
  }
fi

log "fuzzing $FUZZ_TARGET for $seconds s (corpus: $(find "$work/corpus" -type f | wc -l) seeds; log: $work/fuzz.log)"
status=0
"$binary" "$work/corpus" \
  -max_total_time="$seconds" \
  -timeout="$FUZZ_TIMEOUT_SECONDS" \
  -rss_limit_mb="$FUZZ_RSS_LIMIT_MB" \
  -max_len=16384 \
  -dict="$fuzz_dir/$FUZZ_TARGET.dict" \
  -artifact_prefix="$work/artifacts/" \
  -print_final_stats=1 \
  >"$work/fuzz.log" 2>&1 || status=$?

# The last progress line: "#N DONE cov: C ft: F corp: U/Sb ... exec/s: E rss: RMb".
summary="$(grep -E '^#[0-9]+' "$work/fuzz.log" | tail -n 1 || true)"
final_stat() { sed -n "s/^stat::$1: *//p" "$work/fuzz.log" | tail -n 1; }
artifacts=("$work"/artifacts/*)
if ((status != 0)) || [[ -e "${artifacts[0]}" ]]; then
  trap - EXIT # keep the findings and the log
  excerpt "$work/fuzz.log"
  for artifact in "${artifacts[@]}"; do
    [[ -e "$artifact" ]] || continue
    log "libFuzzer's finding: $artifact ($(stat -c %s "$artifact") bytes), base64:"
    base64 -w 0 "$artifact" >&2
    printf '\n' >&2
  done
  die "fuzz target $FUZZ_TARGET failed (libFuzzer exit $status); replay: $binary <file>; all output in $work"
fi
log "fuzz target $FUZZ_TARGET: no crash in $seconds s: $(final_stat number_of_executed_units) inputs," \
  "$(final_stat average_exec_per_sec) exec/s, peak RSS $(final_stat peak_rss_mb) MB;" \
  "${summary:-no progress line}"
