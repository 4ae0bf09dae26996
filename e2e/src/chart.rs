//! The Helm chart (charts/tally) against the contract the operator is written to: renders it
//! with the pinned Helm 4 and Helm 3 (`helm template`, offline, with throw-away Helm home
//! directories), parses the manifests and checks names, labels, env, ports, probes, security
//! context, images, the trial servers, the NetworkPolicy and ServiceMonitor, and the
//! least-privilege RBAC ([`OPERATOR_RULES`], [`LEADER_ELECTION_RULES`]: written here once,
//! checked against the rendered Roles and, by tests/chart.rs, against a real API server's
//! `kubectl auth can-i`). Also: the values the chart must refuse ([`REFUSALS`]), the chart's
//! CRD copies against crds/, and what NOTES.txt must tell.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_yaml::Value;

use crate::cluster::repo_root;

/// The release name every check renders and installs with.
pub const RELEASE: &str = "tally";
/// The namespace every check renders and installs into.
pub const NAMESPACE: &str = "tally-system";
/// The Kubernetes version manifests are rendered for (`helm template --kube-version`).
pub const KUBE_VERSION: &str = "v1.35.0";
/// The Lease the operator's leader election holds (the only one its Role names).
pub const LEADER_ELECTION_LEASE: &str = "tally-operator";

/// One RBAC rule: every verb on every resource of every API group, limited to
/// `resource_names` when there are any.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub api_groups: &'static [&'static str],
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
    pub resource_names: &'static [&'static str],
}

const CRUD: &[&str] = &[
    "get", "list", "watch", "create", "patch", "update", "delete",
];

/// What the operator's ClusterRole grants, and nothing more.
pub const OPERATOR_RULES: &[Rule] = &[
    Rule {
        api_groups: &["tally.dev"],
        resources: &["analyticspipelines", "analyticssites"],
        verbs: &["get", "list", "watch", "patch", "update"],
        resource_names: &[],
    },
    Rule {
        api_groups: &["tally.dev"],
        resources: &["analyticspipelines/status", "analyticssites/status"],
        verbs: &["get", "patch", "update"],
        resource_names: &[],
    },
    Rule {
        api_groups: &["tally.dev"],
        resources: &["analyticspipelines/finalizers", "analyticssites/finalizers"],
        verbs: &["update"],
        resource_names: &[],
    },
    Rule {
        api_groups: &[""],
        resources: &["configmaps", "services"],
        verbs: CRUD,
        resource_names: &[],
    },
    Rule {
        api_groups: &["apps"],
        resources: &["deployments"],
        verbs: CRUD,
        resource_names: &[],
    },
    Rule {
        api_groups: &[""],
        resources: &["secrets"],
        verbs: &["get", "list", "watch"],
        resource_names: &[],
    },
    Rule {
        api_groups: &["events.k8s.io"],
        resources: &["events"],
        verbs: &["create", "patch"],
        resource_names: &[],
    },
];

/// What the leader-election Role grants in the release namespace: creating a Lease, and
/// keeping its own.
pub const LEADER_ELECTION_RULES: &[Rule] = &[
    Rule {
        api_groups: &["coordination.k8s.io"],
        resources: &["leases"],
        verbs: &["create"],
        resource_names: &[],
    },
    Rule {
        api_groups: &["coordination.k8s.io"],
        resources: &["leases"],
        verbs: &["get", "update", "patch"],
        resource_names: &[LEADER_ELECTION_LEASE],
    },
];

/// Every verb the least-privilege checks ask about for a resource the rules name.
pub const VERBS: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];

/// One permission: API group, resource (`name/subresource` for a subresource), verb and
/// the object's name (empty: any object).
pub type Permission = (String, String, String, String);

/// The permissions `rules` grant, one per group, resource, verb and name.
pub fn permissions(rules: &[Rule]) -> BTreeSet<Permission> {
    let mut out = BTreeSet::new();
    for rule in rules {
        let names: Vec<&str> = if rule.resource_names.is_empty() {
            vec![""]
        } else {
            rule.resource_names.to_vec()
        };
        for group in rule.api_groups {
            for resource in rule.resources {
                for verb in rule.verbs {
                    for name in &names {
                        out.insert((
                            (*group).into(),
                            (*resource).into(),
                            (*verb).into(),
                            (*name).into(),
                        ));
                    }
                }
            }
        }
    }
    out
}

/// The permissions the `rules` of a rendered Role or ClusterRole grant.
pub fn rendered_permissions(rules: &Value) -> BTreeSet<Permission> {
    let mut out = BTreeSet::new();
    for rule in seq(rules) {
        let names: Vec<&str> = match strs(&rule["resourceNames"]) {
            names if names.is_empty() => vec![""],
            names => names,
        };
        for group in strs(&rule["apiGroups"]) {
            for resource in strs(&rule["resources"]) {
                for verb in strs(&rule["verbs"]) {
                    for name in &names {
                        out.insert((group.into(), resource.into(), verb.into(), (*name).into()));
                    }
                }
            }
        }
    }
    out
}

