//! The console in a real browser: headless Chromium (Debian's package), driven by
//! `playwright-core` through `e2e/browser/console.mjs`, signs in to the query service's
//! `/console/` over a known history, picks the site and the range, reads every page, clicks
//! a row, sorts and exports a table, toggles dark mode, opens the experiments, sessions and
//! pipeline pages, provokes an expired key and an unreachable API, and runs axe-core on every
//! page at desktop and phone widths. This test then asks the API the same questions and
//! checks that the screen showed exactly its answers. Screenshots of every page are saved
//! under `$CARGO_TARGET_DIR/tally-screenshots/console/`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use tally_e2e::{ADMIN_KEY, Options, Stack, clickhouse_time, env_path};

const SITE: &str = "shop";
/// The page the browser clicks in the top pages.
const CLICKED: &str = "/pricing";
const DAY_MS: i64 = 86_400_000;
/// Visitors whose last event is 20 s before the run: the realtime figure's.
const REALTIME_VISITORS: usize = 3;

/// A known history of `shop`: 24 visitors over the six days before today, from three
/// sources, on two browsers and two devices, in an experiment, some buying; and three
/// visitors a moment ago.
fn history(now_ms: i64) -> Vec<Value> {
    let today_ms = now_ms - now_ms.rem_euclid(DAY_MS);
    let mut rows = Vec::new();
    let mut event = |v: &str,
                     session: &str,
                     ts: i64,
                     event_type: &str,
                     path: &str,
                     props: Value,
                     source: (&str, &str, &str),
                     browser: &str,
                     device: &str| {
        rows.push(json!({
            "event_id": uuid::Uuid::new_v4().to_string(), "site_id": SITE, "event_type": event_type,
            "timestamp": clickhouse_time(ts), "received_at": clickhouse_time(ts),
            "path": path, "url": format!("https://shop.example.com{path}"),
            "title": format!("{path} · Shop"), "visitor_id": v, "session_id": session,
            "properties": props.to_string(), "source": source.0, "channel": source.1,
            "utm_campaign": source.2, "browser": browser, "device": device,
        }));
    };
    let sources = [
        ("", "Direct", ""),
        ("Google", "Organic Search", ""),
        ("newsletter", "Email", "winter"),
    ];
    for v in 0..24_i64 {
        let visitor = format!("visitor-{v}");
        let source = sources[(v % 3) as usize];
        let browser = if v % 2 == 0 { "Chrome" } else { "Firefox" };
        let device = if v % 4 == 0 { "mobile" } else { "desktop" };
        let variant = if v % 2 == 0 { "A" } else { "B" };
        for visit in 0..1 + v % 2 {
            let session = format!("session-{v}-{visit}");
            let mut ts = today_ms - (1 + (v + visit) % 6) * DAY_MS + 10 * 3_600_000 + v * 60_000;
            let mut at = |step: i64| {
                ts += step;
                ts
            };
            event(
                &visitor,
                &session,
                at(0),
                "page_view",
                "/",
                json!({"experiment_id": "checkout", "variant": variant}),
                source,
                browser,
                device,
            );
            if v % 3 != 1 {
                event(
                    &visitor,
                    &session,
                    at(40_000),
                    "page_view",
                    CLICKED,
                    json!({}),
                    source,
                    browser,
                    device,
                );
            }
            if v % 5 == 0 {
                event(
                    &visitor,
                    &session,
                    at(30_000),
                    "page_view",
                    "/docs",
                    json!({}),
                    source,
                    browser,
                    device,
                );
            }
            if v % 4 == 1 || v % 6 == 0 {
                let plan = if v % 3 == 0 { "pro" } else { "basic" };
                event(
                    &visitor,
                    &session,
                    at(20_000),
                    "purchase",
                    "/checkout",
                    json!({"plan": plan}),
                    source,
                    browser,
                    device,
                );
            }
        }
    }
    for r in 0..REALTIME_VISITORS {
        let visitor = format!("realtime-{r}");
        event(
            &visitor,
            &format!("{visitor}-s"),
            now_ms - 20_000,
            "page_view",
            "/",
            json!({}),
            sources[0],
            "Chrome",
            "desktop",
        );
    }
    rows
}

