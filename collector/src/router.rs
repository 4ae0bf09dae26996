//! The collector's HTTP surface in one place: routes, body limits, CORS, the request-timing
//! middleware, and the health and metrics endpoints every service shares. Reads
//! (`/v1/stats`) are not here: they are the query service's (`tally-query`), so that no read
//! shares this process's CPU or connections with ingest.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Method, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::ingest;
use crate::state::AppState;

/// The routes of the collector over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/events", post(ingest::post_events))
        // Segment's Tracking API, for its SDKs (`host` = this collector + `/segment`).
        .route("/segment/v1/{call}", post(ingest::post_segment))
        .route("/tracker.js", get(tracker_js))
        .merge(tally_runtime::health::routes(state.health.clone()))
        // The ingest handler enforces its own, configured limit with a JSON answer.
        .layer(DefaultBodyLimit::disable())
        // Browsers post from the sites' own origins; the domains check decides what is
        // accepted, so the CORS answer allows the asking origin. With credentials, so that
        // the `tally_vid` cookie of cookie sites travels (no read is served here, so a
        // cookie reveals nothing to a page that sends it).
        .layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::mirror_request())
                .allow_credentials(true)
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([
                    header::CONTENT_TYPE,
                    header::CONTENT_ENCODING,
                    header::AUTHORIZATION,
                    HeaderName::from_static("x-api-key"),
                ])
                .expose_headers([
                    header::RETRY_AFTER,
                    HeaderName::from_static("ratelimit"),
                    HeaderName::from_static("ratelimit-policy"),
                ]),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.requests.clone(),
            tally_runtime::http::time_requests,
        ))
        .with_state(state)
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
