#!/usr/bin/env bash
# Test the Helm chart (charts/tally) with both Helm 4 and Helm 3, offline, with the tools
# that hold no Tally logic:
#   - helm lint --strict, with the default values and with each charts/tally/ci/*-values.yaml
#   - helm template the same ways, then validate every rendered manifest (CRDs included)
#     with kubernetes-validate -k 1.35.0 --strict; kinds that are not Kubernetes' own
#     (the ServiceMonitor of the Prometheus Operator) have no schema and are skipped by
#     name, and said so
#
# The chart's contract lives in Rust and runs in `cargo test --workspace` (tally_e2e::chart):
# e2e/tests/chart_render.rs renders the chart with both Helm versions and checks the
# objects against what the operator is written to (names, env, ports, probes, security
# context, least-privilege RBAC, images), that values.schema.json refuses bad values naming
# them, that charts/tally/crds/*.yaml are byte for byte crds/*.yaml (`make crds` writes
# both), and that NOTES.txt tells the in-cluster URLs and `kubectl apply -f examples/`;
# e2e/tests/chart.rs installs the chart on a kwok-based cluster (Helm 4 with the defaults,
# Helm 3 with the trial NATS and ClickHouse), checks it, RBAC included (kubectl auth can-i),
# and uninstalls.
#
# With --install it also runs that install test (`cargo test -p tally-e2e --test chart`;
# k8s-up.sh builds the control plane on first use).
#
# Installs what it needs into $TALLY_CACHE when missing: kubectl/helm/helm3
# (install-kube-tools.sh) and kubernetes-validate (PyPI, pinned below). Helm runs with
# temporary HELM_CACHE_HOME/HELM_CONFIG_HOME/HELM_DATA_HOME.
#
# Usage: e2e/scripts/chart-test.sh [--install]
# Ends with "chart-test: N passed, N failed"; exits non-zero when anything failed.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=SCRIPTDIR/k8s-lib.sh
source "$TALLY_SCRIPTS/k8s-lib.sh"

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}
install_test=0
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  --install) install_test=1 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

CHART="$TALLY_ROOT/charts/tally"
NAMESPACE=tally-system
RELEASE=tally
KUBE_VALIDATE_K8S=1.35.0
# Kinds kubernetes-validate has no schema for (CRD kinds of other projects), as KIND@GROUP/
# VERSION: skipped, and every skip is printed. Anything else without a schema fails.
SKIP_KINDS="ServiceMonitor@monitoring.coreos.com/v1"

# kubernetes-validate and its dependencies, pinned (PyPI).
KUBERNETES_VALIDATE_VERSION=1.37.0
KUBERNETES_VALIDATE_CONSTRAINTS="
attrs==26.1.0
importlib_resources==7.1.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
packaging==26.3
PyYAML==6.0.3
referencing==0.37.0
rpds-py==2026.9.1
typing_extensions==4.16.0
"

t_start=$SECONDS
work="$(mktemp -d "${TMPDIR:-/tmp}/tally-chart-test.XXXXXX")"
cleanup() {
  rm -rf "$work"
}
trap cleanup EXIT
export HELM_CACHE_HOME="$work/helm/cache" HELM_CONFIG_HOME="$work/helm/config" \
  HELM_DATA_HOME="$work/helm/data"
mkdir -p "$HELM_CACHE_HOME" "$HELM_CONFIG_HOME" "$HELM_DATA_HOME"

# --- tools ------------------------------------------------------------------------

"$TALLY_SCRIPTS/install-kube-tools.sh" >/dev/null

# install_kubernetes_validate — pip install --target into the cache, keyed by its
# version and the Python it was installed for; atomic (temp dir, then rename) and
# serialised with a lock.
python_tag="$(python3 -c 'import sys; print("py%d%d" % sys.version_info[:2])')"
KV_DIR="$TALLY_CACHE/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION-$python_tag"
install_kubernetes_validate() {
  [[ -f "$KV_DIR/.installed" ]] && return 0
  exec 8>"$TALLY_CACHE/.kubernetes-validate.lock"
  flock 8
  if [[ ! -f "$KV_DIR/.installed" ]]; then
    # Holding the lock, a leftover temp dir is from a run that was killed.
    rm -rf "$TALLY_CACHE"/.tmp-kubernetes-validate.*
    log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $KV_DIR"
    local tmp
    tmp="$(mktemp -d "$TALLY_CACHE/.tmp-kubernetes-validate.XXXXXX")"
    printf '%s\n' "$KUBERNETES_VALIDATE_CONSTRAINTS" >"$tmp.constraints"
    if ! PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
      python3 -m pip install --quiet --no-input --no-compile --only-binary=:all: \
      --target "$tmp" --constraint "$tmp.constraints" \
      "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >"$tmp.log" 2>&1; then
      cat "$tmp.log" >&2
      rm -rf "$tmp" "$tmp.log" "$tmp.constraints"
      die "pip could not install kubernetes-validate $KUBERNETES_VALIDATE_VERSION"
    fi
    rm -f "$tmp.log" "$tmp.constraints"
    local v
    v="$(PYTHONPATH="$tmp" python3 -m kubernetes_validate --version 2>&1)" || {
      rm -rf "$tmp"
      die "kubernetes-validate does not run: $v"
    }
    [[ "$v" == "$KUBERNETES_VALIDATE_VERSION" ]] || {
      rm -rf "$tmp"
      die "expected kubernetes-validate $KUBERNETES_VALIDATE_VERSION, got $v"
    }
    touch "$tmp/.installed"
    chmod 755 "$tmp"
    rm -rf "$KV_DIR"
    mv -T "$tmp" "$KV_DIR"
  fi
  flock -u 8
  exec 8>&-
}
install_kubernetes_validate

