//! Writes events to ClickHouse: one insert per batch, and the look-up that tells which
//! events of a redelivered batch are stored already. What a failed call means for the
//! events it carried is [`failure`]'s to say.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use clickhouse::{Client, Row};
use serde::Deserialize;
use tally_contracts::{Enrichment, Event, EventRow, schema::EVENTS};
use uuid::Uuid;

use crate::enrich::Enricher;

mod failure;

pub use failure::{Failure, classify};

#[derive(Row, Deserialize)]
struct IdRow {
    #[serde(with = "clickhouse::serde::uuid")]
    event_id: Uuid,
}

/// The pipeline database's writer.
#[derive(Clone)]
pub struct Store {
    client: Client,
    timeout: Duration,
    /// `None` stores the enrichment columns empty (`--no-enrichment`, for the bench's
    /// comparison).
    enricher: Option<Arc<Enricher>>,
}

impl Store {
    /// `timeout` bounds each insert, so that a hung insert cannot outlive the ack wait.
    ///
    /// Inserts use plain `RowBinary` (the crate's validation off): with validation on, the
    /// crate fetches the table's schema with a `DESCRIBE` and then sends
    /// `RowBinaryWithNamesAndTypes`, checking every value of every row against it on the
    /// processor's CPU. [`EventRow`] mirrors the `events` DDL of `tally_contracts::schema`
    /// column for column (a unit test there checks it), and the end-to-end tests read every
    /// column back.
    pub fn new(client: Client, timeout: Duration, enricher: Option<Arc<Enricher>>) -> Self {
        Self {
            client: client.with_validation(false),
            timeout,
            enricher,
        }
    }

    /// Enriches `events` and inserts them as one block. The materialized views update the
    /// rollups from the same block.
    pub async fn insert(&self, events: &[&Event]) -> clickhouse::error::Result<()> {
        let enrichments: Vec<Enrichment> = match &self.enricher {
            Some(enricher) => events.iter().map(|e| enricher.enrich(e)).collect(),
            None => vec![Enrichment::default(); events.len()],
        };
        let mut insert = self
            .client
            .insert::<EventRow<'_>>(EVENTS)
            .await?
            .with_timeouts(Some(self.timeout), Some(self.timeout));
        for (event, enrichment) in events.iter().zip(&enrichments) {
            insert.write(&EventRow::new(event, enrichment)).await?;
        }
        insert.end().await
    }

    /// Which of `events` the `events` table holds already.
    pub async fn stored_ids(&self, events: &[&Event]) -> clickhouse::error::Result<HashSet<Uuid>> {
        if events.is_empty() {
            return Ok(HashSet::new());
        }
        let ids: Vec<String> = events.iter().map(|e| e.event_id.to_string()).collect();
        let mut sites: Vec<&str> = events.iter().map(|e| e.site_id.as_str()).collect();
        sites.sort_unstable();
        sites.dedup();
        let (min, max) = events.iter().fold((i64::MAX, i64::MIN), |(lo, hi), e| {
            (lo.min(e.timestamp_ms), hi.max(e.timestamp_ms))
        });
        // The site and time bounds let ClickHouse skip partitions and granules; the bloom
        // filter index on event_id does the rest.
        let rows: Vec<IdRow> = self
            .client
            .query(&format!(
                "SELECT event_id FROM {EVENTS} WHERE site_id IN ? \
                 AND timestamp BETWEEN fromUnixTimestamp64Milli(?) AND fromUnixTimestamp64Milli(?) \
                 AND event_id IN ?"
            ))
            .bind(sites)
            .bind(min)
            .bind(max)
            .bind(ids)
            .fetch_all()
            .await?;
        Ok(rows.into_iter().map(|r| r.event_id).collect())
    }
}
