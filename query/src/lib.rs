//! `tally-query`: Tally's read side. It serves `GET /v1/stats` (one site's figures for one
//! UTC day) from the rollups the processor's materialized views keep in ClickHouse.
//!
//! Reads live here, not in the collector, so that a slow or heavy query never takes CPU,
//! memory or connections from ingest: the collector's only job is to take events fast. The
//! tenancy, query-API and dashboard work grows here too.
//!
//! The binary (`main.rs`) reads its command line and calls [`serve`]. The crate's layout
//! follows the collector's: shared state (`state.rs`), the routes (`router.rs`), the stats
//! handler (`stats.rs`), the errors and their answers (`api.rs`), the ClickHouse read client
//! (`store.rs`), readiness (`health.rs`) and the metrics (`metrics.rs`). The console, the
//! dashboard in the browser, is served from `console.rs` (its files are `console/`).

use std::net::SocketAddr;

use tally_contracts::RuntimeConfig;
use tally_runtime::{ServerLimits, shutdown_signal};

mod api;
mod console;
mod experiments;
mod health;
mod metrics;
mod openapi;
mod pipeline;
mod query;
mod recent;
mod router;
mod sessions;
mod sites;
mod state;
mod stats;
mod store;

/// The answer of `/v1/stats`, for clients written in Rust.
pub use stats::{PathViews, Stats};

/// Serves the query API with `/healthz`, `/readyz` and `/metrics` on `listen` until SIGINT
/// or SIGTERM; requests in progress are answered before it returns. ClickHouse is not needed
/// to start: `/readyz` says whether it answers and holds the pipeline's rollups. On SIGHUP
/// the sites and keys are reloaded with `reload` (ClickHouse settings stay as started).
pub async fn serve(
    config: RuntimeConfig,
    listen: SocketAddr,
    reload: impl Fn() -> Result<RuntimeConfig, tally_contracts::ConfigError> + Send + 'static,
) -> anyhow::Result<()> {
    let (pipeline, database) = (config.name().to_owned(), config.database());
    let clickhouse = config.pipeline.spec.clickhouse.url.clone();
    let state = state::AppState::new(config);
    let connections = state.metrics.connections.clone();
    let stats = state.stats.clone();
    tally_runtime::reload_on_hangup(reload, move |config| stats.config.store(config.into()));
    let listener = tally_runtime::health::bind(listen).await?;
    let watch = tokio::spawn(health::watch(
        state.stats.store.clone(),
        state.readiness.clone(),
    ));
    tracing::info!(%listen, %pipeline, %database, %clickhouse, "query service started");
    // The collector's defaults for slow and idle clients; the query service has no
    // settings of its own for them yet.
    tally_runtime::serve(
        listener,
        router::router(state),
        ServerLimits::default(),
        connections,
        shutdown_signal(),
    )
    .await?;
    watch.abort();
    tracing::info!("query service stopped");
    Ok(())
}
