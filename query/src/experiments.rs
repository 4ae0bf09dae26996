//! `GET /v1/experiments?site_id=S`: a site's experiments (`spec.experiments`) with their
//! status; `GET /v1/experiments/{id}/summary?site_id=S&startDate=&endDate=`: its variants
//! compared by its goal (seed 003's shape, plus the uplift of each variant against the
//! control with its confidence interval and p-value, and the sample-ratio check).
//!
//! Who saw what comes from the `experiment_exposures` rollup (per site, experiment,
//! variant, hour and visitor); conversions from the raw events that complete the goal. A
//! user converts in a variant when some goal event of theirs comes at or after their first
//! exposure, within the window. A user seen in several variants is counted in none of them
//! (their behaviour cannot be given to one) and reported in `usersInSeveralVariants`; the
//! events stay counted where they happened.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tally_contracts::schema::{EVENTS, EXPERIMENT_EXPOSURES, VISITOR_KEY};
use tally_crds::Experiment;
use time::OffsetDateTime;
use time::macros::format_description;

use crate::api::ApiError;
use crate::metrics::ReadQuery;
use crate::query::sql::{Builder, Compiled, Param};
use crate::stats::StatsState;

pub mod stats;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SiteQuery {
    /// The site asked about.
    #[param(example = "shop")]
    site_id: Option<String>,
}

/// The answer of `/v1/experiments`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Experiments {
    pub site_id: String,
    /// As declared in `spec.experiments`, `status` included.
    pub experiments: Vec<Experiment>,
}

/// A site's experiments, as declared, with their status.
#[utoipa::path(get, path = "/v1/experiments", tag = "experiments", params(SiteQuery),
    responses((status = 200, description = "The experiments", body = Experiments), crate::api::ErrorAnswers))]
pub async fn get_experiments(
    State(state): State<Arc<StatsState>>,
    headers: HeaderMap,
    Query(query): Query<SiteQuery>,
) -> Result<Json<Experiments>, ApiError> {
    let (site_id, site) = state.readable_site(&headers, query.site_id)?;
    Ok(Json(Experiments {
        site_id,
        experiments: site.experiments,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SummaryQuery {
    /// The site asked about.
    #[param(example = "shop")]
    site_id: Option<String>,
    /// From: a date of the site's zone or an RFC 3339 date-time (default the
    /// experiment's `start`).
    #[serde(rename = "startDate")]
    start_date: Option<String>,
    /// To: a date (counted whole) or a date-time (default the experiment's `end`, else now).
    #[serde(rename = "endDate")]
    end_date: Option<String>,
}

/// One variant's figures.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VariantFigures {
    /// The events that carry the experiment and this variant.
    pub events: u64,
    /// The users seen in this variant only.
    pub users: u64,
    /// Of those, the users who completed the goal after their first exposure.
    pub conversions: u64,
    /// conversions ÷ users, in percent (2 decimals).
    pub conversion_rate: f64,
}

/// A variant against the control.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VariantComparison {
    pub variant: String,
    /// Null while the variant or the control has no users.
    pub uplift: Option<stats::Uplift>,
}

/// The answer of `/v1/experiments/{id}/summary`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub experiment_id: String,
    pub site_id: String,
    pub status: &'static str,
    pub goal: String,
    pub control: String,
    /// The window counted, as asked (or the experiment's `start` and `end`); null for open.
    pub start_date: Option<String>,
    pub end_date: Option<String>,
    pub total_events: u64,
    /// Users seen in any variant.
    pub unique_users: u64,
    pub variants: BTreeMap<String, VariantFigures>,
    /// Each variant but the control against the control.
    pub comparisons: Vec<VariantComparison>,
    /// The users of each variant against the planned weights; null without users.
    pub sample_ratio: Option<stats::SampleRatio>,
    /// Users seen in more than one variant: counted in none.
    pub users_in_several_variants: u64,
    /// Events naming a variant the experiment does not declare, by that name.
    pub undeclared_variants: BTreeMap<String, u64>,
}

/// An experiment's variants compared by its goal.
#[utoipa::path(get, path = "/v1/experiments/{id}/summary", tag = "experiments",
    params(("id" = String, Path, description = "The experiment's id"), SummaryQuery),
    responses((status = 200, description = "The summary", body = Summary), crate::api::ErrorAnswers))]
