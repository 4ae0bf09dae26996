//! The processor's loop: fetch a batch from the durable consumer, decode it, write it to
//! ClickHouse, and only then acknowledge it.
//!
//! Exactly-once counting rests on three rules:
//! - a message is acknowledged only after ClickHouse confirmed the insert that holds it, so
//!   a crash at any point leaves it unacknowledged and JetStream delivers it again;
//! - every event is looked up by `event_id` before it is inserted (and again before an insert
//!   whose outcome was unknown is retried), and skipped when the `events` table holds it
//!   already. Not only the messages JetStream marks as redelivered: a nats-server that
//!   crashes can lose the consumer's record of recent deliveries and acknowledgements, and
//!   then delivers messages that were stored already as if for the first time (the fault
//!   tests caught exactly that). The look-up is bounded by site and time, so for live
//!   traffic it reads a few granules;
//! - while a batch is being written (however long: inserts retried through an outage, or
//!   halved around refused events), its messages get progress acknowledgements, so JetStream
//!   does not hand them to another replica, or deliver them again, in the meantime.
//!
//! Nothing blocks on a message that can never be stored:
//! - a failure is *transient* (ClickHouse unreachable, timed out, overloaded, or failing for
//!   a reason that is not the data's: see [`classify`](crate::store::classify)) or a
//!   *rejection* (ClickHouse answered that it refuses the data). Transient failures are
//!   retried without end, as above;
//! - a rejected insert is halved, and the halves written on their own, until the refused
//!   events stand alone: every other event of the batch is stored ([`crate::bisect`]);
//! - a message that cannot be stored — not an envelope, an envelope no table can hold
//!   ([`crate::poison`]), or an event ClickHouse refused on its own — is NAK'd with a delay,
//!   and once JetStream has delivered it `maxDeliver` times it is published to the
//!   dead-letter stream (`TALLY_<PIPELINE>_DLQ`, subject `tally.<pipeline>.dlq.<site>`) with
//!   headers saying why, and then acknowledged. It is acknowledged only after the
//!   dead-letter stream confirmed it ([`crate::redelivery`], [`crate::dead_letter`]).

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{AckKind, Message, consumer::PullConsumer};
use futures::StreamExt;
use futures::future::join_all;
use tally_contracts::stream::dead_letter;
use tracing::{Instrument as _, Span};

use crate::backoff::{Interrupted, backoff};
use crate::bisect::{self, Candidate};
use crate::dead_letter::DeadLetters;
use crate::health::Readiness;
use crate::metrics::{Metrics, Stage};
use crate::poison::{Poison, decode};
use crate::redelivery;
use crate::store::Store;
use crate::trace::FetchSpans;

/// Batching and fault-injection settings of the loop.
pub struct Settings {
    /// The most messages in one batch (`batchMaxRows`).
    pub max_rows: usize,
    /// The longest wait for a batch to fill (`batchMaxWait`).
    pub max_wait: Duration,
    /// The consumer's ack wait: messages held longer are delivered again.
    pub ack_wait: Duration,
    /// Deliveries of a message that cannot be stored before it is dead-lettered.
    pub max_deliver: i64,
    /// Test hook: exit abruptly after this many inserts, before acknowledging the last.
    pub crash_after_inserts: Option<u64>,
}

/// The loop and what it works with: the consumer it drains, the store it writes to, where
/// it sends what cannot be stored, and where it reports.
pub struct Processor {
    /// The pipeline's durable pull consumer.
    pub consumer: PullConsumer,
    /// The pipeline database's writer.
    pub store: Store,
    /// Batching and fault-injection settings.
    pub settings: Settings,
    /// The counters the loop keeps.
    pub metrics: Arc<Metrics>,
    /// The readiness `/readyz` reports, kept up to date by the loop.
    pub readiness: Arc<Readiness>,
    /// Where messages go after `maxDeliver` deliveries.
    pub dead_letters: DeadLetters,
}

/// A batch written: the messages that cannot be stored (by index in the batch), with why.
type Outcome = Result<Vec<(usize, Poison)>, Interrupted>;