/// Whether `granted` allows `verb` on `resource` of `group` (object `name`, or any object
/// when empty): a grant without names covers every object.
pub fn allows(
    granted: &BTreeSet<Permission>,
    group: &str,
    resource: &str,
    verb: &str,
    name: &str,
) -> bool {
    let key = |n: &str| (group.into(), resource.into(), verb.into(), n.into());
    granted.contains(&key("")) || (!name.is_empty() && granted.contains(&key(name)))
}

/// A value the chart must refuse: what is wrong, the `helm template` arguments that set it,
/// the word helm's message must contain, and whether `helm lint --strict` is asked too.
pub struct Refusal {
    pub what: &'static str,
    pub args: &'static [&'static str],
    pub names: &'static str,
    pub lint: bool,
}

/// values.schema.json and the templates' own checks refuse these.
pub const REFUSALS: &[Refusal] = &[
    Refusal {
        what: "replicaCount=-1",
        args: &["--set", "replicaCount=-1"],
        names: "replicaCount",
        lint: true,
    },
    Refusal {
        what: "image.pullPolicy=Sometimes",
        args: &["--set", "image.pullPolicy=Sometimes"],
        names: "pullPolicy",
        lint: true,
    },
    Refusal {
        what: "replicaCount=\"two\"",
        args: &["--set-string", "replicaCount=two"],
        names: "replicaCount",
        lint: false,
    },
    Refusal {
        what: "logFormat=xml",
        args: &["--set", "logFormat=xml"],
        names: "logFormat",
        lint: false,
    },
    Refusal {
        what: "an unknown value (replicas=2)",
        args: &["--set", "replicas=2"],
        names: "replicas",
        lint: false,
    },
    Refusal {
        what: "nats.persistence.size=lots",
        args: &["--set", "nats.persistence.size=lots"],
        names: "size",
        lint: false,
    },
    Refusal {
        what: "service.port=70000",
        args: &["--set", "service.port=70000"],
        names: "port",
        lint: false,
    },
    Refusal {
        what: "clickhouse.image.pullPolicy=Sometimes",
        args: &["--set", "clickhouse.image.pullPolicy=Sometimes"],
        names: "pullPolicy",
        lint: false,
    },
    Refusal {
        what: "replicaCount=2 without leader election",
        args: &["--set", "replicaCount=2,leaderElection.enabled=false"],
        names: "leaderElection",
        lint: false,
    },
    Refusal {
        what: "Kubernetes 1.29 (kubeVersion >=1.30)",
        args: &["--kube-version", "v1.29.0"],
        names: "kubeVersion",
        lint: false,
    },
    Refusal {
        what: "ingress.enabled=true without hosts",
        args: &["--set", "ingress.enabled=true"],
        names: "ingress.hosts",
        lint: false,
    },
    Refusal {
        what: "an Ingress host without its pipeline",
        args: &[
            "--set",
            "ingress.enabled=true,ingress.hosts[0].host=collect.example.com",
        ],
        names: "pipeline",
        lint: false,
    },
    Refusal {
        what: "serviceAccount.create=false without a name",
        args: &["--set", "serviceAccount.create=false"],
        names: "serviceAccount.name",
        lint: false,
    },
];

/// What NOTES.txt must say when the trial servers are on: their in-cluster URLs, the
/// fields they go into, and the next step.
pub const NOTES_MUST_SAY: &[&str] = &[
    "spec.nats.url",
    "nats://tally-nats.tally-system.svc.cluster.local:4222",
    "spec.clickhouse.url",
    "http://tally-clickhouse.tally-system.svc.cluster.local:8123",
    "kubectl apply -f examples/",
];

/// The chart's directory.
pub fn chart_dir() -> PathBuf {
    repo_root().join("charts/tally")
}

/// The value sets the chart is tested with: `defaults`, then each `ci/<set>-values.yaml`.
pub fn value_sets() -> anyhow::Result<Vec<String>> {
    let mut sets = Vec::new();
    for entry in std::fs::read_dir(chart_dir().join("ci"))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(set) = name.strip_suffix("-values.yaml") {
            sets.push(set.to_owned());
        }
    }
    sets.sort();
    sets.insert(0, "defaults".to_owned());
    Ok(sets)
}

/// The helm flags for a value set.
pub fn values_args(set: &str) -> Vec<String> {
    if set == "defaults" {
        return Vec::new();
    }
    let file = chart_dir().join(format!("ci/{set}-values.yaml"));
    vec!["-f".into(), file.display().to_string()]
}

