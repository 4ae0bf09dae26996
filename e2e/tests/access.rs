//! Tenancy on real servers: which key may write and read which site (the whole matrix), a key
//! rotated under steady traffic without one failed request, a site flooded far past its rate
//! limit beside a site whose posts go on as before, and no key in any log of the run.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tally_contracts::RuntimeConfig;
use tally_e2e::{ADMIN_KEY, DATABASE, Options, PIPELINE, Stack, local_resources, pipeline_yaml};

const WAIT: Duration = Duration::from_secs(60);

const ALPHA_KEY: &str = "alpha-key-ingest-and-read-0001";
const BETA_KEY: &str = "beta-key-ingest-and-read-00002";
const ALPHA_NEXT: &str = "alpha-key-after-rotation-00003";

/// The test pipeline with sites `alpha` and `beta` (each with one key of both scopes),
/// `limited` (100 events/s, burst 100) and `steady`; `alpha_keys` names the Secret keys
/// that are `alpha`'s keys.
fn resources(alpha_keys: &[&str]) -> anyhow::Result<RuntimeConfig> {
    let alpha = alpha_keys
        .iter()
        .map(|key| {
            format!("\n    - secretRef: {{name: keys, key: {key}}}\n      scopes: [ingest, read]")
        })
        .collect::<String>();
    let yaml = format!(
        "{pipeline}---
apiVersion: v1
kind: Secret
metadata: {{name: keys}}
stringData:
  alpha: {ALPHA_KEY}
  alpha-next: {ALPHA_NEXT}
  beta: {BETA_KEY}
---
apiVersion: tally.dev/v1alpha1
kind: AnalyticsSite
metadata: {{name: alpha}}
spec:
  pipelineRef: {{name: {PIPELINE}}}
  siteId: alpha
  apiKeys:{alpha}
---
apiVersion: tally.dev/v1alpha1
kind: AnalyticsSite
metadata: {{name: beta}}
spec:
  pipelineRef: {{name: {PIPELINE}}}
  siteId: beta
  apiKeys:
    - secretRef: {{name: keys, key: beta}}
      scopes: [ingest, read]
---
apiVersion: tally.dev/v1alpha1
kind: AnalyticsSite
metadata: {{name: limited}}
spec:
  pipelineRef: {{name: {PIPELINE}}}
  siteId: limited
  rateLimit: {{eventsPerSecond: 100, burst: 100}}
---
apiVersion: tally.dev/v1alpha1
kind: AnalyticsSite
metadata: {{name: steady}}
spec:
  pipelineRef: {{name: {PIPELINE}}}
  siteId: steady
",
        pipeline = pipeline_yaml(&Options::default(), 4222, 8123)
    );
    RuntimeConfig::parse("access test", &yaml).map_err(|e| anyhow::anyhow!("{e}"))
}

/// A POST of one event for `site` with `key` (if any): its status.
async fn write(stack: &Stack, site: &str, key: Option<&str>) -> anyhow::Result<u16> {
    let body = json!({"site_id": site, "event_type": "page_view", "path": "/"}).to_string();
    let headers: Vec<(&str, &str)> = key.map(|k| ("x-api-key", k)).into_iter().collect();
    Ok(stack.post_with(body, &headers).await?.0)
}

/// A GET of `site`'s stats with `key` (if any): its status.
async fn read(stack: &Stack, site: &str, key: Option<&str>) -> anyhow::Result<u16> {
    let mut request = stack.http.get(stack.stats_url(&format!("site_id={site}")));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    Ok(request.send().await?.status().as_u16())
}

/// Rewrites the stack's configuration and asks the collector and the query service to
/// reload it (SIGHUP).
fn reload(stack: &mut Stack, resources: &RuntimeConfig) -> anyhow::Result<()> {
    let yaml = local_resources(resources, stack.nats_port, stack.clickhouse_port).to_yaml();
    std::fs::write(&stack.config, yaml)?;
    for process in [&stack.collector, &stack.query] {
        let pid = process.pid().expect("the service runs");
        let sent = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()?;
        anyhow::ensure!(sent.success(), "kill -HUP {pid} failed");
    }
    Ok(())
}

