//! End to end: how many events per second go from POST to the rollups, and how long one
//! event takes from its POST to being visible in a rollup.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::client::{Conn, Request};
use crate::load::{self, Pace, histogram, ms};
use crate::target::{PROBE_SITE, Target};

#[derive(Debug, Clone, Serialize)]
pub struct Capacity {
    pub connections: usize,
    pub events_per_request: usize,
    pub post_seconds: f64,
    pub events_accepted: u64,
    /// From the first POST until the last accepted event was counted in `site_daily`.
    pub seconds_until_visible: f64,
    pub sustained_events_per_second: f64,
    /// Accepted by the collector while posting (the processor may lag behind it).
    pub ingest_events_per_second: f64,
    /// Cores used from the first POST until all was visible, per process.
    pub cpu: Vec<crate::memory::CpuUse>,
    /// Where the processor's time went meanwhile (from its `tally_processor_stage_seconds`).
    pub processor_stages: Option<ProcessorStages>,
}

/// The processor's batches during a phase, and their mean time in each stage of its loop.
/// The stages overlap: the next fetch runs during the write (lookup + insert), the acks
/// during the next write.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessorStages {
    pub batches: u64,
    pub rows_per_batch: f64,
    /// (stage, mean ms per batch)
    pub mean_ms: Vec<(String, f64)>,
}

