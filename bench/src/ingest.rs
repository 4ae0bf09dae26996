//! Collector ingestion: the highest rate each request shape sustains (closed loop), then
//! latencies at a fixed open-loop rate of half that; and a 10× overload.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::Request;
use crate::generate::Gen;
use crate::load::{self, LoadResult, Pace, ms};
use crate::memory::{CpuMeter, CpuUse, Sampler, peak_mib, rss_mib};

/// Request bodies of one shape: `events` per POST (1 = a single JSON object).
pub fn requests(host: &str, sites: &[String], events: usize, variants: usize) -> Arc<Vec<Request>> {
    let mut generator = Gen::new(events as u64);
    let requests = (0..variants)
        .map(|_| {
            let body = if events == 1 {
                generator.event_json(sites)
            } else {
                let items: Vec<String> = (0..events).map(|_| generator.event_json(sites)).collect();
                format!("[{}]", items.join(","))
            };
            Request::post(
                host,
                "/v1/events",
                "application/json",
                body.as_bytes(),
                events as u64,
            )
        })
        .collect();
    Arc::new(requests)
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Of the 2xx answers.
    pub fn of(result: &LoadResult) -> Self {
        Self::of_histogram(&result.latency_ok)
    }

    /// Of a histogram in microseconds.
    pub fn of_histogram(h: &Histogram<u64>) -> Self {
        Self {
            p50_ms: ms(h, 0.5),
            p99_ms: ms(h, 0.99),
            p999_ms: ms(h, 0.999),
            max_ms: ms(h, 1.0),
        }
    }
}

/// One request shape's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Shape {
    pub name: String,
    pub events_per_request: usize,
    pub connections: usize,
    /// Closed loop.
    pub max_requests_per_second: f64,
    pub max_events_per_second: f64,
    pub latency_at_max: Latency,
    pub non_2xx_at_max: u64,
    pub errors_at_max: u64,
    /// Cores used during the closed-loop run, per process.
    pub cpu_at_max: Vec<CpuUse>,
    /// Open loop at half the maximum.
    pub half_load_requests_per_second: f64,
    pub half_load_achieved_per_second: f64,
    pub latency_at_half_load: Latency,
    pub non_2xx_at_half_load: u64,
    pub overdue_at_half_load: u64,
    /// `max_events_per_second` / the JetStream baseline.
    pub ratio_to_jetstream: f64,
    /// Single events: JetStream's own publish-to-acknowledgement latency at the same rate
    /// and concurrency (`baseline::jetstream_latency`), the floor under the collector's.
    pub jetstream_latency_at_half_load: Option<Latency>,
    /// Single events: the collector's `GET /healthz` at the same rate and concurrency — the
    /// HTTP stack and the scheduler without parsing or publishing.
    pub http_latency_at_half_load: Option<Latency>,
}

