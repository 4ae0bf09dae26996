//! Compiles a checked [`Query`] to one ClickHouse statement over the raw `events` table.
//! Every value of the request — the site, the range, filter values, property names — is a
//! query parameter (`{f0:Array(String)}`), never text of the statement; the statement's own
//! text comes from this file and the dimension and metric names it maps.
//!
//! Visits: an event with a `session_id` belongs to that session's visit; the events of a
//! visitor without one form visits split where 30 minutes pass without an event. Visits are
//! cut at the date range. A visit's attributes (`visit:*`) are those of its first event, its
//! entry and exit pages its first and last page view's paths. The statement:
//!
//! 1. `e`: the site's events in the range (bots left out), each with its visitor key and
//!    visit id (its session's; for events without one, window functions over each
//!    visitor's events without a session, which only those need);
//! 2. `v`: per visit its page views, duration and attributes;
//! 3. the events joined with their visit, filtered, grouped by the dimensions and the visit
//!    (page views and events of the visit in the group, its visitors);
//! 4. grouped by the dimensions alone: the metrics.

use std::fmt::Write as _;

use tally_contracts::schema::{EVENTS, PAGE_VIEW, SESSION_ATTRIBUTES, VISITOR_KEY};

use tally_crds::Goal;

use super::request::{
    Aggregate, Bucket, Dimension, Filter, Metric, Operator, OrderKey, Query, Range,
};

/// A value bound to a `{name:Type}` placeholder.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Text(String),
    Texts(Vec<String>),
    Int(i64),
}

/// A statement and its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    /// The rows: dimension values, then metric values, in the query's order.
    pub sql: String,
    /// The number of rows without pagination (with `include.total_rows`).
    pub total_sql: Option<String>,
    pub params: Vec<(String, Param)>,
    /// The rollup it reads, when not the raw events.
    pub rollup: Option<&'static str>,
}

/// The gap after which a visitor's events without a `session_id` start a new visit.
pub const VISIT_GAP_MS: i64 = 30 * 60 * 1000;

/// A statement's parameters as it is written, and what its expressions need to know.
pub(crate) struct Builder {
    params: Vec<(String, Param)>,
    /// The placeholder of the site's time zone.
    tz: String,
    /// Whether `event:goal` is a dimension: then each row holds one of the event's goals in
    /// `goal`, else all of them in `goals`.
    goal_rows: bool,
    /// The column time dimensions bucket: `timestamp`, or a rollup's `hour`.
    time_column: &'static str,
}

impl Builder {
    /// A statement for a site in `time_zone` (bound first, as `{p0:String}`).
    pub(crate) fn new(time_zone: &str, goal_rows: bool) -> Self {
        let mut b = Self {
            params: Vec::new(),
            tz: String::new(),
            goal_rows,
            time_column: "timestamp",
        };
        b.tz = b.bind("p", "String", Param::Text(time_zone.to_owned()));
        b
    }

    /// A statement whose time dimensions bucket `column` instead of `timestamp`.
    pub(crate) fn bucketing(mut self, column: &'static str) -> Self {
        self.time_column = column;
        self
    }

    /// The parameters bound so far.
    pub(crate) fn into_params(self) -> Vec<(String, Param)> {
        self.params
    }

    /// Binds `value` to a new placeholder of type `ty`, and returns the placeholder.
    pub(crate) fn bind(&mut self, prefix: &str, ty: &str, value: Param) -> String {
        let name = format!("{prefix}{}", self.params.len());
        self.params.push((name.clone(), value));
        format!("{{{name}:{ty}}}")
    }

