//! Pure functions from a pipeline (and its accepted sites) to the objects the operator
//! applies: the ConfigMap with the runtime configuration, the collector Deployment and
//! Service, the processor Deployment, and the query Deployment and Service. No I/O here, so every detail is unit-tested.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};
use tally_contracts::access::SecretValues;
use tally_contracts::{ConfigError, RuntimeConfig};
use tally_crds::{AnalyticsPipeline, AnalyticsSite, ServiceSpec};

/// The field manager of every server-side apply, and the `managed-by` label.
pub const MANAGER: &str = "tally-operator";
/// The ConfigMap key that holds the rendered configuration.
pub const CONFIG_KEY: &str = "tally.yaml";
/// Where pods mount the configuration.
pub const CONFIG_DIR: &str = "/etc/tally";
/// Where pods mount the Secrets of the servers' credentials (`<dir>/<secret>/<key>`).
pub const SECRETS_DIR: &str = "/etc/tally/secrets";
/// Pod template annotation that changes with the configuration, rolling the pods.
pub const CHECKSUM_ANNOTATION: &str = "tally.dev/config-checksum";
/// Container ports.
pub const COLLECTOR_PORT: i32 = 8080;
pub const PROCESSOR_PORT: i32 = 9091;
pub const QUERY_PORT: i32 = 8081;

/// Default images, from the operator's own installation.
#[derive(Debug, Clone)]
pub struct Images {
    pub collector: String,
    pub processor: String,
    pub query: String,
}

pub fn config_map_name(pipeline: &str) -> String {
    format!("{pipeline}-config")
}
pub fn collector_name(pipeline: &str) -> String {
    format!("{pipeline}-collector")
}

/// The collector's address inside the cluster.
pub fn service_endpoint(pipeline: &AnalyticsPipeline) -> String {
    let port = pipeline.spec.collector.service.port;
    let host = format!(
        "{}.{}.svc",
        collector_name(&pipeline.name_any()),
        pipeline.namespace().unwrap_or_default()
    );
    if port == 80 {
        format!("http://{host}")
    } else {
        format!("http://{host}:{port}")
    }
}

/// Where sites send their events: `spec.collector.publicUrl` when set (without a trailing
/// slash), else the in-cluster address.
pub fn ingest_endpoint(pipeline: &AnalyticsPipeline) -> String {
    match &pipeline.spec.collector.public_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => service_endpoint(pipeline),
    }
}

/// The `<script>` tag a site pastes into its pages.
pub fn snippet(endpoint: &str, site_id: &str) -> String {
    format!(r#"<script defer src="{endpoint}/tracker.js" data-site="{site_id}"></script>"#)
}

/// The runtime configuration of `pipeline` with its accepted `sites`, the one the collector
/// and processor read from the ConfigMap. Only names and specs are kept, so its text (and
/// the checksum) changes exactly when the configuration does. Keys are given by their
/// SHA-256 digest only: `secrets` turns each `secretRef` into one, so no key reaches the
/// ConfigMap, and a changed key changes the checksum (rolling the pods).
pub fn runtime_config(
    pipeline: &AnalyticsPipeline,
    sites: &[AnalyticsSite],
    secrets: &SecretValues,
) -> Result<RuntimeConfig, ConfigError> {
    let strip = |meta: &ObjectMeta| ObjectMeta {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        ..ObjectMeta::default()
    };
    let clean_pipeline = AnalyticsPipeline {
        metadata: strip(&pipeline.metadata),
        spec: pipeline.spec.clone(),
        status: None,
    };
    let mut ordered: Vec<&AnalyticsSite> = sites.iter().collect();
    ordered.sort_by_key(|s| s.spec.site_id.clone());
    let clean_sites = ordered
        .into_iter()
        .map(|s| AnalyticsSite {
            metadata: strip(&s.metadata),
            spec: s.spec.clone(),
            status: None,
        })
        .collect();
    let origin = format!(
        "{}/{}",
        pipeline.namespace().unwrap_or_default(),
        pipeline.name_any()
    );
    RuntimeConfig::from_resources(&origin, clean_pipeline, clean_sites, secrets)
}

/// Hex SHA-256 of the configuration text in `config_map` and of the servers' credentials
/// (`credentials` is their fingerprint): the pod template annotation that rolls the pods
/// when the configuration or a mounted credential changes.
pub fn checksum(config_map: &ConfigMap, credentials: &str) -> String {
    let text = config_map
        .data
        .as_ref()
        .and_then(|d| d.get(CONFIG_KEY))
        .map(String::as_str)
        .unwrap_or_default();
    Sha256::new()
        .chain_update(text.as_bytes())
        .chain_update(b"\0")
        .chain_update(credentials.as_bytes())
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn labels(pipeline: &str, component: &str) -> serde_json::Value {
    json!({
        "app.kubernetes.io/name": format!("tally-{component}"),
        "app.kubernetes.io/instance": pipeline,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "tally",
        "app.kubernetes.io/managed-by": MANAGER,
    })
}

fn selector(pipeline: &str, component: &str) -> serde_json::Value {
    json!({
        "app.kubernetes.io/name": format!("tally-{component}"),
        "app.kubernetes.io/instance": pipeline,
    })
}

fn metadata(pipeline: &AnalyticsPipeline, name: String, component: &str) -> serde_json::Value {
    let owner = pipeline
        .controller_owner_ref(&())
        .expect("a pipeline read from the API has a name and uid");
    json!({
        "name": name,
        "namespace": pipeline.namespace(),
        "labels": labels(&pipeline.name_any(), component),
        "ownerReferences": [owner],
    })
}

/// The ConfigMap holding `config` as YAML under [`CONFIG_KEY`], the form
/// [`RuntimeConfig::load`] reads.
pub fn config_map(pipeline: &AnalyticsPipeline, config: &RuntimeConfig) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(pipeline, config_map_name(&pipeline.name_any()), "config"),
        "data": { CONFIG_KEY: config.to_yaml() },
    }))
    .expect("a valid ConfigMap")
}

