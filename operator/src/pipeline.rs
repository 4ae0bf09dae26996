//! Reconciles an `AnalyticsPipeline` in four steps: **accept** (which sites the pipeline
//! takes, decided as the site controller decides), **apply children** (the ConfigMap with
//! the runtime configuration, the collector Deployment and Service, the processor
//! Deployment, the query Deployment and Service: server-side apply, owned by the
//! pipeline), **observe** (the JetStream stream made to match the spec, the Deployments'
//! availability, as conditions) and **status**. A finalizer deletes or keeps the stream,
//! per `spec.nats.stream.deletionPolicy`, when the pipeline goes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use tally_contracts::{RuntimeConfig, stream};
use tally_crds::{AnalyticsPipeline, AnalyticsPipelineStatus, AnalyticsSite, StreamDeletionPolicy};

use crate::acceptance;
use tally_contracts::access::SecretValues;

use crate::api::{apply_status, namespace, publish, referenced_secrets};
use crate::conditions::{carry_transition_times, condition, find};
use crate::context::{Context, Error, backoff_key};
use crate::render;

/// Keeps the pipeline until its stream has been dealt with.
pub const FINALIZER: &str = "tally.dev/stream";
const CONTROLLER: &str = "pipeline";

/// One reconcile, as a span (exported as an OpenTelemetry span when tracing is on).
#[tracing::instrument(name = "reconcile", skip_all, fields(controller = CONTROLLER, namespace = pipeline.namespace().unwrap_or_default(), name = %pipeline.name_any()))]
pub async fn reconcile(
    pipeline: Arc<AnalyticsPipeline>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let _timer = ctx.metrics.start(CONTROLLER);
    let api: Api<AnalyticsPipeline> =
        Api::namespaced(ctx.client.clone(), &namespace(pipeline.as_ref())?);
    let key = backoff_key(pipeline.as_ref());
    let action = finalizer(&api, FINALIZER, pipeline, |event| async {
        match event {
            Finalizer::Apply(p) => apply(&p, &ctx).await,
            Finalizer::Cleanup(p) => cleanup(&p, &ctx).await,
        }
    })
    .await?;
    ctx.backoff.succeeded(&key);
    Ok(action)
}

pub fn error_policy(pipeline: Arc<AnalyticsPipeline>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.retry_after_failure(CONTROLLER, pipeline.as_ref(), error)
}

async fn apply(pipeline: &AnalyticsPipeline, ctx: &Context) -> Result<Action, Error> {
    let (accepted, secrets) = accept(pipeline, ctx).await?;
    let config = render::runtime_config(pipeline, &accepted, &secrets)?;
    let children = apply_children(pipeline, &config, ctx).await?;
    let stream = ensure_stream(pipeline, &config, ctx).await;
    let storage = check_storage(&config).await;
    let observed = observe(pipeline, &children, &stream, &storage);
    let ready = observed.ready;
    let (stream, backlog) = match stream {
        Ok((name, backlog)) => (Ok(name), backlog),
        Err(e) => (Err(e), None),
    };
    report(
        pipeline,
        observed,
        accepted.len(),
        backlog,
        stream.err(),
        ctx,
    )
    .await?;
    // Again within a minute while ready, so that the status's backlog stays current.
    Ok(Action::requeue(if ready {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(10)
    }))
}

/// The sites of the pipeline's namespace that it accepts, and the values of the Secrets
/// they and the pipeline reference.
async fn accept(
    pipeline: &AnalyticsPipeline,
    ctx: &Context,
) -> Result<(Vec<AnalyticsSite>, SecretValues), Error> {
    let name = pipeline.name_any();
    let ns = namespace(pipeline)?;
    let sites = Api::<AnalyticsSite>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await?
        .items;
    let secrets = referenced_secrets(&ctx.client, &ns, &[pipeline], &sites).await?;
    let verdicts = acceptance::decide(&BTreeSet::from([name.clone()]), &sites, &secrets);
    let accepted = sites
        .into_iter()
        .filter(|s| s.spec.pipeline_ref.name == name && verdicts[&s.name_any()].is_accepted())
        .collect();
    Ok((accepted, secrets))
}

/// The children as the API server answered the apply: their status is what `observe` reads.
struct Children {
    collector: Deployment,
    processor: Deployment,
    query: Deployment,
}

async fn apply_children(
    pipeline: &AnalyticsPipeline,
    config: &RuntimeConfig,
    ctx: &Context,
) -> Result<Children, Error> {
    let ns = namespace(pipeline)?;
    let client = &ctx.client;
    let config_map = apply_object(
        &Api::<ConfigMap>::namespaced(client.clone(), &ns),
        render::config_map(pipeline, config),
    )
    .await?;
    let checksum = render::checksum(&config_map, &config.credentials.fingerprint());
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    let collector = apply_object(
        &deployments,
        render::collector_deployment(pipeline, &ctx.images, &checksum),
    )
    .await?;
    apply_object(
        &Api::<Service>::namespaced(client.clone(), &ns),
        render::collector_service(pipeline),
    )
    .await?;
    let processor = apply_object(
        &deployments,
        render::processor_deployment(pipeline, &ctx.images, &checksum),
    )
    .await?;
    let query = apply_object(
        &deployments,
        render::query_deployment(pipeline, &ctx.images, &checksum),
    )
    .await?;
    apply_object(
        &Api::<Service>::namespaced(client.clone(), &ns),
        render::query_service(pipeline),
    )
    .await?;
    Ok(Children {
        collector,
        processor,
        query,
    })
}

