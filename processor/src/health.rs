//! What the processor's `/readyz` and `/metrics` report (the endpoints themselves are
//! `tally-runtime`'s): the readiness state the consume loop keeps, and its metrics.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::metrics::Metrics;

/// The processor's answers to the health endpoints.
pub struct ProcessorHealth {
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
}

impl tally_runtime::Health for ProcessorHealth {
    fn ready(&self) -> Result<String, String> {
        self.readiness
            .check()
            .map(|()| "ready".to_owned())
            .map_err(str::to_owned)
    }

    fn render_metrics(&self) -> String {
        self.metrics.render()
    }
}

/// Whether the processor can do its work now: started, ClickHouse accepting writes and
/// JetStream reachable.
#[derive(Default)]
pub struct Readiness {
    nats_ok: AtomicBool,
    storage_ok: AtomicBool,
    started: AtomicBool,
    nats: OnceLock<async_nats::Client>,
}

impl Readiness {
    /// Records whether the last fetch from JetStream succeeded.
    pub fn set_nats_ok(&self, ok: bool) {
        self.nats_ok.store(ok, Ordering::Relaxed);
    }

    /// Records whether ClickHouse took (or answered) the last insert.
    pub fn set_storage_ok(&self, ok: bool) {
        self.storage_ok.store(ok, Ordering::Relaxed);
    }

    /// Marks the end of start-up (schema applied, consumer bound); `nats` is watched for
    /// readiness from then on.
    pub fn set_started(&self, nats: async_nats::Client) {
        let _ = self.nats.set(nats);
        self.started.store(true, Ordering::Relaxed);
        self.set_storage_ok(true);
        self.set_nats_ok(true);
    }

    /// `Ok` when the processor is ready, else why not.
    pub fn check(&self) -> Result<(), &'static str> {
        if !self.started.load(Ordering::Relaxed) {
            return Err("starting: schema or consumer not ready yet");
        }
        if !self.storage_ok.load(Ordering::Relaxed) {
            return Err("ClickHouse is failing; retrying the current batch");
        }
        let connected = self
            .nats
            .get()
            .is_some_and(|c| c.connection_state() == async_nats::connection::State::Connected);
        if !connected || !self.nats_ok.load(Ordering::Relaxed) {
            return Err("cannot fetch from JetStream");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_until_started() {
        let readiness = Readiness::default();
        assert_eq!(
            readiness.check(),
            Err("starting: schema or consumer not ready yet")
        );
    }
}