/// What both Deployments share: one container running `binary` with the mounted
/// configuration, probes on `port`, and a locked-down security context.
struct Workload<'a> {
    component: &'a str,
    image: &'a str,
    replicas: i32,
    resources: Option<&'a k8s_openapi::api::core::v1::ResourceRequirements>,
    port: i32,
    port_name: &'a str,
    /// The Secrets of the credentials this component uses, mounted under [`SECRETS_DIR`].
    secrets: Vec<&'a str>,
}

/// The container's environment: the log format, for the collector the number of replicas
/// that share the rate limits, and the OpenTelemetry variables from `spec.tracing` (none
/// without an endpoint, so tracing stays off).
fn environment(pipeline: &AnalyticsPipeline, component: &str) -> serde_json::Value {
    let tracing = &pipeline.spec.tracing;
    let mut env = vec![json!({ "name": "TALLY_LOG_FORMAT", "value": "json" })];
    if component == "collector" {
        let collectors = pipeline.spec.collector.replicas.max(1);
        env.push(json!({ "name": "TALLY_COLLECTORS", "value": collectors.to_string() }));
    }
    if let Some(endpoint) = &tracing.otlp_endpoint {
        let mut otel = vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
            ("OTEL_SERVICE_NAME", format!("tally-{component}")),
        ];
        if let Some(sampler) = &tracing.sampler {
            otel.push(("OTEL_TRACES_SAMPLER", sampler.clone()));
        }
        if let Some(ratio) = tracing.sampler_ratio {
            otel.push(("OTEL_TRACES_SAMPLER_ARG", ratio.to_string()));
        }
        env.extend(
            otel.into_iter()
                .map(|(name, value)| json!({ "name": name, "value": value })),
        );
    }
    serde_json::Value::Array(env)
}

/// The distinct Secret names of `refs`, in order.
fn secret_names(refs: Vec<&tally_crds::SecretKeyRef>) -> Vec<&str> {
    let mut names: Vec<&str> = refs.into_iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    names
}

