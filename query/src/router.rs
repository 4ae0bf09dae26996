//! The query service's HTTP surface in one place: routes, CORS, the request-timing
//! middleware, and the health and metrics endpoints every service shares.

use axum::Router;
use axum::http::{HeaderName, Method, header};
use axum::routing::{get, post};
use tower_http::cors::{Any, CorsLayer};

use crate::state::AppState;
use crate::{experiments, pipeline, query, recent, sessions, sites, stats};

/// The routes of the query service over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/stats", get(stats::get_stats))
        .route("/v1/query", post(query::post_query))
        .route("/v1/events/recent", get(recent::get_recent))
        .route("/v1/experiments", get(experiments::get_experiments))
        .route(
            "/v1/experiments/{id}/summary",
            get(experiments::get_summary),
        )
        .route("/v1/sessions", get(sessions::get_sessions))
        .route("/v1/pipeline/health", get(pipeline::get_health))
        .route("/v1/pipeline/dead-letters", get(pipeline::get_dead_letters))
        .route(
            "/v1/pipeline/dead-letters/replay",
            post(pipeline::post_replay),
        )
        .route("/v1/sessions/{id}", get(sessions::get_session))
        .route("/v1/sites", get(sites::get_sites))
        .merge(crate::console::routes())
        .merge(
            utoipa_swagger_ui::SwaggerUi::new("/v1/docs")
                .url("/v1/openapi.json", crate::openapi::document()),
        )
        .merge(tally_runtime::health::routes(state.health.clone()))
        // Dashboards may read from any origin: every read needs a key, sent in a header
        // (never a cookie), so a page of another origin cannot read with a visitor's
        // credentials.
        .layer(
            CorsLayer::new()
                .allow_origin(Any)
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([
                    header::CONTENT_TYPE,
                    header::AUTHORIZATION,
                    HeaderName::from_static("x-api-key"),
                ]),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.requests.clone(),
            tally_runtime::http::time_requests,
        ))
        .with_state(state)
}

#[cfg(test)]
mod tests;
