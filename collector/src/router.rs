//! The collector's HTTP surface in one place: routes, shared state, health and metrics.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tally_contracts::RuntimeConfig;
use tower_http::cors::{Any, CorsLayer};

use crate::admission::{Admission, DEFAULT_MAX_IN_FLIGHT_EVENTS};
use crate::ingest::{self, IngestLimits};
use crate::metrics::{self, Metrics};
use crate::sink::EventSink;
use crate::stats;

/// What every handler can reach.
pub struct AppState {
    pub config: RuntimeConfig,
    pub sink: Arc<dyn EventSink>,
    pub clickhouse: clickhouse::Client,
    pub limits: IngestLimits,
    pub metrics: Metrics,
    /// Load shedding: the events requests in progress may hold.
    pub admission: Admission,
}

impl AppState {
    pub fn new(config: RuntimeConfig, sink: Arc<dyn EventSink>) -> Self {
        let clickhouse =
            clickhouse::Client::default().with_url(&config.pipeline.spec.clickhouse.url);
        Self {
            limits: IngestLimits::of(&config),
            clickhouse,
            sink,
            config,
            metrics: Metrics::default(),
            admission: Admission::new(DEFAULT_MAX_IN_FLIGHT_EVENTS),
        }
    }

    /// Sets the events budget (`--max-in-flight-events`; 0: no limit).
    pub fn with_max_in_flight_events(mut self, max: u32) -> Self {
        self.admission = Admission::new(max);
        self
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/events", post(ingest::post_events))
        .route("/v1/stats", get(stats::get_stats))
        .route("/tracker.js", get(tracker_js))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
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
            state.clone(),
            metrics::track,
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

async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    match state.sink.ready() {
        Ok(()) => (StatusCode::OK, "ready".to_owned()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn render_metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
