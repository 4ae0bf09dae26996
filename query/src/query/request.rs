//! The body of `POST /v1/query`, read by hand from JSON so that every problem is reported at
//! once with a JSON pointer to its place (`/metrics/2`, `/filters/0/1`), and checked into a
//! [`Query`]: known metrics and dimensions, well-shaped filters, a date range, order and
//! pagination within bounds. The query is echoed back with its defaults filled in.

use serde::Serialize;
use serde_json::{Value, json};
use tally_crds::Goal;
use time::macros::format_description;
use time::{Date, Duration, OffsetDateTime};

/// Most rows one answer holds.
pub const MAX_LIMIT: u64 = 10_000;
/// Most dimensions one query groups by.
pub const MAX_DIMENSIONS: usize = 6;
/// Most filters, counting those inside `and`, `or` and `not`.
pub const MAX_FILTERS: usize = 50;

/// The body of `POST /v1/query`, as the OpenAPI document describes it. The handler reads
/// the JSON itself ([`parse`]), so that every problem is answered at once with its place;
/// a test holds this type to the bodies [`parse`] accepts.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// The site asked about.
    #[schema(example = "shop")]
    pub site_id: String,
    /// `visitors`, `visits`, `pageviews`, `events`, `views_per_visit`, `bounce_rate`,
    /// `visit_duration`, `percentage`, `time_on_page`, `conversion_rate`, or
    /// `avg|sum|min|max|p1…p99:props.<name>` of a numeric property.
    #[schema(example = json!(["visitors", "pageviews"]))]
    pub metrics: Vec<String>,
    /// `event:name`, `event:page`, `event:goal`, `event:user_id`, `event:props:<name>`,
    /// `visit:*`, `time`,
    /// `time:minute|hour|day|week|month`; at most 6.
    #[serde(default)]
    #[schema(example = json!(["time:day"]))]
    pub dimensions: Vec<String>,
    /// `[operator, dimension, [values]]` (`is`, `is_not`, `contains`, `contains_not`,
    /// `matches`, `matches_not`), `["and" | "or", [filters]]` or `["not", filter]`.
    #[serde(default)]
    #[schema(example = json!([["is", "event:page", ["/pricing"]]]))]
    pub filters: Vec<Value>,
    /// `day`, `7d` (the default), `28d`, `30d`, `month`, `year`, `12mo`, `all`,
    /// `realtime`, or `[from, to]` as two dates or two RFC 3339 date-times.
    #[serde(default)]
    #[schema(example = "7d")]
    pub date_range: Option<Value>,
    /// `[[name, "asc" | "desc"], …]`: metrics and dimensions of the query.
    #[serde(default)]
    pub order_by: Option<Vec<(String, String)>>,
    #[serde(default)]
    pub pagination: Option<Pagination>,
    #[serde(default)]
    pub include: Option<Include>,
}

/// Which rows of the answer.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
pub struct Pagination {
    /// 1 to 10,000 (the default).
    pub limit: Option<u64>,
    pub offset: Option<u64>,
}

/// What else the answer holds.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
pub struct Include {
    /// `meta.total_rows`: the groups without pagination.
    pub total_rows: Option<bool>,
    /// `previous_period` or `year_over_year`: each row with its group then.
    pub comparisons: Option<String>,
}

/// One thing wrong with a query, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A JSON pointer (RFC 6901) into the request body.
    pub pointer: String,
    pub message: String,
}

/// A metric of `metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Metric {
    Visitors,
    Visits,
    Pageviews,
    Events,
    ViewsPerVisit,
    BounceRate,
    VisitDuration,
    /// The group's visitors as a share of all the query's visitors.
    Percentage,
    /// The mean `time_on_page` of the group's `page_unload` events, in seconds.
    TimeOnPage,
    /// `avg:props.<name>`, `p95:props.<name>`, …: over the events whose property is a number.
    Property(Aggregate, String),
    /// The share of the group's visitors who completed the goals of the query's `event:goal`
    /// filters and dimension (any of the site's goals when it has neither), in percent; the
    /// group's visitors counted without the `event:goal` filters.
    ConversionRate,
}

