//! Reads over a large history: generated rows go straight into the pipeline's `events`
//! table with `INSERT … SELECT … FROM numbers()`, so the materialized views fill the rollups
//! exactly as they do for the processor's inserts; then `/v1/stats` and the documented
//! rollup SQL are timed one query at a time.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use tally_contracts::schema;

use crate::client::{Conn, Request};
use crate::generate::{Gen, now_ms};
use crate::load::{histogram, ms};
use crate::target::Target;

#[derive(Debug, Clone, Serialize)]
pub struct Load {
    pub events: u64,
    pub days: u32,
    pub sites: usize,
    pub seconds: f64,
    pub rows_per_second: f64,
    /// Waiting for background merges to settle after the load (bounded).
    pub merge_wait_seconds: f64,
    pub cpu: Vec<crate::memory::CpuUse>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Query {
    pub name: String,
    pub queries: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The `INSERT … SELECT` of rows `[from, from + count)` of `total` spread evenly over the
/// `days` before `end_ms`. Distribution: `sites` round-robin; 70 % page views; paths skewed
/// over 500; sessions of 20 consecutive events of a site, each one visitor's (from 300,000;
/// two thirds of the sessions logged in, as one of 100,000 users); a source and a device
/// from the visitor; a quarter of the events in the experiment every bench site declares,
/// in the variant of their visitor.
pub fn insert_sql(
    db: &str,
    sites: &[String],
    days: u32,
    end_ms: i64,
    total: u64,
    from: u64,
    count: u64,
) -> String {
    let span = i64::from(days) * 86_400_000;
    let start = end_ms - span;
    let n = sites.len();
    let sites = sites
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let experiment = crate::dashboard::EXPERIMENT;
    format!(
        "INSERT INTO `{db}`.events (event_id, site_id, event_type, timestamp, received_at, path, url, \
           referrer, title, user_id, visitor_id, session_id, properties, source, device) \
         WITH intDiv(number, 20 * {n}) AS session, cityHash64(session, 3) % 300000 AS visitor \
         SELECT generateUUIDv4(number) AS event_id, \
           [{sites}][number % {n} + 1] AS site_id, \
           if(number % 10 < 7, 'page_view', ['click', 'signup', 'scroll'][number % 3 + 1]) AS event_type, \
           fromUnixTimestamp64Milli(toInt64({start} + intDiv(number * {span}, {total})), 'UTC') AS timestamp, \
           timestamp AS received_at, \
           concat('/page/', toString(toUInt32(sqrt(cityHash64(number, 1) % 250000)))) AS path, \
           concat('https://', site_id, '.example.com', path) AS url, \
           '' AS referrer, '' AS title, \
           if(cityHash64(session, 4) % 3 = 0, '', \
              concat('u', toString(cityHash64(session, 2) % 100000))) AS user_id, \
           concat('v', toString(visitor)) AS visitor_id, \
           concat('s', toString(session)) AS session_id, \
           if(number % 4 = 0, concat('{{\"experiment_id\":\"{experiment}\",\"variant\":\"', \
              if(visitor % 2 = 0, 'A', 'B'), '\"}}'), '{{}}') AS properties, \
           ['', 'Google', 'Facebook', 'newsletter'][visitor % 4 + 1] AS source, \
           ['desktop', 'mobile', 'tablet'][visitor % 3 + 1] AS device \
         FROM numbers({from}, {count})"
    )
}

pub async fn load(
    target: &Target,
    events: u64,
    days: u32,
    sites: &[String],
    processes: Vec<(String, u32)>,
) -> anyhow::Result<Load> {
    let meter = crate::memory::CpuMeter::start(processes);
    let db = target.database();
    let end = now_ms();
    let chunk = 1_000_000u64;
    let start = Instant::now();
    let mut from = 0;
    while from < events {
        let count = chunk.min(events - from);
        target
            .sql(&insert_sql(&db, sites, days, end, events, from, count))
            .await
            .context("loading generated rows")?;
        from += count;
        eprintln!(
            "  loaded {from} of {events} rows ({:.0} rows/s)",
            from as f64 / start.elapsed().as_secs_f64()
        );
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu = meter.finish();
    let merges = Instant::now();
    let deadline = merges + Duration::from_secs(120);
    while Instant::now() < deadline {
        let running = target
            .sql_u64(&format!(
                "SELECT count() FROM system.merges WHERE database = '{db}'"
            ))
            .await
            .unwrap_or(0);
        if running == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(Load {
        events,
        days,
        sites: sites.len(),
        seconds,
        rows_per_second: events as f64 / seconds,
        merge_wait_seconds: merges.elapsed().as_secs_f64(),
        cpu,
    })
}

fn raw_sql(db: &str) -> String {
    format!(
        "SELECT countIf(event_type = 'page_view'), uniqExactIf(user_id, user_id != '') \
         FROM `{db}`.events WHERE site_id = {{site:String}} AND toDate(timestamp) = {{day:Date}}"
    )
}

fn day(days_ago: u64) -> String {
    let date = time::OffsetDateTime::now_utc().date() - time::Duration::days(days_ago as i64);
    date.to_string()
}

/// Times `queries` sequential requests built by `make(site, day)`, for random sites and
/// days of the last `days`.
pub async fn time_queries(
    name: &str,
    addr: std::net::SocketAddr,
    queries: usize,
    sites: &[String],
    days: u32,
    make: impl Fn(&str, &str) -> Request,
) -> anyhow::Result<Query> {
    let mut conn = Conn::new(addr, Duration::from_secs(30));
    let mut h = histogram();
    let mut generator = Gen::new(42);
    for i in 0..queries + 5 {
        let site = &sites[generator.below(sites.len() as u64) as usize];
        let date = day(generator.below(u64::from(days)));
        let request = make(site, &date);
        let start = Instant::now();
        let answer = conn.send(&request.bytes).await?;
        let took = start.elapsed();
        if answer.status != 200 {
            bail!(
                "{name} answered {}: {}",
                answer.status,
                String::from_utf8_lossy(conn.body())
            );
        }
        // The first few warm the connection and caches.
        if i >= 5 {
            h.saturating_record(took.as_micros().max(1) as u64);
        }
    }
    Ok(Query {
        name: name.to_owned(),
        queries,
        p50_ms: ms(&h, 0.5),
        p95_ms: ms(&h, 0.95),
        p99_ms: ms(&h, 0.99),
        max_ms: ms(&h, 1.0),
    })
}

pub fn clickhouse_addr(target: &Target) -> anyhow::Result<(std::net::SocketAddr, String)> {
    let host = target
        .clickhouse_url
        .strip_prefix("http://")
        .context("the ClickHouse URL must be http://")?
        .trim_end_matches('/')
        .to_owned();
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&host)?
        .next()
        .context("the ClickHouse address does not resolve")?;
    Ok((addr, host))
}

/// The top paths `/v1/stats` shows by default, and the SQL timing asks for.
const TOP_PATHS: u32 = 10;

/// A POST of `sql` (the documented statements: what `/v1/stats` runs) with its parameters.
fn sql_request(host: &str, sql: &str, site: &str, day: &str) -> Request {
    Request::post(
        host,
        &format!(
            "/?param_site={site}&param_day={day}&param_limit={TOP_PATHS}&default_format=JSONCompact"
        ),
        "text/plain",
        sql.as_bytes(),
        0,
    )
}

pub async fn queries(
    target: &Target,
    sites: &[String],
    days: u32,
    queries: usize,
) -> anyhow::Result<Vec<Query>> {
    let db = target.database();
    let host = target.stats_host.clone();
    let key = target.read_key.clone();
    let mut results = Vec::new();
    eprintln!("  /v1/stats × {queries}");
    results.push(
        time_queries(
            "GET /v1/stats",
            target.stats,
            queries,
            sites,
            days,
            |site, day| Request::read(&host, &format!("/v1/stats?site_id={site}&date={day}"), &key),
        )
        .await?,
    );
    let (ch, ch_host) = clickhouse_addr(target)?;
    for (name, sql, n) in [
        ("SQL totals (site_daily)", schema::totals_sql(&db), queries),
        (
            "SQL top paths (path_daily)",
            schema::top_paths_sql(&db),
            queries,
        ),
        ("SQL from raw events", raw_sql(&db), (queries / 5).max(10)),
    ] {
        eprintln!("  {name} × {n}");
        results.push(
            time_queries(name, ch, n, sites, days, |site, day| {
                sql_request(&ch_host, &sql, site, day)
            })
            .await?,
        );
    }
    Ok(results)
}

/// The stats of one site-day agree with the raw events (a sanity check of the load).
pub async fn check(target: &Target, site: &str) -> anyhow::Result<()> {
    let db = target.database();
    let date = day(3);
    let response = target
        .http
        .get(target.stats_url(&format!("/v1/stats?site_id={site}&date={date}")))
        .header("x-api-key", &target.read_key)
        .timeout(Duration::from_secs(30))
        .send()
        .await?;
    let stats: serde_json::Value = response.json().await?;
    let raw = target
        .sql_u64(&format!(
            "SELECT countIf(event_type = 'page_view') FROM `{db}`.events \
             WHERE site_id = '{site}' AND toDate(timestamp) = '{date}'"
        ))
        .await?;
    if stats["total_views"].as_u64() != Some(raw) || raw == 0 {
        bail!("stats for {site} on {date} say {stats}, the raw events count {raw} page views");
    }
    Ok(())
}
