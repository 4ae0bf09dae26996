//! The query service's shared state, and the part of it each handler is given (axum's
//! `FromRef`): a handler names the sub-state it needs and sees nothing else.

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::FromRef;
use tally_contracts::RuntimeConfig;
use tally_runtime::Health;

use crate::health::{QueryHealth, Readiness};
use crate::metrics::Metrics;
use crate::stats::StatsState;
use crate::store::Store;

/// Everything the routes share; each handler takes one field of it.
#[derive(Clone)]
pub struct AppState {
    pub stats: Arc<StatsState>,
    /// The verdict `/readyz` answers with; the watch in `health.rs` keeps it.
    pub readiness: Arc<Readiness>,
    /// What `/readyz` and `/metrics` answer.
    pub health: Arc<dyn Health>,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// The state of a query service reading the pipeline's database at its
    /// `spec.clickhouse.url`; not ready until a check says so.
    pub fn new(config: RuntimeConfig) -> Self {
        let metrics = Arc::new(Metrics::default());
        let readiness = Arc::new(Readiness::default());
        let store = Arc::new(Store::new(&config, metrics.clone()));
        Self {
            stats: Arc::new(StatsState {
                config: ArcSwap::from_pointee(config),
                store,
                nats: Default::default(),
            }),
            health: Arc::new(QueryHealth {
                readiness: readiness.clone(),
                metrics: metrics.clone(),
            }),
            readiness,
            metrics,
        }
    }
}

impl FromRef<AppState> for Arc<StatsState> {
    fn from_ref(state: &AppState) -> Self {
        state.stats.clone()
    }
}
