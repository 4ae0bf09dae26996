//! `AnalyticsPipeline`: one ingestion pipeline — a JetStream stream, collectors that feed it
//! and processors that drain it into one ClickHouse database.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::access::{AdminKey, SecretKeyRef};
use crate::duration::DURATION_PATTERN;

/// Declares an analytics pipeline: where events are buffered (NATS JetStream), where they are
/// stored (ClickHouse), and how the collector and processor behave.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tally.dev",
    version = "v1alpha1",
    kind = "AnalyticsPipeline",
    namespaced,
    status = "AnalyticsPipelineStatus",
    shortname = "apipe",
    category = "tally",
    derive = "PartialEq",
    doc = "An analytics pipeline: a JetStream stream fed by collectors and drained by processors into a ClickHouse database.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Sites", type_ = "integer", json_path = ".status.sites"),
    printcolumn(name = "Backlog", type_ = "integer", json_path = ".status.backlog"),
    printcolumn(
        name = "Dead letters",
        type_ = "integer",
        json_path = ".status.deadLetters"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AnalyticsPipelineSpec {
    /// NATS JetStream: the connection and the stream that buffers this pipeline's events.
    #[serde(default)]
    pub nats: NatsSpec,
    /// ClickHouse: where raw events and rollups are stored.
    #[serde(default)]
    pub clickhouse: ClickHouseSpec,
    /// HTTP collector settings: request limits and publishing.
    #[serde(default)]
    pub collector: CollectorSpec,
    /// Processor settings: batching and redelivery.
    #[serde(default)]
    pub processor: ProcessorSpec,
    /// The read side (`tally-query`): stats from ClickHouse behind the sites' keys, in its
    /// own pods so that reads never share the collectors' CPU or connections.
    #[serde(default)]
    pub query: QuerySpec,
    /// Distributed tracing of the collector, processor and query pods: OpenTelemetry spans
    /// exported over OTLP. Off unless `otlpEndpoint` is set.
    #[serde(default)]
    pub tracing: TracingSpec,
    /// Admin read keys: each reads the figures of every site of this pipeline and writes
    /// none (for the platform team and its dashboards). Given like a site's keys: a
    /// Secret's key, or the key's SHA-256 digest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub admin_keys: Vec<AdminKey>,
}

/// Query service (read side) settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuerySpec {
    /// Query pods in a cluster (the operator's Deployment `<pipeline>-query`).
    #[serde(default = "default_query_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Container image of the query service; defaults to the image the operator was
    /// installed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPU and memory requests and limits of each query container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The Service `<pipeline>-query` in front of the query pods.
    #[serde(default)]
    pub service: ServiceSpec,
}

/// Where the pods send their traces. The operator sets the standard OpenTelemetry
/// variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`,
/// `OTEL_TRACES_SAMPLER_ARG`) on the collector, processor and query containers from it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TracingSpec {
    /// OTLP endpoint of a trace collector, e.g. `http://otel-collector.observability:4318`
    /// (OTLP over HTTP). Unset: no spans are exported and tracing costs nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s/?#]+(/[^\s?#]*)?$"))]
    pub otlp_endpoint: Option<String>,
    /// Which traces are kept, as `OTEL_TRACES_SAMPLER`: `parentbased_traceidratio` (the
    /// default with `samplerRatio`), `traceidratio`, `parentbased_always_on`, `always_on`,
    /// `always_off`. Unset: every trace (`parentbased_always_on`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^(always_on|always_off|traceidratio|parentbased_always_on|parentbased_always_off|parentbased_traceidratio)$"
    ))]
    pub sampler: Option<String>,
    /// The fraction of traces kept by a ratio sampler, 0 to 1, as `OTEL_TRACES_SAMPLER_ARG`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sampler_ratio: Option<f64>,
}

