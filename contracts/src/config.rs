//! The runtime configuration: one `AnalyticsPipeline` and its `AnalyticsSite`s, read from the
//! same YAML that `kubectl apply` takes — a multi-document file, or a directory of `.yaml` /
//! `.yml` files. In a cluster the operator renders exactly this shape into a ConfigMap.
//!
//! Beside the resources the files may hold `v1` `Secret` documents (`stringData` or
//! base64 `data`), which the resources' `secretRef`s name, as in a cluster. Keys are kept as
//! digests only (see [`crate::access`]).
//!
//! The files are read strictly: a field the resource does not declare (a misspelled
//! `batchMaxRow`, say) is an error naming the file, the document and the field, never a
//! silent default. The API server prunes such fields from applied resources instead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
pub use tally_crds::is_site_id;
use tally_crds::{
    API_VERSION, AnalyticsPipeline, AnalyticsSite, AnalyticsSiteSpec, KeyScope, SITE_ID_PATTERN,
    parse_duration,
};

use crate::access::{Holder, KeyRing, SecretValues};
use crate::credentials::{self, Credentials};
use crate::naming;

/// Why a configuration could not be loaded. Every message names the file (and document) at
/// fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("no AnalyticsPipeline found in {0}")]
    NoPipeline(String),
    #[error("{0} and {1} both declare an AnalyticsPipeline; give one pipeline per configuration")]
    TwoPipelines(String, String),
}

/// Durations of the pipeline spec, parsed once at load.
#[derive(Debug, Clone, PartialEq)]
pub struct Timings {
    pub stream_max_age: Duration,
    pub duplicate_window: Duration,
    pub publish_timeout: Duration,
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub batch_max_wait: Duration,
    pub ack_wait: Duration,
}

/// A validated pipeline with its sites.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub pipeline: AnalyticsPipeline,
    pub sites: Vec<AnalyticsSite>,
    pub timings: Timings,
    /// `spec.collector.trustedProxies`, parsed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The servers' credentials, from the Secrets the pipeline names (never serialized).
    pub credentials: Credentials,
    site_index: HashMap<String, usize>,
    keys: KeyRing,
}

