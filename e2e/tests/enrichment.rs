//! The processor's enrichment on real servers: browser events posted with their user agents,
//! referrers and campaign links are stored with the browser, OS, device, source, channel and
//! UTM columns filled, and the new rollups (sources, browsers, OS, devices, sessions) count
//! them; a database made by the previous schema version is migrated with its rows kept.

use std::time::Duration;

use serde_json::json;
use tally_contracts::schema;
use tally_e2e::{ADMIN_KEY, DATABASE, Options, Stack};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
const LINUX_CHROME: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36";
const WAIT: Duration = Duration::from_secs(60);

/// `seconds` before now, as the tracker would time it.
fn ago(seconds: i64) -> String {
    (OffsetDateTime::now_utc() - time::Duration::seconds(seconds))
        .format(&Rfc3339)
        .unwrap()
}

/// Posts one event the way a browser on `agent` does: no key, the page's origin.
async fn post_from_browser(
    stack: &Stack,
    agent: &str,
    event: serde_json::Value,
) -> anyhow::Result<()> {
    let (status, body) = stack
        .post_with(
            event.to_string(),
            &[
                ("origin", "https://shop.example.com"),
                ("user-agent", agent),
            ],
        )
        .await?;
    anyhow::ensure!(status == 202, "{status} {body}");
    Ok(())
}

/// Two visits: a phone from a newsletter link, a desktop from Google that goes on to a
/// second page and leaves.
async fn post_two_visits(stack: &Stack) -> anyhow::Result<()> {
    post_from_browser(
        stack,
        IPHONE,
        json!({"site_id": "shop", "type": "page_view", "timestamp": ago(30),
               "url": "https://shop.example.com/?utm_source=newsletter&utm_medium=email&utm_campaign=spring",
               "visitor_id": "v-phone", "session_id": "s-phone",
               "screen_width": 390, "screen_height": 844}),
    )
    .await?;
    for (seconds, event) in [
        (
            20,
            json!({"type": "page_view", "url": "https://shop.example.com/pricing",
                    "referrer": "https://www.google.com/"}),
        ),
        (
            10,
            json!({"type": "page_view", "url": "https://shop.example.com/checkout",
                    "referrer": "https://shop.example.com/pricing"}),
        ),
        (
            5,
            json!({"type": "page_unload", "url": "https://shop.example.com/checkout",
                   "referrer": "https://shop.example.com/pricing",
                   "properties": {"time_on_page": 5000}}),
        ),
    ] {
        let mut event = event;
        let fields = event.as_object_mut().unwrap();
        fields.insert("site_id".into(), "shop".into());
        fields.insert("timestamp".into(), ago(seconds).into());
        fields.insert("visitor_id".into(), "v-desk".into());
        fields.insert("session_id".into(), "s-desk".into());
        fields.insert("screen_width".into(), 1920.into());
        fields.insert("screen_height".into(), 1080.into());
        post_from_browser(stack, LINUX_CHROME, event).await?;
    }
    Ok(())
}