/// The directory of the pinned kubectl, helm (4) and helm3, installed on first use by
/// e2e/scripts/install-kube-tools.sh (which prints it).
pub fn kube_tools_bin() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    if let Some(bin) = BIN.get() {
        return Ok(bin.clone());
    }
    let script = repo_root().join("e2e/scripts/install-kube-tools.sh");
    let out = Command::new(&script)
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "install-kube-tools.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let bin = stdout
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .map(|l| PathBuf::from(l.trim()))
        .context("install-kube-tools.sh printed no directory")?;
    Ok(BIN.get_or_init(|| bin).clone())
}

/// A helm binary with Helm home directories of its own, removed when dropped, and the
/// cluster it talks to (none: `KUBECONFIG=/dev/null`).
pub struct Helm {
    pub bin: PathBuf,
    home: PathBuf,
    kubeconfig: PathBuf,
}

impl Helm {
    /// `helm` (Helm 4) or `helm3`, from [`kube_tools_bin`], for the cluster of `kubeconfig`.
    pub fn for_cluster(binary: &str, kubeconfig: &Path) -> anyhow::Result<Self> {
        let mut helm = Self::new(binary)?;
        helm.kubeconfig = kubeconfig.to_owned();
        Ok(helm)
    }

    /// `helm` (Helm 4) or `helm3`, from [`kube_tools_bin`], with no cluster.
    pub fn new(binary: &str) -> anyhow::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let home = std::env::temp_dir().join(format!(
            "tally-helm-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        for dir in ["cache", "config", "data"] {
            std::fs::create_dir_all(home.join(dir))?;
        }
        Ok(Self {
            bin: kube_tools_bin()?.join(binary),
            home,
            kubeconfig: "/dev/null".into(),
        })
    }

