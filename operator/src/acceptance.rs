//! Which sites a pipeline accepts. Both controllers decide with this one function, so the
//! pipeline's rendered configuration and each site's `Accepted` condition always agree.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kube::ResourceExt;
use tally_contracts::access::{KeyDigest, KeyProblem, SecretValues};
use tally_crds::AnalyticsSite;

/// The verdict on one site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// `spec.pipelineRef` names no pipeline in the namespace.
    PipelineNotFound {
        pipeline: String,
    },
    /// An API key cannot be used: its Secret or key does not exist, or the value is not a
    /// usable key.
    ApiKeyUnusable {
        index: usize,
        problem: KeyProblem,
    },
    /// An API key is also a key of an older site of the same pipeline.
    ApiKeyInUse {
        index: usize,
        holder: String,
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
            Self::ApiKeyUnusable {
                problem: KeyProblem::Missing { .. },
                ..
            } => "ApiKeySecretNotFound",
            Self::ApiKeyUnusable { .. } => "ApiKeyInvalid",
            Self::ApiKeyInUse { .. } => "ApiKeyInUse",
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
            Self::ApiKeyUnusable { index, problem } => {
                format!("spec.apiKeys[{index}]: {problem}")
            }
            Self::ApiKeyInUse { index, holder } => format!(
                "spec.apiKeys[{index}] is also a key of AnalyticsSite {holder:?} of the same pipeline; give each site its own keys"
            ),
            Self::SiteIdConflict { site_id, holder } => format!(
                "siteId {site_id:?} is already used by AnalyticsSite {holder:?} of the same pipeline"
            ),
        }
    }
}

/// Decides every site of one namespace. `pipelines` are the pipeline names that exist;
/// `secrets` holds the referenced Secrets' values. Among sites of a pipeline sharing a
/// `siteId` or a key, the oldest (then the first by name) keeps it.
pub fn decide(
    pipelines: &BTreeSet<String>,
    sites: &[AnalyticsSite],
    secrets: &SecretValues,
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
    let mut key_holders: HashMap<(String, KeyDigest), String> = HashMap::new();
    let mut verdicts = BTreeMap::new();
    for site in order {
        let verdict = decide_one(site, pipelines, secrets, &holders, &key_holders);
        if let Ok(digests) = &verdict {
            let pipeline = &site.spec.pipeline_ref.name;
            holders.insert(
                (pipeline.clone(), site.spec.site_id.clone()),
                site.name_any(),
            );
            for digest in digests {
                key_holders.insert((pipeline.clone(), *digest), site.name_any());
            }
        }
        let verdict = verdict.err().unwrap_or(Verdict::Accepted);
        verdicts.insert(site.name_any(), verdict);
    }
    verdicts
}

/// One site's verdict: accepted with its keys' digests, or why not.
fn decide_one(
    site: &AnalyticsSite,
    pipelines: &BTreeSet<String>,
    secrets: &SecretValues,
    holders: &BTreeMap<(String, String), String>,
    key_holders: &HashMap<(String, KeyDigest), String>,
) -> Result<Vec<KeyDigest>, Verdict> {
    let spec = &site.spec;
    let pipeline = &spec.pipeline_ref.name;
    if !pipelines.contains(pipeline) {
        return Err(Verdict::PipelineNotFound {
            pipeline: pipeline.clone(),
        });
    }
    let mut digests = Vec::with_capacity(spec.api_keys.len());
    for (index, key) in spec.api_keys.iter().enumerate() {
        match secrets.digest(&key.source) {
            Ok(digest) => digests.push(digest),
            Err(problem) => return Err(Verdict::ApiKeyUnusable { index, problem }),
        }
    }
    if let Some(holder) = holders.get(&(pipeline.clone(), spec.site_id.clone())) {
        return Err(Verdict::SiteIdConflict {
            site_id: spec.site_id.clone(),
            holder: holder.clone(),
        });
    }
    for (index, digest) in digests.iter().enumerate() {
        let earlier = digests[..index].contains(digest).then(|| site.name_any());
        if let Some(holder) =
            earlier.or_else(|| key_holders.get(&(pipeline.clone(), *digest)).cloned())
        {
            return Err(Verdict::ApiKeyInUse { index, holder });
        }
    }
    Ok(digests)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use tally_crds::{AnalyticsSiteSpec, ApiKey, KeyScope, KeySource, PipelineRef, SecretKeyRef};

    fn site(name: &str, pipeline: &str, site_id: &str, created: i64) -> AnalyticsSite {
        let mut s = AnalyticsSite::new(
            name,
            AnalyticsSiteSpec {
                pipeline_ref: PipelineRef {
                    name: pipeline.into(),
                },
                site_id: site_id.into(),
                domains: vec![],
                api_keys: vec![],
                browser_ingest: true,
                rate_limit: None,
                privacy: Default::default(),
                bots: Default::default(),
                time_zone: None,
                goals: Vec::new(),
                experiments: Vec::new(),
            },
        );
        s.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
        s
    }

    #[test]
    fn decides_each_reason() {
        let pipelines = BTreeSet::from(["web".to_owned()]);
        let key = |name: &str| ApiKey {
            source: KeySource {
                secret_ref: Some(SecretKeyRef {
                    name: "keys".into(),
                    key: name.into(),
                }),
                sha256: None,
            },
            scopes: vec![KeyScope::Ingest],
            rate_limit: None,
        };
        let mut keyed = site("keyed", "web", "keyed", 5);
        keyed.spec.api_keys = vec![key("apiKey")];
        let mut wrong_key = site("wrong-key", "web", "wk", 6);
        wrong_key.spec.api_keys = vec![key("apiKey"), key("other")];
        let mut short = site("short", "web", "short", 7);
        short.spec.api_keys = vec![key("short")];
        let mut copy = site("copy", "web", "copy", 8);
        copy.spec.api_keys = vec![key("apiKey")];
        let mut twice = site("twice", "web", "twice", 9);
        twice.spec.api_keys = vec![key("second"), key("second")];
        let sites = vec![
            site("second", "web", "shop", 20),
            site("first", "web", "shop", 10),
            site("orphan", "gone", "x", 1),
            site("elsewhere", "web", "blog", 30),
            keyed,
            wrong_key,
            short,
            copy,
            twice,
        ];
        let mut secrets = SecretValues::default();
        secrets.insert(
            "keys".into(),
            BTreeMap::from([
                ("apiKey".to_owned(), b"keyed-key-0123456789".to_vec()),
                ("second".to_owned(), b"second-key-0123456789".to_vec()),
                ("short".to_owned(), b"short".to_vec()),
            ]),
        );
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
        assert_eq!(
            v["wrong-key"].message(),
            "spec.apiKeys[1]: Secret \"keys\" with key \"other\" does not exist"
        );
        assert_eq!(v["short"].reason(), "ApiKeyInvalid");
        assert_eq!(
            v["copy"],
            Verdict::ApiKeyInUse {
                index: 0,
                holder: "keyed".into()
            }
        );
        assert_eq!(v["twice"].reason(), "ApiKeyInUse");
    }

    #[test]
    fn same_site_id_in_two_pipelines_is_no_conflict() {
        let pipelines = BTreeSet::from(["a".to_owned(), "b".to_owned()]);
        let v = decide(
            &pipelines,
            &[site("x", "a", "shop", 1), site("y", "b", "shop", 2)],
            &SecretValues::default(),
        );
        assert!(v.values().all(Verdict::is_accepted));
    }
}
