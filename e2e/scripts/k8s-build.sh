#!/usr/bin/env bash
# Build the pinned Kubernetes control plane for tests into the Tally cache:
#
#   $TALLY_CACHE/k8s-$KUBE_VERSION/bin/
#     kube-apiserver kube-controller-manager kube-scheduler   (e2e/k8s, k8s.io/kubernetes)
#     etcd                                                    (e2e/k8s/cmd/etcd)
#     kwok kwokctl                                            (sigs.k8s.io/kwok)
#
# Idempotent: a binary is built only when it is missing or its inputs (pins, go.mod,
# go.sum, main.go) changed since it was built (a stamp file records them). Atomic:
# binaries are built in a temp dir beside bin/ and renamed into place, under a lock,
# so an interrupted or concurrent run never leaves a half-written binary.
#
# Usage: k8s-build.sh [--force]     prints the bin dir on stdout when done
#
# A cold build downloads ~1 GB of Go modules and compiles for many minutes on two
# cores; go runs under `nice -n 10` so other builds on the machine keep going.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/k8s-lib.sh"
k8s_require_go

force="$(k8s_option --force "$@")"

mod="$TALLY_K8S_MODULE"
grep -qE "^[[:space:]]*(require[[:space:]]+)?k8s\.io/kubernetes $KUBE_VERSION\$" "$mod/go.mod" ||
  k8s_die "e2e/k8s/go.mod does not require k8s.io/kubernetes $KUBE_VERSION: run e2e/scripts/k8s-gomod.sh"
grep -qE "^[[:space:]]*(require[[:space:]]+)?go\.etcd\.io/etcd/server/v3 $ETCD_VERSION\$" "$mod/cmd/etcd/go.mod" ||
  k8s_die "e2e/k8s/cmd/etcd/go.mod does not require etcd $ETCD_VERSION: run e2e/scripts/k8s-gomod.sh"

mkdir -p "$K8S_BIN" "$GOMODCACHE" "$GOCACHE"
exec 9>"$K8S_HOME/.build.lock"
if ! flock -n 9; then
  k8s_log "another k8s-build.sh is running; waiting for it"
  flock 9
fi

t_start=$SECONDS
go_version="$(go env GOVERSION)"
kube_minor="${KUBE_VERSION#v1.}"
kube_minor="${kube_minor%%.*}"

# Version ldflags, as upstream's hack/lib/version.sh sets them, so that the binaries
# report $KUBE_VERSION (and the API server's /version says so too).
# buildDate: the release's commit time from the module proxy (reproducible builds).
build_date="$(env -C "$mod" go list -m -f '{{with .Time}}{{.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' \
  k8s.io/kubernetes 2>/dev/null || true)"
build_date="${build_date:-1970-01-01T00:00:00Z}"
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kube_minor"
  kube_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit= -X $pkg.buildDate=$build_date"
done
etcd_ldflags="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=gomod-$ETCD_VERSION"
kwok_ldflags="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}"
kwok_ldflags+=" -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${KUBE_VERSION#v}"

hash_of() { # hash_of STRING FILE... — one hash of a string and the files' contents
  local s="$1"
  shift
  { printf '%s\n' "$s"; cat "$@"; } | sha256sum | cut -c1-16
}
kube_stamp="$(hash_of "$KUBE_VERSION|${kube_ldflags//$build_date/}" "$mod/go.mod" "$mod/go.sum" "$mod"/cmd/kube-*/main.go)"
etcd_stamp="$(hash_of "$ETCD_VERSION|$etcd_ldflags" "$mod/cmd/etcd/go.mod" "$mod/cmd/etcd/go.sum" "$mod/cmd/etcd/main.go")"
kwok_stamp="$(hash_of "$KWOK_VERSION|$kwok_ldflags" /dev/null)"

needs() { # needs NAME STAMP — true when bin/NAME must be (re)built
  ((force)) && return 0
  [[ -x "$K8S_BIN/$1" ]] || return 0
  [[ "$(cat "$K8S_BIN/.$1.stamp" 2>/dev/null)" == "$2" ]] || return 0
  return 1
}

tmp="$(mktemp -d "$K8S_HOME/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

install_bin() { # install_bin NAME STAMP — move tmp/NAME into bin/ atomically
  chmod 0755 "$tmp/$1"
  mv -f "$tmp/$1" "$K8S_BIN/$1"
  printf '%s\n' "$2" >"$tmp/.$1.stamp"
  mv -f "$tmp/.$1.stamp" "$K8S_BIN/.$1.stamp"
}

step() { # step LABEL COMMAND... — run and time one build step
  local label="$1" t0=$SECONDS
  shift
  k8s_log "building $label ($go_version)"
  "$@"
  k8s_log "built $label in $((SECONDS - t0))s"
}

gobuild=(nice -n 10 go build -trimpath)
built=()

kube=()
for name in kube-apiserver kube-controller-manager kube-scheduler; do
  if needs "$name" "$kube_stamp"; then kube+=("$name"); fi
done
if ((${#kube[@]})); then
  # One go build for all three shares the compile of their common packages.
  pkgs=()
  for name in "${kube[@]}"; do pkgs+=("./cmd/$name"); done
  if ((${#pkgs[@]} == 1)); then out="$tmp/${kube[0]}"; else out="$tmp/"; fi
  step "${kube[*]} $KUBE_VERSION" \
    env -C "$mod" "${gobuild[@]}" -ldflags "$kube_ldflags" -o "$out" "${pkgs[@]}"
  for name in "${kube[@]}"; do install_bin "$name" "$kube_stamp"; built+=("$name"); done
fi

if needs etcd "$etcd_stamp"; then
  step "etcd $ETCD_VERSION" \
    env -C "$mod/cmd/etcd" "${gobuild[@]}" -ldflags "$etcd_ldflags" -o "$tmp/etcd" .
  install_bin etcd "$etcd_stamp"
  built+=(etcd)
fi

kwok=()
for name in kwok kwokctl; do
  if needs "$name" "$kwok_stamp"; then kwok+=("$name"); fi
done
if ((${#kwok[@]})); then
  pkgs=()
  for name in "${kwok[@]}"; do pkgs+=("sigs.k8s.io/kwok/cmd/$name@$KWOK_VERSION"); done
  # `go install pkg@version` builds from kwok's own go.mod (no replaces in it),
  # checked against the checksum database; it runs outside any module.
  step "${kwok[*]} $KWOK_VERSION" \
    env -C "$tmp" GOBIN="$tmp" nice -n 10 go install -trimpath -ldflags "$kwok_ldflags" "${pkgs[@]}"
  for name in "${kwok[@]}"; do install_bin "$name" "$kwok_stamp"; built+=("$name"); done
fi

if ((${#built[@]})); then
  k8s_log "built ${built[*]} into $K8S_BIN in $((SECONDS - t_start))s"
  k8s_log "$("$K8S_BIN/kube-apiserver" --version), $("$K8S_BIN/etcd" --version | head -1)," \
    "$("$K8S_BIN/kwokctl" --version)"
else
  k8s_log "up to date: $K8S_BIN (Kubernetes $KUBE_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION)"
fi
printf '%s\n' "$K8S_BIN"
