//! The processor's loop: fetch a batch from the durable consumer, decode it, write it to
//! ClickHouse, and only then acknowledge it.
//!
//! Exactly-once counting rests on three rules:
//! - a message is acknowledged only after ClickHouse confirmed the insert that holds it, so
//!   a crash at any point leaves it unacknowledged and JetStream delivers it again;
//! - a message that may have been written before — redelivered by JetStream, or part of a
//!   retried insert whose outcome is unknown — is looked up by `event_id` first, and skipped
//!   when the `events` table holds it already;
//! - while an insert is retried, the batch's messages get progress acknowledgements, so
//!   JetStream does not hand them to another replica in the meantime.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message, consumer::PullConsumer};
use futures::StreamExt;
use futures::future::join_all;
use tally_contracts::Event;

use crate::metrics::Metrics;
use crate::store::Store;

/// Batching and fault-injection settings of the loop.
pub struct Settings {
    pub max_rows: usize,
    pub max_wait: Duration,
    pub ack_wait: Duration,
    /// Test hook: exit abruptly after this many inserts, before acknowledging the last.
    pub crash_after_inserts: Option<u64>,
}

pub struct Processor {
    pub consumer: PullConsumer,
    pub store: Store,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
}

/// Asked to stop while a batch was still unwritten; its messages will be redelivered.
struct Interrupted;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Processor {
    /// Runs until `shutdown` resolves; a batch being written when it does is finished first
    /// (or abandoned unacknowledged if ClickHouse is failing).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = pin!(shutdown);
        let mut inserts = 0u64;
        let mut backoff = MIN_BACKOFF;
        loop {
            let fetched = tokio::select! {
                _ = &mut shutdown => return,
                fetched = self.fetch() => fetched,
            };
            let messages = match fetched {
                Ok(messages) => {
                    self.metrics.set_nats_ok(true);
                    backoff = MIN_BACKOFF;
                    messages
                }
                Err(e) => {
                    self.metrics.set_nats_ok(false);
                    tracing::warn!(error = %e, retry_in = ?backoff, "fetching from JetStream failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            if messages.is_empty() {
                continue;
            }
            if self.process(&messages, &mut shutdown).await.is_err() {
                tracing::info!(
                    messages = messages.len(),
                    "stopping with a batch unwritten; JetStream will redeliver it"
                );
                return;
            }
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
            let acks = join_all(messages.iter().map(|m| m.ack())).await;
            if let Some(Err(e)) = acks.into_iter().find(Result::is_err) {
                // Unacknowledged messages come back and are then found stored: no double count.
                tracing::warn!(error = %e, "acknowledging a batch failed");
            }
        }
    }

    /// Up to `max_rows` messages, waiting at most `max_wait` for them.
    async fn fetch(&self) -> Result<Vec<Message>, async_nats::Error> {
        let mut batch = self
            .consumer
            .batch()
            .max_messages(self.settings.max_rows)
            .expires(self.settings.max_wait)
            .messages()
            .await?;
        let mut messages = Vec::with_capacity(self.settings.max_rows);
        while let Some(message) = batch.next().await {
            match message {
                Ok(m) => messages.push(m),
                Err(e) if messages.is_empty() => return Err(e.into()),
                Err(e) => {
                    tracing::debug!(error = %e, "batch ended early");
                    break;
                }
            }
        }
        Ok(messages)
    }

    /// Writes one batch, retrying with backoff until ClickHouse confirms it.
    async fn process(
        &self,
        messages: &[Message],
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), Interrupted> {
        let mut events: Vec<Event> = Vec::with_capacity(messages.len());
        let mut redelivered: Vec<bool> = Vec::with_capacity(messages.len());
        for message in messages {
            match serde_json::from_slice::<Event>(&message.payload) {
                Ok(event) => {
                    let delivered = message.info().map(|i| i.delivered).unwrap_or(i64::MAX);
                    redelivered.push(delivered > 1);
                    events.push(event);
                }
                Err(e) => {
                    // Not an envelope the collector writes: it can never be stored.
                    tracing::error!(subject = %message.subject, error = %e, "dropping a message that is not a Tally event");
                    self.metrics.count_poison();
                    if let Err(e) = message.ack_with(AckKind::Term).await {
                        tracing::warn!(error = %e, "terminating a poison message failed");
                    }
                }
            }
        }
        let mut attempt = 0u32;
        let mut backoff = MIN_BACKOFF;
        loop {
            let started = std::time::Instant::now();
            match self.write(&events, &redelivered, attempt > 0).await {
                Ok((written, skipped)) => {
                    self.metrics
                        .record_batch(written, skipped, started.elapsed());
                    self.metrics.set_storage_ok(true);
                    return Ok(());
                }
                Err(e) => {
                    attempt += 1;
                    self.metrics.count_insert_failure();
                    self.metrics.set_storage_ok(false);
                    tracing::warn!(error = %e, attempt, retry_in = ?backoff, rows = events.len(), "writing a batch to ClickHouse failed");
                    self.wait_keeping_messages(messages, backoff, shutdown)
                        .await?;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Inserts the events not yet stored. Returns (written, skipped as already stored).
    async fn write(
        &self,
        events: &[Event],
        redelivered: &[bool],
        retrying: bool,
    ) -> clickhouse::error::Result<(usize, usize)> {
        let suspects: Vec<&Event> = events
            .iter()
            .zip(redelivered)
            .filter(|(_, again)| retrying || **again)
            .map(|(e, _)| e)
            .collect();
        let stored = self.store.stored_ids(&suspects).await?;
        let fresh: Vec<&Event> = events
            .iter()
            .filter(|e| !stored.contains(&e.event_id))
            .collect();
        if !fresh.is_empty() {
            self.store.insert(&fresh).await?;
        }
        Ok((fresh.len(), events.len() - fresh.len()))
    }

    /// Sleeps for `delay`, telling JetStream often enough that the batch is still being
    /// worked on; returns early with `Interrupted` when asked to stop.
    async fn wait_keeping_messages(
        &self,
        messages: &[Message],
        delay: Duration,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), Interrupted> {
        let tick = (self.settings.ack_wait / 3).max(Duration::from_millis(50));
        let mut left = delay;
        loop {
            join_all(messages.iter().map(|m| m.ack_with(AckKind::Progress))).await;
            let step = left.min(tick);
            tokio::select! {
                _ = shutdown.as_mut() => return Err(Interrupted),
                _ = tokio::time::sleep(step) => {}
            }
            left = left.saturating_sub(step);
            if left.is_zero() {
                join_all(messages.iter().map(|m| m.ack_with(AckKind::Progress))).await;
                return Ok(());
            }
        }
    }
}
