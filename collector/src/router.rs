//! The collector's HTTP surface in one place: routes, body limits, CORS, the request-timing
//! middleware, and the health and metrics endpoints every service shares.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::cors::{Any, CorsLayer};

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

/// Middleware recording every request's duration by route and status.
async fn time_request(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let start = Instant::now();
    let response = next.run(request).await;
    metrics.observe_request(
        route,
        response.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
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
