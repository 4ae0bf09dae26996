//! Which rollup answers a query exactly, and the query's statement over it.
//!
//! `events_hourly` (by site, UTC hour and event type) and `pages_hourly` (by site, UTC hour,
//! event type and path) hold each group's events and the set of its visitors, bots left
//! out as in every `/v1/query` answer. A query is answered from one of them when:
//!
//! - its metrics are `visitors`, `pageviews`, `events` or `percentage` (no visit: its
//!   figures are sums of the groups' events and unions of their visitor sets);
//! - its dimensions and filters are `event:name`, `event:page` (then `pages_hourly`) and
//!   time buckets of an hour or more;
//! - its range is made of whole UTC hours: whole days of a zone whose offset from UTC is a
//!   whole number of hours (a zone such as `Asia/Kolkata` is read from the raw events), or
//!   date-times on the hour; and it starts where the rollup holds every event
//!   (`rollup_coverage`).
//!
//! Everything else reads the raw events ([`super::sql`]). Both give the same figures; the
//! differential test asks both.

use std::fmt::Write as _;

use tally_contracts::schema::{EVENTS_HOURLY, PAGE_VIEW, PAGES_HOURLY};

use super::request::{Bucket, Dimension, Metric, Query, Range};
use super::sql::{Builder, Compiled, Param, bounds, bucket_ordinals, finish};

/// A rollup the query API reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollup {
    /// `events_hourly`.
    Events,
    /// `pages_hourly`.
    Pages,
}

impl Rollup {
    pub fn table(self) -> &'static str {
        match self {
            Self::Events => EVENTS_HOURLY,
            Self::Pages => PAGES_HOURLY,
        }
    }
}

/// What the choice depends on besides the query.
#[derive(Debug, Clone, Copy, Default)]
pub struct Coverage {
    /// From when `events_hourly` holds every event (Unix ms); `None` when it does not exist.
    pub events_since_ms: Option<i64>,
    /// The same for `pages_hourly`.
    pub pages_since_ms: Option<i64>,
    /// Whether the site's zone is a whole number of hours from UTC at every time (its
    /// hours and midnights are UTC hours).
    pub whole_hour_zone: bool,
}

const HOUR_MS: i64 = 3_600_000;
/// The most a zone is ahead of UTC (`Pacific/Kiritimati`, +14:00): a day starts no earlier
/// than this before its UTC midnight.
const MOST_AHEAD_MS: i64 = 14 * HOUR_MS;

/// The rollup whose rows hold `query`'s metrics, dimensions and filters, if one does;
/// whether it holds the range too is [`route`]'s to say.
pub fn shaped_for(query: &Query) -> Option<Rollup> {
    let metrics_fit = query.metrics.iter().all(|m| {
        matches!(
            m,
            Metric::Visitors | Metric::Pageviews | Metric::Events | Metric::Percentage
        )
    });
    if !metrics_fit {
        return None;
    }
    // Whether a dimension fits, and whether it is the page.
    let fits = |d: &Dimension| match d {
        Dimension::Event("event_type") => Some(false),
        Dimension::Event("path") => Some(true),
        Dimension::Time(bucket) => (*bucket != Bucket::Minute).then_some(false),
        _ => None,
    };
    let mut pages = false;
    for d in query.used_dimensions() {
        pages |= fits(d)?;
    }
    Some(if pages { Rollup::Pages } else { Rollup::Events })
}

/// The rollup that answers `query`, if one does.
pub fn route(query: &Query, coverage: &Coverage) -> Option<Rollup> {
    let rollup = shaped_for(query)?;
    let from_ms = match query.range {
        Range::Days { from, .. } if coverage.whole_hour_zone => {
            from.midnight().assume_utc().unix_timestamp() * 1000 - MOST_AHEAD_MS
        }
        Range::Instants { from_ms, to_ms }
            if coverage.whole_hour_zone && from_ms % HOUR_MS == 0 && to_ms % HOUR_MS == 0 =>
        {
            from_ms
        }
        _ => return None,
    };
    let since = match rollup {
        Rollup::Pages => coverage.pages_since_ms,
        Rollup::Events => coverage.events_since_ms,
    };
    since
        .is_some_and(|since| from_ms >= since)
        .then_some(rollup)
}

