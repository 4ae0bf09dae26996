//! `POST /v1/query`: the query API, in the spirit of Plausible's Stats API v2. The body is
//! checked whole ([`request`]: every problem with a JSON pointer, answered 400 before
//! ClickHouse is asked), compiled to one parameterised statement over an hourly rollup
//! when one answers it exactly ([`rollup`]), else over the raw events ([`sql`]), and run
//! read-only within the store's time, memory and result limits.

use std::collections::HashMap;
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
pub mod rollup;
pub mod sql;

/// One row of an answer: the dimension values and the metric values, each in the order the
/// query lists them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ResultRow {
    pub dimensions: Vec<Value>,
    pub metrics: Vec<Value>,
    /// With `include.comparisons`: the same group in the compared period.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comparison: Option<Compared>,
}

/// A row's group in the compared period, and how each metric changed since.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Compared {
    /// The group's dimension values then (its time buckets are the period's); null when
    /// the group had no events then.
    pub dimensions: Option<Vec<Value>>,
    pub metrics: Vec<Value>,
    /// Per metric: the change in percent of the earlier value (100 from 0 to more), or for
    /// rates and shares (`bounce_rate`, `conversion_rate`, `percentage`) the difference in
    /// points.
    pub change: Vec<Value>,
}

/// The answer of `POST /v1/query`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Answer {
    pub results: Vec<ResultRow>,
    pub meta: Meta,
    /// The query as it was run, its defaults filled in.
    pub query: Value,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Meta {
    /// Days and hours are this zone's (the site's `timeZone`).
    pub time_zone: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_rows: Option<u64>,
    /// With `include.comparisons`: the period the rows are compared with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comparison_date_range: Option<Value>,
    /// The rollup the rows were read from (`events_hourly`, `pages_hourly`); absent when
    /// they were counted from the raw events. The figures are the same either way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollup: Option<&'static str>,
}

/// Any question about one site: metrics by dimensions, filtered, over a date range.
#[utoipa::path(post, path = "/v1/query", tag = "query", request_body = request::QueryRequest,
    responses((status = 200, description = "The rows", body = Answer), crate::api::ErrorAnswers))]
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
    let mut goals = Vec::new();
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
        site.goals.clone_into(&mut goals);
    }
    drop(config);
    let today = state.store.today(&time_zone).await?;
    let query = request::parse(&body, OffsetDateTime::now_utc(), today, &goals)
        .map_err(ApiError::InvalidBody)?;
    let db = state.store.database();
    // What the store knows of the rollups is asked only for a query one could answer (its
    // comparison has the same shape).
    let coverage = match rollup::shaped_for(&query) {
        Some(_) => state.store.coverage(&time_zone).await,
        None => rollup::Coverage::default(),
    };
    let plan = |query: &request::Query| match rollup::route(query, &coverage) {
        Some(rollup) => rollup::compile(db, query, &time_zone, rollup),
        None => sql::compile(db, query, &time_zone),
    };
    let compiled = plan(&query);
    let compared = query.compared();
    let (rows, total_rows, earlier) = match &compared {
        None => {
            let (rows, total) = state.store.run_query(&compiled).await?;
            (rows, total, None)
        }
        Some(then) => {
            let earlier = plan(then);
            let ((rows, total), (earlier, _)) = tokio::try_join!(
                state.store.run_query(&compiled),
                state.store.run_query(&earlier)
            )?;
            (rows, total, Some(earlier))
        }
    };
    let shape = Shape::of(&query);
    let earlier: Option<HashMap<Vec<Value>, Vec<Value>>> =
        earlier.map(|rows| rows.into_iter().map(|row| (shape.key(&row), row)).collect());
    let results = rows
        .into_iter()
        .map(|row| {
            let comparison = earlier.as_ref().map(|earlier| {
                let then = earlier.get(&shape.key(&row));
                shape.compare(&query.metrics, &row, then)
            });
            let (dimensions, metrics) = shape.split(row);
            ResultRow {
                dimensions,
                metrics,
                comparison,
            }
        })
        .collect();
    Ok(Json(Answer {
        results,
        meta: Meta {
            time_zone,
            total_rows,
            comparison_date_range: compared.map(|q| q.range.echo()),
            rollup: compiled.rollup,
        },
        query: query.echo,
    }))
}

/// Where the parts of an answer row are: the dimensions, the metrics, then (with
/// comparisons) each time dimension's bucket number.
struct Shape {
    dimensions: usize,
    metrics: usize,
    /// The indexes of the time dimensions.
    times: Vec<usize>,
}

impl Shape {
    fn of(query: &request::Query) -> Self {
        Self {
            dimensions: query.dimensions.len(),
            metrics: query.metrics.len(),
            times: (query.dimensions.iter().enumerate())
                .filter(|(_, d)| matches!(d, request::Dimension::Time(_)))
                .map(|(i, _)| i)
                .collect(),
        }
    }

    /// What a row of one period and its group in the other have in common: the dimension
    /// values, with each time bucket's number in place of its date.
    fn key(&self, row: &[Value]) -> Vec<Value> {
        let ordinals = self.dimensions + self.metrics;
        let mut key = row[..self.dimensions.min(row.len())].to_vec();
        for (k, &i) in self.times.iter().enumerate() {
            if let (Some(slot), Some(n)) = (key.get_mut(i), row.get(ordinals + k)) {
                *slot = n.clone();
            }
        }
        key
    }

    fn split(&self, mut row: Vec<Value>) -> (Vec<Value>, Vec<Value>) {
        row.truncate(self.dimensions + self.metrics);
        let metrics = row.split_off(self.dimensions.min(row.len()));
        (row, metrics)
    }

    fn compare(
        &self,
        names: &[request::Metric],
        now: &[Value],
        then: Option<&Vec<Value>>,
    ) -> Compared {
        let (dimensions, metrics) = match then {
            Some(then) => {
                let (d, m) = self.split(then.clone());
                (Some(d), m)
            }
            None => (None, vec![Value::from(0); self.metrics]),
        };
        let now = &now[self.dimensions..self.dimensions + self.metrics];
        let change = names
            .iter()
            .zip(now.iter().zip(&metrics))
            .map(|(metric, (now, then))| {
                let (now, then) = (now.as_f64().unwrap_or(0.0), then.as_f64().unwrap_or(0.0));
                let points = matches!(
                    metric,
                    request::Metric::BounceRate
                        | request::Metric::ConversionRate
                        | request::Metric::Percentage
                );
                let change = if points {
                    ((now - then) * 100.0).round() / 100.0
                } else if then == 0.0 {
                    if now == 0.0 { 0.0 } else { 100.0 }
                } else {
                    ((now - then) / then * 1000.0).round() / 10.0
                };
                Value::from(change)
            })
            .collect();
        Compared {
            dimensions,
            metrics,
            change,
        }
    }
}
