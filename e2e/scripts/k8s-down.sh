#!/usr/bin/env bash
# Stop the cluster that `k8s-up.sh <workdir>` started and remove its state:
#
#   e2e/scripts/k8s-down.sh <workdir>
#
# Runs `kwokctl delete cluster` (stops the component processes), then, should any of
# them still run, stops the processes recorded in the cluster's pid files, and removes
# what k8s-up.sh made in <workdir> (kwok/, kubeconfig, k8s.env, cluster-name,
# kwokctl.log); <workdir> itself goes too when that leaves it empty. Safe to run twice
# or on a workdir whose cluster never came up.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/k8s-lib.sh"

[[ $# -eq 1 ]] || k8s_die "usage: $0 <workdir>"
[[ -d "$1" ]] || { k8s_log "no workdir $1: nothing to stop"; exit 0; }
workdir="$(cd "$1" && pwd)"
export KWOK_WORKDIR="$workdir/kwok"
name="$(cat "$workdir/cluster-name" 2>/dev/null || true)"

if [[ -n "$name" && -d "$KWOK_WORKDIR/clusters/$name" ]]; then
  k8s_log "stopping cluster $name"
  if [[ -x "$K8S_BIN/kwokctl" ]]; then
    HTTP_PROXY=http://127.0.0.1:1 HTTPS_PROXY=http://127.0.0.1:1 NO_PROXY=127.0.0.1,localhost,::1 \
      http_proxy=http://127.0.0.1:1 https_proxy=http://127.0.0.1:1 no_proxy=127.0.0.1,localhost,::1 \
      "$K8S_BIN/kwokctl" --name "$name" delete cluster --kubeconfig "$workdir/kubeconfig" \
      >>"$workdir/kwokctl.log" 2>&1 || {
      tail -n 20 "$workdir/kwokctl.log" >&2
      k8s_log "kwokctl delete cluster failed; stopping by pid"
    }
  fi
  # Whatever is left: the pids kwokctl recorded for this cluster's components.
  for pidfile in "$KWOK_WORKDIR/clusters/$name"/pids/*.pid; do
    [[ -f "$pidfile" ]] || continue
    pid="$(tr -dc '0-9' <"$pidfile")"
    if [[ -z "$pid" ]] || ! kill -0 "$pid" 2>/dev/null; then continue; fi
    # Only a process of this cluster (its arguments name the cluster's directory).
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$KWOK_WORKDIR/" || continue
    k8s_log "stopping leftover $(basename "$pidfile" .pid) (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
fi

rm -rf "$KWOK_WORKDIR" "$workdir/kubeconfig" "$workdir/k8s.env" "$workdir/cluster-name" \
  "$workdir/kwokctl.log"
rmdir "$workdir" 2>/dev/null || true
k8s_log "cluster ${name:-?} stopped, state removed"
