//! Ingest beside reads: does reading raise the collector's latency? Single-event POSTs go
//! to the collector at one fixed open-loop rate through four legs of equal length: alone,
//! while `/v1/stats` reads go to the query service at a fixed rate, while they go as fast
//! as their connections allow, and alone again. The two legs alone bracket the others, so
//! a drift of the machine during the phase shows as a difference between them; each leg
//! with reads is compared with the mean of the two.
//!
//! The legs run twice. First with every process free to use every core, as `make dev`
//! runs them: on a small machine the reads' ClickHouse work then competes with ingest for
//! the same cores. Then placed as a cluster places them — the read side on nodes of its own:
//! the collector, NATS and the load generator pinned to the first CPU, ClickHouse, the query
//! service and the processor to the others (`taskset`, every thread). The collector shares
//! no code path, connection or process with the reads; the second run shows what is left
//! when it shares no core either.
//!
//! The reads run on a thread and runtime of their own, so that the load generator's own
//! work for them does not delay the ingest requests it times.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use serde::Serialize;

use crate::client::Request;
use crate::generate::Gen;
use crate::ingest::Latency;
use crate::load::{self, LoadResult, Pace};
use crate::memory::{CpuMeter, CpuUse};

/// What the phase runs.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Single-event POSTs per second, in every leg.
    pub ingest_rate: f64,
    pub ingest_connections: usize,
    /// `/v1/stats` requests per second in the paced leg.
    pub read_rate: f64,
    pub read_connections: usize,
    /// Length of each leg.
    #[serde(rename = "seconds_per_leg", serialize_with = "seconds")]
    pub duration: Duration,
}

fn seconds<S: serde::Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(duration.as_secs_f64())
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

/// The four legs with the processes placed one way.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Where the processes ran.
    pub placement: String,
    /// True when the ingest side and the read side had cores of their own.
    pub pinned: bool,
    pub legs: Vec<Leg>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Isolation {
    pub plan: Plan,
    pub runs: Vec<Run>,
    /// Why the pinned run did not happen, if it did not.
    pub not_pinned: Option<String>,
}

/// "Unchanged": the collector's p99 beside paced reads at most this factor above the higher
/// p99 of the two legs alone. Those two differ from each other by as much (up to 2.5× in
/// the runs of docs/performance.md) with nothing but noise between them.
pub const UNCHANGED_MARGIN: f64 = 1.2;

impl Run {
    /// The collector's p99 beside paced reads, and the higher p99 of the legs alone.
    pub fn paced_against_alone(&self) -> Option<(f64, f64)> {
        let p99 = |reads: Reads| {
            self.legs
                .iter()
                .filter(move |leg| leg.reads == reads)
                .map(|leg| leg.ingest_latency.p99_ms)
        };
        let alone = p99(Reads::None).reduce(f64::max)?;
        Some((p99(Reads::Paced).next()?, alone))
    }

    /// Whether the collector's p99 was unchanged beside paced reads, none of them refused.
    pub fn unchanged_beside_paced_reads(&self) -> Option<bool> {
        let (paced, alone) = self.paced_against_alone()?;
        let refused = self.legs.iter().any(|leg| leg.read_non_2xx > 0);
        Some(paced <= UNCHANGED_MARGIN * alone && !refused)
    }
}

/// The processes of the ingest side; every other process of the stack is the read side's.
const INGEST_SIDE: [&str; 3] = ["tally-bench", "collector", "nats-server"];

