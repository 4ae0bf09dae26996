//! The Helm chart installs into a real control plane: Helm 4 with the default values, then
//! Helm 3 with the trial NATS and ClickHouse on emptyDirs (ci/trial-no-persistence-values.yaml:
//! the test cluster has no storage provisioner). Each install brings up the operator's
//! Deployment (Available under kwok), establishes the CRDs it ships, starts the trial servers,
//! accepts examples/, tells the next step in its notes, and grants the operator's
//! ServiceAccount exactly the RBAC of tally_e2e::chart (as `kubectl auth can-i` answers), no
//! more. Uninstalling removes the operator and keeps the CRDs.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::bail;
use tally_e2e::chart::{
    Helm, LEADER_ELECTION_RULES, NAMESPACE, OPERATOR_RULES, RELEASE, Rule, VERBS, allows,
    chart_dir, notes_section, permissions, values_args,
};
use tally_e2e::cluster::{Cluster, repo_root};

const WAIT: Duration = Duration::from_secs(180);

/// Requests outside the rules' resources that the operator must be refused: verb, API group,
/// resource (`name/subresource` for a subresource).
const OUTSIDE_THE_RULES: &[(&str, &str, &str)] = &[
    ("create", "", "pods"),
    ("delete", "", "pods"),
    ("delete", "", "namespaces"),
    ("patch", "", "nodes"),
    ("patch", "apps", "deployments/scale"),
    ("create", "rbac.authorization.k8s.io", "clusterrolebindings"),
];

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

/// Whether the operator's ServiceAccount may `verb` the `resource` (`name/subresource` for a
/// subresource) of API `group`, object `name` (any when empty), in `namespace`.
fn can(
    cluster: &Cluster,
    verb: &str,
    group: &str,
    resource: &str,
    name: &str,
    namespace: &str,
) -> anyhow::Result<bool> {
    let (kind, sub) = resource
        .split_once('/')
        .map_or((resource, None), |(k, s)| (k, Some(s)));
    let mut target = kind.to_owned();
    if !group.is_empty() {
        target = format!("{target}.{group}");
    }
    if !name.is_empty() {
        target = format!("{target}/{name}");
    }
    let sa = format!("system:serviceaccount:{NAMESPACE}:{RELEASE}-operator");
    let mut args = vec!["auth", "can-i", verb, &target, "-n", namespace, "--as", &sa];
    if let Some(sub) = sub {
        args.extend(["--subresource", sub]);
    }
    Ok(cluster.kubectl_fails_or_ok(&args)? == "yes")
}

/// Asks the API server about every verb of [`VERBS`] on every resource the `rules` name (for
/// named rules: on those objects, on any object and on another one): the answer must be
/// the table's. With `elsewhere`, everything granted must be refused in that namespace.
fn rbac_problems(
    cluster: &Cluster,
    rules: &[Rule],
    namespace: &str,
    elsewhere: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let granted = permissions(rules);
    let resources: BTreeSet<(String, String)> = granted
        .iter()
        .map(|(g, r, _, _)| (g.clone(), r.clone()))
        .collect();
    let mut names: BTreeSet<String> = granted.iter().map(|p| p.3.clone()).collect();
    if names.len() > 1 {
        names.insert("other".into());
    }
    let mut problems = Vec::new();
    for (group, resource) in &resources {
        for verb in VERBS {
            for name in &names {
                let want = allows(&granted, group, resource, verb, name);
                if can(cluster, verb, group, resource, name, namespace)? != want {
                    problems.push(format!(
                        "can-i {verb} {group}/{resource} {name:?} -n {namespace}: expected {}",
                        if want { "yes" } else { "no" }
                    ));
                }
            }
        }
    }
    if let Some(other) = elsewhere {
        for (group, resource, verb, name) in &granted {
            if can(cluster, verb, group, resource, name, other)? {
                problems.push(format!(
                    "can-i {verb} {group}/{resource} {name:?} -n {other}: expected no"
                ));
            }
        }
    }
    Ok(problems)
}