fn deployment(pipeline: &AnalyticsPipeline, checksum: &str, w: Workload<'_>) -> Deployment {
    let name = pipeline.name_any();
    let config_file = format!("{CONFIG_DIR}/{CONFIG_KEY}");
    let probe = |path: &str| {
        json!({
            "httpGet": { "path": path, "port": w.port_name },
            "periodSeconds": 10,
            "failureThreshold": 3,
        })
    };
    let mut container = json!({
        "name": w.component,
        "image": w.image,
        "args": ["--config", config_file, "--listen", format!("0.0.0.0:{}", w.port)],
        "env": environment(pipeline, w.component),
        "ports": [{ "name": w.port_name, "containerPort": w.port, "protocol": "TCP" }],
        "readinessProbe": probe("/readyz"),
        "livenessProbe": probe("/healthz"),
        "volumeMounts": [{ "name": "config", "mountPath": CONFIG_DIR, "readOnly": true }],
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "capabilities": { "drop": ["ALL"] },
        },
    });
    if let Some(resources) = w.resources {
        container["resources"] = serde_json::to_value(resources).expect("resources serialize");
    }
    // The credentials' Secrets, each in its own directory: the services read them there
    // (`--secrets-dir`), so no credential is in the ConfigMap or the environment.
    let mut volumes = vec![json!({
        "name": "config",
        "configMap": { "name": config_map_name(&name) },
    })];
    if !w.secrets.is_empty() {
        let args = container["args"].as_array_mut().expect("args are a list");
        args.extend([json!("--secrets-dir"), json!(SECRETS_DIR)]);
        for (i, secret) in w.secrets.iter().enumerate() {
            let volume = format!("secret-{i}");
            container["volumeMounts"]
                .as_array_mut()
                .expect("mounts are a list")
                .push(json!({
                    "name": volume,
                    "mountPath": format!("{SECRETS_DIR}/{secret}"),
                    "readOnly": true,
                }));
            volumes.push(json!({ "name": volume, "secret": { "secretName": secret } }));
        }
    }
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(pipeline, format!("{name}-{}", w.component), w.component),
        "spec": {
            "replicas": w.replicas,
            "selector": { "matchLabels": selector(&name, w.component) },
            "template": {
                "metadata": {
                    "labels": labels(&name, w.component),
                    "annotations": { CHECKSUM_ANNOTATION: checksum },
                },
                "spec": {
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "seccompProfile": { "type": "RuntimeDefault" },
                    },
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }))
    .expect("a valid Deployment")
}

pub fn collector_deployment(
    pipeline: &AnalyticsPipeline,
    images: &Images,
    checksum: &str,
) -> Deployment {
    let spec = &pipeline.spec.collector;
    deployment(
        pipeline,
        checksum,
        Workload {
            component: "collector",
            image: spec.image.as_deref().unwrap_or(&images.collector),
            replicas: spec.replicas,
            resources: spec.resources.as_ref(),
            port: COLLECTOR_PORT,
            port_name: "http",
            secrets: secret_names(pipeline.spec.nats_credential_refs()),
        },
    )
}

pub fn processor_deployment(
    pipeline: &AnalyticsPipeline,
    images: &Images,
    checksum: &str,
) -> Deployment {
    let spec = &pipeline.spec.processor;
    deployment(
        pipeline,
        checksum,
        Workload {
            component: "processor",
            image: spec.image.as_deref().unwrap_or(&images.processor),
            replicas: spec.replicas,
            resources: spec.resources.as_ref(),
            port: PROCESSOR_PORT,
            port_name: "metrics",
            secrets: secret_names(pipeline.spec.credential_refs()),
        },
    )
}

pub fn query_deployment(
    pipeline: &AnalyticsPipeline,
    images: &Images,
    checksum: &str,
) -> Deployment {
    let spec = &pipeline.spec.query;
    deployment(
        pipeline,
        checksum,
        Workload {
            component: "query",
            image: spec.image.as_deref().unwrap_or(&images.query),
            replicas: spec.replicas,
            resources: spec.resources.as_ref(),
            port: QUERY_PORT,
            port_name: "http",
            // ClickHouse's for the reads, NATS's for the pipeline's health and dead letters.
            secrets: secret_names(pipeline.spec.credential_refs()),
        },
    )
}

pub fn collector_service(pipeline: &AnalyticsPipeline) -> Service {
    service(pipeline, "collector", &pipeline.spec.collector.service)
}

pub fn query_service(pipeline: &AnalyticsPipeline) -> Service {
    service(pipeline, "query", &pipeline.spec.query.service)
}

