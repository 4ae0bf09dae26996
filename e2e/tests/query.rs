//! The read side on real servers: the query service (`tally-query`) answers `/v1/stats` from
//! the test stack's ClickHouse (the `chdb-core` engine as a local server), in its own
//! process. Rows written straight into `events` (the materialized views fill the rollups as
//! they do for the processor's inserts) give exact answers to check every figure against; readiness waits for the rollups; and while
//! ClickHouse is down reads answer 503 and ingest goes on untouched.

use std::time::Duration;

use serde_json::json;
use tally_e2e::{Answer, DATABASE, Options, Stack, eventually, today};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// A read refused because ClickHouse cannot answer it: 503 `unavailable`, retry in a second.
fn assert_unavailable(answer: &Answer) {
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(answer.retry_after.as_deref(), Some("1"));
    assert_eq!(answer.json()["error"], "unavailable", "{}", answer.body);
}

/// NATS, ClickHouse, the processor (it applies the schema) and the query service; no
/// collector.
async fn read_stack() -> anyhow::Result<Stack> {
    let mut stack = Stack::start_servers(Options::default()).await?;
    stack.start_processor(&[]).await?;
    stack.start_query().await?;
    Ok(stack)
}

/// Inserts rows into the raw table: `(site, type, day, path, user, visitor, session)`.
async fn insert(
    stack: &Stack,
    rows: &[(&str, &str, &str, &str, &str, &str, &str)],
) -> anyhow::Result<()> {
    let values: Vec<String> = rows
        .iter()
        .enumerate()
        .map(|(i, (site, kind, day, path, user, visitor, session))| {
            format!(
                "('{id}', '{site}', '{kind}', '{day} 10:{i:02}:00', now64(3), '{path}', \
                 '{user}', '{visitor}', '{session}')",
                id = Uuid::new_v4()
            )
        })
        .collect();
    stack
        .sql(&format!(
            "INSERT INTO {DATABASE}.events (event_id, site_id, event_type, timestamp, \
             received_at, path, user_id, visitor_id, session_id) VALUES {}",
            values.join(", ")
        ))
        .await?;
    Ok(())
}