    pub(crate) fn dimension(&mut self, dimension: &Dimension) -> String {
        match dimension {
            Dimension::Event(column) => (*column).to_owned(),
            Dimension::Property(key) => {
                let key = self.bind("k", "String", Param::Text(key.clone()));
                // Strings as they are; numbers and booleans as their JSON text; absent: ''.
                format!(
                    "if(JSONType(properties, {key}) = 'String', JSONExtractString(properties, {key}), \
                     JSONExtractRaw(properties, {key}))"
                )
            }
            Dimension::Visit(column) => format!("v_{column}"),
            Dimension::Goal => "goal".into(),
            Dimension::Time(bucket) => {
                let (tz, t) = (&self.tz, self.time_column);
                match bucket {
                    Bucket::Minute => format!("toString(toStartOfMinute({t}, {tz}), {tz})"),
                    Bucket::Hour => format!("toString(toStartOfHour({t}, {tz}), {tz})"),
                    Bucket::Day => format!("toString(toDate({t}, {tz}))"),
                    Bucket::Week => format!("toString(toMonday({t}, {tz}))"),
                    Bucket::Month => format!("toString(toStartOfMonth({t}, {tz}))"),
                }
            }
        }
    }

    pub(crate) fn filter(&mut self, filter: &Filter) -> String {
        match filter {
            Filter::And(all) => self.combine(all, " AND "),
            Filter::Or(any) => self.combine(any, " OR "),
            Filter::Not(one) => format!("NOT ({})", self.filter(one)),
            Filter::Compare {
                operator,
                dimension,
                values,
            } => {
                let values = self.bind("f", "Array(String)", Param::Texts(values.clone()));
                if *dimension == Dimension::Goal && !self.goal_rows {
                    // Some goal the event completes compares so.
                    let one = compare(*operator, "g", &values);
                    return format!("arrayExists(g -> {one}, goals)");
                }
                compare(*operator, &self.dimension(dimension), &values)
            }
        }
    }

    /// The expression of the goals an event completes: their names, in the order declared.
    fn goals(&mut self, goals: &[Goal]) -> String {
        if goals.is_empty() {
            return "CAST([], 'Array(String)')".into();
        }
        let mut each = Vec::new();
        for goal in goals {
            let completes = self.completes(goal);
            let name = self.bind("g", "String", Param::Text(goal.name.clone()));
            each.push(format!("if({completes}, {name}, '')"));
        }
        format!("arrayFilter(g -> g != '', [{}])", each.join(", "))
    }

    /// Whether an event (its `event_type`, `path` and `properties`) completes `goal`.
    pub(crate) fn completes(&mut self, goal: &Goal) -> String {
        let mut conditions = Vec::new();
        if let Some(event_type) = &goal.event_type {
            let t = self.bind("g", "String", Param::Text(event_type.clone()));
            conditions.push(format!("event_type = {t}"));
        }
        if let Some(pattern) = &goal.page_path {
            let re = self.bind("g", "String", Param::Text(Goal::path_regex(pattern)));
            conditions.push(format!("event_type = '{PAGE_VIEW}' AND match(path, {re})"));
        }
        for (key, value) in &goal.properties {
            let expr = self.dimension(&Dimension::Property(key.clone()));
            let value = self.bind("g", "String", Param::Text(value.clone()));
            conditions.push(format!("{expr} = {value}"));
        }
        format!("({})", conditions.join(" AND "))
    }

    fn combine(&mut self, filters: &[Filter], with: &str) -> String {
        let parts: Vec<String> = filters
            .iter()
            .map(|f| format!("({})", self.filter(f)))
            .collect();
        parts.join(with)
    }
}

/// `expr` compared with the bound array `values`.
fn compare(operator: Operator, expr: &str, values: &str) -> String {
    match operator {
        Operator::Is => format!("{expr} IN {values}"),
        Operator::IsNot => format!("{expr} NOT IN {values}"),
        Operator::Contains => format!("multiSearchAny({expr}, {values})"),
        Operator::ContainsNot => format!("NOT multiSearchAny({expr}, {values})"),
        Operator::Matches => format!("arrayExists(r -> match({expr}, r), {values})"),
        Operator::MatchesNot => format!("NOT arrayExists(r -> match({expr}, r), {values})"),
    }
}

