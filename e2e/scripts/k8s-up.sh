#!/usr/bin/env bash
# Start a real Kubernetes control plane for tests (kube-apiserver, kube-controller-manager,
# kube-scheduler, etcd, all built by k8s-build.sh) with kwok's fake nodes:
#
#   e2e/scripts/k8s-up.sh <workdir>
#
# Everything lives under <workdir> (made if missing):
#   <workdir>/kubeconfig     admin kubeconfig (current-context is this cluster)
#   <workdir>/k8s.env        KUBECONFIG, K8S_CLUSTER_NAME, KUBECTL, HELM, HELM3, K8S_BIN,
#                            KUBE_TOOLS_BIN: `source` it in a test
#   <workdir>/kwok/          kwokctl's state (KWOK_WORKDIR): config, pki, etcd data,
#                            pids, component logs in kwok/clusters/<name>/logs/
#   <workdir>/kwokctl.log    kwokctl's own output
#
# The cluster runs as local processes (kwokctl --runtime binary), every port is a random
# free one on 127.0.0.1, the cluster name is unique, so parallel runs with different
# workdirs do not collide. Nothing is downloaded: every binary kwokctl could ask for is
# a local path, and kwokctl runs with its HTTP(S) proxy set to a closed loopback port so
# that any download attempt fails at once instead of reaching out.
# Pods on the fake node turn Running (no container runs): Deployments become Available.
#
# Stop it with e2e/scripts/k8s-down.sh <workdir>.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/k8s-lib.sh"

