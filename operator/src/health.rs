//! What the operator's /healthz, /readyz and /metrics say (served by `tally-runtime`):
//! ready while this replica leads or stands by for the lease, and the reconcile metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::context::Metrics;

/// What the endpoints report on.
pub struct Health {
    metrics: Arc<Metrics>,
    /// Reconciling (this replica leads, or leader election is off).
    leading: AtomicBool,
}

impl Health {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            leading: AtomicBool::new(false),
        }
    }

    /// Records that this replica reconciles from now on.
    pub fn set_leading(&self) {
        self.leading.store(true, Ordering::Relaxed);
    }
}

impl tally_runtime::Health for Health {
    /// A standby is healthy and ready: it takes over when the leader goes.
    fn ready(&self) -> Result<String, String> {
        Ok(if self.leading.load(Ordering::Relaxed) {
            "leading"
        } else {
            "standing by"
        }
        .to_owned())
    }

    fn render_metrics(&self) -> String {
        self.metrics.render()
    }
}

#[cfg(test)]
mod tests {
    use tally_runtime::Health as _;

    use super::*;

    #[test]
    fn a_standby_is_ready_and_says_so() {
        let health = Health::new(Arc::new(Metrics::default()));
        assert_eq!(health.ready().as_deref(), Ok("standing by"));
        health.set_leading();
        assert_eq!(health.ready().as_deref(), Ok("leading"));
        assert!(health.render_metrics().contains("# EOF"));
    }
}
