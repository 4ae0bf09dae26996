//! The row of the `events` table, column for column (behind the `event-row` feature, which
//! brings the `clickhouse` crate): what the processor inserts, and what the bench's
//! ClickHouse ceiling inserts to measure the same work. It borrows from the decoded
//! envelope, so a batch is written without copying its strings.

use clickhouse::Row;
use serde::Serialize;
use uuid::Uuid;

use crate::Event;

/// One row of `events` (see [`crate::schema`]); a unit test checks it against the DDL,
/// since with validation off nothing checks it at run time.
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
    is_bot: bool,
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
            is_bot: e.bot,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_row_has_every_column_of_the_events_table() {
        let migrations = crate::schema::migrations("db");
        let ddl = &migrations[0].statements[0];
        let body = &ddl[ddl.find('(').unwrap() + 1..ddl.find("INDEX").unwrap()];
        let mut columns: Vec<&str> = body
            .split(',')
            .filter_map(|c| c.split_whitespace().next())
            // The comma inside `DateTime64(3, 'UTC')` leaves a piece that names no column.
            .filter(|name| name.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .collect();
        // Columns added by later migrations, in order.
        for statement in migrations.iter().flat_map(|m| &m.statements) {
            if let Some(rest) = statement.split("ADD COLUMN IF NOT EXISTS ").nth(1) {
                columns.push(rest.split_whitespace().next().unwrap());
            }
        }
        assert_eq!(columns, <EventRow<'static> as Row>::COLUMN_NAMES);
    }
}