/// How to reach NATS and how to shape the pipeline's stream.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NatsSpec {
    /// NATS server URL, e.g. `nats://nats.tally.svc:4222`. Several servers may be given
    /// separated by commas.
    #[serde(default = "default_nats_url")]
    #[schemars(length(min = 1))]
    pub url: String,
    /// The JetStream stream that holds this pipeline's events.
    #[serde(default)]
    pub stream: StreamSpec,
    /// How the collector, processor and operator log in to NATS. Unset: no credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<NatsAuth>,
    /// TLS to NATS: the CA bundle that signs the servers' certificates and, for servers that
    /// ask for one, a client certificate. Unset: TLS only when the URL says `tls://`,
    /// checked against the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

/// A NATS login: a user and password, a token, a credentials file (JWT and NKey seed) or an
/// NKey seed, each from a key of a Secret (same namespace). The operator mounts these
/// Secrets into the pods; the ConfigMap names them only. Without a cluster, `v1` `Secret`
/// documents in the configuration files (or files under `--secrets-dir`) hold them.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.passwordSecretRef), has(self.tokenSecretRef), has(self.credentialsSecretRef), has(self.nkeySecretRef)].filter(x, x).size() == 1").message("give exactly one of passwordSecretRef (with user), tokenSecretRef, credentialsSecretRef and nkeySecretRef"))]
#[x_kube(validation = Rule::new("has(self.passwordSecretRef) == has(self.user)").message("user and passwordSecretRef go together"))]
pub struct NatsAuth {
    /// The user name, with `passwordSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The user's password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// A token (`authorization { token }` of the server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
    /// A `.creds` file: a user JWT and its NKey seed (decentralized auth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretKeyRef>,
    /// An NKey seed (`SU...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nkey_secret_ref: Option<SecretKeyRef>,
}

impl TlsSpec {
    fn refs(&self) -> impl Iterator<Item = &SecretKeyRef> {
        [
            &self.ca_secret_ref,
            &self.cert_secret_ref,
            &self.key_secret_ref,
        ]
        .into_iter()
        .flatten()
    }
}

impl AnalyticsPipelineSpec {
    /// The Secret keys of the NATS login and TLS (what the collector and processor read).
    pub fn nats_credential_refs(&self) -> Vec<&SecretKeyRef> {
        let login = self.nats.auth.iter().flat_map(|a| {
            [
                &a.password_secret_ref,
                &a.token_secret_ref,
                &a.credentials_secret_ref,
                &a.nkey_secret_ref,
            ]
            .into_iter()
            .flatten()
        });
        login
            .chain(self.nats.tls.iter().flat_map(TlsSpec::refs))
            .collect()
    }

    /// The Secret keys of the ClickHouse password and TLS (what the processor and the
    /// query service read).
    pub fn clickhouse_credential_refs(&self) -> Vec<&SecretKeyRef> {
        self.clickhouse
            .password_secret_ref
            .iter()
            .chain(self.clickhouse.tls.iter().flat_map(TlsSpec::refs))
            .collect()
    }

    /// Every Secret key of the servers' credentials.
    pub fn credential_refs(&self) -> Vec<&SecretKeyRef> {
        let mut refs = self.nats_credential_refs();
        refs.extend(self.clickhouse_credential_refs());
        refs
    }
}

/// TLS material from keys of Secrets (same namespace), PEM-encoded.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.certSecretRef) == has(self.keySecretRef)").message("certSecretRef and keySecretRef go together"))]
pub struct TlsSpec {
    /// The CA bundle the server's certificate is checked against (instead of the system's
    /// roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// A client certificate, for servers that verify clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret_ref: Option<SecretKeyRef>,
    /// The client certificate's private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret_ref: Option<SecretKeyRef>,
}