    /// A command for this helm with its own HELM_CACHE_HOME, HELM_CONFIG_HOME and
    /// HELM_DATA_HOME, and its KUBECONFIG.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.bin);
        command
            .env("HELM_CACHE_HOME", self.home.join("cache"))
            .env("HELM_CONFIG_HOME", self.home.join("config"))
            .env("HELM_DATA_HOME", self.home.join("data"))
            .env("KUBECONFIG", &self.kubeconfig);
        command
    }

    /// `helm ARGS`, whatever its exit status.
    pub fn run(&self, args: &[String]) -> anyhow::Result<Output> {
        self.command()
            .args(args)
            .output()
            .with_context(|| format!("cannot run {}", self.bin.display()))
    }

    /// `helm ARGS`: its standard output, or an error with its messages when it fails.
    pub fn ok(&self, args: &[String]) -> anyhow::Result<String> {
        let out = self.run(args)?;
        if !out.status.success() {
            bail!(
                "{} {}: {}{}",
                self.bin.display(),
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// "helm 4.1.4", say.
    pub fn version(&self) -> anyhow::Result<String> {
        let out = self.run(&["version".into(), "--short".into()])?;
        let short = String::from_utf8_lossy(&out.stdout);
        let version = short.trim().trim_start_matches('v');
        Ok(format!(
            "helm {}",
            version.split('+').next().unwrap_or(version)
        ))
    }

    /// The arguments of `helm template` for the release, CRDs included, plus `extra`.
    pub fn template_args(extra: &[String]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "template".into(),
            RELEASE.into(),
            chart_dir().display().to_string(),
            "-n".into(),
            NAMESPACE.into(),
            "--include-crds".into(),
            "--kube-version".into(),
            KUBE_VERSION.into(),
        ];
        args.extend(extra.iter().cloned());
        args
    }

    /// `helm template` with a value set: the rendered documents.
    pub fn render(&self, set: &str) -> anyhow::Result<Vec<Value>> {
        let out = self.run(&Self::template_args(&values_args(set)))?;
        if !out.status.success() {
            bail!(
                "helm template ({set}) failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        documents(&String::from_utf8_lossy(&out.stdout))
    }

    /// `helm template` (and `helm lint --strict` when the refusal says so) with a bad value:
    /// what is wrong with the answers (empty when helm refused, naming the value).
    pub fn refusal_problems(&self, refusal: &Refusal) -> anyhow::Result<Vec<String>> {
        let extra: Vec<String> = refusal.args.iter().map(|a| (*a).to_owned()).collect();
        // `--kube-version` is the value under test when it is given: do not override it.
        let mut template = vec![
            "template".to_owned(),
            RELEASE.into(),
            chart_dir().display().to_string(),
            "-n".into(),
            NAMESPACE.into(),
        ];
        template.extend(extra.iter().cloned());
        let mut runs = vec![("helm template", template)];
        if refusal.lint {
            let mut lint = vec![
                "lint".to_owned(),
                "--strict".into(),
                chart_dir().display().to_string(),
            ];
            lint.extend(extra);
            runs.push(("helm lint --strict", lint));
        }
        let mut problems = Vec::new();
        for (what, args) in runs {
            let out = self.run(&args)?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if out.status.success() {
                problems.push(format!("{what} accepted {}", refusal.what));
            } else if !text.to_lowercase().contains(&refusal.names.to_lowercase()) {
                problems.push(format!(
                    "{what} refused {} without naming {:?}: {}",
                    refusal.what,
                    refusal.names,
                    text.trim()
                ));
            }
        }
        Ok(problems)
    }

    /// NOTES.txt as `helm install --dry-run=client` renders it with the trial servers on.
    pub fn trial_notes(&self) -> anyhow::Result<String> {
        let args: Vec<String> = [
            "install",
            RELEASE,
            &chart_dir().display().to_string(),
            "-n",
            NAMESPACE,
            "--dry-run=client",
            "--set",
            "nats.enabled=true,clickhouse.enabled=true",
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
        let out = self.run(&args)?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "helm install --dry-run=client failed: {}{}",
                text,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(notes_section(&text).to_owned())
    }
}

impl Drop for Helm {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// What follows `NOTES:` in helm's output (all of it when there is no such line).
pub fn notes_section(output: &str) -> &str {
    output
        .split_once("NOTES:")
        .map_or(output, |(_, notes)| notes)
}

/// The [`NOTES_MUST_SAY`] lines `notes` does not say.
pub fn notes_problems(notes: &str) -> Vec<String> {
    NOTES_MUST_SAY
        .iter()
        .filter(|needle| !notes.contains(**needle))
        .map(|needle| format!("NOTES.txt does not say: {needle}"))
        .collect()
}

/// The non-empty documents of a multi-document YAML text.
pub fn documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).context("rendered YAML does not parse")?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// The CustomResourceDefinitions `make crds` generated (crds/*.yaml).
pub fn generated_crds() -> anyhow::Result<Vec<Value>> {
    let mut docs = Vec::new();
    for file in yaml_files(&repo_root().join("crds"))? {
        docs.extend(documents(&std::fs::read_to_string(&file)?)?);
    }
    Ok(docs)
}

fn yaml_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    if dir.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// What differs between `generated` (crds/) and `chart` (charts/tally/crds/): both must
/// hold the same *.yaml files, byte for byte.
pub fn crd_copy_problems(generated: &Path, chart: &Path) -> anyhow::Result<Vec<String>> {
    let names = |dir: &Path| -> anyhow::Result<Vec<String>> {
        Ok(yaml_files(dir)?
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    };
    let (want, have) = (names(generated)?, names(chart)?);
    let mut problems = Vec::new();
    if want.is_empty() {
        problems.push(format!("no *.yaml in {}", generated.display()));
    }
    if want != have {
        problems.push(format!(
            "{} has {want:?}, {} has {have:?}",
            generated.display(),
            chart.display()
        ));
    }
    for name in &want {
        let a = std::fs::read(generated.join(name))?;
        if std::fs::read(chart.join(name)).ok().as_deref() != Some(a.as_slice()) {
            problems.push(format!(
                "{} differs from {}: run make crds",
                chart.join(name).display(),
                generated.join(name).display()
            ));
        }
    }
    Ok(problems)
}

/// The value sets the contract has expectations for (the others are only rendered).
pub const CONTRACT_SETS: &[&str] = &["defaults", "all-on", "trial-no-persistence"];

/// Where the rendered objects (`docs`, rendered with value set `set`) break the contract the
/// operator is written to; `crds` are the generated CRDs. Empty when they keep it.
pub fn contract_problems(set: &str, docs: &[Value], crds: &[Value]) -> Vec<String> {
    let mut c = Contract {
        docs,
        problems: Vec::new(),
    };
    c.check(set, crds);
    c.problems
}

static NULL: Value = Value::Null;

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map_or(&[], Vec::as_slice)
}

fn strs(v: &Value) -> Vec<&str> {
    seq(v).iter().filter_map(Value::as_str).collect()
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// Whether `selector` (a label map) is non-empty and every label of it is in `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_mapping()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// The entries of a list of maps, by their `key` field.
fn by<'a>(list: &'a Value, key: &str) -> BTreeMap<String, &'a Value> {
    seq(list)
        .iter()
        .map(|item| (yaml_key(&item[key]), item))
        .collect()
}

fn yaml_key(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

/// The numbers in `field` of the `items`.
fn numbers<'a>(items: impl IntoIterator<Item = &'a Value>, field: &str) -> BTreeSet<u64> {
    items
        .into_iter()
        .filter_map(|item| item[field].as_u64())
        .collect()
}

fn nonempty(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Mapping(m) => !m.is_empty(),
        Value::Sequence(s) => !s.is_empty(),
        Value::String(s) => !s.is_empty(),
        Value::Bool(b) => *b,
        _ => true,
    }
}

fn show(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| format!("{v:?}"))
}

struct Contract<'a> {
    docs: &'a [Value],
    problems: Vec<String>,
}

impl<'a> Contract<'a> {
    fn expect(&mut self, ok: bool, problem: impl FnOnce() -> String) {
        if !ok {
            self.problems.push(problem());
        }
    }