/// A metric's expression over the rows of one group (one row per visit in the group), and
/// the columns it needs from each visit's events (`vals{i}`: the i-th metric's values).
/// `converting` says whether the query names goals (an `event:goal` filter or dimension):
/// then `c_total` holds the group's visitors without the goal filters.
fn metric(
    b: &mut Builder,
    i: usize,
    metric: &Metric,
    inner: &mut Vec<String>,
    converting: bool,
) -> String {
    let numeric =
        |key: &str| format!("JSONType(properties, {key}) IN ('Int64', 'UInt64', 'Double')");
    match metric {
        Metric::ConversionRate if converting => {
            "if(any(c_total) = 0, 0, round(100 * uniqExactArray(keys) / any(c_total), 2))".into()
        }
        Metric::ConversionRate => {
            inner.push(format!(
                "groupUniqArrayIf(visitor_key, visitor_key != '' AND notEmpty(goals)) AS ckeys{i}"
            ));
            format!(
                "if(uniqExactArray(keys) = 0, 0, \
                 round(100 * uniqExactArray(ckeys{i}) / uniqExactArray(keys), 2))"
            )
        }
        Metric::Visitors => "uniqExactArray(keys)".into(),
        Metric::Visits => "count()".into(),
        Metric::Pageviews => "sum(pv)".into(),
        Metric::Events => "sum(ev)".into(),
        Metric::ViewsPerVisit => "if(count() = 0, 0, round(sum(pv) / count(), 2))".into(),
        Metric::BounceRate => {
            "if(countIf(vpv > 0) = 0, 0, round(100 * countIf(vpv = 1) / countIf(vpv > 0), 2))"
                .into()
        }
        Metric::VisitDuration => "if(count() = 0, 0, round(avg(vdur) / 1000, 1))".into(),
        // All the groups' visitors (a window over the groups, before the page is cut).
        Metric::Percentage => {
            let total = "uniqExactArrayMerge(uniqExactArrayState(keys)) OVER ()";
            format!("if({total} = 0, 0, round(100 * uniqExactArray(keys) / {total}, 2))")
        }
        Metric::TimeOnPage => {
            let unload = format!(
                "event_type = 'page_unload' AND {}",
                numeric("'time_on_page'")
            );
            inner.push(format!(
                "sumIf(JSONExtractFloat(properties, 'time_on_page'), {unload}) AS top_sum{i}"
            ));
            inner.push(format!("countIf({unload}) AS top_n{i}"));
            format!("if(sum(top_n{i}) = 0, 0, round(sum(top_sum{i}) / sum(top_n{i}) / 1000, 1))")
        }
        Metric::Property(aggregate, key) => {
            let key = b.bind("k", "String", Param::Text(key.clone()));
            inner.push(format!(
                "groupArrayIf(JSONExtractFloat(properties, {key}), {}) AS vals{i}",
                numeric(&key)
            ));
            let over = match aggregate {
                Aggregate::Avg => format!("avgArray(vals{i})"),
                Aggregate::Min => format!("minArray(vals{i})"),
                Aggregate::Max => format!("maxArray(vals{i})"),
                Aggregate::Sum => format!("sumArray(vals{i})"),
                // A literal level: an aggregate's parameters are constants.
                Aggregate::Percentile(p) => {
                    format!("quantileExactArray({})(vals{i})", f64::from(*p) / 100.0)
                }
            };
            format!("if(sum(length(vals{i})) = 0, 0, round({over}, 2))")
        }
    }
}

/// Whether `query` needs each event's visit: a visit metric, or a `visit:*` dimension or
/// filter.
fn needs_visits(query: &Query) -> bool {
    query.metrics.iter().any(|m| {
        matches!(
            m,
            Metric::Visits | Metric::ViewsPerVisit | Metric::BounceRate | Metric::VisitDuration
        )
    }) || query
        .used_dimensions()
        .iter()
        .any(|d| matches!(d, Dimension::Visit(_)))
}

