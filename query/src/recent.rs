//! `GET /v1/events/recent?site_id=S&limit=N`: a site's latest events, newest first, for a
//! live table. Read from the raw `events` table in its own order (`site_id, timestamp`), so
//! ClickHouse reads only the newest parts of the site's range.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, parse_limit};
use crate::stats::StatsState;
pub use crate::store::RecentEvent;

const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 1000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RecentQuery {
    /// The site asked about.
    #[param(example = "shop")]
    site_id: Option<String>,
    /// How many events, 1–1000 (default 20).
    limit: Option<String>,
}

/// The answer of `/v1/events/recent`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Recent {
    pub site_id: String,
    pub events: Vec<RecentEvent>,
}

/// A site's latest events, newest first.
#[utoipa::path(get, path = "/v1/events/recent", tag = "events", params(RecentQuery),
    responses((status = 200, description = "The latest events", body = Recent), crate::api::ErrorAnswers))]
pub async fn get_recent(
    State(state): State<Arc<StatsState>>,
    headers: HeaderMap,
    Query(query): Query<RecentQuery>,
) -> Result<Json<Recent>, ApiError> {
    let (site_id, _) = state.readable_site(&headers, query.site_id)?;
    let limit = parse_limit(query.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let events = state.store.recent(&site_id, limit).await.map_err(|e| {
        tracing::warn!(error = %e, "recent events query failed");
        ApiError::Unavailable(format!("the events store did not answer: {e}"))
    })?;
    Ok(Json(Recent { site_id, events }))
}