/// Settings of the pipeline's JetStream stream (`TALLY_<PIPELINE>`, subjects
/// `tally.<pipeline>.events.<siteId>`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamSpec {
    /// Number of stream replicas in a JetStream cluster (1, 3 or 5 are sensible).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 5))]
    pub replicas: u8,
    /// Where JetStream keeps messages: `File` (survives restarts) or `Memory`.
    #[serde(default)]
    pub storage: StreamStorage,
    /// How long events stay in the stream after they were published, e.g. `7d`. Processed
    /// events are kept until then so that a pipeline can be replayed.
    #[serde(default = "default_max_age")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub max_age: String,
    /// Window within which a re-published `event_id` is dropped as a duplicate, e.g. `2m`.
    /// Clients that retry a POST within this window never store an event twice.
    #[serde(default = "default_duplicate_window")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub duplicate_window: String,
    /// What the operator does with the stream when the pipeline is deleted: `Retain` keeps
    /// it with any events not yet processed; `Delete` removes it, with the dead-letter
    /// stream and the key-value bucket of the visitor-id salts.
    #[serde(default)]
    pub deletion_policy: StreamDeletionPolicy,
}

/// The fate of a pipeline's stream when the pipeline is deleted.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum StreamDeletionPolicy {
    /// Keep the stream and its events.
    #[default]
    Retain,
    /// Delete the stream and its events, the dead letters and the salt bucket.
    Delete,
}

/// JetStream storage backend.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum StreamStorage {
    /// Messages are written to disk.
    #[default]
    File,
    /// Messages are kept in memory only.
    Memory,
}

/// How to reach ClickHouse and how long to keep data.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClickHouseSpec {
    /// ClickHouse HTTP interface URL, e.g. `http://clickhouse.tally.svc:8123`.
    #[serde(default = "default_clickhouse_url")]
    #[schemars(length(min = 1))]
    pub url: String,
    /// Database that holds the pipeline's tables. Defaults to `tally_<pipeline name>` with
    /// every character other than letters, digits and `_` replaced by `_`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"))]
    pub database: Option<String>,
    /// Days to keep raw events; older rows are removed by a ClickHouse TTL. Unset keeps
    /// them forever. Rollups are kept regardless.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub retention_days: Option<u32>,
    /// The ClickHouse user the processor and query service log in as. Unset: `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub user: Option<String>,
    /// The user's password, from a key of a Secret (same namespace); mounted into the pods,
    /// never put into the ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// TLS to ClickHouse (an `https://` URL): a CA bundle instead of the system's roots,
    /// and a client certificate for servers that verify clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

