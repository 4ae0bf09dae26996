//! The collector's HTTP surface in one place: routes, body limits, CORS, the request-timing
//! and tracing middleware, and the health and metrics endpoints every service shares.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::cors::{Any, CorsLayer};
use tracing::Instrument as _;

use crate::ingest;
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::stats;

/// The routes of the collector over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/events", post(ingest::post_events))
        .route("/v1/stats", get(stats::get_stats))
        .route("/tracker.js", get(tracker_js))
        .merge(tally_runtime::health::routes(state.health.clone()))
        // The ingest handler enforces its own, configured limit with a JSON answer.
        .layer(DefaultBodyLimit::disable())
        // Browsers post from the sites' own origins; the domains check decides what is
        // accepted, so the CORS answer may allow any origin.
        .layer(
            CorsLayer::new()
                .allow_origin(Any)
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([header::CONTENT_TYPE, header::CONTENT_ENCODING]),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            time_request,
        ))
        .with_state(state)
}

/// The routes that get no span: probes and scrapes, which would otherwise fill the traces.
const UNTRACED_ROUTES: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Middleware recording every request's duration by route and status, and running it in a
/// server span (`request`; with tracing off the span is disabled and costs nothing).
///
/// A `traceparent` the client sends is not followed: the collector faces browsers on the
/// internet, so each request starts a trace of its own (and no client can force sampling).
async fn time_request(
    State(metrics): State<Arc<Metrics>>,
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
    metrics.observe_request(route, status, start.elapsed().as_secs_f64());
    response
}

/// The browser tracker that site snippets load.
async fn tracker_js() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../assets/tracker.js"),
    )
}

#[cfg(test)]
mod tests;