/// How a numeric property's values are summarised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Avg,
    Min,
    Max,
    Sum,
    /// A percentile, 1–99: the value at index ⌊level × n⌋ of the sorted values.
    Percentile(u8),
}

impl Metric {
    pub const NAMED: [(&'static str, Metric); 10] = [
        ("visitors", Metric::Visitors),
        ("visits", Metric::Visits),
        ("pageviews", Metric::Pageviews),
        ("events", Metric::Events),
        ("views_per_visit", Metric::ViewsPerVisit),
        ("bounce_rate", Metric::BounceRate),
        ("visit_duration", Metric::VisitDuration),
        ("percentage", Metric::Percentage),
        ("time_on_page", Metric::TimeOnPage),
        ("conversion_rate", Metric::ConversionRate),
    ];

    fn parse(name: &str) -> Option<Self> {
        if let Some((_, metric)) = Self::NAMED.iter().find(|(n, _)| *n == name) {
            return Some(metric.clone());
        }
        let (aggregate, key) = name.split_once(":props.")?;
        let aggregate = match aggregate {
            "avg" => Aggregate::Avg,
            "min" => Aggregate::Min,
            "max" => Aggregate::Max,
            "sum" => Aggregate::Sum,
            p => Aggregate::Percentile(
                p.strip_prefix('p')?
                    .parse()
                    .ok()
                    .filter(|n| (1..=99).contains(n))?,
            ),
        };
        (!key.is_empty() && key.len() <= 256).then(|| Metric::Property(aggregate, key.to_owned()))
    }
}

/// A time bucket of a `time:*` dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Minute,
    Hour,
    Day,
    Week,
    Month,
}

/// A dimension of `dimensions` (and the subject of a filter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dimension {
    /// `event:name`, `event:page`: a column of the event.
    Event(&'static str),
    /// `event:props:<key>`: a property's value, as text.
    Property(String),
    /// `visit:*`: an attribute of the event's visit (its first event, entry or exit page).
    Visit(&'static str),
    /// `event:goal`: the site's goals the event completes (one row per goal).
    Goal,
    Time(Bucket),
}

/// The `visit:*` dimensions, and the column of the visit that holds each.
pub const VISIT_DIMENSIONS: &[(&str, &str)] = &[
    ("visit:entry_page", "entry_page"),
    ("visit:exit_page", "exit_page"),
    ("visit:source", "source"),
    ("visit:referrer", "referrer"),
    ("visit:channel", "channel"),
    ("visit:utm_source", "utm_source"),
    ("visit:utm_medium", "utm_medium"),
    ("visit:utm_campaign", "utm_campaign"),
    ("visit:utm_term", "utm_term"),
    ("visit:utm_content", "utm_content"),
    ("visit:browser", "browser"),
    ("visit:browser_version", "browser_version"),
    ("visit:os", "os"),
    ("visit:os_version", "os_version"),
    ("visit:device", "device"),
];

impl Dimension {
    fn parse(name: &str, time_allowed: bool) -> Result<Self, String> {
        match name {
            "event:name" => return Ok(Self::Event("event_type")),
            "event:page" => return Ok(Self::Event("path")),
            "event:user_id" => return Ok(Self::Event("user_id")),
            "event:goal" => return Ok(Self::Goal),
            _ => {}
        }
        if let Some(key) = name.strip_prefix("event:props:") {
            return if key.is_empty() || key.len() > 256 {
                Err("a property name must have 1 to 256 characters".into())
            } else {
                Ok(Self::Property(key.to_owned()))
            };
        }
        if let Some((_, column)) = VISIT_DIMENSIONS.iter().find(|(n, _)| *n == name) {
            return Ok(Self::Visit(column));
        }
        let bucket = match name {
            "time:minute" => Some(Bucket::Minute),
            "time:hour" => Some(Bucket::Hour),
            "time:day" => Some(Bucket::Day),
            "time:week" => Some(Bucket::Week),
            "time:month" => Some(Bucket::Month),
            _ => None,
        };
        match bucket {
            Some(_) if !time_allowed => Err(format!("{name:?} cannot be filtered by")),
            Some(bucket) => Ok(Self::Time(bucket)),
            None => Err(format!(
                "unknown dimension {name:?}: use event:name, event:page, event:goal, event:user_id, event:props:<name>, \
                 visit:entry_page, visit:exit_page, visit:source, visit:referrer, visit:channel, \
                 visit:utm_*, visit:browser, visit:browser_version, visit:os, visit:os_version, \
                 visit:device, time, time:minute, time:hour, time:day, time:week or time:month"
            )),
        }
    }
}

/// How a filter compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Is,
    IsNot,
    Contains,
    ContainsNot,
    Matches,
    MatchesNot,
}

