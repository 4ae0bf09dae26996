//! `tally-collector`: accepts analytics events over HTTP and publishes them durably to the
//! pipeline's NATS JetStream stream. The command line is read here; the service lives in
//! the library (`lib.rs`). Reads are another service's: `tally-query` serves `/v1/stats`.

use std::net::SocketAddr;

use clap::Parser;
use tally_runtime::CommonArgs;

/// Tally collector: takes events on POST /v1/events and publishes them to NATS JetStream
/// (reads are tally-query's GET /v1/stats).
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
    /// costs bounded memory instead of growing queues. 0 disables the limit. Overrides
    /// `spec.collector.maxInFlightEvents` of the pipeline (default 32768).
    #[arg(long, env = "TALLY_MAX_IN_FLIGHT_EVENTS", value_name = "EVENTS")]
    max_in_flight_events: Option<u32>,
    /// How many collectors share the pipeline's rate limits: each takes this share of every
    /// site's and key's sustained rate. The operator sets it to the Deployment's replicas;
    /// standalone, give the number of collectors you run behind one address.
    #[arg(long, env = "TALLY_COLLECTORS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    collectors: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Logging, and tracing when OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT is set; the guard
    // flushes the last spans when main returns.
    let _telemetry = cli.common.init_telemetry("tally-collector")?;
    let mut config = cli.common.load_config()?;
    if let Some(max) = cli.max_in_flight_events {
        config.pipeline.spec.collector.max_in_flight_events = max;
    }
    let common = cli.common.clone();
    tally_collector::serve(config, cli.listen, cli.collectors, move || {
        common.load_config()
    })
    .await
}