/// The instants `[from, to)` of `range`, as expressions.
pub(crate) fn bounds(b: &mut Builder, range: Range) -> (String, String) {
    match range {
        // The zone's midnights: the first day's, and the one after the last day.
        Range::Days { from, to } => {
            let (from, to) = (
                b.bind("p", "Date", Param::Text(from.to_string())),
                b.bind("p", "Date", Param::Text(to.to_string())),
            );
            let tz = &b.tz;
            (
                format!("toDateTime64({from}, 3, {tz})"),
                format!("toDateTime64({to} + 1, 3, {tz})"),
            )
        }
        Range::Instants { from_ms, to_ms } => (
            format!(
                "fromUnixTimestamp64Milli({})",
                b.bind("p", "Int64", Param::Int(from_ms))
            ),
            format!(
                "fromUnixTimestamp64Milli({})",
                b.bind("p", "Int64", Param::Int(to_ms))
            ),
        ),
    }
}

/// With `include.comparisons`, for each time dimension of `query`: `(i, expr)`, the
/// number of the row's bucket counted from the range's first (starting at `from`).
/// The rows of a period and of its comparison match by these, not by date.
pub(crate) fn bucket_ordinals(b: &Builder, query: &Query, from: &str) -> Vec<(usize, String)> {
    if query.comparison.is_none() {
        return Vec::new();
    }
    let (tz, column) = (&b.tz, b.time_column);
    (query.dimensions.iter().enumerate())
        .filter_map(|(i, d)| {
            let Dimension::Time(bucket) = d else {
                return None;
            };
            let (unit, start) = match bucket {
                Bucket::Minute => ("minute", "toStartOfMinute"),
                Bucket::Hour => ("hour", "toStartOfHour"),
                Bucket::Day => ("day", "toDate"),
                Bucket::Week => ("week", "toMonday"),
                Bucket::Month => ("month", "toStartOfMonth"),
            };
            Some((
                i,
                format!("dateDiff('{unit}', {start}({from}, {tz}), {start}({column}, {tz}))"),
            ))
        })
        .collect()
}

/// The end of a statement whose groups are `d0…` with metrics `m0…`: the order (the
/// query's, then every dimension, so that equal rows always come in the same order and
/// pages never overlap) and the page; with `include.total_rows`, the statement counting
/// the groups.
pub(crate) fn finish(
    mut b: Builder,
    query: &Query,
    mut sql: String,
    rollup: Option<&'static str>,
) -> Compiled {
    let total_sql = query
        .total_rows
        .then(|| format!("SELECT count() FROM ({sql})"));
    let mut order: Vec<String> = query
        .order_by
        .iter()
        .map(|(key, descending)| {
            let alias = match key {
                OrderKey::Metric(i) => format!("m{i}"),
                OrderKey::Dimension(i) => format!("d{i}"),
            };
            format!("{alias} {}", if *descending { "DESC" } else { "ASC" })
        })
        .collect();
    for i in 0..query.dimensions.len() {
        if !query
            .order_by
            .iter()
            .any(|(key, _)| *key == OrderKey::Dimension(i))
        {
            order.push(format!("d{i} ASC"));
        }
    }
    if !order.is_empty() {
        let _ = write!(sql, " ORDER BY {}", order.join(", "));
    }
    let limit = b.bind("p", "UInt64", Param::Int(query.limit as i64));
    let offset = b.bind("p", "UInt64", Param::Int(query.offset as i64));
    let _ = write!(sql, " LIMIT {limit} OFFSET {offset}");
    Compiled {
        sql,
        total_sql,
        params: b.into_params(),
        rollup,
    }
}

