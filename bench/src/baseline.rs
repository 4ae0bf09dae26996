//! The physical ceilings, measured in the same run on the same servers:
//! - JetStream: async publishes of the collector's envelopes (with `Nats-Msg-Id`, so the
//!   server's duplicate tracking costs the same) from one connection, with the collector's
//!   default window of unacknowledged publishes, to a stream configured like the pipeline's;
//! - ClickHouse: RowBinary inserts (the `clickhouse` crate) of the same rows, in the
//!   processor's batch size, into a copy of the pipeline schema (events plus the four
//!   rollup views), and into a bare `events` table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use serde::Serialize;
use tally_contracts::{Enrichment, Event, EventRow, schema};
use uuid::Uuid;

use crate::generate::{Gen, now_ms};
use crate::load::{self, Pace, Pacer};

const STREAM: &str = "BENCH_BASELINE";
/// The collector's default `maxInFlightPublishes`.
pub const PUBLISH_WINDOW: usize = 8192;

#[derive(Debug, Clone, Serialize)]
pub struct Rate {
    pub what: String,
    pub items: u64,
    pub seconds: f64,
    pub per_second: f64,
    /// Cores used meanwhile, per process.
    pub cpu: Vec<crate::memory::CpuUse>,
}

impl Rate {
    fn new(what: impl Into<String>, items: u64, elapsed: Duration) -> Self {
        Self {
            what: what.into(),
            items,
            seconds: elapsed.as_secs_f64(),
            per_second: items as f64 / elapsed.as_secs_f64(),
            cpu: Vec::new(),
        }
    }
}

/// Envelopes as the collector serialises them.
pub fn envelopes(sites: &[String], n: usize) -> Vec<Event> {
    let mut generator = Gen::new(7);
    let now = now_ms();
    (0..n).map(|_| generator.envelope(sites, now)).collect()
}