pub async fn shape(
    addr: SocketAddr,
    name: &str,
    requests: Arc<Vec<Request>>,
    connections: usize,
    duration: Duration,
    jetstream_per_second: f64,
    processes: Vec<(String, u32)>,
) -> Shape {
    let timeout = Duration::from_secs(30);
    let events = requests[0].events as usize;
    eprintln!("  {name}: closed loop, {connections} connections, {duration:?}");
    let meter = CpuMeter::start(processes);
    let max = load::run(
        addr,
        requests.clone(),
        connections,
        Pace::Closed,
        duration,
        timeout,
    )
    .await;
    let cpu_at_max = meter.finish();
    let max_rps = max.ok_per_second();
    let half = (max_rps / 2.0).max(1.0);
    eprintln!(
        "  {name}: {max_rps:.0} req/s, {:.0} events/s; open loop at {half:.0} req/s",
        max.events_per_second()
    );
    let open = load::run(
        addr,
        requests,
        connections,
        Pace::Open { rate: half },
        duration,
        timeout,
    )
    .await;
    Shape {
        name: name.to_owned(),
        events_per_request: events,
        connections,
        max_requests_per_second: max_rps,
        max_events_per_second: max.events_per_second(),
        latency_at_max: Latency::of(&max),
        non_2xx_at_max: max.answered() - max.ok(),
        errors_at_max: max.errors,
        cpu_at_max,
        half_load_requests_per_second: half,
        half_load_achieved_per_second: open.ok_per_second(),
        latency_at_half_load: Latency::of(&open),
        non_2xx_at_half_load: open.answered() - open.ok(),
        overdue_at_half_load: open.overdue,
        ratio_to_jetstream: if jetstream_per_second > 0.0 {
            max.events_per_second() / jetstream_per_second
        } else {
            f64::NAN
        },
        jetstream_latency_at_half_load: None,
        http_latency_at_half_load: None,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Overload {
    pub events_per_request: usize,
    pub connections: usize,
    pub offered_requests_per_second: f64,
    pub offered_factor: f64,
    pub seconds: f64,
    pub answered_202: u64,
    pub answered_503: u64,
    pub answered_429: u64,
    pub answered_other: u64,
    /// No answer within the client's 10 s timeout, or a connection error.
    pub no_answer: u64,
    pub goodput_events_per_second: f64,
    pub latency_202: Latency,
    pub latency_all: Latency,
    pub rss_before_mib: Option<f64>,
    pub rss_peak_mib: Option<f64>,
    /// Peak RSS in the middle third of the overload, and in the last third: memory is
    /// bounded when it has stopped growing (the first third is the warm-up, as connections
    /// open and their buffers grow).
    pub rss_peak_middle_third_mib: Option<f64>,
    pub rss_peak_last_third_mib: Option<f64>,
    pub rss_after_mib: Option<f64>,
    pub collector_vm_hwm_mib: Option<f64>,
    pub sheds_load: bool,
    pub cpu: Vec<CpuUse>,
    /// (seconds, collector RSS MiB), one sample per second.
    pub rss_timeline_mib: Vec<(f64, f64)>,
}

/// How hard the overload pushes.
pub struct OverloadPlan {
    pub connections: usize,
    /// The measured maximum of the request shape, requests per second.
    pub max_rps: f64,
    pub factor: f64,
    pub duration: Duration,
}

/// Offers `factor` × `max_rps` of `requests` over `connections` for `duration`, following
/// the collector's resident memory.
pub async fn overload(
    addr: SocketAddr,
    requests: Arc<Vec<Request>>,
    plan: OverloadPlan,
    collector_pid: Option<u32>,
    processes: Vec<(String, u32)>,
) -> Overload {
    let OverloadPlan {
        connections,
        max_rps,
        factor,
        duration,
    } = plan;
    let rate = (max_rps * factor).max(1.0);
    let rss_before = collector_pid.and_then(rss_mib);
    let sampler = collector_pid.map(Sampler::start);
    eprintln!(
        "  overload: {rate:.0} req/s offered ({factor}× {max_rps:.0}) over {connections} connections for {duration:?}"
    );
    let meter = CpuMeter::start(processes);
    let result = load::run(
        addr,
        requests.clone(),
        connections,
        Pace::Open { rate },
        duration,
        Duration::from_secs(10),
    )
    .await;
    let cpu = meter.finish();
    let samples = match sampler {
        Some(s) => s.finish().await,
        None => Vec::new(),
    };
    let peak = |from: f64, to: f64| {
        samples
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, m)| *m)
            .fold(None, |a: Option<f64>, m| Some(a.map_or(m, |a| a.max(m))))
    };
    let secs = result.elapsed.as_secs_f64();
    // Give the collector a moment to finish what it holds, then look again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let shed = result.status(503) + result.status(429);
    Overload {
        events_per_request: requests[0].events as usize,
        connections,
        offered_requests_per_second: rate,
        offered_factor: factor,
        seconds: secs,
        answered_202: result.status(202),
        answered_503: result.status(503),
        answered_429: result.status(429),
        answered_other: result.answered() - result.status(202) - shed,
        no_answer: result.errors,
        goodput_events_per_second: result.events_per_second(),
        latency_202: Latency::of(&result),
        latency_all: Latency {
            p50_ms: ms(&result.latency, 0.5),
            p99_ms: ms(&result.latency, 0.99),
            p999_ms: ms(&result.latency, 0.999),
            max_ms: ms(&result.latency, 1.0),
        },
        rss_before_mib: rss_before,
        rss_peak_mib: peak(0.0, f64::MAX),
        rss_peak_middle_third_mib: peak(secs / 3.0, secs * 2.0 / 3.0),
        rss_peak_last_third_mib: peak(secs * 2.0 / 3.0, f64::MAX),
        rss_after_mib: collector_pid.and_then(rss_mib),
        collector_vm_hwm_mib: collector_pid.and_then(peak_mib),
        sheds_load: shed > 0,
        cpu,
        rss_timeline_mib: samples
            .iter()
            .step_by(10)
            .map(|(t, m)| ((t * 10.0).round() / 10.0, m.round()))
            .collect(),
    }
}
