#!/usr/bin/env bash
# End-to-end check of the Kubernetes test tooling: build (if needed), bring a cluster
# up, run a Deployment to Available, serve a CRD (schema validation included), check
# every listener is on loopback, tear it down.
#
#   e2e/scripts/k8s-smoke.sh [workdir]     (default: a temp dir, removed afterwards)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/k8s-lib.sh"

t0=$SECONDS
workdir="${1:-$(mktemp -d "${TMPDIR:-/tmp}/tally-k8s-smoke.XXXXXX")}"
trap '"$TALLY_K8S_SCRIPTS/k8s-down.sh" "$workdir"' EXIT

"$TALLY_K8S_SCRIPTS/k8s-build.sh" >/dev/null
"$TALLY_K8S_SCRIPTS/install-kube-tools.sh" >/dev/null
t_up=$SECONDS
"$TALLY_K8S_SCRIPTS/k8s-up.sh" "$workdir"
k8s_log "k8s-up.sh took $((SECONDS - t_up))s"
# shellcheck disable=SC1091
source "$workdir/k8s.env"

passed=0 failed=0
check() { # check NAME COMMAND...
  local name="$1"
  shift
  if "$@"; then
    passed=$((passed + 1))
    k8s_log "ok: $name"
  else
    failed=$((failed + 1))
    k8s_log "FAILED: $name"
  fi
}

server_version() {
  local v
  v="$("$KUBECTL" version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')"
  [[ "$v" == "$KUBE_VERSION" ]] || { k8s_log "server reports $v"; return 1; }
}

deployment_available() {
  "$KUBECTL" apply -f - <<'EOF' >/dev/null &&
apiVersion: apps/v1
kind: Deployment
metadata:
  name: smoke
spec:
  replicas: 1
  selector:
    matchLabels: {app: smoke}
  template:
    metadata:
      labels: {app: smoke}
    spec:
      containers:
      - name: nginx
        image: nginx
EOF
    "$KUBECTL" wait --for=condition=Available deploy/smoke --timeout=120s
}

crd_served() {
  "$KUBECTL" apply -f - <<'EOF' >/dev/null &&
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.smoke.tally.test
spec:
  group: smoke.tally.test
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
EOF
    "$KUBECTL" wait --for=condition=Established crd/widgets.smoke.tally.test --timeout=60s >/dev/null &&
    printf 'apiVersion: smoke.tally.test/v1\nkind: Widget\nmetadata: {name: ok}\nspec: {size: 3}\n' |
    "$KUBECTL" apply -f - >/dev/null &&
    ! printf 'apiVersion: smoke.tally.test/v1\nkind: Widget\nmetadata: {name: bad}\nspec: {size: 0}\n' |
    "$KUBECTL" apply -f - 2>/dev/null
}

loopback_only() {
  local pids bad
  pids="$(for f in "$workdir"/kwok/clusters/*/pids/*.pid; do tr -dc '0-9' <"$f"; echo; done | paste -sd'|')"
  [[ -n "$pids" ]] || return 1
  bad="$(ss -Htlnp | grep -E "pid=($pids)," | awk '{print $4}' | grep -v '^127\.0\.0\.1:' || true)"
  [[ -z "$bad" ]] || { k8s_log "listening beyond loopback: $bad"; return 1; }
}

check "API server reports $KUBE_VERSION" server_version
check "Deployment becomes Available" deployment_available
check "CRD established, valid CR accepted, invalid CR rejected" crd_served
check "all listeners on 127.0.0.1" loopback_only

k8s_log "smoke run took $((SECONDS - t0))s"
echo "k8s-smoke: $passed passed, $failed failed"
((failed == 0))
