//! Which sites a pipeline accepts. Both controllers decide with this one function, so the
//! pipeline's rendered configuration and each site's `Accepted` condition always agree.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;
use tally_crds::AnalyticsSite;

/// The verdict on one site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// `spec.pipelineRef` names no pipeline in the namespace.
    PipelineNotFound {
        pipeline: String,
    },
    /// The API-key Secret, or its key, does not exist.
    ApiKeySecretNotFound {
        secret: String,
        key: String,
    },
    /// An older site of the same pipeline has the same `siteId`.
    SiteIdConflict {
        site_id: String,
        holder: String,
    },
}

impl Verdict {
    pub fn is_accepted(&self) -> bool {
        matches!(self, Self::Accepted)
    }

    /// The condition reason (CamelCase, stable).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Accepted => "Accepted",
            Self::PipelineNotFound { .. } => "PipelineNotFound",
            Self::ApiKeySecretNotFound { .. } => "ApiKeySecretNotFound",
            Self::SiteIdConflict { .. } => "SiteIdConflict",
        }
    }

    /// A sentence for people.
    pub fn message(&self) -> String {
        match self {
            Self::Accepted => "the site is part of its pipeline's configuration".into(),
            Self::PipelineNotFound { pipeline } => {
                format!("AnalyticsPipeline {pipeline:?} does not exist in this namespace")
            }
            Self::ApiKeySecretNotFound { secret, key } => {
                format!("Secret {secret:?} with key {key:?} does not exist in this namespace")
            }
            Self::SiteIdConflict { site_id, holder } => format!(
                "siteId {site_id:?} is already used by AnalyticsSite {holder:?} of the same pipeline"
            ),
        }
    }
}

/// Decides every site of one namespace. `pipelines` are the pipeline names that exist;
/// `secrets` maps each existing Secret's name to its keys. Among sites of a pipeline sharing
/// a `siteId`, the oldest (then the first by name) keeps it.
pub fn decide(
    pipelines: &BTreeSet<String>,
    sites: &[AnalyticsSite],
    secrets: &BTreeMap<String, BTreeSet<String>>,
) -> BTreeMap<String, Verdict> {
    let mut order: Vec<&AnalyticsSite> = sites.iter().collect();
    order.sort_by(|a, b| {
        (
            a.metadata.creation_timestamp.as_ref().map(|t| t.0),
            a.name_any(),
        )
            .cmp(&(
                b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                b.name_any(),
            ))
    });
    let mut holders: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut verdicts = BTreeMap::new();
    for site in order {
        let spec = &site.spec;
        let verdict = if !pipelines.contains(&spec.pipeline_ref.name) {
            Verdict::PipelineNotFound {
                pipeline: spec.pipeline_ref.name.clone(),
            }
        } else if let Some(r) = spec.api_key_secret_ref.as_ref().filter(|r| {
            !secrets
                .get(&r.name)
                .is_some_and(|keys| keys.contains(&r.key))
        }) {
            Verdict::ApiKeySecretNotFound {
                secret: r.name.clone(),
                key: r.key.clone(),
            }
        } else {
            let slot = (spec.pipeline_ref.name.clone(), spec.site_id.clone());
            match holders.get(&slot) {
                Some(holder) => Verdict::SiteIdConflict {
                    site_id: spec.site_id.clone(),
                    holder: holder.clone(),
                },
                None => {
                    holders.insert(slot, site.name_any());
                    Verdict::Accepted
                }
            }
        };
        verdicts.insert(site.name_any(), verdict);
    }
    verdicts
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use tally_crds::{AnalyticsSiteSpec, PipelineRef, SecretKeyRef};

    fn site(name: &str, pipeline: &str, site_id: &str, created: i64) -> AnalyticsSite {
        let mut s = AnalyticsSite::new(
            name,
            AnalyticsSiteSpec {
                pipeline_ref: PipelineRef {
                    name: pipeline.into(),
                },
                site_id: site_id.into(),
                domains: vec![],
                api_key_secret_ref: None,
                privacy: Default::default(),
            },
        );
        s.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
        s
    }

    #[test]
    fn decides_each_reason() {
        let pipelines = BTreeSet::from(["web".to_owned()]);
        let mut keyed = site("keyed", "web", "keyed", 5);
        keyed.spec.api_key_secret_ref = Some(SecretKeyRef {
            name: "keys".into(),
            key: "apiKey".into(),
        });
        let mut wrong_key = site("wrong-key", "web", "wk", 6);
        wrong_key.spec.api_key_secret_ref = Some(SecretKeyRef {
            name: "keys".into(),
            key: "other".into(),
        });
        let sites = vec![
            site("second", "web", "shop", 20),
            site("first", "web", "shop", 10),
            site("orphan", "gone", "x", 1),
            site("elsewhere", "web", "blog", 30),
            keyed,
            wrong_key,
        ];
        let secrets = BTreeMap::from([("keys".to_owned(), BTreeSet::from(["apiKey".to_owned()]))]);
        let v = decide(&pipelines, &sites, &secrets);
        assert_eq!(v["first"], Verdict::Accepted);
        assert_eq!(
            v["second"],
            Verdict::SiteIdConflict {
                site_id: "shop".into(),
                holder: "first".into()
            }
        );
        assert_eq!(
            v["orphan"],
            Verdict::PipelineNotFound {
                pipeline: "gone".into()
            }
        );
        assert_eq!(v["elsewhere"], Verdict::Accepted);
        assert_eq!(v["keyed"], Verdict::Accepted);
        assert_eq!(v["wrong-key"].reason(), "ApiKeySecretNotFound");
    }

    #[test]
    fn same_site_id_in_two_pipelines_is_no_conflict() {
        let pipelines = BTreeSet::from(["a".to_owned(), "b".to_owned()]);
        let v = decide(
            &pipelines,
            &[site("x", "a", "shop", 1), site("y", "b", "shop", 2)],
            &BTreeMap::new(),
        );
        assert!(v.values().all(Verdict::is_accepted));
    }
}