/// Installs the chart with `bin` and value set `set`, checks it, uninstalls it.
fn install_check_uninstall(cluster: &Cluster, helm: &Helm, set: &str) -> anyhow::Result<()> {
    let chart = chart_dir().display().to_string();
    let mut install = strings(&[
        "install",
        RELEASE,
        &chart,
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "--wait",
        "--timeout",
        "3m",
    ]);
    install.extend(values_args(set));
    if let Err(e) = helm.ok(&install) {
        let state = cluster.kubectl(&["-n", NAMESPACE, "get", "all,pvc", "-o", "wide"]);
        bail!("{e:#}\n{}", state.unwrap_or_else(|e| e.to_string()));
    }
    cluster.wait_condition("crd/analyticspipelines.tally.dev", "Established", WAIT)?;
    cluster.wait_condition("crd/analyticssites.tally.dev", "Established", WAIT)?;
    cluster.kubectl(&[
        "wait",
        "--for=condition=Available",
        "-n",
        NAMESPACE,
        "deployment/tally-operator",
        "--timeout=180s",
    ])?;
    let image = cluster.kubectl(&[
        "get",
        "-n",
        NAMESPACE,
        "deployment/tally-operator",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ])?;
    assert_eq!(image, "tally/operator:0.1.0");
    if set != "defaults" {
        for server in ["statefulset/tally-nats", "statefulset/tally-clickhouse"] {
            cluster.kubectl(&[
                "rollout",
                "status",
                "-n",
                NAMESPACE,
                server,
                "--timeout=60s",
            ])?;
        }
        cluster.kubectl(&[
            "get",
            "-n",
            NAMESPACE,
            "service",
            "tally-nats",
            "tally-clickhouse",
        ])?;
    }

    // Least privilege, as the API server's authorizer sees it.
    let mut problems = rbac_problems(cluster, OPERATOR_RULES, "default", None)?;
    problems.extend(rbac_problems(
        cluster,
        LEADER_ELECTION_RULES,
        NAMESPACE,
        Some("default"),
    )?);
    for (verb, group, resource) in OUTSIDE_THE_RULES {
        if can(cluster, verb, group, resource, "", "default")? {
            problems.push(format!("can-i {verb} {group}/{resource}: expected no"));
        }
    }
    assert!(problems.is_empty(), "{set}:\n{}", problems.join("\n"));

    // The examples are valid AnalyticsPipeline/AnalyticsSite objects to the CRDs.
    let examples = repo_root().join("examples");
    cluster.kubectl(&[
        "apply",
        "--dry-run=server",
        "-n",
        "default",
        "-f",
        &examples.display().to_string(),
    ])?;
    let status = helm.ok(&strings(&["status", RELEASE, "-n", NAMESPACE]))?;
    assert!(
        status.contains("NOTES:") && notes_section(&status).contains("kubectl apply -f examples/"),
        "the notes do not name the next step:\n{status}"
    );

    helm.ok(&strings(&[
        "uninstall",
        RELEASE,
        "--namespace",
        NAMESPACE,
        "--wait",
        "--timeout",
        "2m",
    ]))?;
    cluster.kubectl_fails(&["get", "-n", NAMESPACE, "deployment/tally-operator"], None)?;
    // Helm keeps CRDs on uninstall (deleting them would delete every resource).
    cluster.kubectl(&["get", "crd/analyticssites.tally.dev"])?;
    Ok(())
}

#[test]
fn helm_installs_the_operator_with_its_crds_and_least_privilege_rbac() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("tally-chart-{}", std::process::id()));
    let cluster = Cluster::start(&dir)?;
    let helm4 = Helm::for_cluster("helm", &cluster.kubeconfig)?;
    let helm3 = Helm::for_cluster("helm3", &cluster.kubeconfig)?;
    install_check_uninstall(&cluster, &helm4, "defaults")?;
    install_check_uninstall(&cluster, &helm3, "trial-no-persistence")?;
    Ok(())
}
