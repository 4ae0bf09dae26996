//! Prometheus metrics and health of the processor, served on its HTTP port.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Counters of the processor plus the health flags `/readyz` reports.
pub struct Metrics {
    registry: Registry,
    written: Counter,
    skipped: Counter,
    skipped_first_delivery: Counter,
    poison: Counter,
    dead_lettered: Counter,
    dead_letter_failures: Counter,
    batches: Counter,
    insert_failures: Counter,
    insert_seconds: Histogram,
    stage_seconds: Family<StageLabel, Histogram, fn() -> Histogram>,
    nats_ok: AtomicBool,
    storage_ok: AtomicBool,
    started: AtomicBool,
    nats: OnceLock<async_nats::Client>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tally_processor");
        let written = Counter::default();
        let skipped = Counter::default();
        let skipped_first_delivery = Counter::default();
        let poison = Counter::default();
        let dead_lettered = Counter::default();
        let dead_letter_failures = Counter::default();
        let batches = Counter::default();
        let insert_failures = Counter::default();
        let insert_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let stage_seconds: Family<_, _, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16)));
        registry.register(
            "events_written",
            "Events inserted into ClickHouse",
            written.clone(),
        );
        registry.register(
            "events_skipped_duplicate",
            "Events skipped because ClickHouse held them already (redelivered, or retried)",
            skipped.clone(),
        );
        registry.register(
            "events_stored_on_first_delivery",
            "Of those, events JetStream delivered as if for the first time: it had lost its record \
             of an earlier delivery (a nats-server crash, a consumer leader change)",
            skipped_first_delivery.clone(),
        );
        registry.register(
            "events_poison",
            "Deliveries of messages that cannot be stored (not an event, or refused by ClickHouse): \
             NAK'd for redelivery, or dead-lettered on their maxDeliver-th delivery",
            poison.clone(),
        );
        registry.register(
            "events_dead_lettered",
            "Messages published to the dead-letter stream after maxDeliver deliveries, then acknowledged",
            dead_lettered.clone(),
        );
        registry.register(
            "dead_letter_failures",
            "Failed attempts to publish a dead letter (the message is NAK'd and tried again)",
            dead_letter_failures.clone(),
        );
        registry.register(
            "batches",
            "Batches written and acknowledged",
            batches.clone(),
        );
        registry.register(
            "insert_failures",
            "Failed attempts to write a batch",
            insert_failures.clone(),
        );
        registry.register(
            "batch_write_seconds",
            "Time to write one batch",
            insert_seconds.clone(),
        );
        registry.register(
            "stage_seconds",
            "Time a batch spends in each stage of the loop: fetch (from JetStream), lookup (of \
             its event ids in ClickHouse), insert, ack",
            stage_seconds.clone(),
        );
        Self {
            registry,
            written,
            skipped,
            skipped_first_delivery,
            poison,
            dead_lettered,
            dead_letter_failures,
            batches,
            insert_failures,
            insert_seconds,
            stage_seconds,
            nats_ok: AtomicBool::new(false),
            storage_ok: AtomicBool::new(false),
            started: AtomicBool::new(false),
            nats: OnceLock::new(),
        }
    }
}

impl Metrics {
    pub fn record_batch(&self, written: usize, skipped: usize, took: Duration) {
        self.written.inc_by(written as u64);
        self.skipped.inc_by(skipped as u64);
        self.batches.inc();
        self.insert_seconds.observe(took.as_secs_f64());
    }
    /// One batch's time in `stage` (see [`Stage`]).
    pub fn record_stage(&self, stage: Stage, took: Duration) {
        self.stage_seconds
            .get_or_create(&[("stage", stage.label())])
            .observe(took.as_secs_f64());
    }
    pub fn count_stored_on_first_delivery(&self, events: usize) {
        self.skipped_first_delivery.inc_by(events as u64);
    }
    pub fn count_poison(&self) {
        self.poison.inc();
    }
    pub fn count_dead_lettered(&self) {
        self.dead_lettered.inc();
    }
    pub fn count_dead_letter_failure(&self) {
        self.dead_letter_failures.inc();
    }
    pub fn count_insert_failure(&self) {
        self.insert_failures.inc();
    }
    pub fn set_nats_ok(&self, ok: bool) {
        self.nats_ok.store(ok, Ordering::Relaxed);
    }
    pub fn set_storage_ok(&self, ok: bool) {
        self.storage_ok.store(ok, Ordering::Relaxed);
    }
    /// Marks the end of start-up (schema applied, consumer bound); `nats` is watched for
    /// readiness from then on.
    pub fn set_started(&self, nats: async_nats::Client) {
        let _ = self.nats.set(nats);
        self.started.store(true, Ordering::Relaxed);
        self.set_storage_ok(true);
        self.set_nats_ok(true);
    }

    fn readiness(&self) -> Result<(), &'static str> {
        if !self.started.load(Ordering::Relaxed) {
            return Err("starting: schema or consumer not ready yet");
        }
        if !self.storage_ok.load(Ordering::Relaxed) {
            return Err("ClickHouse is failing; retrying the current batch");
        }
        let connected = self
            .nats
            .get()
            .is_some_and(|c| c.connection_state() == async_nats::connection::State::Connected);
        if !connected || !self.nats_ok.load(Ordering::Relaxed) {
            return Err("cannot fetch from JetStream");
        }
        Ok(())
    }
}

type StageLabel = [(&'static str, &'static str); 1];

/// The stages of the processor's loop, timed per batch.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    Fetch,
    Lookup,
    Insert,
    Ack,
}

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Stage::Fetch => "fetch",
            Stage::Lookup => "lookup",
            Stage::Insert => "insert",
            Stage::Ack => "ack",
        }
    }
}

/// `/healthz`, `/readyz` and `/metrics`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render))
        .with_state(metrics)
}

async fn readyz(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    match metrics.readiness() {
        Ok(()) => (StatusCode::OK, "ready"),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn render(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &metrics.registry)
        .expect("writing to a String never fails");
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
}
