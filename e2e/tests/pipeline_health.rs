//! The pipeline's health and dead letters through the query service, on real NATS and
//! ClickHouse: the backlog while the processor is stopped and after it drained, the age of
//! the oldest waiting event; dead letters listed (all, by site, by page) and replayed — an
//! event stored once however often it is replayed, a letter that was no event refused —
//! and who may do what.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use serde_json::{Value, json};
use tally_contracts::access::{digest_of, to_hex};
use tally_contracts::stream::dead_letter;
use tally_contracts::{RuntimeConfig, naming, stream};
use tally_e2e::{ADMIN_KEY, DATABASE, Options, PIPELINE, Stack, eventually};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);
/// A read key of site `docs`.
const DOCS_KEY: &str = "tally-docs-read-key-for-health-3c1d";

async fn get(stack: &Stack, path: &str, key: Option<&str>) -> anyhow::Result<(u16, Value)> {
    let mut request = stack.http.get(stack.query_url(path));
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    let response = request.send().await?;
    Ok((response.status().as_u16(), response.json().await?))
}

async fn replay(stack: &Stack, body: Value, key: &str) -> anyhow::Result<(u16, Value)> {
    let response = stack
        .http
        .post(stack.query_url("/v1/pipeline/dead-letters/replay"))
        .header("x-api-key", key)
        .json(&body)
        .send()
        .await?;
    Ok((response.status().as_u16(), response.json().await?))
}

fn envelope(id: Uuid, site: &str, timestamp_ms: i64) -> Value {
    json!({
        "event_id": id, "site_id": site, "event_type": "page_view", "path": "/replayed",
        "timestamp_ms": timestamp_ms, "received_at_ms": timestamp_ms, "properties": {},
    })
}

