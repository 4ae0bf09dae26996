//! Both controllers wired to what they watch: a pipeline reconciles when it, its children,
//! one of its sites or a Secret it or its sites reference change; a site when it, its
//! pipeline or one of its key Secrets change. Secrets are watched by their metadata only,
//! so the operator never holds the cluster's Secret data; a reconcile reads the few it
//! needs by name.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Api, ResourceExt};
use tally_crds::{AnalyticsPipeline, AnalyticsSite};

use crate::api::secret_names;
use crate::context::Context;
use crate::{pipeline, site};

/// Both controllers, until the process is asked to stop.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let config = watcher::Config::default();
    let pipelines = Api::<AnalyticsPipeline>::all(client.clone());
    let sites = Api::<AnalyticsSite>::all(client.clone());
    // `PartialObjectMeta`: metadata-only lists and watches.
    let secrets = Api::<PartialObjectMeta<Secret>>::all(client.clone());

    let site_controller = Controller::new(sites.clone(), config.clone());
    let site_store = site_controller.store();
    let pipeline_controller = Controller::new(pipelines.clone(), config.clone());
    let pipeline_store = pipeline_controller.store();

    let referencing = site_store.clone();
    let pipeline_controller = pipeline_controller
        .owns(Api::<ConfigMap>::all(client.clone()), config.clone())
        .owns(Api::<Deployment>::all(client.clone()), config.clone())
        .owns(Api::<Service>::all(client.clone()), config.clone())
        .watches(sites, config.clone(), |site| {
            let ns = site.namespace()?;
            Some(ObjectRef::new(&site.spec.pipeline_ref.name).within(&ns))
        })
        .watches(secrets.clone(), config.clone(), move |secret| {
            pipelines_referencing(
                &pipeline_store,
                &referencing,
                secret.namespace(),
                &secret.name_any(),
            )
        })
        .shutdown_on_signal()
        .run(pipeline::reconcile, pipeline::error_policy, ctx.clone())
        .for_each(|_| async {});

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
        .watches(secrets, config.clone(), move |secret| {
            let (ns, name) = (secret.namespace(), secret.name_any());
            site_store
                .state()
                .into_iter()
                .filter(|s| s.namespace() == ns && secret_names([], [&**s]).contains(&name))
                .map(|s| ObjectRef::from_obj(&*s))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(site::reconcile, site::error_policy, ctx)
        .for_each(|_| async {});

    futures::join!(pipeline_controller, site_controller);
}

/// The pipelines of `ns` that reference the Secret `name`, themselves (admin keys) or
/// through one of their sites.
fn pipelines_referencing(
    pipelines: &Store<AnalyticsPipeline>,
    sites: &Store<AnalyticsSite>,
    ns: Option<String>,
    name: &str,
) -> Vec<ObjectRef<AnalyticsPipeline>> {
    let Some(ns) = ns else { return Vec::new() };
    let mut names: Vec<String> = pipelines
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_ref() == Some(&ns) && secret_names([&**p], []).contains(name))
        .map(|p| p.name_any())
        .chain(
            sites
                .state()
                .into_iter()
                .filter(|s| {
                    s.namespace().as_ref() == Some(&ns) && secret_names([], [&**s]).contains(name)
                })
                .map(|s| s.spec.pipeline_ref.name.clone()),
        )
        .collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|n| ObjectRef::new(&n).within(&ns))
        .collect()
}
