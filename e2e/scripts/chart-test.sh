#!/usr/bin/env bash
# Test the Helm chart (charts/tally) with both Helm 4 and Helm 3, offline:
#   - helm lint --strict, with the default values and with each charts/tally/ci/*-values.yaml
#   - helm template the same ways, then validate every rendered manifest (CRDs included)
#     with kubernetes-validate -k 1.35.0 --strict; kinds that are not Kubernetes' own
#     (the ServiceMonitor of the Prometheus Operator) are skipped by name, and said so
#   - the rendered objects against the contract the operator is written to (names,
#     env, ports, probes, security context, least-privilege RBAC, images)
#   - values.schema.json refuses bad values (replicaCount: -1, image.pullPolicy:
#     Sometimes, ...) with a message naming the value
#   - charts/tally/crds/*.yaml are byte for byte crds/*.yaml (`make crds` writes both)
#   - NOTES.txt tells the in-cluster NATS/ClickHouse URLs and `kubectl apply -f examples/`
#
# With --install it also installs the chart for real, on a kwok-based cluster
# (k8s-up.sh; builds the control plane on first use): Helm 4 with the defaults, Helm 3
# with the trial NATS and ClickHouse (ci/trial-no-persistence-values.yaml: the test
# cluster has no storage provisioner), then checks the operator Deployment is Available,
# the CRDs Established, the RBAC grants exactly what it should (kubectl auth can-i),
# examples/ is accepted by the CRDs, and uninstalls.
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
# Kinds kubernetes-validate has no schema for (CRD kinds of other projects): skipped,
# and every skip is printed. Anything else without a schema fails.
SKIP_KINDS="monitoring.coreos.com/v1/ServiceMonitor"

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
k8s_workdir=""
cleanup() {
  if [[ -n "$k8s_workdir" ]]; then
    "$TALLY_SCRIPTS/k8s-down.sh" "$k8s_workdir" || true
  fi
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

# Python with kubernetes-validate's packages (PyYAML among them) on its path.
kpy() { PYTHONPATH="$KV_DIR${PYTHONPATH:+:$PYTHONPATH}" python3 "$@"; }

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

# validate_manifests FILE — kubernetes-validate --strict every document of FILE, except
# the SKIP_KINDS (printed as NOTE lines). Fails on any error and on any document the
# validator has no schema for (it only warns about those).
validate_manifests() {
  local file="$1" known="$work/known.yaml"
  kpy - "$file" "$known" "$SKIP_KINDS" <<'EOF' || return 1
import sys, yaml
src, dst, skip = sys.argv[1], sys.argv[2], set(sys.argv[3].split())
docs = [d for d in yaml.safe_load_all(open(src)) if d]
if not docs:
    sys.exit("no documents rendered")
keep = []
for d in docs:
    key = "%s/%s" % (d.get("apiVersion"), d.get("kind"))
    if key in skip:
        print("NOTE skipped %s %s: kubernetes-validate has no schema for %s (not a Kubernetes kind)"
              % (d["kind"], d["metadata"]["name"], key))
    else:
        keep.append(d)
with open(dst, "w") as f:
    yaml.safe_dump_all(keep, f, sort_keys=False)
print("validating %d of %d documents" % (len(keep), len(docs)))
EOF
  local out rc=0
  out="$(kpy -m kubernetes_validate -k "$KUBE_VALIDATE_K8S" --strict "$known" 2>&1)" || rc=$?
  printf '%s\n' "$out"
  ((rc == 0)) || return 1
  # A kind without a schema is only a warning to kubernetes-validate: not here.
  if grep -q '^WARN' <<<"$out"; then
    echo "a rendered kind has no schema (not in SKIP_KINDS): see WARN above"
    return 1
  fi
  grep -q '^INFO .* passed ' <<<"$out"
}

# expect_refused HELM NEEDLE ARGS... — `HELM template` with ARGS must fail, and its
# message must name NEEDLE (the offending value).
expect_refused() {
  local helm="$1" needle="$2"
  shift 2
  local out rc=0
  out="$("$helm" template "$RELEASE" "$CHART" -n "$NAMESPACE" "$@" 2>&1)" || rc=$?
  printf '%s\n' "$out"
  if ((rc == 0)); then
    echo "expected helm to refuse: $*"
    return 1
  fi
  grep -qi -- "$needle" <<<"$out" || { echo "the message does not name '$needle'"; return 1; }
}

# expect_lint_refused HELM NEEDLE ARGS... — the same through `helm lint --strict`.
expect_lint_refused() {
  local helm="$1" needle="$2"
  shift 2
  local out rc=0
  out="$("$helm" lint --strict "$CHART" "$@" 2>&1)" || rc=$?
  printf '%s\n' "$out"
  if ((rc == 0)); then
    echo "expected helm lint to fail: $*"
    return 1
  fi
  grep -qi -- "$needle" <<<"$out" || { echo "the message does not name '$needle'"; return 1; }
}

# crds_in_sync — charts/tally/crds/ holds exactly crds/*.yaml, byte for byte.
crds_in_sync() {
  local ok=0 f a b=""
  a="$(find "$TALLY_ROOT/crds" -maxdepth 1 -name '*.yaml' -printf '%f\n' | sort)"
  if [[ -d "$CHART/crds" ]]; then
    b="$(find "$CHART/crds" -maxdepth 1 -name '*.yaml' -printf '%f\n' | sort)"
  fi
  [[ -n "$a" ]] || { echo "no crds/*.yaml"; return 1; }
  if [[ "$a" != "$b" ]]; then
    echo "crds/ has:              $(tr '\n' ' ' <<<"$a")"
    echo "charts/tally/crds/ has: $(tr '\n' ' ' <<<"$b")"
    ok=1
  fi
  for f in $a; do
    if ! cmp -s "$TALLY_ROOT/crds/$f" "$CHART/crds/$f"; then
      echo "charts/tally/crds/$f differs from crds/$f: run make crds"
      ok=1
    fi
  done
  return "$ok"
}

# contract MODE FILE — the rendered objects (FILE) against what the operator expects;
# MODE names the values they were rendered with (defaults, all-on, trial-no-persistence).
contract() {
  kpy - "$1" "$2" "$TALLY_ROOT/crds" <<'EOF'
import glob, os, sys, yaml

mode, path, crd_dir = sys.argv[1], sys.argv[2], sys.argv[3]
docs = [d for d in yaml.safe_load_all(open(path)) if d]
problems = []
def expect(cond, msg):
    if not cond:
        problems.append(msg)

objs = {}
for d in docs:
    objs[(d["kind"], d["metadata"]["name"])] = d
def get(kind, name):
    o = objs.get((kind, name))
    expect(o is not None, "missing %s %s" % (kind, name))
    return o or {}

base = {"defaults": "tally", "trial-no-persistence": "tally", "all-on": "tally-ci"}.get(mode, "tally")
op = base + "-operator"
sa_name = {"all-on": "tally-ci-sa"}.get(mode, op)

# Every namespaced object is in the release namespace; standard labels everywhere.
for d in docs:
    md = d["metadata"]
    if d["kind"] not in ("CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
        expect(md.get("namespace") == "tally-system", "%s %s: namespace %r" % (d["kind"], md["name"], md.get("namespace")))
    if d["kind"] != "CustomResourceDefinition":
        labels = md.get("labels") or {}
        for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                  "app.kubernetes.io/managed-by", "helm.sh/chart"):
            expect(k in labels, "%s %s: no label %s" % (d["kind"], md["name"], k))

# The operator Deployment.
dep = get("Deployment", op)
spec = dep.get("spec", {})
pod = spec.get("template", {}).get("spec", {})
pod_labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
sel = spec.get("selector", {}).get("matchLabels", {})
expect(sel and all(pod_labels.get(k) == v for k, v in sel.items()), "Deployment selector does not match its pods")
expect(spec.get("replicas") == {"all-on": 2}.get(mode, 1), "replicas %r" % spec.get("replicas"))
expect(pod.get("serviceAccountName") == sa_name, "serviceAccountName %r" % pod.get("serviceAccountName"))
c = (pod.get("containers") or [{}])[0]
env = {e["name"]: e for e in c.get("env", [])}
def env_value(n):
    return env.get(n, {}).get("value")
images = {
    "defaults": ("tally/operator:0.1.0", "tally/collector:0.1.0", "tally/processor:0.1.0"),
    "trial-no-persistence": ("tally/operator:0.1.0", "tally/collector:0.1.0", "tally/processor:0.1.0"),
    "all-on": ("registry.example.com/team/tally/operator:0.1.0-ci",
               "registry.example.com/team/tally/collector@sha256:" + "0" * 64,
               "mirror.example.com/tally/processor:0.1.1"),
}[mode]
expect(c.get("image") == images[0], "operator image %r" % c.get("image"))
expect(env_value("TALLY_COLLECTOR_IMAGE") == images[1], "TALLY_COLLECTOR_IMAGE %r" % env_value("TALLY_COLLECTOR_IMAGE"))
expect(env_value("TALLY_PROCESSOR_IMAGE") == images[2], "TALLY_PROCESSOR_IMAGE %r" % env_value("TALLY_PROCESSOR_IMAGE"))
expect(env_value("TALLY_LISTEN") == "0.0.0.0:8080", "TALLY_LISTEN %r" % env_value("TALLY_LISTEN"))
expect(env_value("TALLY_LOG_FORMAT") == {"all-on": "text"}.get(mode, "json"), "TALLY_LOG_FORMAT %r" % env_value("TALLY_LOG_FORMAT"))
expect(env.get("POD_NAMESPACE", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace",
       "POD_NAMESPACE is not the downward API's metadata.namespace")
expect("--leader-election=false" not in (c.get("args") or []), "leader election is off")
ports = {p["name"]: p for p in c.get("ports", [])}
expect(ports.get("http", {}).get("containerPort") == 8080, "no container port http 8080")
for probe, path_ in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
    g = c.get(probe, {}).get("httpGet", {})
    expect(g.get("path") == path_ and g.get("port") == "http", "%s is not GET %s on http" % (probe, path_))
sc, psc = c.get("securityContext", {}), pod.get("securityContext", {})
expect(sc.get("runAsNonRoot") or psc.get("runAsNonRoot"), "not runAsNonRoot")
expect(sc.get("readOnlyRootFilesystem") is True, "not readOnlyRootFilesystem")
expect(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation not false")
expect(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities not drop ALL")
expect((sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", "seccomp not RuntimeDefault")
expect(c.get("resources", {}).get("requests"), "no resource requests")

# The metrics Service: port "http", selecting the operator pods.
svc = get("Service", op)
sp = {p["name"]: p for p in svc.get("spec", {}).get("ports", [])}
expect(sp.get("http", {}).get("targetPort") == "http", "Service has no port http -> http")
ssel = svc.get("spec", {}).get("selector", {})
expect(ssel and all(pod_labels.get(k) == v for k, v in ssel.items()), "Service selector does not match the operator pods")

# RBAC: exactly the contract, no wildcards.
def triples(rules):
    out = set()
    for r in rules:
        for g in r.get("apiGroups", []):
            for res in r.get("resources", []):
                for v in r.get("verbs", []):
                    out.add((g, res, v, tuple(r.get("resourceNames", []))))
    return out
def expand(groups, resources, verbs, names=()):
    return {(g, r, v, tuple(names)) for g in groups for r in resources for v in verbs}
crud = ["get", "list", "watch", "create", "patch", "update", "delete"]
want_cluster = (
    expand(["tally.dev"], ["analyticspipelines", "analyticssites"], ["get", "list", "watch", "patch", "update"])
    | expand(["tally.dev"], ["analyticspipelines/status", "analyticssites/status"], ["get", "patch", "update"])
    | expand(["tally.dev"], ["analyticspipelines/finalizers", "analyticssites/finalizers"], ["update"])
    | expand([""], ["configmaps", "services"], crud)
    | expand(["apps"], ["deployments"], crud)
    | expand([""], ["secrets"], ["get", "list", "watch"])
    | expand(["events.k8s.io"], ["events"], ["create", "patch"])
)
want_role = (expand(["coordination.k8s.io"], ["leases"], ["create"])
             | expand(["coordination.k8s.io"], ["leases"], ["get", "update", "patch"], ["tally-operator"]))
cr = get("ClusterRole", op)
got = triples(cr.get("rules", []))
expect(got == want_cluster, "ClusterRole %s: extra %s, missing %s" % (op, sorted(got - want_cluster), sorted(want_cluster - got)))
role = get("Role", op + "-leader-election")
got = triples(role.get("rules", []))
expect(got == want_role, "Role: extra %s, missing %s" % (sorted(got - want_role), sorted(want_role - got)))
for d in docs:
    if d["kind"] in ("ClusterRole", "Role"):
        for r in d.get("rules", []):
            for k in ("apiGroups", "resources", "verbs"):
                expect("*" not in r.get(k, []), "%s %s has a wildcard in %s" % (d["kind"], d["metadata"]["name"], k))
for kind, name, ref in (("ClusterRoleBinding", op, op), ("RoleBinding", op + "-leader-election", op + "-leader-election")):
    b = get(kind, name)
    expect(b.get("roleRef", {}).get("name") == ref, "%s %s roleRef" % (kind, name))
    expect(b.get("subjects") == [{"kind": "ServiceAccount", "name": sa_name, "namespace": "tally-system"}],
           "%s %s subjects %r" % (kind, name, b.get("subjects")))
get("ServiceAccount", sa_name)

# The CRDs rendered from the chart's crds/ are the generated ones.
want_crds = {}
for f in sorted(glob.glob(os.path.join(crd_dir, "*.yaml"))):
    for d in yaml.safe_load_all(open(f)):
        if d:
            want_crds[d["metadata"]["name"]] = d
got_crds = {d["metadata"]["name"]: d for d in docs if d["kind"] == "CustomResourceDefinition"}
expect(set(got_crds) == set(want_crds) == {"analyticspipelines.tally.dev", "analyticssites.tally.dev"},
       "CRDs rendered: %s" % sorted(got_crds))
for n in want_crds:
    expect(got_crds.get(n) == want_crds[n], "CRD %s differs from crds/" % n)

kinds = sorted({d["kind"] for d in docs})
if mode == "defaults":
    expect(kinds == ["ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Deployment",
                     "Role", "RoleBinding", "Service", "ServiceAccount"], "kinds rendered by default: %s" % kinds)

def statefulset(component, name, image_prefix, ports, ready_path, data_path, persistence):
    st = get("StatefulSet", name)
    s = st.get("spec", {})
    tpl = s.get("template", {})
    c = (tpl.get("spec", {}).get("containers") or [{}])[0]
    expect(c.get("image", "").startswith(image_prefix), "%s image %r" % (name, c.get("image")))
    cp = {p["containerPort"] for p in c.get("ports", [])}
    expect(set(ports) <= cp, "%s container ports %s" % (name, sorted(cp)))
    expect(c.get("readinessProbe", {}).get("httpGet", {}).get("path") == ready_path, "%s readiness path" % name)
    expect(any(m["mountPath"] == data_path for m in c.get("volumeMounts", [])), "%s: nothing mounted on %s" % (name, data_path))
    vct = s.get("volumeClaimTemplates") or []
    vols = {v["name"]: v for v in tpl.get("spec", {}).get("volumes", [])}
    if persistence:
        expect([v["metadata"]["name"] for v in vct] == ["data"], "%s: no PVC template data" % name)
        expect("data" not in vols, "%s: data is both a PVC and a volume" % name)
    else:
        expect(not vct, "%s: PVC template without persistence" % name)
        expect("emptyDir" in vols.get("data", {}), "%s: data is not an emptyDir" % name)
    sel = s.get("selector", {}).get("matchLabels", {})
    labels = tpl.get("metadata", {}).get("labels", {})
    expect(sel and all(labels.get(k) == v for k, v in sel.items()), "%s selector does not match its pods" % name)
    svc = get("Service", name)
    sp = {p["port"] for p in svc.get("spec", {}).get("ports", [])}
    expect(set(ports) <= sp, "Service %s ports %s" % (name, sorted(sp)))
    ssel = svc.get("spec", {}).get("selector", {})
    expect(ssel and all(labels.get(k) == v for k, v in ssel.items()), "Service %s does not select its pods" % name)
    expect(s.get("serviceName") == name + "-headless", "%s serviceName" % name)
    get("Service", name + "-headless")

if mode in ("all-on", "trial-no-persistence"):
    persistent = mode == "all-on"
    statefulset("nats", base + "-nats", "nats:2.15.1-alpine", [4222, 8222], "/healthz?js-enabled-only=true", "/data", persistent)
    statefulset("clickhouse", base + "-clickhouse", "clickhouse/clickhouse-server:26.", [8123], "/ping", "/var/lib/clickhouse", persistent)
    npol = get("NetworkPolicy", op)
    ns = npol.get("spec", {})
    psel = ns.get("podSelector", {}).get("matchLabels", {})
    expect(psel and all(pod_labels.get(k) == v for k, v in psel.items()), "NetworkPolicy does not select the operator pods")
    expect(sorted(ns.get("policyTypes", [])) == ["Egress", "Ingress"], "NetworkPolicy policyTypes")
    for rule in ns.get("ingress", []):
        expect([p.get("port") for p in rule.get("ports", [])] == ["http"], "ingress open beyond the http port")
    eports = {p.get("port") for r in ns.get("egress", []) for p in r.get("ports", [])}
    expect({53, 443, 6443, 4222} <= eports, "egress ports %s" % sorted(eports, key=str))
    expect(all(r.get("ports") for r in ns.get("egress", [])), "an egress rule open on every port")

if mode == "all-on":
    sm = get("ServiceMonitor", op)
    smsel = sm.get("spec", {}).get("selector", {}).get("matchLabels", {})
    svc_labels = svc.get("metadata", {}).get("labels", {})
    expect(smsel and all(svc_labels.get(k) == v for k, v in smsel.items()), "ServiceMonitor does not select the operator Service")
    ep = (sm.get("spec", {}).get("endpoints") or [{}])[0]
    expect(ep.get("port") == "http" and ep.get("path") == "/metrics", "ServiceMonitor endpoint %r" % ep)
    expect(sm.get("metadata", {}).get("labels", {}).get("release") == "prometheus", "ServiceMonitor extra labels")

if problems:
    print("\n".join(problems))
    sys.exit(1)
print("%d objects match the contract (%s)" % (len(docs), mode))
EOF
}

# notes_tell — NOTES.txt (rendered by Helm 4's client-side dry run) names the trial
# servers' in-cluster URLs and the next step.
notes_tell() {
  local out
  out="$(KUBECONFIG=/dev/null "$KUBE_TOOLS_BIN/helm" install "$RELEASE" "$CHART" -n "$NAMESPACE" \
    --dry-run=client --set nats.enabled=true,clickhouse.enabled=true 2>&1)" || {
    printf '%s\n' "$out"
    return 1
  }
  local notes="${out#*NOTES:}" needle ok=0
  for needle in "spec.nats.url" "nats://tally-nats.tally-system.svc.cluster.local:4222" \
    "spec.clickhouse.url" "http://tally-clickhouse.tally-system.svc.cluster.local:8123" \
    "kubectl apply -f examples/"; do
    grep -qF -- "$needle" <<<"$notes" || { echo "NOTES.txt does not say: $needle"; ok=1; }
  done
  ((ok == 0)) || printf '%s\n' "$notes"
  return "$ok"
}

# --- the offline checks ---------------------------------------------------------------

log "chart-test: $CHART (helm: $KUBE_TOOLS_BIN, kubernetes-validate $KUBERNETES_VALIDATE_VERSION)"
check "charts/tally/crds/*.yaml are crds/*.yaml (make crds)" crds_in_sync

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
    case "$set" in
      defaults | all-on | trial-no-persistence)
        check "$hname: rendered objects match the operator's contract ($set)" contract "$set" "$rendered" ;;
    esac
  done

  # values.schema.json (and the template's own checks) refuse bad values.
  check "$hname: lint refuses replicaCount=-1" expect_lint_refused "$hbin" replicaCount --set replicaCount=-1
  check "$hname: lint refuses image.pullPolicy=Sometimes" expect_lint_refused "$hbin" pullPolicy --set image.pullPolicy=Sometimes
  check "$hname: refuses replicaCount=-1" expect_refused "$hbin" replicaCount --set replicaCount=-1
  check "$hname: refuses image.pullPolicy=Sometimes" expect_refused "$hbin" pullPolicy --set image.pullPolicy=Sometimes
  check "$hname: refuses replicaCount=\"two\"" expect_refused "$hbin" replicaCount --set-string replicaCount=two
  check "$hname: refuses logFormat=xml" expect_refused "$hbin" logFormat --set logFormat=xml
  check "$hname: refuses an unknown value (replicas=2)" expect_refused "$hbin" replicas --set replicas=2
  check "$hname: refuses nats.persistence.size=lots" expect_refused "$hbin" size --set nats.persistence.size=lots
  check "$hname: refuses service.port=70000" expect_refused "$hbin" port --set service.port=70000
  check "$hname: refuses clickhouse.image.pullPolicy=Sometimes" expect_refused "$hbin" pullPolicy --set clickhouse.image.pullPolicy=Sometimes
  check "$hname: refuses replicaCount=2 without leader election" expect_refused "$hbin" leaderElection \
    --set replicaCount=2,leaderElection.enabled=false
  check "$hname: refuses Kubernetes 1.29 (kubeVersion >=1.30)" expect_refused "$hbin" kubeVersion \
    --kube-version v1.29.0
  check "$hname: refuses serviceAccount.create=false without a name" expect_refused "$hbin" serviceAccount.name \
    --set serviceAccount.create=false
done
check "helm 4: NOTES.txt tells the trial URLs and kubectl apply -f examples/" notes_tell

# --- the real install (--install) -------------------------------------------------------

# installed HELM VALUES_SET — install the chart with HELM, wait, check it, uninstall.
installed() {
  local helm="$1" set="$2" t0=$SECONDS
  local -a vargs
  mapfile -t vargs < <(values_args "$set")
  "$helm" install "$RELEASE" "$CHART" -n "$NAMESPACE" --create-namespace --wait --timeout 3m \
    "${vargs[@]}" || { "$KUBECTL" -n "$NAMESPACE" get all,pvc -o wide; return 1; }
  echo "installed in $((SECONDS - t0))s"
  local ok=0
  "$KUBECTL" -n "$NAMESPACE" wait --for=condition=Available deployment/tally-operator --timeout=60s || ok=1
  "$KUBECTL" wait --for=condition=Established --timeout=60s \
    crd/analyticspipelines.tally.dev crd/analyticssites.tally.dev || ok=1
  if [[ "$set" != defaults ]]; then
    "$KUBECTL" -n "$NAMESPACE" rollout status statefulset/tally-nats --timeout=60s || ok=1
    "$KUBECTL" -n "$NAMESPACE" rollout status statefulset/tally-clickhouse --timeout=60s || ok=1
    "$KUBECTL" -n "$NAMESPACE" get service tally-nats tally-clickhouse || ok=1
  fi
  # Least privilege, as the API server's authorizer sees it.
  local as="system:serviceaccount:$NAMESPACE:tally-operator" q want got
  while read -r want q; do
    # shellcheck disable=SC2086  # q is several words on purpose
    got="$("$KUBECTL" auth can-i --as "$as" $q 2>/dev/null || true)"
    if [[ "$got" != "$want" ]]; then
      echo "can-i $q: $got, expected $want"
      ok=1
    fi
  done <<EOF
yes patch analyticspipelines.tally.dev -n default
yes update analyticssites.tally.dev --subresource=status -n default
yes update analyticspipelines.tally.dev --subresource=finalizers -n default
no delete analyticspipelines.tally.dev -n default
yes create deployments.apps -n default
yes delete configmaps -n default
yes watch secrets -n default
no create secrets -n default
yes create events.events.k8s.io -n default
yes create leases.coordination.k8s.io -n $NAMESPACE
yes update leases.coordination.k8s.io/tally-operator -n $NAMESPACE
no update leases.coordination.k8s.io/other -n $NAMESPACE
no create leases.coordination.k8s.io -n default
no create analyticspipelines.tally.dev -n default
no delete pods -n default
EOF
  # The examples are valid AnalyticsPipeline/AnalyticsSite objects to the CRDs.
  "$KUBECTL" apply --dry-run=server -n default -f "$TALLY_ROOT/examples/" || ok=1
  "$helm" status "$RELEASE" -n "$NAMESPACE" | sed -n '/^NOTES:/,$p' | grep -qF 'kubectl apply -f examples/' || {
    echo "NOTES.txt does not name the next step"
    ok=1
  }
  t0=$SECONDS
  "$helm" uninstall "$RELEASE" -n "$NAMESPACE" --wait --timeout 2m || ok=1
  echo "uninstalled in $((SECONDS - t0))s"
  if "$KUBECTL" -n "$NAMESPACE" get deployment tally-operator >/dev/null 2>&1; then
    echo "the operator Deployment is still there after uninstall"
    ok=1
  fi
  return "$ok"
}

# storage_note — say whether the cluster could bind the trial servers' PVCs.
storage_note() {
  local classes
  classes="$("$KUBECTL" get storageclass -o name 2>/dev/null | tr '\n' ' ')"
  log "StorageClasses in the test cluster: ${classes:-none} (without a provisioner PVCs stay" \
    "Pending: the install test runs NATS and ClickHouse with persistence.enabled=false)"
}

if ((install_test)); then
  k8s_workdir="$work/k8s"
  t_up=$SECONDS
  if "$TALLY_SCRIPTS/k8s-up.sh" "$k8s_workdir"; then
    log "cluster up in $((SECONDS - t_up))s"
    # shellcheck disable=SC1091
    source "$k8s_workdir/k8s.env"
    storage_note
    # shellcheck disable=SC2153  # HELM, HELM3 and KUBECTL come from k8s.env
    check "helm 4: install --wait (defaults), check, uninstall" installed "$HELM" defaults
    check "helm 3: install --wait (trial-no-persistence), check, uninstall" installed "$HELM3" trial-no-persistence
  else
    check "test cluster up (k8s-up.sh)" false
  fi
  # Down before the summary, so that the summary is the last line.
  "$TALLY_SCRIPTS/k8s-down.sh" "$k8s_workdir" || true
  k8s_workdir=""
fi

log "chart-test took $((SECONDS - t_start))s"
if ((failed > 0)); then
  printf 'failed: %s\n' "${failures[@]}"
fi
echo "chart-test: $passed passed, $failed failed"
((failed == 0))