/// Server-side applies `object` (forced, as the operator's field manager) under its own
/// name; returns the object as stored.
async fn apply_object<K>(api: &Api<K>, object: K) -> Result<K, Error>
where
    K: Resource + Clone + Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    Ok(api
        .patch(
            &name,
            &PatchParams::apply(render::MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await?)
}

/// Creates or updates the stream; returns its name.
/// Makes the stream match the spec; its name, and its backlog when JetStream told it.
async fn ensure_stream(
    pipeline: &AnalyticsPipeline,
    config: &RuntimeConfig,
    ctx: &Context,
) -> Result<(String, Option<stream::Backlog>), Error> {
    let js = ctx
        .nats
        .jetstream(&pipeline.spec.nats.url, &config.credentials.nats)
        .await?;
    stream::ensure_stream(&js, config).await.map_err(|e| {
        Error::Stream(format!(
            "cannot create or update stream {}: {e}",
            config.stream_name()
        ))
    })?;
    let backlog = match stream::backlog(&js, config).await {
        Ok(backlog) => Some(backlog),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the pipeline's backlog");
            None
        }
    };
    Ok((config.stream_name(), backlog))
}

/// What the reconcile found, as conditions.
struct Observed {
    conditions: Vec<Condition>,
    ready: bool,
}

/// Whether ClickHouse answers the pipeline's login: the processor and the query service
/// log in the same way, so a wrong password shows here before their pods say so.
async fn check_storage(config: &RuntimeConfig) -> Result<String, String> {
    let url = &config.pipeline.spec.clickhouse.url;
    let client = tally_contracts::credentials::clickhouse_client(config)?;
    let answer = tokio::time::timeout(CLICKHOUSE_TIMEOUT, client.query("SELECT 1").execute());
    match answer.await {
        Ok(Ok(())) => Ok(format!("ClickHouse at {url} answers")),
        Ok(Err(e)) => Err(format!("ClickHouse at {url}: {e}")),
        Err(_) => Err(format!(
            "ClickHouse at {url} did not answer within {CLICKHOUSE_TIMEOUT:?}"
        )),
    }
}

/// How long the storage check waits for ClickHouse.
const CLICKHOUSE_TIMEOUT: Duration = Duration::from_secs(5);

