//! The tracker in a real browser: headless Chromium (Debian's package), driven by
//! `playwright-core` through `e2e/browser/scenario.mjs`, visits the demo website
//! (`examples/demo-site/`, served as `make dev` serves it) on a stack running the example
//! resources, whose `demo` site takes the loopback origin. Each scenario reports what the
//! page sent; the test then finds exactly those events, in that order and with those
//! fields (and the processor's enrichment), in ClickHouse. Do-Not-Track, opt-out, a blocked
//! collector and an unreachable one are scenarios too; the tracker's size budget is
//! checked on what the collector serves. Screenshots of every step are saved under
//! `$CARGO_TARGET_DIR/tally-screenshots/tracker/`.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;
use serde_json::{Value, json};
use tally_contracts::RuntimeConfig;
use tally_e2e::{Options, Stack, demo_site, env_path};

/// The example pipeline's database.
const DATABASE: &str = "tally_web";
/// What the browser presents itself as: Chromium's own user agent without "Headless",
/// which the collector's bot check (rightly) takes for a bot.
const USER_AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36";

/// What `scenario.mjs` prints.
#[derive(Debug, Deserialize)]
struct Report {
    sent: Vec<Value>,
    page_errors: Vec<String>,
    console_errors: Vec<String>,
    tracker_bytes: usize,
}

struct Browser {
    demo: String,
    node_path: PathBuf,
    chromium: PathBuf,
    screenshots: PathBuf,
}

impl Browser {
    /// Runs one scenario to its end (it bounds itself; this bounds it again).
    async fn run(&self, scenario: &str) -> anyhow::Result<Report> {
        let script = tally_e2e::examples_dir()
            .parent()
            .context("the repository")?
            .join("e2e/browser/scenario.mjs");
        let output = tokio::time::timeout(
            Duration::from_secs(120),
            tokio::process::Command::new("node")
                .arg(&script)
                .arg(scenario)
                .env("NODE_PATH", &self.node_path)
                .env("TALLY_DEMO_URL", &self.demo)
                .env("TALLY_CHROMIUM", &self.chromium)
                .env("TALLY_USER_AGENT", USER_AGENT)
                .env("TALLY_SCREENSHOT_DIR", &self.screenshots)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .with_context(|| format!("scenario {scenario} did not end within 120 s"))??;
        let stderr = String::from_utf8_lossy(&output.stderr);
        anyhow::ensure!(
            output.status.success(),
            "scenario {scenario} failed ({}):\n{stderr}",
            output.status
        );
        let report: Report = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("scenario {scenario} printed no report:\n{stderr}"))?;
        assert!(
            report.page_errors.is_empty() && report.console_errors.is_empty(),
            "scenario {scenario}: the page had errors: {:?} {:?}",
            report.page_errors,
            report.console_errors
        );
        Ok(report)
    }
}

/// The event's URL relative to the demo site (`/app.html?view=reports`).
fn local<'a>(url: &'a str, demo: &str) -> &'a str {
    url.strip_prefix(demo.trim_end_matches('/')).unwrap_or(url)
}

/// What the tour must send, in order: event type, page, properties (`time_on_page` is
/// checked apart: a positive number).
fn tour(demo: &str) -> Vec<(&'static str, &'static str, Value)> {
    let d = |path: &str| format!("{}{path}", demo.trim_end_matches('/'));
    vec![
        ("page_view", "/index.html", json!({})),
        (
            "button_click",
            "/index.html",
            json!({"button_id": "signup"}),
        ),
        (
            "button_click",
            "/index.html",
            json!({"button_id": "add-to-cart", "plan": "pro"}),
        ),
        (
            "newsletter_signup",
            "/index.html",
            json!({"button_id": "newsletter", "list": "monthly"}),
        ),
        (
            "button_click",
            "/index.html",
            json!({"button_id": "play-video"}),
        ),
        ("video_played", "/index.html", json!({"seconds": 42})),
        (
            "file_download",
            "/index.html",
            json!({"destination": d("/files/price-list.csv"), "text": "Download the price list (CSV)"}),
        ),
        (
            "outbound_click",
            "/index.html",
            json!({"destination": "https://example.org/", "text": "Read more on example.org"}),
        ),
        (
            "navigation_click",
            "/index.html",
            json!({"destination": d("/pricing.html"), "text": "Pricing"}),
        ),
        ("page_unload", "/index.html", Value::Null),
        ("page_view", "/pricing.html", json!({})),
        (
            "navigation_click",
            "/pricing.html",
            json!({"destination": d("/app.html"), "text": "App"}),
        ),
        ("page_unload", "/pricing.html", Value::Null),
        ("page_view", "/app.html", json!({})),
        (
            "navigation_click",
            "/app.html",
            json!({"destination": d("/app.html?view=reports"), "text": "Reports"}),
        ),
        ("page_unload", "/app.html", Value::Null),
        ("page_view", "/app.html?view=reports", json!({})),
        (
            "navigation_click",
            "/app.html?view=reports",
            json!({"destination": d("/app.html?view=settings"), "text": "Settings"}),
        ),
        ("page_unload", "/app.html?view=reports", Value::Null),
        ("page_view", "/app.html?view=settings", json!({})),
        ("page_unload", "/app.html?view=settings", Value::Null),
        ("page_view", "/app.html?view=reports", json!({})),
        ("page_unload", "/app.html?view=reports", Value::Null),
    ]
}

