//! The operator on a real Kubernetes API server (kube-apiserver, etcd, controller-manager,
//! scheduler, a kwok node), driven with kubectl as a user would: apply, wait for conditions,
//! edit, break, delete. Pods do not run under kwok, so the data path then runs the real
//! collector, processor and query service as local processes, all three fed the one
//! configuration the operator rendered.

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use tally_contracts::access::{digest_of, to_hex};
use tally_e2e::cluster::{Cluster, repo_root};
use tally_e2e::{DATABASE, Options, PIPELINE, Process, Stack, free_port, pipeline_yaml, today};

const WAIT: Duration = Duration::from_secs(90);

/// What the operator applies for pipeline `e2e`, each owned by it.
const OWNED: [&str; 6] = [
    "deployment/e2e-collector",
    "deployment/e2e-processor",
    "service/e2e-collector",
    "deployment/e2e-query",
    "service/e2e-query",
    "configmap/e2e-config",
];

#[tokio::test]
async fn the_operator_runs_pipelines_and_sites_on_a_real_api_server() -> anyhow::Result<()> {
    let mut stack = Stack::start_servers(Options::default()).await?;
    let cluster = Cluster::start(&stack.dir.join("k8s"))?;
    let crds = repo_root().join("crds");
    cluster.kubectl(&["apply", "-f", crds.to_str().unwrap()])?;
    cluster.wait_condition("crd/analyticspipelines.tally.dev", "Established", WAIT)?;
    cluster.wait_condition("crd/analyticssites.tally.dev", "Established", WAIT)?;

    // Two operator replicas: leader election lets exactly one of them reconcile.
    let mut operators = Vec::new();
    for replica in ["a", "b"] {
        let port = free_port();
        let process = Process::spawn(
            &format!("operator-{replica}"),
            Command::new(Stack::binary("tally-operator")?)
                .env("KUBECONFIG", &cluster.kubeconfig)
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args([
                    "--lease-namespace",
                    "default",
                    "--identity",
                    replica,
                    "--log-format",
                    "text",
                ]),
            stack.dir.join(format!("operator-{replica}.log")),
        )?;
        operators.push((port, process));
    }
    let leader = wait_for_one_leader(&stack, &operators).await?;

    // A pipeline with two sites, pointing at this test's NATS and ClickHouse.
    let resources = pipeline_yaml(&Options::default(), stack.nats_port, stack.clickhouse_port);
    cluster.kubectl_stdin(&["apply", "-f", "-"], Some(&resources))?;
    let pipeline = format!("analyticspipeline/{PIPELINE}");
    cluster.wait_condition(&pipeline, "Ready", WAIT)?;
    for condition in [
        "StreamReady",
        "CollectorAvailable",
        "ProcessorAvailable",
        "QueryAvailable",
    ] {
        cluster.wait_condition(&pipeline, condition, WAIT)?;
    }
    cluster.wait_condition("analyticssite/shop", "Ready", WAIT)?;
    cluster.wait_condition("analyticssite/docs", "Accepted", WAIT)?;
    assert_eq!(
        cluster.kubectl(&["get", &pipeline, "-o", "jsonpath={.status.sites}"])?,
        "2"
    );
    let snippet = cluster.kubectl(&[
        "get",
        "analyticssite/shop",
        "-o",
        "jsonpath={.status.snippet}",
    ])?;
    assert_eq!(
        snippet,
        r#"<script defer src="http://e2e-collector.default.svc/tracker.js" data-site="shop"></script>"#
    );
    // With a public URL, the site's status names it: what a browser outside can reach.
    cluster.merge_patch(
        &pipeline,
        r#"{"spec":{"collector":{"publicUrl":"https://collect.example.com/"}}}"#,
    )?;
    cluster.wait_jsonpath(
        "analyticssite/shop",
        "{.status.snippet}",
        r#"<script defer src="https://collect.example.com/tracker.js" data-site="shop"></script>"#,
        WAIT,
    )?;
    cluster.wait_jsonpath(
        "analyticssite/shop",
        "{.status.ingestUrl}",
        "https://collect.example.com/v1/events",
        WAIT,
    )?;
    // The stream's backlog and dead letters, in the status and its printer columns.
    cluster.wait_jsonpath(&pipeline, "{.status.backlog}", "0", WAIT)?;
    cluster.wait_jsonpath(&pipeline, "{.status.deadLetters}", "0", WAIT)?;
    let columns = cluster.kubectl(&["get", &pipeline])?;
    assert!(
        columns.contains("BACKLOG") && columns.contains("DEAD LETTERS"),
        "{columns}"
    );
    // A public URL that is not http(s) is refused by the API server, naming the field.
    let refused = cluster.merge_patch_refused(
        &pipeline,
        r#"{"spec":{"collector":{"publicUrl":"collect.example.com"}}}"#,
    )?;
    assert!(refused.contains("spec.collector.publicUrl"), "{refused}");
    // Everything owned carries the pipeline as controller owner.
    for object in OWNED {
        let owner = cluster.kubectl(&[
            "get",
            object,
            "-o",
            "jsonpath={.metadata.ownerReferences[0].kind}",
        ])?;
        assert_eq!(owner, "AnalyticsPipeline", "{object}");
    }

    // The full loop: the rendered configuration runs the real services.
    let rendered = cluster.kubectl(&[
        "get",
        "configmap/e2e-config",
        "-o",
        "jsonpath={.data.tally\\.yaml}",
    ])?;
    let rendered_path = stack.dir.join("rendered.yaml");
    std::fs::write(&rendered_path, &rendered)?;
    stack.config = rendered_path;
    stack.start_processor(&[]).await?;
    stack.start_collector().await?;
    stack.start_query().await?;
    let events: Vec<_> = ["/a", "/b", "/a"]
        .iter()
        .map(|path| json!({"site_id": "shop", "event_type": "page_view", "path": path}))
        .collect();
    let (status, answer) = stack.post(json!(events).to_string()).await?;
    assert_eq!(status, 202, "{answer}");
    stack
        .wait_sql(
            &format!("SELECT sum(page_views) FROM {DATABASE}.path_daily WHERE site_id = 'shop'"),
            "3",
            WAIT,
        )
        .await?;
    let stats = stack
        .wait_stats(&format!("site_id=shop&date={}", today()), |s| {
            s["total_views"] == 3
        })
        .await?;
    assert_eq!(stats["top_paths"][0], json!({"path": "/a", "views": 2}));

    // Editing a site changes the ConfigMap and rolls the pods through the checksum.
    let checksum_path =
        "jsonpath={.spec.template.metadata.annotations.tally\\.dev/config-checksum}";
    let before = cluster.kubectl(&["get", "deployment/e2e-collector", "-o", checksum_path])?;
    cluster.merge_patch(
        "analyticssite/shop",
        r#"{"spec":{"domains":["shop.example.com"]}}"#,
    )?;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let now = cluster.kubectl(&["get", "deployment/e2e-collector", "-o", checksum_path])?;
        let config = cluster.kubectl(&[
            "get",
            "configmap/e2e-config",
            "-o",
            "jsonpath={.data.tally\\.yaml}",
        ])?;
        if now != before && config.contains("shop.example.com") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the edit never reached the ConfigMap and Deployment"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let processor_checksum =
        cluster.kubectl(&["get", "deployment/e2e-processor", "-o", checksum_path])?;
    assert_ne!(processor_checksum, before, "the processor rolls too");
    let query_checksum = cluster.kubectl(&["get", "deployment/e2e-query", "-o", checksum_path])?;
    assert_ne!(query_checksum, before, "the query service rolls too");

    // Broken references are reported, with a reason and an Event.
    cluster.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: tally.dev/v1alpha1\nkind: AnalyticsSite\nmetadata: {name: orphan}\n\
             spec: {pipelineRef: {name: missing}, siteId: orphan}\n---\n\
             apiVersion: tally.dev/v1alpha1\nkind: AnalyticsSite\nmetadata: {name: shop-again}\n\
             spec: {pipelineRef: {name: e2e}, siteId: shop}\n---\n\
             apiVersion: tally.dev/v1alpha1\nkind: AnalyticsSite\nmetadata: {name: keyed}\n\
             spec: {pipelineRef: {name: e2e}, siteId: keyed, apiKeys: [{secretRef: {name: keyed-key, key: apiKey}, scopes: [ingest]}]}\n",
        ),
    )?;
    let reason = "{.status.conditions[?(@.type==\"Accepted\")].reason}";
    cluster.wait_jsonpath("analyticssite/orphan", reason, "PipelineNotFound", WAIT)?;
    cluster.wait_jsonpath("analyticssite/shop-again", reason, "SiteIdConflict", WAIT)?;
    cluster.wait_jsonpath("analyticssite/keyed", reason, "ApiKeySecretNotFound", WAIT)?;
    let events = cluster.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=shop-again",
        "-o",
        "jsonpath={.items[*].reason}",
    ])?;
    assert!(events.contains("SiteIdConflict"), "events: {events}");
    // A key too short to be safe keeps the site out, saying why (never the value).
    cluster.kubectl(&[
        "create",
        "secret",
        "generic",
        "keyed-key",
        "--from-literal=apiKey=short",
    ])?;
    cluster.wait_jsonpath("analyticssite/keyed", reason, "ApiKeyInvalid", WAIT)?;
    let message = cluster.kubectl(&[
        "get",
        "analyticssite/keyed",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Accepted\")].message}",
    ])?;
    assert!(
        message.contains("shorter than 16 characters") && !message.contains("short\""),
        "{message}"
    );
    assert_eq!(
        cluster.kubectl(&[
            "get",
            "analyticssite/keyed",
            "-o",
            "jsonpath={.status.keys.ingest}"
        ])?,
        "0"
    );
    // Changing the Secret fixes the site without touching it; the ConfigMap holds the key's
    // digest, never the key.
    set_key(&cluster, OLD_KEY)?;
    cluster.wait_condition("analyticssite/keyed", "Accepted", WAIT)?;
    cluster.wait_jsonpath(&pipeline, "{.status.sites}", "3", WAIT)?;
    cluster.wait_jsonpath("analyticssite/keyed", "{.status.keys.ingest}", "1", WAIT)?;
    let rendered = wait_rendered(&cluster, OLD_KEY, None).await?;
    // The collector of that configuration takes the key's events, and no others.
    restart_collector(&mut stack, &rendered).await?;
    let keyed = json!({"event_type": "signup"}).to_string();
    let with_key = |key: &'static str| [("x-api-key", key)];
    assert_eq!(
        stack.post_with(keyed.clone(), &with_key(OLD_KEY)).await?.0,
        202
    );
    let named = json!({"site_id": "keyed", "event_type": "signup"}).to_string();
    assert_eq!(stack.post_with(named, &[]).await?.0, 401);

    // Rotating the key in the Secret re-renders the configuration and rolls the pods: the
    // collector of the new configuration takes the new key and refuses the old.
    let before = cluster.kubectl(&["get", "deployment/e2e-collector", "-o", checksum_path])?;
    cluster.merge_patch(
        "secret/keyed-key",
        &json!({"stringData": {"apiKey": NEW_KEY}}).to_string(),
    )?;
    let rendered = wait_rendered(&cluster, NEW_KEY, Some(OLD_KEY)).await?;
    let after = cluster.kubectl(&["get", "deployment/e2e-collector", "-o", checksum_path])?;
    assert_ne!(before, after, "a rotated key rolls the collectors");
    restart_collector(&mut stack, &rendered).await?;
    assert_eq!(
        stack.post_with(keyed.clone(), &with_key(NEW_KEY)).await?.0,
        202
    );
    let (status, answer) = stack.post_with(keyed, &with_key(OLD_KEY)).await?;
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("invalid_api_key"))
    );
    stack
        .wait_sql(
            &format!("SELECT count() FROM {DATABASE}.events WHERE site_id = 'keyed'"),
            "2",
            WAIT,
        )
        .await?;
    // No key of this test reached a log.
    for log in [
        "operator-a.log",
        "operator-b.log",
        "collector.log",
        "processor.log",
        "query.log",
    ] {
        let text = std::fs::read_to_string(stack.dir.join(log)).unwrap_or_default();
        for key in [OLD_KEY, NEW_KEY, tally_e2e::ADMIN_KEY] {
            assert!(!text.contains(key), "{log} holds a key");
        }
    }

    // What the schema refuses, kubectl refuses, naming the field.
    let immutable =
        cluster.merge_patch_refused("analyticssite/shop", r#"{"spec":{"siteId":"other"}}"#)?;
    assert!(immutable.contains("siteId is immutable"), "{immutable}");
    let invalid = cluster.kubectl_fails(
        &["apply", "-f", "-"],
        Some("apiVersion: tally.dev/v1alpha1\nkind: AnalyticsSite\nmetadata: {name: bad}\nspec: {pipelineRef: {name: e2e}, siteId: Bad Id, domains: [not a host]}\n"),
    )?;
    assert!(
        invalid.contains("spec.siteId") && invalid.contains("spec.domains[0]"),
        "{invalid}"
    );
    let invalid = cluster.kubectl_fails(
        &["apply", "-f", "-"],
        Some("apiVersion: tally.dev/v1alpha1\nkind: AnalyticsSite\nmetadata: {name: bad}\nspec: {pipelineRef: {name: e2e}, siteId: bad, goals: [{name: A, eventType: a, pagePath: /a}], experiments: [{id: x, variants: [{name: A}, {name: A}], control: C, goal: Nope}]}\n"),
    )?;
    for refusal in [
        "a goal has exactly one of eventType and pagePath",
        "control must name one of the variants",
        // Names are the variants' list-map keys: the API server refuses a second one.
        "spec.experiments[0].variants[1]: Duplicate value",
        "each experiment's goal must name one of spec.goals",
    ] {
        assert!(invalid.contains(refusal), "{refusal}: {invalid}");
    }
    let invalid =
        cluster.merge_patch_refused(&pipeline, r#"{"spec":{"processor":{"batchMaxRows":0}}}"#)?;
    assert!(invalid.contains("spec.processor.batchMaxRows"), "{invalid}");

    // NATS down: the status says so, and recovers with it.
    stack.stop_nats();
    cluster.merge_patch(
        &pipeline,
        r#"{"spec":{"nats":{"stream":{"deletionPolicy":"Delete"}}}}"#,
    )?;
    let stream_ready = "{.status.conditions[?(@.type==\"StreamReady\")].status}";
    cluster.wait_jsonpath(&pipeline, stream_ready, "False", WAIT)?;
    let message = cluster.kubectl(&[
        "get",
        &pipeline,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"StreamReady\")].message}",
    ])?;
    assert!(message.contains("cannot connect to NATS"), "{message}");
    stack.restart_nats().await?;
    cluster.wait_condition(&pipeline, "Ready", WAIT)?;

    // A wrong password, in the Secret the pipeline names, is reported: by NATS in
    // StreamReady, by ClickHouse in StorageReady. The right one brings Ready back.
    let secret = format!("secret/{}", tally_e2e::SERVERS_SECRET);
    let message_of = |condition: &str| {
        cluster.kubectl(&[
            "get",
            &pipeline,
            "-o",
            &format!("jsonpath={{.status.conditions[?(@.type==\"{condition}\")].message}}"),
        ])
    };
    let set_password = |key: &str, value: &str| {
        cluster.merge_patch(&secret, &json!({"stringData": {key: value}}).to_string())
    };
    set_password("nats-password", "not-the-password")?;
    cluster.wait_jsonpath(&pipeline, stream_ready, "False", WAIT)?;
    let message = message_of("StreamReady")?;
    assert!(message.contains("authorization violation"), "{message}");
    set_password("clickhouse-password", "not-the-password")?;
    let storage_ready = "{.status.conditions[?(@.type==\"StorageReady\")].status}";
    cluster.wait_jsonpath(&pipeline, storage_ready, "False", WAIT)?;
    let message = message_of("StorageReady")?;
    assert!(message.contains("Authentication failed"), "{message}");
    for text in [message, message_of("StreamReady")?] {
        assert!(!text.contains("not-the-password"), "{text}");
    }
    set_password("nats-password", tally_e2e::NATS_PASSWORD)?;
    set_password("clickhouse-password", tally_e2e::CLICKHOUSE_PASSWORD)?;
    cluster.wait_condition(&pipeline, "Ready", WAIT)?;

    // The leader steps down (SIGTERM releases the lease): the standby takes over and carries on.
    operators[leader].1.stop();
    let survivor = 1 - leader;
    let survivor_url = format!("http://127.0.0.1:{}/readyz", operators[survivor].0);
    tally_e2e::eventually("the standby operator to lead", WAIT, || {
        let (http, url) = (stack.http.clone(), survivor_url.clone());
        async move {
            let body = http.get(url).send().await.ok()?.text().await.ok()?;
            (body == "leading").then_some(())
        }
    })
    .await?;

    // Deleting the pipeline removes everything it owns, and (policy Delete) its stream.
    cluster.kubectl(&["delete", &pipeline, "--timeout=60s"])?;
    for object in OWNED {
        let deadline = std::time::Instant::now() + WAIT;
        while cluster.kubectl(&["get", object]).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "{object} was not garbage-collected"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let jsz = stack
        .get(&format!("{}/jsz", stack.nats_monitor_url()))
        .await
        .json();
    assert_eq!(jsz["streams"], 0, "the stream is deleted: {jsz}");
    // The sites now report their missing pipeline.
    cluster.wait_jsonpath("analyticssite/shop", reason, "PipelineNotFound", WAIT)?;

    let (port, operator) = &mut operators[survivor];
    assert!(operator.is_running(), "the new leader kept running");
    let metrics = stack
        .get(&format!("http://127.0.0.1:{port}/metrics"))
        .await
        .body;
    assert!(
        metrics.contains("tally_operator_reconciles_total{controller=\"pipeline\"}"),
        "{metrics}"
    );
    operator.stop();
    Ok(())
}

/// Waits until exactly one replica reports `leading` (and the other `standing by`); returns
/// its index.
const OLD_KEY: &str = "keyed-ingest-key-before-rotation-1";
const NEW_KEY: &str = "keyed-ingest-key-after-rotation-22";

/// Sets the `apiKey` of the Secret `keyed-key`.
fn set_key(cluster: &Cluster, key: &str) -> anyhow::Result<()> {
    cluster.merge_patch(
        "secret/keyed-key",
        &json!({"stringData": {"apiKey": key}}).to_string(),
    )?;
    Ok(())
}

/// Waits until the rendered configuration holds the digest of `key` (and not that of
/// `gone`), checks that it holds no key itself, and returns it.
async fn wait_rendered(cluster: &Cluster, key: &str, gone: Option<&str>) -> anyhow::Result<String> {
    let digest = |k: &str| to_hex(&digest_of(k));
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let rendered = cluster.kubectl(&[
            "get",
            "configmap/e2e-config",
            "-o",
            "jsonpath={.data.tally\\.yaml}",
        ])?;
        if rendered.contains(&digest(key)) && gone.is_none_or(|g| !rendered.contains(&digest(g))) {
            assert!(
                !rendered.contains(key) && !rendered.contains("secretRef"),
                "{rendered}"
            );
            return Ok(rendered);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the key never reached the ConfigMap: {rendered}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Restarts the stack's collector on the `rendered` configuration: what a rollout does.
async fn restart_collector(stack: &mut Stack, rendered: &str) -> anyhow::Result<()> {
    let path = stack.dir.join("rendered.yaml");
    std::fs::write(&path, rendered)?;
    stack.config = path;
    stack.collector.stop();
    stack.start_collector().await
}

async fn wait_for_one_leader(stack: &Stack, operators: &[(u16, Process)]) -> anyhow::Result<usize> {
    tally_e2e::eventually("one operator to lead", WAIT, || async {
        let mut roles = Vec::new();
        for (port, _) in operators {
            let url = format!("http://127.0.0.1:{port}/readyz");
            roles.push(stack.http.get(url).send().await.ok()?.text().await.ok()?);
        }
        let leaders: Vec<usize> = (0..roles.len())
            .filter(|&i| roles[i] == "leading")
            .collect();
        let standbys = roles.iter().filter(|r| *r == "standing by").count();
        (leaders.len() == 1 && standbys == roles.len() - 1).then(|| leaders[0])
    })
    .await
}
