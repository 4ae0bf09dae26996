//! Prometheus metrics of the query service, served on `/metrics`: the registry and what it
//! records. Request durations are tally-runtime's (`tally_runtime::http`), registered here;
//! the routes layer its middleware (`router.rs`). ClickHouse queries are timed by the read
//! client (`store.rs`).

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tally_runtime::http::RequestDurations;
use tally_runtime::server::ConnectionMetrics;

/// Which query of the stats API ran.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ReadQuery {
    Totals,
    TopPaths,
    /// A `POST /v1/query` statement over the raw events.
    Query,
    /// A `POST /v1/query` statement over a rollup.
    QueryRollup,
    /// `GET /v1/events/recent`.
    Recent,
    /// `GET /v1/experiments/{id}/summary`.
    Experiment,
    /// `GET /v1/sessions` and `/v1/sessions/{id}`.
    Sessions,
    /// `GET /v1/pipeline/health`.
    Health,
}

/// Whether ClickHouse answered it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
enum ReadOutcome {
    Answered,
    Failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    query: ReadQuery,
    outcome: ReadOutcome,
}

/// The query service's metrics and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    /// `request_duration_seconds{route,status}`, filled by the routes' middleware.
    pub requests: Arc<RequestDurations>,
    /// `connections_open`, `connections_refused_total`, kept by the server.
    pub connections: ConnectionMetrics,
    clickhouse: Family<QueryLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tally_query");
        let requests = Arc::new(RequestDurations::register(&mut registry));
        let connections = ConnectionMetrics::register(&mut registry);
        let clickhouse = Family::<QueryLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 14))
        });
        registry.register(
            "clickhouse_query_duration_seconds",
            "ClickHouse queries of the stats API, by query and outcome",
            clickhouse.clone(),
        );
        Self {
            registry,
            requests,
            connections,
            clickhouse,
        }
    }
}

impl Metrics {
    /// Records one ClickHouse query's duration, and whether it was answered.
    pub fn observe_query(&self, query: ReadQuery, answered: bool, seconds: f64) {
        let outcome = if answered {
            ReadOutcome::Answered
        } else {
            ReadOutcome::Failed
        };
        self.clickhouse
            .get_or_create(&QueryLabels { query, outcome })
            .observe(seconds);
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String never fails");
        out
    }
}