/// Collector (HTTP ingestion) settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CollectorSpec {
    /// Collector pods in a cluster (the operator's Deployment).
    #[serde(default = "default_collector_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Container image of the collector; defaults to the image the operator was installed
    /// with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPU and memory requests and limits of each collector container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The Service in front of the collector pods.
    #[serde(default)]
    pub service: ServiceSpec,
    /// Addresses (CIDR blocks such as `10.0.0.0/8`, or single addresses) of the proxies in
    /// front of the collectors (an Ingress controller, a load balancer). Only from these is
    /// the client's address taken from `X-Forwarded-For` or `Forwarded` (the nearest
    /// address that is not a trusted proxy), and `X-Forwarded-Proto` believed; from any
    /// other peer those headers are ignored. The address is used for `hash` visitor ids and
    /// is never stored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 43)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c) || isIP(c))").message("each trustedProxies entry must be an IP address or a CIDR block such as 10.0.0.0/8"))]
    pub trusted_proxies: Vec<String>,
    /// The address browsers and back-ends reach the collector at from outside the cluster
    /// (an Ingress, a load balancer), such as `https://collect.example.com`. The sites'
    /// `status.ingestUrl` and `status.snippet` use it; without it they name the in-cluster
    /// Service, which only pods of the cluster can reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s/?#]+(/[^\s?#]*)?$"))]
    pub public_url: Option<String>,
    /// Largest accepted request body in bytes, after gzip decompression. Larger bodies are
    /// answered with 413.
    #[serde(default = "default_max_body_bytes")]
    #[schemars(range(min = 1024))]
    pub max_body_bytes: u32,
    /// Most events accepted in one batch request. Larger batches are answered with 413.
    #[serde(default = "default_max_batch_events")]
    #[schemars(range(min = 1))]
    pub max_batch_events: u32,
    /// Largest `properties` object of one event, in bytes of JSON.
    #[serde(default = "default_max_properties_bytes")]
    #[schemars(range(min = 2))]
    pub max_properties_bytes: u32,
    /// Most JetStream publishes awaiting their acknowledgement at once, per collector. When
    /// reached, new publishes wait for acknowledgements (back-pressure).
    #[serde(default = "default_max_in_flight")]
    #[schemars(range(min = 1))]
    pub max_in_flight_publishes: u32,
    /// Load shedding: the most events that requests in progress may hold at once, per
    /// collector (being validated, published or awaiting JetStream's acknowledgement). A
    /// POST whose events do not fit is answered at once with 503 `overloaded` and
    /// `Retry-After: 1`, so an overload costs bounded memory instead of growing queues. The
    /// default is four times the default `maxInFlightPublishes`; 0 disables the limit. The
    /// collector's `--max-in-flight-events` flag overrides it.
    #[serde(default = "default_max_in_flight_events")]
    pub max_in_flight_events: u32,
    /// How long a publish may wait for JetStream's acknowledgement before the request is
    /// answered with 503.
    #[serde(default = "default_publish_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub publish_timeout: String,
    /// How long a client may take to send a request's headers, counted from the
    /// connection's start or from the end of its last answer: a connection that is idle,
    /// or sends its headers a byte at a time, is closed after it.
    #[serde(default = "default_header_read_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub header_read_timeout: String,
    /// How long one request may take from its headers to its answer, reading the body
    /// included: a body still arriving then is answered with 408 and its connection closed.
    #[serde(default = "default_request_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub request_timeout: String,
    /// Open connections per collector at most; one more is closed as soon as it is
    /// accepted (and counted in `tally_collector_connections_refused_total`).
    #[serde(default = "default_max_connections")]
    #[schemars(range(min = 1))]
    pub max_connections: u32,
}

/// A Kubernetes Service in front of a component's pods (the collector's, the query
/// service's).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type: `ClusterIP`, `NodePort` or `LoadBalancer`.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Port the Service listens on.
    #[serde(default = "default_service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// How a Service is exposed.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    #[default]
    ClusterIP,
    /// Also on a port of every node.
    NodePort,
    /// Through the cloud's load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The name Kubernetes uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Processor (JetStream → ClickHouse) settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProcessorSpec {
    /// Processor pods in a cluster; they share one durable consumer.
    #[serde(default = "default_processor_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Container image of the processor; defaults to the image the operator was installed
    /// with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPU and memory requests and limits of each processor container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Most events written to ClickHouse in one insert.
    #[serde(default = "default_batch_max_rows")]
    #[schemars(range(min = 1))]
    pub batch_max_rows: u32,
    /// Longest time a batch waits to fill up before it is written anyway, e.g. `1s`.
    #[serde(default = "default_batch_max_wait")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub batch_max_wait: String,
    /// How long JetStream waits for a processor's acknowledgement before it redelivers a
    /// message. Processors extend it while they retry a failing insert.
    #[serde(default = "default_ack_wait")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub ack_wait: String,
    /// Deliveries of a message that cannot be stored (not an event envelope, an event no
    /// table can hold, or an event ClickHouse refuses) before the processor gives up on it.
    /// Until then it is handed back to JetStream for a later delivery; on this delivery the
    /// processor publishes it, with headers giving the reason, to the pipeline's dead-letter
    /// stream `TALLY_<PIPELINE>_DLQ` (subject `tally.<pipeline>.dlq.<siteId>`) and
    /// acknowledges it once that stream has stored it. JetStream itself redelivers without
    /// limit. Failures that are not the message's own (ClickHouse unreachable, timing out or
    /// overloaded) are retried without end and never dead-letter a message.
    #[serde(default = "default_max_deliver")]
    #[schemars(range(min = 1))]
    pub max_deliver: u32,
}

