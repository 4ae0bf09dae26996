//! Reconciles an `AnalyticsPipeline`: renders the runtime configuration from the pipeline and
//! its accepted sites, applies the ConfigMap, the collector Deployment and Service and the
//! processor Deployment (server-side apply, owned by the pipeline), makes the JetStream
//! stream match the spec, and reports what it found in the status. A finalizer deletes or
//! keeps the stream, per `spec.nats.stream.deletionPolicy`, when the pipeline goes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tally_contracts::stream;
use tally_crds::{AnalyticsPipeline, AnalyticsPipelineStatus, AnalyticsSite, StreamDeletionPolicy};

use crate::acceptance;
use crate::conditions::{carry_transition_times, condition, find};
use crate::context::{Context, Error, backoff_key};
use crate::render;

/// Keeps the pipeline until its stream has been dealt with.
pub const FINALIZER: &str = "tally.dev/stream";
const CONTROLLER: &str = "pipeline";

pub async fn reconcile(
    pipeline: Arc<AnalyticsPipeline>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let _timer = ctx.metrics.start(CONTROLLER);
    let ns = pipeline
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<AnalyticsPipeline> = Api::namespaced(ctx.client.clone(), &ns);
    let key = backoff_key(pipeline.as_ref());
    let action = finalizer(&api, FINALIZER, pipeline, |event| async {
        match event {
            Finalizer::Apply(p) => apply(&p, &ctx).await,
            Finalizer::Cleanup(p) => cleanup(&p, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))?;
    ctx.backoff.succeeded(&key);
    Ok(action)
}

pub fn error_policy(pipeline: Arc<AnalyticsPipeline>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(pipeline = %pipeline.name_any(), %error, "reconcile failed");
    ctx.metrics.failed(CONTROLLER, error);
    let delay = ctx.backoff.failed(&backoff_key(pipeline.as_ref()));
    Action::requeue(delay)
}

/// The names and keys of the Secrets that `sites` reference.
pub async fn referenced_secrets(
    client: &kube::Client,
    ns: &str,
    sites: &[AnalyticsSite],
) -> Result<BTreeMap<String, BTreeSet<String>>, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let names: BTreeSet<&str> = sites
        .iter()
        .filter_map(|s| s.spec.api_key_secret_ref.as_ref().map(|r| r.name.as_str()))
        .collect();
    let mut found = BTreeMap::new();
    for name in names {
        if let Some(secret) = api.get_opt(name).await? {
            let keys = secret
                .data
                .iter()
                .flat_map(|d| d.keys())
                .chain(secret.string_data.iter().flat_map(|d| d.keys()))
                .cloned()
                .collect();
            found.insert(name.to_owned(), keys);
        }
    }
    Ok(found)
}

/// The condition `type_` saying whether `deployment` reports itself Available.
fn availability(type_: &str, deployment: &Deployment, generation: Option<i64>) -> Condition {
    let available = deployment
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Available"));
    match available {
        Some(c) => {
            let ok = c.status == "True";
            let message = c
                .message
                .clone()
                .or_else(|| c.reason.clone())
                .unwrap_or_default();
            condition(
                type_,
                ok,
                if ok { "Available" } else { "Unavailable" },
                message,
                generation,
            )
        }
        None => condition(
            type_,
            false,
            "Unavailable",
            "the Deployment reports no Available condition yet",
            generation,
        ),
    }
}

async fn apply(pipeline: &AnalyticsPipeline, ctx: &Context) -> Result<Action, Error> {
    let name = pipeline.name_any();
    let ns = pipeline
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let client = &ctx.client;
    let generation = pipeline.metadata.generation;

    // The sites this pipeline accepts, decided exactly as the site controller decides.
    let sites = Api::<AnalyticsSite>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await?
        .items;
    let secrets = referenced_secrets(client, &ns, &sites).await?;
    let verdicts = acceptance::decide(&BTreeSet::from([name.clone()]), &sites, &secrets);
    let accepted: Vec<&AnalyticsSite> = sites
        .iter()
        .filter(|s| s.spec.pipeline_ref.name == name && verdicts[&s.name_any()].is_accepted())
        .collect();

    let config = render::runtime_config(pipeline, &accepted)?;
    let checksum = render::checksum(&config);
    let apply = PatchParams::apply(render::MANAGER).force();
    let config_map = render::config_map(pipeline, &config);
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .patch(
            &render::config_map_name(&name),
            &apply,
            &Patch::Apply(&config_map),
        )
        .await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let collector = deployments
        .patch(
            &render::collector_name(&name),
            &apply,
            &Patch::Apply(&render::collector_deployment(
                pipeline,
                &ctx.images,
                &checksum,
            )),
        )
        .await?;
    Api::<Service>::namespaced(client.clone(), &ns)
        .patch(
            &render::collector_name(&name),
            &apply,
            &Patch::Apply(&render::collector_service(pipeline)),
        )
        .await?;
    let processor = deployments
        .patch(
            &render::processor_name(&name),
            &apply,
            &Patch::Apply(&render::processor_deployment(
                pipeline,
                &ctx.images,
                &checksum,
            )),
        )
        .await?;

    let stream_result = ensure_stream(pipeline, &config, ctx).await;
    let mut conditions = vec![
        match &stream_result {
            Ok(stream) => condition(
                "StreamReady",
                true,
                "StreamReady",
                format!("stream {stream} matches the spec"),
                generation,
            ),
            Err(e) => condition(
                "StreamReady",
                false,
                "StreamUnavailable",
                e.to_string(),
                generation,
            ),
        },
        availability("CollectorAvailable", &collector, generation),
        availability("ProcessorAvailable", &processor, generation),
    ];
    let waiting: Vec<&str> = conditions
        .iter()
        .filter(|c| c.status != "True")
        .map(|c| c.type_.as_str())
        .collect();
    let ready = waiting.is_empty();
    conditions.push(condition(
        "Ready",
        ready,
        if ready { "Ready" } else { "NotReady" },
        if ready {
            "the stream, collector and processor are up".to_owned()
        } else {
            format!("waiting for {}", waiting.join(", "))
        },
        generation,
    ));
    let old = pipeline
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let status = AnalyticsPipelineStatus {
        observed_generation: generation,
        conditions: carry_transition_times(old, conditions),
        sites: Some(accepted.len() as i32),
        endpoint: Some(render::endpoint(pipeline)),
    };
    // One Warning when the stream becomes unavailable, not one per retry.
    let was_failing = find(old, "StreamReady").is_some_and(|c| c.status == "False");
    if !was_failing && let Err(e) = &stream_result {
        publish(
            ctx,
            pipeline,
            EventType::Warning,
            "StreamUnavailable",
            e.to_string(),
        )
        .await;
    }
    Api::<AnalyticsPipeline>::namespaced(client.clone(), &ns)
        .patch_status(
            &name,
            &apply,
            &Patch::Apply(json!({
                "apiVersion": tally_crds::API_VERSION,
                "kind": "AnalyticsPipeline",
                "status": status,
            })),
        )
        .await?;
    Ok(Action::requeue(if ready {
        Duration::from_secs(300)
    } else {
        Duration::from_secs(10)
    }))
}

/// Creates or updates the stream; returns its name.
async fn ensure_stream(
    pipeline: &AnalyticsPipeline,
    config: &str,
    ctx: &Context,
) -> Result<String, Error> {
    let runtime = tally_contracts::RuntimeConfig::parse("rendered", config)?;
    let js = ctx.nats.jetstream(&pipeline.spec.nats.url).await?;
    stream::ensure_stream(&js, &runtime).await.map_err(|e| {
        Error::Stream(format!(
            "cannot create or update stream {}: {e}",
            runtime.stream_name()
        ))
    })?;
    Ok(runtime.stream_name())
}

async fn cleanup(pipeline: &AnalyticsPipeline, ctx: &Context) -> Result<Action, Error> {
    let stream_name = tally_contracts::naming::stream_name(&pipeline.name_any());
    match pipeline.spec.nats.stream.deletion_policy {
        StreamDeletionPolicy::Retain => {
            publish(
                ctx,
                pipeline,
                EventType::Normal,
                "StreamRetained",
                format!("stream {stream_name} kept (deletionPolicy Retain)"),
            )
            .await;
        }
        StreamDeletionPolicy::Delete => {
            let js = ctx.nats.jetstream(&pipeline.spec.nats.url).await?;
            let dead_letters =
                tally_contracts::naming::dead_letter_stream_name(&pipeline.name_any());
            for name in [&stream_name, &dead_letters] {
                match js.delete_stream(name).await {
                    Ok(_) => {}
                    Err(e) if e.to_string().contains("not found") => {}
                    Err(e) => {
                        return Err(Error::Stream(format!("cannot delete stream {name}: {e}")));
                    }
                }
            }
            publish(
                ctx,
                pipeline,
                EventType::Normal,
                "StreamDeleted",
                format!("streams {stream_name} and {dead_letters} deleted (deletionPolicy Delete)"),
            )
            .await;
        }
    }
    Ok(Action::await_change())
}

/// Records a Kubernetes Event on `object`; failures are logged, never fatal.
pub async fn publish<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    object: &K,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "cannot record a Kubernetes Event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{Step, scripted};
    use http::{Method, StatusCode};

    fn pipeline(with_finalizer: bool) -> AnalyticsPipeline {
        let mut p = AnalyticsPipeline::new("web", serde_json::from_str("{}").unwrap());
        p.metadata.namespace = Some("default".into());
        p.metadata.uid = Some("pipeline-uid".into());
        p.metadata.generation = Some(2);
        // Nothing listens on port 1: the stream cannot be reached.
        p.spec.nats.url = "nats://127.0.0.1:1".into();
        if with_finalizer {
            p.metadata.finalizers = Some(vec![FINALIZER.into()]);
        }
        p
    }

    fn deployment_answer(name: &str, available: bool) -> serde_json::Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {}},
            "status": {"conditions": [{"type": "Available", "status": if available { "True" } else { "False" }, "message": "from the test"}]},
        })
    }

    #[tokio::test]
    async fn a_new_pipeline_gets_the_stream_finalizer_first() {
        let p = pipeline(false);
        let (ctx, script) = scripted(vec![
            Step::new(
                Method::PATCH,
                "/namespaces/default/analyticspipelines/web",
                StatusCode::OK,
                serde_json::to_value(pipeline(true)).unwrap(),
            )
            .checking(|patch| assert!(patch.to_string().contains(FINALIZER), "{patch}")),
        ]);
        let action = reconcile(Arc::new(p), ctx)
            .await
            .expect("reconcile succeeds");
        tokio::time::timeout(Duration::from_secs(5), script)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(action, Action::await_change());
    }

    #[tokio::test]
    async fn a_pipeline_applies_its_objects_and_reports_what_is_not_ready() {
        let p = pipeline(true);
        let sites = json!({"apiVersion": "tally.dev/v1alpha1", "kind": "AnalyticsSiteList", "metadata": {}, "items": []});
        let owned = |what: &'static str| {
            move |obj: &serde_json::Value| {
                assert_eq!(
                    obj["metadata"]["ownerReferences"][0]["uid"], "pipeline-uid",
                    "{what}"
                );
            }
        };
        let (ctx, script) = scripted(vec![
            Step::new(Method::GET, "/namespaces/default/analyticssites", StatusCode::OK, sites),
            Step::new(Method::PATCH, "/namespaces/default/configmaps/web-config", StatusCode::OK, json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-config"}}))
                .checking(move |cm| {
                    owned("configmap")(cm);
                    assert!(cm["data"]["tally.yaml"].as_str().unwrap().contains("kind: AnalyticsPipeline"));
                }),
            Step::new(Method::PATCH, "/namespaces/default/deployments/web-collector", StatusCode::OK, deployment_answer("web-collector", true))
                .checking(owned("collector")),
            Step::new(Method::PATCH, "/namespaces/default/services/web-collector", StatusCode::OK, json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-collector"}}))
                .checking(owned("service")),
            Step::new(Method::PATCH, "/namespaces/default/deployments/web-processor", StatusCode::OK, deployment_answer("web-processor", false))
                .checking(owned("processor")),
            Step::new(Method::POST, "/namespaces/default/events", StatusCode::CREATED, crate::site::tests::event_answer())
                .checking(|e| assert_eq!(e["reason"], "StreamUnavailable")),
            Step::new(Method::PATCH, "/namespaces/default/analyticspipelines/web/status", StatusCode::OK, serde_json::to_value(pipeline(true)).unwrap())
                .checking(|patch| {
                    let status = &patch["status"];
                    let get = |t: &str| status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == t).unwrap().clone();
                    assert_eq!(get("StreamReady")["status"], "False");
                    assert!(get("StreamReady")["message"].as_str().unwrap().contains("cannot connect to NATS"));
                    assert_eq!(get("CollectorAvailable")["status"], "True");
                    assert_eq!(get("ProcessorAvailable")["status"], "False");
                    assert_eq!(get("Ready")["status"], "False");
                    assert_eq!(get("Ready")["message"], "waiting for StreamReady, ProcessorAvailable");
                    assert_eq!((&status["observedGeneration"], &status["sites"]), (&json!(2), &json!(0)));
                }),
        ]);
        let action = reconcile(Arc::new(p), ctx)
            .await
            .expect("reconcile succeeds");
        tokio::time::timeout(Duration::from_secs(5), script)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(action, Action::requeue(Duration::from_secs(10)));
    }
}