[[ $# -eq 1 ]] || k8s_die "usage: $0 <workdir>"
mkdir -p "$1"
workdir="$(cd "$1" && pwd)"
t0=$SECONDS

# Binaries: both are idempotent and quick when everything is already there.
"$TALLY_K8S_SCRIPTS/k8s-build.sh" >/dev/null
"$TALLY_K8S_SCRIPTS/install-kube-tools.sh" >/dev/null

export KWOK_WORKDIR="$workdir/kwok"
mkdir -p "$KWOK_WORKDIR"
if [[ -s "$workdir/cluster-name" ]]; then
  name="$(cat "$workdir/cluster-name")" # re-run on the same workdir: same cluster
else
  name="tally-$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
  printf '%s\n' "$name" >"$workdir/cluster-name"
fi
kubeconfig="$workdir/kubeconfig"

# Ports: kwokctl's own choice counts down from 32767 and only avoids clusters in the
# same KWOK_WORKDIR, so two parallel runs would pick the same ports. Take six distinct
# ports from the kernel (random, all bound at once) instead.
read -r p_api p_etcd p_peer p_kcm p_sched p_kwok < <(python3 -c 'import socket
socks = [socket.socket() for _ in range(6)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
for s in socks:
    s.close()')

# kwokctl reads $KWOK_WORKDIR/kwok.yaml by default (for create, scale and delete), and
# never ~/.kwok. Every binary is a local file (a missing local path is an error, never a
# download); etcdctl/etcdutl/kectl are only used by `kwokctl snapshot`/`etcdctl`/`kectl`,
# which these tests do not run.
cat >"$KWOK_WORKDIR/kwok.yaml" <<EOF
kind: KwokctlConfiguration
apiVersion: config.kwok.x-k8s.io/v1alpha1
options:
  runtime: binary
  bindAddress: 127.0.0.1
  kubeVersion: $KUBE_VERSION
  etcdVersion: ${ETCD_VERSION#v}
  kwokVersion: $KWOK_VERSION
  quietPull: true
  cacheDir: $KWOK_WORKDIR/cache
  kubeApiserverPort: $p_api
  etcdPort: $p_etcd
  etcdPeerPort: $p_peer
  kubeControllerManagerPort: $p_kcm
  kubeSchedulerPort: $p_sched
  kwokControllerPort: $p_kwok
  kubeApiserverBinary: $K8S_BIN/kube-apiserver
  kubeControllerManagerBinary: $K8S_BIN/kube-controller-manager
  kubeSchedulerBinary: $K8S_BIN/kube-scheduler
  etcdBinary: $K8S_BIN/etcd
  kwokControllerBinary: $K8S_BIN/kwok
  kubectlBinary: $KUBE_TOOLS_BIN/kubectl
  etcdctlBinary: $K8S_BIN/etcdctl
  etcdutlBinary: $K8S_BIN/etcdutl
  kectlBinary: $K8S_BIN/kectl
EOF

kwokctl() {
  # No proxy for loopback; anything else goes to a closed port and fails.
  HTTP_PROXY=http://127.0.0.1:1 HTTPS_PROXY=http://127.0.0.1:1 NO_PROXY=127.0.0.1,localhost,::1 \
    http_proxy=http://127.0.0.1:1 https_proxy=http://127.0.0.1:1 no_proxy=127.0.0.1,localhost,::1 \
    PATH="$KUBE_TOOLS_BIN:$PATH" \
    "$K8S_BIN/kwokctl" --name "$name" "$@" >>"$workdir/kwokctl.log" 2>&1
}

fail() {
  k8s_log "error: $*"
  tail -n 40 "$workdir/kwokctl.log" >&2 || true
  k8s_log "kwokctl log: $workdir/kwokctl.log; component logs: $KWOK_WORKDIR/clusters/$name/logs/"
  k8s_log "clean up with: $TALLY_K8S_SCRIPTS/k8s-down.sh $workdir"
  exit 1
}

k8s_log "starting cluster $name ($KUBE_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION) in $workdir"
kwokctl create cluster \
  --runtime binary \
  --kube-apiserver-binary "$K8S_BIN/kube-apiserver" \
  --kube-controller-manager-binary "$K8S_BIN/kube-controller-manager" \
  --kube-scheduler-binary "$K8S_BIN/kube-scheduler" \
  --etcd-binary "$K8S_BIN/etcd" \
  --kwok-controller-binary "$K8S_BIN/kwok" \
  --kubeconfig "$kubeconfig" \
  --timeout 3m --wait 2m ||
  fail "kwokctl create cluster failed"
grep -q '"Download"\|msg=Download\| Download ' "$workdir/kwokctl.log" &&
  fail "kwokctl tried to download something"

kubectl=("$KUBE_TOOLS_BIN/kubectl" --kubeconfig "$kubeconfig")
deadline=$((SECONDS + 120))
until "${kubectl[@]}" get --raw /readyz >/dev/null 2>&1; do
  ((SECONDS < deadline)) || fail "API server not ready after 120s"
  sleep 0.5
done

# One fake node. Its address is 127.0.0.1 (the default is 192.0.2.x), so that when the
# API server calls the "kubelet" (kubectl logs/exec, served by kwok-controller on the
# node's kubelet port) it stays on loopback.
kwokctl scale node --replicas 1 --param '.nodeIPs=["127.0.0.1"]' || fail "kwokctl scale node failed"
"${kubectl[@]}" wait --for=condition=Ready node --all --timeout=120s >/dev/null ||
  fail "fake node not Ready"
# The default ServiceAccount is needed before any Pod can be created in a namespace.
deadline=$((SECONDS + 120))
until "${kubectl[@]}" -n default get serviceaccount default >/dev/null 2>&1; do
  ((SECONDS < deadline)) || fail "no default ServiceAccount after 120s"
  sleep 0.5
done

server="$("${kubectl[@]}" config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
cat >"$workdir/k8s.env" <<EOF
export KUBECONFIG=$kubeconfig
export K8S_CLUSTER_NAME=$name
export K8S_API_SERVER=$server
export K8S_BIN=$K8S_BIN
export KUBE_TOOLS_BIN=$KUBE_TOOLS_BIN
export KUBECTL=$KUBE_TOOLS_BIN/kubectl
export HELM=$KUBE_TOOLS_BIN/helm
export HELM3=$KUBE_TOOLS_BIN/helm3
EOF
k8s_log "cluster $name ready at $server in $((SECONDS - t0))s; KUBECONFIG=$kubeconfig (or: source $workdir/k8s.env)"
