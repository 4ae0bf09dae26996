//! Visitors' privacy on real servers: a site that respects Do Not Track stores nothing of
//! a request that carries `DNT: 1` or `Sec-GPC: 1`, from the collector to ClickHouse,
//! while the same requests for a site without the setting are stored as before.

use std::time::Duration;

use serde_json::json;
use tally_contracts::RuntimeConfig;
use tally_e2e::{DATABASE, Options, PIPELINE, Stack, pipeline_yaml};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// The test pipeline with one more site, `quiet`, that respects Do Not Track.
fn resources() -> anyhow::Result<RuntimeConfig> {
    let yaml = format!(
        "{}---
apiVersion: tally.dev/v1alpha1
kind: AnalyticsSite
metadata:
  name: quiet
spec:
  pipelineRef:
    name: {PIPELINE}
  siteId: quiet
  privacy:
    respectDoNotTrack: true
",
        pipeline_yaml(&Options::default(), 4222, 8123)
    );
    RuntimeConfig::parse("privacy test", &yaml).map_err(|e| anyhow::anyhow!("{e}"))
}

#[tokio::test]
async fn do_not_track_requests_for_a_site_that_respects_them_store_nothing() -> anyhow::Result<()> {
    let stack = Stack::start(Options {
        resources: Some(resources()?),
        ..Options::default()
    })
    .await?;
    let url = stack.collector_url("/v1/events");
    for (header, value) in [("dnt", "1"), ("sec-gpc", "1")] {
        let (quiet, shop) = (Uuid::new_v4(), Uuid::new_v4());
        let body = json!([
            {"site_id": "quiet", "event_type": "page_view", "path": "/private", "event_id": quiet},
            {"site_id": "shop", "event_type": "page_view", "path": "/public", "event_id": shop},
        ]);
        let response = stack
            .http
            .post(&url)
            .header(header, value)
            .json(&body)
            .send()
            .await?;
        assert_eq!(response.status().as_u16(), 202);
        let answer: serde_json::Value = response.json().await?;
        assert_eq!(answer["not_stored"], 1, "{answer}");
        assert_eq!(answer["results"][0]["reason"], "do_not_track", "{answer}");
        assert_eq!(
            answer["results"][1]["event_id"],
            shop.to_string(),
            "{answer}"
        );
    }
    // Without the header, `quiet` stores as any site does.
    let (status, answer) = stack
        .post(
            json!({"site_id": "quiet", "event_type": "page_view", "path": "/consented"})
                .to_string(),
        )
        .await?;
    assert_eq!(status, 202, "{answer}");

    // Once the shop's events and the consented one are in ClickHouse, nothing else is.
    stack
        .wait_sql(
            &format!(
                "SELECT countIf(site_id = 'shop'), countIf(site_id = 'quiet') FROM {DATABASE}.events"
            ),
            "2\t1",
            WAIT,
        )
        .await?;
    let private = stack
        .sql_u64(&format!(
            "SELECT count() FROM {DATABASE}.events WHERE path = '/private'"
        ))
        .await?;
    assert_eq!(
        private, 0,
        "an event of a visitor who asked not to be tracked was stored"
    );
    Ok(())
}
