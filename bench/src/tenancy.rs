//! One tenant's flood beside another: single-event POSTs for a site without a limit go to
//! the collector at one fixed open-loop rate, alone, then while batches for the bench's
//! rate-limited site ([`FLOODED_SITE`]) are offered at ten times its limit, then alone
//! again. The flood is answered 429 beyond its allowance; what the phase measures is whether
//! the steady site's latency and acceptance notice it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::client::Request;
use crate::ingest::Latency;
use crate::load::{self, Pace};

/// The bench's site with a rate limit, which this phase floods.
pub const FLOODED_SITE: &str = "flooded";
/// Its limit: events per second (and burst).
pub const FLOODED_LIMIT: u32 = 1000;
/// Events per flood request.
const FLOOD_BATCH: usize = 10;

/// What the phase runs.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Single-event POSTs per second for the steady site, in every leg.
    pub steady_rate: f64,
    pub steady_connections: usize,
    /// Events per second offered to the flooded site: ten times its limit.
    pub flood_events_per_second: f64,
    pub flood_connections: usize,
    pub flood_limit: u32,
    #[serde(rename = "seconds_per_leg", serialize_with = "seconds")]
    pub duration: Duration,
}

fn seconds<S: serde::Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(duration.as_secs_f64())
}

/// One leg.
#[derive(Debug, Clone, Serialize)]
pub struct Leg {
    pub name: String,
    pub flood: bool,
    pub steady_latency: Latency,
    pub steady_non_2xx: u64,
    pub steady_overdue: u64,
    /// The flood's events taken per second (within its limit), and its requests refused.
    pub flood_accepted_events_per_second: f64,
    pub flood_429: u64,
    pub flood_other_non_2xx: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Tenancy {
    pub plan: Plan,
    pub legs: Vec<Leg>,
}

/// "Unchanged": the steady site's p99 beside the flood at most this factor above the
/// higher p99 of the legs alone (the margin the issue's test asserts loosely).
pub const UNCHANGED_MARGIN: f64 = 2.0;

impl Tenancy {
    /// The steady site's p99 beside the flood, and the higher p99 of the legs alone.
    pub fn flood_against_alone(&self) -> Option<(f64, f64)> {
        let p99 = |flood: bool| {
            self.legs
                .iter()
                .filter(move |leg| leg.flood == flood)
                .map(|leg| leg.steady_latency.p99_ms)
        };
        Some((p99(true).next()?, p99(false).reduce(f64::max)?))
    }

    /// Whether the steady site saw only 2xx and a p99 within the margin.
    pub fn unchanged_beside_the_flood(&self) -> Option<bool> {
        let (flood, alone) = self.flood_against_alone()?;
        let refused = self.legs.iter().any(|leg| leg.steady_non_2xx > 0);
        Some(flood <= UNCHANGED_MARGIN * alone && !refused)
    }
}

/// The flood's requests: batches of [`FLOOD_BATCH`] events for [`FLOODED_SITE`].
pub fn flood_requests(host: &str) -> Arc<Vec<Request>> {
    let event = format!(r#"{{"site_id":"{FLOODED_SITE}","event_type":"flood","path":"/"}}"#);
    let body = format!("[{}]", vec![event; FLOOD_BATCH].join(","));
    Arc::new(vec![Request::post(
        host,
        "/v1/events",
        "application/json",
        body.as_bytes(),
        FLOOD_BATCH as u64,
    )])
}

/// Alone, beside the flood, alone again.
pub async fn run(
    collector: SocketAddr,
    steady: Arc<Vec<Request>>,
    flood: Arc<Vec<Request>>,
    plan: &Plan,
) -> Tenancy {
    // The steady load alone for a moment first, so that no leg starts on a cold path.
    let _ = load::run(
        collector,
        steady.clone(),
        plan.steady_connections,
        Pace::Open {
            rate: plan.steady_rate,
        },
        Duration::from_secs(2),
        Duration::from_secs(30),
    )
    .await;
    let mut legs = Vec::new();
    for (name, flooding) in [
        ("alone", false),
        ("beside the flood", true),
        ("alone again", false),
    ] {
        eprintln!("    {name}");
        let flooder = flooding.then(|| {
            let (flood, plan) = (flood.clone(), plan.clone());
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("starting the flood's runtime")
                    .block_on(load::run(
                        collector,
                        flood,
                        plan.flood_connections,
                        Pace::Open {
                            rate: plan.flood_events_per_second / FLOOD_BATCH as f64,
                        },
                        plan.duration,
                        Duration::from_secs(30),
                    ))
            })
        });
        let steady = load::run(
            collector,
            steady.clone(),
            plan.steady_connections,
            Pace::Open {
                rate: plan.steady_rate,
            },
            plan.duration,
            Duration::from_secs(30),
        )
        .await;
        let flooded = flooder.and_then(|handle| handle.join().ok());
        legs.push(Leg {
            name: name.to_owned(),
            flood: flooding,
            steady_latency: Latency::of(&steady),
            steady_non_2xx: steady.answered() - steady.ok() + steady.errors,
            steady_overdue: steady.overdue,
            flood_accepted_events_per_second: flooded
                .as_ref()
                .map_or(0.0, load::LoadResult::events_per_second),
            flood_429: flooded.as_ref().map_or(0, |f| f.status(429)),
            flood_other_non_2xx: flooded
                .as_ref()
                .map_or(0, |f| f.answered() - f.ok() - f.status(429) + f.errors),
        });
    }
    Tenancy {
        plan: plan.clone(),
        legs,
    }
}
