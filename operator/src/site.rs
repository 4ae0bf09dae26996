//! Reconciles an `AnalyticsSite`: decides whether its pipeline accepts it (the same decision
//! the pipeline controller renders into the configuration), and reports `Accepted`, `Ready`,
//! the ingest URL and the tracker snippet. A change of verdict is also recorded as a
//! Kubernetes Event.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tally_crds::{AnalyticsPipeline, AnalyticsSite, AnalyticsSiteStatus, KeyCounts};

use crate::acceptance::{self, Verdict};
use crate::api::{apply_status, namespace, publish, referenced_secrets};
use crate::conditions::{carry_transition_times, condition, find, is_true};
use crate::context::{Context, Error, backoff_key};
use crate::render;

const CONTROLLER: &str = "site";

/// One reconcile, as a span (exported as an OpenTelemetry span when tracing is on).
#[tracing::instrument(name = "reconcile", skip_all, fields(controller = CONTROLLER, namespace = site.namespace().unwrap_or_default(), name = %site.name_any()))]
pub async fn reconcile(site: Arc<AnalyticsSite>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start(CONTROLLER);
    let ns = namespace(site.as_ref())?;
    let client = &ctx.client;
    let generation = site.metadata.generation;
    let pipeline_name = &site.spec.pipeline_ref.name;
    let pipeline = Api::<AnalyticsPipeline>::namespaced(client.clone(), &ns)
        .get_opt(pipeline_name)
        .await?;
    let sites = Api::<AnalyticsSite>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await?
        .items;
    let secrets = referenced_secrets(client, &ns, &[], &sites).await?;
    let existing: BTreeSet<String> = pipeline.iter().map(|p| p.name_any()).collect();
    let verdict = acceptance::decide(&existing, &sites, &secrets)
        .remove(&site.name_any())
        // The site was deleted between the event and this reconcile.
        .unwrap_or(Verdict::PipelineNotFound {
            pipeline: pipeline_name.clone(),
        });

    let pipeline_ready = pipeline.as_ref().is_some_and(|p| {
        p.status
            .as_ref()
            .is_some_and(|s| is_true(&s.conditions, "Ready"))
    });
    let accepted = verdict.is_accepted();
    let ready = accepted && pipeline_ready;
    let (ready_reason, ready_message) = match (accepted, pipeline_ready) {
        (true, true) => (
            "Ready",
            "the site's pipeline is ready to take its events".to_owned(),
        ),
        (true, false) => (
            "PipelineNotReady",
            format!("AnalyticsPipeline {pipeline_name:?} is not ready yet"),
        ),
        (false, _) => ("NotAccepted", verdict.message()),
    };
    let conditions = vec![
        condition(
            "Accepted",
            accepted,
            verdict.reason(),
            verdict.message(),
            generation,
        ),
        condition("Ready", ready, ready_reason, ready_message, generation),
    ];
    let old = site
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let endpoint = pipeline.as_ref().map(render::ingest_endpoint);
    let status = AnalyticsSiteStatus {
        observed_generation: generation,
        conditions: carry_transition_times(old, conditions),
        ingest_url: endpoint.as_ref().map(|e| format!("{e}/v1/events")),
        snippet: endpoint
            .as_ref()
            .map(|e| render::snippet(e, &site.spec.site_id)),
        keys: Some(if accepted {
            KeyCounts::of(&site.spec.api_keys)
        } else {
            KeyCounts::default()
        }),
    };

    let previous_reason = find(old, "Accepted").map(|c| c.reason.as_str());
    if previous_reason != Some(verdict.reason()) {
        let type_ = if accepted {
            EventType::Normal
        } else {
            EventType::Warning
        };
        publish(
            &ctx,
            site.as_ref(),
            type_,
            verdict.reason(),
            verdict.message(),
        )
        .await;
    }
    apply_status(&ctx, site.as_ref(), status).await?;
    ctx.backoff.succeeded(&backoff_key(site.as_ref()));
    Ok(Action::requeue(if ready {
        Duration::from_secs(300)
    } else {
        Duration::from_secs(30)
    }))
}

