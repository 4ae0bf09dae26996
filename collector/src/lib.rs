//! `tally-collector`: accepts analytics events over HTTP and publishes them durably to the
//! pipeline's NATS JetStream stream. It does nothing else: reads (`/v1/stats`) are the query
//! service's (`tally-query`), so no ClickHouse query shares this process's CPU or
//! connections with ingest.
//!
//! The binary (`main.rs`) reads its command line and calls [`serve`]. [`parse_events`] is
//! the one function `POST /v1/events` turns a body into events with, open to the fuzz
//! target in `collector/fuzz`. The daily salt of `hash` visitor ids ([`salt`]) and the hash
//! itself ([`hashed_visitor_id`]) are open too, so the e2e tests can check an id against the
//! salt the collectors share. Everything else stays inside the crate.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tally_contracts::RuntimeConfig;
use tally_runtime::{ServerLimits, shutdown_signal};

mod admission;
mod api;
#[cfg(test)]
mod hostile_input;
mod ingest;
mod metrics;
mod payload;
mod pixel;
mod rate_limit;
mod router;
pub mod salt;
mod segment;
mod sink;
mod state;
mod visitor;

pub use api::ApiError;
pub use ingest::{Parsed, RequestHeaders, parse_events};
pub use payload::Shape;
pub use tally_contracts::validate::Problem;
pub use visitor::hashed_visitor_id;

/// Connects to NATS, then serves the collector's HTTP API on `listen` until SIGINT or
/// SIGTERM; publishes still in progress are flushed before it returns.
/// The load-shedding budget is `spec.collector.maxInFlightEvents` (0: none); the sites' and
/// keys' rate limits are shared among `collectors` replicas. On SIGHUP the sites, keys and
/// limits are reloaded with `reload`.
pub async fn serve(
    config: RuntimeConfig,
    listen: SocketAddr,
    collectors: u32,
    reload: impl Fn() -> Result<RuntimeConfig, tally_contracts::ConfigError> + Send + 'static,
) -> anyhow::Result<()> {
    let sink = Arc::new(
        sink::JetStreamSink::connect(&config)
            .await
            .map_err(|e| anyhow::anyhow!("cannot set up the NATS connection: {e}"))?,
    );
    let (pipeline, sites) = (config.name().to_owned(), config.sites.len());
    let limits = ServerLimits {
        header_read_timeout: config.timings.header_read_timeout,
        request_timeout: config.timings.request_timeout,
        max_connections: config.pipeline.spec.collector.max_connections as usize,
    };
    let state = state::AppState::new(config, sink.clone(), collectors);
    let connections = state.metrics.connections.clone();
    // The daily salt of hash visitor ids, kept from the pipeline's key-value bucket.
    let rules = state.ingest.clone();
    tokio::spawn(salt::keep(
        state.ingest.salts.clone(),
        sink.jetstream(),
        state.ingest.rules.load().config.clone(),
        move || {
            let rules = rules.rules.load();
            rules
                .config
                .sites
                .iter()
                .any(|site| site.spec.privacy.visitor_id == tally_crds::VisitorIdMode::Hash)
        },
    ));
    let ingest = state.ingest.clone();
    tally_runtime::reload_on_hangup(reload, move |config| ingest.reload(config));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(%listen, %pipeline, sites, "collector started");
    tally_runtime::serve(
        listener,
        router::router(state),
        limits,
        connections,
        shutdown_signal(),
    )
    .await?;
    sink.flush().await;
    tracing::info!("collector stopped");
    Ok(())
}
