//! What the query service's `/readyz` and `/metrics` report (the endpoints themselves are
//! `tally-runtime`'s): ready while ClickHouse answers and holds the pipeline's rollups. A
//! background watch checks that every few seconds, and more often while it fails (runtime's
//! backoff), so `/readyz` answers from memory and never waits on ClickHouse.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tally_runtime::{Backoff, Health};

use crate::metrics::Metrics;
use crate::store::Store;

/// How often a ready service checks ClickHouse again.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// A check that takes longer than this counts as ClickHouse not answering.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The verdict of the last check: `Ok`, or why the service is not ready.
pub struct Readiness(Mutex<Result<(), String>>);

impl Default for Readiness {
    fn default() -> Self {
        Self(Mutex::new(Err(
            "starting: ClickHouse not checked yet".into()
        )))
    }
}

impl Readiness {
    /// The last verdict.
    pub fn check(&self) -> Result<(), String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records a verdict, logging when it changes.
    pub fn set(&self, verdict: Result<(), String>) {
        let mut current = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if *current != verdict {
            match &verdict {
                Ok(()) => tracing::info!("ready: ClickHouse answers and holds the rollups"),
                Err(why) => tracing::warn!(reason = %why, "not ready"),
            }
        }
        *current = verdict;
    }
}

/// The query service's answers to the health endpoints.
pub struct QueryHealth {
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
}

impl Health for QueryHealth {
    fn ready(&self) -> Result<String, String> {
        self.readiness.check().map(|()| "ready".to_owned())
    }

    fn render_metrics(&self) -> String {
        self.metrics.render()
    }
}

/// Checks `store` for ever, recording each verdict in `readiness`: every [`CHECK_EVERY`]
/// while it passes, with [`Backoff::reconnect`] delays while it fails.
pub async fn watch(store: Arc<Store>, readiness: Arc<Readiness>) {
    let mut backoff = Backoff::reconnect();
    loop {
        let verdict = match tokio::time::timeout(CHECK_TIMEOUT, store.check()).await {
            Ok(verdict) => verdict,
            Err(_) => Err(format!(
                "ClickHouse did not answer within {CHECK_TIMEOUT:?}"
            )),
        };
        let delay = if verdict.is_ok() {
            backoff.reset();
            CHECK_EVERY
        } else {
            backoff.next_delay()
        };
        readiness.set(verdict);
        tokio::time::sleep(delay).await;
    }
}
