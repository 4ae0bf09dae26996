//! What both controllers do through the API server: read the Secrets that resources reference,
//! record Kubernetes Events, and apply an object's status.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tally_contracts::access::SecretValues;
use tally_crds::{AnalyticsPipeline, AnalyticsSite};

use crate::context::{Context, Error};
use crate::render;

/// The namespace of `object`; every object the operator reconciles is namespaced.
pub fn namespace<K: Resource>(object: &K) -> Result<String, Error> {
    object
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))
}

/// The names of the Secrets that `sites` and `pipelines` reference (API keys, admin keys,
/// the servers' credentials).
pub fn secret_names<'a>(
    pipelines: impl IntoIterator<Item = &'a AnalyticsPipeline>,
    sites: impl IntoIterator<Item = &'a AnalyticsSite>,
) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for pipeline in pipelines {
        let spec = &pipeline.spec;
        let admin = spec.admin_keys.iter().map(|k| &k.source.secret_ref);
        names.extend(admin.flatten().map(|r| r.name.clone()));
        names.extend(spec.credential_refs().into_iter().map(|r| r.name.clone()));
    }
    for site in sites {
        let keys = site.spec.api_keys.iter().map(|k| &k.source.secret_ref);
        names.extend(keys.flatten().map(|r| r.name.clone()));
    }
    names
}

/// The values of the Secrets that `sites` and `pipelines` reference, read by name: the
/// operator never lists Secrets' data, and keeps these only for the reconcile at hand.
pub async fn referenced_secrets(
    client: &kube::Client,
    ns: &str,
    pipelines: &[&AnalyticsPipeline],
    sites: &[AnalyticsSite],
) -> Result<SecretValues, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut found = SecretValues::default();
    for name in secret_names(pipelines.iter().copied(), sites) {
        if let Some(secret) = api.get_opt(&name).await? {
            // Named by the API server: never without a name.
            let _ = found.add(secret);
        }
    }
    Ok(found)
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

/// Applies `status` to `object`'s status subresource (server-side apply, forced, as the
/// operator's field manager).
pub async fn apply_status<K>(ctx: &Context, object: &K, status: impl Serialize) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(ctx.client.clone(), &namespace(object)?)
        .patch_status(
            &object.name_any(),
            &PatchParams::apply(render::MANAGER).force(),
            &Patch::Apply(json!({
                "apiVersion": K::api_version(&()),
                "kind": K::kind(&()),
                "status": status,
            })),
        )
        .await?;
    Ok(())
}
