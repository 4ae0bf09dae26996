//! The collector's shared state, and the part of it each handler is given (axum's
//! `FromRef`): a handler names the sub-state it needs and sees nothing else.

use std::sync::Arc;

use axum::extract::FromRef;
use tally_contracts::RuntimeConfig;
use tally_runtime::Health;

use crate::admission::Admission;
use crate::ingest::{IngestLimits, IngestState};
use crate::metrics::Metrics;
use crate::sink::EventSink;

/// Everything the routes share; each handler takes one field of it.
#[derive(Clone)]
pub struct AppState {
    pub ingest: Arc<IngestState>,
    /// What `/readyz` and `/metrics` answer.
    pub health: Arc<dyn Health>,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// The state of a collector storing into `sink`, with `spec.collector.maxInFlightEvents`
    /// as its load-shedding budget (0: none).
    pub fn new(config: RuntimeConfig, sink: Arc<dyn EventSink>) -> Self {
        let metrics = Arc::new(Metrics::default());
        Self {
            ingest: Arc::new(IngestState {
                limits: IngestLimits::of(&config),
                admission: Admission::new(config.pipeline.spec.collector.max_in_flight_events),
                sink: sink.clone(),
                metrics: metrics.clone(),
                config,
            }),
            health: Arc::new(CollectorHealth {
                sink,
                metrics: metrics.clone(),
            }),
            metrics,
        }
    }
}

/// Ready while the sink can store events; the metrics are the collector's registry.
struct CollectorHealth {
    sink: Arc<dyn EventSink>,
    metrics: Arc<Metrics>,
}

impl Health for CollectorHealth {
    fn ready(&self) -> Result<String, String> {
        self.sink.ready().map(|()| "ready".to_owned())
    }

    fn render_metrics(&self) -> String {
        self.metrics.render()
    }
}

impl FromRef<AppState> for Arc<IngestState> {
    fn from_ref(state: &AppState) -> Self {
        state.ingest.clone()
    }
}

impl FromRef<AppState> for Arc<Metrics> {
    fn from_ref(state: &AppState) -> Self {
        state.metrics.clone()
    }
}