#[tokio::test]
async fn health_and_dead_letters_are_read_and_replayed() -> anyhow::Result<()> {
    let mut stack = Stack::start(Options {
        site_spec: vec![(
            "docs",
            format!(
                "apiKeys: [{{sha256: {}, scopes: [read]}}]",
                to_hex(&digest_of(DOCS_KEY))
            ),
        )],
        ..Options::default()
    })
    .await?;

    // Idle: nothing waits.
    let (status, health) = get(&stack, "/v1/pipeline/health", Some(ADMIN_KEY)).await?;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["pipeline"], PIPELINE);
    for field in ["waiting", "in_flight", "dead_lettered", "stored"] {
        assert_eq!(health[field], 0, "{field}: {health}");
    }
    assert_eq!(health["oldest_waiting_age_seconds"], Value::Null);

    // The processor stopped: 300 events wait, and their age grows.
    stack.processor.stop();
    let events: Vec<Value> = (0..300)
        .map(|i| json!({"site_id": "shop", "event_type": "page_view", "path": format!("/{i}")}))
        .collect();
    assert_eq!(stack.post(Value::Array(events).to_string()).await?.0, 202);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, health) = get(&stack, "/v1/pipeline/health", Some(ADMIN_KEY)).await?;
    assert_eq!(
        health["waiting"].as_u64().unwrap() + health["in_flight"].as_u64().unwrap(),
        300,
        "{health}"
    );
    assert!(
        health["oldest_waiting_age_seconds"].as_f64().unwrap() >= 1.0,
        "{health}"
    );
    assert!(
        health["processor_lag_seconds"].as_f64().unwrap() >= 1.0,
        "{health}"
    );
    assert_eq!(health["in_stream"], 300, "{health}");

    // Started again, it drains: all stored, no lag.
    stack.start_processor(&[]).await?;
    let drained = eventually("the backlog to drain", WAIT, || async {
        let (_, health) = get(&stack, "/v1/pipeline/health", Some(ADMIN_KEY))
            .await
            .ok()?;
        (health["stored"] == 300 && health["waiting"] == 0 && health["in_flight"] == 0)
            .then_some(health)
    })
    .await?;
    assert_eq!(drained["processor_lag_seconds"], 0.0, "{drained}");

    // Dead letters, as the processor writes them: one event twice, one stored already, one
    // that is no event, one from elsewhere.
    let config = RuntimeConfig::load(&stack.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let js = jetstream::new(stack.nats_client().await?);
    stream::ensure_dead_letter_stream(&js, &config)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let lost = Uuid::new_v4();
    // One of the events stored above, as its envelope said (a dead letter's payload is the
    // message as published).
    let row = stack
        .sql(&format!(
            "SELECT toString(event_id), toUnixTimestamp64Milli(timestamp) FROM {DATABASE}.events LIMIT 1"
        ))
        .await?;
    let (stored, stored_ms) = row.split_once('\t').expect("two columns");
    let (stored, stored_ms): (Uuid, i64) = (stored.parse()?, stored_ms.parse()?);
    let lost_ms = 1_780_000_000_000;
    let letters = [
        (
            "shop",
            envelope(lost, "shop", lost_ms).to_string(),
            naming::event_subject(PIPELINE, "shop"),
        ),
        (
            "shop",
            envelope(lost, "shop", lost_ms).to_string(),
            naming::event_subject(PIPELINE, "shop"),
        ),
        (
            "shop",
            envelope(stored, "shop", stored_ms).to_string(),
            naming::event_subject(PIPELINE, "shop"),
        ),
        (
            naming::UNKNOWN_SITE,
            "this is not JSON".to_owned(),
            naming::event_subject(PIPELINE, "docs"),
        ),
        (
            "docs",
            envelope(Uuid::new_v4(), "docs", lost_ms).to_string(),
            "elsewhere.events.docs".to_owned(),
        ),
    ];
    for (site, payload, original) in &letters {
        let mut headers = HeaderMap::new();
        headers.insert(dead_letter::KIND, dead_letter::REJECTED);
        headers.insert(dead_letter::REASON, "refused for the test");
        headers.insert(dead_letter::ORIGINAL_SUBJECT, original.as_str());
        headers.insert(dead_letter::DELIVERIES, "5");
        let subject = naming::dead_letter_subject(PIPELINE, Some(site));
        js.publish_with_headers(subject, headers, payload.clone().into())
            .await?
            .await?;
    }

    let (status, all) = get(&stack, "/v1/pipeline/dead-letters", Some(ADMIN_KEY)).await?;
    assert_eq!(status, 200, "{all}");
    let list = all["dead_letters"].as_array().unwrap();
    assert_eq!(list.len(), 5, "{all}");
    let sequences: Vec<u64> = list
        .iter()
        .map(|l| l["sequence"].as_u64().unwrap())
        .collect();
    assert!(
        sequences.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {all}"
    );
    assert_eq!(list[0]["reason"], "refused for the test");
    assert_eq!(list[0]["kind"], dead_letter::REJECTED);
    assert_eq!(list[0]["deliveries"], 5);
    assert_eq!(list[0]["site_id"], "shop");
    assert_eq!(list[0]["payload"]["event_id"], lost.to_string());
    assert_eq!(list[3]["payload"], "this is not JSON");
    assert_eq!(list[3]["site_id"], naming::UNKNOWN_SITE);
    assert_eq!(all["next_after"], Value::Null);
    // Pages, and one site's letters.
    let (_, first) = get(&stack, "/v1/pipeline/dead-letters?limit=2", Some(ADMIN_KEY)).await?;
    assert_eq!(first["dead_letters"].as_array().unwrap().len(), 2);
    let after = first["next_after"].as_u64().unwrap();
    assert_eq!(after, sequences[1]);
    let (_, rest) = get(
        &stack,
        &format!("/v1/pipeline/dead-letters?after={after}"),
        Some(ADMIN_KEY),
    )
    .await?;
    assert_eq!(rest["dead_letters"][0]["sequence"], sequences[2], "{rest}");
    let (_, shop) = get(
        &stack,
        "/v1/pipeline/dead-letters?site_id=shop",
        Some(ADMIN_KEY),
    )
    .await?;
    assert_eq!(shop["dead_letters"].as_array().unwrap().len(), 3, "{shop}");
    let (status, docs) = get(
        &stack,
        "/v1/pipeline/dead-letters?site_id=docs",
        Some(DOCS_KEY),
    )
    .await?;
    assert_eq!(
        (status, docs["dead_letters"].as_array().unwrap().len()),
        (200, 1),
        "{docs}"
    );

    // Who may: a site's key reads its own letters only, never the health or a replay.
    for (path, key, want) in [
        ("/v1/pipeline/health", None, 401),
        ("/v1/pipeline/health", Some(DOCS_KEY), 403),
        ("/v1/pipeline/dead-letters", Some(DOCS_KEY), 403),
        (
            "/v1/pipeline/dead-letters?site_id=shop",
            Some(DOCS_KEY),
            403,
        ),
        ("/v1/pipeline/dead-letters?after=x", Some(ADMIN_KEY), 400),
    ] {
        let (status, body) = get(&stack, path, key).await?;
        assert_eq!(status, want, "{path}: {body}");
    }
    let (status, _) = replay(&stack, json!({"sequences": [sequences[0]]}), DOCS_KEY).await?;
    assert_eq!(status, 403);
    let (status, body) = replay(&stack, json!({"sequence": 1}), ADMIN_KEY).await?;
    assert_eq!(status, 400, "{body}");

    // Replayed: the lost event is stored once though sent twice, the stored one stays
    // once; the letter from elsewhere is refused, an unknown sequence not found.
    let chosen =
        json!({"sequences": [sequences[0], sequences[1], sequences[2], sequences[4], 999]});
    let (status, replayed) = replay(&stack, chosen, ADMIN_KEY).await?;
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(replayed["replayed"], 3, "{replayed}");
    let outcomes: Vec<&str> = replayed["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        [
            "replayed",
            "replayed",
            "replayed",
            "not_replayable",
            "not_found"
        ]
    );
    let count = |id: Uuid| {
        let stack = &stack;
        async move {
            stack
                .sql_u64(&format!(
                    "SELECT count() FROM {DATABASE}.events WHERE event_id = '{id}'"
                ))
                .await
        }
    };
    eventually("the replayed event stored", WAIT, || async {
        (count(lost).await.ok()? == 1).then_some(())
    })
    .await?;
    let (_, health) = get(&stack, "/v1/pipeline/health", Some(ADMIN_KEY)).await?;
    eventually("the replays acknowledged", WAIT, || async {
        let (_, health) = get(&stack, "/v1/pipeline/health", Some(ADMIN_KEY))
            .await
            .ok()?;
        (health["waiting"] == 0 && health["in_flight"] == 0).then_some(())
    })
    .await?;
    assert_eq!(count(lost).await?, 1);
    assert_eq!(count(stored).await?, 1);
    assert_eq!(health["dead_lettered"], 2, "{health}");
    let (_, left) = get(&stack, "/v1/pipeline/dead-letters", Some(ADMIN_KEY)).await?;
    let left: Vec<u64> = left["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(left, [sequences[3], sequences[4]]);
    let (_, again) = replay(&stack, json!({"sequences": [sequences[0]]}), ADMIN_KEY).await?;
    assert_eq!(again["results"][0]["outcome"], "not_found", "{again}");
    Ok(())
}