    /// The object of `kind` named `name`; a problem (and null) when there is none.
    fn get(&mut self, kind: &str, name: &str) -> &'a Value {
        let docs = self.docs;
        let found = docs
            .iter()
            .find(|d| text(&d["kind"]) == kind && text(&d["metadata"]["name"]) == name);
        self.expect(found.is_some(), || format!("missing {kind} {name}"));
        found.unwrap_or(&NULL)
    }

    fn check(&mut self, set: &str, crds: &[Value]) {
        let all_on = set == "all-on";
        let base = if all_on { "tally-ci" } else { "tally" };
        let op = format!("{base}-operator");
        let sa = if all_on {
            "tally-ci-sa".to_owned()
        } else {
            op.clone()
        };

        self.namespaces_and_labels();
        let pod_labels = self.deployment(set, &op, &sa);
        let service = self.service(&op, pod_labels);
        self.rbac(&op, &sa);
        self.crds(crds);

        let docs = self.docs;
        let kinds: BTreeSet<&str> = docs.iter().map(|d| text(&d["kind"])).collect();
        if set == "defaults" {
            let want: BTreeSet<&str> = [
                "ClusterRole",
                "ClusterRoleBinding",
                "CustomResourceDefinition",
                "Deployment",
                "Role",
                "RoleBinding",
                "Service",
                "ServiceAccount",
            ]
            .into();
            self.expect(kinds == want, || {
                format!("kinds rendered by default: {kinds:?}")
            });
        }
        if all_on || set == "trial-no-persistence" {
            let nats = TrialServer {
                name: format!("{base}-nats"),
                image_prefix: "nats:2.15.1-alpine",
                ports: &[4222, 8222],
                ready_path: "/healthz?js-enabled-only=true",
                data_path: "/data",
            };
            let clickhouse = TrialServer {
                name: format!("{base}-clickhouse"),
                image_prefix: "clickhouse/clickhouse-server:26.",
                ports: &[8123],
                ready_path: "/ping",
                data_path: "/var/lib/clickhouse",
            };
            self.statefulset(&nats, all_on);
            self.statefulset(&clickhouse, all_on);
            self.network_policy(&op, pod_labels);
        }
        if all_on {
            self.service_monitor(&op, service);
            self.ingress(&format!("{base}-collectors"));
        }
    }

    /// Every namespaced object is in the release namespace; standard labels everywhere.
    fn namespaces_and_labels(&mut self) {
        let docs = self.docs;
        for d in docs {
            let (kind, md) = (text(&d["kind"]), &d["metadata"]);
            let name = text(&md["name"]);
            if !matches!(
                kind,
                "CustomResourceDefinition" | "ClusterRole" | "ClusterRoleBinding"
            ) {
                self.expect(text(&md["namespace"]) == NAMESPACE, || {
                    format!("{kind} {name}: namespace {}", show(&md["namespace"]))
                });
            }
            if kind != "CustomResourceDefinition" {
                for label in [
                    "app.kubernetes.io/name",
                    "app.kubernetes.io/instance",
                    "app.kubernetes.io/version",
                    "app.kubernetes.io/managed-by",
                    "helm.sh/chart",
                ] {
                    self.expect(md["labels"].get(label).is_some(), || {
                        format!("{kind} {name}: no label {label}")
                    });
                }
            }
        }
    }

    /// The operator Deployment; returns its pods' labels.
    fn deployment(&mut self, set: &str, op: &str, sa: &str) -> &'a Value {
        let all_on = set == "all-on";
        let spec = &self.get("Deployment", op)["spec"];
        let pod = &spec["template"]["spec"];
        let pod_labels = &spec["template"]["metadata"]["labels"];
        self.expect(
            selects(&spec["selector"]["matchLabels"], pod_labels),
            || "Deployment selector does not match its pods".into(),
        );
        let replicas = if all_on { 2 } else { 1 };
        self.expect(spec["replicas"].as_u64() == Some(replicas), || {
            format!("replicas {}", show(&spec["replicas"]))
        });
        self.expect(text(&pod["serviceAccountName"]) == sa, || {
            format!("serviceAccountName {}", show(&pod["serviceAccountName"]))
        });
        let c = &pod["containers"][0];
        let env = by(&c["env"], "name");
        let env_value = |n: &str| env.get(n).map_or("", |e| text(&e["value"]));
        let zeros = "0".repeat(64);
        let collector_digest = format!("registry.example.com/team/tally/collector@sha256:{zeros}");
        let images: [&str; 4] = if all_on {
            [
                "registry.example.com/team/tally/operator:0.1.0-ci",
                &collector_digest,
                "mirror.example.com/tally/processor:0.1.1",
                "registry.example.com/team/tally/query:0.1.2",
            ]
        } else {
            [
                "tally/operator:0.1.0",
                "tally/collector:0.1.0",
                "tally/processor:0.1.0",
                "tally/query:0.1.0",
            ]
        };
        self.expect(text(&c["image"]) == images[0], || {
            format!("operator image {}", show(&c["image"]))
        });
        let log_format = if all_on { "text" } else { "json" };
        for (var, want) in [
            ("TALLY_COLLECTOR_IMAGE", images[1]),
            ("TALLY_PROCESSOR_IMAGE", images[2]),
            ("TALLY_QUERY_IMAGE", images[3]),
            ("TALLY_LISTEN", "0.0.0.0:8080"),
            ("TALLY_LOG_FORMAT", log_format),
        ] {
            let got = env_value(var);
            self.expect(got == want, || format!("{var} {got:?}, expected {want:?}"));
        }
        let pod_namespace = env.get("POD_NAMESPACE").copied().unwrap_or(&NULL);
        self.expect(
            text(&pod_namespace["valueFrom"]["fieldRef"]["fieldPath"]) == "metadata.namespace",
            || "POD_NAMESPACE is not the downward API's metadata.namespace".into(),
        );
        self.expect(
            !strs(&c["args"]).contains(&"--leader-election=false"),
            || "leader election is off".into(),
        );
        let ports = by(&c["ports"], "name");
        self.expect(
            ports
                .get("http")
                .is_some_and(|p| p["containerPort"].as_u64() == Some(8080)),
            || "no container port http 8080".into(),
        );
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            let get = &c[probe]["httpGet"];
            self.expect(
                text(&get["path"]) == path && text(&get["port"]) == "http",
                || format!("{probe} is not GET {path} on http"),
            );
        }
        let (sc, psc) = (&c["securityContext"], &pod["securityContext"]);
        self.expect(
            sc["runAsNonRoot"].as_bool() == Some(true)
                || psc["runAsNonRoot"].as_bool() == Some(true),
            || "not runAsNonRoot".into(),
        );
        self.expect(sc["readOnlyRootFilesystem"].as_bool() == Some(true), || {
            "not readOnlyRootFilesystem".into()
        });
        self.expect(
            sc["allowPrivilegeEscalation"].as_bool() == Some(false),
            || "allowPrivilegeEscalation not false".into(),
        );
        self.expect(strs(&sc["capabilities"]["drop"]) == ["ALL"], || {
            "capabilities not drop ALL".into()
        });
        let seccomp = if nonempty(&sc["seccompProfile"]) {
            &sc["seccompProfile"]
        } else {
            &psc["seccompProfile"]
        };
        self.expect(text(&seccomp["type"]) == "RuntimeDefault", || {
            "seccomp not RuntimeDefault".into()
        });
        self.expect(nonempty(&c["resources"]["requests"]), || {
            "no resource requests".into()
        });
        pod_labels
    }

    /// The metrics Service: port "http", selecting the operator pods. Returns the Service.
    fn service(&mut self, op: &str, pod_labels: &Value) -> &'a Value {
        let svc = self.get("Service", op);
        let ports = by(&svc["spec"]["ports"], "name");
        self.expect(
            ports
                .get("http")
                .is_some_and(|p| text(&p["targetPort"]) == "http"),
            || "Service has no port http -> http".into(),
        );
        self.expect(selects(&svc["spec"]["selector"], pod_labels), || {
            "Service selector does not match the operator pods".into()
        });
        svc
    }

    /// RBAC: exactly [`OPERATOR_RULES`] and [`LEADER_ELECTION_RULES`], no wildcards, bound
    /// to the operator's ServiceAccount.
    fn rbac(&mut self, op: &str, sa: &str) {
        let leader = format!("{op}-leader-election");
        for (kind, name, rules) in [
            ("ClusterRole", op, OPERATOR_RULES),
            ("Role", leader.as_str(), LEADER_ELECTION_RULES),
        ] {
            let got = rendered_permissions(&self.get(kind, name)["rules"]);
            let want = permissions(rules);
            self.expect(got == want, || {
                format!(
                    "{kind} {name}: extra {:?}, missing {:?}",
                    got.difference(&want).collect::<Vec<_>>(),
                    want.difference(&got).collect::<Vec<_>>()
                )
            });
        }
        let docs = self.docs;
        for d in docs {
            let kind = text(&d["kind"]);
            if kind != "ClusterRole" && kind != "Role" {
                continue;
            }
            for rule in seq(&d["rules"]) {
                for field in ["apiGroups", "resources", "verbs"] {
                    self.expect(!strs(&rule[field]).contains(&"*"), || {
                        format!(
                            "{kind} {} has a wildcard in {field}",
                            text(&d["metadata"]["name"])
                        )
                    });
                }
            }
        }
        let subjects: Value = serde_yaml::from_str(&format!(
            "[{{kind: ServiceAccount, name: {sa}, namespace: {NAMESPACE}}}]"
        ))
        .expect("a YAML list");
        for (kind, name) in [("ClusterRoleBinding", op), ("RoleBinding", leader.as_str())] {
            let binding = self.get(kind, name);
            self.expect(text(&binding["roleRef"]["name"]) == name, || {
                format!("{kind} {name} roleRef {}", show(&binding["roleRef"]))
            });
            self.expect(binding["subjects"] == subjects, || {
                format!("{kind} {name} subjects {}", show(&binding["subjects"]))
            });
        }
        self.get("ServiceAccount", sa);
    }

    /// The CRDs rendered from the chart's crds/ are the generated ones.
    fn crds(&mut self, generated: &[Value]) {
        let by_name = |docs: &'a [Value]| -> BTreeMap<&'a str, &'a Value> {
            docs.iter()
                .filter(|d| text(&d["kind"]) == "CustomResourceDefinition")
                .map(|d| (text(&d["metadata"]["name"]), d))
                .collect()
        };
        let want: BTreeMap<&str, &Value> = generated
            .iter()
            .map(|d| (text(&d["metadata"]["name"]), d))
            .collect();
        let got = by_name(self.docs);
        let names: BTreeSet<&str> = got.keys().copied().collect();
        let expected: BTreeSet<&str> =
            ["analyticspipelines.tally.dev", "analyticssites.tally.dev"].into();
        self.expect(
            names == expected && want.keys().copied().collect::<BTreeSet<_>>() == expected,
            || format!("CRDs rendered: {names:?}"),
        );
        for (name, crd) in &want {
            self.expect(got.get(name) == Some(crd), || {
                format!("CRD {name} differs from crds/")
            });
        }
    }

    fn statefulset(&mut self, server: &TrialServer, persistence: bool) {
        let name = server.name.as_str();
        let spec = &self.get("StatefulSet", name)["spec"];
        let template = &spec["template"];
        let c = &template["spec"]["containers"][0];
        self.expect(text(&c["image"]).starts_with(server.image_prefix), || {
            format!("{name} image {}", show(&c["image"]))
        });
        let container_ports = numbers(seq(&c["ports"]), "containerPort");
        self.expect(
            server.ports.iter().all(|p| container_ports.contains(p)),
            || format!("{name} container ports {container_ports:?}"),
        );
        self.expect(
            text(&c["readinessProbe"]["httpGet"]["path"]) == server.ready_path,
            || format!("{name} readiness path"),
        );
        self.expect(
            seq(&c["volumeMounts"])
                .iter()
                .any(|m| text(&m["mountPath"]) == server.data_path),
            || format!("{name}: nothing mounted on {}", server.data_path),
        );
        let claims: Vec<&str> = seq(&spec["volumeClaimTemplates"])
            .iter()
            .map(|v| text(&v["metadata"]["name"]))
            .collect();
        let volumes = by(&template["spec"]["volumes"], "name");
        if persistence {
            self.expect(claims == ["data"], || {
                format!("{name}: no PVC template data")
            });
            self.expect(!volumes.contains_key("data"), || {
                format!("{name}: data is both a PVC and a volume")
            });
        } else {
            self.expect(claims.is_empty(), || {
                format!("{name}: PVC template without persistence")
            });
            self.expect(
                volumes
                    .get("data")
                    .is_some_and(|v| v.get("emptyDir").is_some()),
                || format!("{name}: data is not an emptyDir"),
            );
        }
        let labels = &template["metadata"]["labels"];
        self.expect(selects(&spec["selector"]["matchLabels"], labels), || {
            format!("{name} selector does not match its pods")
        });
        let svc = self.get("Service", name);
        let service_ports = numbers(seq(&svc["spec"]["ports"]), "port");
        self.expect(
            server.ports.iter().all(|p| service_ports.contains(p)),
            || format!("Service {name} ports {service_ports:?}"),
        );
        self.expect(selects(&svc["spec"]["selector"], labels), || {
            format!("Service {name} does not select its pods")
        });
        self.expect(
            text(&spec["serviceName"]) == format!("{name}-headless"),
            || format!("{name} serviceName"),
        );
        self.get("Service", &format!("{name}-headless"));
    }

    fn network_policy(&mut self, op: &str, pod_labels: &Value) {
        let spec = &self.get("NetworkPolicy", op)["spec"];
        self.expect(
            selects(&spec["podSelector"]["matchLabels"], pod_labels),
            || "NetworkPolicy does not select the operator pods".into(),
        );
        let mut types = strs(&spec["policyTypes"]);
        types.sort_unstable();
        self.expect(types == ["Egress", "Ingress"], || {
            "NetworkPolicy policyTypes".into()
        });
        for rule in seq(&spec["ingress"]) {
            let ports: Vec<&Value> = seq(&rule["ports"]).iter().map(|p| &p["port"]).collect();
            self.expect(ports.len() == 1 && text(ports[0]) == "http", || {
                "ingress open beyond the http port".into()
            });
        }
        let egress = seq(&spec["egress"]);
        let egress_ports = numbers(egress.iter().flat_map(|r| seq(&r["ports"])), "port");
        self.expect(
            [53, 443, 6443, 4222, 8123]
                .iter()
                .all(|p| egress_ports.contains(p)),
            || format!("egress ports {egress_ports:?}"),
        );
        self.expect(egress.iter().all(|r| nonempty(&r["ports"])), || {
            "an egress rule open on every port".into()
        });
    }

    /// The all-on Ingress: each host routes only the event API and the tracker script to
    /// its pipeline's collector Service, with the class, TLS and annotations set.
    fn ingress(&mut self, name: &str) {
        let ingress = self.get("Ingress", name);
        let spec = &ingress["spec"];
        self.expect(text(&spec["ingressClassName"]) == "nginx", || {
            format!("Ingress class {}", show(&spec["ingressClassName"]))
        });
        self.expect(text(&spec["tls"][0]["secretName"]) == "collect-tls", || {
            format!("Ingress tls {}", show(&spec["tls"]))
        });
        self.expect(
            text(&ingress["metadata"]["annotations"]["example.com/tier"]) == "edge",
            || "Ingress annotations".into(),
        );
        let routes: Vec<(String, String, String, u64)> = seq(&spec["rules"])
            .iter()
            .flat_map(|rule| {
                seq(&rule["http"]["paths"]).iter().map(move |path| {
                    let service = &path["backend"]["service"];
                    (
                        text(&rule["host"]).to_owned(),
                        text(&path["path"]).to_owned(),
                        text(&service["name"]).to_owned(),
                        service["port"]["number"].as_u64().unwrap_or_default(),
                    )
                })
            })
            .collect();
        let route = |host: &str, path: &str, service: &str, port: u64| {
            (host.to_owned(), path.to_owned(), service.to_owned(), port)
        };
        let want = vec![
            route("collect.example.com", "/v1/events", "web-collector", 80),
            route("collect.example.com", "/tracker.js", "web-collector", 80),
            route("collect.example.org", "/v1/events", "shop-collector", 8080),
            route("collect.example.org", "/tracker.js", "shop-collector", 8080),
        ];
        self.expect(routes == want, || format!("Ingress routes {routes:?}"));
    }

    fn service_monitor(&mut self, op: &str, service: &Value) {
        let sm = self.get("ServiceMonitor", op);
        self.expect(
            selects(
                &sm["spec"]["selector"]["matchLabels"],
                &service["metadata"]["labels"],
            ),
            || "ServiceMonitor does not select the operator Service".into(),
        );
        let endpoint = &sm["spec"]["endpoints"][0];
        self.expect(
            text(&endpoint["port"]) == "http" && text(&endpoint["path"]) == "/metrics",
            || format!("ServiceMonitor endpoint {}", show(endpoint)),
        );
        self.expect(
            text(&sm["metadata"]["labels"]["release"]) == "prometheus",
            || "ServiceMonitor extra labels".into(),
        );
    }
}

