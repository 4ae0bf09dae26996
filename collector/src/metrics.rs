//! Prometheus metrics of the collector, served on `/metrics`: the registry and what it
//! counts. Request durations are tally-runtime's (`tally_runtime::http`), registered here;
//! the routes layer its middleware (`router.rs`).

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tally_runtime::http::RequestDurations;
use tally_runtime::server::ConnectionMetrics;

use crate::api::{ApiError, EventOutcome, NotStored};

/// What became of an event.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Outcome {
    Accepted,
    Duplicate,
    Invalid,
    UnknownSite,
    ForbiddenOrigin,
    /// Without a key its site asks for, or with another site's key.
    Unauthorized,
    RateLimited,
    Failed,
    DoNotTrack,
    Bot,
}

impl From<&EventOutcome> for Outcome {
    fn from(outcome: &EventOutcome) -> Self {
        match outcome {
            EventOutcome::Stored {
                duplicate: true, ..
            } => Self::Duplicate,
            EventOutcome::Stored { .. } => Self::Accepted,
            EventOutcome::Refused(ApiError::UnknownSite(_)) => Self::UnknownSite,
            EventOutcome::Refused(ApiError::ForbiddenOrigin { .. }) => Self::ForbiddenOrigin,
            EventOutcome::Refused(ApiError::Denied(_)) => Self::Unauthorized,
            EventOutcome::Refused(ApiError::RateLimited(_)) => Self::RateLimited,
            EventOutcome::Refused(_) => Self::Invalid,
            EventOutcome::Failed { .. } => Self::Failed,
            EventOutcome::NotStored(NotStored::DoNotTrack) => Self::DoNotTrack,
            EventOutcome::NotStored(NotStored::Bot) => Self::Bot,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SiteLabels {
    site: String,
}

/// What became of a bot's event: its site's `bots` policy.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum BotAction {
    Dropped,
    Flagged,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BotLabels {
    site: String,
    action: BotAction,
}

/// The collector's metrics and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    events: Family<OutcomeLabels, Counter>,
    rate_limited: Family<SiteLabels, Counter>,
    bots: Family<BotLabels, Counter>,
    /// `request_duration_seconds{route,status}`, filled by the routes' middleware.
    pub requests: Arc<RequestDurations>,
    /// `connections_open`, `connections_refused_total`, kept by the server.
    pub connections: ConnectionMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tally_collector");
        let events = Family::<OutcomeLabels, Counter>::default();
        registry.register("events", "Events received, by outcome", events.clone());
        let rate_limited = Family::<SiteLabels, Counter>::default();
        registry.register(
            "rate_limited_events",
            "Events refused by a site's or key's rate limit, by site",
            rate_limited.clone(),
        );
        let bots = Family::<BotLabels, Counter>::default();
        registry.register(
            "bot_events",
            "Events sent by known bots and crawlers, by site and what became of them",
            bots.clone(),
        );
        let requests = Arc::new(RequestDurations::register(&mut registry));
        let connections = ConnectionMetrics::register(&mut registry);
        Self {
            registry,
            events,
            rate_limited,
            bots,
            requests,
            connections,
        }
    }
}

impl Metrics {
    /// Counts what became of a request's events, one update per outcome rather than per
    /// event.
    pub fn count_outcomes(&self, outcomes: &[EventOutcome]) {
        let mut counts: Vec<(Outcome, u64)> = Vec::new();
        for outcome in outcomes.iter().map(Outcome::from) {
            match counts.iter_mut().find(|(o, _)| *o == outcome) {
                Some((_, n)) => *n += 1,
                None => counts.push((outcome, 1)),
            }
        }
        for (outcome, n) in counts {
            self.events
                .get_or_create(&OutcomeLabels { outcome })
                .inc_by(n);
        }
    }

    /// Counts an event refused by a rate limit.
    pub fn count_rate_limited(&self, site_id: &str) {
        self.rate_limited
            .get_or_create(&SiteLabels {
                site: site_id.to_owned(),
            })
            .inc();
    }

    /// Counts an event of a known bot.
    pub fn count_bot(&self, site_id: &str, action: BotAction) {
        self.bots
            .get_or_create(&BotLabels {
                site: site_id.to_owned(),
                action,
            })
            .inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String never fails");
        out
    }
}
