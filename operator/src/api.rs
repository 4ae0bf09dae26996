//! What both controllers do through the API server: find the Secrets that sites reference,
//! record Kubernetes Events, and apply an object's status.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tally_crds::AnalyticsSite;

use crate::context::{Context, Error};
use crate::render;

/// The namespace of `object`; every object the operator reconciles is namespaced.
pub fn namespace<K: Resource>(object: &K) -> Result<String, Error> {
    object
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))
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