/// What `console.mjs` reported.
async fn run_console(stack: &Stack, screenshots: &PathBuf) -> anyhow::Result<Value> {
    let script = tally_e2e::examples_dir()
        .parent()
        .context("the repository")?
        .join("e2e/browser/console.mjs");
    let output = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new("node")
            .arg(&script)
            .env("NODE_PATH", env_path("TALLY_PLAYWRIGHT_NODE_PATH")?)
            .env("TALLY_CHROMIUM", env_path("TALLY_CHROMIUM")?)
            .env("TALLY_AXE", env_path("TALLY_AXE")?)
            .env("TALLY_CONSOLE_URL", stack.query_url(""))
            .env("TALLY_CONSOLE_KEY", ADMIN_KEY)
            .env("TALLY_CONSOLE_SITE", SITE)
            .env("TALLY_CONSOLE_PAGE", CLICKED)
            .env("TALLY_CONSOLE_SEARCH", "pricing")
            .env("TALLY_SCREENSHOT_DIR", screenshots)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("the console run did not end within 300 s")??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(
        output.status.success(),
        "the console run failed ({}):\n{stderr}",
        output.status
    );
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("the console run printed no report:\n{stderr}"))
}

/// POST /v1/query with the admin key.
async fn query(stack: &Stack, body: Value) -> anyhow::Result<Value> {
    let response = stack
        .http
        .post(stack.query_url("/v1/query"))
        .header("x-api-key", ADMIN_KEY)
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "{body}: {}",
        response.text().await?
    );
    Ok(response.json().await?)
}

async fn get(stack: &Stack, path: &str) -> anyhow::Result<Value> {
    Ok(stack
        .http
        .get(stack.query_url(path))
        .header("x-api-key", ADMIN_KEY)
        .send()
        .await?
        .json()
        .await?)
}

/// Whether the text a page put in a `data-value` is the API's value (numbers compared as
/// numbers: JavaScript writes 100 where serde writes 100.0).
fn same(shown: &Value, api: &Value) -> bool {
    let shown = shown.as_str().unwrap_or_default();
    match api {
        Value::Number(n) => shown.parse::<f64>().ok() == n.as_f64(),
        Value::String(s) => shown == s,
        Value::Null => shown.is_empty(),
        other => *shown == *other.to_string(),
    }
}

const FIGURES: [&str; 6] = [
    "visitors",
    "visits",
    "pageviews",
    "views_per_visit",
    "bounce_rate",
    "visit_duration",
];

/// The console's top figures equal the API's for `filters`.
async fn check_figures(stack: &Stack, shown: &Value, filters: &Value) -> anyhow::Result<()> {
    let answer = query(stack, json!({"site_id": SITE, "metrics": FIGURES, "date_range": "30d", "filters": filters, "include": {"comparisons": "previous_period"}})).await?;
    let row = &answer["results"][0];
    for (i, metric) in FIGURES.iter().enumerate() {
        let figure = &shown[metric];
        assert!(
            same(&figure["value"], &row["metrics"][i]),
            "{metric}: the screen shows {figure}, the API {}",
            row["metrics"][i]
        );
        assert!(
            !figure["text"].as_str().unwrap_or_default().is_empty(),
            "{metric}: {figure}"
        );
    }
    // Counts below a thousand are shown whole; the others as people read them.
    assert_eq!(
        shown["visitors"]["text"],
        row["metrics"][0].to_string().as_str()
    );
    assert_eq!(
        shown["bounce_rate"]["text"]
            .as_str()
            .map(|t| t.ends_with('%')),
        Some(true)
    );
    let seconds = row["metrics"][5].as_f64().unwrap_or(0.0).round() as i64;
    let duration = if seconds < 60 {
        format!("{seconds}s")
    } else {
        format!("{}m {}s", seconds / 60, seconds % 60)
    };
    assert_eq!(shown["visit_duration"]["text"], duration.as_str());
    Ok(())
}