pub async fn get_summary(
    State(state): State<Arc<StatsState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<SummaryQuery>,
) -> Result<Json<Summary>, ApiError> {
    let (site_id, site) = state.readable_site(&headers, query.site_id)?;
    let Some(experiment) = site.experiments.iter().find(|x| x.id == id) else {
        return Err(ApiError::UnknownExperiment(id));
    };
    let Some(goal) = site.goals.iter().find(|g| g.name == experiment.goal) else {
        return Err(ApiError::InvalidQuery(format!(
            "experiment {id:?} counts goal {:?}, which the site does not declare",
            experiment.goal
        )));
    };
    let start = query.start_date.or_else(|| experiment.start.clone());
    let end = query.end_date.or_else(|| experiment.end.clone());
    let time_zone = site.time_zone.as_deref().unwrap_or("UTC");

    let mut b = Builder::new(time_zone, false);
    let tz = "{p0:String}";
    let from = match &start {
        Some(text) => bound(&mut b, tz, "startDate", text, false)?,
        None => "toDateTime64('2000-01-01 00:00:00', 3, 'UTC')".to_owned(),
    };
    let to = match &end {
        Some(text) => bound(&mut b, tz, "endDate", text, true)?,
        None => format!(
            "fromUnixTimestamp64Milli({})",
            b.bind(
                "p",
                "Int64",
                Param::Int(
                    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64 + 1
                )
            )
        ),
    };
    let site_param = b.bind("p", "String", Param::Text(site_id.clone()));
    let id_param = b.bind("p", "String", Param::Text(id.clone()));
    let completes = b.completes(goal);
    let db = state.store.database();
    // Exposures are kept by the hour: the window's edges are taken to the hour. Each
    // visitor is one row with the variants they saw (read once: a WITH table is read again
    // wherever it is named), joined with their last goal, then one row per variant they
    // saw. Grouped by variant, and once over all (`whole`): the experiment's users.
    let sql = format!(
        "WITH per_visitor AS (\
           SELECT visitor, groupArray(variant) AS variants, groupArray(exposed) AS exposures, \
                  groupArray(n) AS ns \
           FROM (SELECT visitor, variant, min(first_seen) AS exposed, sum(events) AS n \
                 FROM `{db}`.{EXPERIMENT_EXPOSURES} \
                 WHERE site_id = {site_param} AND experiment_id = {id_param} \
                   AND hour >= toStartOfHour({from}) AND hour < {to} \
                 GROUP BY visitor, variant) \
           GROUP BY visitor), \
         g AS (\
           SELECT {VISITOR_KEY} AS visitor, max(timestamp) AS last_goal FROM `{db}`.{EVENTS} \
           WHERE site_id = {site_param} AND timestamp >= {from} AND timestamp < {to} \
             AND NOT is_bot AND {completes} \
           GROUP BY visitor) \
         SELECT grouping(variant) AS whole, variant, sum(n), \
                countIf(alone AND visitor != ''), \
                countIf(alone AND visitor != '' AND last_goal >= exposed), \
                uniqExactIf(visitor, visitor != ''), uniqExactIf(visitor, NOT alone AND visitor != '') \
         FROM (SELECT visitor, length(variants) = 1 AS alone, variant, exposed, n, last_goal \
               FROM per_visitor LEFT JOIN g USING visitor \
               ARRAY JOIN variants AS variant, exposures AS exposed, ns AS n) \
         GROUP BY GROUPING SETS ((variant), ()) ORDER BY whole, variant"
    );
    let compiled = Compiled {
        sql,
        total_sql: None,
        params: b.into_params(),
        rollup: None,
    };
    let rows = state
        .store
        .rows_of(ReadQuery::Experiment, &compiled)
        .await?;
    Ok(Json(summarize(&site_id, experiment, start, end, &rows)))
}

