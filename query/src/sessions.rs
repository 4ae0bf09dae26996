//! The session browser: `GET /v1/sessions?site_id&date_range&search&limit&offset` lists a
//! site's sessions (the events that share a `session_id`; the tracker gives each tab one),
//! newest first, from the `sessions` rollup; `GET /v1/sessions/{id}?site_id` gives one
//! session's events in order.
//!
//! `search` finds the sessions with an event whose path, title or properties (their JSON
//! text, keys included) contain the words, case-insensitively: a `LIKE '%…%'` over
//! `schema::SEARCH_TEXT`, which the `search_ngrams` n-gram bloom filter index lets
//! ClickHouse answer from the granules that may hold the text only.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::api::{ApiError, parse_limit};
use crate::query::request::{Range, parse_range};
use crate::query::sql::Param;
use crate::stats::StatsState;
pub use crate::store::{RecentEvent, SessionSummary};

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 1000;
/// The longest search text.
pub const MAX_SEARCH: usize = 200;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SessionsQuery {
    /// The site asked about.
    #[param(example = "shop")]
    site_id: Option<String>,
    /// When the sessions started: `7d` (the default), `day`, `30d`, `month`, … or
    /// `from,to` (two dates or two date-times).
    date_range: Option<String>,
    /// Text the session's paths, titles or properties hold (any case), at most 200
    /// characters.
    #[param(max_length = 200)]
    search: Option<String>,
    /// 1–1000 (default 50).
    limit: Option<String>,
    /// Sessions to skip.
    offset: Option<String>,
}

/// The answer of `/v1/sessions`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Sessions {
    pub site_id: String,
    /// The range the sessions started in, as `[from, to]`.
    pub date_range: Value,
    /// The sessions that match, all pages together.
    pub total: u64,
    pub sessions: Vec<SessionSummary>,
}

/// A site's sessions, newest first, optionally those whose events hold a text.
#[utoipa::path(get, path = "/v1/sessions", tag = "sessions", params(SessionsQuery),
    responses((status = 200, description = "A page of sessions", body = Sessions), crate::api::ErrorAnswers))]
pub async fn get_sessions(
    State(state): State<Arc<StatsState>>,
    headers: HeaderMap,
    Query(query): Query<SessionsQuery>,
) -> Result<Json<Sessions>, ApiError> {
    let (site_id, site) = state.readable_site(&headers, query.site_id)?;
    let time_zone = site.time_zone.as_deref().unwrap_or("UTC");
    let text = query.date_range.as_deref().unwrap_or("7d");
    // `7d`, or `from,to` as two dates or two date-times.
    let value = match text.split_once(',') {
        Some((from, to)) => serde_json::json!([from, to]),
        None => Value::from(text),
    };
    let today = state.store.today(time_zone).await?;
    let range = parse_range(&value, OffsetDateTime::now_utc(), today)
        .map_err(|message| ApiError::InvalidQuery(format!("date_range {text:?}: {message}")))?;
    let search = match query.search.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) if s.chars().count() > MAX_SEARCH => {
            return Err(ApiError::InvalidQuery(format!(
                "search must be at most {MAX_SEARCH} characters"
            )));
        }
        Some(s) => Some(s.to_lowercase()),
    };
    let limit = parse_limit(query.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let offset = match query.offset.as_deref() {
        None | Some("") => 0,
        Some(text) => text.parse::<u64>().map_err(|_| {
            ApiError::InvalidQuery(format!("offset {text:?} must be a whole number"))
        })?,
    };
    let (total, sessions) = state
        .store
        .sessions(&site_id, time_zone, range, search.as_deref(), limit, offset)
        .await?;
    Ok(Json(Sessions {
        site_id,
        date_range: range.echo(),
        total,
        sessions,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SessionQuery {
    /// The site asked about.
    #[param(example = "shop")]
    site_id: Option<String>,
}

/// The answer of `/v1/sessions/{id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Session {
    pub site_id: String,
    pub session_id: String,
    /// Oldest first.
    pub events: Vec<RecentEvent>,
}

/// Every event of one session, oldest first.
#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "sessions",
    params(("id" = String, Path, description = "The session's id"), SessionQuery),
    responses((status = 200, description = "The session's events", body = Session), crate::api::ErrorAnswers))]
pub async fn get_session(
    State(state): State<Arc<StatsState>>,
    headers: HeaderMap,
    Path(session_id): Path<String>,
    Query(query): Query<SessionQuery>,
) -> Result<Json<Session>, ApiError> {
    let (site_id, _) = state.readable_site(&headers, query.site_id)?;
    let events = state.store.session_events(&site_id, &session_id).await?;
    if events.is_empty() {
        return Err(ApiError::UnknownSession(session_id));
    }
    Ok(Json(Session {
        site_id,
        session_id,
        events,
    }))
}

/// `text` as a `LIKE` pattern that finds it anywhere: its `%`, `_` and `\` escaped.
pub fn contains_pattern(text: &str) -> String {
    let mut pattern = String::from("%");
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The range's edges as ClickHouse expressions over the placeholders `{tz:String}`,
/// `{from_day:Date}`/`{to_day:Date}` or `{from_ms:Int64}`/`{to_ms:Int64}`, with their values.
pub fn range_bounds(range: Range) -> (&'static str, &'static str, Vec<(String, Param)>) {
    match range {
        Range::Days { from, to } => (
            "toDateTime64({from_day:Date}, 3, {tz:String})",
            "toDateTime64({to_day:Date} + 1, 3, {tz:String})",
            vec![
                ("from_day".into(), Param::Text(from.to_string())),
                ("to_day".into(), Param::Text(to.to_string())),
            ],
        ),
        Range::Instants { from_ms, to_ms } => (
            "fromUnixTimestamp64Milli({from_ms:Int64})",
            "fromUnixTimestamp64Milli({to_ms:Int64})",
            vec![
                ("from_ms".into(), Param::Int(from_ms)),
                ("to_ms".into(), Param::Int(to_ms)),
            ],
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_text_is_found_literally() {
        assert_eq!(contains_pattern("pro plan"), "%pro plan%");
        assert_eq!(contains_pattern("50%_off\\"), "%50\\%\\_off\\\\%");
    }
}
