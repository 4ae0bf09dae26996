//! Writes events to ClickHouse: one insert per batch, and the look-up that tells which
//! events of a redelivered batch are stored already. What a failed call means for the
//! events it carried is [`failure`]'s to say.

use std::collections::HashSet;
use std::time::Duration;

use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};
use tally_contracts::{Event, schema::EVENTS};
use uuid::Uuid;

mod failure;

pub use failure::{Failure, classify};

/// One row of the `events` table, borrowing from the decoded envelope: what the processor
/// inserts, column for column (a unit test checks it against the DDL).
#[derive(Row, Serialize)]
pub struct EventRow<'a> {
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
}

impl Store {
    /// `timeout` bounds each insert, so that a hung insert cannot outlive the ack wait.
    ///
    /// Inserts use plain `RowBinary` (the crate's validation off): with validation on, the
    /// crate fetches the table's schema with a `DESCRIBE` and then sends
    /// `RowBinaryWithNamesAndTypes`, checking every value of every row against it on the
    /// processor's CPU. [`EventRow`] mirrors the `events` DDL in `tally_contracts::schema`
    /// column for column, and the end-to-end tests read every column back.
    pub fn new(client: Client, timeout: Duration) -> Self {
        Self {
            client: client.with_validation(false),
            timeout,
        }
    }

    /// Inserts `events` as one block. The materialized views update the rollups from the
    /// same block.
    pub async fn insert(&self, events: &[&Event]) -> clickhouse::error::Result<()> {
        let mut insert = self
            .client
            .insert::<EventRow<'_>>(EVENTS)
            .await?
            .with_timeouts(Some(self.timeout), Some(self.timeout));
        for event in events {
            insert.write(&EventRow::from(*event)).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// With validation off nothing checks the row against the table at run time: the row's
    /// columns must be exactly the `events` columns of the schema.
    #[test]
    fn the_row_has_every_column_of_the_events_table() {
        let ddl = &tally_contracts::schema::migrations("db")[0].statements[0];
        let body = &ddl[ddl.find('(').unwrap() + 1..ddl.find("INDEX").unwrap()];
        let columns: Vec<&str> = body
            .split(',')
            .filter_map(|c| c.split_whitespace().next())
            // The comma inside `DateTime64(3, 'UTC')` leaves a piece that names no column.
            .filter(|name| name.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .collect();
        assert_eq!(columns, <EventRow<'static> as Row>::COLUMN_NAMES);
    }
}
