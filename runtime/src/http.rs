//! What every Tally HTTP API records about its requests, written once: the
//! `request_duration_seconds{route,status}` histogram and the middleware that fills it. A
//! service registers the histogram in its own registry (so the metric carries the service's
//! prefix: `tally_collector_…`, `tally_query_…`) and layers [`time_requests`] over its routes.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: u16,
}

/// HTTP request durations by route (the router's pattern, `unmatched` for none) and status.
#[derive(Clone)]
pub struct RequestDurations(Family<RequestLabels, Histogram>);

impl RequestDurations {
    /// The histogram, registered in `registry` as `request_duration_seconds` (buckets from
    /// 0.5 ms doubling to about 4 s).
    pub fn register(registry: &mut Registry) -> Self {
        let family = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 14))
        });
        registry.register(
            "request_duration_seconds",
            "HTTP request durations, by route and status",
            family.clone(),
        );
        Self(family)
    }

    /// Records one request's duration under its route and status.
    pub fn observe(&self, route: String, status: u16, seconds: f64) {
        self.0
            .get_or_create(&RequestLabels { route, status })
            .observe(seconds);
    }
}

/// Middleware recording every request's duration by route and status; layer it with
/// `axum::middleware::from_fn_with_state(durations, time_requests)`.
pub async fn time_requests(
    State(durations): State<Arc<RequestDurations>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let start = Instant::now();
    let response = next.run(request).await;
    durations.observe(
        route,
        response.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    response
}
