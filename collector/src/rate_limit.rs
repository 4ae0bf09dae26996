//! Rate limits per site and per key (`rateLimit` of a site and of each of its keys): a
//! token bucket per limit (GCRA, the `governor` crate), where each event takes one token.
//!
//! Several collector replicas each enforce their share: the sustained rate divided by the
//! number of collectors (`--collectors`, which the operator sets to the Deployment's
//! replicas), with the full burst each. So the pipeline as a whole takes the configured rate
//! when the Service spreads requests evenly, and at most `burst × collectors` at once. A
//! shared limit would need a round trip to a shared store on every request; this needs none.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tally_contracts::RuntimeConfig;
use tally_contracts::access::{Grant, KeyDigest};
use tally_crds::RateLimit;

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// One limit: its bucket, and what the `RateLimit-Policy` header says of it.
struct Bucket {
    limiter: Limiter,
    policy: Policy,
}

/// A limit as the IETF draft's headers describe it.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// `site:<site id>` or `key`.
    pub name: String,
    /// The burst: the most events taken at once.
    pub burst: u32,
    /// This collector's share of the sustained rate, events per second.
    pub per_second: f64,
}

impl Policy {
    /// Seconds to refill `events` tokens, rounded up, at least 1.
    fn seconds_for(&self, events: u32) -> u64 {
        ((f64::from(events) / self.per_second).ceil() as u64).max(1)
    }
}

/// The state of one limit after a request took its tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    pub policy: Policy,
    pub remaining: u32,
    /// Seconds until the bucket is full again (for a refused request: until it may retry).
    pub reset_seconds: u64,
}

/// Why a request's events were refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Limited {
    /// Over the limit now; retry after `standing.reset_seconds`.
    Over(Standing),
    /// More events in one request than the burst: never allowed, send smaller batches.
    LargerThanBurst { policy: Policy, events: u32 },
}

/// The limits of every site and key of a configuration.
pub struct RateLimits {
    sites: HashMap<String, Bucket>,
    keys: HashMap<KeyDigest, Bucket>,
    clock: DefaultClock,
}

impl RateLimits {
    /// The buckets of `config`'s limits, each at its share for `collectors` replicas.
    pub fn of(config: &RuntimeConfig, collectors: u32) -> Self {
        let clock = DefaultClock::default();
        let collectors = collectors.max(1);
        let bucket = |name: String, limit: &RateLimit| {
            let per_second = f64::from(limit.events_per_second) / f64::from(collectors);
            let burst = NonZeroU32::new(limit.burst().max(1)).expect("at least 1");
            let quota = Quota::with_period(Duration::from_secs_f64(1.0 / per_second))
                .expect("a positive rate")
                .allow_burst(burst);
            Bucket {
                limiter: RateLimiter::direct_with_clock(quota, clock.clone())
                    .with_middleware::<StateInformationMiddleware>(),
                policy: Policy {
                    name,
                    burst: burst.get(),
                    per_second,
                },
            }
        };
        let sites = config
            .sites
            .iter()
            .filter_map(|site| {
                let limit = site.spec.rate_limit.as_ref()?;
                let id = &site.spec.site_id;
                Some((id.clone(), bucket(format!("site:{id}"), limit)))
            })
            .collect();
        let keys = config
            .keys()
            .grants()
            .filter_map(|grant| {
                let limit = grant.rate_limit.as_ref()?;
                Some((*grant.digest(), bucket("key".to_owned(), limit)))
            })
            .collect();
        Self { sites, keys, clock }
    }