/// Checks what the tour sent against [`tour`]: types, pages and properties in order, each
/// `page_unload` with a positive `time_on_page`.
fn check_tour(sent: &[Value], demo: &str) {
    let expected = tour(demo);
    let got: Vec<(&str, &str)> = sent
        .iter()
        .map(|e| {
            (
                e["event_type"].as_str().unwrap_or(""),
                local(e["url"].as_str().unwrap_or(""), demo),
            )
        })
        .collect();
    let want: Vec<(&str, &str)> = expected.iter().map(|(t, p, _)| (*t, *p)).collect();
    assert_eq!(got, want, "the tour's events, in order");
    for (event, (event_type, _, properties)) in sent.iter().zip(&expected) {
        if *event_type == "page_unload" {
            let ms = event["properties"]["time_on_page"].as_f64().unwrap_or(0.0);
            assert!(ms > 0.0, "time_on_page of {event}");
            assert_eq!(
                event["properties"].as_object().map(|o| o.len()),
                Some(1),
                "{event}"
            );
        } else {
            assert_eq!(&event["properties"], properties, "{event}");
        }
        assert_eq!(event["site_id"], "demo");
        assert!(event["screen_width"].as_u64().unwrap_or(0) > 0, "{event}");
    }
}

/// A stored event as the test compares it with a sent one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    event_type: String,
    url: String,
    referrer: String,
    title: String,
    properties: String,
}

impl Key {
    fn of_sent(e: &Value) -> Self {
        let text = |f: &str| e[f].as_str().unwrap_or_default().to_owned();
        Self {
            event_type: text("event_type"),
            url: text("url"),
            referrer: text("referrer"),
            title: text("title"),
            // serde_json's maps are ordered by key: one spelling per object.
            properties: e["properties"].to_string(),
        }
    }
}

/// A row of the browser session's events in ClickHouse, in timestamp order.
#[derive(Debug, Deserialize)]
struct Row {
    event_type: String,
    url: String,
    referrer: String,
    title: String,
    properties: String,
    timestamp_ms: i64,
    visitor_id: String,
    browser: String,
    os: String,
    device: String,
    screen_width: u16,
    channel: String,
    is_bot: bool,
}

