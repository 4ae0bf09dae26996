//! The ClickHouse read client: the pipeline's database at `spec.clickhouse.url`, the queries
//! behind the stats API (their SQL is `tally_contracts::schema`'s, documented in the README),
//! and the check that readiness runs. Every query is timed into the metrics by name and outcome.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use clickhouse::Row;
use serde::{Deserialize, Serialize};
use tally_contracts::RuntimeConfig;
use tally_contracts::schema::{EVENTS, PATH_DAILY, SITE_DAILY, top_paths_sql, totals_sql};

use crate::api::ApiError;
use crate::metrics::{Metrics, ReadQuery};
use crate::query::sql::{Compiled, Param};

/// One path's page views on a day.
#[derive(Debug, Serialize, Deserialize, PartialEq, Row)]
pub struct PathViews {
    pub path: String,
    pub views: u64,
}

/// One event of `/v1/events/recent`.
#[derive(Debug, Serialize, Deserialize, Row)]
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
                "SELECT event_id, replaceOne(toString(at), ' ', 'T') || 'Z' AS timestamp, \
                 event_type, path, url, referrer, title, user_id, visitor_id, session_id, properties, \
                 browser, os, device, source, channel \
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
        let rows = self.rows_of(ReadQuery::Query, compiled);
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
