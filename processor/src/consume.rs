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
//!   a reason that is not the data's: see [`classify`]) or a *rejection* (ClickHouse answered
//!   that it refuses the data). Transient failures are retried without end, as above;
//! - a rejected insert is halved, and the halves written on their own, until the refused
//!   events stand alone: every other event of the batch is stored;
//! - a message that cannot be stored — not an envelope, an envelope no table can hold, or an
//!   event ClickHouse refused on its own — is NAK'd with a delay, and once JetStream has
//!   delivered it `maxDeliver` times it is published to the dead-letter stream
//!   (`TALLY_<PIPELINE>_DLQ`, subject `tally.<pipeline>.dlq.<site>`) with headers saying why,
//!   and then acknowledged. It is acknowledged only after the dead-letter stream confirmed it.

use std::collections::HashSet;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, Message, consumer::PullConsumer};
use futures::StreamExt;
use futures::future::join_all;
use tally_contracts::stream::dead_letter;
use tally_contracts::{Event, RuntimeConfig, naming, stream};
use uuid::Uuid;

use crate::metrics::{Metrics, Stage};
use crate::store::Store;

/// Batching and fault-injection settings of the loop.
pub struct Settings {
    pub max_rows: usize,
    pub max_wait: Duration,
    pub ack_wait: Duration,
    /// Deliveries of a message that cannot be stored before it is dead-lettered.
    pub max_deliver: i64,
    /// Test hook: exit abruptly after this many inserts, before acknowledging the last.
    pub crash_after_inserts: Option<u64>,
}

pub struct Processor {
    pub consumer: PullConsumer,
    pub store: Store,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub dead_letters: DeadLetters,
}

/// Asked to stop while a batch was still unwritten; its messages will be redelivered.
struct Interrupted;

/// A batch written: the messages that cannot be stored (by index in the batch), with why.
type Outcome = Result<Vec<(usize, Poison)>, Interrupted>;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why a message cannot be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Poison {
    /// One of the `tally_contracts::stream::dead_letter` kinds.
    pub kind: &'static str,
    pub reason: String,
}