/// The processor's counters and stage histograms: (name with labels, value).
fn processor_counters(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn processor_stages(before: &str, after: &str) -> ProcessorStages {
    let (before, after) = (processor_counters(before), processor_counters(after));
    let delta = |name: &str| after.get(name).unwrap_or(&0.0) - before.get(name).unwrap_or(&0.0);
    let batches = delta("tally_processor_batches_total");
    let mean_ms = ["fetch", "lookup", "insert", "ack"]
        .into_iter()
        .map(|stage| {
            let sum = delta(&format!(
                "tally_processor_stage_seconds_sum{{stage=\"{stage}\"}}"
            ));
            let count = delta(&format!(
                "tally_processor_stage_seconds_count{{stage=\"{stage}\"}}"
            ));
            (
                stage.to_owned(),
                if count > 0.0 {
                    sum * 1000.0 / count
                } else {
                    0.0
                },
            )
        })
        .collect();
    ProcessorStages {
        batches: batches as u64,
        rows_per_batch: if batches > 0.0 {
            (delta("tally_processor_events_written_total")
                + delta("tally_processor_events_skipped_duplicate_total"))
                / batches
        } else {
            0.0
        },
        mean_ms,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Lag {
    pub background_events_per_second: f64,
    pub background_achieved_events_per_second: f64,
    pub probes_sent: usize,
    pub probes_seen: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub poll_interval_ms: u64,
    pub cpu: Vec<crate::memory::CpuUse>,
}

async fn rollup_total(target: &Target) -> anyhow::Result<u64> {
    target
        .sql_u64(&format!(
            "SELECT sum(events) FROM `{}`.site_daily",
            target.database()
        ))
        .await
}

/// Posts `requests` as fast as they are answered for `duration`, then waits until the
/// rollups count every accepted event.
pub async fn capacity(
    target: &Target,
    requests: Arc<Vec<Request>>,
    connections: usize,
    duration: Duration,
    processes: Vec<(String, u32)>,
) -> anyhow::Result<Capacity> {
    let before = rollup_total(target).await?;
    let metrics_before = target.processor_metrics().await;
    let meter = crate::memory::CpuMeter::start(processes);
    let start = Instant::now();
    let result = load::run(
        target.collector,
        requests.clone(),
        connections,
        Pace::Closed,
        duration,
        Duration::from_secs(30),
    )
    .await;
    let posted = start.elapsed();
    let accepted = result.events_ok;
    eprintln!(
        "  posted {accepted} events in {:.1} s ({:.0}/s); waiting for the rollups",
        posted.as_secs_f64(),
        accepted as f64 / posted.as_secs_f64()
    );
    let deadline = Instant::now() + (duration * 20).max(Duration::from_secs(120));
    let visible = loop {
        let total = rollup_total(target).await.unwrap_or(before);
        if total >= before + accepted {
            break start.elapsed();
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {accepted} events reached the rollups within {:?}",
                total - before,
                deadline - start
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let cpu = meter.finish();
    let metrics_after = target.processor_metrics().await;
    Ok(Capacity {
        connections,
        events_per_request: requests[0].events as usize,
        post_seconds: posted.as_secs_f64(),
        events_accepted: accepted,
        seconds_until_visible: visible.as_secs_f64(),
        sustained_events_per_second: accepted as f64 / visible.as_secs_f64(),
        ingest_events_per_second: accepted as f64 / posted.as_secs_f64(),
        cpu,
        processor_stages: metrics_before
            .zip(metrics_after)
            .map(|(before, after)| processor_stages(&before, &after)),
    })
}

/// Runs `requests` at `events_per_second` (open loop) for `duration` while a probe event is
/// posted every 100 ms and the rollup `path_daily` is polled for it.
pub async fn lag(
    target: &Target,
    requests: Arc<Vec<Request>>,
    connections: usize,
    events_per_second: f64,
    duration: Duration,
    processes: Vec<(String, u32)>,
) -> anyhow::Result<Lag> {
    let meter = crate::memory::CpuMeter::start(processes);
    const POLL: Duration = Duration::from_millis(25);
    let run = format!(
        "{:x}",
        std::process::id() ^ (crate::generate::now_ms() as u32)
    );
    let per_request = requests[0].events as f64;
    let background = load::run(
        target.collector,
        requests,
        connections,
        Pace::Open {
            rate: (events_per_second / per_request).max(0.5),
        },
        duration,
        Duration::from_secs(30),
    );

    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let probes = {
        let sent = sent.clone();
        let host = target.host.clone();
        let addr = target.collector;
        let run = run.clone();
        async move {
            let mut conn = Conn::new(addr, Duration::from_secs(10));
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let end = Instant::now() + duration;
            let mut n = 0u32;
            while Instant::now() < end {
                tick.tick().await;
                let path = format!("/lag/{run}/{n}");
                n += 1;
                let body = format!(
                    r#"{{"site_id":"{PROBE_SITE}","event_type":"page_view","path":"{path}","visitor_id":"probe"}}"#
                );
                let request =
                    Request::post(&host, "/v1/events", "application/json", body.as_bytes(), 1);
                let at = Instant::now();
                if conn
                    .send(&request.bytes)
                    .await
                    .is_ok_and(|a| a.status == 202)
                {
                    sent.lock().await.insert(path, at);
                }
            }
        }
    };

    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let poll_sql = format!(
        "SELECT path FROM `{}`.path_daily WHERE site_id = '{PROBE_SITE}' AND path LIKE '/lag/{run}/%' GROUP BY path",
        target.database()
    );
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let seen = seen.clone();
        let done = done.clone();
        let poll_sql = poll_sql.clone();
        async move {
            // Bounded by the caller's deadline; stops when told.
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(text) = target.sql(&poll_sql).await {
                    let now = Instant::now();
                    let mut seen = seen.lock().await;
                    for path in text.lines() {
                        seen.entry(path.to_owned()).or_insert(now);
                    }
                }
                tokio::time::sleep(POLL).await;
            }
        }
    };
    let work = async {
        let (background, ()) = tokio::join!(background, probes);
        // Let the last probes arrive (bounded).
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let expected = sent.lock().await.len();
            if seen.lock().await.len() >= expected {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        background
    };
    let (background, ()) = tokio::join!(work, poller);
    let cpu = meter.finish();

    let sent = sent.lock().await;
    let seen = seen.lock().await;
    let mut lags = histogram();
    for (path, at) in sent.iter() {
        if let Some(visible) = seen.get(path) {
            lags.saturating_record(visible.saturating_duration_since(*at).as_micros().max(1) as u64);
        }
    }
    Ok(Lag {
        background_events_per_second: events_per_second,
        background_achieved_events_per_second: background.events_per_second(),
        probes_sent: sent.len(),
        probes_seen: lags.len() as usize,
        p50_ms: ms(&lags, 0.5),
        p99_ms: ms(&lags, 0.99),
        max_ms: ms(&lags, 1.0),
        poll_interval_ms: POLL.as_millis() as u64,
        cpu,
    })
}
