//! The Helm chart installs into a real control plane: `helm install` brings up the operator's
//! Deployment (Available under kwok), the CRDs it ships are established, and the operator's
//! RBAC lets it do its work: a ServiceAccount token with those permissions can apply what
//! the operator applies.

use std::time::Duration;

use tally_e2e::cluster::{Cluster, repo_root};

const WAIT: Duration = Duration::from_secs(180);

#[test]
fn helm_installs_the_operator_with_its_crds_and_rbac() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("tally-chart-{}", std::process::id()));
    let cluster = Cluster::start(&dir)?;
    let chart = repo_root().join("charts/tally");
    cluster.helm(&[
        "install",
        "tally",
        chart.to_str().unwrap(),
        "--namespace",
        "tally-system",
        "--create-namespace",
        "--wait",
        "--timeout",
        "3m",
    ])?;
    cluster.wait_condition("crd/analyticspipelines.tally.dev", "Established", WAIT)?;
    cluster.wait_condition("crd/analyticssites.tally.dev", "Established", WAIT)?;
    cluster.kubectl(&[
        "wait",
        "--for=condition=Available",
        "-n",
        "tally-system",
        "deployment/tally-operator",
        "--timeout=180s",
    ])?;
    let image = cluster.kubectl(&[
        "get",
        "-n",
        "tally-system",
        "deployment/tally-operator",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ])?;
    assert_eq!(image, "tally/operator:0.1.0");

    // Least privilege: the operator's ServiceAccount may do what the operator does, and no more.
    let sa = "system:serviceaccount:tally-system:tally-operator";
    let can = |verb: &str, resource: &str, ns: &str| -> anyhow::Result<bool> {
        // `kind/name` asks about one object; `kind#status` about the status subresource.
        let mut args = vec!["auth", "can-i", verb, "-n", ns, "--as", sa];
        match resource.split_once('#') {
            Some((kind, sub)) => args.extend([kind, "--subresource", sub]),
            None => args.push(resource),
        }
        Ok(cluster.kubectl_fails_or_ok(&args)? == "yes")
    };
    for (verb, resource) in [
        ("patch", "deployments.apps"),
        ("patch", "configmaps"),
        ("patch", "services"),
        ("watch", "analyticssites.tally.dev"),
        ("patch", "analyticspipelines.tally.dev#status"),
        ("patch", "analyticssites.tally.dev#status"),
        ("create", "events.events.k8s.io"),
        ("get", "secrets"),
    ] {
        assert!(
            can(verb, resource, "default")?,
            "the operator needs {verb} {resource}"
        );
    }
    for (verb, resource) in [
        ("create", "secrets"),
        ("delete", "namespaces"),
        ("create", "pods"),
        ("patch", "nodes"),
        ("patch", "deployments.apps#scale"),
    ] {
        assert!(
            !can(verb, resource, "default")?,
            "the operator must not {verb} {resource}"
        );
    }
    // The leader-election Lease: only its own, only in its own namespace.
    let lease = "leases.coordination.k8s.io/tally-operator";
    assert!(
        can("patch", lease, "tally-system")?
            && can("create", "leases.coordination.k8s.io", "tally-system")?
    );
    assert!(
        !can("patch", "leases.coordination.k8s.io/other", "tally-system")?,
        "no other Lease"
    );
    assert!(
        !can("patch", lease, "default")?,
        "Leases only in its own namespace"
    );

    cluster.helm(&[
        "uninstall",
        "tally",
        "--namespace",
        "tally-system",
        "--wait",
    ])?;
    // Helm keeps CRDs on uninstall (deleting them would delete every resource).
    cluster.kubectl(&["get", "crd/analyticssites.tally.dev"])?;
    Ok(())
}
