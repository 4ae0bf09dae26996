//! The query API against its own OpenAPI document: schemathesis (PyPI) reads
//! `/v1/openapi.json` from a running stack and sends what the document allows, and what it
//! does not, to every operation (the examples, then generated requests), checking each
//! answer: no 5xx, a documented status, a documented content type, a body that matches its
//! schema. The stack holds events, a goal, an experiment, sessions and a dead letter, so
//! the answers have content.

use std::process::Command;

use serde_json::json;
use tally_e2e::{ADMIN_KEY, Options, Stack, clickhouse_time};

#[tokio::test]
async fn every_answer_of_the_query_api_matches_its_openapi_document() -> anyhow::Result<()> {
    let stack = Stack::start(Options {
        site_spec: vec![
            ("shop", "goals: [{name: Purchase, eventType: purchase}]".into()),
            (
                "shop",
                "experiments: [{id: checkout, variants: [{name: A}, {name: B}], control: A, goal: Purchase}]".into(),
            ),
        ],
        ..Options::default()
    })
    .await?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let rows: Vec<serde_json::Value> = (0..200i64)
        .map(|i| {
            json!({
                "event_id": uuid::Uuid::new_v4().to_string(), "site_id": "shop",
                "event_type": if i % 7 == 0 { "purchase" } else { "page_view" },
                "timestamp": clickhouse_time(now - i * 60_000), "received_at": clickhouse_time(now),
                "path": format!("/p/{}", i % 5), "visitor_id": format!("v{}", i % 13),
                "session_id": format!("s{}", i % 17),
                "properties": json!({"experiment_id": "checkout", "variant": if i % 2 == 0 { "A" } else { "B" }, "ms": i}).to_string(),
            })
        })
        .collect();
    stack.insert_events(&rows, rows.len()).await?;

    let pythonpath = tally_e2e::env_path("TALLY_SCHEMATHESIS_PYTHONPATH")?;
    let output = Command::new("python3")
        .env("PYTHONPATH", pythonpath)
        .env("SCHEMATHESIS_HOOKS", "")
        .args(["-m", "schemathesis.cli", "run"])
        .arg(stack.query_url("/v1/openapi.json"))
        .args(["--url", &stack.query_url("")])
        // As `Authorization`: the document declares both ways, and a key sent as
        // X-API-Key would lose to the Authorization header schemathesis makes up.
        .args(["--header", &format!("Authorization: Bearer {ADMIN_KEY}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "60", "--seed", "20261207", "--workers", "1"])
        .args(["--no-color"])
        .current_dir(&stack.dir)
        .output()?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{text}");
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{text}"
    );
    Ok(())
}
