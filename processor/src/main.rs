//! `tally-processor`: drains a pipeline's JetStream stream into ClickHouse — raw events plus
//! the rollups its materialized views keep — acknowledging only what ClickHouse confirmed.
//! The command line is read here; the service lives in the library (`lib.rs`).

use std::net::SocketAddr;

use clap::Parser;
use tally_runtime::CommonArgs;

/// Tally processor: consumes the pipeline's JetStream stream and writes events and rollups
/// to ClickHouse.
#[derive(Debug, Parser)]
#[command(name = "tally-processor", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Address of the HTTP server for /healthz, /readyz and /metrics.
    #[arg(long, env = "TALLY_LISTEN", default_value = "127.0.0.1:9091")]
    listen: SocketAddr,
    /// Fault injection for tests: exit abruptly after this many batch inserts, before the
    /// last batch is acknowledged.
    #[arg(long, hide = true)]
    crash_after_inserts: Option<u64>,
    /// Store the enrichment columns (browser, OS, device, source, channel, UTM) empty
    /// instead of deriving them: what the bench compares the processor's throughput with.
    #[arg(long, hide = true)]
    no_enrichment: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Logging, and tracing when OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT is set; the guard
    // flushes the last spans when main returns.
    let _telemetry = cli.common.init_telemetry("tally-processor")?;
    let config = cli.common.load_config()?;
    tally_processor::run(
        config,
        cli.listen,
        cli.crash_after_inserts,
        !cli.no_enrichment,
    )
    .await
}
