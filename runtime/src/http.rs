//! What every Tally HTTP API records about its requests, written once: the
//! `request_duration_seconds{route,status}` histogram, a server span per request, and the
//! middleware that does both. A service registers the histogram in its own registry (so the
//! metric carries the service's prefix: `tally_collector_…`, `tally_query_…`) and layers
//! [`time_requests`] over its routes.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing::Instrument as _;

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

/// The routes that get no span: probes and scrapes, which would otherwise fill the traces.
const UNTRACED_ROUTES: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Middleware recording every request's duration by route and status, and running it in a
/// server span (`request`; with tracing off the span is disabled and costs nothing); layer
/// it with `axum::middleware::from_fn_with_state(durations, time_requests)`.
///
/// A `traceparent` the client sends is not followed: the APIs face browsers and other
/// clients on the internet, so each request starts a trace of its own (and no client can
/// force sampling).
pub async fn time_requests(
    State(durations): State<Arc<RequestDurations>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let span = if UNTRACED_ROUTES.contains(&route.as_str()) {
        tracing::Span::none()
    } else {
        let method = request.method();
        tracing::info_span!(
            parent: None,
            "request",
            otel.name = %format_args!("{method} {route}"),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            http.request.method = %method,
            http.route = %route,
            http.response.status_code = tracing::field::Empty,
        )
    };
    let start = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    durations.observe(route, status, start.elapsed().as_secs_f64());
    response
}
