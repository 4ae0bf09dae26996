//! The ClickHouse read client: the pipeline's database at `spec.clickhouse.url`, the queries
//! behind the stats API (their SQL is `tally_contracts::schema`'s, documented in the README),
//! and the check that readiness runs. Every query is timed into the metrics by name and outcome.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clickhouse::Row;
use serde::{Deserialize, Serialize};
use tally_contracts::RuntimeConfig;
use tally_contracts::schema::{
    EVENTS, EVENTS_HOURLY, PAGES_HOURLY, PATH_DAILY, ROLLUP_COVERAGE, SEARCH_TEXT, SESSIONS,
    SITE_DAILY, top_paths_sql, totals_sql,
};

use crate::api::ApiError;
use crate::metrics::{Metrics, ReadQuery};
use crate::query::rollup::Coverage;
use crate::query::sql::{Compiled, Param};

/// One path's page views on a day.
#[derive(Debug, Serialize, Deserialize, PartialEq, Row, utoipa::ToSchema)]
pub struct PathViews {
    pub path: String,
    pub views: u64,
}

/// One event of `/v1/events/recent`.
#[derive(Debug, Serialize, Deserialize, Row, utoipa::ToSchema)]
pub struct RecentEvent {
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: uuid::Uuid,
    /// RFC 3339, UTC, milliseconds.
    pub timestamp: String,
    pub event_type: String,
    pub path: String,
    pub url: String,
    pub referrer: String,
    pub title: String,
    pub user_id: String,
    pub visitor_id: String,
    pub session_id: String,
    /// The properties' JSON text.
    pub properties: String,
    pub browser: String,
    pub os: String,
    pub device: String,
    pub source: String,
    pub channel: String,
}

/// One session of `/v1/sessions`.
#[derive(Debug, Serialize, Deserialize, Row, utoipa::ToSchema)]
pub struct SessionSummary {
    pub session_id: String,
    /// Its first and last event, RFC 3339, UTC, milliseconds.
    pub started_at: String,
    pub ended_at: String,
    /// From the first event to the last, in seconds.
    pub duration: f64,
    pub events: u64,
    pub page_views: u64,
    pub entry_page: String,
    pub exit_page: String,
    /// The visitor identity of its first event (`u:<user_id>`, `v:<visitor_id>`, …).
    pub visitor: String,
    pub source: String,
    pub channel: String,
    pub browser: String,
    pub device: String,
}

/// A row of the sessions list: the number of sessions of all pages, then the session.
#[derive(Debug, Deserialize, Row)]
struct SessionRow {
    total: u64,
    session: SessionSummary,
}

/// The columns of [`RecentEvent`], from `events` selected with `timestamp AS at` (so that
/// the text `timestamp` shadows no column where the statement compares times).
const EVENT_COLUMNS: &str = "event_id, replaceOne(toString(at), ' ', 'T') || 'Z' AS timestamp, \
     event_type, path, url, referrer, title, user_id, visitor_id, session_id, properties, \
     browser, os, device, source, channel";

/// A site's totals on a day.
#[derive(Debug, Deserialize, Row)]
pub struct Totals {
    pub total_views: u64,
    pub unique_users: u64,
    pub unique_visitors: u64,
}

/// The longest a stats query may run in ClickHouse (its `max_execution_time`).
pub const MAX_READ_SECONDS: u32 = 10;

/// The most memory one `/v1/query` statement may take in ClickHouse.
pub const MAX_QUERY_MEMORY: u64 = 2 << 30;
/// The most rows one `/v1/query` statement may produce (a page is at most 10,000).
pub const MAX_RESULT_ROWS: u64 = 100_000;

