//! Faults under load, on real servers: the processor killed with SIGKILL again and again,
//! ClickHouse down for 30 s, nats-server killed and restarted, a node of a three-node
//! JetStream cluster killed, and messages that can never be stored. Clients keep posting
//! throughout, retrying (with the same body, so the same event ids) whatever was not
//! answered 202. Each test then counts, after the fact and with SQL, that every event the
//! collector acknowledged is in the raw table and in every rollup exactly once.

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream;
use serde_json::{Value, json};
use tally_contracts::{naming, stream::dead_letter};
use tally_e2e::nats_cluster::NatsCluster;
use tally_e2e::{DATABASE, Options, PIPELINE, Stack, eventually, settle_and_count, today};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(120);

/// `n` page views with fresh event ids, as one JSON array: a third on `docs`, the rest on
/// `shop`, over seven paths and fifty users, all today.
fn batch(tag: &str, n: usize) -> String {
    let timestamp = format!("{}T13:00:00Z", today());
    let events: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "site_id": if i % 3 == 0 { "docs" } else { "shop" },
                "event_type": "page_view",
                "path": format!("/{tag}/{}", i % 7),
                "user_id": format!("u{}", i % 50),
                "timestamp": timestamp,
                "event_id": Uuid::new_v4(),
            })
        })
        .collect();
    Value::Array(events).to_string()
}

/// What a client posting through faults saw.
#[derive(Debug, Default)]
struct Posted {
    /// Events the collector acknowledged (202), each counted once however often it was sent.
    events: u64,
    requests: u64,
    /// Answers 503: "not (all) stored, send again".
    unavailable: u64,
    /// Requests that got no answer at all.
    no_answer: u64,
    /// The longest time between two 202 answers: how long the client could not store.
    longest_stall: Duration,
}

/// A client of the collector that posts each batch until it is acknowledged.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    url: String,
}

impl Client {
    fn of(stack: &Stack) -> Self {
        Self {
            http: reqwest::Client::new(),
            url: stack.collector_url("/v1/events"),
        }
    }

