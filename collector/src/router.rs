//! The collector's HTTP surface in one place: routes, body limits, CORS, the request-timing
//! middleware, and the health and metrics endpoints every service shares. Reads
//! (`/v1/stats`) are not here: they are the query service's (`tally-query`), so that no read
//! shares this process's CPU or connections with ingest.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
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
        .route("/v1/pixel.gif", get(ingest::get_pixel))
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
pub const TRACKER: &str = include_str!("../assets/tracker.js");

/// The tracker, cacheable for a day and revalidated by its ETag (a digest of its text):
/// a browser that has it asks with `If-None-Match` and gets 304.
async fn tracker_js(headers: HeaderMap) -> Response {
    static ETAG: std::sync::LazyLock<HeaderValue> = std::sync::LazyLock::new(|| {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(TRACKER.as_bytes());
        let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is a valid header")
    });
    let cache = [
        (header::ETAG, ETAG.clone()),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=86400"),
        ),
    ];
    let known = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == ETAG.to_str().unwrap_or_default() || tag.trim() == "*");
    if known {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        cache,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/javascript; charset=utf-8"),
        )],
        TRACKER,
    )
        .into_response()
}

#[cfg(test)]
mod tests;
