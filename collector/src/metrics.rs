//! Prometheus metrics of the collector, served on `/metrics`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::router::AppState;
use crate::validate::Rejection;

/// What became of an event.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Outcome {
    Accepted,
    Duplicate,
    Invalid,
    UnknownSite,
    ForbiddenOrigin,
    Failed,
}

impl From<&Rejection> for Outcome {
    fn from(rejection: &Rejection) -> Self {
        match rejection {
            Rejection::Invalid(_) => Self::Invalid,
            Rejection::UnknownSite(_) => Self::UnknownSite,
            Rejection::ForbiddenOrigin { .. } => Self::ForbiddenOrigin,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: u16,
}

/// The collector's metrics and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    events: Family<OutcomeLabels, Counter>,
    requests: Family<RequestLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tally_collector");
        let events = Family::<OutcomeLabels, Counter>::default();
        registry.register("events", "Events received, by outcome", events.clone());
        let requests = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 14))
        });
        registry.register(
            "request_duration_seconds",
            "HTTP request durations, by route and status",
            requests.clone(),
        );
        Self {
            registry,
            events,
            requests,
        }
    }
}

impl Metrics {
    pub fn count(&self, outcome: Outcome, n: u64) {
        self.events
            .get_or_create(&OutcomeLabels { outcome })
            .inc_by(n);
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String never fails");
        out
    }
}

/// Middleware recording every request's duration by route and status.
pub async fn track(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let start = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            status: response.status().as_u16(),
        })
        .observe(start.elapsed().as_secs_f64());
    response
}