kubernetes_validate() { PYTHONPATH="$KV_DIR${PYTHONPATH:+:$PYTHONPATH}" python3 -m kubernetes_validate "$@"; }

# --- bookkeeping --------------------------------------------------------------------

passed=0 failed=0
failures=()
# check NAME COMMAND... — run COMMAND with its output in a log; print it on failure.
check() {
  local name="$1"
  shift
  local out="$work/check.log"
  if "$@" >"$out" 2>&1; then
    passed=$((passed + 1))
    printf 'ok      %s\n' "$name"
    # Lines a check wants seen even when it passes (skips, for one).
    grep '^NOTE ' "$out" | sed 's/^/        /' || true
  else
    failed=$((failed + 1))
    failures+=("$name")
    printf 'FAILED  %s\n' "$name"
    sed 's/^/        | /' "$out" | tail -n 60
  fi
}

# --- helpers the checks run -----------------------------------------------------------

# render OUT COMMAND... — COMMAND's stdout into OUT.
render() {
  local out="$1"
  shift
  "$@" >"$out"
}

# validate_manifests FILE — kubernetes-validate --strict every document of FILE. A kind
# without a schema is only a warning to kubernetes-validate: here it fails, unless it is
# one of SKIP_KINDS (printed as a NOTE line).
validate_manifests() {
  local file="$1" out rc=0 line skip kind known
  out="$(kubernetes_validate -k "$KUBE_VALIDATE_K8S" --strict "$file" 2>&1)" || rc=$?
  printf '%s\n' "$out"
  ((rc == 0)) || return 1
  while IFS= read -r line; do
    known=0
    for skip in $SKIP_KINDS; do
      kind="${skip%%@*}"
      if [[ "$line" == *"find schema for kind $kind with api version ${skip#*@} "* ]]; then
        echo "NOTE skipped $kind: kubernetes-validate has no schema for ${skip#*@}/$kind (not a Kubernetes kind)"
        known=1
      fi
    done
    ((known)) || { echo "a rendered kind has no schema (not in SKIP_KINDS): $line"; return 1; }
  done < <(grep '^WARN' <<<"$out")
  grep -q '^INFO .* passed ' <<<"$out"
}

# --- the offline checks ---------------------------------------------------------------

log "chart-test: $CHART (helm: $KUBE_TOOLS_BIN, kubernetes-validate $KUBERNETES_VALIDATE_VERSION)"

# Value sets: the defaults, then every ci/*-values.yaml.
value_sets=("defaults")
for f in "$CHART"/ci/*-values.yaml; do
  [[ -e "$f" ]] && value_sets+=("$(basename "$f" -values.yaml)")
done
values_args() { # values_args SET — the helm flags for a value set
  [[ "$1" == defaults ]] || printf '%s\n' -f "$CHART/ci/$1-values.yaml"
}

for helm in helm helm3; do
  hbin="$KUBE_TOOLS_BIN/$helm"
  hname="helm $("$hbin" version --short | sed 's/^v//; s/+.*//')"
  for set in "${value_sets[@]}"; do
    mapfile -t vargs < <(values_args "$set")
    check "$hname: lint --strict ($set)" "$hbin" lint --strict "$CHART" -n "$NAMESPACE" "${vargs[@]}"
    rendered="$work/$helm-$set.yaml"
    check "$hname: template ($set)" render "$rendered" "$hbin" template "$RELEASE" "$CHART" \
      -n "$NAMESPACE" --include-crds --kube-version "v$KUBE_VALIDATE_K8S" "${vargs[@]}"
    check "$hname: kubernetes-validate -k $KUBE_VALIDATE_K8S --strict ($set)" validate_manifests "$rendered"
  done
done

# The documented Job of tally-import (the README's "In a cluster").
check "kubernetes-validate -k $KUBE_VALIDATE_K8S --strict (examples/import/job.yaml)" \
  validate_manifests "$TALLY_ROOT/examples/import/job.yaml"

# --- the real install (--install) -------------------------------------------------------

if ((install_test)); then
  check "install on a test cluster: cargo test -p tally-e2e --test chart" \
    "$TALLY_SCRIPTS/cargo.sh" test -p tally-e2e --test chart --locked
fi

log "chart-test took $((SECONDS - t_start))s"
if ((failed > 0)); then
  printf 'failed: %s\n' "${failures[@]}"
fi
echo "chart-test: $passed passed, $failed failed"
((failed == 0))