    /// Takes the tokens of a request's valid events, given by their sites: all of them from
    /// the key's limit, then each site's from its own. Returns the limits met (for the
    /// headers) and the sites whose events are refused, with why.
    pub fn take_request<'a>(
        &self,
        key: Option<&Grant>,
        sites: impl Iterator<Item = &'a str>,
    ) -> (Vec<Standing>, HashMap<String, Limited>) {
        let mut per_site: Vec<(&str, u32)> = Vec::new();
        for site in sites {
            match per_site.iter_mut().find(|(s, _)| *s == site) {
                Some((_, n)) => *n += 1,
                None => per_site.push((site, 1)),
            }
        }
        let mut standings = Vec::new();
        let mut refused = HashMap::new();
        let mut met = |taken: Result<Option<Standing>, Limited>| match taken {
            Ok(standing) => {
                standings.extend(standing);
                None
            }
            Err(refusal) => {
                if let Limited::Over(standing) = &refusal {
                    standings.push(standing.clone());
                }
                Some(refusal)
            }
        };
        let total = per_site.iter().map(|(_, n)| n).sum();
        let key_refusal = key.and_then(|key| met(self.take_for_key(key, total)));
        for (site_id, n) in per_site {
            let refusal = match &key_refusal {
                Some(refusal) => Some(refusal.clone()),
                None => met(self.take_for_site(site_id, n)),
            };
            if let Some(refusal) = refusal {
                refused.insert(site_id.to_owned(), refusal);
            }
        }
        (standings, refused)
    }

    /// Takes `events` tokens of the request's key's limit, if it has one.
    pub fn take_for_key(&self, key: &Grant, events: u32) -> Result<Option<Standing>, Limited> {
        self.keys
            .get(key.digest())
            .map(|bucket| self.take(bucket, events))
            .transpose()
    }

    /// Takes `events` tokens of `site_id`'s limit, if it has one.
    pub fn take_for_site(&self, site_id: &str, events: u32) -> Result<Option<Standing>, Limited> {
        self.sites
            .get(site_id)
            .map(|bucket| self.take(bucket, events))
            .transpose()
    }

    fn take(&self, bucket: &Bucket, events: u32) -> Result<Standing, Limited> {
        let policy = &bucket.policy;
        let Some(n) = NonZeroU32::new(events) else {
            return Ok(Standing {
                policy: policy.clone(),
                remaining: policy.burst,
                reset_seconds: 0,
            });
        };
        match bucket.limiter.check_n(n) {
            Err(_) => Err(Limited::LargerThanBurst {
                policy: policy.clone(),
                events,
            }),
            Ok(Ok(snapshot)) => {
                let remaining = snapshot.remaining_burst_capacity();
                Ok(Standing {
                    policy: policy.clone(),
                    remaining,
                    reset_seconds: policy.seconds_for(policy.burst - remaining),
                })
            }
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Err(Limited::Over(Standing {
                    policy: policy.clone(),
                    remaining: 0,
                    reset_seconds: (wait.as_secs_f64().ceil() as u64).max(1),
                }))
            }
        }
    }
}

/// The `RateLimit-Policy` and `RateLimit` header values (draft-ietf-httpapi-ratelimit-headers)
/// of the limits a request met: `"site:shop";q=200;w=2` and `"site:shop";r=150;t=1`.
pub fn header_values(standings: &[Standing]) -> Option<(String, String)> {
    if standings.is_empty() {
        return None;
    }
    let join =
        |f: &dyn Fn(&Standing) -> String| standings.iter().map(f).collect::<Vec<_>>().join(", ");
    let policy = join(&|s| {
        format!(
            "{:?};q={};w={}",
            s.policy.name,
            s.policy.burst,
            s.policy.seconds_for(s.policy.burst)
        )
    });
    let state = join(&|s| {
        format!(
            "{:?};r={};t={}",
            s.policy.name, s.remaining, s.reset_seconds
        )
    });
    Some((policy, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RuntimeConfig {
        RuntimeConfig::parse(
            "test",
            "apiVersion: tally.dev/v1alpha1\nkind: AnalyticsPipeline\nmetadata: {name: web}\nspec: {}\n---\n\
             apiVersion: tally.dev/v1alpha1\nkind: AnalyticsSite\nmetadata: {name: shop}\n\
             spec: {pipelineRef: {name: web}, siteId: shop, rateLimit: {eventsPerSecond: 10, burst: 20}}\n---\n\
             apiVersion: tally.dev/v1alpha1\nkind: AnalyticsSite\nmetadata: {name: blog}\n\
             spec: {pipelineRef: {name: web}, siteId: blog}\n",
        )
        .unwrap()
    }

    #[test]
    fn a_site_takes_its_burst_then_is_refused_with_the_wait() {
        let limits = RateLimits::of(&config(), 1);
        let first = limits.take_for_site("shop", 15).unwrap().unwrap();
        assert_eq!(first.remaining, 5);
        assert_eq!(first.reset_seconds, 2); // 15 tokens at 10/s
        let refused = limits.take_for_site("shop", 10).unwrap_err();
        let Limited::Over(standing) = refused else {
            panic!("{refused:?}")
        };
        assert_eq!(standing.remaining, 0);
        assert_eq!(standing.reset_seconds, 1);
        assert!(matches!(
            limits.take_for_site("shop", 21),
            Err(Limited::LargerThanBurst { events: 21, .. })
        ));
        // A site without a limit has no bucket; other sites are untouched.
        assert_eq!(limits.take_for_site("blog", 1_000_000), Ok(None));
    }

    #[test]
    fn each_collector_takes_its_share_of_the_rate() {
        let limits = RateLimits::of(&config(), 4);
        let standing = limits.take_for_site("shop", 20).unwrap().unwrap();
        assert_eq!(standing.policy.per_second, 2.5);
        assert_eq!(standing.policy.burst, 20);
        assert_eq!(standing.reset_seconds, 8);
    }

    #[test]
    fn headers_follow_the_draft() {
        let limits = RateLimits::of(&config(), 1);
        let standing = limits.take_for_site("shop", 5).unwrap().unwrap();
        let (policy, state) = header_values(&[standing]).unwrap();
        assert_eq!(policy, "\"site:shop\";q=20;w=2");
        assert_eq!(state, "\"site:shop\";r=15;t=1");
        assert_eq!(header_values(&[]), None);
    }
}