    /// Posts `body` (holding `n` valid events) until the collector answers 202. Any answer
    /// other than 202 or 503 fails the test.
    async fn post_until_accepted(
        &self,
        body: &str,
        n: usize,
        posted: &mut Posted,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            posted.requests += 1;
            let sent = self
                .http
                .post(&self.url)
                .header("content-type", "application/json")
                .body(body.to_owned())
                .timeout(Duration::from_secs(30))
                .send()
                .await;
            match sent {
                Ok(answer) if answer.status() == 202 => {
                    let answer: Value = answer.json().await?;
                    assert_eq!(answer["accepted"], n, "{answer}");
                    posted.events += n as u64;
                    return Ok(());
                }
                Ok(answer) if answer.status() == 503 => {
                    // A single event's 503 is `unavailable`; a batch's names the events that
                    // were not stored (`failed`). Either way: send it again.
                    let answer: Value = answer.json().await?;
                    assert!(
                        answer["error"] == "unavailable" || answer["failed"].as_u64() > Some(0),
                        "{answer}"
                    );
                    posted.unavailable += 1;
                }
                Ok(answer) => {
                    let status = answer.status();
                    bail!("unexpected answer {status}: {}", answer.text().await?);
                }
                Err(_) => posted.no_answer += 1,
            }
            if Instant::now() > deadline {
                bail!("a batch was not accepted within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Posts batches of `size` events one after another, `pause` apart, until `stop` is set
    /// (a batch being sent is still sent until accepted) or `max_batches` were accepted.
    async fn keep_posting(
        self,
        tag: &'static str,
        size: usize,
        pause: Duration,
        stop: Arc<AtomicBool>,
        max_batches: usize,
    ) -> anyhow::Result<Posted> {
        let mut posted = Posted::default();
        let mut last_accepted = Instant::now();
        for _ in 0..max_batches {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let body = batch(tag, size);
            self.post_until_accepted(&body, size, &mut posted).await?;
            posted.longest_stall = posted.longest_stall.max(last_accepted.elapsed());
            last_accepted = Instant::now();
            tokio::time::sleep(pause).await;
        }
        Ok(posted)
    }
}

/// Starts a client posting in the background; set the flag to stop it.
fn start_posting(
    stack: &Stack,
    tag: &'static str,
    size: usize,
    pause: Duration,
    max_batches: usize,
) -> (
    Arc<AtomicBool>,
    tokio::task::JoinHandle<anyhow::Result<Posted>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let task =
        tokio::spawn(Client::of(stack).keep_posting(tag, size, pause, stop.clone(), max_batches));
    (stop, task)
}

async fn stored(stack: &Stack) -> u64 {
    stack
        .sql_u64(&format!("SELECT count() FROM {DATABASE}.events"))
        .await
        .unwrap_or(0)
}

async fn wait_stored_at_least(stack: &Stack, n: u64) -> anyhow::Result<()> {
    eventually(&format!("{n} stored events"), WAIT, || async {
        (stored(stack).await >= n).then_some(())
    })
    .await
}

/// Events the processor found stored already and skipped (the look-up before the insert).
const SKIPPED: &str = "tally_processor_events_skipped_duplicate_total";
/// Events the processor found stored although JetStream delivered them for the first time.
const FORGOTTEN: &str = "tally_processor_events_stored_on_first_delivery_total";

/// A counter of the processor's `/metrics`.
async fn processor_metric(stack: &Stack, name: &str) -> anyhow::Result<u64> {
    let text = stack.processor_metrics().await?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .with_context(|| format!("{name} not in:\n{text}"))?
        .trim()
        .parse()
        .with_context(|| format!("{name} is not a number"))
}

/// Rewrites the stack's configuration (before the processor and collector read it).
fn edit_config(stack: &Stack, edit: impl FnOnce(&str) -> String) -> anyhow::Result<()> {
    let yaml = fs::read_to_string(&stack.config)?;
    let edited = edit(&yaml);
    assert_ne!(edited, yaml, "the configuration edit changed nothing");
    fs::write(&stack.config, edited)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_killed_repeatedly_mid_stream_leaves_exact_counts() -> anyhow::Result<()> {
    const TOTAL: usize = 200_000;
    const BATCH: usize = 1000;
    let began = Instant::now();
    let mut stack = Stack::start(Options {
        ack_wait: "2s",
        ..Options::default()
    })
    .await?;
    let (_, posting) = start_posting(&stack, "kill", BATCH, Duration::ZERO, TOTAL / BATCH);
    // SIGKILL at uneven intervals (0.3 to 1.3 s) while the events flow in, and on while the
    // processor catches up, so that kills land mid-fetch, mid-insert and mid-ack.
    let (mut kills, mut skipped) = (0u64, 0u64);
    loop {
        tokio::time::sleep(Duration::from_millis(300 + kills * 373 % 1000)).await;
        let done = posting.is_finished();
        if done && (kills >= 40 || (kills >= 10 && stored(&stack).await == TOTAL as u64)) {
            break;
        }
        // The counter starts at 0 in every processor: add up what each one skipped as stored
        // already (redelivered after an earlier kill), read just before its own kill. What it
        // skips between that read and the kill, or when the read fails, is not counted: the
        // sum is a lower bound.
        skipped += processor_metric(&stack, SKIPPED).await.unwrap_or(0);
        stack.processor.kill();
        kills += 1;
        stack.start_processor(&[]).await?;
    }
    let posted = posting.await??;
    assert_eq!(posted.events, TOTAL as u64);
    assert!(kills >= 10, "only {kills} kills");
    settle_and_count(&stack, TOTAL as u64, WAIT).await;
    skipped += processor_metric(&stack, SKIPPED).await?;
    // Exact counts through the kills rest on the look-up before the insert: the test must have
    // driven it, that is, redelivered events must have been found stored and skipped.
    assert!(
        skipped > 0,
        "{kills} kills, yet no processor skipped a redelivered event as stored"
    );
    eprintln!(
        "processor kills: {TOTAL} events, {kills} kills, at least {skipped} redelivered events \
         found stored and skipped, {posted:?}, test took {:?}",
        began.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clickhouse_outage_is_retried_without_loss() -> anyhow::Result<()> {
    const OUTAGE: Duration = Duration::from_secs(30);
    let began = Instant::now();
    let mut stack = Stack::start(Options::default()).await?;
    let (stop, posting) = start_posting(
        &stack,
        "clickhouse",
        250,
        Duration::from_millis(100),
        usize::MAX,
    );
    wait_stored_at_least(&stack, 1000).await?;

    stack.stop_clickhouse();
    let down = Instant::now();
    eventually("the processor to report not ready", WAIT, || async {
        (stack.processor_ready_status().await == 503).then_some(())
    })
    .await?;
    let noticed = down.elapsed();
    tokio::time::sleep(OUTAGE.saturating_sub(down.elapsed())).await;
    assert_eq!(
        stack.processor_ready_status().await,
        503,
        "not ready for as long as ClickHouse is down"
    );

    stack.restart_clickhouse().await?;
    let up = Instant::now();
    eventually("the processor to be ready again", WAIT, || async {
        (stack.processor_ready_status().await == 200).then_some(())
    })
    .await?;
    let ready_again = up.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await; // load goes on after the outage
    stop.store(true, Ordering::Relaxed);
    let posted = posting.await??;
    assert_eq!(
        (posted.unavailable, posted.no_answer),
        (0, 0),
        "the collector accepts throughout: JetStream holds the events"
    );
    stack
        .wait_sql(
            &format!("SELECT count() FROM {DATABASE}.events"),
            &posted.events.to_string(),
            WAIT,
        )
        .await?;
    let caught_up = up.elapsed();
    settle_and_count(&stack, posted.events, WAIT).await;
    assert!(processor_metric(&stack, "tally_processor_insert_failures_total").await? > 0);
    assert_eq!(
        processor_metric(&stack, "tally_processor_events_dead_lettered_total").await?,
        0,
        "an outage dead-letters nothing"
    );
    eprintln!(
        "ClickHouse outage of {OUTAGE:?}: readiness false after {noticed:?}, true again {ready_again:?} \
         after the restart, all {} events stored {caught_up:?} after it; {posted:?}; test took {:?}",
        posted.events,
        began.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_under_load_loses_no_acknowledged_event() -> anyhow::Result<()> {
    let began = Instant::now();
    let mut stack = Stack::start(Options::default()).await?;
    let (stop, posting) = start_posting(&stack, "nats", 500, Duration::from_millis(50), usize::MAX);
    wait_stored_at_least(&stack, 2000).await?;

    stack.stop_nats(); // SIGKILL
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack.restart_nats().await?;
    stack.wait_collector_ready(WAIT).await?;
    let collector_back = down.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut posted = posting.await??;
    assert!(
        posted.unavailable > 0,
        "posts during the outage are answered 503: {posted:?}"
    );
    assert_eq!(posted.no_answer, 0, "the collector answers throughout");

    // Crashes a few milliseconds after a batch is published: the processor has just been
    // handed it, and may have stored it, but the server dies before it recorded the delivery
    // and the acknowledgement. After the restart it delivers those events again as if for the
    // first time; they must be recognised as stored all the same.
    let client = Client::of(&stack);
    let (mut crashes, mut forgotten) = (0u64, 0u64);
    // Whether a crash makes the server forget is a matter of milliseconds: crash again (up
    // to six times) until it did.
    while crashes < 2 || (crashes < 6 && forgotten == 0) {
        client
            .post_until_accepted(&batch("crash", 1000), 1000, &mut posted)
            .await?;
        tokio::time::sleep(Duration::from_millis(crashes * 7 % 20)).await;
        stack.stop_nats();
        stack.restart_nats().await?;
        stack.wait_collector_ready(WAIT).await?;
        crashes += 1;
        // The processor has caught up (and is fetching again) before the next crash, and has
        // had the time to be handed what the server delivers again.
        wait_stored_at_least(&stack, posted.events).await?;
        let settled = Instant::now() + Duration::from_secs(4);
        loop {
            forgotten = processor_metric(&stack, FORGOTTEN).await?;
            if forgotten > 0 || Instant::now() > settled {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    settle_and_count(&stack, posted.events, WAIT).await;
    let skipped = processor_metric(&stack, SKIPPED).await?;
    let unexpected = processor_metric(&stack, FORGOTTEN).await?;
    assert!(
        unexpected > 0,
        "{crashes} crashes never made the server forget a delivery ({skipped} events skipped)"
    );
    eprintln!(
        "nats-server SIGKILL + restart: collector ready again {collector_back:?} after the kill; \
         {crashes} crashes right after a publish; {skipped} redelivered events found stored and \
         skipped, {unexpected} of them delivered as if for the first time; {posted:?}; \
         test took {:?}",
        began.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jetstream_cluster_node_killed_under_load_loses_no_acknowledged_event()
-> anyhow::Result<()> {
    let began = Instant::now();
    let mut stack = Stack::start_servers(Options::default()).await?;
    // This test's NATS is a three-node cluster, not the stack's single server.
    stack.stop_nats();
    let mut cluster = NatsCluster::start(&stack.dir.join("nats-cluster"), 3).await?;
    let single = format!("    url: nats://127.0.0.1:{}\n", stack.nats_port);
    let replicated = format!(
        "    url: {}\n    stream:\n      replicas: 3\n",
        cluster.url_list()
    );
    edit_config(&stack, |yaml| yaml.replace(&single, &replicated))?;
    // The processor connects to one of the listed nodes and creates the stream with 3
    // replicas.
    stack.start_processor(&[]).await?;
    let stream = naming::stream_name(PIPELINE);
    let leader_name = cluster.wait_stream_leader(0, &stream, None, WAIT).await?;
    let leader = cluster.index_of(&leader_name).context("unknown leader")?;
    let jsz = cluster.jsz(leader).await?;
    let replicas = jsz["account_details"][0]["stream_detail"]
        .as_array()
        .and_then(|streams| streams.iter().find(|s| s["name"] == stream.as_str()))
        .map(|s| s["cluster"]["replicas"].as_array().map_or(0, Vec::len) + 1);
    assert_eq!(replicas, Some(3), "{jsz}");

    // The collector reads the same comma-separated list.
    stack.start_collector().await?;
    let (stop, posting) = start_posting(&stack, "r3", 1000, Duration::ZERO, usize::MAX);
    wait_stored_at_least(&stack, 5000).await?;

    cluster.kill(leader);
    let killed = Instant::now();
    let survivor = (leader + 1) % 3;
    let new_leader = cluster
        .wait_stream_leader(survivor, &stream, Some(&leader_name), WAIT)
        .await?;
    let election = killed.elapsed();
    let at_kill = stored(&stack).await;
    // Load goes on with two nodes of three.
    wait_stored_at_least(&stack, at_kill + 10_000).await?;
    stop.store(true, Ordering::Relaxed);
    let posted = posting.await??;
    settle_and_count(&stack, posted.events, WAIT).await;
    let skipped = processor_metric(&stack, SKIPPED).await?;
    let unexpected = processor_metric(&stack, FORGOTTEN).await?;
    eprintln!(
        "R3 cluster, stream leader {leader_name} SIGKILLed: {new_leader} leads after {election:?}; \
         {skipped} redelivered events found stored and skipped, {unexpected} of them delivered \
         as if for the first time; {posted:?}; test took {:?}",
        began.elapsed()
    );
    Ok(())
}

/// One stored dead letter, as the test reads it back.
struct DeadLetter {
    subject: String,
    header: std::collections::HashMap<String, String>,
    payload: Vec<u8>,
}

async fn dead_letters(js: &jetstream::Context) -> anyhow::Result<Vec<DeadLetter>> {
    let stream = js
        .get_stream(naming::dead_letter_stream_name(PIPELINE))
        .await?;
    let count = stream.get_info().await?.state.messages;
    let mut letters = Vec::new();
    for sequence in 1..=count {
        let message = stream.get_raw_message(sequence).await?;
        let header = message
            .headers
            .iter()
            .map(|(name, values)| {
                let value = values.first().map(|v| v.as_str().to_owned());
                (name.to_string(), value.unwrap_or_default())
            })
            .collect();
        letters.push(DeadLetter {
            subject: message.subject.to_string(),
            header,
            payload: message.payload.to_vec(),
        });
    }
    Ok(letters)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_after_max_deliver_and_nothing_blocks()
-> anyhow::Result<()> {
    const MAX_DELIVER: u64 = 3;
    let began = Instant::now();
    let mut stack = Stack::start_servers(Options::default()).await?;
    edit_config(&stack, |yaml| {
        yaml.replace(
            "  processor:\n",
            &format!("  processor:\n    maxDeliver: {MAX_DELIVER}\n"),
        )
    })?;
    stack.start_processor(&[]).await?;
    stack.start_collector().await?;
    // A value ClickHouse refuses: events with this path violate a constraint of the table.
    stack
        .sql(&format!(
            "ALTER TABLE {DATABASE}.events ADD CONSTRAINT no_poison CHECK path != '/poison'"
        ))
        .await?;

    // Everything below reaches the processor in one batch.
    stack.processor.stop();
    let mut good: Vec<Value> = serde_json::from_str(&batch("good", 1000))?;
    let mut refused = Vec::new();
    for i in [100, 500, 900] {
        good[i]["path"] = json!("/poison");
        refused.push(good[i]["event_id"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(stack.post(Value::Array(good).to_string()).await?.0, 202);
    // Valid events of 120 different months: ClickHouse refuses them in one insert (more than
    // 100 partitions for one block), but every one of them can be stored.
    let months: Vec<Value> = (0..120)
        .map(|i| {
            json!({
                "site_id": "shop", "event_type": "page_view", "path": "/archive",
                "timestamp": format!("{}-{:02}-15T12:00:00Z", 2001 + i / 12, 1 + i % 12),
            })
        })
        .collect();
    let (status, answer) = stack.post(Value::Array(months).to_string()).await?;
    assert_eq!(status, 202, "{answer}");
    // Hand-made messages on an event subject that no table can hold.
    let nats = stack.nats_client().await?;
    let js = jetstream::new(nats);
    let out_of_range = json!({
        "event_id": Uuid::new_v4(), "site_id": "docs", "event_type": "page_view",
        "path": "/far", "timestamp_ms": 9_999_999_999_999i64, "received_at_ms": 1_780_000_000_000i64,
        "properties": {},
    });
    for (site, payload) in [
        ("shop", "this is not JSON".to_owned()),
        (
            "docs",
            json!({"site_id": "docs", "hello": "world"}).to_string(),
        ),
        ("docs", out_of_range.to_string()),
    ] {
        js.publish(naming::event_subject(PIPELINE, site), payload.into())
            .await?
            .await?;
    }
    stack.start_processor(&[]).await?;
    // More events after the poison: they flow while the poison is redelivered.
    assert_eq!(stack.post(batch("after", 1000)).await?.0, 202);

    let expected = 1000 - 3 + 120 + 1000;
    settle_and_count(&stack, expected, WAIT).await;
    assert_eq!(
        stack
            .sql_u64(&format!(
                "SELECT count() FROM {DATABASE}.events WHERE path = '/archive'"
            ))
            .await?,
        120
    );
    eventually("six dead letters", WAIT, || async {
        let letters = dead_letters(&js).await.ok()?;
        (letters.len() >= 6).then_some(())
    })
    .await?;
    // Nothing is left pending: every message was acknowledged, stored or dead-lettered.
    let events_stream = js.get_stream(naming::stream_name(PIPELINE)).await?;
    eventually("the consumer to have nothing pending", WAIT, || async {
        let info = events_stream
            .consumer_info(naming::CONSUMER_NAME)
            .await
            .ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let letters = dead_letters(&js).await?;
    assert_eq!(letters.len(), 6, "each poison message dead-lettered once");
    let mut kinds: Vec<(&str, &str)> = Vec::new();
    for letter in &letters {
        let h = |name: &str| letter.header.get(name).map_or("", String::as_str);
        assert_eq!(h(dead_letter::DELIVERIES), MAX_DELIVER.to_string());
        assert_eq!(
            h(dead_letter::ORIGINAL_STREAM),
            naming::stream_name(PIPELINE)
        );
        assert!(h(dead_letter::ORIGINAL_SEQUENCE).parse::<u64>().is_ok());
        assert!(!h(dead_letter::REASON).is_empty());
        let site = letter.subject.rsplit('.').next().unwrap_or_default();
        assert_eq!(
            letter.subject,
            naming::dead_letter_subject(PIPELINE, Some(site))
        );
        kinds.push((h(dead_letter::KIND), site));
        match h(dead_letter::KIND) {
            dead_letter::REJECTED => {
                assert!(
                    h(dead_letter::REASON).contains("VIOLATED_CONSTRAINT"),
                    "{}",
                    h(dead_letter::REASON)
                );
                assert!(refused.iter().any(|id| id == h(dead_letter::EVENT_ID)));
                let original = h(dead_letter::ORIGINAL_SUBJECT);
                assert_eq!(original, naming::event_subject(PIPELINE, site));
                let envelope: Value = serde_json::from_slice(&letter.payload)?;
                assert_eq!(envelope["path"], "/poison");
            }
            dead_letter::NOT_AN_EVENT => {
                assert!(h(dead_letter::REASON).contains("not a Tally event envelope"));
                assert!(h(dead_letter::EVENT_ID).is_empty());
            }
            dead_letter::INVALID_EVENT => {
                assert!(h(dead_letter::REASON).contains("timestamp_ms"));
                assert_eq!(letter.payload, out_of_range.to_string().as_bytes());
            }
            other => panic!("unexpected kind {other:?}"),
        }
    }
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        [
            (dead_letter::INVALID_EVENT, "docs"),
            (dead_letter::NOT_AN_EVENT, naming::UNKNOWN_SITE),
            (dead_letter::NOT_AN_EVENT, naming::UNKNOWN_SITE),
            (dead_letter::REJECTED, "docs"),
            (dead_letter::REJECTED, "shop"),
            (dead_letter::REJECTED, "shop"),
        ]
    );
    assert_eq!(
        processor_metric(&stack, "tally_processor_events_dead_lettered_total").await?,
        6
    );
    assert_eq!(
        processor_metric(&stack, "tally_processor_events_poison_total").await?,
        6 * MAX_DELIVER,
        "each poison message was tried maxDeliver times"
    );
    // The events stream never captured a dead letter.
    let events_info = events_stream.get_info().await?;
    assert_eq!(events_info.state.messages, 1000 + 120 + 3 + 1000);
    eprintln!("poison: test took {:?}", began.elapsed());
    Ok(())
}