/// A JetStream context on a new connection (with at most `window` unacknowledged publishes,
/// if given), and a fresh stream for the ceilings, configured like the pipeline's (file
/// storage, 2 min duplicate window).
async fn connect(nats_url: &str, window: Option<usize>) -> anyhow::Result<jetstream::Context> {
    let client = async_nats::ConnectOptions::new()
        .name("tally-bench")
        .connect(nats_url)
        .await
        .context("cannot connect to NATS")?;
    let mut builder = jetstream::ContextBuilder::new().timeout(Duration::from_secs(5));
    if let Some(window) = window {
        builder = builder
            .max_ack_inflight(window)
            .backpressure_on_inflight(true);
    }
    let js = builder.build(client);
    let _ = js.delete_stream(STREAM).await;
    js.create_stream(stream::Config {
        name: STREAM.to_owned(),
        subjects: vec!["bench.baseline.>".to_owned()],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        max_age: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .context("cannot create the baseline stream")?;
    Ok(js)
}

/// The envelopes of `n` events, serialised, with the subjects they go to.
fn payloads(sites: &[String], n: usize) -> Vec<(async_nats::Subject, bytes::Bytes)> {
    envelopes(sites, n)
        .iter()
        .map(|e| {
            (
                format!("bench.baseline.{}", e.site_id).into(),
                serde_json::to_vec(e).expect("an event serialises").into(),
            )
        })
        .collect()
}

/// Async JetStream publishes for `duration`.
pub async fn jetstream(
    nats_url: &str,
    sites: &[String],
    duration: Duration,
) -> anyhow::Result<Rate> {
    let js = connect(nats_url, Some(PUBLISH_WINDOW)).await?;

    let payloads = payloads(sites, 4096);
    let mut acks = FuturesUnordered::new();
    let mut sent = 0u64;
    let mut acked = 0u64;
    let start = Instant::now();
    let end = start + duration;
    let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
    while Instant::now() < end {
        // Check the clock every 256 publishes.
        for _ in 0..256 {
            let (subject, payload) = &payloads[sent as usize % payloads.len()];
            let message = PublishMessage::build()
                .payload(payload.clone())
                .message_id(&*Uuid::now_v7().hyphenated().encode_lower(&mut id));
            let ack = js
                .send_publish(subject.clone(), message)
                .await
                .context("publish failed")?;
            acks.push(ack.into_future());
            sent += 1;
            while acks.len() >= PUBLISH_WINDOW {
                if let Some(result) = acks.next().await {
                    result.context("publish not acknowledged")?;
                    acked += 1;
                }
            }
        }
    }
    while let Some(result) = acks.next().await {
        result.context("publish not acknowledged")?;
        acked += 1;
    }
    let elapsed = start.elapsed();
    let _ = js.delete_stream(STREAM).await;
    Ok(Rate::new(
        "JetStream async publish (1 connection, 8192 in flight)",
        acked,
        elapsed,
    ))
}

/// JetStream's own latency for the single-event shape, the floor under the collector's (it
/// answers only once JetStream acknowledged): `publishers` tasks on one connection, each
/// publishing one envelope (with `Nats-Msg-Id`) and awaiting its acknowledgement before the
/// next, at `rate` publishes/s in all, paced like the HTTP load (`load::Pacer`).
pub async fn jetstream_latency(
    nats_url: &str,
    sites: &[String],
    rate: f64,
    publishers: usize,
    duration: Duration,
) -> anyhow::Result<Histogram<u64>> {
    let js = connect(nats_url, None).await?;
    let payloads = Arc::new(payloads(sites, 4096));
    let pacer = Pacer::new(Pace::Open { rate }, duration);
    let tasks: Vec<_> = (0..publishers)
        .map(|index| {
            let (js, payloads, pacer) = (js.clone(), payloads.clone(), pacer.clone());
            tokio::spawn(async move {
                let mut latency = load::histogram();
                let mut overdue = 0;
                let mut k = index;
                let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
                pacer.started().await;
                while let Some(sent_from) = pacer.next(&mut overdue).await {
                    let (subject, payload) = &payloads[k % payloads.len()];
                    k += publishers;
                    let message = PublishMessage::build()
                        .payload(payload.clone())
                        .message_id(&*Uuid::now_v7().hyphenated().encode_lower(&mut id));
                    let acked = match js.send_publish(subject.clone(), message).await {
                        Ok(ack) => ack.await.is_ok(),
                        Err(_) => false,
                    };
                    if !acked {
                        anyhow::bail!("a publish was not acknowledged");
                    }
                    latency.saturating_record((sent_from.elapsed().as_micros() as u64).max(1));
                }
                Ok(latency)
            })
        })
        .collect();
    let mut total = load::histogram();
    for task in tasks {
        total
            .add(task.await.context("a publisher panicked")??)
            .expect("same bounds");
    }
    let _ = js.delete_stream(STREAM).await;
    Ok(total)
}

/// How the ClickHouse baseline inserts.
pub struct InsertMode {
    pub with_rollups: bool,
    pub validation: bool,
    pub compression: bool,
    /// `parallel_view_processing = 1`: the four views of one insert run in parallel.
    pub parallel_views: bool,
}

/// Sequential inserts of `batch` rows for `duration`, into a fresh database.
pub async fn clickhouse(
    clickhouse_url: &str,
    sites: &[String],
    batch: usize,
    duration: Duration,
    mode: &InsertMode,
) -> anyhow::Result<Rate> {
    let db = "tally_bench_baseline";
    let admin = clickhouse::Client::default().with_url(clickhouse_url);
    admin
        .query(&format!("DROP DATABASE IF EXISTS `{db}` SYNC"))
        .execute()
        .await?;
    for statement in schema::migrations_table(db) {
        admin.query(&statement).execute().await?;
    }
    for migration in schema::migrations(db) {
        for statement in &migration.statements {
            let is_view = statement.contains("MATERIALIZED VIEW");
            if is_view && !mode.with_rollups {
                continue;
            }
            admin.query(statement).execute().await?;
        }
    }
    let client = clickhouse::Client::default()
        .with_url(clickhouse_url)
        .with_database(db)
        .with_validation(mode.validation)
        .with_compression(if mode.compression {
            clickhouse::Compression::Lz4
        } else {
            clickhouse::Compression::None
        })
        .with_setting(
            "parallel_view_processing",
            if mode.parallel_views { "1" } else { "0" },
        );
    let events = envelopes(sites, batch);
    let start = Instant::now();
    let mut rows = 0u64;
    while start.elapsed() < duration {
        insert_rows(&client, &events).await?;
        rows += events.len() as u64;
    }
    let elapsed = start.elapsed();
    admin
        .query(&format!("DROP DATABASE IF EXISTS `{db}` SYNC"))
        .execute()
        .await?;
    Ok(Rate::new(
        format!(
            "ClickHouse insert, {} rows per insert, {}{}{}{}",
            batch,
            if mode.with_rollups {
                "events + 4 rollup views"
            } else {
                "events table only"
            },
            if mode.validation {
                ", RowBinaryWithNamesAndTypes (validated)"
            } else {
                ", RowBinary"
            },
            if mode.compression { ", LZ4" } else { "" },
            if mode.parallel_views {
                ", parallel views"
            } else {
                ""
            },
        ),
        rows,
        elapsed,
    ))
}

async fn insert_rows(client: &clickhouse::Client, events: &[Event]) -> anyhow::Result<()> {
    let mut insert = client.insert::<EventRow<'_>>(schema::EVENTS).await?;
    for event in events {
        insert
            .write(&EventRow::new(event, &Enrichment::default()))
            .await?;
    }
    insert.end().await?;
    Ok(())
}