/// A filter: a comparison, or filters combined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    Compare {
        operator: Operator,
        dimension: Dimension,
        values: Vec<String>,
    },
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
}

/// The checked query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub site_id: String,
    pub metrics: Vec<Metric>,
    pub dimensions: Vec<Dimension>,
    pub filters: Vec<Filter>,
    pub range: Range,
    /// (index into metrics, or into dimensions; descending)
    pub order_by: Vec<(OrderKey, bool)>,
    pub limit: u64,
    pub offset: u64,
    pub total_rows: bool,
    /// `include.comparisons`: the period each row is compared with.
    pub comparison: Option<Comparison>,
    /// The site's goals (`spec.goals`), which `event:goal` and `conversion_rate` read.
    pub goals: Vec<Goal>,
    /// The request with its defaults filled in, as the answer echoes it.
    pub echo: Value,
}

impl Query {
    /// The dimensions the query groups by or filters by.
    pub fn used_dimensions(&self) -> Vec<&Dimension> {
        let mut used: Vec<&Dimension> = self.dimensions.iter().collect();
        for filter in &self.filters {
            filter.dimensions(&mut used);
        }
        used
    }

    /// Whether the query reads the goals each event completes.
    pub fn uses_goals(&self) -> bool {
        self.dimensions.contains(&Dimension::Goal)
            || self.metrics.contains(&Metric::ConversionRate)
            || self.filters.iter().any(Filter::is_goal)
    }
}

impl Filter {
    /// The dimensions this filter compares, those inside `and`, `or` and `not` included.
    fn dimensions<'a>(&'a self, out: &mut Vec<&'a Dimension>) {
        match self {
            Filter::Compare { dimension, .. } => out.push(dimension),
            Filter::And(all) | Filter::Or(all) => all.iter().for_each(|f| f.dimensions(out)),
            Filter::Not(one) => one.dimensions(out),
        }
    }

    /// Whether this is a comparison of `event:goal` (they stand at the top level only).
    pub fn is_goal(&self) -> bool {
        matches!(
            self,
            Filter::Compare {
                dimension: Dimension::Goal,
                ..
            }
        )
    }
}

/// The events a query reads, by time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// Whole days of the site's time zone, both included.
    Days { from: Date, to: Date },
    /// `[from, to)`, Unix milliseconds.
    Instants { from_ms: i64, to_ms: i64 },
}

impl Range {
    /// As the answer's `query.date_range` shows it.
    pub fn echo(&self) -> Value {
        match self {
            Self::Days { from, to } => json!([from.to_string(), to.to_string()]),
            Self::Instants { from_ms, to_ms } => json!([ms_text(*from_ms), ms_text(*to_ms)]),
        }
    }
}

/// The period a query's rows are compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// As long as the range, just before it.
    PreviousPeriod,
    /// The range a year before.
    YearOverYear,
}

impl Comparison {
    fn name(self) -> &'static str {
        match self {
            Self::PreviousPeriod => "previous_period",
            Self::YearOverYear => "year_over_year",
        }
    }

    /// The range `range` is compared with.
    pub fn range(self, range: Range) -> Range {
        let year_before = |d: Date| {
            d.replace_year(d.year() - 1)
                .or_else(|_| (d - Duration::days(1)).replace_year(d.year() - 1))
                .unwrap_or(d)
        };
        match (self, range) {
            (Self::PreviousPeriod, Range::Days { from, to }) => {
                let days = (to - from).whole_days() + 1;
                Range::Days {
                    from: from - Duration::days(days),
                    to: from - Duration::days(1),
                }
            }
            (Self::PreviousPeriod, Range::Instants { from_ms, to_ms }) => Range::Instants {
                from_ms: from_ms - (to_ms - from_ms),
                to_ms: from_ms,
            },
            (Self::YearOverYear, Range::Days { from, to }) => Range::Days {
                from: year_before(from),
                to: year_before(to),
            },
            (Self::YearOverYear, Range::Instants { from_ms, to_ms }) => {
                let back = |ms: i64| {
                    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                        .ok()
                        .and_then(|t| t.replace_date(year_before(t.date())).into())
                        .map_or(ms, |t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                };
                Range::Instants {
                    from_ms: back(from_ms),
                    to_ms: back(to_ms),
                }
            }
        }
    }
}

