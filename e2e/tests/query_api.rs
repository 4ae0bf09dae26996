//! `POST /v1/query` checked differentially: a random history (two sites, visitors with and
//! without session ids, logged-in users, several days, properties, bots) is stored in
//! ClickHouse, the sites in two time zones, then hundreds of random queries (metrics, dimensions, filters combined with
//! and/or/not, date ranges, order, pagination) are asked of the query service and each
//! answer is compared with the same question answered here, independently, from the
//! generated events: every row, every figure.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde_json::{Value, json};
use tally_e2e::{ADMIN_KEY, Options, Stack, clickhouse_time};
use time::OffsetDateTime;

/// SplitMix64: the same history and queries on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Debug, Clone)]
struct Event {
    site: &'static str,
    event_type: &'static str,
    path: &'static str,
    ts: i64,
    user_id: String,
    visitor_id: String,
    session_id: String,
    properties: BTreeMap<&'static str, Value>,
    source: &'static str,
    channel: &'static str,
    utm_campaign: &'static str,
    browser: &'static str,
    device: &'static str,
    bot: bool,
}

const DAY_MS: i64 = 86_400_000;
const PATHS: &[&str] = &["/", "/pricing", "/docs", "/blog/a", "/blog/b", "/signup"];
const SOURCES: &[(&str, &str)] = &[
    ("", "Direct"),
    ("Google", "Organic Search"),
    ("Facebook", "Organic Social"),
    ("newsletter", "Email"),
    ("blog.example.org", "Referral"),
];

/// Visitors, their visits and events over the three days before `today_ms`.
fn history(rng: &mut Rng, today_ms: i64) -> Vec<Event> {
    let mut events = Vec::new();
    for (site, _, _) in TIME_ZONES {
        for v in 0..40 {
            let with_sessions = rng.chance(50);
            let user = if rng.chance(20) {
                format!("user-{site}-{v}")
            } else {
                String::new()
            };
            let visitor = format!("visitor-{site}-{v}");
            let browser = *rng.pick(&["Chrome", "Firefox", "Safari"]);
            let device = *rng.pick(&["desktop", "mobile", "tablet"]);
            // Each visitor's events at distinct, growing times.
            let mut ts = today_ms - 3 * DAY_MS + rng.below(2 * DAY_MS as u64) as i64;
            for visit in 0..1 + rng.below(3) {
                let (source, channel) = *rng.pick(SOURCES);
                let campaign = if rng.chance(30) {
                    *rng.pick(&["spring", "summer-sale"])
                } else {
                    ""
                };
                let session = if with_sessions {
                    format!("session-{site}-{v}-{visit}")
                } else {
                    String::new()
                };
                for i in 0..1 + rng.below(7) {
                    let event_type = if i == 0 || rng.chance(60) {
                        "page_view"
                    } else {
                        *rng.pick(&["signup", "click", "page_unload"])
                    };
                    let mut properties = BTreeMap::new();
                    if event_type != "page_view" {
                        properties.insert("plan", json!(*rng.pick(&["pro", "free"])));
                        if rng.chance(60) {
                            // A response time: whole or with a fraction.
                            let ms = if rng.chance(50) {
                                json!(rng.below(500))
                            } else {
                                json!(rng.below(5000) as f64 / 10.0)
                            };
                            properties.insert("ms", ms);
                        }
                        if event_type == "page_unload" {
                            properties.insert("time_on_page", json!(1 + rng.below(60_000)));
                        }
                        if rng.chance(50) {
                            properties.insert("n", json!(1 + rng.below(3)));
                        }
                    }
                    events.push(Event {
                        site,
                        event_type,
                        path: PATHS[rng.below(PATHS.len() as u64) as usize],
                        ts,
                        user_id: user.clone(),
                        visitor_id: visitor.clone(),
                        session_id: session.clone(),
                        properties,
                        // Later events of a visit come from inside the site.
                        source: if i == 0 { source } else { "" },
                        channel: if i == 0 { channel } else { "Internal" },
                        utm_campaign: campaign,
                        browser,
                        device,
                        bot: rng.chance(3),
                    });
                    ts += 1 + rng.below(20 * 60 * 1000) as i64;
                }
                // The next visit after more than half an hour (sometimes a day).
                ts += 31 * 60 * 1000 + rng.below(DAY_MS as u64 / 2) as i64;
            }
        }
    }
    events
}