pub fn error_policy(site: Arc<AnalyticsSite>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.retry_after_failure(CONTROLLER, site.as_ref(), error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, Step, event_answer, list, not_found, played, scripted};
    use http::{Method, StatusCode};
    use serde_json::json;

    fn site() -> AnalyticsSite {
        let mut s = fixtures::site("shop", "shop", "default");
        s.spec.domains.clear();
        s
    }

    #[tokio::test]
    async fn a_site_whose_pipeline_is_missing_is_not_accepted_and_says_why() {
        let site = site();
        let sites = list(
            "AnalyticsSiteList",
            vec![serde_json::to_value(&site).unwrap()],
        );
        let (ctx, script) = scripted(vec![
            Step::new(
                Method::GET,
                "/namespaces/default/analyticspipelines/web",
                StatusCode::NOT_FOUND,
                not_found(),
            ),
            Step::new(
                Method::GET,
                "/namespaces/default/analyticssites",
                StatusCode::OK,
                sites,
            ),
            Step::new(
                Method::POST,
                "/namespaces/default/events",
                StatusCode::CREATED,
                event_answer(),
            )
            .checking(|e| {
                assert_eq!(e["type"], "Warning");
                assert_eq!(e["reason"], "PipelineNotFound");
            }),
            Step::new(
                Method::PATCH,
                "/namespaces/default/analyticssites/shop/status",
                StatusCode::OK,
                serde_json::to_value(&site).unwrap(),
            )
            .checking(|patch| {
                let status = &patch["status"];
                assert_eq!(status["observedGeneration"], 4);
                let accepted = &status["conditions"][0];
                assert_eq!(
                    (&accepted["type"], &accepted["status"], &accepted["reason"]),
                    (
                        &json!("Accepted"),
                        &json!("False"),
                        &json!("PipelineNotFound")
                    )
                );
                assert!(accepted["message"].as_str().unwrap().contains("\"web\""));
                let ready = &status["conditions"][1];
                assert_eq!(
                    (&ready["status"], &ready["reason"]),
                    (&json!("False"), &json!("NotAccepted"))
                );
                assert!(status.get("ingestUrl").is_none());
            }),
        ]);
        let action = reconcile(Arc::new(site), ctx)
            .await
            .expect("reconcile succeeds");
        played(script).await;
        assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    }

    #[tokio::test]
    async fn an_accepted_site_of_a_ready_pipeline_is_ready_with_its_snippet() {
        let mut site = site();
        // Already reported accepted: no new Event.
        site.status = Some(AnalyticsSiteStatus {
            conditions: vec![condition("Accepted", true, "Accepted", "", Some(4))],
            ..Default::default()
        });
        let mut pipeline = fixtures::pipeline("default");
        pipeline.status = Some(tally_crds::AnalyticsPipelineStatus {
            conditions: vec![condition("Ready", true, "Ready", "", Some(1))],
            ..Default::default()
        });
        let sites = list(
            "AnalyticsSiteList",
            vec![serde_json::to_value(&site).unwrap()],
        );
        let (ctx, script) = scripted(vec![
            Step::new(Method::GET, "/namespaces/default/analyticspipelines/web", StatusCode::OK, serde_json::to_value(&pipeline).unwrap()),
            Step::new(Method::GET, "/namespaces/default/analyticssites", StatusCode::OK, sites),
            Step::new(Method::PATCH, "/namespaces/default/analyticssites/shop/status", StatusCode::OK, serde_json::to_value(&site).unwrap())
                .checking(|patch| {
                    let status = &patch["status"];
                    assert_eq!(status["conditions"][1]["status"], "True");
                    assert_eq!(status["ingestUrl"], "http://web-collector.default.svc/v1/events");
                    assert_eq!(
                        status["snippet"],
                        r#"<script defer src="http://web-collector.default.svc/tracker.js" data-site="shop"></script>"#
                    );
                }),
        ]);
        let action = reconcile(Arc::new(site), ctx)
            .await
            .expect("reconcile succeeds");
        played(script).await;
        assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    }
}
