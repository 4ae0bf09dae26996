//! `GET /v1/stats`: one site's figures for one UTC day, read from the rollups.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use clickhouse::Row;
use serde::{Deserialize, Serialize};
use tally_contracts::RuntimeConfig;
use tally_contracts::schema::{PATH_DAILY, SITE_DAILY};
use time::macros::format_description;
use time::{Date, OffsetDateTime};

use crate::api::ApiError;

/// What the stats handler needs: the configured sites and a ClickHouse client.
pub struct StatsState {
    pub config: RuntimeConfig,
    pub clickhouse: clickhouse::Client,
}

impl StatsState {
    /// Reads the pipeline's database at its `spec.clickhouse.url`.
    pub fn new(config: RuntimeConfig) -> Self {
        let clickhouse =
            clickhouse::Client::default().with_url(&config.pipeline.spec.clickhouse.url);
        Self { config, clickhouse }
    }
}

const DEFAULT_LIMIT: u32 = 10;
const MAX_LIMIT: u32 = 1000;

/// Query string of `/v1/stats`; every value is checked here so errors name the parameter.
#[derive(Debug, Deserialize)]
pub struct StatsQuery {
    site_id: Option<String>,
    date: Option<String>,
    limit: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    pub site_id: String,
    pub date: String,
    pub total_views: u64,
    pub unique_users: u64,
    pub unique_visitors: u64,
    pub top_paths: Vec<PathViews>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Row)]
pub struct PathViews {
    pub path: String,
    pub views: u64,
}

#[derive(Debug, Deserialize, Row)]
struct Totals {
    total_views: u64,
    unique_users: u64,
    unique_visitors: u64,
}

/// The SQL behind the totals; also documented in the README.
pub fn totals_sql(db: &str) -> String {
    format!(
        "SELECT sum(page_views) AS total_views, uniqExactMerge(users) AS unique_users, \
         uniqExactMerge(visitors) AS unique_visitors \
         FROM `{db}`.{SITE_DAILY} WHERE site_id = {{site:String}} AND day = {{day:Date}}"
    )
}

/// The SQL behind `top_paths`; also documented in the README.
pub fn top_paths_sql(db: &str) -> String {
    format!(
        "SELECT path, sum(page_views) AS views FROM `{db}`.{PATH_DAILY} \
         WHERE site_id = {{site:String}} AND day = {{day:Date}} \
         GROUP BY path HAVING views > 0 ORDER BY views DESC, path ASC LIMIT {{limit:UInt32}}"
    )
}

pub async fn get_stats(
    State(state): State<Arc<StatsState>>,
    Query(query): Query<StatsQuery>,
) -> Result<Json<Stats>, ApiError> {
    let site_id = match query.site_id.as_deref() {
        None | Some("") => return Err(ApiError::InvalidQuery("site_id is required".into())),
        Some(id) if state.config.site(id).is_none() => {
            return Err(ApiError::UnknownSite(id.to_owned()));
        }
        Some(id) => id.to_owned(),
    };
    let day = match query.date.as_deref() {
        None | Some("") => OffsetDateTime::now_utc().date(),
        Some(text) => {
            Date::parse(text, format_description!("[year]-[month]-[day]")).map_err(|_| {
                ApiError::InvalidQuery(format!("date {text:?} is not a date like 2026-01-31"))
            })?
        }
    };
    let limit = match query.limit.as_deref() {
        None | Some("") => DEFAULT_LIMIT,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::InvalidQuery(format!(
                    "limit {text:?} must be a whole number from 1 to {MAX_LIMIT}"
                ))
            })?,
    };
    let date = day.to_string();
    let db = state.config.database();
    let unavailable = |e: clickhouse::error::Error| {
        tracing::warn!(error = %e, "stats query failed");
        ApiError::Unavailable(format!("the stats store did not answer: {e}"))
    };
    // The two queries are independent: run them at once, so the answer takes as long as
    // the slower one rather than both in turn.
    let totals = state
        .clickhouse
        .query(&totals_sql(&db))
        .param("site", &site_id)
        .param("day", &date)
        .fetch_one::<Totals>();
    let top_paths = state
        .clickhouse
        .query(&top_paths_sql(&db))
        .param("site", &site_id)
        .param("day", &date)
        .param("limit", limit)
        .fetch_all::<PathViews>();
    let (totals, top_paths) = tokio::join!(totals, top_paths);
    let (totals, top_paths) = (
        totals.map_err(unavailable)?,
        top_paths.map_err(unavailable)?,
    );
    Ok(Json(Stats {
        site_id,
        date,
        total_views: totals.total_views,
        unique_users: totals.unique_users,
        unique_visitors: totals.unique_visitors,
        top_paths,
    }))
}