/// The messages of one pull, and the span that follows them until they are acknowledged
/// (disabled with tracing off; see [`crate::trace`]).
pub struct Batch {
    messages: Vec<Message>,
    span: Span,
}

impl Processor {
    /// Runs until `shutdown` resolves; a batch being written when it does is finished first
    /// (or abandoned unacknowledged if ClickHouse is failing).
    ///
    /// The stages overlap where order does not matter: the next batch is fetched while one is
    /// written, and a batch's acknowledgements go out while the next is written. Writes stay
    /// strictly one after the other, so a batch's look-up sees everything written before it.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = pin!(shutdown);
        let mut inserts = 0u64;
        let mut backoff = backoff();
        // The batch fetched while the last one was written.
        let mut ahead: Option<Batch> = None;
        // The acknowledgements of the last batch written (at most one batch in flight).
        let mut acking: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            let batch = match ahead.take() {
                Some(batch) => batch,
                None => {
                    let fetched = tokio::select! {
                        _ = &mut shutdown => break,
                        fetched = self.fetch() => fetched,
                    };
                    match fetched {
                        Ok(batch) => {
                            self.readiness.set_nats_ok(true);
                            backoff.reset();
                            batch
                        }
                        Err(e) => {
                            self.readiness.set_nats_ok(false);
                            let delay = backoff.next_delay();
                            tracing::warn!(error = %e, retry_in = ?delay, "fetching from JetStream failed");
                            tokio::time::sleep(delay).await;
                            continue;
                        }
                    }
                }
            };
            if batch.messages.is_empty() {
                continue;
            }
            let (outcome, next) = self.process_fetching_ahead(&batch, &mut shutdown).await;
            let Batch { messages, span } = batch;
            let Ok(poison) = outcome else {
                tracing::info!(
                    messages = messages.len(),
                    "stopping with a batch unwritten; JetStream will redeliver it"
                );
                if let Some(next) = next {
                    // Not started: hand it back at once rather than after the ack wait.
                    join_all(next.messages.iter().map(|m| m.ack_with(AckKind::Nak(None)))).await;
                }
                break;
            };
            ahead = next;
            inserts += 1;
            if self
                .settings
                .crash_after_inserts
                .is_some_and(|n| inserts >= n)
            {
                tracing::error!(
                    inserts,
                    "crash-after-inserts reached: exiting before acknowledging"
                );
                std::process::exit(86);
            }
            let mut stored = vec![true; messages.len()];
            for (index, _) in &poison {
                stored[*index] = false;
            }
            join_all(poison.iter().map(|(index, poison)| {
                redelivery::give_back(
                    &messages[*index],
                    poison,
                    self.settings.max_deliver,
                    &self.dead_letters,
                    &self.metrics,
                )
            }))
            .instrument(span.clone())
            .await;
            if let Some(previous) = acking.take() {
                let _ = previous.await;
            }
            let to_ack: Vec<Message> = messages
                .into_iter()
                .zip(stored)
                .filter_map(|(m, stored)| stored.then_some(m))
                .collect();
            let ack = tracing::info_span!(parent: &span, "ack", rows = to_ack.len() as i64);
            let metrics = self.metrics.clone();
            acking = Some(tokio::spawn(async move {
                acknowledge(to_ack, metrics).instrument(ack).await;
                // The batch span ends with its acknowledgements.
                drop(span);
            }));
        }
        if let Some(last) = acking {
            let _ = last.await;
        }
    }

    /// Writes `messages` (see [`Self::process`]) while the next batch is fetched, telling
    /// JetStream often enough (every third of the ack wait) that both are being worked on:
    /// however long the inserts take — retried through an outage, or halved around refused
    /// events — no message of either is handed to another replica, or delivered again,
    /// meanwhile. Returns the outcome and the next batch, if one came (a failed fetch is
    /// left to the next plain fetch, which reports it).
    async fn process_fetching_ahead(
        &self,
        batch: &Batch,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> (Outcome, Option<Batch>) {
        let messages = &batch.messages;
        let tick = (self.settings.ack_wait / 3).max(Duration::from_millis(50));
        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
        // The write runs in the batch's span; the fetch of the next batch, polled beside it,
        // opens spans of its own (with no parent taken from here).
        let mut work = pin!(
            self.process(messages, shutdown)
                .instrument(batch.span.clone())
        );
        let mut fetch = pin!(self.fetch());
        let mut ahead: Option<Batch> = None;
        let mut fetching = true;
        let outcome = loop {
            tokio::select! {
                done = &mut work => break done,
                fetched = &mut fetch, if fetching => {
                    fetching = false;
                    match fetched {
                        Ok(next) if !next.messages.is_empty() => ahead = Some(next),
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "fetching ahead failed"),
                    }
                }
                _ = progress.tick() => {
                    let held = messages.iter().chain(ahead.iter().flat_map(|b| &b.messages));
                    join_all(held.map(|m| m.ack_with(AckKind::Progress))).await;
                }
            }
        };
        if fetching && outcome.is_ok() {
            // Dropping a fetch half-way would strand the messages it has received until their
            // ack wait ends; it ends by itself within `batchMaxWait`.
            if let Ok(next) = fetch.await
                && !next.messages.is_empty()
            {
                ahead = Some(next);
            }
        }
        (outcome, ahead)
    }

    /// Up to `max_rows` messages, waiting at most `max_wait` for them. The batch's spans
    /// open when the first message arrives: an empty pull makes none.
    async fn fetch(&self) -> Result<Batch, async_nats::Error> {
        let started = Instant::now();
        let mut batch = self
            .consumer
            .batch()
            .max_messages(self.settings.max_rows)
            .expires(self.settings.max_wait)
            .messages()
            .await?;
        let mut messages = Vec::with_capacity(self.settings.max_rows);
        let mut spans = None;
        while let Some(message) = batch.next().await {
            match message {
                Ok(m) => {
                    spans.get_or_insert_with(FetchSpans::start);
                    messages.push(m);
                }
                Err(e) if messages.is_empty() => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "batch ended early");
                    break;
                }
            }
        }
        if !messages.is_empty() {
            self.metrics.record_stage(Stage::Fetch, started.elapsed());
        }
        let span = spans.map_or_else(Span::none, |spans| spans.fetched(&messages));
        Ok(Batch { messages, span })
    }

    /// Writes one batch, retrying transient failures with backoff until ClickHouse confirms
    /// every event it does not refuse. Returns the messages that cannot be stored (by index
    /// in the batch), with why.
    async fn process(
        &self,
        messages: &[Message],
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Outcome {
        let mut candidates = Vec::with_capacity(messages.len());
        let mut poison = Vec::new();
        for (index, message) in messages.iter().enumerate() {
            match decode(&message.payload) {
                Ok(event) => {
                    // No delivery count (never the case for a consumer's message): count it
                    // as redelivered.
                    let delivered = message.info().map(|i| i.delivered).unwrap_or(i64::MAX);
                    candidates.push(Candidate {
                        index,
                        event,
                        redelivered: delivered > 1,
                    });
                }
                Err(why) => poison.push((index, why)),
            }
        }
        let started = Instant::now();
        let (written, skipped, rejected) = bisect::store_isolating_rejections(
            &self.store,
            &self.metrics,
            &self.readiness,
            &candidates,
            shutdown,
        )
        .await?;
        self.metrics
            .record_batch(written, skipped, started.elapsed());
        // This runs in the batch's span.
        let span = Span::current();
        span.record("written", written as i64);
        span.record("skipped", skipped as i64);
        span.record("poison", (poison.len() + rejected.len()) as i64);
        poison.extend(rejected.into_iter().map(|(i, reason)| {
            (
                candidates[i].index,
                Poison {
                    kind: dead_letter::REJECTED,
                    reason,
                },
            )
        }));
        Ok(poison)
    }
}

/// Acknowledges the messages of a written batch.
async fn acknowledge(messages: Vec<Message>, metrics: Arc<Metrics>) {
    let started = Instant::now();
    let acks = join_all(messages.iter().map(|m| m.ack())).await;
    if let Some(Err(e)) = acks.into_iter().find(Result::is_err) {
        // Unacknowledged messages come back and are then found stored: no double count.
        tracing::warn!(error = %e, "acknowledging a batch failed");
    }
    metrics.record_stage(Stage::Ack, started.elapsed());
}