#[tokio::test]
async fn stats_are_exact_figures_of_the_rollups() -> anyhow::Result<()> {
    let stack = read_stack().await?;
    const DAY: &str = "2026-03-14";
    insert(
        &stack,
        &[
            ("shop", "page_view", DAY, "/a", "u1", "", ""),
            ("shop", "page_view", DAY, "/a", "u2", "", ""),
            ("shop", "page_view", DAY, "/b", "u1", "", ""),
            // Without a user id the visitor id, else the session id, identifies the visitor.
            ("shop", "page_view", DAY, "/b", "", "v1", ""),
            ("shop", "page_view", DAY, "/c", "", "", "s1"),
            // Not a page view: counts its user, not its path.
            ("shop", "click", DAY, "/d", "u3", "", ""),
            // No identity at all: a view, no visitor.
            ("shop", "page_view", DAY, "/e", "", "", ""),
            // The user "v1" is not the visitor "v1".
            ("shop", "page_view", DAY, "/e", "v1", "", ""),
            // Neither another site nor another day leaks in.
            ("docs", "page_view", DAY, "/a", "u1", "", ""),
            ("shop", "page_view", "2026-03-13", "/a", "u9", "", ""),
            ("shop", "page_view", &today(), "/today", "u1", "", ""),
        ],
    )
    .await?;
    let query = format!("site_id=shop&date={DAY}");
    let stats = stack
        .wait_stats(&query, |s| {
            s["total_views"] == 7 && s["top_paths"].as_array().map(Vec::len) == Some(4)
        })
        .await?;
    assert_eq!(
        stats,
        json!({
            "site_id": "shop",
            "date": DAY,
            "total_views": 7,
            "unique_users": 4,
            "unique_visitors": 6,
            // Most views first, ties by path; /d had no page view.
            "top_paths": [
                {"path": "/a", "views": 2},
                {"path": "/b", "views": 2},
                {"path": "/e", "views": 2},
                {"path": "/c", "views": 1},
            ],
        })
    );
    // The same figures through the query API: the day's page views and visitors, its
    // unique users (the visitors with a user id), its top paths.
    let ask = |body: serde_json::Value| {
        let request = stack
            .http
            .post(stack.query_url("/v1/query"))
            .header("x-api-key", tally_e2e::ADMIN_KEY)
            .json(&body);
        async move { anyhow::Ok(request.send().await?.json::<serde_json::Value>().await?) }
    };
    let totals = ask(
        json!({"site_id": "shop", "metrics": ["pageviews", "visitors"],
                            "date_range": [DAY, DAY]}),
    )
    .await?;
    assert_eq!(
        totals["results"],
        json!([{"dimensions": [], "metrics": [7, 6]}]),
        "{totals}"
    );
    let users = ask(
        json!({"site_id": "shop", "metrics": ["visitors"], "date_range": [DAY, DAY],
                           "filters": [["is_not", "event:user_id", [""]]]}),
    )
    .await?;
    assert_eq!(users["results"][0]["metrics"], json!([4]), "{users}");
    let top = ask(
        json!({"site_id": "shop", "metrics": ["pageviews"], "dimensions": ["event:page"],
                         "filters": [["is", "event:name", ["page_view"]]], "date_range": [DAY, DAY],
                         "order_by": [["pageviews", "desc"]], "pagination": {"limit": 10}}),
    )
    .await?;
    let rows: Vec<(String, u64)> = top["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["dimensions"][0].as_str().unwrap().to_owned(),
                r["metrics"][0].as_u64().unwrap(),
            )
        })
        .collect();
    let want = [("/a", 2), ("/b", 2), ("/e", 2), ("/c", 1)].map(|(p, v)| (p.to_owned(), v));
    assert_eq!(rows, want, "{top}");
    let (status, limited) = stack.stats(&format!("{query}&limit=2")).await?;
    assert_eq!(status, 200);
    assert_eq!(
        limited["top_paths"],
        json!([{"path": "/a", "views": 2}, {"path": "/b", "views": 2}])
    );
    let (_, docs) = stack.stats(&format!("site_id=docs&date={DAY}")).await?;
    assert_eq!(
        (&docs["total_views"], &docs["unique_users"]),
        (&json!(1), &json!(1))
    );
    let (_, day_before) = stack.stats("site_id=shop&date=2026-03-13").await?;
    assert_eq!(day_before["top_paths"], json!([{"path": "/a", "views": 1}]));
    // Without `date`: today (UTC).
    let (status, now) = stack.stats("site_id=shop").await?;
    assert_eq!(status, 200);
    assert_eq!(
        (&now["date"], &now["total_views"]),
        (&json!(today()), &json!(1))
    );
    // An empty day is zeros, not an error.
    let (status, empty) = stack.stats("site_id=docs&date=2024-02-29").await?;
    assert_eq!(status, 200);
    assert_eq!(
        empty,
        json!({"site_id": "docs", "date": "2024-02-29", "total_views": 0,
               "unique_users": 0, "unique_visitors": 0, "top_paths": []})
    );
    // Mistakes are answered by the query service as the collector answered them.
    let (status, answer) = stack.stats("site_id=blog").await?;
    assert_eq!((status, &answer["error"]), (404, &json!("unknown_site")));
    let (status, answer) = stack.stats("site_id=shop&limit=5000").await?;
    assert_eq!((status, &answer["error"]), (400, &json!("invalid_query")));
    let metrics = stack.get(&stack.query_url("/metrics")).await.body;
    assert!(
        metrics.contains(
            "tally_query_clickhouse_query_duration_seconds_count{query=\"Totals\",outcome=\"Answered\"}"
        ),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn the_query_service_is_ready_once_the_rollups_exist() -> anyhow::Result<()> {
    let mut stack = Stack::start_servers(Options::default()).await?;
    // No processor yet: ClickHouse answers, but the pipeline's tables are not there.
    stack.spawn_query()?;
    let why = eventually(
        "the query service to say why it is not ready",
        WAIT,
        || async {
            let (status, why) = stack.query_readiness().await;
            (status == 503 && why.contains("do not exist yet")).then_some(why)
        },
    )
    .await?;
    assert!(why.contains(DATABASE), "{why}");
    assert_unavailable(&stack.get(&stack.stats_url("site_id=shop")).await);
    let alive = stack.get(&stack.query_url("/healthz")).await;
    assert_eq!(alive.status, 200, "alive while not ready: {}", alive.body);

    stack.start_processor(&[]).await?;
    stack.wait_query_ready(WAIT).await?;
    let (status, stats) = stack.stats("site_id=shop").await?;
    assert_eq!((status, &stats["total_views"]), (200, &json!(0)));
    Ok(())
}

#[tokio::test]
async fn with_clickhouse_down_reads_answer_503_and_ingest_goes_on() -> anyhow::Result<()> {
    let mut stack = Stack::start(Options::default()).await?;
    let event = |path: &str| {
        json!({"site_id": "shop", "event_type": "page_view", "path": path,
               "event_id": Uuid::new_v4()})
        .to_string()
    };
    let (status, answer) = stack.post(event("/before")).await?;
    assert_eq!(status, 202, "{answer}");
    stack
        .wait_stats("site_id=shop", |s| s["total_views"] == 1)
        .await?;
    // Reads are not the collector's.
    let answer = stack
        .get(&stack.collector_url("/v1/stats?site_id=shop"))
        .await;
    assert_eq!(answer.status, 404, "{}", answer.body);

    stack.stop_clickhouse();
    assert_unavailable(&stack.get(&stack.stats_url("site_id=shop")).await);
    eventually("the query service to report not ready", WAIT, || async {
        let (status, why) = stack.query_readiness().await;
        (status == 503 && why.contains("ClickHouse")).then_some(())
    })
    .await?;
    // Ingest does not notice: JetStream holds the events until ClickHouse is back.
    let (status, answer) = stack.post(event("/during")).await?;
    assert_eq!(status, 202, "{answer}");
    let ready = stack.get(&stack.collector_url("/readyz")).await;
    assert_eq!(ready.status, 200, "{}", ready.body);

    stack.restart_clickhouse().await?;
    stack.wait_query_ready(WAIT).await?;
    let stats = stack
        // Both rollups: each view finishes its part of an insert a moment apart.
        .wait_stats("site_id=shop", |s| {
            s["total_views"] == 2 && s["top_paths"].as_array().is_some_and(|p| p.len() == 2)
        })
        .await?;
    assert_eq!(
        stats["top_paths"],
        json!([{"path": "/before", "views": 1}, {"path": "/during", "views": 1}])
    );
    stack.check_alive()?;
    Ok(())
}
