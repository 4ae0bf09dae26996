//! Ingest beside reads: does reading raise the collector's latency? Single-event POSTs go
//! to the collector at one fixed open-loop rate through four legs of equal length: alone,
//! while `/v1/stats` reads go to the query service at a fixed rate, while they go as fast
//! as their connections allow, and alone again. The two legs alone bracket the others, so
//! a drift of the machine during the phase shows as a difference between them; each leg
//! with reads is compared with the mean of the two.
//!
//! The reads run on a thread and runtime of their own, so that the load generator's own
//! work for them does not delay the ingest requests it times.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::client::Request;
use crate::generate::Gen;
use crate::ingest::Latency;
use crate::load::{self, LoadResult, Pace};
use crate::memory::{CpuMeter, CpuUse};

/// What the phase runs.
pub struct Plan {
    /// Single-event POSTs per second, in every leg.
    pub ingest_rate: f64,
    pub ingest_connections: usize,
    /// `/v1/stats` requests per second in the paced leg.
    pub read_rate: f64,
    pub read_connections: usize,
    /// Length of each leg.
    pub duration: Duration,
}

/// What runs beside the ingest load in a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reads {
    None,
    /// At [`Plan::read_rate`].
    Paced,
    /// As fast as [`Plan::read_connections`] go.
    Unpaced,
}

/// One leg: the collector's latency, and what the reads did meanwhile.
#[derive(Debug, Clone, Serialize)]
pub struct Leg {
    pub name: String,
    pub reads: Reads,
    pub ingest_achieved_per_second: f64,
    pub ingest_latency: Latency,
    pub ingest_non_2xx: u64,
    /// Late sends of the open loop (see load.rs): a high count means the generator, not
    /// the collector, fell behind.
    pub ingest_overdue: u64,
    pub reads_per_second: f64,
    pub read_latency: Option<Latency>,
    pub read_non_2xx: u64,
    /// The collector's p99 over the mean p99 of the two legs alone.
    pub p99_ratio_to_alone: f64,
    pub cpu: Vec<CpuUse>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Isolation {
    pub ingest_rate: f64,
    pub ingest_connections: usize,
    pub read_connections: usize,
    pub seconds_per_leg: f64,
    pub legs: Vec<Leg>,
}

/// `/v1/stats` of random sites and days of the read history.
pub fn stats_requests(host: &str, sites: &[String], days: u32) -> Arc<Vec<Request>> {
    let mut generator = Gen::new(7);
    let today = time::OffsetDateTime::now_utc().date();
    let requests = (0..256)
        .map(|_| {
            let site = &sites[generator.below(sites.len() as u64) as usize];
            let day = today - time::Duration::days(generator.below(u64::from(days)) as i64);
            Request::get(host, &format!("/v1/stats?site_id={site}&date={day}"))
        })
        .collect();
    Arc::new(requests)
}

/// The read load of one leg, on its own thread and runtime.
fn spawn_reads(
    addr: SocketAddr,
    requests: Arc<Vec<Request>>,
    connections: usize,
    pace: Pace,
    duration: Duration,
) -> std::thread::JoinHandle<LoadResult> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("starting the readers' runtime")
            .block_on(load::run(
                addr,
                requests,
                connections,
                pace,
                duration,
                Duration::from_secs(30),
            ))
    })
}

pub async fn run(
    collector: SocketAddr,
    ingest: Arc<Vec<Request>>,
    stats: SocketAddr,
    reads: Arc<Vec<Request>>,
    plan: &Plan,
    processes: impl Fn() -> Vec<(String, u32)>,
) -> Isolation {
    let legs = [
        ("alone", Reads::None),
        ("reads at a fixed rate", Reads::Paced),
        ("reads as fast as they go", Reads::Unpaced),
        ("alone again", Reads::None),
    ];
    let mut out = Vec::new();
    for (name, reads_beside) in legs {
        eprintln!("  {name}");
        let meter = CpuMeter::start(processes());
        let pace = match reads_beside {
            Reads::None => None,
            Reads::Paced => Some(Pace::Open {
                rate: plan.read_rate,
            }),
            Reads::Unpaced => Some(Pace::Closed),
        };
        let readers = pace.map(|pace| {
            spawn_reads(
                stats,
                reads.clone(),
                plan.read_connections,
                pace,
                plan.duration,
            )
        });
        let ingested = load::run(
            collector,
            ingest.clone(),
            plan.ingest_connections,
            Pace::Open {
                rate: plan.ingest_rate,
            },
            plan.duration,
            Duration::from_secs(30),
        )
        .await;
        let read = readers.and_then(|handle| handle.join().ok());
        out.push(Leg {
            name: name.to_owned(),
            reads: reads_beside,
            ingest_achieved_per_second: ingested.ok_per_second(),
            ingest_latency: Latency::of(&ingested),
            ingest_non_2xx: ingested.answered() - ingested.ok() + ingested.errors,
            ingest_overdue: ingested.overdue,
            reads_per_second: read.as_ref().map_or(0.0, LoadResult::ok_per_second),
            read_latency: read.as_ref().map(Latency::of),
            read_non_2xx: read
                .as_ref()
                .map_or(0, |r| r.answered() - r.ok() + r.errors),
            p99_ratio_to_alone: 0.0,
            cpu: meter.finish(),
        });
    }
    let alone: Vec<f64> = out
        .iter()
        .filter(|leg| leg.reads == Reads::None)
        .map(|leg| leg.ingest_latency.p99_ms)
        .collect();
    let mean_alone = alone.iter().sum::<f64>() / alone.len() as f64;
    for leg in &mut out {
        leg.p99_ratio_to_alone = leg.ingest_latency.p99_ms / mean_alone;
    }
    Isolation {
        ingest_rate: plan.ingest_rate,
        ingest_connections: plan.ingest_connections,
        read_connections: plan.read_connections,
        seconds_per_leg: plan.duration.as_secs_f64(),
        legs: out,
    }
}
