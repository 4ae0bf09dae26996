//! Writing a batch's events to ClickHouse so that refused events cannot hold up the rest:
//! an insert ClickHouse refuses is halved, and the halves written on their own, until the
//! refused events stand alone; every other event of the batch is stored. Transient failures
//! are retried, with backoff, until ClickHouse confirms or the processor is asked to stop.
//!
//! Every insert is preceded by a look-up of its events' ids, and the events the `events`
//! table holds already are skipped: a retried insert whose outcome was unknown, or a
//! message delivered again, is never counted twice.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use tally_contracts::Event;
use tracing::Instrument as _;
use tracing::field::Empty;

use crate::backoff::{Interrupted, backoff, wait_unless_stopped};
use crate::health::Readiness;
use crate::metrics::{Metrics, Stage};
use crate::store::{Failure, Store, classify};
use crate::trace;

/// A message of the batch that decoded to an event.
pub struct Candidate {
    /// Its index in the batch.
    pub index: usize,
    /// The event it holds.
    pub event: Event,
    /// JetStream delivered it before (it failed then, or its processor died): it is
    /// written apart from first deliveries, so that a refused event costs a small insert.
    pub redelivered: bool,
}

/// Stores `candidates` in as few inserts as possible. Redelivered events (the usual home
/// of a refused one, which always comes back) go in their own insert, the rest in
/// another; an insert ClickHouse refuses is halved until each refused event stands alone.
/// Returns (written, skipped as already stored, refused events by index in `candidates`
/// with ClickHouse's reason).
pub async fn store_isolating_rejections(
    store: &Store,
    metrics: &Metrics,
    readiness: &Readiness,
    candidates: &[Candidate],
    shutdown: &mut Pin<&mut impl Future<Output = ()>>,
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
    let mut backoff = backoff();
    let mut attempt = 0u32;
    while let Some(chunk) = chunks.pop() {
        loop {
            // Until an insert of this batch failed, an event found stored can only have
            // been written before this delivery.
            let Err(e) = write(store, metrics, candidates, &chunk, attempt == 0)
                .await
                .map(|(w, s)| {
                    written += w;
                    skipped += s;
                })
            else {
                readiness.set_storage_ok(true);
                backoff.reset();
                break;
            };
            attempt += 1;
            metrics.count_insert_failure();
            // Its outcome is unknown: the next attempt looks its events up again.
            match classify(&e) {
                Failure::Transient => {
                    readiness.set_storage_ok(false);
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, attempt, retry_in = ?delay, rows = chunk.len(), "writing a batch to ClickHouse failed");
                    wait_unless_stopped(delay, shutdown).await?;
                }
                Failure::Rejected(reason) => {
                    // ClickHouse answered: it is up, the data is at fault.
                    readiness.set_storage_ok(true);
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
    store: &Store,
    metrics: &Metrics,
    candidates: &[Candidate],
    chunk: &[usize],
    nothing_failed_yet: bool,
) -> clickhouse::error::Result<(usize, usize)> {
    let events: Vec<&Event> = chunk.iter().map(|&i| &candidates[i].event).collect();
    let started = Instant::now();
    let lookup = tracing::info_span!(
        "lookup",
        rows = events.len() as i64,
        found = Empty,
        otel.status_code = Empty,
        error = Empty,
    );
    let stored = store
        .stored_ids(&events)
        .instrument(lookup.clone())
        .await
        .inspect_err(|e| trace::record_error(&lookup, e))?;
    lookup.record("found", stored.len() as i64);
    drop(lookup);
    metrics.record_stage(Stage::Lookup, started.elapsed());
    // Neither stored already nor a second copy within the batch (a re-post after the
    // duplicate window, both copies still waiting in the stream).
    let mut seen = HashSet::with_capacity(events.len());
    let fresh: Vec<&Event> = events
        .into_iter()
        .filter(|e| !stored.contains(&e.event_id) && seen.insert(e.event_id))
        .collect();
    if !fresh.is_empty() {
        let started = Instant::now();
        let insert = tracing::info_span!(
            "insert",
            rows = fresh.len() as i64,
            otel.status_code = Empty,
            error = Empty,
        );
        store
            .insert(&fresh)
            .instrument(insert.clone())
            .await
            .inspect_err(|e| trace::record_error(&insert, e))?;
        drop(insert);
        metrics.record_stage(Stage::Insert, started.elapsed());
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
        metrics.count_stored_on_first_delivery(unexpected);
        tracing::warn!(
            events = unexpected,
            "events delivered for the first time were stored already; skipped"
        );
    }
    Ok((fresh.len(), chunk.len() - fresh.len()))
}