async fn stored(stack: &Stack, session: &str) -> anyhow::Result<Vec<Row>> {
    let text = stack
        .sql(&format!(
            "SELECT event_type, url, referrer, title, properties, \
             toUnixTimestamp64Milli(timestamp) AS timestamp_ms, visitor_id, browser, os, device, \
             screen_width, channel, is_bot FROM {DATABASE}.events \
             WHERE site_id = 'demo' AND session_id = '{session}' \
             ORDER BY timestamp FORMAT JSONEachRow"
        ))
        .await?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

/// Waits until ClickHouse holds exactly the events `sent` of one browser session, then
/// checks that they are the same events (every field the page sent) in the same order: two
/// events may be stored in the other order only when the page sent them within 100 ms of
/// each other (a click and the page's unload, on two connections).
async fn check_stored(stack: &Stack, sent: &[Value]) -> anyhow::Result<Vec<Row>> {
    let session = sent[0]["session_id"]
        .as_str()
        .context("a session id")?
        .to_owned();
    let mut rows = Vec::new();
    for _ in 0..300 {
        rows = stored(stack, &session).await?;
        if rows.len() >= sent.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(rows.len(), sent.len(), "stored events of session {session}");
    let mut positions: HashMap<Key, Vec<usize>> = HashMap::new();
    for (i, e) in sent.iter().enumerate() {
        positions.entry(Key::of_sent(e)).or_default().push(i);
    }
    let mut order = Vec::new();
    for row in &rows {
        let properties: Value = serde_json::from_str(&row.properties)?;
        let key = Key {
            event_type: row.event_type.clone(),
            url: row.url.clone(),
            referrer: row.referrer.clone(),
            title: row.title.clone(),
            properties: properties.to_string(),
        };
        let slot = positions
            .get_mut(&key)
            .and_then(|p| (!p.is_empty()).then(|| p.remove(0)))
            .with_context(|| format!("stored but not sent: {key:?}"))?;
        order.push(slot);
    }
    for (pair, rows) in order.windows(2).zip(rows.windows(2)) {
        if pair[0] > pair[1] {
            let gap = rows[1].timestamp_ms - rows[0].timestamp_ms;
            assert!(
                gap <= 100,
                "events {} and {} were stored {gap} ms apart in the other order",
                pair[0],
                pair[1]
            );
        }
    }
    Ok(rows)
}

#[tokio::test]
async fn the_demo_website_in_a_real_browser() -> anyhow::Result<()> {
    let resources = RuntimeConfig::load(&tally_e2e::examples_dir())
        .map_err(|e| anyhow::anyhow!("examples/: {e}"))?;
    let stack = Stack::start(Options {
        resources: Some(resources),
        ..Options::default()
    })
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let demo = format!("http://{}", listener.local_addr()?);
    let _site = tokio::spawn(demo_site::serve(
        listener,
        demo_site::demo_dir(),
        stack.collector_url(""),
    ));
    let screenshots = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(std::env::temp_dir, PathBuf::from)
        .join("tally-screenshots/tracker");
    std::fs::create_dir_all(&screenshots)?;
    let browser = Browser {
        demo: demo.clone(),
        node_path: env_path("TALLY_PLAYWRIGHT_NODE_PATH")?,
        chromium: env_path("TALLY_CHROMIUM")?,
        screenshots,
    };

    // The size budget, on what the collector serves, and all of it reached the page.
    let tracker = stack
        .http
        .get(stack.collector_url("/tracker.js"))
        .send()
        .await?
        .bytes()
        .await?;
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gzip.write_all(&tracker)?;
    let gzipped = gzip.finish()?.len();
    assert!(
        gzipped <= 2048,
        "tracker.js is {gzipped} bytes gzipped, over 2 KB"
    );

    let tour = browser.run("tour").await?;
    assert_eq!(tour.tracker_bytes, tracker.len());
    check_tour(&tour.sent, &demo);
    let rows = check_stored(&stack, &tour.sent).await?;
    let visitor = &rows[0].visitor_id;
    for row in &rows {
        assert_eq!(
            (
                row.browser.as_str(),
                row.os.as_str(),
                row.device.as_str(),
                row.is_bot
            ),
            ("Chrome", "Linux", "desktop", false),
            "{row:?}"
        );
        assert!(
            row.screen_width > 0 && &row.visitor_id == visitor,
            "{row:?}"
        );
    }
    // The events of the first page carry its (empty) referrer: direct; the rest were
    // referred by the demo's own pages.
    for row in &rows {
        let want = if row.referrer.is_empty() {
            "Direct"
        } else {
            "Internal"
        };
        assert_eq!(row.channel, want, "{row:?}");
    }
    assert_eq!(rows[0].channel, "Direct");
    assert_eq!(rows.last().map(|r| r.channel.as_str()), Some("Internal"));

    // Do-Not-Track: the page works and sends nothing.
    let dnt = browser.run("dnt").await?;
    assert!(dnt.sent.is_empty(), "{:?}", dnt.sent);
    assert!(dnt.tracker_bytes > 0);

    // Opted out: the page view and the opt-out click, then nothing.
    let opt_out = browser.run("optout").await?;
    let types: Vec<&str> = opt_out
        .sent
        .iter()
        .map(|e| e["event_type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(types, ["page_view", "button_click"]);
    assert_eq!(opt_out.sent[1]["properties"]["button_id"], "opt-out");
    check_stored(&stack, &opt_out.sent).await?;

    // A blocked tracker and an unreachable collector: the page works, without errors (the
    // runs check it), and nothing is retried.
    let blocked = browser.run("blocked").await?;
    assert!(blocked.sent.is_empty() && blocked.tracker_bytes == 0);
    let unreachable = browser.run("unreachable").await?;
    assert_eq!(
        unreachable.sent.len(),
        20,
        "each event tried once: {:?}",
        unreachable.sent
    );
    let session = unreachable.sent[0]["session_id"]
        .as_str()
        .unwrap_or_default();
    assert!(stored(&stack, session).await?.is_empty());
    Ok(())
}