impl RuntimeConfig {
    /// Loads a YAML file, or every `.yaml`/`.yml` file of a directory (in name order).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_secrets(path, None)
    }

    /// [`RuntimeConfig::load`], taking the Secrets that no document of the files holds from
    /// `secrets_dir` (`<dir>/<secret>/<key>`: the operator mounts them there).
    pub fn load_with_secrets(path: &Path, secrets_dir: Option<&Path>) -> Result<Self, ConfigError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_owned(),
                source,
            })
        };
        let mut sources = Vec::new();
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
                })
                .collect();
            files.sort();
            for file in files {
                let text = read(&file)?;
                sources.push((file.display().to_string(), text));
            }
        } else {
            sources.push((path.display().to_string(), read(path)?));
        }
        let described = path.display().to_string();
        Self::from_sources(&described, sources, secrets_dir)
    }

    /// Parses one YAML text holding the pipeline and its sites; `origin` names it in errors.
    pub fn parse(origin: &str, yaml: &str) -> Result<Self, ConfigError> {
        Self::from_sources(origin, vec![(origin.to_owned(), yaml.to_owned())], None)
    }

    /// Builds a configuration from resources already in memory (the operator's path), with
    /// the values of the Secrets they reference; `origin` names them in errors.
    pub fn from_resources(
        origin: &str,
        pipeline: AnalyticsPipeline,
        sites: Vec<AnalyticsSite>,
        secrets: &SecretValues,
    ) -> Result<Self, ConfigError> {
        let sites = sites
            .into_iter()
            .map(|site| {
                let name = site.metadata.name.clone().unwrap_or_default();
                (format!("{origin}: AnalyticsSite {name}"), site)
            })
            .collect();
        Self::validate(
            format!("{origin}: AnalyticsPipeline"),
            pipeline,
            sites,
            secrets,
        )
    }

    fn from_sources(
        described: &str,
        sources: Vec<(String, String)>,
        secrets_dir: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let mut pipeline: Option<(String, AnalyticsPipeline)> = None;
        let mut sites: Vec<(String, AnalyticsSite)> = Vec::new();
        let mut secrets = SecretValues::default().with_dir(secrets_dir.map(Path::to_owned));
        for (file, text) in &sources {
            for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
                let origin = format!("{file} (document {})", index + 1);
                let invalid = |message: String| ConfigError::Invalid {
                    origin: origin.clone(),
                    message,
                };
                let value = serde_yaml::Value::deserialize(document)
                    .map_err(|e| invalid(format!("not valid YAML: {e}")))?;
                if value.is_null() {
                    continue; // an empty document, e.g. after a trailing `---`
                }
                let api_version = value.get("apiVersion").and_then(|v| v.as_str());
                let kind = value.get("kind").and_then(|v| v.as_str());
                if (api_version, kind) == (Some("v1"), Some("Secret")) {
                    let secret = serde_yaml::from_value(value)
                        .map_err(|e| invalid(format!("invalid Secret: {e}")))?;
                    secrets.add(secret).map_err(|e| invalid(e.to_owned()))?;
                    continue;
                }
                if api_version != Some(API_VERSION) {
                    return Err(invalid(format!(
                        "apiVersion must be {API_VERSION} (or v1 for a Secret), found {}",
                        api_version.unwrap_or("nothing")
                    )));
                }
                let name = value
                    .get("metadata")
                    .and_then(|m| m.get("name"))
                    .and_then(|n| n.as_str())
                    .map(|n| format!(" {n:?}"))
                    .unwrap_or_default();
                match kind {
                    Some("AnalyticsPipeline") => {
                        let parsed: AnalyticsPipeline = strict(value).map_err(|e| {
                            invalid(format!("invalid AnalyticsPipeline{name}: {e}"))
                        })?;
                        if let Some((first, _)) = &pipeline {
                            return Err(ConfigError::TwoPipelines(first.clone(), origin));
                        }
                        pipeline = Some((origin, parsed));
                    }
                    Some("AnalyticsSite") => {
                        let parsed: AnalyticsSite = strict(value)
                            .map_err(|e| invalid(format!("invalid AnalyticsSite{name}: {e}")))?;
                        sites.push((origin, parsed));
                    }
                    other => {
                        return Err(invalid(format!(
                            "kind must be AnalyticsPipeline, AnalyticsSite or (with apiVersion v1) Secret, found {}",
                            other.unwrap_or("nothing")
                        )));
                    }
                }
            }
        }
        let (pipeline_origin, pipeline) =
            pipeline.ok_or_else(|| ConfigError::NoPipeline(described.to_owned()))?;
        Self::validate(pipeline_origin, pipeline, sites, &secrets)
    }

    fn validate(
        pipeline_origin: String,
        mut pipeline: AnalyticsPipeline,
        sites: Vec<(String, AnalyticsSite)>,
        secrets: &SecretValues,
    ) -> Result<Self, ConfigError> {
        let invalid = |origin: &str, message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            message,
        };
        let name = pipeline
            .metadata
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| invalid(&pipeline_origin, "metadata.name is required".into()))?;
        let spec = &pipeline.spec;
        let duration = |field: &str, value: &str| {
            parse_duration(value)
                .map_err(|e| invalid(&pipeline_origin, format!("spec.{field}: {e}")))
        };
        let timings = Timings {
            stream_max_age: duration("nats.stream.maxAge", &spec.nats.stream.max_age)?,
            duplicate_window: duration(
                "nats.stream.duplicateWindow",
                &spec.nats.stream.duplicate_window,
            )?,
            publish_timeout: duration("collector.publishTimeout", &spec.collector.publish_timeout)?,
            header_read_timeout: duration(
                "collector.headerReadTimeout",
                &spec.collector.header_read_timeout,
            )?,
            request_timeout: duration("collector.requestTimeout", &spec.collector.request_timeout)?,
            batch_max_wait: duration("processor.batchMaxWait", &spec.processor.batch_max_wait)?,
            ack_wait: duration("processor.ackWait", &spec.processor.ack_wait)?,
        };
        // What the CRD's schema refuses, refused for files too: a zero here would make the
        // collector close every connection.
        for (field, zero) in [
            (
                "collector.maxConnections",
                spec.collector.max_connections == 0,
            ),
            (
                "collector.headerReadTimeout",
                timings.header_read_timeout.is_zero(),
            ),
            (
                "collector.requestTimeout",
                timings.request_timeout.is_zero(),
            ),
        ] {
            if zero {
                return Err(invalid(
                    &pipeline_origin,
                    format!("spec.{field} must be more than 0"),
                ));
            }
        }
        let trusted_proxies = spec
            .collector
            .trusted_proxies
            .iter()
            .map(|entry| {
                entry
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        invalid(
                            &pipeline_origin,
                            format!(
                                "spec.collector.trustedProxies: {entry:?} is neither an IP address nor a CIDR block"
                            ),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(db) = &spec.clickhouse.database
            && !is_identifier(db)
        {
            return Err(invalid(
                &pipeline_origin,
                format!(
                    "spec.clickhouse.database {db:?} must be letters, digits and _, not starting with a digit"
                ),
            ));
        }

        let credentials = credentials::resolve(&pipeline.spec, secrets)
            .map_err(|message| invalid(&pipeline_origin, message))?;
        let mut keys = KeyRing::default();
        for (i, admin) in pipeline.spec.admin_keys.iter_mut().enumerate() {
            let field = format!("spec.adminKeys[{i}]");
            let digest = secrets
                .resolve(&mut admin.source)
                .map_err(|e| invalid(&pipeline_origin, format!("{field}: {e}")))?;
            keys.add(digest, Holder::Admin, None).map_err(|shared| {
                invalid(
                    &pipeline_origin,
                    format!("{field}: the same key is given to {} too", shared.first),
                )
            })?;
        }

        let mut site_index = HashMap::new();
        let mut kept = Vec::with_capacity(sites.len());
        for (origin, mut site) in sites {
            let s = &mut site.spec;
            if s.pipeline_ref.name != name {
                return Err(invalid(
                    &origin,
                    format!(
                        "spec.pipelineRef.name is {:?} but this configuration's pipeline is {name:?}",
                        s.pipeline_ref.name
                    ),
                ));
            }
            if !is_site_id(&s.site_id) {
                return Err(invalid(
                    &origin,
                    format!("spec.siteId {:?} must match {SITE_ID_PATTERN}", s.site_id),
                ));
            }
            let problems = tally_crds::goal_problems(&s.goals, &s.experiments);
            if !problems.is_empty() {
                return Err(invalid(&origin, problems.join("; ")));
            }
            for (i, key) in s.api_keys.iter_mut().enumerate() {
                let field = format!("spec.apiKeys[{i}]");
                let digest = secrets
                    .resolve(&mut key.source)
                    .map_err(|e| invalid(&origin, format!("{field}: {e}")))?;
                let holder = Holder::Site {
                    site_id: s.site_id.clone(),
                    ingest: key.scopes.contains(&KeyScope::Ingest),
                    read: key.scopes.contains(&KeyScope::Read),
                };
                keys.add(digest, holder, key.rate_limit).map_err(|shared| {
                    invalid(
                        &origin,
                        format!("{field}: the same key is given to {} too", shared.first),
                    )
                })?;
            }
            if site_index.insert(s.site_id.clone(), kept.len()).is_some() {
                return Err(invalid(
                    &origin,
                    format!(
                        "spec.siteId {:?} is declared by another site too",
                        s.site_id
                    ),
                ));
            }
            kept.push(site);
        }
        Ok(Self {
            pipeline,
            sites: kept,
            timings,
            trusted_proxies,
            credentials,
            site_index,
            keys,
        })
    }

    /// Every API key of the pipeline and its sites.
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// The pipeline's name (`metadata.name`).
    pub fn name(&self) -> &str {
        self.pipeline.metadata.name.as_deref().unwrap_or_default()
    }

    /// The site with this `site_id`, if the configuration declares it.
    pub fn site(&self, site_id: &str) -> Option<&AnalyticsSiteSpec> {
        self.site_index.get(site_id).map(|&i| &self.sites[i].spec)
    }

    /// The ClickHouse database of this pipeline.
    pub fn database(&self) -> String {
        self.pipeline
            .spec
            .clickhouse
            .database
            .clone()
            .unwrap_or_else(|| naming::default_database(self.name()))
    }

    /// The JetStream stream of this pipeline.
    pub fn stream_name(&self) -> String {
        naming::stream_name(self.name())
    }

    /// The subject one site's events are published on.
    pub fn event_subject(&self, site_id: &str) -> String {
        naming::event_subject(self.name(), site_id)
    }

    /// The resources as one multi-document YAML text, the form [`RuntimeConfig::parse`] reads.
    pub fn to_yaml(&self) -> String {
        let mut out = serde_yaml::to_string(&self.pipeline).expect("resources serialize");
        for site in &self.sites {
            out.push_str("---\n");
            out.push_str(&serde_yaml::to_string(site).expect("resources serialize"));
        }
        out
    }
}

use serde::Deserialize as _;

/// Deserializes one resource, refusing every field its type does not declare (all of them
/// named, as paths like `spec.processor.batchMaxRow`). Unknown fields are reported before a
/// bad value, since a misspelled field is often why a required one is missing.
fn strict<T: DeserializeOwned>(value: serde_yaml::Value) -> Result<T, String> {
    let mut unknown = Vec::new();
    let parsed = serde_ignored::deserialize(value, |path| {
        // The resource types take `apiVersion` and `kind` as given; both were checked above.
        if !matches!(&path, serde_ignored::Path::Map { parent: serde_ignored::Path::Root, key } if key == "apiVersion" || key == "kind")
        {
            unknown.push(field_path(&path));
        }
    });
    match (unknown.as_slice(), parsed) {
        ([], parsed) => parsed.map_err(|e| e.to_string()),
        ([one], _) => Err(format!("unknown field {one}")),
        (many, _) => Err(format!("unknown fields {}", many.join(", "))),
    }
}

/// `spec.domains[2]`-style path of a field, leaving out the steps that are not fields
/// (`Option`s, newtypes).
fn field_path(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => match field_path(parent) {
            p if p.is_empty() => key.clone(),
            p => format!("{p}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 63
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
apiVersion: tally.dev/v1alpha1
kind: AnalyticsPipeline
metadata:
  name: web
spec:
  processor:
    batchMaxWait: 200ms
---
apiVersion: tally.dev/v1alpha1
kind: AnalyticsSite
metadata:
  name: shop
spec:
  pipelineRef: {name: web}
  siteId: shop
  domains: [shop.example.com]
---
"#;

    #[test]
    fn parses_a_pipeline_with_its_sites() {
        let config = RuntimeConfig::parse("example.yaml", EXAMPLE).unwrap();
        assert_eq!(config.name(), "web");
        assert_eq!(config.database(), "tally_web");
        assert_eq!(config.stream_name(), "TALLY_WEB");
        assert_eq!(config.timings.batch_max_wait, Duration::from_millis(200));
        assert!(config.site("shop").is_some());
        assert!(config.site("blog").is_none());
    }

    #[test]
    fn round_trips_through_to_yaml() {
        let config = RuntimeConfig::parse("example.yaml", EXAMPLE).unwrap();
        let again = RuntimeConfig::parse("rendered", &config.to_yaml()).unwrap();
        assert_eq!(again.pipeline, config.pipeline);
        assert_eq!(again.sites, config.sites);
    }

    fn error_of(yaml: &str) -> String {
        RuntimeConfig::parse("x.yaml", yaml)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_name_the_problem() {
        let site = |pipeline: &str, id: &str| {
            format!(
                "---\napiVersion: tally.dev/v1alpha1\nkind: AnalyticsSite\nmetadata: {{name: {id}}}\nspec: {{pipelineRef: {{name: {pipeline}}}, siteId: {id}}}\n"
            )
        };
        let header =
            "apiVersion: tally.dev/v1alpha1\nkind: AnalyticsPipeline\nmetadata: {name: web}\n";
        let pipeline = format!("{header}spec: {{}}\n");
        assert!(error_of(&site("web", "a")).contains("no AnalyticsPipeline"));
        assert!(
            error_of(&format!("{pipeline}{}", site("other", "a")))
                .contains("pipelineRef.name is \"other\"")
        );
        assert!(
            error_of(&format!(
                "{pipeline}{}{}",
                site("web", "a"),
                site("web", "a")
            ))
            .contains("declared by another site")
        );
        assert!(error_of(&format!("{pipeline}{}", site("web", "Bad!"))).contains("siteId"));
        assert!(error_of(&format!("{pipeline}---\n{pipeline}")).contains("both declare"));
        assert!(
            error_of("apiVersion: v1\nkind: ConfigMap\n")
                .contains("apiVersion must be tally.dev/v1alpha1")
        );
        for field in [
            "maxConnections: 0",
            "headerReadTimeout: 0s",
            "requestTimeout: 0s",
        ] {
            let name = field.split(':').next().unwrap();
            assert!(
                error_of(&format!("{header}spec: {{collector: {{{field}}}}}\n"))
                    .contains(&format!("spec.collector.{name} must be more than 0")),
                "{field}"
            );
        }
        assert!(
            error_of(&format!("{header}spec: {{processor: {{ackWait: soon}}}}\n"))
                .contains("spec.processor.ackWait")
        );
        assert!(
            error_of(&format!(
                "{header}spec: {{collector: {{trustedProxies: [10.0.0.0/8, 10.0.0.0/33]}}}}\n"
            ))
            .contains("spec.collector.trustedProxies: \"10.0.0.0/33\" is neither")
        );
        assert!(
            error_of(&format!(
                "{header}spec: {{processor: {{batchMaxRows: many}}}}\n"
            ))
            .contains("invalid AnalyticsPipeline")
        );
    }

    #[test]
    fn unknown_fields_are_refused_with_file_document_and_path() {
        let misspelled = EXAMPLE.replace("batchMaxWait: 200ms", "batchMaxRow: 500");
        assert_eq!(
            error_of(&misspelled),
            "x.yaml (document 1): invalid AnalyticsPipeline \"web\": unknown field spec.processor.batchMaxRow"
        );
        let cases = [
            ("name: web\nspec:", "name: web\nspecs: {}\nspec:", "specs"),
            ("name: web", "name: web\n  lables: {}", "metadata.lables"),
            (
                "batchMaxWait: 200ms",
                "resources: {limit: {cpu: 1}}",
                "spec.processor.resources.limit",
            ),
            (
                "batchMaxWait: 200ms",
                "batchMaxWait: 200ms\n    replica: 2\n    ackwait: 1s",
                "unknown fields spec.processor.replica, spec.processor.ackwait",
            ),
        ];
        for (from, to, field) in cases {
            let message = error_of(&EXAMPLE.replace(from, to));
            assert!(
                message.starts_with(
                    "x.yaml (document 1): invalid AnalyticsPipeline \"web\": unknown field"
                ) && message.contains(field),
                "{message}"
            );
        }
        // A misspelled required field is named, not only the missing one.
        let site = EXAMPLE.replace("siteId: shop", "siteID: shop");
        assert_eq!(
            error_of(&site),
            "x.yaml (document 2): invalid AnalyticsSite \"shop\": unknown field spec.siteID"
        );
        let status = EXAMPLE.replace(
            "spec:\n  processor",
            "status: {conditions: [{type: Ready, statu: \"True\"}]}\nspec:\n  processor",
        );
        assert!(
            error_of(&status).contains("unknown field status.conditions[0].statu"),
            "{}",
            error_of(&status)
        );
    }

    #[test]
    fn a_directory_names_the_file_at_fault() {
        let dir = std::env::temp_dir().join(format!("tally-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (pipeline, sites) = EXAMPLE.split_once("---").unwrap();
        std::fs::write(dir.join("a-pipeline.yaml"), pipeline).unwrap();
        std::fs::write(
            dir.join("b-sites.yml"),
            format!(
                "---{sites}{}",
                sites.replace("shop", "blog").replace("domains", "domain")
            ),
        )
        .unwrap();
        let message = RuntimeConfig::load(&dir).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            message,
            format!(
                "{} (document 2): invalid AnalyticsSite \"blog\": unknown field spec.domain",
                dir.join("b-sites.yml").display()
            )
        );
    }

    const KEYED: &str = r#"
apiVersion: tally.dev/v1alpha1
kind: AnalyticsPipeline
metadata: {name: web}
spec:
  adminKeys:
    - secretRef: {name: keys, key: admin}
---
apiVersion: v1
kind: Secret
metadata: {name: keys}
data:
  admin: YWRtaW4ta2V5LTAxMjM0NTY3ODk=
stringData:
  shop: "  shop-ingest-0123456789\n"
---
apiVersion: tally.dev/v1alpha1
kind: AnalyticsSite
metadata: {name: shop}
spec:
  pipelineRef: {name: web}
  siteId: shop
  apiKeys:
    - secretRef: {name: keys, key: shop}
      scopes: [ingest, read]
      rateLimit: {eventsPerSecond: 5}
    - sha256: 0000000000000000000000000000000000000000000000000000000000000000
      scopes: [read]
"#;

    #[test]
    fn secret_documents_give_the_keys_and_only_digests_are_kept() {
        use crate::access::Holder;
        let config = RuntimeConfig::parse("keyed.yaml", KEYED).unwrap();
        let keys = config.keys();
        assert_eq!(keys.len(), 3);
        let shop = keys.find("shop-ingest-0123456789").unwrap();
        assert!(shop.may_ingest("shop") && shop.may_read("shop"));
        assert_eq!(shop.rate_limit.unwrap().events_per_second, 5);
        assert_eq!(
            keys.find("admin-key-0123456789").unwrap().holder,
            Holder::Admin
        );
        // The rendered text holds digests, no key and no Secret, and loads the same keys.
        let text = config.to_yaml();
        assert!(
            !text.contains("shop-ingest")
                && !text.contains("YWRtaW4")
                && !text.contains("secretRef")
        );
        let again = RuntimeConfig::parse("rendered", &text).unwrap();
        assert!(again.keys().find("shop-ingest-0123456789").is_some());
        assert_eq!(again.keys().len(), 3);
    }

    #[test]
    fn key_problems_name_the_site_and_field() {
        let missing = KEYED.replace("key: shop}", "key: blog}");
        assert_eq!(
            error_of(&missing),
            "x.yaml (document 3): spec.apiKeys[0]: Secret \"keys\" with key \"blog\" does not exist"
        );
        let short = KEYED.replace("shop-ingest-0123456789", "short");
        assert!(error_of(&short).contains("shorter than 16 characters"));
        let shared = KEYED.replace("key: shop}", "key: admin}");
        assert_eq!(
            error_of(&shared),
            "x.yaml (document 3): spec.apiKeys[0]: the same key is given to the pipeline's adminKeys too"
        );
        let nameless = KEYED.replace("metadata: {name: keys}", "metadata: {}");
        assert!(error_of(&nameless).contains("a Secret needs metadata.name"));
    }

    #[test]
    fn the_examples_load() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let config = RuntimeConfig::load(&examples).unwrap();
        assert_eq!(config.name(), "web");
        assert!(config.site("shop").is_some() && config.site("docs").is_some());
        // The demo website's site takes the pages make dev serves on the loopback address.
        let demo = config.site("demo").unwrap();
        assert!(demo.allows_origin_host("127.0.0.1") && demo.allows_origin_host("localhost"));
        assert!(!demo.allows_origin_host("shop.example.com"));
    }
}