impl Query {
    /// The query of the period its rows are compared with, every group of it.
    pub fn compared(&self) -> Option<Query> {
        let comparison = self.comparison?;
        Some(Query {
            range: comparison.range(self.range),
            limit: MAX_COMPARED_ROWS,
            offset: 0,
            total_rows: false,
            // Kept, so that its rows carry the same bucket numbers.
            comparison: Some(comparison),
            ..self.clone()
        })
    }
}

/// Most groups of the compared period matched with an answer's rows.
pub const MAX_COMPARED_ROWS: u64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderKey {
    Metric(usize),
    Dimension(usize),
}

/// Reads a query of a site with `goals`. `now` is the time `realtime` ends at, `today` the
/// site's date then (in its time zone), where `day`, `7d`, `month` and the rest end.
pub fn parse(
    body: &Value,
    now: OffsetDateTime,
    today: Date,
    goals: &[Goal],
) -> Result<Query, Vec<Problem>> {
    let mut p = Problems::default();
    let Some(object) = body.as_object() else {
        p.add("", "the query must be a JSON object");
        return Err(p.0);
    };
    for key in object.keys() {
        if !matches!(
            key.as_str(),
            "site_id"
                | "metrics"
                | "dimensions"
                | "filters"
                | "date_range"
                | "order_by"
                | "pagination"
                | "include"
        ) {
            p.add(
                &format!("/{}", escape(key)),
                format!("unknown field {key:?}"),
            );
        }
    }
    let site_id = match object.get("site_id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => {
            p.add("/site_id", "must be a site id (a non-empty string)");
            String::new()
        }
        None => {
            p.add("/site_id", "is required");
            String::new()
        }
    };

    let mut metrics = Vec::new();
    let mut metric_names: Vec<String> = Vec::new();
    match object.get("metrics") {
        Some(Value::Array(items)) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                let name = item.as_str().unwrap_or_default();
                match Metric::parse(name) {
                    Some(metric) if metrics.contains(&metric) => {
                        p.add(
                            &format!("/metrics/{i}"),
                            format!("{name:?} is listed twice"),
                        );
                    }
                    Some(metric) => {
                        metrics.push(metric);
                        metric_names.push(name.to_owned());
                    }
                    None => p.add(
                        &format!("/metrics/{i}"),
                        format!(
                            "unknown metric {item}: use {}, or avg, min, max, sum, p1 … p99 of \
                             a numeric property (\"p95:props.response_time_ms\")",
                            Metric::NAMED.map(|(n, _)| n).join(", ")
                        ),
                    ),
                }
            }
        }
        _ => p.add("/metrics", "must be a non-empty array of metric names"),
    }

    let mut dimensions = Vec::new();
    let mut dimension_names: Vec<String> = Vec::new();
    let range_text = object.get("date_range").cloned().unwrap_or(json!("7d"));
    match object.get("dimensions") {
        None => {}
        Some(Value::Array(items)) => {
            if items.len() > MAX_DIMENSIONS {
                p.add(
                    "/dimensions",
                    format!("at most {MAX_DIMENSIONS} dimensions"),
                );
            }
            for (i, item) in items.iter().enumerate() {
                let Some(name) = item.as_str() else {
                    p.add(&format!("/dimensions/{i}"), "must be a dimension name");
                    continue;
                };
                // `time` picks its bucket from the range: hours for a day or less, else days.
                let name = if name == "time" {
                    let short = matches!(range_text.as_str(), Some("day" | "realtime"));
                    if short { "time:hour" } else { "time:day" }
                } else {
                    name
                };
                match Dimension::parse(name, true) {
                    Ok(d) if dimensions.contains(&d) => {
                        p.add(
                            &format!("/dimensions/{i}"),
                            format!("{name:?} is listed twice"),
                        );
                    }
                    Ok(d) => {
                        dimensions.push(d);
                        dimension_names.push(name.to_owned());
                    }
                    Err(message) => p.add(&format!("/dimensions/{i}"), message),
                }
            }
        }
        Some(_) => p.add("/dimensions", "must be an array of dimension names"),
    }

    let mut filters = Vec::new();
    let mut count = 0;
    match object.get("filters") {
        None => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let at = Place {
                    pointer: &format!("/filters/{i}"),
                    top: true,
                    goals,
                };
                if let Some(f) = parse_filter(item, &at, &mut p, &mut count) {
                    filters.push(f);
                }
            }
            if count > MAX_FILTERS {
                p.add("/filters", format!("at most {MAX_FILTERS} filters in all"));
            }
        }
        Some(_) => p.add("/filters", "must be an array of filters"),
    }

    let range = parse_range(&range_text, now, today).unwrap_or_else(|message| {
        p.add("/date_range", message);
        Range::Instants {
            from_ms: 0,
            to_ms: 0,
        }
    });

    let mut order_by = Vec::new();
    let mut order_echo = Vec::new();
    match object.get("order_by") {
        None => {
            // Time in order when grouped by it, else the first metric, largest first.
            if let Some(i) = dimensions
                .iter()
                .position(|d| matches!(d, Dimension::Time(_)))
            {
                order_by.push((OrderKey::Dimension(i), false));
                order_echo.push(json!([dimension_names[i], "asc"]));
            } else if !metrics.is_empty() {
                order_by.push((OrderKey::Metric(0), true));
                order_echo.push(json!([metric_names[0], "desc"]));
            }
        }
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let pointer = format!("/order_by/{i}");
                let pair = item.as_array().filter(|a| a.len() == 2);
                let (Some(name), Some(direction)) = (
                    pair.and_then(|a| a[0].as_str()),
                    pair.and_then(|a| a[1].as_str()),
                ) else {
                    p.add(&pointer, "must be [name, \"asc\" | \"desc\"]");
                    continue;
                };
                let descending = match direction {
                    "asc" => false,
                    "desc" => true,
                    _ => {
                        p.add(&format!("{pointer}/1"), "must be \"asc\" or \"desc\"");
                        continue;
                    }
                };
                let key = metric_names
                    .iter()
                    .position(|m| *m == name)
                    .map(OrderKey::Metric)
                    .or_else(|| {
                        dimension_names
                            .iter()
                            .position(|d| d == name)
                            .map(OrderKey::Dimension)
                    });
                match key {
                    Some(key) => {
                        order_by.push((key, descending));
                        order_echo.push(json!([name, direction]));
                    }
                    None => p.add(
                        &format!("{pointer}/0"),
                        format!("{name:?} is neither a metric nor a dimension of this query"),
                    ),
                }
            }
        }
        Some(_) => p.add("/order_by", "must be an array of [name, direction] pairs"),
    }

    let (mut limit, mut offset) = (MAX_LIMIT, 0);
    match object.get("pagination") {
        None => {}
        Some(Value::Object(page)) => {
            for (key, value) in page {
                let slot = match key.as_str() {
                    "limit" => &mut limit,
                    "offset" => &mut offset,
                    _ => {
                        p.add(
                            &format!("/pagination/{}", escape(key)),
                            format!("unknown field {key:?}"),
                        );
                        continue;
                    }
                };
                match value.as_u64() {
                    Some(n) if key == "limit" && !(1..=MAX_LIMIT).contains(&n) => p.add(
                        "/pagination/limit",
                        format!("must be from 1 to {MAX_LIMIT}: the query is too wide otherwise"),
                    ),
                    Some(n) => *slot = n,
                    None => p.add(&format!("/pagination/{key}"), "must be a whole number"),
                }
            }
        }
        Some(_) => p.add("/pagination", "must be {\"limit\": n, \"offset\": n}"),
    }

    let mut total_rows = false;
    let mut comparison = None;
    match object.get("include") {
        None => {}
        Some(Value::Object(include)) => {
            for (key, value) in include {
                match (key.as_str(), value) {
                    ("total_rows", Value::Bool(b)) => total_rows = *b,
                    ("total_rows", _) => p.add("/include/total_rows", "must be true or false"),
                    ("comparisons", Value::String(name)) if name == "previous_period" => {
                        comparison = Some(Comparison::PreviousPeriod);
                    }
                    ("comparisons", Value::String(name)) if name == "year_over_year" => {
                        comparison = Some(Comparison::YearOverYear);
                    }
                    ("comparisons", Value::Null) => {}
                    ("comparisons", _) => p.add(
                        "/include/comparisons",
                        "must be \"previous_period\" or \"year_over_year\"",
                    ),
                    _ => p.add(
                        &format!("/include/{}", escape(key)),
                        format!("unknown field {key:?} (use total_rows or comparisons)"),
                    ),
                }
            }
        }
        Some(_) => p.add("/include", "must be an object"),
    }

    // A metric that means nothing without a group.
    if dimensions.is_empty()
        && let Some(i) = metrics.iter().position(|m| *m == Metric::Percentage)
        && object
            .get("dimensions")
            .is_none_or(|d| d.as_array().is_some_and(Vec::is_empty))
    {
        p.add(
            &format!("/metrics/{i}"),
            "percentage is each group's share of the query's visitors: it needs a dimension",
        );
    }
    if goals.is_empty() {
        if let Some(i) = dimensions.iter().position(|d| *d == Dimension::Goal) {
            p.add(
                &format!("/dimensions/{i}"),
                "the site has no goals: declare them in spec.goals",
            );
        }
        if let Some(i) = metrics.iter().position(|m| *m == Metric::ConversionRate) {
            p.add(
                &format!("/metrics/{i}"),
                "the site has no goals: declare them in spec.goals",
            );
        }
    }
    if !p.0.is_empty() {
        return Err(p.0);
    }
    let echo = json!({
        "site_id": site_id,
        "metrics": metric_names,
        "dimensions": dimension_names,
        "filters": object.get("filters").cloned().unwrap_or(json!([])),
        "date_range": range.echo(),
        "order_by": order_echo,
        "pagination": {"limit": limit, "offset": offset},
        "include": {"total_rows": total_rows, "comparisons": comparison.map(Comparison::name)},
    });
    Ok(Query {
        site_id,
        metrics,
        dimensions,
        filters,
        range,
        order_by,
        limit,
        offset,
        total_rows,
        comparison,
        goals: goals.to_vec(),
        echo,
    })
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, pointer: &str, message: impl Into<String>) {
        self.0.push(Problem {
            pointer: pointer.to_owned(),
            message: message.into(),
        });
    }
}