/// Observed state of an `AnalyticsPipeline`, written by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalyticsPipelineStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions: `StreamReady`, `CollectorAvailable`, `ProcessorAvailable`,
    /// `QueryAvailable` and `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Number of `AnalyticsSite`s accepted into this pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sites: Option<i32>,
    /// URL of the collector inside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Events in the stream not yet stored: waiting for a processor or being written (as
    /// of the last reconcile, at most a minute ago while the pipeline is ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog: Option<u64>,
    /// Messages the processors gave up on, in the dead-letter stream
    /// (`GET /v1/pipeline/dead-letters` lists them and replays them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letters: Option<u64>,
}

fn default_collector_replicas() -> i32 {
    2
}
fn default_processor_replicas() -> i32 {
    1
}
fn default_query_replicas() -> i32 {
    1
}
fn default_service_port() -> i32 {
    80
}
fn default_nats_url() -> String {
    "nats://127.0.0.1:4222".into()
}
fn default_replicas() -> u8 {
    1
}
fn default_max_age() -> String {
    "7d".into()
}
fn default_duplicate_window() -> String {
    "2m".into()
}
fn default_clickhouse_url() -> String {
    "http://127.0.0.1:8123".into()
}
fn default_max_body_bytes() -> u32 {
    1024 * 1024
}
fn default_max_batch_events() -> u32 {
    1000
}
fn default_max_properties_bytes() -> u32 {
    8 * 1024
}
fn default_max_in_flight() -> u32 {
    8192
}
fn default_max_in_flight_events() -> u32 {
    4 * default_max_in_flight()
}
fn default_publish_timeout() -> String {
    "5s".into()
}
fn default_header_read_timeout() -> String {
    "10s".into()
}
fn default_request_timeout() -> String {
    "30s".into()
}
fn default_max_connections() -> u32 {
    10_000
}
fn default_batch_max_rows() -> u32 {
    10_000
}
fn default_batch_max_wait() -> String {
    "1s".into()
}
fn default_ack_wait() -> String {
    "30s".into()
}
fn default_max_deliver() -> u32 {
    10
}

/// `Default` gives the same values as an empty YAML object, so a spec that leaves a section
/// out behaves exactly like one that spells out every default.
macro_rules! default_from_empty_object {
    ($($ty:ty),*) => {$(
        impl Default for $ty {
            fn default() -> Self {
                serde_json::from_value(serde_json::json!({}))
                    .expect("every field of this section has a default")
            }
        }
    )*};
}
default_from_empty_object!(
    NatsSpec,
    StreamSpec,
    ClickHouseSpec,
    CollectorSpec,
    ServiceSpec,
    ProcessorSpec,
    QuerySpec
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_spec_takes_every_default() {
        let spec: AnalyticsPipelineSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec.nats.stream.max_age, "7d");
        assert_eq!(spec.nats.stream.storage, StreamStorage::File);
        assert_eq!(spec.processor.batch_max_rows, 10_000);
        assert_eq!(spec.collector.max_body_bytes, 1024 * 1024);
        assert_eq!(spec.clickhouse.database, None);
    }

    #[test]
    fn default_durations_parse() {
        let spec: AnalyticsPipelineSpec = serde_json::from_str("{}").unwrap();
        for d in [
            &spec.nats.stream.max_age,
            &spec.nats.stream.duplicate_window,
            &spec.collector.publish_timeout,
            &spec.collector.header_read_timeout,
            &spec.collector.request_timeout,
            &spec.processor.batch_max_wait,
            &spec.processor.ack_wait,
        ] {
            crate::parse_duration(d).unwrap();
        }
    }
}
