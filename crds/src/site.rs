//! `AnalyticsSite`: one website or tenant whose events flow through a pipeline.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::access::{ApiKey, KeyScope, RateLimit};
use crate::goal::{Experiment, Goal};

/// The pattern every `siteId` matches: it becomes a NATS subject token and a ClickHouse value.
pub const SITE_ID_PATTERN: &str = r"^[a-z0-9][a-z0-9_-]{0,62}$";

/// Whether `s` matches [`SITE_ID_PATTERN`], checked without a regex engine. The crate's
/// tests hold it to the pattern of the generated CRD on a table of examples.
pub fn is_site_id(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// A DNS host name in lower case (RFC 1123), as `domains` takes them.
pub const HOSTNAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$";

/// An IANA time zone name (`UTC`, `Europe/Berlin`, `America/Argentina/Buenos_Aires`,
/// `Etc/GMT-3`), as `timeZone` takes them.
pub const TIME_ZONE_PATTERN: &str = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,2}$";

/// Declares a website or tenant that sends events into a pipeline.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tally.dev",
    version = "v1alpha1",
    kind = "AnalyticsSite",
    namespaced,
    status = "AnalyticsSiteStatus",
    shortname = "asite",
    category = "tally",
    derive = "PartialEq",
    doc = "A website or tenant whose events flow through an AnalyticsPipeline.",
    printcolumn(
        name = "Pipeline",
        type_ = "string",
        json_path = ".spec.pipelineRef.name"
    ),
    printcolumn(name = "Site ID", type_ = "string", json_path = ".spec.siteId"),
    printcolumn(
        name = "Ingest keys",
        type_ = "integer",
        json_path = ".status.keys.ingest"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.experiments) || self.experiments.all(x, has(self.goals) && self.goals.exists(g, g.name == x.goal))").message("each experiment's goal must name one of spec.goals"))]
pub struct AnalyticsSiteSpec {
    /// The `AnalyticsPipeline` (same namespace) this site's events flow through.
    pub pipeline_ref: PipelineRef,
    /// The identifier events carry in `site_id`: lower-case letters, digits, `-` and `_`,
    /// starting with a letter or digit, at most 63 characters. It cannot be changed: stored
    /// events keep it.
    #[schemars(regex(pattern = SITE_ID_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("siteId is immutable; create a new AnalyticsSite instead"))]
    pub site_id: String,
    /// Host names allowed to send browser events for this site. A request carrying an
    /// `Origin` header is accepted only when the origin's host is one of these or a
    /// sub-domain of one. Empty allows every origin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(regex(pattern = HOSTNAME_PATTERN)))]
    pub domains: Vec<String>,
    /// The site's API keys, each with its scopes. A request carries one as `Authorization:
    /// Bearer <key>` or `X-API-Key: <key>`. While a site has an `ingest` key, every
    /// server-side request for it (one without an `Origin` header) must carry an ingest key
    /// of this site; a key's requests may leave `site_id` out of their events. Several keys
    /// at once let a key be rotated: add the new one, move the clients, remove the old.
    /// In a cluster, while a referenced Secret or key is missing (or a key is shorter than
    /// 16 characters), the site is kept out of its pipeline and `Accepted` is false.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub api_keys: Vec<ApiKey>,
    /// Whether browsers (requests with an `Origin` header) may post events without a key.
    /// When false, every request for this site needs one of its ingest keys.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub browser_ingest: bool,
    /// The most events per second the collectors take for this site; over it, requests are
    /// answered 429 `rate_limited` with `Retry-After`. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// What the collector does to respect this site's visitors' privacy.
    #[serde(default)]
    pub privacy: PrivacySpec,
    /// Requests without an API key whose `User-Agent` is a known bot or crawler (the list
    /// of the `isbot` project, which counts HTTP libraries such as curl too): `drop` (the
    /// default) or `flag`. Requests with an ingest key come from the site's own back-end and
    /// are not checked. Counted by site in `tally_collector_bot_events_total`.
    #[serde(default)]
    pub bots: BotPolicy,
    /// The site's time zone, an IANA name such as `Europe/Berlin` (default `UTC`): the days,
    /// weeks and months of the query API (`POST /v1/query`), its `day`, `7d`, `month`, …
    /// ranges and its `time:*` buckets are this zone's. A name ClickHouse does not know is
    /// answered 400 by the query API, naming it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = TIME_ZONE_PATTERN))]
    pub time_zone: Option<String>,
    /// The conversions the site counts. The query API's `event:goal` dimension and filters
    /// name them, and its `conversion_rate` is the share of visitors who completed one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub goals: Vec<Goal>,
    /// A/B experiments: `GET /v1/experiments` lists them and
    /// `GET /v1/experiments/{id}/summary` compares their variants by their goal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["id".into()]))]
    pub experiments: Vec<Experiment>,
}

