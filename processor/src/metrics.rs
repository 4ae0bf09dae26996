//! The processor's Prometheus metrics: what it wrote, skipped and gave up on, and how long
//! each stage of its loop took. `/metrics` (see `health`) renders them.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The processor's counters and histograms, in their registry.
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
        }
    }
}

impl Metrics {
    /// One batch written: its events `written` and `skipped` as stored already, and how
    /// long it took.
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

    /// Events found stored already although JetStream delivered them for the first time.
    pub fn count_stored_on_first_delivery(&self, events: usize) {
        self.skipped_first_delivery.inc_by(events as u64);
    }

    /// One delivery of a message that cannot be stored.
    pub fn count_poison(&self) {
        self.poison.inc();
    }

    /// One message published to the dead-letter stream.
    pub fn count_dead_lettered(&self) {
        self.dead_lettered.inc();
    }

    /// One failed attempt to publish a dead letter.
    pub fn count_dead_letter_failure(&self) {
        self.dead_letter_failures.inc();
    }

    /// One failed attempt to write a batch.
    pub fn count_insert_failure(&self) {
        self.insert_failures.inc();
    }

    /// Every metric in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String never fails");
        out
    }
}

type StageLabel = [(&'static str, &'static str); 1];

/// The stages of the processor's loop, timed per batch.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    /// Fetching the batch from JetStream.
    Fetch,
    /// Looking its event ids up in ClickHouse.
    Lookup,
    /// Inserting its new events.
    Insert,
    /// Acknowledging its messages.
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
