//! `POST /v1/query`: the query API, in the spirit of Plausible's Stats API v2. The body is
//! checked whole ([`request`]: every problem with a JSON pointer, answered 400 before
//! ClickHouse is asked), compiled to one parameterised statement over the raw events
//! ([`sql`]), and run read-only within the store's time, memory and result limits.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Serialize;
use serde_json::Value;
use tally_runtime::access::authorize_read;
use time::OffsetDateTime;

use crate::api::ApiError;
use crate::stats::StatsState;

pub mod request;
pub mod sql;

/// One row of an answer: the dimension values and the metric values, each in the order the
/// query lists them.
#[derive(Debug, Serialize)]
pub struct ResultRow {
    pub dimensions: Vec<Value>,
    pub metrics: Vec<Value>,
}

/// The answer of `POST /v1/query`.
#[derive(Debug, Serialize)]
pub struct Answer {
    pub results: Vec<ResultRow>,
    pub meta: Meta,
    /// The query as it was run, its defaults filled in.
    pub query: Value,
}

#[derive(Debug, Serialize)]
pub struct Meta {
    /// Days and hours are this zone's (the site's `timeZone`).
    pub time_zone: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_rows: Option<u64>,
}

pub async fn post_query(
    State(state): State<Arc<StatsState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Answer>, ApiError> {
    let body: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::InvalidBody(vec![request::Problem {
            pointer: String::new(),
            message: format!("the body is not JSON: {e}"),
        }])
    })?;
    let config = state.config.load();
    // The key first: a key of another site learns nothing of the query's problems.
    let mut time_zone = String::from("UTC");
    if let Some(site_id) = body
        .get("site_id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        authorize_read(config.keys(), &headers, site_id)?;
        let Some(site) = config.site(site_id) else {
            return Err(ApiError::UnknownSite(site_id.to_owned()));
        };
        if let Some(zone) = &site.time_zone {
            zone.clone_into(&mut time_zone);
        }
    }
    drop(config);
    let today = state.store.today(&time_zone).await?;
    let query =
        request::parse(&body, OffsetDateTime::now_utc(), today).map_err(ApiError::InvalidBody)?;
    let compiled = sql::compile(state.store.database(), &query, &time_zone);
    let (rows, total_rows) = state.store.run_query(&compiled).await?;
    let width = query.dimensions.len();
    let results = rows
        .into_iter()
        .map(|mut row| {
            let metrics = row.split_off(width.min(row.len()));
            ResultRow {
                dimensions: row,
                metrics,
            }
        })
        .collect();
    Ok(Json(Answer {
        results,
        meta: Meta {
            time_zone,
            total_rows,
        },
        query: query.echo,
    }))
}