/// Pins every thread of `pid` to `cpus` (a `taskset` CPU list); threads started later
/// inherit the placement of the thread that starts them.
fn pin(pid: u32, cpus: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("taskset")
        .args(["--all-tasks", "--cpu-list", "--pid", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running taskset")?;
    ensure!(
        status.success(),
        "taskset could not pin {pid} to {cpus}: {status}"
    );
    Ok(())
}

/// Places the ingest side on CPU 0 and the read side on the others (`pinned`), or every
/// process on every CPU.
fn place(processes: &[(String, u32)], cpus: usize, pinned: bool) -> anyhow::Result<()> {
    let all = format!("0-{}", cpus - 1);
    let read_side = format!("1-{}", cpus - 1);
    for (name, pid) in processes {
        let list = match (pinned, INGEST_SIDE.contains(&name.as_str())) {
            (false, _) => &all,
            (true, true) => "0",
            (true, false) => &read_side,
        };
        pin(*pid, list)?;
    }
    Ok(())
}

/// `/v1/stats` of random sites and days of the read history.
pub fn stats_requests(
    host: &str,
    read_key: &str,
    sites: &[String],
    days: u32,
) -> Arc<Vec<Request>> {
    let mut generator = Gen::new(7);
    let today = time::OffsetDateTime::now_utc().date();
    let requests = (0..256)
        .map(|_| {
            let site = &sites[generator.below(sites.len() as u64) as usize];
            let day = today - time::Duration::days(generator.below(u64::from(days)) as i64);
            Request::read(
                host,
                &format!("/v1/stats?site_id={site}&date={day}"),
                read_key,
            )
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

/// Ingest alone for a moment before the legs, so that none of them starts on a cold path.
async fn warm_up(collector: SocketAddr, ingest: &Arc<Vec<Request>>, plan: &Plan) {
    let _ = load::run(
        collector,
        ingest.clone(),
        plan.ingest_connections,
        Pace::Open {
            rate: plan.ingest_rate,
        },
        Duration::from_secs(2),
        Duration::from_secs(30),
    )
    .await;
}

/// The four legs, with the processes placed as they are.
async fn legs(
    collector: SocketAddr,
    ingest: &Arc<Vec<Request>>,
    stats: SocketAddr,
    reads: &Arc<Vec<Request>>,
    plan: &Plan,
    processes: &[(String, u32)],
) -> Vec<Leg> {
    warm_up(collector, ingest, plan).await;
    let legs = [
        ("alone", Reads::None),
        ("reads at a fixed rate", Reads::Paced),
        ("reads as fast as they go", Reads::Unpaced),
        ("alone again", Reads::None),
    ];
    let mut out = Vec::new();
    for (name, reads_beside) in legs {
        eprintln!("    {name}");
        let meter = CpuMeter::start(processes.to_vec());
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
    out
}

/// The legs on shared cores, then (with two CPUs or more) with the ingest side and the read
/// side on cores of their own. Every process is free on every core again
/// when it ends.
pub async fn run(
    collector: SocketAddr,
    ingest: Arc<Vec<Request>>,
    stats: SocketAddr,
    reads: Arc<Vec<Request>>,
    plan: &Plan,
    processes: Vec<(String, u32)>,
) -> Isolation {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let mut runs = Vec::new();
    eprintln!("  every process on every CPU");
    runs.push(Run {
        placement: format!("every process on all {cpus} CPUs"),
        pinned: false,
        legs: legs(collector, &ingest, stats, &reads, plan, &processes).await,
    });
    let not_pinned = if cpus < 2 {
        Some(format!("{cpus} CPU: nothing to pin apart"))
    } else {
        match place(&processes, cpus, true) {
            Ok(()) => {
                let read_side = match cpus {
                    2 => "CPU 1".to_owned(),
                    _ => format!("CPUs 1-{}", cpus - 1),
                };
                let placement = format!(
                    "collector, NATS and the load generator on CPU 0; ClickHouse, query and processor on {read_side}"
                );
                eprintln!("  {placement}");
                runs.push(Run {
                    placement,
                    pinned: true,
                    legs: legs(collector, &ingest, stats, &reads, plan, &processes).await,
                });
                None
            }
            Err(e) => Some(format!("{e:#}")),
        }
    };
    if cpus >= 2
        && let Err(e) = place(&processes, cpus, false)
    {
        eprintln!("  could not free the processes again: {e:#}");
    }
    Isolation {
        plan: plan.clone(),
        runs,
        not_pinned,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(reads: Reads, p99_ms: f64, read_non_2xx: u64) -> Leg {
        Leg {
            name: String::new(),
            reads,
            ingest_achieved_per_second: 0.0,
            ingest_latency: Latency {
                p50_ms: 0.4,
                p99_ms,
                p999_ms: p99_ms,
                max_ms: p99_ms,
            },
            ingest_non_2xx: 0,
            ingest_overdue: 0,
            reads_per_second: 0.0,
            read_latency: None,
            read_non_2xx,
            p99_ratio_to_alone: 0.0,
            cpu: Vec::new(),
        }
    }

    fn run(alone: f64, paced: f64, again: f64, refused: u64) -> Run {
        Run {
            placement: String::new(),
            pinned: true,
            legs: vec![
                leg(Reads::None, alone, 0),
                leg(Reads::Paced, paced, refused),
                leg(Reads::Unpaced, 50.0, 0),
                leg(Reads::None, again, 0),
            ],
        }
    }

    #[test]
    fn paced_reads_are_judged_against_the_higher_leg_alone() {
        assert_eq!(
            run(1.0, 1.3, 1.2, 0).paced_against_alone(),
            Some((1.3, 1.2))
        );
        assert_eq!(
            run(1.0, 1.44, 1.2, 0).unchanged_beside_paced_reads(),
            Some(true)
        );
        assert_eq!(
            run(1.0, 1.45, 1.2, 0).unchanged_beside_paced_reads(),
            Some(false)
        );
        // A refused read fails it whatever the latency.
        assert_eq!(
            run(1.0, 1.0, 1.0, 1).unchanged_beside_paced_reads(),
            Some(false)
        );
        // The unpaced leg does not count.
        let mut without_paced = run(1.0, 1.0, 1.0, 0);
        without_paced.legs.remove(1);
        assert_eq!(without_paced.unchanged_beside_paced_reads(), None);
    }
}