/// A panel's rows equal the API's first page of `dimension` with `metrics`.
async fn check_panel(
    stack: &Stack,
    shown: &Value,
    dimension: &str,
    metrics: &[&str],
    filters: Value,
    order: Option<(&str, &str)>,
) -> anyhow::Result<()> {
    let mut body = json!({"site_id": SITE, "metrics": metrics, "dimensions": [dimension], "date_range": "30d",
        "filters": filters, "pagination": {"limit": 10, "offset": 0}});
    if let Some((name, direction)) = order {
        body["order_by"] = json!([[name, direction]]);
    }
    let answer = query(stack, body).await?;
    let want = answer["results"].as_array().context("results")?;
    let got = shown.as_array().context("rows")?;
    assert!(!want.is_empty(), "{dimension}: the API has no rows");
    assert_eq!(
        got.len(),
        want.len(),
        "{dimension}: rows on screen {got:?}, of the API {want:?}"
    );
    for (g, w) in got.iter().zip(want) {
        assert!(
            same(&g[dimension], &w["dimensions"][0]),
            "{dimension}: {g} against {w}"
        );
        for (i, metric) in metrics.iter().enumerate() {
            assert!(
                same(&g[metric], &w["metrics"][i]),
                "{dimension} {metric}: {g} against {w}"
            );
        }
    }
    Ok(())
}