/// A trial server (NATS or ClickHouse) the chart can run as a StatefulSet.
struct TrialServer {
    name: String,
    image_prefix: &'static str,
    ports: &'static [u64],
    ready_path: &'static str,
    data_path: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_grant_covers_only_its_object_and_an_unnamed_one_every_object() {
        let granted = permissions(LEADER_ELECTION_RULES);
        let lease = ("coordination.k8s.io", "leases");
        assert!(allows(&granted, lease.0, lease.1, "create", ""));
        assert!(allows(&granted, lease.0, lease.1, "create", "any"));
        assert!(allows(
            &granted,
            lease.0,
            lease.1,
            "update",
            LEADER_ELECTION_LEASE
        ));
        assert!(!allows(&granted, lease.0, lease.1, "update", "other"));
        assert!(!allows(&granted, lease.0, lease.1, "update", ""));
        assert!(!allows(
            &granted,
            lease.0,
            lease.1,
            "delete",
            LEADER_ELECTION_LEASE
        ));
    }

    #[test]
    fn rendered_rules_expand_like_the_table() {
        let rules: Value = serde_yaml::from_str(
            "- apiGroups: [coordination.k8s.io]\n  resources: [leases]\n  verbs: [create]\n\
             - apiGroups: [coordination.k8s.io]\n  resources: [leases]\n  verbs: [get, update, patch]\n  resourceNames: [tally-operator]\n",
        )
        .unwrap();
        assert_eq!(
            rendered_permissions(&rules),
            permissions(LEADER_ELECTION_RULES)
        );
    }

    #[test]
    fn notes_name_what_they_miss() {
        let all = NOTES_MUST_SAY.join("\n");
        assert!(notes_problems(&all).is_empty());
        let without = all.replace("kubectl apply -f examples/", "");
        assert_eq!(
            notes_problems(&without),
            ["NOTES.txt does not say: kubectl apply -f examples/"]
        );
        assert_eq!(notes_section("a\nNOTES:\nb"), "\nb");
    }

    #[test]
    fn documents_skip_empty_ones() {
        let docs = documents("---\n# only a comment\n---\na: 1\n---\n").unwrap();
        assert_eq!(docs.len(), 1);
    }
}
