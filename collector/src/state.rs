//! The collector's shared state, and the part of it each handler is given (axum's
//! `FromRef`): a handler names the sub-state it needs and sees nothing else.

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::FromRef;
use tally_contracts::RuntimeConfig;
use tally_runtime::Health;

use crate::admission::Admission;
use crate::ingest::{IngestState, Rules};
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
    /// as its load-shedding budget (0: none), one of `collectors` sharing the rate limits.
    pub fn new(config: RuntimeConfig, sink: Arc<dyn EventSink>, collectors: u32) -> Self {
        let metrics = Arc::new(Metrics::default());
        Self {
            ingest: Arc::new(IngestState {
                admission: Admission::new(config.pipeline.spec.collector.max_in_flight_events),
                rules: ArcSwap::from_pointee(Rules::new(config, collectors)),
                collectors,
                salts: Arc::default(),
                sink: sink.clone(),
                metrics: metrics.clone(),
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