/// No key or server password of the run in any of the stack's logs.
fn assert_no_key_in_logs(stack: &Stack) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(&stack.dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path)?;
            for secret in [
                ALPHA_KEY,
                BETA_KEY,
                ALPHA_NEXT,
                ADMIN_KEY,
                tally_e2e::NATS_PASSWORD,
                tally_e2e::CLICKHOUSE_PASSWORD,
            ] {
                assert!(!text.contains(secret), "{} holds a secret", path.display());
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn keys_keep_sites_apart_and_rotate_without_a_failed_request() -> anyhow::Result<()> {
    let mut stack = Stack::start(Options {
        resources: Some(resources(&["alpha"])?),
        ..Options::default()
    })
    .await?;

    // Every key against every operation: the exact status of each cell.
    let keys = [
        ("key of alpha", Some(ALPHA_KEY)),
        ("key of beta", Some(BETA_KEY)),
        ("admin key", Some(ADMIN_KEY)),
        ("no key", None),
        ("garbage", Some("not-a-key-of-this-pipeline")),
    ];
    // write alpha, write beta, read alpha, read beta
    let expected = [
        [202, 403, 200, 403],
        [403, 202, 403, 200],
        [403, 403, 200, 200],
        [401, 401, 401, 401],
        [401, 401, 401, 401],
    ];
    let mut written = 0;
    for ((name, key), want) in keys.iter().zip(expected) {
        let got = [
            write(&stack, "alpha", *key).await?,
            write(&stack, "beta", *key).await?,
            read(&stack, "alpha", *key).await?,
            read(&stack, "beta", *key).await?,
        ];
        assert_eq!(
            got, want,
            "{name}: write alpha, write beta, read alpha, read beta"
        );
        written += got[..2].iter().filter(|s| **s == 202).count();
    }
    assert_eq!(written, 2);
    stack
        .wait_sql(
            &format!(
                "SELECT site_id, count() FROM {DATABASE}.events GROUP BY site_id ORDER BY site_id \
                 FORMAT CSV"
            ),
            "\"alpha\",1\n\"beta\",1",
            WAIT,
        )
        .await?;

    // Rotation under steady traffic: a client posts every 20 ms with the old key; the new
    // key is added, the client switches, the old key is removed. Not one answer of that
    // client is other than 202.
    let (switch, switched) = tokio::sync::watch::channel(false);
    let client = {
        let (http, url) = (stack.http.clone(), stack.collector_url("/v1/events"));
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                tick.tick().await;
                let new = *switched.borrow();
                let key = if new { ALPHA_NEXT } else { ALPHA_KEY };
                let status = http
                    .post(&url)
                    .header("x-api-key", key)
                    .json(&json!({"event_type": "rotation"}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                statuses.push((new, status));
                if switched.has_changed().is_err() {
                    break; // the test is done
                }
            }
            statuses
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    reload(&mut stack, &resources(&["alpha", "alpha-next"])?)?;
    tally_e2e::eventually("the new key to be taken", WAIT, || async {
        (write(&stack, "alpha", Some(ALPHA_NEXT)).await.ok()? == 202).then_some(())
    })
    .await?;
    switch.send(true)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    reload(&mut stack, &resources(&["alpha-next"])?)?;
    tally_e2e::eventually("the old key to be refused", WAIT, || async {
        (write(&stack, "alpha", Some(ALPHA_KEY)).await.ok()? == 401).then_some(())
    })
    .await?;
    tally_e2e::eventually("reads to take the new key only", WAIT, || async {
        let new = read(&stack, "alpha", Some(ALPHA_NEXT)).await.ok()?;
        let old = read(&stack, "alpha", Some(ALPHA_KEY)).await.ok()?;
        (new == 200 && old == 401).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(switch);
    let statuses = client.await?;
    let failed: Vec<_> = statuses.iter().filter(|(_, s)| *s != 202).collect();
    let on_new = statuses.iter().filter(|(new, _)| *new).count();
    assert!(failed.is_empty(), "answers other than 202: {failed:?}");
    assert!(on_new > 10 && statuses.len() - on_new > 10, "{statuses:?}");
    assert_no_key_in_logs(&stack)
}

/// Posts single events for `site` every `period` for `duration`; returns each answer's
/// status and latency.
async fn post_steadily(
    stack: &Stack,
    site: &str,
    period: Duration,
    duration: Duration,
) -> anyhow::Result<Vec<(u16, Duration)>> {
    let body = json!({"site_id": site, "event_type": "page_view", "path": "/steady"}).to_string();
    let mut answers = Vec::new();
    let mut tick = tokio::time::interval(period);
    let end = Instant::now() + duration;
    while Instant::now() < end {
        tick.tick().await;
        let start = Instant::now();
        let (status, _) = stack.post(body.clone()).await?;
        answers.push((status, start.elapsed()));
    }
    Ok(answers)
}

fn p99(answers: &[(u16, Duration)]) -> Duration {
    let mut latencies: Vec<Duration> = answers.iter().map(|(_, l)| *l).collect();
    latencies.sort();
    latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)]
}

#[tokio::test]
async fn a_site_flooded_past_its_limit_does_not_slow_another() -> anyhow::Result<()> {
    let stack = Stack::start(Options {
        resources: Some(resources(&["alpha"])?),
        ..Options::default()
    })
    .await?;
    let period = Duration::from_millis(20);
    let leg = Duration::from_secs(5);
    // `steady` alone: 50 posts a second.
    let alone = post_steadily(&stack, "steady", period, leg).await?;

    // `limited` offered ten times its 100 events/s (batches of 10, 100 a second) while
    // `steady` posts as before.
    let flood = {
        let (http, url) = (stack.http.clone(), stack.collector_url("/v1/events"));
        tokio::spawn(async move {
            let batch = json!(vec![
                json!({"site_id": "limited", "event_type": "flood"});
                10
            ]);
            let mut answers = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let end = Instant::now() + Duration::from_secs(5);
            let start = Instant::now();
            while Instant::now() < end {
                tick.tick().await;
                let Ok(response) = http.post(&url).json(&batch).send().await else {
                    continue;
                };
                let status = response.status().as_u16();
                let retry_after = response.headers().contains_key("retry-after");
                let limits = response.headers().contains_key("ratelimit");
                answers.push((status, retry_after, limits));
            }
            (answers, start.elapsed())
        })
    };
    let beside = post_steadily(&stack, "steady", period, leg).await?;
    let (flooded, flood_time) = flood.await?;

    assert!(alone.iter().chain(&beside).all(|(s, _)| *s == 202));
    let refused = flooded.iter().filter(|(s, _, _)| *s == 429).count();
    let taken = flooded.iter().filter(|(s, _, _)| *s == 202).count();
    assert!(
        refused > flooded.len() / 2,
        "{refused} of {} refused",
        flooded.len()
    );
    assert!(flooded.iter().all(|(s, _, _)| *s == 202 || *s == 429));
    assert!(
        flooded
            .iter()
            .filter(|(s, _, _)| *s == 429)
            .all(|(_, retry, limits)| *retry && *limits)
    );
    // What was taken is within the limit: the burst, then 100 a second.
    let most = 100 + (100.0 * flood_time.as_secs_f64()).ceil() as usize;
    assert!(
        taken * 10 <= most + 10,
        "{taken} batches of 10 taken in {flood_time:?}"
    );
    // Exactly the events answered 202 are stored.
    stack
        .wait_sql(
            &format!("SELECT count() FROM {DATABASE}.events WHERE site_id = 'limited'"),
            &(taken * 10).to_string(),
            WAIT,
        )
        .await?;

    let (before, after) = (p99(&alone), p99(&beside));
    eprintln!(
        "steady site p99: {:.2} ms alone, {:.2} ms beside the flood ({} of {} flood requests refused)",
        before.as_secs_f64() * 1e3,
        after.as_secs_f64() * 1e3,
        refused,
        flooded.len()
    );
    // Loosely: within twice the p99 alone (plus 5 ms for a run's noise on a busy machine).
    assert!(
        after <= before * 2 + Duration::from_millis(5),
        "p99 {after:?} beside the flood, {before:?} alone"
    );
    Ok(())
}

/// A request of the read side with `key` (if any): its status.
async fn ask(
    stack: &Stack,
    method: &str,
    path: &str,
    body: Option<Value>,
    key: Option<&str>,
) -> anyhow::Result<u16> {
    let url = stack.query_url(path);
    let mut request = match method {
        "POST" => stack.http.post(url),
        _ => stack.http.get(url),
    };
    if let Some(body) = body {
        request = request.json(&body);
    }
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    Ok(request.send().await?.status().as_u16())
}

#[tokio::test]
async fn every_read_endpoint_keeps_sites_apart() -> anyhow::Result<()> {
    let stack = Stack::start(Options {
        resources: Some(resources(&["alpha"])?),
        ..Options::default()
    })
    .await?;
    let site_reads = |site: &str| -> Vec<(&'static str, String, Option<Value>)> {
        vec![
            ("GET", format!("/v1/stats?site_id={site}"), None),
            (
                "POST",
                "/v1/query".into(),
                Some(json!({"site_id": site, "metrics": ["visitors"]})),
            ),
            ("GET", format!("/v1/events/recent?site_id={site}"), None),
            ("GET", format!("/v1/experiments?site_id={site}"), None),
            (
                "GET",
                format!("/v1/experiments/x/summary?site_id={site}"),
                None,
            ),
            ("GET", format!("/v1/sessions?site_id={site}"), None),
            ("GET", format!("/v1/sessions/x?site_id={site}"), None),
            (
                "GET",
                format!("/v1/pipeline/dead-letters?site_id={site}"),
                None,
            ),
        ]
    };
    // A key reads its own site (200, or 404 for an experiment or session that does not
    // exist: past the key), never another's; without a valid key, nothing.
    for (method, path, body) in site_reads("alpha") {
        let status = |key| ask(&stack, method, &path, body.clone(), key);
        let own = status(Some(ALPHA_KEY)).await?;
        assert!(
            own == 200 || own == 404,
            "{method} {path} with alpha's key: {own}"
        );
        assert_eq!(
            status(Some(ADMIN_KEY)).await?,
            own,
            "{method} {path} with the admin key"
        );
        assert_eq!(
            status(Some(BETA_KEY)).await?,
            403,
            "{method} {path} with beta's key"
        );
        assert_eq!(status(None).await?, 401, "{method} {path} without a key");
        assert_eq!(
            status(Some("not-a-key-of-this-pipeline")).await?,
            401,
            "{method} {path}"
        );
    }
    // What describes or changes the whole pipeline: the admin key only.
    for (method, path, body) in [
        ("GET", "/v1/pipeline/health", None),
        ("GET", "/v1/pipeline/dead-letters", None),
        (
            "POST",
            "/v1/pipeline/dead-letters/replay",
            Some(json!({"sequences": [1]})),
        ),
    ] {
        let status = |key| ask(&stack, method, path, body.clone(), key);
        assert_eq!(
            status(Some(ADMIN_KEY)).await?,
            200,
            "{method} {path} with the admin key"
        );
        assert_eq!(
            status(Some(ALPHA_KEY)).await?,
            403,
            "{method} {path} with alpha's key"
        );
        assert_eq!(status(None).await?, 401, "{method} {path} without a key");
    }
    assert_no_key_in_logs(&stack)?;
    Ok(())
}
