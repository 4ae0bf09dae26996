//! The access fields both resources share: API keys (a Secret's key, or the key's SHA-256
//! digest), what each key may do, and rate limits.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The form of a key's digest: 64 lower-case hex digits of SHA-256.
pub const SHA256_PATTERN: &str = r"^[0-9a-f]{64}$";

/// Fewest characters of an API key, so that its digest cannot be reversed by trying every
/// short key.
pub const MIN_KEY_CHARS: usize = 16;

/// Where an API key comes from: a key of a Secret, or the key's SHA-256 digest.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.secretRef) != has(self.sha256)").message("give exactly one of secretRef and sha256"))]
pub struct KeySource {
    /// A key of a Secret (same namespace) whose value is the API key. Leading and trailing
    /// white space of the value is ignored (a Secret made with `echo` ends in a newline);
    /// what remains must be at least 16 characters. The operator renders only the key's
    /// SHA-256 digest into the pipeline's ConfigMap, never the key. Without a cluster, a
    /// `v1` `Secret` document in the configuration files holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// The key's SHA-256 digest (64 lower-case hex digits), instead of `secretRef`: the key
    /// itself then exists only with its clients. `printf %s "$KEY" | sha256sum` computes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SHA256_PATTERN))]
    pub sha256: Option<String>,
}

/// One API key of a site, and what it may do.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKey {
    #[serde(flatten)]
    pub source: KeySource,
    /// What the key may do: `ingest` (post this site's events), `read` (read this site's
    /// figures), or both.
    #[schemars(length(min = 1, max = 2))]
    pub scopes: Vec<KeyScope>,
    /// A rate limit of the requests made with this key, on top of the site's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// One thing an API key may do.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum KeyScope {
    /// Post events for the key's site.
    Ingest,
    /// Read the key's site's figures.
    Read,
}

impl KeyScope {
    /// The scope as written in YAML and in error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Read => "read",
        }
    }
}

/// An admin read key of a pipeline: it reads every site of the pipeline and writes none.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminKey {
    #[serde(flatten)]
    pub source: KeySource,
}

/// Events per second, with a burst: a token bucket that holds `burst` events and refills at
/// `eventsPerSecond`. Each event of a request takes one.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Events per second, sustained. With several collector replicas each enforces its
    /// share (this divided by `spec.collector.replicas` of the pipeline, at least 1).
    #[schemars(range(min = 1))]
    pub events_per_second: u32,
    /// The most events taken at once above the sustained rate; defaults to one second's
    /// worth. A request of more events than the burst is refused with 413. Each collector
    /// replica has the whole burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub burst: Option<u32>,
}

impl RateLimit {
    /// The burst, or one second's worth of events when unset.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.events_per_second)
    }
}

/// A key of a Secret in the resource's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1))]
    pub key: String,
}
