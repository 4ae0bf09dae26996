//! `GET /v1/stats`: one site's figures for one UTC day, read from the rollups. The key is
//! checked first (a read key of the site, or an admin key); then every query parameter,
//! before ClickHouse is asked, so a mistake is answered at once and names the parameter.

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use tally_contracts::RuntimeConfig;
use tally_crds::AnalyticsSiteSpec;
use tally_runtime::access::authorize_read;
use time::macros::format_description;
use time::{Date, OffsetDateTime};

use crate::api::{ApiError, parse_limit};
pub use crate::store::PathViews;
use crate::store::Store;

/// What the stats handler needs: the configured sites and keys (replaced whole when the
/// configuration is reloaded) and the read client.
pub struct StatsState {
    pub config: ArcSwap<RuntimeConfig>,
    pub store: Arc<Store>,
    /// The pipeline's JetStream, for its health and dead letters.
    pub nats: crate::pipeline::Nats,
}

impl StatsState {
    /// The site a `site_id` parameter names, when the request's key may read it: the key
    /// is checked before the site's existence, so a key of another site learns nothing.
    pub fn readable_site(
        &self,
        headers: &HeaderMap,
        site_id: Option<String>,
    ) -> Result<(String, AnalyticsSiteSpec), ApiError> {
        let Some(site_id) = site_id.filter(|id| !id.is_empty()) else {
            return Err(ApiError::InvalidQuery("site_id is required".into()));
        };
        let config = self.config.load();
        authorize_read(config.keys(), headers, &site_id)?;
        let site = config
            .site(&site_id)
            .cloned()
            .ok_or_else(|| ApiError::UnknownSite(site_id.clone()))?;
        Ok((site_id, site))
    }
}

const DEFAULT_LIMIT: u32 = 10;
const MAX_LIMIT: u32 = 1000;

/// Query string of `/v1/stats`; every value is checked here so errors name the parameter.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// The site asked about.
    #[param(example = "shop")]
    site_id: Option<String>,
    /// The UTC day, `YYYY-MM-DD` (default today).
    date: Option<String>,
    /// How many top paths, 1–1000 (default 10).
    limit: Option<String>,
}

/// The answer of `/v1/stats`.
#[derive(Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Stats {
    pub site_id: String,
    pub date: String,
    pub total_views: u64,
    pub unique_users: u64,
    pub unique_visitors: u64,
    pub top_paths: Vec<PathViews>,
}

/// A checked request: a configured site, a day and a limit.
struct StatsRequest {
    site_id: String,
    day: Date,
    limit: u32,
}

impl StatsRequest {
    /// Checks the query string against the pipeline's sites; `date` defaults to today
    /// (UTC) and `limit` to 10.
    fn parse(config: &RuntimeConfig, query: StatsQuery) -> Result<Self, ApiError> {
        let site_id = match query.site_id {
            None => return Err(ApiError::InvalidQuery("site_id is required".into())),
            Some(id) if id.is_empty() => {
                return Err(ApiError::InvalidQuery("site_id is required".into()));
            }
            Some(id) if config.site(&id).is_none() => return Err(ApiError::UnknownSite(id)),
            Some(id) => id,
        };
        let day = match query.date.as_deref() {
            None | Some("") => OffsetDateTime::now_utc().date(),
            Some(text) => {
                Date::parse(text, format_description!("[year]-[month]-[day]")).map_err(|_| {
                    ApiError::InvalidQuery(format!("date {text:?} is not a date like 2026-01-31"))
                })?
            }
        };
        let limit = parse_limit(query.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
        Ok(Self {
            site_id,
            day,
            limit,
        })
    }
}

/// `GET /v1/stats`: a read key of the site (or an admin key) first, then the parameters.
/// One site's figures for one UTC day, from the rollups.
#[utoipa::path(get, path = "/v1/stats", tag = "stats", params(StatsQuery),
    responses((status = 200, description = "The day's figures", body = Stats), crate::api::ErrorAnswers))]
pub async fn get_stats(
    State(state): State<Arc<StatsState>>,
    headers: HeaderMap,
    Query(query): Query<StatsQuery>,
) -> Result<Json<Stats>, ApiError> {
    let config = state.config.load();
    // Without a site_id there is nothing to authorize; parse says what is missing.
    if let Some(site_id) = query.site_id.as_deref().filter(|id| !id.is_empty()) {
        authorize_read(config.keys(), &headers, site_id)?;
    }
    let StatsRequest {
        site_id,
        day,
        limit,
    } = StatsRequest::parse(&config, query)?;
    drop(config);
    let date = day.to_string();
    let unavailable = |e: clickhouse::error::Error| {
        tracing::warn!(error = %e, "stats query failed");
        ApiError::Unavailable(format!("the stats store did not answer: {e}"))
    };
    // The two queries are independent: run them at once, so the answer takes as long as
    // the slower one rather than both in turn.
    let (totals, top_paths) = tokio::join!(
        state.store.totals(&site_id, &date),
        state.store.top_paths(&site_id, &date, limit),
    );
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