fn observe(
    pipeline: &AnalyticsPipeline,
    children: &Children,
    stream: &Result<(String, Option<stream::Backlog>), Error>,
    storage: &Result<String, String>,
) -> Observed {
    let generation = pipeline.metadata.generation;
    let mut conditions = vec![
        match stream {
            Ok((stream, _)) => condition(
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
        match storage {
            Ok(message) => condition(
                "StorageReady",
                true,
                "StorageReady",
                message.clone(),
                generation,
            ),
            Err(message) => condition(
                "StorageReady",
                false,
                "StorageUnavailable",
                message.clone(),
                generation,
            ),
        },
        availability("CollectorAvailable", &children.collector, generation),
        availability("ProcessorAvailable", &children.processor, generation),
        availability("QueryAvailable", &children.query, generation),
    ];
    let waiting: Vec<&str> = conditions
        .iter()
        .filter(|c| c.status != "True")
        .map(|c| c.type_.as_str())
        .collect();
    let ready = waiting.is_empty();
    let message = if ready {
        "the stream, ClickHouse, collector, processor and query service are up".to_owned()
    } else {
        format!("waiting for {}", waiting.join(", "))
    };
    conditions.push(condition(
        "Ready",
        ready,
        if ready { "Ready" } else { "NotReady" },
        message,
        generation,
    ));
    Observed { conditions, ready }
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

/// Writes the status, and records a Warning when the stream becomes unavailable (once, not
/// once per retry).
async fn report(
    pipeline: &AnalyticsPipeline,
    observed: Observed,
    sites: usize,
    backlog: Option<stream::Backlog>,
    stream_error: Option<Error>,
    ctx: &Context,
) -> Result<(), Error> {
    let old = pipeline
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let was_failing = find(old, "StreamReady").is_some_and(|c| c.status == "False");
    if !was_failing && let Some(e) = &stream_error {
        publish(
            ctx,
            pipeline,
            EventType::Warning,
            "StreamUnavailable",
            e.to_string(),
        )
        .await;
    }
    let status = AnalyticsPipelineStatus {
        observed_generation: pipeline.metadata.generation,
        conditions: carry_transition_times(old, observed.conditions),
        sites: Some(i32::try_from(sites).unwrap_or(i32::MAX)),
        endpoint: Some(render::service_endpoint(pipeline)),
        backlog: backlog.map(|b| b.unstored()),
        dead_letters: backlog.map(|b| b.dead_lettered),
    };
    apply_status(ctx, pipeline, status).await
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
            let ns = namespace(pipeline)?;
            let secrets = referenced_secrets(&ctx.client, &ns, &[pipeline], &[]).await?;
            let credentials = tally_contracts::credentials::resolve(&pipeline.spec, &secrets)
                .map_err(|e| Error::Stream(format!("cannot log in to NATS: {e}")))?;
            let js = ctx
                .nats
                .jetstream(&pipeline.spec.nats.url, &credentials.nats)
                .await?;
            let dead_letters =
                tally_contracts::naming::dead_letter_stream_name(&pipeline.name_any());
            // The salt bucket of hash visitor ids is a stream too (`KV_<bucket>`).
            let salts = format!(
                "KV_{}",
                tally_contracts::naming::salt_bucket(&pipeline.name_any())
            );
            for name in [&stream_name, &dead_letters, &salts] {
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
                format!("streams {stream_name} and {dead_letters} and the salt bucket deleted (deletionPolicy Delete)"),
            )
            .await;
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, Step, deployment_answer, event_answer, list, played, scripted};
    use http::{Method, StatusCode};
    use serde_json::json;

    fn pipeline(with_finalizer: bool) -> AnalyticsPipeline {
        let mut p = fixtures::pipeline("default");
        // Nothing listens on port 1: neither the stream nor the storage can be reached
        // (whatever else runs on the machine's usual ports).
        p.spec.nats.url = "nats://127.0.0.1:1".into();
        p.spec.clickhouse.url = "http://127.0.0.1:1".into();
        if with_finalizer {
            p.metadata.finalizers = Some(vec![FINALIZER.into()]);
        }
        p
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
        played(script).await;
        assert_eq!(action, Action::await_change());
    }

    #[tokio::test]
    async fn a_pipeline_applies_its_objects_and_reports_what_is_not_ready() {
        let p = pipeline(true);
        let sites = list("AnalyticsSiteList", vec![]);
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
            Step::new(Method::PATCH, "/namespaces/default/deployments/web-query", StatusCode::OK, deployment_answer("web-query", true))
                .checking(owned("query")),
            Step::new(Method::PATCH, "/namespaces/default/services/web-query", StatusCode::OK, json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-query"}}))
                .checking(owned("query service")),
            Step::new(Method::POST, "/namespaces/default/events", StatusCode::CREATED, event_answer())
                .checking(|e| assert_eq!(e["reason"], "StreamUnavailable")),
            Step::new(Method::PATCH, "/namespaces/default/analyticspipelines/web/status", StatusCode::OK, serde_json::to_value(pipeline(true)).unwrap())
                .checking(|patch| {
                    let status = &patch["status"];
                    let get = |t: &str| status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == t).unwrap().clone();
                    assert_eq!(get("StreamReady")["status"], "False");
                    assert!(get("StreamReady")["message"].as_str().unwrap().contains("cannot connect to NATS"));
                    assert_eq!(get("CollectorAvailable")["status"], "True");
                    assert_eq!(get("ProcessorAvailable")["status"], "False");
                    assert_eq!(get("QueryAvailable")["status"], "True");
                    assert_eq!(get("Ready")["status"], "False");
                    // No ClickHouse listens where this pipeline points either.
                    assert_eq!(get("StorageReady")["status"], "False");
                    assert_eq!(get("StorageReady")["reason"], "StorageUnavailable");
                    assert_eq!(get("Ready")["message"], "waiting for StreamReady, StorageReady, ProcessorAvailable");
                    assert_eq!((&status["observedGeneration"], &status["sites"]), (&json!(2), &json!(0)));
                }),
        ]);
        let action = reconcile(Arc::new(p), ctx)
            .await
            .expect("reconcile succeeds");
        played(script).await;
        assert_eq!(action, Action::requeue(Duration::from_secs(10)));
    }

    #[tokio::test]
    async fn a_failed_apply_counts_its_own_cause_not_the_finalizer() {
        let p = pipeline(true);
        let (ctx, script) = scripted(vec![Step::new(
            Method::GET,
            "/namespaces/default/analyticssites",
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "InternalError", "code": 500, "message": "etcd is away"}),
        )]);
        let error = reconcile(Arc::new(p.clone()), ctx.clone())
            .await
            .expect_err("the site list fails");
        played(script).await;
        assert_eq!(error.metric_label(), "kube", "{error}");
        assert!(error.to_string().contains("etcd is away"), "{error}");
        error_policy(Arc::new(p), &error, ctx.clone());
        let metrics = ctx.metrics.render();
        assert!(
            metrics.contains(r#"controller="pipeline",reason="kube""#),
            "{metrics}"
        );
    }
}