/// A refused statement as the client sees it: what the query asked for is a 400, anything
/// else (ClickHouse down, a timeout) a 503.
fn query_error(e: clickhouse::error::Error) -> ApiError {
    let text = e.to_string();
    tracing::warn!(error = %text, "query failed");
    // (TOO_MANY_ROWS also matches TOO_MANY_ROWS_OR_BYTES.)
    const REFUSED_FOR_THE_QUERY: [&str; 3] = [
        "CANNOT_COMPILE_REGEXP",
        "MEMORY_LIMIT_EXCEEDED",
        "TOO_MANY_ROWS",
    ];
    if REFUSED_FOR_THE_QUERY.iter().any(|code| text.contains(code)) {
        ApiError::InvalidBody(vec![crate::query::request::Problem {
            pointer: String::new(),
            message: format!("ClickHouse refused the query: {text}"),
        }])
    } else {
        ApiError::Unavailable(format!("the query store did not answer: {text}"))
    }
}

/// The tables the stats API reads; readiness waits until they all exist.
const READ_TABLES: [&str; 2] = [SITE_DAILY, PATH_DAILY];

/// Reads a pipeline's database.
pub struct Store {
    client: clickhouse::Client,
    db: String,
    metrics: Arc<Metrics>,
    /// From when `events_hourly` and `pages_hourly` hold every event (Unix ms), once both
    /// are recorded: it never changes after.
    coverage: tokio::sync::OnceCell<(i64, i64)>,
    /// Per time zone: whether it is a whole number of hours from UTC at every time.
    whole_hour_zones: Mutex<HashMap<String, bool>>,
}

