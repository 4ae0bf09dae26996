//! The row of the `events` table, column for column (behind the `event-row` feature, which
//! brings the `clickhouse` crate): what the processor inserts, and what the bench's
//! ClickHouse ceiling inserts to measure the same work. It borrows from the decoded
//! envelope and its [`Enrichment`], so a batch is written without copying its strings.

use std::sync::Arc;

use clickhouse::Row;
use serde::Serialize;
use uuid::Uuid;

use crate::Event;

/// What a user agent says about the visitor's software (the processor's parser fills it;
/// empty strings when unknown).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Agent {
    pub browser: String,
    /// The browser's major version.
    pub browser_version: String,
    pub os: String,
    /// The operating system's major version.
    pub os_version: String,
    /// `desktop`, `mobile` or `tablet`; empty without a user agent.
    pub device: &'static str,
    /// A known crawler, spider or monitoring agent.
    pub bot: bool,
}

/// The columns the processor derives from an event (migration 3 of [`crate::schema`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Enrichment {
    /// Shared: the parser's cache hands the same agent to every event of a browser.
    pub agent: Arc<Agent>,
    pub referrer_host: String,
    pub source: String,
    pub channel: &'static str,
    pub utm_source: String,
    pub utm_medium: String,
    pub utm_campaign: String,
    pub utm_term: String,
    pub utm_content: String,
}

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
    browser: &'a str,
    browser_version: &'a str,
    os: &'a str,
    os_version: &'a str,
    device: &'a str,
    screen_width: u16,
    screen_height: u16,
    referrer_host: &'a str,
    source: &'a str,
    channel: &'a str,
    utm_source: &'a str,
    utm_medium: &'a str,
    utm_campaign: &'a str,
    utm_term: &'a str,
    utm_content: &'a str,
}

impl<'a> EventRow<'a> {
    /// The row of `e`; a bot flag from either the collector or the user agent marks it.
    pub fn new(e: &'a Event, x: &'a Enrichment) -> Self {
        let agent = &*x.agent;
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
            is_bot: e.bot || agent.bot,
            browser: &agent.browser,
            browser_version: &agent.browser_version,
            os: &agent.os,
            os_version: &agent.os_version,
            device: agent.device,
            screen_width: e.screen_width,
            screen_height: e.screen_height,
            referrer_host: &x.referrer_host,
            source: &x.source,
            channel: x.channel,
            utm_source: &x.utm_source,
            utm_medium: &x.utm_medium,
            utm_campaign: &x.utm_campaign,
            utm_term: &x.utm_term,
            utm_content: &x.utm_content,
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
            if let Some(rest) = statement.split(" ADD COLUMN IF NOT EXISTS ").nth(1) {
                columns.push(rest.split_whitespace().next().unwrap());
            }
        }
        assert_eq!(columns, <EventRow<'static> as Row>::COLUMN_NAMES);
    }
}
