//! The data path end to end on real servers: HTTP → collector → JetStream → processor →
//! ClickHouse rollups → the query service's stats API. The fault tests under load (processor
//! kills, ClickHouse and NATS outages, a JetStream cluster losing a node, poison messages)
//! are in faults.rs; the read side's own tests are in query.rs.

use std::time::Duration;

use serde_json::{Value, json};
use tally_e2e::{DATABASE, Options, Stack, assert_exact, settle_and_count, today};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

fn page_view(site: &str, path: &str, user: Option<&str>, time: &str) -> Value {
    let mut event = json!({
        "site_id": site,
        "event_type": "page_view",
        "path": path,
        "timestamp": format!("{}T{time}Z", today()),
        "event_id": Uuid::new_v4(),
    });
    if let Some(user) = user {
        event["user_id"] = json!(user);
    }
    event
}

#[tokio::test]
async fn five_page_views_give_the_documented_stats() -> anyhow::Result<()> {
    let stack = Stack::start(Options::default()).await?;
    let events = [
        page_view("shop", "/home", Some("user-001"), "09:00:00"),
        page_view("shop", "/products", Some("user-002"), "09:05:00"),
        page_view("shop", "/products", Some("user-001"), "09:10:00"),
        page_view("shop", "/home", None, "09:15:00"),
        page_view("shop", "/about", Some("user-003"), "09:20:00"),
    ];
    // One as a single event, the rest as a batch: both shapes take the same path.
    let (status, _) = stack.post(events[0].to_string()).await?;
    assert_eq!(status, 202);
    let (status, answer) = stack.post(json!(events[1..]).to_string()).await?;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"], 4);

    let query = format!("site_id=shop&date={}", today());
    let stats = stack
        .wait_stats(&query, |s| {
            s["top_paths"].as_array().map(Vec::len) == Some(3) && s["total_views"] == 5
        })
        .await?;
    assert_eq!(
        stats,
        json!({
            "site_id": "shop",
            "date": today(),
            "total_views": 5,
            "unique_users": 3,
            "unique_visitors": 3,
            "top_paths": [
                {"path": "/home", "views": 2},
                {"path": "/products", "views": 2},
                {"path": "/about", "views": 1},
            ],
        })
    );
    let (_, limited) = stack
        .stats(&format!("site_id=shop&date={}&limit=1", today()))
        .await?;
    assert_eq!(limited["top_paths"], json!([{"path": "/home", "views": 2}]));
    // The other site and another day are empty, not errors.
    let (status, empty) = stack.stats("site_id=docs&date=2024-02-29").await?;
    assert_eq!(status, 200);
    assert_eq!(
        (
            empty["total_views"].as_u64(),
            empty["top_paths"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0))
    );
    // The hourly rollup agrees with the daily one.
    let hourly = stack
        .sql_u64(&format!(
            "SELECT sum(page_views) FROM {DATABASE}.site_hourly WHERE site_id = 'shop'"
        ))
        .await?;
    assert_eq!(hourly, 5);
    Ok(())
}

#[tokio::test]
async fn an_event_posted_three_times_counts_once() -> anyhow::Result<()> {
    let stack = Stack::start(Options::default()).await?;
    let event = page_view("docs", "/guide", Some("reader"), "10:00:00");
    let mut duplicates = 0;
    for _ in 0..3 {
        let (status, answer) = stack.post(event.to_string()).await?;
        assert_eq!(status, 202, "{answer}");
        duplicates += usize::from(answer["results"][0]["duplicate"] == json!(true));
    }
    assert_eq!(
        duplicates, 2,
        "the stream reports the two retries as duplicates"
    );
    // A marker after the duplicates: once it is stored, so is everything before it.
    let (status, answer) = stack
        .post(page_view("docs", "/marker", None, "10:01:00").to_string())
        .await?;
    assert_eq!(status, 202, "{answer}");
    // Raw rows, distinct ids and every rollup: two events, each once.
    settle_and_count(&stack, 2, WAIT).await;
    let stats = stack
        .wait_stats(&format!("site_id=docs&date={}", today()), |s| {
            s["top_paths"].as_array().map(Vec::len) == Some(2)
        })
        .await?;
    assert_eq!(stats["total_views"], 2);
    assert_eq!(stats["top_paths"][0], json!({"path": "/guide", "views": 1}));
    Ok(())
}