/// A message of the batch that decoded to an event.
struct Candidate {
    /// Its index in the batch.
    index: usize,
    event: Event,
    /// JetStream delivered it before (it failed then, or its processor died): it is
    /// written apart from first deliveries, so that a refused event costs a small insert.
    redelivered: bool,
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
        let mut backoff = MIN_BACKOFF;
        // The batch fetched while the last one was written.
        let mut ahead: Option<Vec<Message>> = None;
        // The acknowledgements of the last batch written (at most one batch in flight).
        let mut acking: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            let messages = match ahead.take() {
                Some(messages) => messages,
                None => {
                    let fetched = tokio::select! {
                        _ = &mut shutdown => break,
                        fetched = self.fetch() => fetched,
                    };
                    match fetched {
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
                    }
                }
            };
            if messages.is_empty() {
                continue;
            }
            let (outcome, next) = self.process_fetching_ahead(&messages, &mut shutdown).await;
            let Ok(poison) = outcome else {
                tracing::info!(
                    messages = messages.len(),
                    "stopping with a batch unwritten; JetStream will redeliver it"
                );
                if let Some(next) = next {
                    // Not started: hand it back at once rather than after the ack wait.
                    join_all(next.iter().map(|m| m.ack_with(AckKind::Nak(None)))).await;
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
            join_all(
                poison
                    .iter()
                    .map(|(index, poison)| self.give_back(&messages[*index], poison)),
            )
            .await;
            if let Some(previous) = acking.take() {
                let _ = previous.await;
            }
            let to_ack: Vec<Message> = messages
                .into_iter()
                .zip(stored)
                .filter_map(|(m, stored)| stored.then_some(m))
                .collect();
            acking = Some(tokio::spawn(acknowledge(to_ack, self.metrics.clone())));
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
        messages: &[Message],
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> (Outcome, Option<Vec<Message>>) {
        let tick = (self.settings.ack_wait / 3).max(Duration::from_millis(50));
        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
        let mut work = pin!(self.process(messages, shutdown));
        let mut fetch = pin!(self.fetch());
        let mut ahead: Option<Vec<Message>> = None;
        let mut fetching = true;
        let outcome = loop {
            tokio::select! {
                done = &mut work => break done,
                fetched = &mut fetch, if fetching => {
                    fetching = false;
                    match fetched {
                        Ok(next) if !next.is_empty() => ahead = Some(next),
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "fetching ahead failed"),
                    }
                }
                _ = progress.tick() => {
                    let held = messages.iter().chain(ahead.iter().flatten());
                    join_all(held.map(|m| m.ack_with(AckKind::Progress))).await;
                }
            }
        };
        if fetching && outcome.is_ok() {
            // Dropping a fetch half-way would strand the messages it has received until their
            // ack wait ends; it ends by itself within `batchMaxWait`.
            if let Ok(next) = fetch.await
                && !next.is_empty()
            {
                ahead = Some(next);
            }
        }
        (outcome, ahead)
    }

    /// Up to `max_rows` messages, waiting at most `max_wait` for them.
    async fn fetch(&self) -> Result<Vec<Message>, async_nats::Error> {
        let started = Instant::now();
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
        Ok(messages)
    }

    /// Writes one batch, retrying transient failures with backoff until ClickHouse confirms
    /// every event it does not refuse. Returns the messages that cannot be stored (by index
    /// in the batch), with why.
    async fn process(
        &self,
        messages: &[Message],
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
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
        let (written, skipped, rejected) = self
            .store_isolating_rejections(&candidates, shutdown)
            .await?;
        self.metrics
            .record_batch(written, skipped, started.elapsed());
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

    /// Stores `candidates` in as few inserts as possible. Redelivered events (the usual home
    /// of a refused one, which always comes back) go in their own insert, the rest in
    /// another; an insert ClickHouse refuses is halved until each refused event stands alone.
    /// Returns (written, skipped as already stored, refused events by index in `candidates`
    /// with ClickHouse's reason).
    async fn store_isolating_rejections(
        &self,
        candidates: &[Candidate],
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(usize, usize, Vec<(usize, String)>), Interrupted> {
        let (again, first): (Vec<usize>, Vec<usize>) =
            (0..candidates.len()).partition(|&i| candidates[i].redelivered);
        // A stack: the chunk pushed last is written first.
        let mut chunks: Vec<Vec<usize>> = [first, again]
            .into_iter()
            .filter(|c| !c.is_empty())
            .collect();
        let (mut written, mut skipped) = (0, 0);
        let mut rejected = Vec::new();
        let mut backoff = MIN_BACKOFF;
        let mut attempt = 0u32;
        while let Some(chunk) = chunks.pop() {
            loop {
                // Until an insert of this batch failed, an event found stored can only have
                // been written before this delivery.
                let Err(e) = self
                    .write(candidates, &chunk, attempt == 0)
                    .await
                    .map(|(w, s)| {
                        written += w;
                        skipped += s;
                    })
                else {
                    self.metrics.set_storage_ok(true);
                    backoff = MIN_BACKOFF;
                    break;
                };
                attempt += 1;
                self.metrics.count_insert_failure();
                // Its outcome is unknown: the next attempt looks its events up again.
                match classify(&e) {
                    Failure::Transient => {
                        self.metrics.set_storage_ok(false);
                        tracing::warn!(error = %e, attempt, retry_in = ?backoff, rows = chunk.len(), "writing a batch to ClickHouse failed");
                        wait_unless_stopped(backoff, shutdown).await?;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                    Failure::Rejected(reason) => {
                        // ClickHouse answered: it is up, the data is at fault.
                        self.metrics.set_storage_ok(true);
                        if let [only] = chunk[..] {
                            let event = &candidates[only].event;
                            tracing::warn!(event_id = %event.event_id, site_id = %event.site_id, %reason, "ClickHouse refused an event");
                            rejected.push((only, reason));
                        } else {
                            tracing::warn!(rows = chunk.len(), %reason, "ClickHouse refused an insert; writing its halves separately");
                            let (left, right) = chunk.split_at(chunk.len() / 2);
                            chunks.push(right.to_vec());
                            chunks.push(left.to_vec());
                        }
                        break;
                    }
                }
            }
        }
        Ok((written, skipped, rejected))
    }

    /// Inserts the events of `chunk` the `events` table does not hold yet. Returns (written,
    /// skipped as already stored).
    async fn write(
        &self,
        candidates: &[Candidate],
        chunk: &[usize],
        nothing_failed_yet: bool,
    ) -> clickhouse::error::Result<(usize, usize)> {
        let events: Vec<&Event> = chunk.iter().map(|&i| &candidates[i].event).collect();
        let started = Instant::now();
        let stored = self.store.stored_ids(&events).await?;
        self.metrics.record_stage(Stage::Lookup, started.elapsed());
        // Neither stored already nor a second copy within the batch (a re-post after the
        // duplicate window, both copies still waiting in the stream).
        let mut seen = HashSet::with_capacity(events.len());
        let fresh: Vec<&Event> = events
            .into_iter()
            .filter(|e| !stored.contains(&e.event_id) && seen.insert(e.event_id))
            .collect();
        if !fresh.is_empty() {
            let started = Instant::now();
            self.store.insert(&fresh).await?;
            self.metrics.record_stage(Stage::Insert, started.elapsed());
        }
        // Stored already, yet delivered as if for the first time (and not by an insert of
        // this batch whose outcome was unknown): JetStream lost its record of an earlier
        // delivery (a nats-server crash, a consumer leader change).
        let unexpected = chunk
            .iter()
            .filter(|&&i| {
                nothing_failed_yet
                    && !candidates[i].redelivered
                    && stored.contains(&candidates[i].event.event_id)
            })
            .count();
        if unexpected > 0 {
            self.metrics.count_stored_on_first_delivery(unexpected);
            tracing::warn!(
                events = unexpected,
                "events delivered for the first time were stored already; skipped"
            );
        }
        Ok((fresh.len(), chunk.len() - fresh.len()))
    }

    /// A message that cannot be stored: NAK'd for a later delivery, or on its `maxDeliver`th
    /// delivery dead-lettered and then acknowledged.
    async fn give_back(&self, message: &Message, poison: &Poison) {
        let delivered = message.info().map(|i| i.delivered).unwrap_or(i64::MAX);
        self.metrics.count_poison();
        if delivered < self.settings.max_deliver {
            let delay = nak_delay(delivered);
            tracing::warn!(subject = %message.subject, delivered, kind = poison.kind, reason = %poison.reason, retry_in = ?delay, "a message cannot be stored; JetStream will deliver it again");
            if let Err(e) = message.ack_with(AckKind::Nak(Some(delay))).await {
                tracing::warn!(error = %e, "NAK failed; the message comes back after the ack wait");
            }
            return;
        }
        match self.dead_letters.publish(message, poison).await {
            Ok((subject, duplicate)) => {
                if duplicate {
                    // Dead-lettered before, but its acknowledgement was lost.
                    tracing::warn!(subject = %message.subject, dead_letter_subject = %subject, delivered, "the dead-letter stream held this message already");
                } else {
                    self.metrics.count_dead_lettered();
                    tracing::error!(subject = %message.subject, dead_letter_subject = %subject, delivered, kind = poison.kind, reason = %poison.reason, "dead-lettered a message that cannot be stored");
                }
                if let Err(e) = message.ack().await {
                    // It comes back, and is dead-lettered again: the dead-letter stream drops
                    // the copy (same Nats-Msg-Id within its duplicate window).
                    tracing::warn!(error = %e, "acknowledging a dead-lettered message failed");
                }
            }
            Err(e) => {
                self.metrics.count_dead_letter_failure();
                tracing::warn!(error = %e, subject = %message.subject, "cannot publish a dead letter; JetStream will deliver the message again");
                if let Err(e) = message.ack_with(AckKind::Nak(Some(MAX_BACKOFF))).await {
                    tracing::warn!(error = %e, "NAK failed; the message comes back after the ack wait");
                }
            }
        }
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

/// Sleeps for `delay`; returns early with `Interrupted` when asked to stop.
async fn wait_unless_stopped(
    delay: Duration,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<(), Interrupted> {
    tokio::select! {
        _ = shutdown.as_mut() => Err(Interrupted),
        _ = tokio::time::sleep(delay) => Ok(()),
    }
}

/// The redelivery delay of a message that could not be stored on its `delivered`th
/// delivery: 100 ms doubling to 5 s.
fn nak_delay(delivered: i64) -> Duration {
    let doublings = u32::try_from(delivered.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    (MIN_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

/// Earliest event time every table can hold: 1970-01-01 (`Date` and `DateTime` start there).
const EARLIEST_MS: i64 = 0;
/// Latest: 2106-02-07T06:28:15.999Z, the end of `DateTime` (the hourly rollup's key).
const LATEST_MS: i64 = u32::MAX as i64 * 1000 + 999;

/// The envelope of a message, when it is one that every table can hold. ClickHouse stores an
/// out-of-range time without complaint, but wrapped to another date: such an envelope (which
/// the collector never writes) is refused here rather than counted on the wrong day.
pub fn decode(payload: &[u8]) -> Result<Event, Poison> {
    let event: Event = serde_json::from_slice(payload).map_err(|e| Poison {
        kind: dead_letter::NOT_AN_EVENT,
        reason: format!("not a Tally event envelope: {e}"),
    })?;
    for (field, ms) in [
        ("timestamp_ms", event.timestamp_ms),
        ("received_at_ms", event.received_at_ms),
    ] {
        if !(EARLIEST_MS..=LATEST_MS).contains(&ms) {
            return Err(Poison {
                kind: dead_letter::INVALID_EVENT,
                reason: format!(
                    "{field} {ms} is outside 1970-01-01..2106-02-07, the range the tables hold"
                ),
            });
        }
    }
    Ok(event)
}

/// What a failed ClickHouse call means for the events it carried.
#[derive(Debug, PartialEq)]
pub enum Failure {
    /// Not the data's fault: retry the same events later.
    Transient,
    /// ClickHouse refused the data (its words).
    Rejected(String),
}

/// ClickHouse exception codes that say nothing about the rows of an insert: the server is
/// overloaded, shutting down, out of memory or disk, read-only, denies access, or the schema
/// is not (yet) there. An insert failing with one of them is retried as it is.
const TRANSIENT_CODES: &[u32] = &[
    3,    // UNEXPECTED_END_OF_FILE (a cut connection)
    10,   // NOT_FOUND_COLUMN_IN_BLOCK
    16,   // NO_SUCH_COLUMN_IN_TABLE
    32,   // ATTEMPT_TO_READ_AFTER_EOF (a cut connection)
    33,   // CANNOT_READ_ALL_DATA (a cut connection)
    47,   // UNKNOWN_IDENTIFIER
    60,   // UNKNOWN_TABLE
    81,   // UNKNOWN_DATABASE
    159,  // TIMEOUT_EXCEEDED
    160,  // TOO_SLOW
    164,  // READONLY
    173,  // CANNOT_ALLOCATE_MEMORY
    192,  // UNKNOWN_USER
    193,  // WRONG_PASSWORD
    194,  // REQUIRED_PASSWORD
    195,  // IP_ADDRESS_NOT_ALLOWED
    198,  // DNS_ERROR
    201,  // QUOTA_EXCEEDED
    202,  // TOO_MANY_SIMULTANEOUS_QUERIES
    203,  // NO_FREE_CONNECTION
    209,  // SOCKET_TIMEOUT
    210,  // NETWORK_ERROR
    225,  // NO_ZOOKEEPER
    236,  // ABORTED
    241,  // MEMORY_LIMIT_EXCEEDED
    242,  // TABLE_IS_READ_ONLY
    243,  // NOT_ENOUGH_SPACE
    252,  // TOO_MANY_PARTS (merges are behind; but see `classify`)
    279,  // ALL_CONNECTION_TRIES_FAILED
    285,  // TOO_FEW_LIVE_REPLICAS
    286,  // UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE
    319,  // UNKNOWN_STATUS_OF_INSERT
    394,  // QUERY_WAS_CANCELLED
    425,  // SYSTEM_ERROR
    439,  // CANNOT_SCHEDULE_TASK
    473,  // DEADLOCK_AVOIDED
    497,  // ACCESS_DENIED
    516,  // AUTHENTICATION_FAILED
    999,  // KEEPER_EXCEPTION
    1000, // POCO_EXCEPTION
];

/// Transient or rejection. Only an exception ClickHouse answered with counts as a rejection,
/// and not when its code is one of [`TRANSIENT_CODES`]: connection failures, timeouts and
/// answers without an exception code (a proxy's 502, say) are transient. TOO_MANY_PARTS is a
/// rejection when it is about the insert itself (rows of more than
/// `max_partitions_per_insert_block` months in one insert, which halving resolves), and
/// transient when merges are behind.
pub fn classify(error: &clickhouse::error::Error) -> Failure {
    let clickhouse::error::Error::BadResponse(text) = error else {
        return Failure::Transient;
    };
    let Some(code) = exception_code(text) else {
        return Failure::Transient;
    };
    let per_insert_partitions = code == 252 && text.contains("partitions for single INSERT");
    if TRANSIENT_CODES.contains(&code) && !per_insert_partitions {
        return Failure::Transient;
    }
    Failure::Rejected(text.clone())
}

/// The `NNN` of `Code: NNN. DB::Exception: …`.
fn exception_code(text: &str) -> Option<u32> {
    let at = text.find("Code: ")? + "Code: ".len();
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Publishes the messages the processor gives up on to the pipeline's dead-letter stream,
/// creating that stream the first time (and again after a failed publish).
pub struct DeadLetters {
    js: jetstream::Context,
    config: RuntimeConfig,
    stream_ready: AtomicBool,
}

impl DeadLetters {
    pub fn new(js: jetstream::Context, config: RuntimeConfig) -> Self {
        Self {
            js,
            config,
            stream_ready: AtomicBool::new(false),
        }
    }

    /// Publishes `message`'s payload as a dead letter and waits for the dead-letter stream's
    /// acknowledgement. Returns the subject it went to, and whether the stream held it
    /// already.
    async fn publish(
        &self,
        message: &Message,
        poison: &Poison,
    ) -> Result<(String, bool), async_nats::Error> {
        let outcome = self.try_publish(message, poison).await;
        if outcome.is_err() {
            // Perhaps the stream is gone: make sure of it before the next dead letter.
            self.stream_ready.store(false, Ordering::Relaxed);
        }
        outcome
    }

    async fn try_publish(
        &self,
        message: &Message,
        poison: &Poison,
    ) -> Result<(String, bool), async_nats::Error> {
        if !self.stream_ready.load(Ordering::Relaxed) {
            stream::ensure_dead_letter_stream(&self.js, &self.config).await?;
            self.stream_ready.store(true, Ordering::Relaxed);
        }
        let info = message.info()?;
        // The site and id of the envelope; a payload that is not an envelope names none, even
        // if it holds a field called site_id.
        let envelope = (poison.kind != dead_letter::NOT_AN_EVENT)
            .then(|| serde_json::from_slice::<SiteAndId>(&message.payload).ok())
            .flatten();
        let subject = naming::dead_letter_subject(
            self.config.name(),
            envelope.as_ref().and_then(|e| e.site_id.as_deref()),
        );
        let mut headers = HeaderMap::new();
        headers.insert(dead_letter::REASON, header_text(&poison.reason));
        headers.insert(dead_letter::KIND, poison.kind);
        headers.insert(
            dead_letter::ORIGINAL_SUBJECT,
            header_text(message.subject.as_str()),
        );
        headers.insert(dead_letter::ORIGINAL_STREAM, info.stream);
        headers.insert(
            dead_letter::ORIGINAL_SEQUENCE,
            info.stream_sequence.to_string(),
        );
        headers.insert(dead_letter::DELIVERIES, info.delivered.to_string());
        if let Some(id) = envelope.and_then(|e| e.event_id) {
            headers.insert(dead_letter::EVENT_ID, id.to_string());
        }
        // A message dead-lettered twice (its ack was lost) is stored once.
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("{}:{}", info.stream, info.stream_sequence),
        );
        let ack = self
            .js
            .publish_with_headers(subject.clone(), headers, message.payload.clone())
            .await?
            .await?;
        Ok((subject, ack.duplicate))
    }
}

/// What a dead letter's subject and headers need from a payload that may not be an envelope.
#[derive(serde::Deserialize)]
struct SiteAndId {
    site_id: Option<String>,
    event_id: Option<Uuid>,
}

/// `text` as one header line: control characters become spaces, at most 1024 bytes.
fn header_text(text: &str) -> String {
    let mut line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.len() > 1024 {
        let mut end = 1024;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use clickhouse::error::Error;

    #[test]
    fn only_answered_data_errors_are_rejections() {
        let rejected = |text: &str| classify(&Error::BadResponse(text.into()));
        assert_eq!(
            rejected("Code: 469. DB::Exception: Constraint `c` for table t is violated at row 2. (VIOLATED_CONSTRAINT) (version 26.9.2.1)"),
            Failure::Rejected("Code: 469. DB::Exception: Constraint `c` for table t is violated at row 2. (VIOLATED_CONSTRAINT) (version 26.9.2.1)".into())
        );
        assert!(matches!(
            rejected(
                "Code: 252. DB::Exception: Too many partitions for single INSERT block (more than 100). (TOO_MANY_PARTS)"
            ),
            Failure::Rejected(_)
        ));
        for transient in [
            "Code: 252. DB::Exception: Too many parts (3001 with average size of 1 KiB) in table 't'. Merges are processing significantly slower than inserts. (TOO_MANY_PARTS)",
            "Code: 241. DB::Exception: Memory limit (total) exceeded. (MEMORY_LIMIT_EXCEEDED)",
            "Code: 60. DB::Exception: Table tally_web.events does not exist. (UNKNOWN_TABLE)",
            "Code: 497. DB::Exception: default: Not enough privileges. (ACCESS_DENIED)",
            "502 Bad Gateway",
            "",
        ] {
            assert_eq!(rejected(transient), Failure::Transient, "{transient}");
        }
        assert_eq!(classify(&Error::TimedOut), Failure::Transient);
        assert_eq!(
            classify(&Error::Network("connection refused".into())),
            Failure::Transient
        );
    }

    #[test]
    fn envelopes_no_table_can_hold_are_poison() {
        let envelope = |ts: i64| {
            format!(
                r#"{{"event_id":"0193a7e4-5b1c-7d2e-8f00-1234567890ab","site_id":"shop","event_type":"x",
                   "timestamp_ms":{ts},"received_at_ms":1780000000000,"properties":{{}}}}"#
            )
        };
        assert!(decode(envelope(1_780_000_000_000).as_bytes()).is_ok());
        assert!(decode(envelope(LATEST_MS).as_bytes()).is_ok());
        for ts in [-1, LATEST_MS + 1, i64::MAX, i64::MIN] {
            let poison = decode(envelope(ts).as_bytes()).unwrap_err();
            assert_eq!(poison.kind, dead_letter::INVALID_EVENT, "{ts}");
        }
        for junk in [
            &b"not json"[..],
            b"{}",
            b"[1]",
            br#"{"event_id":"nope"}"#,
            b"\xff",
        ] {
            assert_eq!(
                decode(junk).unwrap_err().kind,
                dead_letter::NOT_AN_EVENT,
                "{junk:?}"
            );
        }
    }

    #[test]
    fn redelivery_delays_double_up_to_five_seconds() {
        let delays: Vec<u128> = [1, 2, 3, 4, 7, 8, 1000, i64::MAX]
            .into_iter()
            .map(|d| nak_delay(d).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 5000, 5000, 5000, 5000]);
        assert_eq!(nak_delay(0), MIN_BACKOFF);
    }

    #[test]
    fn header_values_are_one_bounded_line() {
        assert_eq!(header_text("a\r\nb\tc"), "a  b c");
        let long = "é".repeat(1000);
        let cut = header_text(&long);
        assert!(cut.len() <= 1024 && cut.chars().all(|c| c == 'é'));
    }
}
