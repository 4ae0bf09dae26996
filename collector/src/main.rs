//! `tally-collector`: accepts analytics events over HTTP and publishes them durably to the
//! pipeline's NATS JetStream stream; also serves the stats API.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use tally_contracts::service::{CommonArgs, shutdown_signal};

mod admission;
mod api;
#[cfg(test)]
mod hostile_input;
mod ingest;
mod metrics;
mod payload;
mod router;
mod sink;
mod stats;
mod validate;

/// Tally collector: takes events on POST /v1/events, publishes them to NATS JetStream,
/// and answers GET /v1/stats from ClickHouse.
#[derive(Debug, Parser)]
#[command(name = "tally-collector", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Address to listen on for HTTP.
    #[arg(long, env = "TALLY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Load shedding: the most events that requests in progress may hold at once (being
    /// validated, published or awaiting JetStream's acknowledgement). A POST whose events do
    /// not fit is answered at once with 503 `overloaded` and `Retry-After: 1`, so overload
    /// costs bounded memory instead of growing queues. 0 disables the limit.
    #[arg(
        long,
        env = "TALLY_MAX_IN_FLIGHT_EVENTS",
        value_name = "EVENTS",
        default_value_t = admission::DEFAULT_MAX_IN_FLIGHT_EVENTS
    )]
    max_in_flight_events: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.common.init_logging();
    let config = cli.common.load_config()?;
    let sink = Arc::new(
        sink::JetStreamSink::connect(&config)
            .await
            .map_err(|e| anyhow::anyhow!("cannot set up the NATS connection: {e}"))?,
    );
    let state = Arc::new(
        router::AppState::new(config, sink.clone())
            .with_max_in_flight_events(cli.max_in_flight_events),
    );
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    tracing::info!(listen = %cli.listen, pipeline = state.config.name(), sites = state.config.sites.len(), "collector started");
    axum::serve(listener, router::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    sink.flush().await;
    tracing::info!("collector stopped");
    Ok(())
}