#[tokio::test]
async fn browser_events_are_enriched_and_rolled_up() -> anyhow::Result<()> {
    let stack = Stack::start(Options::default()).await?;
    post_two_visits(&stack).await?;

    stack
        .wait_sql(
            &format!(
                "SELECT event_type, path, browser, browser_version, os, os_version, device, \
                 screen_width, screen_height, referrer_host, source, channel, \
                 utm_source, utm_medium, utm_campaign, is_bot \
                 FROM {DATABASE}.events WHERE site_id = 'shop' ORDER BY timestamp FORMAT TSV"
            ),
            "page_view\t/\tSafari\t17\tiOS\t17\tmobile\t390\t844\t\tnewsletter\tEmail\tnewsletter\temail\tspring\tfalse\n\
             page_view\t/pricing\tChrome\t156\tLinux\t\tdesktop\t1920\t1080\twww.google.com\tGoogle\tOrganic Search\t\t\t\tfalse\n\
             page_view\t/checkout\tChrome\t156\tLinux\t\tdesktop\t1920\t1080\tshop.example.com\t\tInternal\t\t\t\tfalse\n\
             page_unload\t/checkout\tChrome\t156\tLinux\t\tdesktop\t1920\t1080\tshop.example.com\t\tInternal\t\t\t\tfalse",
            WAIT,
        )
        .await?;

    // The rollups, as the read side will query them (steps inside the site are no source;
    // the views finish their part of an insert just after the raw rows are visible).
    stack
        .wait_sql(
            &format!(
            "SELECT channel, source, referrer_host, sum(page_views), sum(events), uniqExactMerge(visitors) \
             FROM {DATABASE}.{} WHERE site_id = 'shop' GROUP BY channel, source, referrer_host \
             ORDER BY channel FORMAT TSV",
            schema::SOURCE_DAILY
        ),
            "Email\tnewsletter\t\t1\t1\t1\nOrganic Search\tGoogle\twww.google.com\t1\t1\t1",
            WAIT,
        )
        .await?;
    stack
        .wait_sql(
            &format!(
                "SELECT browser, browser_version, sum(page_views), uniqExactMerge(visitors) \
             FROM {DATABASE}.{} WHERE site_id = 'shop' GROUP BY browser, browser_version \
             ORDER BY browser FORMAT TSV",
                schema::BROWSER_DAILY
            ),
            "Chrome\t156\t2\t1\nSafari\t17\t1\t1",
            WAIT,
        )
        .await?;
    stack
        .wait_sql(
            &format!(
                "SELECT os, sum(page_views) FROM {DATABASE}.{} WHERE site_id = 'shop' \
             GROUP BY os ORDER BY os FORMAT TSV",
                schema::OS_DAILY
            ),
            "Linux\t2\niOS\t1",
            WAIT,
        )
        .await?;
    stack
        .wait_sql(
            &format!(
                "SELECT device, sum(page_views), uniqExactMerge(visitors) FROM {DATABASE}.{} \
             WHERE site_id = 'shop' GROUP BY device ORDER BY device FORMAT TSV",
                schema::DEVICE_DAILY
            ),
            "desktop\t2\t1\nmobile\t1\t1",
            WAIT,
        )
        .await?;
    stack
        .wait_sql(
            &format!(
                "SELECT session_id, sum(page_views), sum(events), argMinMerge(visitor), \
             argMinMerge(entry_page), argMaxMerge(exit_page), argMinMerge(source), \
             argMinMerge(channel), argMinMerge(device), \
             toUInt64(max(ended_at) - min(started_at)) \
             FROM {DATABASE}.{} WHERE site_id = 'shop' GROUP BY session_id \
             ORDER BY session_id FORMAT TSV",
                schema::SESSIONS
            ),
            "s-desk\t2\t3\tv:v-desk\t/pricing\t/checkout\tGoogle\tOrganic Search\tdesktop\t15\n\
         s-phone\t1\t1\tv:v-phone\t/\t/\tnewsletter\tEmail\tmobile\t0",
            WAIT,
        )
        .await?;
    Ok(())
}

/// The daily rollup's page views and events of `shop`.
async fn site_daily(stack: &Stack) -> anyhow::Result<String> {
    stack
        .sql(&format!(
            "SELECT sum(page_views), sum(events) FROM {DATABASE}.{} WHERE site_id = 'shop' FORMAT TSV",
            schema::SITE_DAILY
        ))
        .await
}

/// What the `events` table held before migration 3 (schema version 2), column for column.
const VERSION_2_COLUMNS: &str = "event_id, site_id, event_type, timestamp, received_at, path, \
     url, referrer, title, user_id, visitor_id, session_id, properties, is_bot";

