//! Both controllers wired to what they watch: a pipeline reconciles when it, its children or
//! one of its sites change; a site when it, its pipeline or its API-key Secret change.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, ResourceExt};
use tally_crds::{AnalyticsPipeline, AnalyticsSite};

use crate::context::Context;
use crate::{pipeline, site};

/// Both controllers, until the process is asked to stop.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let config = watcher::Config::default();
    let pipelines = Api::<AnalyticsPipeline>::all(client.clone());
    let sites = Api::<AnalyticsSite>::all(client.clone());

    let pipeline_controller = Controller::new(pipelines.clone(), config.clone())
        .owns(Api::<ConfigMap>::all(client.clone()), config.clone())
        .owns(Api::<Deployment>::all(client.clone()), config.clone())
        .owns(Api::<Service>::all(client.clone()), config.clone())
        .watches(sites.clone(), config.clone(), |site| {
            let ns = site.namespace()?;
            Some(ObjectRef::new(&site.spec.pipeline_ref.name).within(&ns))
        })
        .shutdown_on_signal()
        .run(pipeline::reconcile, pipeline::error_policy, ctx.clone())
        .for_each(|_| async {});

    let site_controller = Controller::new(sites, config.clone());
    let site_store = site_controller.store();
    let by_pipeline = site_store.clone();
    let site_controller = site_controller
        .watches(pipelines, config.clone(), move |p| {
            let (ns, name) = (p.namespace(), p.name_any());
            by_pipeline
                .state()
                .into_iter()
                .filter(|s| s.namespace() == ns && s.spec.pipeline_ref.name == name)
                .map(|s| ObjectRef::from_obj(&*s))
                .collect::<Vec<_>>()
        })
        .watches(Api::<Secret>::all(client), config, move |secret| {
            let (ns, name) = (secret.namespace(), secret.name_any());
            site_store
                .state()
                .into_iter()
                .filter(|s| {
                    s.namespace() == ns
                        && s.spec
                            .api_key_secret_ref
                            .as_ref()
                            .is_some_and(|r| r.name == name)
                })
                .map(|s| ObjectRef::from_obj(&*s))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(site::reconcile, site::error_policy, ctx)
        .for_each(|_| async {});

    futures::join!(pipeline_controller, site_controller);
}
