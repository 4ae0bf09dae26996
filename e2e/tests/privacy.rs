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

/// The test pipeline behind a trusted proxy (this machine), with a `hashed` site (hash
/// visitor ids) and a `cookies` site (cookie visitor ids).
fn identity_resources() -> anyhow::Result<RuntimeConfig> {
    let options = Options {
        collector_spec: vec!["trustedProxies: [127.0.0.1/32]".into()],
        ..Options::default()
    };
    let site = |name: &str, mode: &str| {
        format!(
            "---
apiVersion: tally.dev/v1alpha1
kind: AnalyticsSite
metadata:
  name: {name}
spec:
  pipelineRef:
    name: {PIPELINE}
  siteId: {name}
  privacy:
    visitorId: {mode}
"
        )
    };
    let yaml = format!(
        "{}{}{}",
        pipeline_yaml(&options, 4222, 8123),
        site("hashed", "hash"),
        site("cookies", "cookie")
    );
    RuntimeConfig::parse("identity test", &yaml).map_err(|e| anyhow::anyhow!("{e}"))
}

const CLIENT_IP: &str = "203.0.113.77";
const AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0";

/// The visitor id a collector at `url` gives a page view of `hashed` from `ip`.
async fn hashed_id(http: &reqwest::Client, url: &str, ip: &str) -> anyhow::Result<String> {
    let body = json!({"site_id": "hashed", "event_type": "page_view", "path": "/"});
    tally_e2e::eventually("a hash visitor id (the salt is ready)", WAIT, || async {
        let answer: serde_json::Value = http
            .post(url)
            .header("x-forwarded-for", ip)
            .header("user-agent", AGENT)
            .json(&body)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        answer["results"][0]["visitor_id"]
            .as_str()
            .map(str::to_owned)
    })
    .await
}

#[tokio::test]
async fn hash_ids_are_shared_by_collectors_and_change_with_the_day() -> anyhow::Result<()> {
    let resources = identity_resources()?;
    let mut stack = Stack::start(Options {
        resources: Some(resources.clone()),
        ..Options::default()
    })
    .await?;
    let url = stack.collector_url("/v1/events");
    let first = hashed_id(&stack.http, &url, CLIENT_IP).await?;
    assert_eq!(first.len(), 32);
    assert_ne!(first, hashed_id(&stack.http, &url, "203.0.113.78").await?);

    // A second collector replica on the same configuration gives the same id...
    let port = tally_e2e::free_port();
    let mut replica = tally_e2e::Process::spawn(
        "collector-2",
        std::process::Command::new(Stack::binary("tally-collector")?)
            .envs(stack.env.clone())
            .args(["--config", stack.config.to_str().unwrap()])
            .args(["--listen", &format!("127.0.0.1:{port}")]),
        stack.dir.join("collector-2.log"),
    )?;
    let replica_url = format!("http://127.0.0.1:{port}/v1/events");
    assert_eq!(
        hashed_id(&stack.http, &replica_url, CLIENT_IP).await?,
        first
    );
    replica.stop();
    // ...and so does the collector after a restart.
    stack.collector.stop();
    stack.start_collector().await?;
    assert_eq!(hashed_id(&stack.http, &url, CLIENT_IP).await?, first);

    // The id is the hash of the bucket's salt of today; tomorrow's salt gives another, and
    // taking it destroys today's.
    let nats = stack.nats_client().await?;
    let js = async_nats::jetstream::new(nats);
    let store = tally_collector::salt::bucket(&js, &resources).await?;
    let today = time::OffsetDateTime::now_utc().date();
    let ip: std::net::IpAddr = CLIENT_IP.parse()?;
    let salt = tally_collector::salt::salt_of(&store, today).await?;
    assert_eq!(
        tally_collector::hashed_visitor_id(&salt, "hashed", ip, AGENT),
        first
    );
    let tomorrow = today.next_day().unwrap();
    let next = tally_collector::salt::salt_of(&store, tomorrow).await?;
    assert_ne!(
        tally_collector::hashed_visitor_id(&next, "hashed", ip, AGENT),
        first
    );
    assert!(
        store.get(format!("day-{today}")).await?.is_none(),
        "today's salt is destroyed"
    );

    // The cookie site sets its cookie once, and an id derived from it.
    let body = json!({"site_id": "cookies", "event_type": "page_view", "path": "/"});
    let response = stack.http.post(&url).json(&body).send().await?;
    let cookie = response.headers()["set-cookie"].to_str()?.to_owned();
    let answer: serde_json::Value = response.json().await?;
    let cookie_id = answer["results"][0]["visitor_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let response = stack
        .http
        .post(&url)
        .header("cookie", &cookie)
        .json(&body)
        .send()
        .await?;
    assert!(response.headers().get("set-cookie").is_none());
    let answer: serde_json::Value = response.json().await?;
    assert_eq!(answer["results"][0]["visitor_id"], cookie_id.as_str());

    // In ClickHouse: the ids as answered, and the address nowhere — nor in the stream's
    // files or any log.
    stack
        .wait_sql(
            &format!(
                "SELECT uniqExactIf(visitor_id, site_id = 'hashed' AND visitor_id = '{first}') > 0, \
                 countIf(site_id = 'cookies' AND visitor_id = '{cookie_id}') FROM {DATABASE}.events"
            ),
            "1\t2",
            WAIT,
        )
        .await?;
    let rows = stack
        .sql(&format!("SELECT * FROM {DATABASE}.events FORMAT TSV"))
        .await?;
    assert!(!rows.contains(CLIENT_IP) && !rows.contains("203.0.113.78"));
    for file in files_under(&stack.dir) {
        let bytes = std::fs::read(&file)?;
        let found = bytes
            .windows(CLIENT_IP.len())
            .any(|w| w == CLIENT_IP.as_bytes());
        assert!(!found, "{} holds the client's address", file.display());
    }
    Ok(())
}

/// Every file under `dir`: the logs, NATS's store, ClickHouse's data.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}