/// A key as a JSON pointer's reference token.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Where a filter stands: its pointer, whether at the top level of `filters`, and the
/// goals an `event:goal` comparison may name.
struct Place<'a> {
    pointer: &'a str,
    top: bool,
    goals: &'a [Goal],
}

impl Place<'_> {
    fn inner<'b>(&'b self, pointer: &'b str) -> Place<'b> {
        Place {
            pointer,
            top: false,
            goals: self.goals,
        }
    }
}

fn parse_filter(
    value: &Value,
    at: &Place<'_>,
    p: &mut Problems,
    count: &mut usize,
) -> Option<Filter> {
    let pointer = at.pointer;
    *count += 1;
    let Some(items) = value.as_array().filter(|a| !a.is_empty()) else {
        p.add(pointer, "a filter is [operator, dimension, [values]], [\"and\"|\"or\", [filters]] or [\"not\", filter]");
        return None;
    };
    let Some(operator) = items[0].as_str() else {
        p.add(&format!("{pointer}/0"), "must be an operator name");
        return None;
    };
    let combined = |p: &mut Problems, count: &mut usize| -> Option<Vec<Filter>> {
        match items.get(1).and_then(Value::as_array) {
            Some(list) if items.len() == 2 && !list.is_empty() => {
                let parsed: Vec<Option<Filter>> = list
                    .iter()
                    .enumerate()
                    .map(|(i, f)| parse_filter(f, &at.inner(&format!("{pointer}/1/{i}")), p, count))
                    .collect();
                parsed.into_iter().collect()
            }
            _ => {
                p.add(
                    pointer,
                    format!("{operator:?} takes one non-empty array of filters"),
                );
                None
            }
        }
    };
    match operator {
        "and" => return combined(p, count).map(Filter::And),
        "or" => return combined(p, count).map(Filter::Or),
        "not" => {
            return if items.len() == 2 {
                parse_filter(&items[1], &at.inner(&format!("{pointer}/1")), p, count)
                    .map(|f| Filter::Not(Box::new(f)))
            } else {
                p.add(pointer, "\"not\" takes one filter");
                None
            };
        }
        _ => {}
    }
    let operator = match operator {
        "is" => Operator::Is,
        "is_not" => Operator::IsNot,
        "contains" => Operator::Contains,
        "contains_not" => Operator::ContainsNot,
        "matches" => Operator::Matches,
        "matches_not" => Operator::MatchesNot,
        other => {
            p.add(
                &format!("{pointer}/0"),
                format!(
                    "unknown operator {other:?}: use is, is_not, contains, contains_not, matches, \
                     matches_not, and, or or not"
                ),
            );
            return None;
        }
    };
    if items.len() != 3 {
        p.add(pointer, "a comparison is [operator, dimension, [values]]");
        return None;
    }
    let dimension = match items[1].as_str().map(|name| Dimension::parse(name, false)) {
        Some(Ok(d)) => Some(d),
        Some(Err(message)) => {
            p.add(&format!("{pointer}/1"), message);
            None
        }
        None => {
            p.add(&format!("{pointer}/1"), "must be a dimension name");
            None
        }
    };
    let values: Option<Vec<String>> = match items[2].as_array() {
        Some(list) if !list.is_empty() && list.len() <= 100 => {
            let mut values = Vec::new();
            for (i, v) in list.iter().enumerate() {
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => {
                        p.add(
                            &format!("{pointer}/2/{i}"),
                            "must be a string, number or boolean",
                        );
                        continue;
                    }
                };
                if matches!(operator, Operator::Matches | Operator::MatchesNot)
                    && let Err(e) = regex_syntax::Parser::new().parse(&text)
                {
                    p.add(
                        &format!("{pointer}/2/{i}"),
                        format!("not a regular expression: {e}"),
                    );
                }
                values.push(text);
            }
            Some(values)
        }
        _ => {
            p.add(
                &format!("{pointer}/2"),
                "must be an array of 1 to 100 values",
            );
            None
        }
    };
    if dimension == Some(Dimension::Goal) {
        if !at.top {
            p.add(
                &format!("{pointer}/1"),
                "event:goal is filtered at the top level of filters only (not inside and, or \
                 or not): a group's conversion rate counts its visitors without these filters",
            );
        }
        if !matches!(
            operator,
            Operator::Is | Operator::Contains | Operator::Matches
        ) {
            p.add(
                &format!("{pointer}/0"),
                "event:goal takes is, contains or matches",
            );
        }
        if operator == Operator::Is {
            for (i, name) in values.iter().flatten().enumerate() {
                if !at.goals.iter().any(|g| g.name == *name) {
                    p.add(
                        &format!("{pointer}/2/{i}"),
                        format!(
                            "{name:?} is not a goal of the site ({})",
                            goal_names(at.goals)
                        ),
                    );
                }
            }
        }
    }
    Some(Filter::Compare {
        operator,
        dimension: dimension?,
        values: values?,
    })
}

