//! `tally-operator`: the Kubernetes controller for `AnalyticsPipeline` and `AnalyticsSite`
//! (group `tally.dev`). The command line is read here; the controllers live in the library
//! (`lib.rs`).

use std::net::SocketAddr;

use clap::{ArgAction, Parser};
use tally_operator::Settings;
use tally_runtime::{LogFormat, init_telemetry};

/// Tally operator: reconciles AnalyticsPipelines (ConfigMap, collector, processor and query
/// Deployments, collector and query Services, JetStream stream) and AnalyticsSites (acceptance and
/// status) in every namespace.
#[derive(Debug, Parser)]
#[command(name = "tally-operator", version)]
struct Cli {
    /// Address of the HTTP server for /healthz, /readyz and /metrics.
    #[arg(long, env = "TALLY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Take the `tally-operator` Lease before reconciling, so that several replicas are safe.
    #[arg(long, env = "TALLY_LEADER_ELECTION", default_value_t = true, action = ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the leader-election Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Identity in the leader election; defaults to the host name.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Collector image for pipelines that do not set `spec.collector.image`.
    #[arg(
        long,
        env = "TALLY_COLLECTOR_IMAGE",
        default_value = "tally/collector:0.1.0"
    )]
    collector_image: String,
    /// Processor image for pipelines that do not set `spec.processor.image`.
    #[arg(
        long,
        env = "TALLY_PROCESSOR_IMAGE",
        default_value = "tally/processor:0.1.0"
    )]
    processor_image: String,
    /// Query image for pipelines that do not set `spec.query.image`.
    #[arg(long, env = "TALLY_QUERY_IMAGE", default_value = "tally/query:0.1.0")]
    query_image: String,
    /// Log format: JSON lines or text, on stderr; level from `RUST_LOG`.
    #[arg(long, env = "TALLY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The workspace builds rustls with both its providers (ring for the services' TLS,
    // aws-lc-rs for tally-import's S3 client), so the Kubernetes client's TLS cannot pick
    // one by itself: ring, as the services use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    // Kept to the end of main: dropping it flushes the spans still buffered.
    let _telemetry = init_telemetry(cli.log_format, "tally-operator")?;
    tally_operator::run(Settings {
        listen: cli.listen,
        leader_election: cli.leader_election,
        lease_namespace: cli.lease_namespace,
        identity: cli.identity,
        collector_image: cli.collector_image,
        processor_image: cli.processor_image,
        query_image: cli.query_image,
    })
    .await
}
