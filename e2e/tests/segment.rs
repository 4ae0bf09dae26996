//! The Segment-compatible API with a real SDK nobody here wrote: Segment's official Python
//! library (`segment-analytics-python`, installed by the project's scripts) sends a mix of
//! calls with a site's ingest key as its write key and flushes; every call is then in
//! ClickHouse exactly once. Between the SDK and the collector a proxy loses the answer to
//! the first request (the collector stored it; the SDK sees a broken connection and sends
//! it again), so the SDK's retry is exercised too, and counted once.

use std::process::Command;
use std::time::Duration;

use tally_contracts::RuntimeConfig;
use tally_e2e::{DATABASE, Options, PIPELINE, Stack, pipeline_yaml};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const WRITE_KEY: &str = "backend-write-key-0123456789";

fn resources() -> anyhow::Result<RuntimeConfig> {
    let yaml = format!(
        "{}---
apiVersion: v1
kind: Secret
metadata: {{name: backend-keys}}
stringData: {{ingest: {WRITE_KEY}}}
---
apiVersion: tally.dev/v1alpha1
kind: AnalyticsSite
metadata: {{name: backend}}
spec:
  pipelineRef: {{name: {PIPELINE}}}
  siteId: backend
  apiKeys:
    - secretRef: {{name: backend-keys, key: ingest}}
      scopes: [ingest]
",
        pipeline_yaml(&Options::default(), 4222, 8123)
    );
    RuntimeConfig::parse("segment test", &yaml).map_err(|e| anyhow::anyhow!("{e}"))
}

/// A proxy to `backend` that forwards the first connection's request and then closes it
/// without passing the answer on; later connections go through untouched.
async fn answer_losing_proxy(backend: u16) -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut client, _)) = listener.accept().await {
            let Ok(mut upstream) = tokio::net::TcpStream::connect(("127.0.0.1", backend)).await
            else {
                continue;
            };
            if std::mem::take(&mut first) {
                tokio::spawn(async move {
                    let (mut answers, mut requests) = upstream.into_split();
                    let (mut buffer, mut answer) = (vec![0u8; 1 << 16], [0u8; 1]);
                    loop {
                        tokio::select! {
                            read = client.read(&mut buffer) => match read {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if requests.write_all(&buffer[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            },
                            // The collector answers: it took the request; the client never
                            // hears so. Dropping both ends closes them.
                            _ = answers.read(&mut answer) => break,
                        }
                    }
                });
            } else {
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
        }
    });
    Ok(port)
}

/// The SDK's calls: 12 tracks, 5 pages, 3 identifies, 2 screens, 1 group, 1 alias.
const SCRIPT: &str = r#"
import sys, logging
import segment.analytics as analytics

errors = []
analytics.write_key = sys.argv[1]
analytics.host = sys.argv[2]
analytics.max_retries = 5
analytics.on_error = lambda error, items: errors.append(str(error))
logging.basicConfig(level=logging.WARNING)

for i in range(12):
    analytics.track(user_id="user-%d" % (i % 4), event="Order Completed",
                    properties={"revenue": i, "shipping": {"method": "post"}})
for i in range(5):
    analytics.page(anonymous_id="anon-%d" % i, name="Pricing",
                   properties={"url": "https://shop.example.com/pricing", "path": "/pricing"})
for i in range(3):
    analytics.identify(user_id="user-%d" % i, traits={"plan": "pro"})
for i in range(2):
    analytics.screen(user_id="user-0", name="Home")
analytics.group(user_id="user-0", group_id="team-1", traits={"seats": 3})
analytics.alias(previous_id="anon-0", user_id="user-0")
analytics.flush()
analytics.shutdown()
if errors:
    print("SDK errors:", errors, file=sys.stderr)
    sys.exit(1)
"#;

#[tokio::test]
async fn segments_python_sdk_sends_every_call_once() -> anyhow::Result<()> {
    let stack = Stack::start(Options {
        resources: Some(resources()?),
        ..Options::default()
    })
    .await?;
    let proxy = answer_losing_proxy(stack.collector_port).await?;
    let pythonpath = tally_e2e::env_path("TALLY_SEGMENT_PYTHONPATH")?;
    let script = stack.dir.join("segment_sdk.py");
    std::fs::write(&script, SCRIPT)?;
    let host = format!("http://127.0.0.1:{proxy}/segment");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .env("PYTHONPATH", pythonpath)
            .arg(script)
            .args([WRITE_KEY, &host])
            .output()
    })
    .await??;
    assert!(
        out.status.success(),
        "the SDK failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    stack
        .wait_sql(
            &format!(
                "SELECT event_type, count() FROM {DATABASE}.events WHERE site_id = 'backend' \
                 GROUP BY event_type ORDER BY event_type FORMAT CSV"
            ),
            "\"Order Completed\",12\n\"alias\",1\n\"group\",1\n\"identify\",3\n\"page_view\",5\n\"screen_view\",2",
            Duration::from_secs(60),
        )
        .await?;
    // The mapping: ids, page fields, flattened properties.
    let row = stack
        .sql(&format!(
            "SELECT user_id, JSONExtractString(properties, 'shipping.method') FROM {DATABASE}.events \
             WHERE site_id = 'backend' AND event_type = 'Order Completed' ORDER BY timestamp LIMIT 1"
        ))
        .await?;
    assert_eq!(row, "user-0\tpost");
    let page = stack
        .sql(&format!(
            "SELECT path, url, visitor_id != '' FROM {DATABASE}.events \
             WHERE site_id = 'backend' AND event_type = 'page_view' LIMIT 1"
        ))
        .await?;
    assert_eq!(page, "/pricing\thttps://shop.example.com/pricing\t1");
    // The lost answer's request was stored on its first try and again on the SDK's retry:
    // the stream counted the retry as duplicates.
    let metrics = stack.get(&stack.collector_url("/metrics")).await.body;
    let duplicates = metrics
        .lines()
        .find(|l| l.starts_with("tally_collector_events_total{outcome=\"Duplicate\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(duplicates > 0, "the SDK's retry was not seen: {metrics}");

    // A wrong write key is refused, as Segment's API does (401: the SDK gives up).
    let refused = stack
        .http
        .post(stack.collector_url("/segment/v1/track"))
        .basic_auth("not-a-write-key", Some(""))
        .json(&serde_json::json!({"event": "x", "userId": "u"}))
        .send()
        .await?;
    assert_eq!(refused.status().as_u16(), 401);
    Ok(())
}