/// The goals' names, as a problem lists them.
fn goal_names(goals: &[Goal]) -> String {
    if goals.is_empty() {
        return "it has none: declare them in spec.goals".into();
    }
    let names: Vec<String> = goals.iter().map(|g| format!("{:?}", g.name)).collect();
    format!("its goals are {}", names.join(", "))
}

/// The range of `date_range`: `day` (today), `7d`, `28d`, `30d` (ending today, inclusive),
/// `month` and `year` (from the first day of this month or year), `12mo` (this month and the
/// 11 before), `all` (from 2000), `realtime` (the last 30 minutes), or `[from, to]`: two
/// dates (inclusive) or two RFC 3339 date-times. Days are the site's.
pub fn parse_range(value: &Value, now: OffsetDateTime, today: Date) -> Result<Range, String> {
    let days = |from: Date| Ok(Range::Days { from, to: today });
    let back = |n: i64| days(today - Duration::days(n - 1));
    let first_of_month = today.replace_day(1).expect("day 1 exists");
    let now_ms = (now.unix_timestamp_nanos() / 1_000_000) as i64;
    match value {
        Value::String(s) => match s.as_str() {
            "day" => back(1),
            "7d" => back(7),
            "28d" => back(28),
            "30d" => back(30),
            "month" => days(first_of_month),
            "year" => days(Date::from_ordinal_date(today.year(), 1).expect("day 1 exists")),
            "12mo" => {
                let mut first = first_of_month;
                for _ in 0..11 {
                    first = (first - Duration::days(1))
                        .replace_day(1)
                        .expect("day 1 exists");
                }
                days(first)
            }
            "all" => days(Date::from_ordinal_date(2000, 1).expect("a date")),
            "realtime" => Ok(Range::Instants {
                from_ms: now_ms - 30 * 60 * 1000,
                to_ms: now_ms + 1,
            }),
            other => Err(format!(
                "unknown date range {other:?}: use day, 7d, 28d, 30d, month, year, 12mo, all, \
                 realtime or [from, to]"
            )),
        },
        Value::Array(pair) if pair.len() == 2 => {
            let (Some(a), Some(b)) = (pair[0].as_str(), pair[1].as_str()) else {
                return Err("[from, to] must be two dates or two date-times".into());
            };
            let date = format_description!("[year]-[month]-[day]");
            let rfc = time::format_description::well_known::Rfc3339;
            let range = match (Date::parse(a, date), Date::parse(b, date)) {
                (Ok(from), Ok(to)) if from <= to => Range::Days { from, to },
                (Ok(_), Ok(_)) => return Err("from must not come after to".into()),
                _ => match (
                    OffsetDateTime::parse(a, &rfc),
                    OffsetDateTime::parse(b, &rfc),
                ) {
                    (Ok(from), Ok(to)) if from < to => Range::Instants {
                        from_ms: (from.unix_timestamp_nanos() / 1_000_000) as i64,
                        to_ms: (to.unix_timestamp_nanos() / 1_000_000) as i64 + 1,
                    },
                    (Ok(_), Ok(_)) => return Err("from must come before to".into()),
                    _ => {
                        return Err(format!(
                            "[{a:?}, {b:?}] must be two dates (2026-01-31) or two RFC 3339 \
                             date-times (2026-01-31T12:00:00Z)"
                        ));
                    }
                },
            };
            Ok(range)
        }
        _ => Err("must be a range name such as \"7d\" or [from, to]".into()),
    }
}

