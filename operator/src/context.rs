//! What both controllers share: the Kubernetes client, the event recorder, metrics, NATS
//! connections for stream management, and the one error type whose variant names become
//! metric labels.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::finalizer;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tally_contracts::credentials::NatsCredentials;
use tokio::sync::Mutex;

use crate::render::Images;

/// Everything a reconcile can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Adding or removing the finalizer failed; a failure of the apply or cleanup step
    /// inside the finalizer is that step's own error (see the `From` conversion).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    #[error("the pipeline's configuration is invalid: {0}")]
    InvalidConfig(#[from] tally_contracts::ConfigError),
    #[error("JetStream: {0}")]
    Stream(String),
    #[error("object without {0}")]
    MissingField(&'static str),
}

impl From<finalizer::Error<Error>> for Error {
    /// Unwraps the failure of the apply or cleanup step to its cause, so that logs and the
    /// failure metric name what failed, not the finalizer that ran it.
    fn from(error: finalizer::Error<Error>) -> Self {
        match error {
            finalizer::Error::ApplyFailed(cause) | finalizer::Error::CleanupFailed(cause) => cause,
            other => Self::Finalizer(Box::new(other)),
        }
    }
}

impl Error {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Finalizer(_) => "finalizer",
            Self::InvalidConfig(_) => "invalid_config",
            Self::Stream(_) => "stream",
            Self::MissingField(_) => "missing_field",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabel {
    controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    controller: &'static str,
    reason: &'static str,
}

/// Reconcile metrics, by controller.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabel, Counter>,
    failures: Family<FailureLabels, Counter>,
    durations: Family<ControllerLabel, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tally_operator");
        let reconciles = Family::default();
        let failures = Family::default();
        let durations = Family::<ControllerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 12))
        });
        registry.register("reconciles", "Reconciliations started", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconciliations that failed, by reason",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent reconciling",
            durations.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            durations,
        }
    }
}

impl Metrics {
    /// Counts a reconcile and returns a guard that records its duration when dropped.
    pub fn start(&self, controller: &'static str) -> ReconcileTimer<'_> {
        self.reconciles
            .get_or_create(&ControllerLabel { controller })
            .inc();
        ReconcileTimer {
            histogram: self
                .durations
                .get_or_create(&ControllerLabel { controller })
                .clone(),
            start: Instant::now(),
            _metrics: self,
        }
    }

    /// Counts a failed reconcile of `controller`, labelled with the error's cause.
    pub fn failed(&self, controller: &'static str, error: &Error) {
        self.failures
            .get_or_create(&FailureLabels {
                controller,
                reason: error.metric_label(),
            })
            .inc();
    }
}

impl Metrics {
    /// The registry as OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String never fails");
        out
    }
}

pub struct ReconcileTimer<'a> {
    histogram: Histogram,
    start: Instant,
    _metrics: &'a Metrics,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

/// NATS connections by URL, reused across reconciles.
#[derive(Default)]
pub struct NatsPool {
    clients: Mutex<HashMap<String, async_nats::Client>>,
}

/// How long stream management may wait for NATS before the condition says why not.
const NATS_TIMEOUT: Duration = Duration::from_secs(5);

impl NatsPool {
    /// A JetStream context for `url` with `credentials`, connecting when there is no live
    /// connection with them.
    pub async fn jetstream(
        &self,
        url: &str,
        credentials: &NatsCredentials,
    ) -> Result<jetstream::Context, Error> {
        // One connection per server and login: a changed password gets a new one.
        let slot = format!("{url}#{}", credentials.fingerprint());
        let mut clients = self.clients.lock().await;
        let live = clients
            .get(&slot)
            .filter(|c| c.connection_state() == async_nats::connection::State::Connected);
        let client = match live {
            Some(client) => client.clone(),
            None => {
                let client = credentials
                    .connect_options()
                    .map_err(|e| Error::Stream(format!("cannot log in to NATS: {e}")))?
                    .name("tally-operator")
                    .connection_timeout(NATS_TIMEOUT)
                    .connect(
                        tally_contracts::stream::nats_servers(url)
                            .map_err(|e| Error::Stream(format!("spec.nats.url {url:?}: {e}")))?,
                    )
                    .await
                    .map_err(|e| Error::Stream(format!("cannot connect to NATS at {url}: {e}")))?;
                clients.insert(slot, client.clone());
                client
            }
        };
        Ok(jetstream::ContextBuilder::new()
            .timeout(NATS_TIMEOUT)
            .build(client))
    }
}

/// Per-object retry delays after failed reconciles: 5 s doubling to 5 minutes, forgotten
/// after a success.
#[derive(Default)]
pub struct Backoff {
    failures: std::sync::Mutex<HashMap<String, u32>>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(5);
    const MAX: Duration = Duration::from_secs(300);

    /// Records a failure of `key` and returns how long to wait before the next attempt.
    pub fn failed(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().expect("never poisoned");
        let n = failures.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        Self::FIRST
            .saturating_mul(2u32.saturating_pow(*n - 1))
            .min(Self::MAX)
    }

    pub fn succeeded(&self, key: &str) {
        self.failures.lock().expect("never poisoned").remove(key);
    }
}

/// The key of `object` in [`Backoff`].
pub fn backoff_key<K: kube::Resource<DynamicType = ()>>(object: &K) -> String {
    let meta = object.meta();
    format!(
        "{}/{}/{}",
        K::kind(&()),
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// Shared by every reconcile.
pub struct Context {
    pub backoff: Backoff,
    pub client: kube::Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub nats: NatsPool,
    pub images: Images,
}

impl Context {
    /// The error policy of both controllers: logs the failure, counts it by cause, and
    /// retries `object` after its backoff.
    pub fn retry_after_failure<K: kube::Resource<DynamicType = ()>>(
        &self,
        controller: &'static str,
        object: &K,
        error: &Error,
    ) -> Action {
        let name = object.meta().name.as_deref().unwrap_or_default();
        tracing::warn!(controller, name, %error, "reconcile failed");
        self.metrics.failed(controller, error);
        Action::requeue(self.backoff.failed(&backoff_key(object)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_cap_and_resets() {
        let b = Backoff::default();
        let delays: Vec<u64> = (0..9).map(|_| b.failed("p").as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(b.failed("other").as_secs(), 5);
        b.succeeded("p");
        assert_eq!(b.failed("p").as_secs(), 5);
    }
}