async fn store(stack: &Stack, events: &[Event]) -> anyhow::Result<()> {
    let rows: Vec<Value> = events
        .iter()
        .map(|e| {
            json!({
                "event_id": uuid::Uuid::new_v4().to_string(),
                "site_id": e.site, "event_type": e.event_type,
                "timestamp": clickhouse_time(e.ts), "received_at": clickhouse_time(e.ts),
                "path": e.path, "url": format!("https://{}.example.com{}", e.site, e.path),
                "user_id": e.user_id, "visitor_id": e.visitor_id, "session_id": e.session_id,
                "properties": serde_json::to_string(&e.properties).unwrap(),
                "is_bot": e.bot, "source": e.source, "channel": e.channel,
                "utm_campaign": e.utm_campaign, "browser": e.browser, "device": e.device,
            })
        })
        .collect();
    stack.insert_events(&rows, rows.len()).await
}

/// An event with what the query sees of it.
#[derive(Clone)]
struct Seen<'a> {
    event: &'a Event,
    visitor_key: String,
    visit_id: String,
    /// The goals it completes.
    goals: Vec<&'static str>,
    /// With `event:goal` a dimension: the one goal of this row.
    goal: Option<&'static str>,
}

/// The sites' goals (declared on both), as YAML and as the reference sees them.
const GOALS_YAML: &str = r#"goals: [{name: Signup, eventType: signup}, {name: Pricing, pagePath: /pricing}, {name: Blog post, pagePath: "/blog/*"}, {name: Pro click, eventType: click, properties: {plan: pro}}]"#;
const GOALS: [&str; 4] = ["Signup", "Pricing", "Blog post", "Pro click"];

fn goals_of(e: &Event) -> Vec<&'static str> {
    let plan = e.properties.get("plan").map(text).unwrap_or_default();
    [
        e.event_type == "signup",
        e.event_type == "page_view" && e.path == "/pricing",
        e.event_type == "page_view" && e.path.starts_with("/blog/") && !e.path[6..].contains('/'),
        e.event_type == "click" && plan == "pro",
    ]
    .into_iter()
    .zip(GOALS)
    .filter_map(|(completes, name)| completes.then_some(name))
    .collect()
}

struct Visit {
    pageviews: u64,
    duration_ms: i64,
    entry: &'static str,
    exit: &'static str,
    first: usize,
}

fn visitor_key(e: &Event) -> String {
    if !e.user_id.is_empty() {
        format!("u:{}", e.user_id)
    } else if !e.visitor_id.is_empty() {
        format!("v:{}", e.visitor_id)
    } else if !e.session_id.is_empty() {
        format!("s:{}", e.session_id)
    } else {
        String::new()
    }
}

/// The strings of a JSON array.
fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The sites' time zones in the test (fixed offsets, so that the reference can apply them):
/// `Etc/GMT-3` is three hours ahead of UTC, `Etc/GMT+5` five behind, `Asia/Kolkata` five
/// and a half ahead (since 1945): its hours are not UTC hours, so no rollup answers for it.
const TIME_ZONES: [(&str, &str, i64); 3] = [
    ("shop", "Etc/GMT-3", 3 * 3_600_000),
    ("docs", "Etc/GMT+5", -5 * 3_600_000),
    ("blog", "Asia/Kolkata", 11 * 1_800_000),
];

fn offset_ms(site: &str) -> i64 {
    TIME_ZONES
        .iter()
        .find(|(s, _, _)| *s == site)
        .map_or(0, |z| z.2)
}

/// A dimension's value of an event.
fn value(name: &str, seen: &Seen<'_>, visit: &Visit, all: &[Seen<'_>]) -> String {
    let e = seen.event;
    let first = all[visit.first].event;
    let time = |format: &str| {
        // The site's wall clock.
        let local = e.ts + offset_ms(e.site);
        let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(local) * 1_000_000).unwrap();
        match format {
            "day" => t.date().to_string(),
            "hour" => format!("{} {:02}:00:00", t.date(), t.hour()),
            _ => unreachable!(),
        }
    };
    match name {
        "event:name" => e.event_type.into(),
        "event:user_id" => e.user_id.clone(),
        "event:page" => e.path.into(),
        "event:props:plan" => e.properties.get("plan").map(text).unwrap_or_default(),
        "event:props:n" => e.properties.get("n").map(text).unwrap_or_default(),
        "visit:source" => first.source.into(),
        "visit:channel" => first.channel.into(),
        "visit:device" => first.device.into(),
        "visit:browser" => first.browser.into(),
        "visit:utm_campaign" => first.utm_campaign.into(),
        "visit:entry_page" => visit.entry.into(),
        "visit:exit_page" => visit.exit.into(),
        "time:day" => time("day"),
        "time:hour" => time("hour"),
        "event:goal" => seen.goal.expect("a row of one goal").into(),
        other => panic!("no reference for {other}"),
    }
}