/// A UTC millisecond as RFC 3339.
fn ms_text(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pointers(body: Value, goals: &[Goal]) -> Vec<String> {
        let now = time::macros::datetime!(2026-01-31 12:00 UTC);
        parse(&body, now, now.date(), goals)
            .unwrap_err()
            .into_iter()
            .map(|p| p.pointer)
            .collect()
    }

    #[test]
    fn goal_filters_stand_at_the_top_and_name_declared_goals() {
        let signup: Goal =
            serde_json::from_value(json!({"name": "Signup", "eventType": "signup"})).unwrap();
        let got = pointers(
            json!({
                "site_id": "shop", "metrics": ["conversion_rate"],
                "filters": [["not", ["is", "event:goal", ["Signup"]]],
                            ["is", "event:goal", ["Signup", "Nope"]],
                            ["is_not", "event:goal", ["Signup"]]],
            }),
            &[signup],
        );
        assert_eq!(got, ["/filters/0/1/1", "/filters/1/2/1", "/filters/2/0"]);
        // A site without goals has no event:goal nor conversion_rate.
        let got = pointers(
            json!({"site_id": "docs", "metrics": ["visitors", "conversion_rate"],
                   "dimensions": ["event:goal"]}),
            &[],
        );
        assert_eq!(got, ["/dimensions/0", "/metrics/1"]);
        // A share without groups is refused.
        let got = pointers(
            json!({"site_id": "docs", "metrics": ["visitors", "percentage"]}),
            &[],
        );
        assert_eq!(got, ["/metrics/1"]);
    }
}