/// The statement of `query` over `rollup` (which [`route`] chose) in database `db`.
pub fn compile(db: &str, query: &Query, time_zone: &str, rollup: Rollup) -> Compiled {
    let table = rollup.table();
    let mut b = Builder::new(time_zone, false).bucketing("hour");
    let site = b.bind("p", "String", Param::Text(query.site_id.clone()));
    let (from, to) = bounds(&mut b, query.range);
    let mut rows =
        format!("`{db}`.{table} WHERE site_id = {site} AND hour >= {from} AND hour < {to}");
    for filter in &query.filters {
        let _ = write!(rows, " AND ({})", b.filter(filter));
    }
    let mut select: Vec<String> = (query.dimensions.iter().enumerate())
        .map(|(i, d)| format!("{} AS d{i}", b.dimension(d)))
        .collect();
    for (i, m) in query.metrics.iter().enumerate() {
        let expr = match m {
            Metric::Visitors => "uniqExactMerge(visitors)".to_owned(),
            Metric::Pageviews => format!("sumIf(events, event_type = '{PAGE_VIEW}')"),
            Metric::Events => "sum(events)".to_owned(),
            // All the groups' visitors: a window over the groups.
            Metric::Percentage => {
                let total = "uniqExactMerge(uniqExactMergeState(visitors)) OVER ()";
                format!("if({total} = 0, 0, round(100 * uniqExactMerge(visitors) / {total}, 2))")
            }
            other => unreachable!("route() sends {other:?} to the raw events"),
        };
        select.push(format!("{expr} AS m{i}"));
    }
    for (i, ordinal) in bucket_ordinals(&b, query, &from) {
        select.push(format!("any({ordinal}) AS o{i}"));
    }
    let mut sql = format!("SELECT {} FROM {rows}", select.join(", "));
    if !query.dimensions.is_empty() {
        let groups: Vec<String> = (0..query.dimensions.len())
            .map(|i| format!("d{i}"))
            .collect();
        let _ = write!(sql, " GROUP BY {}", groups.join(", "));
    }
    finish(b, query, sql, Some(table))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::query::request::parse;

    const EVERYTHING: Coverage = Coverage {
        events_since_ms: Some(0),
        pages_since_ms: Some(0),
        whole_hour_zone: true,
    };

    fn unix_ms(at: time::OffsetDateTime) -> i64 {
        (at.unix_timestamp_nanos() / 1_000_000) as i64
    }

    fn query(body: Value) -> Query {
        let now = time::macros::datetime!(2026-01-31 12:00 UTC);
        parse(&body, now, now.date(), &[]).unwrap()
    }

    fn routed(body: Value, coverage: &Coverage) -> Option<Rollup> {
        route(&query(body), coverage)
    }

    #[test]
    fn counts_without_visits_read_a_rollup_and_pages_read_the_pages_one() {
        let totals = json!({"site_id": "shop", "metrics": ["visitors", "pageviews", "events"],
                            "dimensions": ["time:day", "event:name"], "date_range": "30d"});
        assert_eq!(routed(totals, &EVERYTHING), Some(Rollup::Events));
        let pages = json!({"site_id": "shop", "metrics": ["visitors", "percentage"],
                           "dimensions": ["event:page"],
                           "filters": [["not", ["contains", "event:name", ["click"]]]]});
        assert_eq!(routed(pages, &EVERYTHING), Some(Rollup::Pages));
        let filtered = json!({"site_id": "shop", "metrics": ["pageviews"],
                              "filters": [["is", "event:page", ["/pricing"]]]});
        assert_eq!(routed(filtered, &EVERYTHING), Some(Rollup::Pages));
    }

    #[test]
    fn visits_other_dimensions_minutes_and_odd_ranges_read_the_raw_events() {
        for body in [
            json!({"site_id": "s", "metrics": ["visitors", "bounce_rate"]}),
            json!({"site_id": "s", "metrics": ["visitors"], "dimensions": ["visit:source"]}),
            json!({"site_id": "s", "metrics": ["visitors"], "dimensions": ["event:props:plan"]}),
            json!({"site_id": "s", "metrics": ["visitors"], "dimensions": ["time:minute"]}),
            json!({"site_id": "s", "metrics": ["events"],
                   "filters": [["is", "visit:device", ["mobile"]]]}),
            json!({"site_id": "s", "metrics": ["visitors"], "date_range": "realtime"}),
            json!({"site_id": "s", "metrics": ["visitors"],
                   "date_range": ["2026-01-01T10:30:00Z", "2026-01-01T12:00:00Z"]}),
        ] {
            assert_eq!(routed(body.clone(), &EVERYTHING), None, "{body}");
        }
        // `to` is included: up to the last millisecond of an hour.
        let on_the_hour = json!({"site_id": "s", "metrics": ["visitors"],
                                 "date_range": ["2026-01-01T10:00:00Z", "2026-01-01T11:59:59.999Z"]});
        assert_eq!(routed(on_the_hour, &EVERYTHING), Some(Rollup::Events));
    }

    #[test]
    fn a_half_hour_zone_or_a_range_before_the_coverage_reads_the_raw_events() {
        let body = json!({"site_id": "s", "metrics": ["visitors"], "date_range": ["2026-01-10", "2026-01-12"]});
        let kolkata = Coverage {
            whole_hour_zone: false,
            ..EVERYTHING
        };
        assert_eq!(routed(body.clone(), &kolkata), None);
        let start = time::macros::datetime!(2026-01-10 00:00 UTC);
        let late = Coverage {
            events_since_ms: Some(unix_ms(start)),
            ..EVERYTHING
        };
        assert_eq!(
            routed(body.clone(), &late),
            None,
            "a zone ahead of UTC starts the day before"
        );
        let early = Coverage {
            events_since_ms: Some(unix_ms(start) - MOST_AHEAD_MS),
            ..EVERYTHING
        };
        assert_eq!(routed(body.clone(), &early), Some(Rollup::Events));
        let missing = Coverage {
            events_since_ms: None,
            ..EVERYTHING
        };
        assert_eq!(routed(body, &missing), None);
    }

    #[test]
    fn the_rollup_statement_binds_every_value_and_orders_like_the_raw_one() {
        let q = query(
            json!({"site_id": "shop'--", "metrics": ["pageviews", "percentage"],
                             "dimensions": ["event:page"],
                             "filters": [["matches", "event:page", ["^/blog'"]]],
                             "order_by": [["pageviews", "desc"]],
                             "include": {"total_rows": true}}),
        );
        let c = compile("tally_web", &q, "UTC", Rollup::Pages);
        assert!(
            !c.sql.contains("shop'") && !c.sql.contains("blog'"),
            "{}",
            c.sql
        );
        assert!(
            c.sql
                .contains("FROM `tally_web`.pages_hourly WHERE site_id = {p1:String}"),
            "{}",
            c.sql
        );
        assert!(
            c.sql.contains("ORDER BY m0 DESC, d0 ASC LIMIT"),
            "{}",
            c.sql
        );
        assert_eq!(c.rollup, Some("pages_hourly"));
        assert!(
            c.total_sql
                .unwrap()
                .starts_with("SELECT count() FROM (SELECT")
        );
    }
}