impl Store {
    /// The pipeline's database at its `spec.clickhouse.url`.
    pub fn new(config: &RuntimeConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            client: tally_contracts::credentials::clickhouse_client(config)
                .expect("the TLS material was checked when the configuration loaded")
                // A read that runs longer is stopped by ClickHouse and answered with 503,
                // so that a slow store never holds requests open without end.
                .with_setting("max_execution_time", MAX_READ_SECONDS.to_string()),
            db: config.database(),
            metrics,
            coverage: tokio::sync::OnceCell::new(),
            whole_hour_zones: Mutex::new(HashMap::new()),
        }
    }

    /// What decides whether a rollup answers a query of a site in `time_zone`. A rollup
    /// not yet created or recorded (a processor of an older version) answers nothing.
    pub async fn coverage(&self, time_zone: &str) -> Coverage {
        let since = self
            .coverage
            .get_or_try_init(|| async {
                let rows: Vec<(String, i64)> = self
                    .client
                    .query(&format!(
                        "SELECT toString(rollup_table), toUnixTimestamp64Milli(max(since)) \
                         FROM `{}`.{ROLLUP_COVERAGE} GROUP BY rollup_table",
                        self.db
                    ))
                    .fetch_all()
                    .await
                    .map_err(|e| {
                        // (Before migration 6, on every such query: not worth a warning.)
                        tracing::debug!(error = %e, "could not read the rollups' coverage");
                        e.to_string()
                    })?;
                let of = |table: &str| rows.iter().find(|(t, _)| t == table).map(|(_, ms)| *ms);
                match (of(EVENTS_HOURLY), of(PAGES_HOURLY)) {
                    (Some(events), Some(pages)) => Ok((events, pages)),
                    _ => Err("not recorded yet".to_owned()),
                }
            })
            .await
            .ok()
            .copied();
        Coverage {
            events_since_ms: since.map(|s| s.0),
            pages_since_ms: since.map(|s| s.1),
            whole_hour_zone: self.whole_hour_zone(time_zone).await,
        }
    }

    /// Whether `time_zone`'s offset from UTC is a whole number of hours at every hour from
    /// 2000 to 2040, as ClickHouse's time zone database has it (asked once per zone).
    async fn whole_hour_zone(&self, time_zone: &str) -> bool {
        if let Some(known) = self.whole_hour_zones.lock().unwrap().get(time_zone) {
            return *known;
        }
        let answer = self
            .client
            .query(
                "SELECT toBool(countIf(timeZoneOffset(toTimeZone(t, {tz:String})) % 3600 != 0) = 0) \
                 FROM (SELECT toDateTime('2000-01-01 00:00:00', 'UTC') + toIntervalHour(number) AS t \
                       FROM numbers(24 * 14610))",
            )
            .param("tz", time_zone)
            .fetch_one::<bool>()
            .await;
        match answer {
            Ok(whole) => {
                self.whole_hour_zones
                    .lock()
                    .unwrap()
                    .insert(time_zone.to_owned(), whole);
                whole
            }
            // Asked again next time; meanwhile the raw events answer.
            Err(e) => {
                tracing::warn!(error = %e, time_zone, "could not read the time zone's offsets");
                false
            }
        }
    }

    /// Page views, unique users and unique visitors of `site` on `day` (`YYYY-MM-DD`); zeros
    /// for a day without data.
    pub async fn totals(&self, site: &str, day: &str) -> Result<Totals, clickhouse::error::Error> {
        let query = self
            .client
            .query(&totals_sql(&self.db))
            .param("site", site)
            .param("day", day)
            .fetch_one::<Totals>();
        self.timed(ReadQuery::Totals, query).await
    }

    /// The `limit` paths of `site` with the most page views on `day`, most viewed first (ties
    /// by path).
    pub async fn top_paths(
        &self,
        site: &str,
        day: &str,
        limit: u32,
    ) -> Result<Vec<PathViews>, clickhouse::error::Error> {
        let query = self
            .client
            .query(&top_paths_sql(&self.db))
            .param("site", site)
            .param("day", day)
            .param("limit", limit)
            .fetch_all::<PathViews>();
        self.timed(ReadQuery::TopPaths, query).await
    }

    /// The `limit` newest events of `site`, newest first (bots' included: a live table
    /// shows what arrives).
    pub async fn recent(
        &self,
        site: &str,
        limit: u32,
    ) -> Result<Vec<RecentEvent>, clickhouse::error::Error> {
        let query = self
            .client
            .query(&format!(
                "SELECT {EVENT_COLUMNS} \
                 FROM (SELECT *, timestamp AS at FROM `{}`.{EVENTS} WHERE site_id = {{site:String}} \
                       ORDER BY timestamp DESC LIMIT {{limit:UInt32}}) \
                 ORDER BY at DESC",
                self.db
            ))
            .param("site", site)
            .param("limit", limit)
            .fetch_all::<RecentEvent>();
        self.timed(ReadQuery::Recent, query).await
    }

    /// The sessions of `site` that started in `range` (the site's days in `time_zone`), with
    /// an event whose searchable text contains `search` when given, newest first: how many
    /// there are, and the page at `offset`.
    pub async fn sessions(
        &self,
        site: &str,
        time_zone: &str,
        range: crate::query::request::Range,
        search: Option<&str>,
        limit: u32,
        offset: u64,
    ) -> Result<(u64, Vec<SessionSummary>), ApiError> {
        let (from, to, bounds) = crate::sessions::range_bounds(range);
        let db = &self.db;
        let matching = if search.is_some() {
            format!(
                " AND session_id IN (SELECT session_id FROM `{db}`.{EVENTS} \
                 WHERE site_id = {{site:String}} AND timestamp >= {from} AND timestamp < {to} \
                 AND session_id != '' AND {SEARCH_TEXT} LIKE {{search:String}})"
            )
        } else {
            String::new()
        };
        let sql = format!(
            "SELECT count() OVER () AS total, session_id, \
               replaceOne(toString(started), ' ', 'T') || 'Z' AS started_at, \
               replaceOne(toString(ended), ' ', 'T') || 'Z' AS ended_at, \
               dateDiff('millisecond', started, ended) / 1000 AS duration, \
               s_events AS events, s_page_views AS page_views, s_entry AS entry_page, \
               s_exit AS exit_page, s_visitor AS visitor, s_source AS source, \
               s_channel AS channel, s_browser AS browser, s_device AS device \
             FROM (SELECT session_id, min(started_at) AS started, max(ended_at) AS ended, \
                     sum(events) AS s_events, sum(page_views) AS s_page_views, \
                     argMinMerge(entry_page) AS s_entry, argMaxMerge(exit_page) AS s_exit, \
                     argMinMerge(visitor) AS s_visitor, argMinMerge(source) AS s_source, \
                     argMinMerge(channel) AS s_channel, argMinMerge(browser) AS s_browser, \
                     argMinMerge(device) AS s_device \
                   FROM `{db}`.{SESSIONS} WHERE site_id = {{site:String}}{matching} \
                   GROUP BY session_id HAVING started >= {from} AND started < {to}) \
             ORDER BY started DESC, session_id LIMIT {{limit:UInt32}} OFFSET {{offset:UInt64}}"
        );
        // The row's schema is checked against SessionRow's two fields, one a struct; its
        // columns are those of both in order, as RowBinary reads them.
        let mut query = (self.client.clone().with_validation(false))
            .query(&sql)
            .with_setting("readonly", "2")
            .param("site", site)
            .param("tz", time_zone)
            .param("limit", limit)
            .param("offset", offset);
        if let Some(search) = search {
            query = query.param("search", crate::sessions::contains_pattern(search));
        }
        for (name, value) in &bounds {
            query = match value {
                Param::Text(text) => query.param(name, text),
                Param::Int(n) => query.param(name, n),
                Param::Texts(texts) => query.param(name, texts),
            };
        }
        let rows = self
            .timed(ReadQuery::Sessions, query.fetch_all::<SessionRow>())
            .await
            .map_err(query_error)?;
        let total = rows.first().map_or(0, |r| r.total);
        Ok((total, rows.into_iter().map(|r| r.session).collect()))
    }

    /// Every event of `site`'s session `session_id`, oldest first; read from the part of
    /// the site's events between the session's first and last (the `sessions` rollup knows
    /// them), so ClickHouse reads those granules only.
    pub async fn session_events(
        &self,
        site: &str,
        session_id: &str,
    ) -> Result<Vec<RecentEvent>, ApiError> {
        let db = &self.db;
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM (SELECT *, timestamp AS at FROM `{db}`.{EVENTS} \
               WHERE site_id = {{site:String}} AND session_id = {{session:String}} \
                 AND timestamp >= (SELECT min(started_at) FROM `{db}`.{SESSIONS} \
                                   WHERE site_id = {{site:String}} AND session_id = {{session:String}}) \
                 AND timestamp <= (SELECT max(ended_at) FROM `{db}`.{SESSIONS} \
                                   WHERE site_id = {{site:String}} AND session_id = {{session:String}})) \
             ORDER BY at, event_id LIMIT 100000"
        );
        let query = self
            .client
            .query(&sql)
            .with_setting("readonly", "2")
            .param("site", site)
            .param("session", session_id)
            .fetch_all::<RecentEvent>();
        self.timed(ReadQuery::Sessions, query)
            .await
            .map_err(query_error)
    }

    /// The rows of the `events` table.
    pub async fn event_count(&self) -> Result<u64, ApiError> {
        let query = self
            .client
            .query(&format!("SELECT count() FROM `{}`.{EVENTS}", self.db))
            .fetch_one::<u64>();
        self.timed(ReadQuery::Health, query)
            .await
            .map_err(query_error)
    }

    /// Today's date in `time_zone`, as ClickHouse's time zone database has it; a zone it
    /// does not know is a 400 that names it.
    pub async fn today(&self, time_zone: &str) -> Result<time::Date, ApiError> {
        let text: String = self
            .client
            .query("SELECT toString(toDate(now(), {tz:String}))")
            .param("tz", time_zone)
            .fetch_one()
            .await
            .map_err(|e| {
                let text = e.to_string();
                if text.contains("BAD_ARGUMENTS") || text.contains("time zone") {
                    ApiError::InvalidQuery(format!(
                        "the site's timeZone {time_zone:?} is not a time zone ClickHouse knows"
                    ))
                } else {
                    ApiError::Unavailable(format!("the query store did not answer: {text}"))
                }
            })?;
        time::Date::parse(
            &text,
            time::macros::format_description!("[year]-[month]-[day]"),
        )
        .map_err(|_| ApiError::Unavailable(format!("ClickHouse gave today as {text:?}")))
    }

    /// The pipeline's database.
    pub fn database(&self) -> &str {
        &self.db
    }

    /// Runs a compiled `/v1/query` statement (and its row count when asked): the rows as
    /// JSON arrays, read-only, within [`MAX_READ_SECONDS`], [`MAX_QUERY_MEMORY`] and
    /// [`MAX_RESULT_ROWS`]. A statement ClickHouse refuses for what the query asked (a bad
    /// regular expression, too much memory) is the client's 400; one it could not run is a
    /// 503.
    pub async fn run_query(
        &self,
        compiled: &Compiled,
    ) -> Result<(Vec<Vec<serde_json::Value>>, Option<u64>), ApiError> {
        let kind = if compiled.rollup.is_some() {
            ReadQuery::QueryRollup
        } else {
            ReadQuery::Query
        };
        let rows = self.rows_of(kind, compiled);
        let total = async {
            match &compiled.total_sql {
                Some(sql) => {
                    let rows = self.rows(sql, &compiled.params).await?;
                    Ok(rows
                        .first()
                        .and_then(|r| r.first())
                        .and_then(serde_json::Value::as_u64))
                }
                None => Ok(None),
            }
        };
        let (rows, total) = tokio::join!(rows, total);
        Ok((rows?, total.map_err(query_error)?))
    }

    /// Runs `compiled.sql` as [`Store::run_query`] does, timed as `kind`.
    pub async fn rows_of(
        &self,
        kind: ReadQuery,
        compiled: &Compiled,
    ) -> Result<Vec<Vec<serde_json::Value>>, ApiError> {
        self.timed(kind, self.rows(&compiled.sql, &compiled.params))
            .await
            .map_err(query_error)
    }

    async fn rows(
        &self,
        sql: &str,
        params: &[(String, Param)],
    ) -> Result<Vec<Vec<serde_json::Value>>, clickhouse::error::Error> {
        let mut query = self
            .client
            .query(sql)
            .with_setting("readonly", "2")
            .with_setting("max_memory_usage", MAX_QUERY_MEMORY.to_string())
            .with_setting("max_result_rows", MAX_RESULT_ROWS.to_string())
            .with_setting("result_overflow_mode", "throw")
            .with_setting("output_format_json_quote_64bit_integers", "0");
        for (name, value) in params {
            query = match value {
                Param::Text(text) => query.param(name, text),
                Param::Texts(texts) => query.param(name, texts),
                Param::Int(n) => query.param(name, n),
            };
        }
        let mut cursor = query.fetch_bytes("JSONCompactEachRow")?;
        let mut text = Vec::new();
        while let Some(chunk) = cursor.next().await? {
            text.extend_from_slice(&chunk);
        }
        text.split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| {
                serde_json::from_slice(line).map_err(|e| {
                    clickhouse::error::Error::Custom(format!("an answer row is not JSON: {e}"))
                })
            })
            .collect()
    }

    /// `Ok` when ClickHouse answers and the pipeline's rollups exist (the processor creates
    /// them), else why not.
    pub async fn check(&self) -> Result<(), String> {
        let found: Vec<String> = self
            .client
            .query("SELECT name FROM system.tables WHERE database = ? AND name IN (?, ?)")
            .bind(&self.db)
            .bind(READ_TABLES[0])
            .bind(READ_TABLES[1])
            .fetch_all()
            .await
            .map_err(|e| format!("ClickHouse does not answer: {e}"))?;
        let missing: Vec<&str> = READ_TABLES
            .into_iter()
            .filter(|t| !found.iter().any(|f| f == t))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "ClickHouse answers, but {} of database {} do not exist yet \
                 (the processor creates them at start)",
                missing.join(" and "),
                self.db
            ))
        }
    }

    async fn timed<T>(
        &self,
        query: ReadQuery,
        run: impl Future<Output = Result<T, clickhouse::error::Error>>,
    ) -> Result<T, clickhouse::error::Error> {
        let start = Instant::now();
        let result = run.await;
        self.metrics
            .observe_query(query, result.is_ok(), start.elapsed().as_secs_f64());
        result
    }
}