/// A re-post after the stream's duplicate window is a new message to JetStream; the processor
/// still stores the event once, whether the copies arrive in one batch or in two.
#[tokio::test]
async fn a_repost_after_the_duplicate_window_counts_once() -> anyhow::Result<()> {
    let mut stack = Stack::start(Options {
        duplicate_window: Some("1s"),
        ..Options::default()
    })
    .await?;
    stack.processor.stop();
    let same_batch = page_view("docs", "/same-batch", Some("reader"), "09:00:00");
    let later_batch = page_view("docs", "/later-batch", Some("reader"), "09:30:00");
    for event in [&same_batch, &later_batch] {
        let (status, answer) = stack.post(event.to_string()).await?;
        assert_eq!(status, 202, "{answer}");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, answer) = stack.post(same_batch.to_string()).await?;
    assert_eq!(status, 202, "{answer}");
    assert_ne!(
        answer["results"][0]["duplicate"],
        json!(true),
        "past the window JetStream stores the copy: {answer}"
    );
    // Both copies of the first event wait in the stream: the processor gets them in one batch.
    stack.start_processor(&[]).await?;
    stack
        .wait_sql(
            &format!("SELECT sum(events) FROM {DATABASE}.site_daily WHERE site_id = 'docs'"),
            "2",
            WAIT,
        )
        .await?;
    // The second event's copy comes after its original was written.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, answer) = stack.post(later_batch.to_string()).await?;
    assert_eq!(status, 202, "{answer}");
    assert_ne!(answer["results"][0]["duplicate"], json!(true), "{answer}");
    stack
        .post(page_view("docs", "/marker", None, "10:00:00").to_string())
        .await?;
    stack
        .wait_sql(
            &format!("SELECT sum(events) FROM {DATABASE}.site_daily WHERE site_id = 'docs'"),
            "3",
            WAIT,
        )
        .await?;
    let raw = stack
        .sql(&format!(
            "SELECT count(), uniqExact(event_id) FROM {DATABASE}.events WHERE site_id = 'docs'"
        ))
        .await?;
    assert_eq!(raw.trim(), "3\t3", "one row per event");
    let skipped = stack.processor_metrics().await?;
    assert!(
        skipped.contains("tally_processor_events_skipped_duplicate_total 2"),
        "both copies skipped: {skipped}"
    );
    Ok(())
}

