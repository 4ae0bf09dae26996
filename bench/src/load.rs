//! Closed-loop (as fast as the server answers) and open-loop (fixed rate) HTTP load over a
//! pool of keep-alive connections, with latencies in an HDR histogram (microseconds).
//!
//! Open loop: request `i` is due at `start + i / rate`. Each connection claims the next due
//! request; when it claims one already overdue, every connection was busy at its due time,
//! so its latency is counted from the due time (no coordinated omission); otherwise the
//! connection waits for the due time and counts from the moment it sends. The timer has a
//! 1 ms resolution, so requests leave in bursts of up to one millisecond's worth.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::client::{Conn, Request};

/// What a load run measured.
#[derive(Clone)]
pub struct LoadResult {
    pub elapsed: Duration,
    /// Requests answered, by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that failed without an answer (connection error, timeout).
    pub errors: u64,
    /// Events in requests answered 2xx.
    pub events_ok: u64,
    /// Latency of every answered request, microseconds.
    pub latency: Histogram<u64>,
    /// Latency of 2xx answers only, microseconds.
    pub latency_ok: Histogram<u64>,
    /// Open loop: requests that were overdue when a connection became free for them.
    pub overdue: u64,
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

impl LoadResult {
    fn empty() -> Self {
        Self {
            elapsed: Duration::ZERO,
            statuses: BTreeMap::new(),
            errors: 0,
            events_ok: 0,
            latency: histogram(),
            latency_ok: histogram(),
            overdue: 0,
        }
    }

    fn merge(&mut self, other: &LoadResult) {
        for (status, n) in &other.statuses {
            *self.statuses.entry(*status).or_default() += n;
        }
        self.errors += other.errors;
        self.events_ok += other.events_ok;
        self.overdue += other.overdue;
        self.latency.add(&other.latency).expect("same bounds");
        self.latency_ok.add(&other.latency_ok).expect("same bounds");
    }

    pub fn answered(&self) -> u64 {
        self.statuses.values().sum()
    }

    pub fn ok(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| (200..300).contains(*s))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn status(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }

    pub fn ok_per_second(&self) -> f64 {
        self.ok() as f64 / self.elapsed.as_secs_f64()
    }

    pub fn events_per_second(&self) -> f64 {
        self.events_ok as f64 / self.elapsed.as_secs_f64()
    }
}

/// Milliseconds at a quantile of a microsecond histogram.
pub fn ms(h: &Histogram<u64>, quantile: f64) -> f64 {
    if h.is_empty() {
        return f64::NAN;
    }
    h.value_at_quantile(quantile) as f64 / 1000.0
}

/// How requests are paced.
#[derive(Clone, Copy)]
pub enum Pace {
    /// Each connection sends its next request as soon as the last is answered.
    Closed,
    /// `rate` requests per second across all connections.
    Open { rate: f64 },
}

/// Hands out send times to the workers of one run: closed loop, now (until the end); open
/// loop, the next request's due time (see the module's doc for how overdue requests count).
#[derive(Clone)]
pub struct Pacer {
    pace: Pace,
    start: Instant,
    end: Instant,
    next: Arc<AtomicU64>,
}

impl Pacer {
    /// Starts 20 ms from now (so that every worker is waiting by then) and runs `duration`.
    pub fn new(pace: Pace, duration: Duration) -> Self {
        let start = Instant::now() + Duration::from_millis(20);
        Self {
            pace,
            start,
            end: start + duration,
            next: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Waits for the start of the run.
    pub async fn started(&self) {
        tokio::time::sleep_until(self.start.into()).await;
    }

    /// Waits until the worker's next request is due and returns the instant its latency
    /// counts from, or `None` once the run is over. Counts overdue requests in `overdue`.
    pub async fn next(&self, overdue: &mut u64) -> Option<Instant> {
        match self.pace {
            Pace::Closed => {
                let now = Instant::now();
                (now < self.end).then_some(now)
            }
            Pace::Open { rate } => {
                let i = self.next.fetch_add(1, Ordering::Relaxed);
                let due = self.start + Duration::from_secs_f64(i as f64 / rate);
                let now = Instant::now();
                // Nothing is sent after the end, even what fell overdue before it.
                if due >= self.end || now >= self.end {
                    return None;
                }
                if now > due + Duration::from_millis(1) {
                    *overdue += 1;
                    Some(due)
                } else {
                    if now < due {
                        tokio::time::sleep_until(due.into()).await;
                    }
                    Some(Instant::now())
                }
            }
        }
    }

    /// The run's length: its duration, or longer when requests in flight at the end finished
    /// after it.
    pub fn elapsed(&self) -> Duration {
        Instant::now()
            .saturating_duration_since(self.start)
            .max(self.end - self.start)
    }
}

/// Runs `connections` connections for `duration`, cycling through `requests`.
pub async fn run(
    addr: SocketAddr,
    requests: Arc<Vec<Request>>,
    connections: usize,
    pace: Pace,
    duration: Duration,
    timeout: Duration,
) -> LoadResult {
    let pacer = Pacer::new(pace, duration);
    let mut tasks = Vec::with_capacity(connections);
    for index in 0..connections {
        let requests = requests.clone();
        let pacer = pacer.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(addr, timeout);
            let mut result = LoadResult::empty();
            let mut k = index;
            pacer.started().await;
            while let Some(sent_from) = pacer.next(&mut result.overdue).await {
                let request = &requests[k % requests.len()];
                k += connections;
                match conn.send(&request.bytes).await {
                    Ok(answer) => {
                        let micros = sent_from.elapsed().as_micros() as u64;
                        result.latency.saturating_record(micros.max(1));
                        *result.statuses.entry(answer.status).or_default() += 1;
                        if (200..300).contains(&answer.status) {
                            result.events_ok += request.events;
                            result.latency_ok.saturating_record(micros.max(1));
                        }
                    }
                    Err(_) => {
                        result.errors += 1;
                        // Do not spin on a refused connection.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            result
        }));
    }
    let mut total = LoadResult::empty();
    for task in tasks {
        if let Ok(result) = task.await {
            total.merge(&result);
        }
    }
    // Requests still in flight at the end finish after it; count the time they took.
    total.elapsed = pacer.elapsed();
    total
}