/// Every panel of the overview against the API, with `filters` applied.
async fn check_panels(stack: &Stack, panels: &Value, filters: &Value) -> anyhow::Result<()> {
    let with = |extra: Value| {
        let mut all = filters.as_array().cloned().unwrap_or_default();
        all.extend(extra.as_array().cloned().unwrap_or_default());
        Value::Array(all)
    };
    check_panel(
        stack,
        &panels["pages"],
        "event:page",
        &["visitors", "pageviews"],
        with(json!([["is", "event:name", ["page_view"]]])),
        None,
    )
    .await?;
    check_panel(
        stack,
        &panels["sources"],
        "visit:channel",
        &["visitors", "visits", "bounce_rate"],
        with(json!([])),
        None,
    )
    .await?;
    check_panel(
        stack,
        &panels["devices"],
        "visit:browser",
        &["visitors", "percentage"],
        with(json!([])),
        None,
    )
    .await?;
    check_panel(
        stack,
        &panels["events"],
        "event:name",
        &["events", "visitors"],
        with(json!([])),
        None,
    )
    .await?;
    check_panel(
        stack,
        &panels["goals"],
        "event:goal",
        &["visitors", "events", "conversion_rate"],
        with(json!([])),
        None,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn the_console_shows_what_the_api_answers_in_a_real_browser() -> anyhow::Result<()> {
    let stack = Stack::start(Options {
        site_spec: vec![
            (SITE, "goals: [{name: Purchase, eventType: purchase}, {name: Pricing page, pagePath: /pricing}]".into()),
            (SITE, "experiments: [{id: checkout, description: Green or blue, variants: [{name: A}, {name: B}], control: A, goal: Purchase}]".into()),
        ],
        ..Options::default()
    })
    .await?;
    let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let rows = history(now_ms);
    stack.insert_events(&rows, 200).await?;
    let screenshots = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(std::env::temp_dir, PathBuf::from)
        .join("tally-screenshots/console");
    std::fs::create_dir_all(&screenshots)?;

    let report = run_console(&stack, &screenshots).await?;
    eprintln!(
        "first useful paint: {} (figures shown at ms after navigation)",
        report["paint"]
    );
    assert_eq!(report["page_errors"], json!([]), "page errors");
    assert_eq!(report["console_errors"], json!([]), "console errors");

    // Accessibility: nothing serious or critical on any page, light or dark, desktop or phone.
    let pages = report["axe"].as_array().context("axe results")?;
    assert!(pages.len() >= 11, "{pages:?}");
    let bad: Vec<&Value> = pages
        .iter()
        .flat_map(|p| {
            p["violations"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |v| (p, v))
        })
        .filter(|(_, v)| matches!(v["impact"].as_str(), Some("serious" | "critical")))
        .map(|(_, v)| v)
        .collect();
    assert!(
        bad.is_empty(),
        "axe-core found serious or critical violations: {bad:#?}"
    );

    // Served by the query service with its policy; the key kept in the tab, never in the URL.
    assert!(
        report["landing"]["url"]
            .as_str()
            .unwrap_or_default()
            .ends_with("/console/"),
        "{}",
        report["landing"]
    );
    assert!(
        report["landing"]["csp"]
            .as_str()
            .unwrap_or_default()
            .contains("connect-src 'self'")
    );
    assert!(
        report["wrong_key"]
            .as_str()
            .unwrap_or_default()
            .contains("invalid_api_key"),
        "{}",
        report["wrong_key"]
    );
    assert_eq!(
        (
            report["key_in_url"].as_bool(),
            report["key_in_session_storage"].as_bool()
        ),
        (Some(false), Some(true))
    );

    // The overview equals the API's answers.
    let overview = &report["overview"];
    check_figures(&stack, &overview["figures"], &json!([])).await?;
    assert_eq!(overview["realtime"], REALTIME_VISITORS.to_string().as_str());
    assert_eq!(
        overview["graph"]["points"], 30,
        "a point per day of 30d: {}",
        overview["graph"]
    );
    assert_eq!(overview["graph"]["previous"], true);
    check_panels(&stack, &overview["panels"], &json!([])).await?;
    let recent = get(
        &stack,
        &format!("/v1/events/recent?site_id={SITE}&limit=20"),
    )
    .await?;
    assert_eq!(
        overview["panels"]["live"].as_array().map(Vec::len),
        recent["events"].as_array().map(Vec::len)
    );
    assert_eq!(
        overview["panels"]["live"][0]["event_id"],
        Value::Null,
        "the live table shows no ids"
    );
    assert!(same(
        &overview["panels"]["live"][0]["event_type"],
        &recent["events"][0]["event_type"]
    ));

    // The keyboard reaches the pickers and every figure; Enter picks the graph's metric.
    let reached = report["keyboard"].as_array().context("keyboard")?;
    for id in [
        "site",
        "period",
        "theme",
        "figure:visitors",
        "figure:visit_duration",
    ] {
        assert!(
            reached.iter().any(|r| r == id),
            "Tab never reached {id}: {reached:?}"
        );
    }
    assert_eq!(report["graph_metric"], "Total pageviews by day");

    // Sorted by a column, and exported as it is sorted.
    check_panel(
        &stack,
        &report["sorted_pages"],
        "event:page",
        &["visitors", "pageviews"],
        json!([["is", "event:name", ["page_view"]]]),
        Some(("pageviews", "desc")),
    )
    .await?;
    assert!(
        report["sorted_header"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Pageviews")
    );
    let csv = report["pages_csv"].as_str().context("the CSV")?;
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("Page,Visitors,Pageviews"));
    let first = &report["sorted_pages"][0];
    assert_eq!(
        lines.next().map(str::to_owned),
        Some(format!(
            "{},{},{}",
            first["event:page"].as_str().unwrap_or_default(),
            first["visitors"].as_str().unwrap_or_default(),
            first["pageviews"].as_str().unwrap_or_default()
        ))
    );

    // A click on a page filters the whole view, and the URL holds the filter.
    let filtered = &report["filtered"];
    let filter = json!([["is", "event:page", [CLICKED]]]);
    assert!(
        filtered["url"]
            .as_str()
            .unwrap_or_default()
            .contains("f.event%3Apage=%2Fpricing"),
        "{}",
        filtered["url"]
    );
    assert_eq!(
        filtered["chips"],
        json!([{"dimension": "event:page", "value": CLICKED}])
    );
    check_figures(&stack, &filtered["figures"], &filter).await?;
    check_panels(&stack, &filtered["panels"], &filter).await?;
    assert_ne!(
        filtered["figures"]["visitors"], overview["figures"]["visitors"],
        "the filter changed nothing"
    );
    assert_eq!(report["link"]["url"], filtered["url"]);
    assert_eq!(
        report["link"]["figures"], filtered["figures"],
        "the link reproduces the view"
    );

    // Dark mode, remembered across a reload.
    assert_eq!(
        report["theme"],
        json!({"toggled": "dark", "after_reload": "dark"})
    );

    // The experiment: every variant's figures as the summary has them.
    let summary = get(
        &stack,
        &format!("/v1/experiments/checkout/summary?site_id={SITE}"),
    )
    .await?;
    let experiments = &report["experiments"];
    assert!(same(
        &experiments["figures"]["uniqueUsers"]["value"],
        &summary["uniqueUsers"]
    ));
    assert!(same(
        &experiments["figures"]["totalEvents"]["value"],
        &summary["totalEvents"]
    ));
    let variants = experiments["variants"].as_array().context("variants")?;
    assert_eq!(variants.len(), 2, "{variants:?}");
    for row in variants {
        let name = row["variant"]
            .as_str()
            .unwrap_or_default()
            .trim_end_matches(" (control)");
        let want = &summary["variants"][name];
        for field in ["users", "conversions", "conversionRate"] {
            assert!(
                same(&row[field], &want[field]),
                "variant {name} {field}: {row} against {want}"
            );
        }
    }
    let b = variants
        .iter()
        .find(|r| r["variant"] == "B")
        .context("variant B")?;
    assert!(
        same(&b["pValue"], &summary["comparisons"][0]["uplift"]["pValue"]),
        "{b}"
    );
    assert!(
        experiments["sample_ratio"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Sample ratio")
    );

    // Sessions: the list, a search, and one session's events in order.
    let sessions = get(
        &stack,
        &format!("/v1/sessions?site_id={SITE}&date_range=30d&limit=20"),
    )
    .await?;
    let shown = report["sessions"]["all"].as_array().context("sessions")?;
    assert_eq!(
        shown.len(),
        sessions["sessions"].as_array().map_or(0, Vec::len)
    );
    for (s, w) in shown
        .iter()
        .zip(sessions["sessions"].as_array().into_iter().flatten())
    {
        assert!(
            same(&s["session_id"], &w["session_id"]) && same(&s["events"], &w["events"]),
            "{s} against {w}"
        );
    }
    let found = get(
        &stack,
        &format!("/v1/sessions?site_id={SITE}&date_range=30d&limit=20&search=pricing"),
    )
    .await?;
    let found_ids: Vec<&Value> = found["sessions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| &s["session_id"])
        .collect();
    let shown_ids: Vec<Value> = report["sessions"]["found"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| s["session_id"].clone())
        .collect();
    assert_eq!(shown_ids.iter().collect::<Vec<_>>(), found_ids);
    assert!(
        !shown_ids.is_empty() && shown_ids.len() < shown.len().max(21),
        "the search kept {shown_ids:?}"
    );
    let opened = report["sessions"]["opened"]
        .as_str()
        .context("an opened session")?;
    let one = get(&stack, &format!("/v1/sessions/{opened}?site_id={SITE}")).await?;
    let events: Vec<&Value> = report["sessions"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["event_type"])
        .collect();
    let want: Vec<&Value> = one["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["event_type"])
        .collect();
    assert!(!want.is_empty());
    assert_eq!(events.len(), want.len());
    for (g, w) in events.iter().zip(&want) {
        assert!(same(g, w), "{g} against {w}");
    }

    // The pipeline's health: what ClickHouse stores, no dead letters.
    let health = &report["health"]["figures"];
    assert_eq!(
        health["stored"]["value"],
        rows.len().to_string().as_str(),
        "{health}"
    );
    for key in ["waiting", "in_flight", "dead_lettered", "in_stream"] {
        assert!(health[key]["value"].is_string(), "{key}: {health}");
    }
    assert_eq!(report["health"]["dead_letters"], json!([]));

    // Errors end in toasts and the sign-in page, never a blank page.
    let toasts = report["unreachable"].as_array().context("toasts")?;
    assert!(
        toasts
            .iter()
            .any(|t| t.as_str().unwrap_or_default().contains("cannot be reached")),
        "{toasts:?}"
    );
    assert!(
        report["expired"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no longer accepted")
    );

    // A phone's width: nothing wider than the screen.
    for (page, overflow) in report["phone"]["overflow"].as_object().context("phone")? {
        assert!(
            overflow.as_f64().unwrap_or(1.0) <= 0.0,
            "{page} is {overflow} px wider than a phone"
        );
    }
    let shots = report["screenshots"].as_array().context("screenshots")?;
    assert!(shots.len() >= 13, "{shots:?}");
    for shot in shots {
        let path = PathBuf::from(shot.as_str().unwrap_or_default());
        assert!(
            std::fs::metadata(&path)
                .map(|m| m.len() > 1000)
                .unwrap_or(false),
            "{}",
            path.display()
        );
    }
    Ok(())
}