/// A site's privacy settings.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrivacySpec {
    /// When true, the events of a request that carries `DNT: 1` or `Sec-GPC: 1` (the
    /// visitor asked not to be tracked) are answered 202 but not stored: each says
    /// `"stored": false` and `"reason": "do_not_track"` in the answer.
    #[serde(default)]
    pub respect_do_not_track: bool,
    /// Where the `visitor_id` of this site's events comes from: `client` (what the client
    /// sends), `cookie` (a `tally_vid` cookie the collector sets) or `hash` (a daily-salted
    /// hash of the client's address and user agent, without cookies). In `cookie` and
    /// `hash` modes the collector sets the id, and a client's own is replaced.
    #[serde(default)]
    pub visitor_id: VisitorIdMode,
}

/// Where a site's visitor ids come from.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum VisitorIdMode {
    /// The `visitor_id` the client sends (the tracker's), stored as sent.
    #[default]
    Client,
    /// The collector sets a `tally_vid` cookie (one year) when the request has none and
    /// reads it when it has one; the stored id is derived from the cookie and the site, so
    /// one browser has a different id on each site. The 202 answer carries it.
    Cookie,
    /// No cookie: the id is a keyed hash of a daily salt, the site, the client's address
    /// and its user agent. The salt is shared by every collector, rotates at midnight UTC,
    /// and the old one is destroyed, so yesterday's ids cannot be recomputed; the address
    /// itself is never stored.
    Hash,
}

/// What the collector does with requests whose user agent is a known bot or crawler.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum BotPolicy {
    /// Answered 202 but not stored (`"stored": false`, `"reason": "bot"`).
    #[default]
    Drop,
    /// Stored with `is_bot` true in the `events` table (the rollups count them too).
    Flag,
}

fn yes() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

/// A reference to an `AnalyticsPipeline` in the same namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct PipelineRef {
    /// Name of the `AnalyticsPipeline`.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// Observed state of an `AnalyticsSite`, written by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalyticsSiteStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions: `Accepted` and `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// URL that accepts this site's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest_url: Option<String>,
    /// The `<script>` tag that sends this site's page views from a browser.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snippet: Option<String>,
    /// How many of the site's keys are in force, by scope (a key with both scopes counts
    /// in each). Zero while the site is not accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<KeyCounts>,
}

/// The number of a site's API keys in force, by scope.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyCounts {
    /// Keys that may post events.
    pub ingest: u32,
    /// Keys that may read the site's figures.
    pub read: u32,
}

impl KeyCounts {
    /// The counts of `keys`.
    pub fn of(keys: &[ApiKey]) -> Self {
        let count = |scope| keys.iter().filter(|k| k.scopes.contains(&scope)).count() as u32;
        Self {
            ingest: count(KeyScope::Ingest),
            read: count(KeyScope::Read),
        }
    }
}

impl AnalyticsSiteSpec {
    /// Whether some key of the site may ingest: then server-side requests need one.
    pub fn has_key_with(&self, scope: KeyScope) -> bool {
        self.api_keys.iter().any(|k| k.scopes.contains(&scope))
    }

    /// Whether a browser request from `origin_host` may send events for this site.
    pub fn allows_origin_host(&self, origin_host: &str) -> bool {
        self.domains.is_empty()
            || self.domains.iter().any(|domain| {
                origin_host.eq_ignore_ascii_case(domain)
                    || origin_host
                        .len()
                        .checked_sub(domain.len() + 1)
                        .is_some_and(|cut| {
                            origin_host.as_bytes()[cut] == b'.'
                                && origin_host[cut + 1..].eq_ignore_ascii_case(domain)
                        })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(domains: &[&str]) -> AnalyticsSiteSpec {
        AnalyticsSiteSpec {
            pipeline_ref: PipelineRef { name: "p".into() },
            site_id: "s".into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            api_keys: Vec::new(),
            browser_ingest: true,
            rate_limit: None,
            privacy: PrivacySpec::default(),
            bots: BotPolicy::default(),
            time_zone: None,
            goals: Vec::new(),
            experiments: Vec::new(),
        }
    }

    #[test]
    fn origin_matches_domain_and_subdomains_only() {
        let s = site(&["example.com"]);
        assert!(s.allows_origin_host("example.com"));
        assert!(s.allows_origin_host("www.Example.com"));
        assert!(!s.allows_origin_host("badexample.com"));
        assert!(!s.allows_origin_host("example.com.evil.net"));
        assert!(site(&[]).allows_origin_host("anything.net"));
    }
}