/// The summary of `rows`: per variant `[0, name, events, users, conversions]`, then
/// `[1, _, events, users, users seen in several variants]` of the whole experiment.
fn summarize(
    site_id: &str,
    experiment: &Experiment,
    start_date: Option<String>,
    end_date: Option<String>,
    rows: &[Vec<Value>],
) -> Summary {
    let number = |row: &[Value], i: usize| row.get(i).and_then(Value::as_u64).unwrap_or(0);
    let mut variants: BTreeMap<String, VariantFigures> = experiment
        .variants
        .iter()
        .map(|v| (v.name.clone(), VariantFigures::default()))
        .collect();
    let mut undeclared = BTreeMap::new();
    let (mut total_events, mut unique_users, mut several) = (0, 0, 0);
    for row in rows {
        if number(row, 0) == 1 {
            total_events = number(row, 2);
            unique_users = number(row, 5);
            several = number(row, 6);
            continue;
        }
        let name = row.get(1).and_then(Value::as_str).unwrap_or_default();
        match variants.get_mut(name) {
            Some(figures) => {
                figures.events = number(row, 2);
                figures.users = number(row, 3);
                figures.conversions = number(row, 4);
                if figures.users > 0 {
                    figures.conversion_rate =
                        (10_000.0 * figures.conversions as f64 / figures.users as f64).round()
                            / 100.0;
                }
            }
            None => {
                undeclared.insert(name.to_owned(), number(row, 2));
            }
        }
    }
    let of = |name: &str| {
        let f = &variants[name];
        (f.conversions, f.users)
    };
    let comparisons = experiment
        .variants
        .iter()
        .filter(|v| v.name != experiment.control && variants.contains_key(&experiment.control))
        .map(|v| VariantComparison {
            variant: v.name.clone(),
            uplift: stats::uplift(of(&experiment.control), of(&v.name)),
        })
        .collect();
    let observed: Vec<u64> = experiment
        .variants
        .iter()
        .map(|v| variants[&v.name].users)
        .collect();
    let weights: Vec<u32> = experiment.variants.iter().map(|v| v.weight).collect();
    Summary {
        experiment_id: experiment.id.clone(),
        site_id: site_id.to_owned(),
        status: experiment.status.as_str(),
        goal: experiment.goal.clone(),
        control: experiment.control.clone(),
        start_date,
        end_date,
        total_events,
        unique_users,
        sample_ratio: stats::sample_ratio(&observed, &weights),
        variants,
        comparisons,
        users_in_several_variants: several,
        undeclared_variants: undeclared,
    }
}

/// A window edge: a date (the site's midnight; an end date counts whole) or an RFC 3339
/// date-time, as a ClickHouse expression.
fn bound(b: &mut Builder, tz: &str, name: &str, text: &str, end: bool) -> Result<String, ApiError> {
    let date = format_description!("[year]-[month]-[day]");
    if let Ok(day) = time::Date::parse(text, date) {
        let day = b.bind("p", "Date", Param::Text(day.to_string()));
        return Ok(format!(
            "toDateTime64({day}{}, 3, {tz})",
            if end { " + 1" } else { "" }
        ));
    }
    match OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
        Ok(t) => {
            let ms = (t.unix_timestamp_nanos() / 1_000_000) as i64 + i64::from(end);
            Ok(format!(
                "fromUnixTimestamp64Milli({})",
                b.bind("p", "Int64", Param::Int(ms))
            ))
        }
        Err(_) => Err(ApiError::InvalidQuery(format!(
            "{name} {text:?} must be a date (2026-01-31) or an RFC 3339 date-time \
             (2026-01-31T12:00:00Z)"
        ))),
    }
}
