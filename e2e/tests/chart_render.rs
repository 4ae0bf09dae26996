//! The Helm chart rendered offline, with Helm 4 and Helm 3, over the default values and each
//! charts/tally/ci/*-values.yaml: the objects keep the contract the operator is written to
//! (tally_e2e::chart), bad values are refused naming the value, the chart's CRD copies are
//! crds/*.yaml, and NOTES.txt tells the trial URLs and the next step. The last tests break a
//! rendered document to show the contract check fails when it should.

use serde_yaml::Value;
use tally_e2e::chart::{
    CONTRACT_SETS, Helm, REFUSALS, chart_dir, contract_problems, crd_copy_problems, generated_crds,
    notes_problems, value_sets,
};
use tally_e2e::cluster::repo_root;

fn renders_the_contract(binary: &str) -> anyhow::Result<()> {
    let helm = Helm::new(binary)?;
    let version = helm.version()?;
    let crds = generated_crds()?;
    let mut failures = Vec::new();
    let sets = value_sets()?;
    for set in CONTRACT_SETS {
        assert!(
            sets.iter().any(|s| s == set),
            "no value set {set} (charts/tally/ci/{set}-values.yaml)"
        );
    }
    for set in &sets {
        match helm.render(set) {
            Err(e) => failures.push(format!("{version} ({set}): {e:#}")),
            Ok(docs) if !CONTRACT_SETS.contains(&set.as_str()) => {
                assert!(!docs.is_empty(), "{version} ({set}): nothing rendered");
            }
            Ok(docs) => failures.extend(
                contract_problems(set, &docs, &crds)
                    .into_iter()
                    .map(|p| format!("{version} ({set}): {p}")),
            ),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

fn refuses_bad_values(binary: &str) -> anyhow::Result<()> {
    let helm = Helm::new(binary)?;
    let version = helm.version()?;
    let mut failures = Vec::new();
    for refusal in REFUSALS {
        for problem in helm.refusal_problems(refusal)? {
            failures.push(format!("{version}: {problem}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[test]
fn helm4_renders_objects_that_keep_the_operators_contract() -> anyhow::Result<()> {
    renders_the_contract("helm")
}

#[test]
fn helm3_renders_objects_that_keep_the_operators_contract() -> anyhow::Result<()> {
    renders_the_contract("helm3")
}

#[test]
fn helm4_refuses_bad_values_naming_them() -> anyhow::Result<()> {
    refuses_bad_values("helm")
}

#[test]
fn helm3_refuses_bad_values_naming_them() -> anyhow::Result<()> {
    refuses_bad_values("helm3")
}

#[test]
fn the_charts_crds_are_the_generated_ones_byte_for_byte() -> anyhow::Result<()> {
    let problems = crd_copy_problems(&repo_root().join("crds"), &chart_dir().join("crds"))?;
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

#[test]
fn notes_tell_the_trial_urls_and_the_next_step() -> anyhow::Result<()> {
    let notes = Helm::new("helm")?.trial_notes()?;
    let problems = notes_problems(&notes);
    assert!(problems.is_empty(), "{}\n{notes}", problems.join("\n"));
    Ok(())
}

#[test]
fn a_changed_crd_copy_is_found() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("tally-crd-copy-{}", std::process::id()));
    let (generated, chart) = (dir.join("crds"), dir.join("chart"));
    std::fs::create_dir_all(&generated)?;
    std::fs::create_dir_all(&chart)?;
    std::fs::write(generated.join("a.yaml"), "a: 1\n")?;
    std::fs::write(chart.join("a.yaml"), "a: 1\n")?;
    assert!(crd_copy_problems(&generated, &chart)?.is_empty());
    std::fs::write(chart.join("a.yaml"), "a: 2\n")?;
    let differs = crd_copy_problems(&generated, &chart)?;
    std::fs::write(chart.join("b.yaml"), "b: 1\n")?;
    let extra = crd_copy_problems(&generated, &chart)?;
    std::fs::remove_dir_all(&dir)?;
    assert!(
        differs.len() == 1 && differs[0].contains("run make crds"),
        "{differs:?}"
    );
    assert!(extra.iter().any(|p| p.contains("b.yaml")), "{extra:?}");
    Ok(())
}

/// The default rendering with `change` applied to the object of `kind` named `name`: the
/// contract problems it has.
fn broken(kind: &str, name: &str, change: impl FnOnce(&mut Value)) -> Vec<String> {
    let mut docs = Helm::new("helm")
        .and_then(|h| h.render("defaults"))
        .expect("helm template");
    let crds = generated_crds().expect("crds/");
    assert_eq!(
        contract_problems("defaults", &docs, &crds),
        Vec::<String>::new()
    );
    let doc = docs
        .iter_mut()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"));
    change(doc);
    contract_problems("defaults", &docs, &crds)
}

fn set(doc: &mut Value, path: &[&str], value: &str) {
    let mut v = doc;
    for key in path {
        v = if let Ok(i) = key.parse::<usize>() {
            &mut v[i]
        } else {
            &mut v[*key]
        };
    }
    *v = serde_yaml::from_str(value).expect("a YAML value");
}

#[test]
fn the_contract_check_fails_on_a_broken_object() {
    let c = ["spec", "template", "spec", "containers", "0"];
    let at = |rest: &[&'static str]| [&c[..], rest].concat();
    let cases: Vec<(&str, &str, Vec<&str>, &str, &str)> = vec![
        (
            "Deployment",
            "tally-operator",
            at(&["securityContext", "readOnlyRootFilesystem"]),
            "false",
            "not readOnlyRootFilesystem",
        ),
        (
            "Deployment",
            "tally-operator",
            at(&["image"]),
            "tally/operator:latest",
            "operator image",
        ),
        (
            "Deployment",
            "tally-operator",
            at(&["readinessProbe", "httpGet", "path"]),
            "/healthz",
            "readinessProbe is not GET /readyz",
        ),
        (
            "Deployment",
            "tally-operator",
            vec!["spec", "replicas"],
            "3",
            "replicas 3",
        ),
        (
            "ClusterRole",
            "tally-operator",
            vec!["rules", "5", "verbs"],
            "[get, list, watch, create]",
            "extra [(\"\", \"secrets\", \"create\", \"\")]",
        ),
        (
            "Role",
            "tally-operator-leader-election",
            vec!["rules", "0", "verbs"],
            "['*']",
            "has a wildcard in verbs",
        ),
        (
            "RoleBinding",
            "tally-operator-leader-election",
            vec!["subjects", "0", "namespace"],
            "default",
            "subjects",
        ),
        (
            "Service",
            "tally-operator",
            vec!["spec", "selector"],
            "{app: other}",
            "Service selector does not match",
        ),
        (
            "ServiceAccount",
            "tally-operator",
            vec!["metadata", "namespace"],
            "default",
            "ServiceAccount tally-operator: namespace",
        ),
        (
            "CustomResourceDefinition",
            "analyticssites.tally.dev",
            vec!["spec", "scope"],
            "Cluster",
            "CRD analyticssites.tally.dev differs from crds/",
        ),
    ];
    for (kind, name, path, value, expected) in cases {
        let problems = broken(kind, name, |d| set(d, &path, value));
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{kind} {name} {path:?} = {value}: expected a problem with {expected:?}, got {problems:?}"
        );
    }
}