#[tokio::test]
async fn invalid_payloads_are_refused_with_details_and_store_nothing() -> anyhow::Result<()> {
    let stack = Stack::start(Options::default()).await?;
    let (status, answer) = stack
        .post(
            json!({"site_id": "shop", "event_type": 7, "timestamp": "noon", "event_id": "x"})
                .to_string(),
        )
        .await?;
    assert_eq!(status, 400);
    assert_eq!(answer["error"], "invalid_event");
    let fields: Vec<&str> = answer["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["field"].as_str())
        .collect();
    assert_eq!(fields, ["event_type", "timestamp", "event_id"]);

    let (status, answer) = stack
        .post(json!([{"site_id": "shop"}, {"site_id": "shop", "type": "page_view"}]).to_string())
        .await?;
    assert_eq!(
        status, 400,
        "a batch with no valid event is refused: {answer}"
    );
    assert_eq!(
        (answer["accepted"].as_u64(), answer["rejected"].as_u64()),
        (Some(0), Some(2))
    );

    let (status, answer) = stack
        .post(json!({"site_id": "blog", "type": "x"}).to_string())
        .await?;
    assert_eq!(status, 404);
    assert!(answer["message"].as_str().unwrap().contains("\"blog\""));
    let (status, _) = stack.post("{not json").await?;
    assert_eq!(status, 400);
    let (status, _) = stack.post(vec![b' '; 2 * 1024 * 1024]).await?;
    assert_eq!(status, 413);
    let (status, _) = stack.stats("date=2026-01-01").await?;
    assert_eq!(status, 400);
    let (status, _) = stack.stats("site_id=shop&date=yesterday").await?;
    assert_eq!(status, 400);

    // A valid event on the other site flows through; the refused ones never appear.
    stack
        .post(page_view("docs", "/ok", None, "11:00:00").to_string())
        .await?;
    stack
        .wait_sql(
            &format!("SELECT count() FROM {DATABASE}.events WHERE site_id = 'docs'"),
            "1",
            WAIT,
        )
        .await?;
    assert_eq!(
        stack
            .sql_u64(&format!(
                "SELECT count() FROM {DATABASE}.events WHERE site_id != 'docs'"
            ))
            .await?,
        0
    );
    Ok(())
}

#[tokio::test]
async fn with_nats_down_posts_get_503_and_arrive_once_it_is_back() -> anyhow::Result<()> {
    let mut stack = Stack::start(Options::default()).await?;
    stack.stop_nats();
    let during = page_view("shop", "/during", None, "12:00:00");
    let mut answered_503 = false;
    // The collector notices the lost connection within moments.
    for _ in 0..50 {
        let (status, answer) = stack.post(during.to_string()).await?;
        if status == 503 {
            assert_eq!(answer["error"], "unavailable");
            answered_503 = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        answered_503,
        "the collector kept answering while NATS was down"
    );
    let ready = stack.get(&stack.collector_url("/readyz")).await;
    assert_eq!(ready.status, 503, "{}", ready.body);

    stack.restart_nats().await?;
    stack.wait_collector_ready(WAIT).await?;
    // The client retries what got 503, and sends more.
    let (status, _) = stack.post(during.to_string()).await?;
    assert_eq!(status, 202);
    let after: Vec<Value> = (0..3)
        .map(|i| page_view("shop", "/after", None, &format!("12:0{}:00", i + 1)))
        .collect();
    let (status, _) = stack.post(json!(after).to_string()).await?;
    assert_eq!(status, 202);
    // Raw rows, distinct ids and every rollup: the retried event once, and the three after it.
    settle_and_count(&stack, 4, WAIT).await;
    let stats = stack
        .wait_stats(&format!("site_id=shop&date={}", today()), |s| {
            s["top_paths"].as_array().map(Vec::len) == Some(2)
        })
        .await?;
    assert_eq!(stats["total_views"], 4);
    Ok(())
}

/// `n` page views with fresh ids, spread over paths and users.
fn many(n: usize, tag: &str) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let site = if i % 3 == 0 { "docs" } else { "shop" };
            let mut e = page_view(site, &format!("/{tag}/{}", i % 7), None, "13:00:00");
            e["user_id"] = json!(format!("u{}", i % 50));
            e
        })
        .collect()
}

#[tokio::test]
async fn a_crash_between_insert_and_ack_counts_nothing_twice() -> anyhow::Result<()> {
    let mut stack = Stack::start(Options {
        batch_max_rows: 100,
        ack_wait: "2s",
        ..Options::default()
    })
    .await?;
    stack.processor.stop();
    let events = many(450, "crash");
    let (status, answer) = stack.post(json!(events).to_string()).await?;
    assert_eq!(status, 202, "{answer}");

    // This processor writes one batch, then dies before acknowledging it.
    stack.spawn_processor(&["--crash-after-inserts", "1"])?;
    assert_eq!(
        stack.processor.wait_exit(WAIT),
        Some(86),
        "the processor should crash on purpose"
    );
    let written = stack
        .sql_u64(&format!("SELECT count() FROM {DATABASE}.events"))
        .await?;
    assert_eq!(written, 100, "one batch was written before the crash");

    // JetStream redelivers that batch to the next processor, which must skip it.
    stack.start_processor(&[]).await?;
    stack
        .wait_sql(
            &format!("SELECT count() FROM {DATABASE}.events"),
            "450",
            WAIT,
        )
        .await?;
    // Give a wrong double insert time to show up before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_exact(&stack, 450).await?;
    let metrics = stack.processor_metrics().await?;
    assert!(
        metrics.contains("tally_processor_events_skipped_duplicate_total 100"),
        "the redelivered batch was recognised as stored:\n{metrics}"
    );
    Ok(())
}
