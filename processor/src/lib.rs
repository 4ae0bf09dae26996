//! `tally-processor`: drains a pipeline's JetStream stream into ClickHouse — raw events plus
//! the rollups its materialized views keep — acknowledging only what ClickHouse confirmed.
//!
//! The binary (`main.rs`) reads its command line and calls [`run`]. Everything else stays
//! inside the crate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use tally_contracts::{RuntimeConfig, naming, stream};
use tally_runtime::{retry, serve_health, shutdown_signal};

mod backoff;
mod bisect;
mod consume;
mod dead_letter;
pub mod enrich;
mod health;
mod metrics;
mod poison;
mod redelivery;
mod schema;
mod store;
mod trace;

/// Serves /healthz, /readyz and /metrics on `listen`, connects to both servers and drains
/// the stream until SIGINT or SIGTERM; a batch being written then is finished first.
/// `crash_after_inserts` is a fault-injection hook for tests: exit abruptly after this many
/// batch inserts, before the last batch is acknowledged. Without `enrichment` the
/// enrichment columns are stored empty (the bench compares both).
pub async fn run(
    config: RuntimeConfig,
    listen: SocketAddr,
    crash_after_inserts: Option<u64>,
    enrichment: bool,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let enricher = enrichment
        .then(enrich::Enricher::new)
        .transpose()
        .context("cannot compile the user-agent patterns")?
        .map(Arc::new);
    tracing::debug!(elapsed = ?started.elapsed(), enrichment, "enrichment ready");
    let metrics = Arc::new(metrics::Metrics::default());
    let readiness = Arc::new(health::Readiness::default());
    let listener = tally_runtime::health::bind(listen).await?;
    let health = Arc::new(health::ProcessorHealth {
        readiness: readiness.clone(),
        metrics: metrics.clone(),
    });
    tokio::spawn(async move {
        if let Err(e) = serve_health(listener, health, shutdown_signal()).await {
            tracing::error!(error = %e, "the health server stopped");
        }
    });

    let shutdown = shutdown_signal();
    tokio::select! {
        started = start(&config, crash_after_inserts, enricher, metrics, readiness) => started?.run(shutdown).await,
        _ = shutdown_signal() => {}
    }
    tracing::info!("processor stopped");
    Ok(())
}

/// Connects to both servers, applies the schema and binds the consumer, retrying each step
/// until it succeeds.
async fn start(
    config: &RuntimeConfig,
    crash_after_inserts: Option<u64>,
    enricher: Option<Arc<enrich::Enricher>>,
    metrics: Arc<metrics::Metrics>,
    readiness: Arc<health::Readiness>,
) -> anyhow::Result<consume::Processor> {
    let spec = &config.pipeline.spec;
    let nats = config
        .credentials
        .nats
        .connect_options()
        .map_err(|e| anyhow::anyhow!(e))?
        .name("tally-processor")
        .retry_on_initial_connect()
        // `spec.nats.url` may list several servers (a JetStream cluster), comma-separated.
        .connect(stream::nats_servers(&spec.nats.url).context("spec.nats.url")?)
        .await
        .map_err(|e| anyhow::anyhow!("cannot set up the NATS connection: {e}"))?;
    let js = jetstream::new(nats);
    let clickhouse = tally_contracts::credentials::clickhouse_client(config)
        .map_err(|e| anyhow::anyhow!("spec.clickhouse: {e}"))?;
    let db = config.database();

    retry("apply the ClickHouse schema", || {
        schema::apply(&clickhouse, &db, spec.clickhouse.retention_days)
    })
    .await;
    let consumer = retry("bind the JetStream consumer", || async {
        let stream = stream::ensure_stream(&js, config)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let consumer = stream
            .create_consumer(stream::consumer_config(config))
            .await?;
        anyhow::Ok(consumer)
    })
    .await;
    tracing::info!(
        pipeline = config.name(),
        stream = %config.stream_name(),
        consumer = naming::CONSUMER_NAME,
        database = %db,
        "processor started"
    );
    readiness.set_started(js.client());
    let ack_wait = config.timings.ack_wait;
    Ok(consume::Processor {
        consumer,
        store: store::Store::new(
            clickhouse.with_database(&db),
            (ack_wait * 3 / 4).max(Duration::from_secs(1)),
            enricher,
        ),
        settings: consume::Settings {
            max_rows: spec.processor.batch_max_rows as usize,
            max_wait: config.timings.batch_max_wait,
            ack_wait,
            max_deliver: spec.processor.max_deliver.into(),
            crash_after_inserts,
        },
        metrics,
        readiness,
        dead_letters: dead_letter::DeadLetters::new(js, config.clone()),
    })
}