fn passes(filter: &Value, seen: &Seen<'_>, visit: &Visit, all: &[Seen<'_>]) -> bool {
    let f = filter.as_array().unwrap();
    match f[0].as_str().unwrap() {
        "and" => f[1]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| passes(g, seen, visit, all)),
        "or" => f[1]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| passes(g, seen, visit, all)),
        "not" => !passes(&f[1], seen, visit, all),
        op => {
            let values: Vec<String> = f[2].as_array().unwrap().iter().map(text).collect();
            if f[1] == "event:goal" && seen.goal.is_none() {
                // Some goal of the event compares so.
                return seen.goals.iter().any(|g| compare(op, g, &values));
            }
            compare(
                op,
                &value(f[1].as_str().unwrap(), seen, visit, all),
                &values,
            )
        }
    }
}

fn compare(op: &str, v: &str, values: &[String]) -> bool {
    let is = values.iter().any(|x| x == v);
    let contains = values.iter().any(|x| v.contains(x.as_str()));
    let matches = values.iter().any(|x| regex_lite(x, v));
    match op {
        "is" => is,
        "is_not" => !is,
        "contains" => contains,
        "contains_not" => !contains,
        "matches" => matches,
        "matches_not" => !matches,
        _ => unreachable!(),
    }
}

/// The patterns the random queries use: `^prefix` or a plain substring.
fn regex_lite(pattern: &str, text: &str) -> bool {
    match pattern.strip_prefix('^') {
        Some(prefix) => text.starts_with(prefix),
        None => text.contains(pattern),
    }
}

/// A visit's part of a group: its page views and events there, its visitors, the
/// `time_on_page` of its `page_unload` events, the numeric `ms` properties and the visitors
/// whose events there complete a goal.
#[derive(Default)]
struct InGroup(
    u64,
    u64,
    BTreeSet<String>,
    Vec<f64>,
    Vec<f64>,
    BTreeSet<String>,
);