/// The Service `<pipeline>-<component>` in front of the component's "http" port.
fn service(pipeline: &AnalyticsPipeline, component: &str, spec: &ServiceSpec) -> Service {
    let name = pipeline.name_any();
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(pipeline, format!("{name}-{component}"), component),
        "spec": {
            "type": spec.type_.as_str(),
            "selector": selector(&name, component),
            "ports": [{ "name": "http", "port": spec.port, "targetPort": "http", "protocol": "TCP" }],
        },
    }))
    .expect("a valid Service")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn pipeline() -> AnalyticsPipeline {
        let mut p = fixtures::pipeline("analytics");
        p.metadata.uid = Some("1234".into());
        p.metadata.resource_version = Some("99".into());
        p
    }

    fn site(name: &str, id: &str) -> AnalyticsSite {
        fixtures::site(name, id, "analytics")
    }

    #[test]
    fn runtime_config_is_what_the_services_read() {
        let (a, b) = (site("a", "shop"), site("b", "blog"));
        let config = runtime_config(
            &pipeline(),
            &[a.clone(), b.clone()],
            &SecretValues::default(),
        )
        .unwrap();
        let yaml = config.to_yaml();
        // What the services parse back from the ConfigMap is what was rendered.
        assert_eq!(
            RuntimeConfig::parse("rendered", &yaml).unwrap().to_yaml(),
            yaml
        );
        assert_eq!(config.name(), "web");
        assert!(config.site("shop").is_some() && config.site("blog").is_some());
        // Bookkeeping metadata stays out, so it cannot churn the checksum.
        assert!(
            !yaml.contains("uid") && !yaml.contains("resourceVersion"),
            "{yaml}"
        );
        // Site order does not matter.
        assert_eq!(
            yaml,
            runtime_config(&pipeline(), &[b, a], &SecretValues::default())
                .unwrap()
                .to_yaml()
        );
    }

    #[test]
    fn checksum_follows_the_configuration() {
        let a = site("a", "shop");
        let rendered = |site: &AnalyticsSite| {
            config_map(
                &pipeline(),
                &runtime_config(
                    &pipeline(),
                    std::slice::from_ref(site),
                    &SecretValues::default(),
                )
                .unwrap(),
            )
        };
        let one = checksum(&rendered(&a), "credentials");
        let mut changed = a.clone();
        changed.spec.domains.push("shop.example.com".into());
        let two = checksum(&rendered(&changed), "credentials");
        assert_eq!(one.len(), 64);
        assert_ne!(one, two);
        // A changed credential rolls the pods too.
        assert_ne!(checksum(&rendered(&a), "rotated"), one);
        let d = collector_deployment(&pipeline(), &images(), &two);
        let annotations = d
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap();
        assert_eq!(annotations[CHECKSUM_ANNOTATION], two);
    }

    fn images() -> Images {
        Images {
            collector: "tally/collector:1".into(),
            processor: "tally/processor:1".into(),
            query: "tally/query:1".into(),
        }
    }

    #[test]
    fn credentials_are_mounted_from_their_secrets_where_each_component_needs_them() {
        let mut p = pipeline();
        p.spec = serde_yaml::from_str(
            "nats: {auth: {user: tally, passwordSecretRef: {name: nats-login, key: password}}, \
                    tls: {caSecretRef: {name: nats-tls, key: ca.crt}}}\n\
             clickhouse: {user: writer, passwordSecretRef: {name: ch-login, key: password}}\n",
        )
        .unwrap();
        let mounted = |d: Deployment| {
            let pod = d.spec.unwrap().template.spec.unwrap();
            let container = &pod.containers[0];
            let mounts: Vec<String> = container
                .volume_mounts
                .iter()
                .flatten()
                .map(|m| m.mount_path.clone())
                .collect();
            let secrets: Vec<String> = pod
                .volumes
                .iter()
                .flatten()
                .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
                .collect();
            let args = container.args.clone().unwrap_or_default();
            (mounts, secrets, args.contains(&"--secrets-dir".to_owned()))
        };
        let (mounts, secrets, dir) = mounted(collector_deployment(&p, &images(), "c"));
        assert_eq!(secrets, ["nats-login", "nats-tls"]);
        assert!(mounts.contains(&"/etc/tally/secrets/nats-login".to_owned()) && dir);
        let (_, secrets, _) = mounted(processor_deployment(&p, &images(), "c"));
        assert_eq!(secrets, ["ch-login", "nats-login", "nats-tls"]);
        let (_, secrets, _) = mounted(query_deployment(&p, &images(), "c"));
        assert_eq!(secrets, ["ch-login", "nats-login", "nats-tls"]);
        // Without credentials: the configuration only.
        let (mounts, secrets, dir) = mounted(collector_deployment(&pipeline(), &images(), "c"));
        assert!(secrets.is_empty() && !dir && mounts == ["/etc/tally"]);
    }

    #[test]
    fn deployments_take_the_spec_and_stay_locked_down() {
        let mut p = pipeline();
        p.spec.collector.replicas = 3;
        p.spec.processor.image = Some("mirror/processor:2".into());
        let collector = collector_deployment(&p, &images(), "c");
        let processor = processor_deployment(&p, &images(), "c");
        assert_eq!(collector.metadata.name.as_deref(), Some("web-collector"));
        assert_eq!(
            collector.metadata.owner_references.as_ref().unwrap()[0].uid,
            "1234"
        );
        let spec = collector.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        let pod = spec.template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("tally/collector:1"));
        assert_eq!(
            c.args.as_ref().unwrap(),
            &[
                "--config",
                "/etc/tally/tally.yaml",
                "--listen",
                "0.0.0.0:8080"
            ]
        );
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(
            (sc.read_only_root_filesystem, sc.allow_privilege_escalation),
            (Some(true), Some(false))
        );
        assert_eq!(
            pod.volumes.unwrap()[0].config_map.as_ref().unwrap().name,
            "web-config"
        );
        let pc = &processor.spec.unwrap().template.spec.unwrap().containers[0];
        assert_eq!(pc.image.as_deref(), Some("mirror/processor:2"));
        assert_eq!(pc.ports.as_ref().unwrap()[0].container_port, PROCESSOR_PORT);
    }

    #[test]
    fn service_and_site_addresses() {
        let mut p = pipeline();
        assert_eq!(service_endpoint(&p), "http://web-collector.analytics.svc");
        p.spec.collector.service.port = 8080;
        assert_eq!(
            service_endpoint(&p),
            "http://web-collector.analytics.svc:8080"
        );
        let svc = collector_service(&p).spec.unwrap();
        assert_eq!(svc.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(svc.ports.unwrap()[0].port, 8080);
        assert_eq!(
            ingest_endpoint(&p),
            "http://web-collector.analytics.svc:8080"
        );
        p.spec.collector.public_url = Some("https://collect.example.com/".into());
        assert_eq!(ingest_endpoint(&p), "https://collect.example.com");
        assert_eq!(
            service_endpoint(&p),
            "http://web-collector.analytics.svc:8080"
        );
        assert_eq!(
            snippet("http://c", "shop"),
            r#"<script defer src="http://c/tracker.js" data-site="shop"></script>"#
        );
    }

    #[test]
    fn the_query_service_runs_beside_the_collector_with_its_own_service() {
        let mut p = pipeline();
        p.spec.query.replicas = 2;
        p.spec.query.service.port = 8081;
        let query = query_deployment(&p, &images(), "c");
        assert_eq!(query.metadata.name.as_deref(), Some("web-query"));
        let spec = query.spec.unwrap();
        assert_eq!(spec.replicas, Some(2));
        let c = &spec.template.spec.unwrap().containers[0];
        assert_eq!(c.image.as_deref(), Some("tally/query:1"));
        assert_eq!(c.ports.as_ref().unwrap()[0].container_port, QUERY_PORT);
        let svc = query_service(&p);
        assert_eq!(svc.metadata.name.as_deref(), Some("web-query"));
        let svc = svc.spec.unwrap();
        assert_eq!(svc.ports.unwrap()[0].port, 8081);
        assert_eq!(
            svc.selector.unwrap()["app.kubernetes.io/name"],
            "tally-query"
        );
    }

    fn env_of(d: Deployment) -> Vec<(String, String)> {
        d.spec.unwrap().template.spec.unwrap().containers[0]
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.name, e.value.unwrap_or_default()))
            .collect()
    }

    #[test]
    fn tracing_is_off_unless_an_endpoint_is_set_and_then_names_each_service() {
        let mut p = pipeline();
        let off = env_of(collector_deployment(&p, &images(), "c"));
        assert!(
            off.iter().all(|(name, _)| !name.starts_with("OTEL_")),
            "{off:?}"
        );
        p.spec.tracing.otlp_endpoint = Some("http://otel:4318".into());
        p.spec.tracing.sampler = Some("parentbased_traceidratio".into());
        p.spec.tracing.sampler_ratio = Some(0.25);
        let get = |env: &[(String, String)], name: &str| {
            env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
        };
        for (d, service) in [
            (collector_deployment(&p, &images(), "c"), "tally-collector"),
            (processor_deployment(&p, &images(), "c"), "tally-processor"),
            (query_deployment(&p, &images(), "c"), "tally-query"),
        ] {
            let env = env_of(d);
            assert_eq!(
                get(&env, "OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
                Some("http://otel:4318")
            );
            assert_eq!(get(&env, "OTEL_SERVICE_NAME").as_deref(), Some(service));
            assert_eq!(
                get(&env, "OTEL_TRACES_SAMPLER").as_deref(),
                Some("parentbased_traceidratio")
            );
            assert_eq!(
                get(&env, "OTEL_TRACES_SAMPLER_ARG").as_deref(),
                Some("0.25")
            );
            assert_eq!(get(&env, "TALLY_LOG_FORMAT").as_deref(), Some("json"));
        }
        // The collectors share the rate limits among their replicas.
        p.spec.collector.replicas = 3;
        let collector = env_of(collector_deployment(&p, &images(), "c"));
        assert_eq!(get(&collector, "TALLY_COLLECTORS").as_deref(), Some("3"));
        let processor = env_of(processor_deployment(&p, &images(), "c"));
        assert_eq!(get(&processor, "TALLY_COLLECTORS"), None);
    }
}