/// The statement of `query` over database `db`, for a site in `time_zone`.
pub fn compile(db: &str, query: &Query, time_zone: &str) -> Compiled {
    let goal_rows = query.dimensions.contains(&Dimension::Goal);
    let mut b = Builder::new(time_zone, goal_rows);
    let site = b.bind("p", "String", Param::Text(query.site_id.clone()));
    let (from, to) = bounds(&mut b, query.range);

    let dims: Vec<String> = query.dimensions.iter().map(|d| b.dimension(d)).collect();
    let filters: Vec<String> = query
        .filters
        .iter()
        .map(|f| format!("({})", b.filter(f)))
        .collect();
    let goals = if query.uses_goals() {
        format!(", {} AS goals", b.goals(&query.goals))
    } else {
        String::new()
    };
    let attributes = SESSION_ATTRIBUTES.join(", ");
    let firsts: String = SESSION_ATTRIBUTES.iter().fold(String::new(), |mut out, c| {
        let _ = write!(out, ", argMin({c}, timestamp) AS v_{c}");
        out
    });

    let mut sql = if !needs_visits(query) {
        // No metric, dimension or filter of this query looks at visits: every event of a
        // group is one row, without the window functions that cut visits.
        format!(
            "WITH e AS (\
               SELECT event_type, path, timestamp, properties, session_id, user_id, \
                      {VISITOR_KEY} AS visitor_key, '' AS visit_id{goals} \
               FROM `{db}`.{EVENTS} \
               WHERE site_id = {site} AND timestamp >= {from} AND timestamp < {to} AND NOT is_bot), \
             v AS (SELECT '' AS visit_id, toUInt64(0) AS v_pageviews, toInt64(0) AS v_duration)"
        )
    } else {
        format!(
            "WITH e0 AS (\
           SELECT event_type, path, timestamp, properties, session_id, user_id, {attributes}, \
                  {VISITOR_KEY} AS visitor_key{goals} \
           FROM `{db}`.{EVENTS} \
           WHERE site_id = {site} AND timestamp >= {from} AND timestamp < {to} AND NOT is_bot), \
         e1 AS (\
           SELECT *, if(row_number() OVER w = 1 \
                       OR dateDiff('millisecond', lagInFrame(timestamp) OVER w, timestamp) >= {VISIT_GAP_MS}, 1, 0) AS starts \
           FROM e0 WHERE session_id = '' \
           WINDOW w AS (PARTITION BY visitor_key ORDER BY timestamp \
                        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)), \
         e AS (\
           SELECT *, concat('s:', session_id) AS visit_id FROM e0 WHERE session_id != '' \
           UNION ALL \
           SELECT * EXCEPT (starts), concat('g:', visitor_key, ':', toString(sum(starts) OVER w)) AS visit_id \
           FROM e1 \
           WINDOW w AS (PARTITION BY visitor_key ORDER BY timestamp \
                        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)), \
         v AS (\
           SELECT visit_id, countIf(event_type = '{PAGE_VIEW}') AS v_pageviews, \
                  dateDiff('millisecond', min(timestamp), max(timestamp)) AS v_duration, \
                  argMinIf(path, timestamp, event_type = '{PAGE_VIEW}') AS v_entry_page, \
                  argMaxIf(path, timestamp, event_type = '{PAGE_VIEW}') AS v_exit_page{firsts} \
           FROM e GROUP BY visit_id)"
        )
    };
    let where_clause = if filters.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", filters.join(" AND "))
    };
    // The events the groups are made of: with `event:goal` a dimension, one row per goal
    // an event completes (an event that completes none is in no group).
    let rows = if goal_rows {
        sql.push_str(", eg AS (SELECT *, goal FROM e ARRAY JOIN goals AS goal)");
        "eg"
    } else {
        "e"
    };
    let dim_aliases: Vec<String> = (0..dims.len()).map(|i| format!("d{i}")).collect();
    // Conversion rates over goals the query names: each group's visitors without the
    // goal filters, by the dimensions other than `event:goal`.
    let converting = query.metrics.contains(&Metric::ConversionRate)
        && (goal_rows || query.filters.iter().any(Filter::is_goal));
    let mut join_totals = String::new();
    if converting {
        let (mut select, mut keys) = (Vec::new(), Vec::new());
        for (i, d) in query.dimensions.iter().enumerate() {
            if *d != Dimension::Goal {
                select.push(format!("{} AS d{i}", b.dimension(d)));
                keys.push(format!("d{i}"));
            }
        }
        let others: Vec<String> = query
            .filters
            .iter()
            .filter(|f| !f.is_goal())
            .map(|f| format!("({})", b.filter(f)))
            .collect();
        select.push("uniqExactIf(visitor_key, visitor_key != '') AS c_total".into());
        let _ = write!(
            sql,
            ", c AS (SELECT {} FROM e INNER JOIN v USING visit_id{}{})",
            select.join(", "),
            if others.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", others.join(" AND "))
            },
            if keys.is_empty() {
                String::new()
            } else {
                format!(" GROUP BY {}", keys.join(", "))
            },
        );
        join_totals = if keys.is_empty() {
            " CROSS JOIN c".into()
        } else {
            format!(" LEFT JOIN c USING ({})", keys.join(", "))
        };
    }
    let metric_aliases: Vec<String> = (0..query.metrics.len()).map(|i| format!("m{i}")).collect();
    let mut inner: Vec<String> = dims
        .iter()
        .zip(&dim_aliases)
        .map(|(expr, alias)| format!("{expr} AS {alias}"))
        .collect();
    inner.extend(
        [
            "visit_id",
            "countIf(event_type = 'page_view') AS pv",
            "count() AS ev",
            "groupUniqArrayIf(visitor_key, visitor_key != '') AS keys",
            "any(v_pageviews) AS vpv",
            "any(v_duration) AS vdur",
        ]
        .map(str::to_owned),
    );
    let mut outer: Vec<String> = dim_aliases.clone();
    for (i, (m, alias)) in query.metrics.iter().zip(&metric_aliases).enumerate() {
        let expr = metric(&mut b, i, m, &mut inner, converting);
        outer.push(format!("{expr} AS {alias}"));
    }
    // After the metrics, each time dimension's bucket number.
    for (i, ordinal) in bucket_ordinals(&b, query, &from) {
        inner.push(format!("any({ordinal}) AS o{i}"));
        outer.push(format!("any(o{i}) AS o{i}"));
    }
    let _ = write!(sql, " SELECT {}", outer.join(", "));
    let mut inner_group = dim_aliases.clone();
    inner_group.push("visit_id".into());
    let _ = write!(
        sql,
        " FROM (SELECT {} FROM {rows} INNER JOIN v USING visit_id{where_clause} GROUP BY {}) AS r{join_totals}",
        inner.join(", "),
        inner_group.join(", ")
    );
    if !dim_aliases.is_empty() {
        let _ = write!(sql, " GROUP BY {}", dim_aliases.join(", "));
    }
    finish(b, query, sql, None)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::query::request::parse;

    fn compiled(body: serde_json::Value) -> Compiled {
        let now = time::macros::datetime!(2026-01-31 12:00 UTC);
        compile(
            "tally_web",
            &parse(&body, now, now.date(), &[]).unwrap(),
            "Europe/Berlin",
        )
    }

    #[test]
    fn values_and_property_names_are_parameters_not_text() {
        let c = compiled(json!({
            "site_id": "shop'; DROP TABLE events; --",
            "metrics": ["visitors", "bounce_rate"],
            "dimensions": ["event:props:plan' OR 1=1", "visit:source"],
            "filters": [["is", "event:page", ["/x'); DROP TABLE x; --"]],
                        ["not", ["contains", "visit:utm_campaign", ["spring"]]]],
        }));
        for text in ["DROP", "plan'", "spring", "/x"] {
            assert!(!c.sql.contains(text), "{text} in {}", c.sql);
        }
        let texts: Vec<&Param> = c.params.iter().map(|(_, v)| v).collect();
        assert!(texts.contains(&&Param::Text("shop'; DROP TABLE events; --".into())));
        assert!(texts.contains(&&Param::Text("plan' OR 1=1".into())));
        assert!(texts.contains(&&Param::Texts(vec!["spring".into()])));
        assert!(
            c.sql.contains("NOT (multiSearchAny(v_utm_campaign, {f"),
            "{}",
            c.sql
        );
    }

    #[test]
    fn time_dimensions_order_by_time_and_total_rows_counts_the_groups() {
        let c = compiled(json!({
            "site_id": "shop", "metrics": ["pageviews"], "dimensions": ["time:day"],
            "include": {"total_rows": true},
        }));
        assert!(c.sql.contains("ORDER BY d0 ASC LIMIT"), "{}", c.sql);
        assert!(
            c.total_sql
                .unwrap()
                .starts_with("SELECT count() FROM (WITH")
        );
    }
}
