//! `tally-query`: Tally's read side. Answers `GET /v1/stats` from a pipeline's ClickHouse
//! rollups, in a process of its own so that reads never share the collector's CPU or
//! connections. The command line is read here; the service lives in the library (`lib.rs`).

use std::net::SocketAddr;

use clap::Parser;
use tally_runtime::CommonArgs;

/// Tally query service: answers GET /v1/stats from the pipeline's ClickHouse rollups, apart
/// from ingest (the collector). Reads the same configuration as the collector and processor;
/// of the servers it uses only ClickHouse (--nats-url is accepted and ignored).
#[derive(Debug, Parser)]
#[command(name = "tally-query", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Address to listen on for HTTP: the API, /healthz, /readyz and /metrics.
    #[arg(long, env = "TALLY_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = cli.common.init_telemetry("tally-query")?;
    let config = cli.common.load_config()?;
    let common = cli.common.clone();
    tally_query::serve(config, cli.listen, move || common.load_config()).await
}