#[tokio::test]
async fn a_database_of_the_previous_schema_is_migrated_with_its_rows() -> anyhow::Result<()> {
    let mut stack = Stack::start_servers(Options::default()).await?;
    // The database as a processor of schema version 2 left it, with three events.
    for statement in tally_contracts::schema::migrations_table(DATABASE) {
        stack.sql(&statement).await?;
    }
    for migration in schema::migrations(DATABASE)
        .into_iter()
        .filter(|m| m.version <= 2)
    {
        for statement in &migration.statements {
            stack.sql(statement).await?;
        }
        stack
            .sql(&format!(
                "INSERT INTO {DATABASE}.{} (version, description) VALUES ({}, 'before')",
                schema::MIGRATIONS_TABLE,
                migration.version
            ))
            .await?;
    }
    stack
        .sql(&format!(
            "INSERT INTO {DATABASE}.events ({VERSION_2_COLUMNS}) VALUES \
             (generateUUIDv4(), 'shop', 'page_view', now64(3) - 60, now64(3) - 60, '/old', \
              'https://shop.example.com/old', 'https://www.google.com/', 'Old', '', 'v1', 's1', '{{}}', false), \
             (generateUUIDv4(), 'shop', 'page_view', now64(3) - 50, now64(3) - 50, '/old', \
              'https://shop.example.com/old', '', 'Old', '', 'v2', 's2', '{{}}', false), \
             (generateUUIDv4(), 'shop', 'signup', now64(3) - 40, now64(3) - 40, '/old', \
              'https://shop.example.com/old', '', 'Old', 'u1', 'v2', 's2', '{{}}', false)"
        ))
        .await?;
    assert_eq!(site_daily(&stack).await?, "2\t3");

    // The processor of this version migrates it at start.
    stack.start_processor(&[]).await?;
    stack.start_collector().await?;
    assert_eq!(
        stack
            .sql(&format!(
                "SELECT groupArray(version) FROM (SELECT version FROM {DATABASE}.{} ORDER BY version) FORMAT TSV",
                schema::MIGRATIONS_TABLE
            ))
            .await?,
        format!(
            "[{}]",
            schema::migrations(DATABASE)
                .iter()
                .map(|m| m.version.to_string())
                .collect::<Vec<_>>()
                .join(",")
        )
    );
    // The old rows are all there, with the new columns at their defaults.
    assert_eq!(
        stack
            .sql(&format!(
                "SELECT count(), countIf(browser = '' AND device = '' AND channel = '' AND screen_width = 0) \
                 FROM {DATABASE}.events WHERE path = '/old' FORMAT TSV"
            ))
            .await?,
        "3\t3"
    );
    // New events are enriched, and the old rollups go on counting old and new alike.
    post_from_browser(
        &stack,
        LINUX_CHROME,
        json!({"site_id": "shop", "type": "page_view", "url": "https://shop.example.com/new",
               "referrer": "https://duckduckgo.com/", "visitor_id": "v3", "session_id": "s3"}),
    )
    .await?;
    stack
        .wait_sql(
            &format!(
                "SELECT browser, device, source, channel FROM {DATABASE}.events \
                 WHERE path = '/new' FORMAT TSV"
            ),
            "Chrome\tdesktop\tDuckDuckGo\tOrganic Search",
            WAIT,
        )
        .await?;
    // (The views finish their part of an insert just after the raw rows are visible.)
    stack
        .wait_sql(
            &format!(
                "SELECT sum(page_views), sum(events) FROM {DATABASE}.{} WHERE site_id = 'shop' FORMAT TSV",
                schema::SITE_DAILY
            ),
            "3\t4",
            WAIT,
        )
        .await?;
    // The query API's hourly rollups were created after the old rows: they hold every
    // event only from a day and an hour on, so the query API counts today from the raw
    // events, the old rows with the new.
    assert_eq!(
        stack
            .sql(&format!(
                "SELECT count(), countIf(since >= now64(3) + INTERVAL 24 HOUR) FROM {DATABASE}.{} FORMAT TSV",
                schema::ROLLUP_COVERAGE
            ))
            .await?,
        "2\t2"
    );
    stack.start_query().await?;
    let answer: serde_json::Value = stack
        .http
        .post(stack.query_url("/v1/query"))
        .header("x-api-key", ADMIN_KEY)
        .json(&json!({"site_id": "shop", "metrics": ["pageviews", "events"], "date_range": "7d"}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        answer["results"],
        json!([{"dimensions": [], "metrics": [3, 4]}]),
        "{answer}"
    );
    assert!(answer["meta"].get("rollup").is_none(), "{answer}");
    Ok(())
}
