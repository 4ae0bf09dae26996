//! The physical ceilings, measured in the same run on the same servers:
//! - JetStream: async publishes of the collector's envelopes (with `Nats-Msg-Id`, so the
//!   server's duplicate tracking costs the same) from one connection, with the collector's
//!   default window of unacknowledged publishes, to a stream configured like the pipeline's;
//! - ClickHouse: RowBinary inserts (the `clickhouse` crate) of the same rows, in the
//!   processor's batch size, into a copy of the pipeline schema (events plus the four
//!   rollup views), and into a bare `events` table.

use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use clickhouse::Row;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use tally_contracts::{Event, schema};
use uuid::Uuid;

use crate::generate::{Gen, now_ms};

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

/// Async JetStream publishes for `duration`.
pub async fn jetstream(
    nats_url: &str,
    sites: &[String],
    duration: Duration,
) -> anyhow::Result<Rate> {
    let client = async_nats::ConnectOptions::new()
        .name("tally-bench")
        .connect(nats_url)
        .await
        .context("cannot connect to NATS")?;
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .max_ack_inflight(PUBLISH_WINDOW)
        .backpressure_on_inflight(true)
        .build(client.clone());
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

    let events = envelopes(sites, 4096);
    let payloads: Vec<(async_nats::Subject, bytes::Bytes)> = events
        .iter()
        .map(|e| {
            (
                format!("bench.baseline.{}", e.site_id).into(),
                serde_json::to_vec(e).expect("an event serialises").into(),
            )
        })
        .collect();
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

/// One row of `events`, as the processor writes it.
#[derive(Row, Serialize)]
struct EventRow<'a> {
    #[serde(with = "clickhouse::serde::uuid")]
    event_id: Uuid,
    site_id: &'a str,
    event_type: &'a str,
    timestamp: i64,
    received_at: i64,
    path: &'a str,
    url: &'a str,
    referrer: &'a str,
    title: &'a str,
    user_id: &'a str,
    visitor_id: &'a str,
    session_id: &'a str,
    properties: &'a str,
}

impl<'a> From<&'a Event> for EventRow<'a> {
    fn from(e: &'a Event) -> Self {
        Self {
            event_id: e.event_id,
            site_id: &e.site_id,
            event_type: &e.event_type,
            timestamp: e.timestamp_ms,
            received_at: e.received_at_ms,
            path: &e.path,
            url: &e.url,
            referrer: &e.referrer,
            title: &e.title,
            user_id: &e.user_id,
            visitor_id: &e.visitor_id,
            session_id: &e.session_id,
            properties: e.properties.get(),
        }
    }
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
        insert.write(&EventRow::from(event)).await?;
    }
    insert.end().await?;
    Ok(())
}