/// The answer computed here: rows of (dimension values, metric values).
fn expected(events: &[Event], query: &Value) -> Vec<(Vec<String>, Vec<f64>)> {
    let site = query["site_id"].as_str().unwrap();
    let range = query["date_range"].as_array().unwrap();
    // A date of the site's zone: its midnight there, in UTC milliseconds.
    let day = |v: &Value| {
        let d = time::Date::parse(
            v.as_str().unwrap(),
            time::macros::format_description!("[year]-[month]-[day]"),
        )
        .unwrap();
        d.midnight().assume_utc().unix_timestamp() * 1000 - offset_ms(site)
    };
    let (from, to) = (day(&range[0]), day(&range[1]) + DAY_MS);
    let mut seen: Vec<Seen<'_>> = events
        .iter()
        .filter(|e| e.site == site && !e.bot && e.ts >= from && e.ts < to)
        .map(|e| Seen {
            event: e,
            visitor_key: visitor_key(e),
            visit_id: String::new(),
            goals: goals_of(e),
            goal: None,
        })
        .collect();
    seen.sort_by_key(|s| s.event.ts);
    // Visits: the session, else the visitor's events split by 30-minute gaps.
    let mut last: HashMap<String, (i64, u64)> = HashMap::new();
    for s in &mut seen {
        s.visit_id = if s.event.session_id.is_empty() {
            let (prev, n) = last.entry(s.visitor_key.clone()).or_insert((i64::MIN, 0));
            if *prev == i64::MIN || s.event.ts - *prev >= 30 * 60 * 1000 {
                *n += 1;
            }
            *prev = s.event.ts;
            format!("g:{}:{n}", s.visitor_key)
        } else {
            format!("s:{}", s.event.session_id)
        };
    }
    let mut visits: HashMap<String, Visit> = HashMap::new();
    for (i, s) in seen.iter().enumerate() {
        let v = visits.entry(s.visit_id.clone()).or_insert(Visit {
            pageviews: 0,
            duration_ms: 0,
            entry: "",
            exit: "",
            first: i,
        });
        let start = seen[v.first].event.ts;
        v.duration_ms = s.event.ts - start;
        if s.event.event_type == "page_view" {
            if v.pageviews == 0 {
                v.entry = s.event.path;
            }
            v.exit = s.event.path;
            v.pageviews += 1;
        }
    }
    let dims: Vec<&str> = names(&query["dimensions"]);
    let filters = query["filters"].as_array().cloned().unwrap_or_default();
    // group → visit → (page views, events, visitor keys)
    let mut everyone = BTreeSet::new();
    let mut groups: BTreeMap<Vec<String>, BTreeMap<String, InGroup>> = BTreeMap::new();
    // With goals named: each group's visitors without the goal filters, by the other
    // dimensions.
    let is_goal = |f: &Value| f[1] == "event:goal";
    let converting = dims.contains(&"event:goal") || filters.iter().any(is_goal);
    let others: Vec<&str> = dims
        .iter()
        .copied()
        .filter(|d| *d != "event:goal")
        .collect();
    let mut totals: BTreeMap<Vec<String>, BTreeSet<String>> = BTreeMap::new();
    for s in &seen {
        let visit = &visits[&s.visit_id];
        if s.visitor_key.is_empty()
            || !filters
                .iter()
                .filter(|f| !is_goal(f))
                .all(|f| passes(f, s, visit, &seen))
        {
            continue;
        }
        let key: Vec<String> = others.iter().map(|d| value(d, s, visit, &seen)).collect();
        totals.entry(key).or_default().insert(s.visitor_key.clone());
    }
    let mut rows: Vec<Seen<'_>> = Vec::new();
    for s in &seen {
        if dims.contains(&"event:goal") {
            rows.extend(s.goals.iter().map(|g| Seen {
                goal: Some(g),
                ..s.clone()
            }));
        } else {
            rows.push(s.clone());
        }
    }
    for s in &rows {
        let visit = &visits[&s.visit_id];
        if !filters.iter().all(|f| passes(f, s, visit, &seen)) {
            continue;
        }
        let key: Vec<String> = dims.iter().map(|d| value(d, s, visit, &seen)).collect();
        let entry = groups
            .entry(key)
            .or_default()
            .entry(s.visit_id.clone())
            .or_default();
        entry.0 += u64::from(s.event.event_type == "page_view");
        entry.1 += 1;
        if !s.visitor_key.is_empty() {
            entry.2.insert(s.visitor_key.clone());
            everyone.insert(s.visitor_key.clone());
        }
        let number = |name: &str| s.event.properties.get(name).and_then(Value::as_f64);
        if let (true, Some(ms)) = (s.event.event_type == "page_unload", number("time_on_page")) {
            entry.3.push(ms);
        }
        entry.4.extend(number("ms"));
        if !s.visitor_key.is_empty() && !s.goals.is_empty() {
            entry.5.insert(s.visitor_key.clone());
        }
    }
    if dims.is_empty() && groups.is_empty() {
        groups.insert(Vec::new(), BTreeMap::new());
    }
    let metrics: Vec<&str> = names(&query["metrics"]);
    let mut rows: Vec<(Vec<String>, Vec<f64>)> = groups
        .into_iter()
        .map(|(key, in_group)| {
            let count = in_group.len() as f64;
            let values = metrics
                .iter()
                .map(|m| match *m {
                    "visitors" => in_group
                        .values()
                        .flat_map(|g| g.2.iter())
                        .collect::<BTreeSet<_>>()
                        .len() as f64,
                    "visits" => count,
                    "pageviews" => in_group.values().map(|g| g.0).sum::<u64>() as f64,
                    "events" => in_group.values().map(|g| g.1).sum::<u64>() as f64,
                    "views_per_visit" if count == 0.0 => 0.0,
                    "views_per_visit" => in_group.values().map(|g| g.0).sum::<u64>() as f64 / count,
                    "bounce_rate" => {
                        let with_views =
                            in_group.keys().filter(|v| visits[*v].pageviews > 0).count();
                        let bounced = in_group
                            .keys()
                            .filter(|v| visits[*v].pageviews == 1)
                            .count();
                        if with_views == 0 {
                            0.0
                        } else {
                            100.0 * bounced as f64 / with_views as f64
                        }
                    }
                    "visit_duration" if count == 0.0 => 0.0,
                    "visit_duration" => {
                        in_group
                            .keys()
                            .map(|v| visits[v].duration_ms as f64)
                            .sum::<f64>()
                            / count
                            / 1000.0
                    }
                    "conversion_rate" => {
                        let visitors = in_group
                            .values()
                            .flat_map(|g| g.2.iter())
                            .collect::<BTreeSet<_>>()
                            .len() as f64;
                        let (converted, of) = if converting {
                            let at: Vec<String> = dims
                                .iter()
                                .zip(&key)
                                .filter(|(d, _)| **d != "event:goal")
                                .map(|(_, v)| v.clone())
                                .collect();
                            (visitors, totals.get(&at).map_or(0, BTreeSet::len) as f64)
                        } else {
                            let converted = in_group
                                .values()
                                .flat_map(|g| g.5.iter())
                                .collect::<BTreeSet<_>>()
                                .len() as f64;
                            (converted, visitors)
                        };
                        if of == 0.0 {
                            0.0
                        } else {
                            100.0 * converted / of
                        }
                    }
                    "percentage" if everyone.is_empty() => 0.0,
                    "percentage" => {
                        let visitors = in_group
                            .values()
                            .flat_map(|g| g.2.iter())
                            .collect::<BTreeSet<_>>();
                        100.0 * visitors.len() as f64 / everyone.len() as f64
                    }
                    "time_on_page" => {
                        let all: Vec<f64> = in_group
                            .values()
                            .flat_map(|g| g.3.iter().copied())
                            .collect();
                        if all.is_empty() {
                            0.0
                        } else {
                            all.iter().sum::<f64>() / all.len() as f64 / 1000.0
                        }
                    }
                    property => {
                        let (aggregate, _) =
                            property.split_once(":props.").expect("a property metric");
                        let mut all: Vec<f64> = in_group
                            .values()
                            .flat_map(|g| g.4.iter().copied())
                            .collect();
                        all.sort_by(f64::total_cmp);
                        if all.is_empty() {
                            0.0
                        } else {
                            match aggregate {
                                "avg" => all.iter().sum::<f64>() / all.len() as f64,
                                "sum" => all.iter().sum(),
                                "min" => all[0],
                                "max" => all[all.len() - 1],
                                p => {
                                    let level = p[1..].parse::<f64>().unwrap() / 100.0;
                                    all[((level * all.len() as f64) as usize).min(all.len() - 1)]
                                }
                            }
                        }
                    }
                })
                .collect();
            (key, values)
        })
        .collect();
    // The query's order, then every dimension ascending.
    let order: Vec<(String, bool)> = query["order_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o[0].as_str().unwrap().to_owned(), o[1] == "desc"))
        .collect();
    rows.sort_by(|a, b| {
        for (name, descending) in &order {
            let ord = if let Some(i) = metrics.iter().position(|m| m == name) {
                a.1[i].partial_cmp(&b.1[i]).unwrap()
            } else {
                let i = dims.iter().position(|d| d == name).unwrap();
                a.0[i].cmp(&b.0[i])
            };
            let ord = if *descending { ord.reverse() } else { ord };
            if ord.is_ne() {
                return ord;
            }
        }
        a.0.cmp(&b.0)
    });
    let page = &query["pagination"];
    let offset = page["offset"].as_u64().unwrap() as usize;
    let limit = page["limit"].as_u64().unwrap() as usize;
    rows.into_iter().skip(offset).take(limit).collect()
}

/// A random query over the history's days.
fn random_query(rng: &mut Rng, days: &[String]) -> Value {
    const INTEGER_METRICS: &[&str] = &["visitors", "visits", "pageviews", "events"];
    const OTHER_METRICS: &[&str] = &[
        "views_per_visit",
        "bounce_rate",
        "visit_duration",
        "percentage",
        "time_on_page",
        "conversion_rate",
        "avg:props.ms",
        "sum:props.ms",
        "min:props.ms",
        "max:props.ms",
        "p50:props.ms",
        "p95:props.ms",
    ];
    const DIMENSIONS: &[&str] = &[
        "event:name",
        "event:page",
        "event:props:plan",
        "event:props:n",
        "visit:source",
        "visit:channel",
        "visit:device",
        "visit:browser",
        "visit:utm_campaign",
        "visit:entry_page",
        "visit:exit_page",
        "time:day",
        "time:hour",
        "event:goal",
        "event:user_id",
    ];
    // A quarter of the questions are the ones an hourly rollup answers (for the sites whose
    // hours are UTC hours): counts without visits, by and filtered by event type, page and
    // time.
    let rollup_shaped = rng.chance(25);
    let (integer_metrics, other_metrics, dimensions_pool): (&[&str], &[&str], &[&str]) =
        if rollup_shaped {
            (
                &["visitors", "pageviews", "events"],
                &["percentage"],
                &["event:name", "event:page", "time:day", "time:hour"],
            )
        } else {
            (INTEGER_METRICS, OTHER_METRICS, DIMENSIONS)
        };
    let mut metrics = vec![*rng.pick(integer_metrics)];
    for _ in 0..rng.below(4) {
        let m = if rng.chance(50) {
            *rng.pick(integer_metrics)
        } else {
            *rng.pick(other_metrics)
        };
        if !metrics.contains(&m) {
            metrics.push(m);
        }
    }
    let mut dimensions = Vec::new();
    for _ in 0..rng.below(3) {
        let d = *rng.pick(dimensions_pool);
        if !dimensions.contains(&d) {
            dimensions.push(d);
        }
    }
    if dimensions.is_empty() {
        // Refused: a share needs groups.
        metrics.retain(|m| *m != "percentage");
    }
    let comparison = |rng: &mut Rng| -> Value {
        let filterable = if rollup_shaped { 2 } else { 7 };
        let (dimension, values): (&str, &[&str]) = *rng.pick(
            &[
                ("event:page", PATHS),
                (
                    "event:name",
                    &["page_view", "signup", "click", "page_unload"][..],
                ),
                (
                    "visit:source",
                    &["", "Google", "Facebook", "newsletter"][..],
                ),
                ("visit:device", &["desktop", "mobile", "tablet"][..]),
                ("event:props:plan", &["pro", "free", ""][..]),
                ("visit:utm_campaign", &["spring", "summer-sale", ""][..]),
                ("visit:entry_page", PATHS),
            ][..filterable],
        );
        let op = *rng.pick(&[
            "is",
            "is_not",
            "contains",
            "contains_not",
            "matches",
            "matches_not",
        ]);
        let mut chosen: Vec<String> = (0..1 + rng.below(2))
            .map(|_| (*rng.pick(values)).to_owned())
            .collect();
        if op.starts_with("contains") || op.starts_with("matches") {
            chosen.retain(|v| !v.is_empty());
            if chosen.is_empty() {
                chosen.push("o".into());
            }
            if op.starts_with("matches") {
                for v in &mut chosen {
                    *v = format!("^{}", &v[..v.len().min(3)]);
                }
            } else {
                for v in &mut chosen {
                    v.truncate(3);
                }
            }
        }
        json!([op, dimension, chosen])
    };
    let mut filters = Vec::new();
    for _ in 0..rng.below(3) {
        filters.push(match rng.below(5) {
            0 => json!(["not", comparison(rng)]),
            1 => json!(["or", [comparison(rng), comparison(rng)]]),
            2 => json!(["and", [comparison(rng), comparison(rng)]]),
            _ => comparison(rng),
        });
    }
    if !rollup_shaped && rng.chance(20) {
        // Goals are filtered at the top level, by is, contains or matches.
        let filter = match rng.below(3) {
            0 => json!(["is", "event:goal", [*rng.pick(&GOALS), *rng.pick(&GOALS)]]),
            1 => json!(["contains", "event:goal", [*rng.pick(&["o", "Pr", "click"])]]),
            _ => json!(["matches", "event:goal", [*rng.pick(&["^Si", "^B", "^P"])]]),
        };
        filters.push(filter);
    }
    let a = rng.below(days.len() as u64) as usize;
    let b = a + rng.below((days.len() - a) as u64) as usize;
    let order_by = if rng.chance(50) {
        // Integer metrics only: a rounded ratio may tie differently.
        let names: Vec<&str> = metrics
            .iter()
            .copied()
            .filter(|m| INTEGER_METRICS.contains(m))
            .chain(dimensions.iter().copied())
            .collect();
        let name = *rng.pick(&names);
        json!([[name, if rng.chance(50) { "asc" } else { "desc" }]])
    } else {
        Value::Null
    };
    let mut query = json!({
        "site_id": rng.pick(&TIME_ZONES).0,
        "metrics": metrics,
        "dimensions": dimensions,
        "filters": filters,
        "date_range": [days[a], days[b]],
        "pagination": {"limit": 1 + rng.below(30), "offset": if rng.chance(25) { rng.below(4) } else { 0 }},
    });
    if !order_by.is_null() {
        query["order_by"] = order_by;
    }
    if rng.chance(25) {
        query["include"] = json!({"comparisons": "previous_period"});
    }
    query
}

fn date(text: &str) -> time::Date {
    time::Date::parse(
        text,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .unwrap()
}

/// A row's dimension values with each time bucket numbered from the range's first day, as
/// the rows of a period and of its comparison match.
fn bucket_key(dims: &[&str], values: &[String], from: time::Date) -> Vec<String> {
    dims.iter()
        .zip(values)
        .map(|(d, v)| match *d {
            "time:day" => (date(v) - from).whole_days().to_string(),
            "time:hour" => {
                let hour: i64 = v[11..13].parse().unwrap();
                ((date(&v[..10]) - from).whole_days() * 24 + hour).to_string()
            }
            _ => v.clone(),
        })
        .collect()
}

/// Checks an answer's `comparison` of each row against the previous period computed here;
/// whether some row had figures then.
fn check_comparison(events: &[Event], query: &Value, answer: &Value) -> bool {
    let mut figures = false;
    let range = names(&query["date_range"]);
    let (from, to) = (date(range[0]), date(range[1]));
    let days = (to - from).whole_days() + 1;
    let (then_from, then_to) = (
        from - time::Duration::days(days),
        from - time::Duration::days(1),
    );
    assert_eq!(
        answer["meta"]["comparison_date_range"],
        json!([then_from.to_string(), then_to.to_string()]),
        "{query}"
    );
    let dims = names(&query["dimensions"]);
    let metrics = names(&query["metrics"]);
    let then: HashMap<Vec<String>, Vec<f64>> = expected(
        events,
        &json!({
            "site_id": query["site_id"], "metrics": query["metrics"], "dimensions": query["dimensions"],
            "filters": query["filters"], "date_range": [then_from.to_string(), then_to.to_string()],
            "order_by": answer["query"]["order_by"], "pagination": {"limit": 100_000, "offset": 0},
        }),
    )
    .into_iter()
    .map(|(key, values)| (bucket_key(&dims, &key, then_from), values))
    .collect();
    for row in answer["results"].as_array().unwrap() {
        let key: Vec<String> = row["dimensions"]
            .as_array()
            .unwrap()
            .iter()
            .map(text)
            .collect();
        let want = then.get(&bucket_key(&dims, &key, from));
        let compared = &row["comparison"];
        assert_eq!(
            compared["dimensions"].is_null(),
            want.is_none(),
            "{query}\n{row}"
        );
        let got: Vec<f64> = compared["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_f64().unwrap())
            .collect();
        figures |= got.iter().any(|v| *v != 0.0);
        let zeros = vec![0.0; metrics.len()];
        let want = want.unwrap_or(&zeros);
        assert!(
            got.iter()
                .zip(want)
                .zip(&metrics)
                .all(|((a, b), m)| close(*a, *b, m)),
            "comparison of {row} in {query}: want {want:?}"
        );
        // Each change from the row's two figures.
        for (i, m) in metrics.iter().enumerate() {
            let (now, before) = (row["metrics"][i].as_f64().unwrap(), got[i]);
            let change = if matches!(*m, "bounce_rate" | "conversion_rate" | "percentage") {
                now - before
            } else if before == 0.0 {
                if now == 0.0 { 0.0 } else { 100.0 }
            } else {
                (now - before) / before * 100.0
            };
            let reported = compared["change"][i].as_f64().unwrap();
            assert!(
                (reported - change).abs() <= 0.051,
                "change of {m} in {row}: {change}"
            );
        }
    }
    figures
}

fn close(a: f64, b: f64, metric: &str) -> bool {
    let tolerance = match metric {
        "visitors" | "visits" | "pageviews" | "events" => 0.0,
        "visit_duration" | "time_on_page" => 0.051,
        // Rounded to 2 decimals.
        _ => 0.0051,
    };
    (a - b).abs() <= tolerance
}

#[tokio::test]
async fn query_answers_equal_the_history_computed_independently() -> anyhow::Result<()> {
    let stack = Stack::start(Options {
        site_spec: TIME_ZONES
            .iter()
            .flat_map(|(site, zone, _)| {
                [
                    (*site, format!("timeZone: {zone}")),
                    (*site, GOALS_YAML.to_owned()),
                ]
            })
            .collect(),
        ..Options::default()
    })
    .await?;
    let now = OffsetDateTime::now_utc();
    let today_ms = now.date().midnight().assume_utc().unix_timestamp() * 1000;
    let mut rng = Rng(20_261_207);
    let events = history(&mut rng, today_ms);
    store(&stack, &events).await?;
    // The history's days: from three days ago to today.
    let days: Vec<String> = (0..=3)
        .rev()
        .map(|d| (now.date() - time::Duration::days(d)).to_string())
        .collect();
    let client = &stack.http;
    let (mut compared, mut with_data, mut with_goals, mut with_comparisons) = (0, 0, 0, 0);
    // Answers read from a rollup, and those of them that held data.
    let (mut from_rollups, mut from_rollups_with_data) = (0, 0);
    for _ in 0..300 {
        let query = random_query(&mut rng, &days);
        let response = client
            .post(stack.query_url("/v1/query"))
            .header("x-api-key", ADMIN_KEY)
            .json(&query)
            .timeout(Duration::from_secs(30))
            .send()
            .await?;
        let status = response.status().as_u16();
        let answer: Value = response.json().await?;
        assert_eq!(status, 200, "{query}\n{answer}");
        let echoed = &answer["query"];
        let want = expected(
            &events,
            &json!({
                "site_id": query["site_id"], "metrics": query["metrics"], "dimensions": query["dimensions"],
                "filters": query["filters"], "date_range": query["date_range"],
                "order_by": echoed["order_by"], "pagination": echoed["pagination"],
            }),
        );
        let got: Vec<(Vec<String>, Vec<f64>)> = answer["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["dimensions"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(text)
                        .collect(),
                    r["metrics"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|m| m.as_f64().unwrap())
                        .collect(),
                )
            })
            .collect();
        let metrics: Vec<&str> = names(&query["metrics"]);
        let same = got.len() == want.len()
            && got.iter().zip(&want).all(|(g, w)| {
                g.0 == w.0
                    && g.1
                        .iter()
                        .zip(&w.1)
                        .zip(&metrics)
                        .all(|((a, b), m)| close(*a, *b, m))
            });
        assert!(same, "query {query}\n got  {got:?}\n want {want:?}");
        let rollup = answer["meta"]["rollup"].as_str();
        if let Some(table) = rollup {
            assert_ne!(
                query["site_id"], "blog",
                "{table} answered for a half-hour zone"
            );
            from_rollups += 1;
        }
        if query["include"]["comparisons"] == "previous_period" {
            with_comparisons += usize::from(check_comparison(&events, &query, &answer));
        }
        compared += 1;
        if want
            .iter()
            .any(|(_, values)| values.iter().any(|v| *v != 0.0))
        {
            with_data += 1;
            from_rollups_with_data += usize::from(rollup.is_some());
            let text = query.to_string();
            if text.contains("event:goal") || text.contains("conversion_rate") {
                with_goals += 1;
            }
        }
    }
    assert_eq!(compared, 300);
    // At least half the questions found something (189 on this seed): the comparison is of
    // figures, not of empty answers.
    assert!(
        with_data >= 150,
        "only {with_data} of 300 answers held data"
    );
    eprintln!(
        "{with_data} of 300 answers held data, {with_goals} of them with goals; \
         {with_comparisons} compared with figures of the previous period; \
         {from_rollups} read from a rollup, {from_rollups_with_data} of them with data"
    );
    assert!(
        from_rollups_with_data >= 25,
        "only {from_rollups_with_data} answers with data came from a rollup"
    );
    assert!(
        with_goals >= 30,
        "only {with_goals} answers with goals held data"
    );
    assert!(
        with_comparisons >= 20,
        "only {with_comparisons} comparisons held data"
    );
    Ok(())
}

#[tokio::test]
async fn malformed_queries_name_each_problem() -> anyhow::Result<()> {
    let stack = Stack::start(Options::default()).await?;
    let ask = |body: Value| {
        stack
            .http
            .post(stack.query_url("/v1/query"))
            .header("x-api-key", ADMIN_KEY)
            .json(&body)
            .send()
    };
    let answer = ask(json!({
        "site_id": "shop", "metrics": ["visitors", "bogus"], "dimensions": ["visit:nope"],
        "filters": [["is", "event:page"], ["like", "event:page", ["/"]]],
        "date_range": "fortnight", "pagination": {"limit": 100000},
    }))
    .await?;
    assert_eq!(answer.status().as_u16(), 400);
    let body: Value = answer.json().await?;
    let pointers: Vec<&str> = body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(
        pointers,
        [
            "/metrics/1",
            "/dimensions/0",
            "/filters/0",
            "/filters/1/0",
            "/date_range",
            "/pagination/limit"
        ],
        "{body}"
    );
    assert_eq!(body["error"], "invalid_query");
    // Without a key, or for a site that does not exist.
    let no_key = stack
        .http
        .post(stack.query_url("/v1/query"))
        .json(&json!({"site_id": "shop", "metrics": ["visitors"]}))
        .send()
        .await?;
    assert_eq!(no_key.status().as_u16(), 401);
    let unknown = ask(json!({"site_id": "nope", "metrics": ["visitors"]})).await?;
    assert_eq!(unknown.status().as_u16(), 404);
    // A well-formed query of an empty site: one row of zeros.
    let empty =
        ask(json!({"site_id": "docs", "metrics": ["visitors", "bounce_rate"], "date_range": "7d"}))
            .await?;
    let body: Value = empty.json().await?;
    assert_eq!(
        body["results"],
        json!([{"dimensions": [], "metrics": [0, 0]}]),
        "{body}"
    );
    assert_eq!(body["query"]["order_by"], json!([["visitors", "desc"]]));
    Ok(())
}

#[tokio::test]
async fn recent_events_come_newest_first() -> anyhow::Result<()> {
    let stack = Stack::start(Options::default()).await?;
    let now = OffsetDateTime::now_utc();
    for i in 0..5i64 {
        let at = now - time::Duration::seconds(60 - i);
        let (status, body) = stack
            .post(
                json!({"site_id": "shop", "type": "page_view", "path": format!("/p{i}"),
                       "timestamp": at.format(&time::format_description::well_known::Rfc3339)?,
                       "properties": {"i": i}})
                .to_string(),
            )
            .await?;
        assert_eq!(status, 202, "{body}");
    }
    let recent = |query: &'static str, key: Option<&'static str>| {
        let mut request = stack
            .http
            .get(stack.query_url(&format!("/v1/events/recent?{query}")));
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        request.send()
    };
    let mut paths = Vec::new();
    for _ in 0..300 {
        let answer: Value = recent("site_id=shop&limit=3", Some(ADMIN_KEY))
            .await?
            .json()
            .await?;
        paths = answer["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["path"].as_str().unwrap().to_owned())
            .collect();
        if paths.first().map(String::as_str) == Some("/p4") {
            let first = &answer["events"][0];
            assert_eq!(first["properties"], "{\"i\":4}");
            assert!(
                first["timestamp"].as_str().unwrap().ends_with('Z'),
                "{first}"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(paths, ["/p4", "/p3", "/p2"]);
    assert_eq!(recent("site_id=shop", None).await?.status().as_u16(), 401);
    assert_eq!(
        recent("site_id=shop&limit=0", Some(ADMIN_KEY))
            .await?
            .status()
            .as_u16(),
        400
    );
    assert_eq!(
        recent("site_id=nope", Some(ADMIN_KEY))
            .await?
            .status()
            .as_u16(),
        404
    );
    Ok(())
}
