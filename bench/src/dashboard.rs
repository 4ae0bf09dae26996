//! The `queries` phase: a dashboard's worth of read-API requests over the `reads` phase's
//! history (10 million events, 50 sites, 30 days): totals, time series by day and by hour,
//! top pages, sources, devices, goals, an experiment summary and the session browser with
//! and without a search — each timed one request at a time, p50 and p95. Two baselines in
//! the same run: the totals against the same figures from the `site_daily` rollup in SQL
//! (what `/v1/stats` reads), and the session search against the same statement with the
//! n-gram index switched off (`use_skip_indexes = 0`), with the index's size.

use serde::Serialize;
use tally_contracts::schema::{EVENTS, SEARCH_INDEX, SEARCH_TEXT};

use crate::client::Request;
use crate::reads::{Query, time_queries};
use crate::target::Target;

/// The experiment every bench site declares, and the goal it counts.
pub const EXPERIMENT: &str = "bench-checkout";
pub const GOAL: &str = "Signup";

#[derive(Debug, Clone, Serialize)]
pub struct Dashboard {
    pub queries: Vec<Query>,
    /// The search with the index, and without it, straight from ClickHouse.
    pub search_with_index: Query,
    pub search_without_index: Query,
    /// The n-gram index on disk, and the `events` table.
    pub index_bytes: u64,
    pub table_bytes: u64,
}

/// The panels: (name, how the request is made for a site).
type MakePanel = Box<dyn Fn(&str) -> Panel>;

fn panels() -> Vec<(&'static str, MakePanel)> {
    let query = |body: String| Panel::Post("/v1/query", body);
    vec![
        (
            "totals 7d",
            Box::new(move |s: &str| {
                query(format!(
                    r#"{{"site_id":"{s}","metrics":["visitors","visits","pageviews","views_per_visit","bounce_rate","visit_duration"],"date_range":"7d"}}"#
                ))
            }),
        ),
        (
            "visitors by day 30d",
            Box::new(move |s: &str| {
                query(format!(
                    r#"{{"site_id":"{s}","metrics":["visitors","pageviews"],"dimensions":["time:day"],"date_range":"30d"}}"#
                ))
            }),
        ),
        (
            "visitors by hour, today",
            Box::new(move |s: &str| {
                query(format!(
                    r#"{{"site_id":"{s}","metrics":["visitors","pageviews"],"dimensions":["time:hour"],"date_range":"day"}}"#
                ))
            }),
        ),
        (
            "top pages 7d",
            Box::new(move |s: &str| {
                query(format!(
                    r#"{{"site_id":"{s}","metrics":["visitors","pageviews"],"dimensions":["event:page"],"date_range":"7d","pagination":{{"limit":10}}}}"#
                ))
            }),
        ),
        (
            "sources 7d",
            Box::new(move |s: &str| {
                query(format!(
                    r#"{{"site_id":"{s}","metrics":["visitors","bounce_rate"],"dimensions":["visit:source"],"date_range":"7d","pagination":{{"limit":10}}}}"#
                ))
            }),
        ),
        (
            "devices 7d",
            Box::new(move |s: &str| {
                query(format!(
                    r#"{{"site_id":"{s}","metrics":["visitors","percentage"],"dimensions":["visit:device"],"date_range":"7d"}}"#
                ))
            }),
        ),
        (
            "goals 7d",
            Box::new(move |s: &str| {
                query(format!(
                    r#"{{"site_id":"{s}","metrics":["visitors","events","conversion_rate"],"dimensions":["event:goal"],"date_range":"7d"}}"#
                ))
            }),
        ),
        (
            "totals 7d vs previous",
            Box::new(move |s: &str| {
                query(format!(
                    r#"{{"site_id":"{s}","metrics":["visitors","pageviews"],"date_range":"7d","include":{{"comparisons":"previous_period"}}}}"#
                ))
            }),
        ),
        (
            "experiment summary",
            Box::new(|s: &str| {
                Panel::Get(format!("/v1/experiments/{EXPERIMENT}/summary?site_id={s}"))
            }),
        ),
        (
            "sessions 7d",
            Box::new(|s: &str| {
                Panel::Get(format!("/v1/sessions?site_id={s}&date_range=7d&limit=50"))
            }),
        ),
        (
            "sessions 7d, search",
            Box::new(|s: &str| {
                Panel::Get(format!(
                    "/v1/sessions?site_id={s}&date_range=7d&limit=50&search=%2Fpage%2F499"
                ))
            }),
        ),
    ]
}

enum Panel {
    Post(&'static str, String),
    Get(String),
}

pub async fn run(target: &Target, sites: &[String], queries: usize) -> anyhow::Result<Dashboard> {
    let mut results = Vec::new();
    for (name, make) in panels() {
        eprintln!("  {name} × {queries}");
        let request = |site: &str| match make(site) {
            Panel::Post(path, body) => {
                Request::read_post(&target.stats_host, path, body.as_bytes(), &target.read_key)
            }
            Panel::Get(path) => Request::read(&target.stats_host, &path, &target.read_key),
        };
        results.push(
            time_queries(name, target.stats, queries, sites, 1, |site, _| {
                request(site)
            })
            .await?,
        );
    }
    let (with, without) = search_baseline(target, sites, queries).await?;
    let db = target.database();
    let index_bytes = target
        .sql_u64(&format!(
            "SELECT sum(data_compressed_bytes) FROM system.data_skipping_indices \
             WHERE database = '{db}' AND table = '{EVENTS}' AND name = '{SEARCH_INDEX}'"
        ))
        .await
        .unwrap_or(0);
    let table_bytes = target
        .sql_u64(&format!(
            "SELECT sum(data_compressed_bytes) FROM system.parts \
             WHERE database = '{db}' AND table = '{EVENTS}' AND active"
        ))
        .await
        .unwrap_or(0);
    Ok(Dashboard {
        queries: results,
        search_with_index: with,
        search_without_index: without,
        index_bytes,
        table_bytes,
    })
}

/// The session search's statement (the events that hold the text, over a site's week)
/// straight from ClickHouse, with the index and without.
async fn search_baseline(
    target: &Target,
    sites: &[String],
    queries: usize,
) -> anyhow::Result<(Query, Query)> {
    let db = target.database();
    let (addr, host) = crate::reads::clickhouse_addr(target)?;
    let statement = |skip: u8, site: &str| {
        format!(
            "SELECT DISTINCT session_id FROM `{db}`.{EVENTS} WHERE site_id = '{site}' \
             AND timestamp >= now() - INTERVAL 7 DAY AND session_id != '' \
             AND {SEARCH_TEXT} LIKE '%/page/499%' SETTINGS use_skip_indexes = {skip} \
             FORMAT JSONCompact"
        )
    };
    let n = (queries / 2).max(10);
    let mut out = Vec::new();
    for (name, skip) in [("search SQL, n-gram index", 1), ("search SQL, no index", 0)] {
        eprintln!("  {name} × {n}");
        out.push(
            time_queries(name, addr, n, sites, 1, |site, _| {
                Request::post(
                    &host,
                    "/",
                    "text/plain",
                    statement(skip, site).as_bytes(),
                    0,
                )
            })
            .await?,
        );
    }
    let without = out.pop().expect("two timings");
    let with = out.pop().expect("two timings");
    Ok((with, without))
}
