//! Load shedding: a budget of events that requests in progress may hold (being read, parsed,
//! validated, published, or awaiting JetStream's acknowledgement). A request whose events do
//! not fit is answered at once with 503 `overloaded` and `Retry-After: 1` instead of
//! queueing, so that an overload costs bounded memory and the requests that are admitted
//! keep their latency.
//!
//! A request reserves its share before its body is buffered, estimated from
//! `Content-Length` (one event per [`EVENT_BYTES_HINT`] bytes), and settles on the exact
//! number once the body is parsed. So the bodies being read are bounded by the budget too:
//! under overload, refused requests are read through without being kept.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of body counted as one event while the body is not parsed yet (tracker.js events
/// are 250–350 bytes of JSON).
pub const EVENT_BYTES_HINT: usize = 256;

/// The events budget; `None` when unlimited.
#[derive(Clone)]
pub struct Admission {
    budget: Option<(Arc<Semaphore>, u32)>,
}

/// Events admitted for one request; dropping it gives them back.
pub struct Admitted {
    permit: Option<OwnedSemaphorePermit>,
}

impl Admission {
    /// `max_events` in flight at once; 0 means no limit.
    pub fn new(max_events: u32) -> Self {
        Self {
            budget: (max_events > 0)
                .then(|| (Arc::new(Semaphore::new(max_events as usize)), max_events)),
        }
    }

    /// The configured limit (0: none).
    pub fn limit(&self) -> u32 {
        self.budget.as_ref().map_or(0, |(_, max)| *max)
    }

    /// What a request of `content_length` bytes reserves before its body is read.
    pub fn estimate(content_length: Option<usize>) -> usize {
        content_length.map_or(1, |len| (len / EVENT_BYTES_HINT).max(1))
    }

    /// Admits `events` events, or `None` when they do not fit now. A request larger than
    /// the whole budget is admitted once the budget is entirely free.
    pub fn try_admit(&self, events: usize) -> Option<Admitted> {
        let Some((semaphore, max)) = &self.budget else {
            return Some(Admitted { permit: None });
        };
        semaphore
            .clone()
            .try_acquire_many_owned(clamp(events, *max))
            .ok()
            .map(|permit| Admitted {
                permit: Some(permit),
            })
    }
}

fn clamp(events: usize, max: u32) -> u32 {
    u32::try_from(events).unwrap_or(u32::MAX).clamp(1, max)
}

impl Admitted {
    /// Settles the reservation on exactly `events` (clamped to the budget): gives back what
    /// was reserved too much, or takes what is missing; `false` when that does not fit.
    pub fn settle(&mut self, admission: &Admission, events: usize) -> bool {
        let (Some(permit), Some((semaphore, max))) = (self.permit.as_mut(), &admission.budget)
        else {
            return true;
        };
        let wanted = clamp(events, *max) as usize;
        let held = permit.num_permits();
        if wanted < held {
            drop(permit.split(held - wanted));
            true
        } else if wanted > held {
            match semaphore
                .clone()
                .try_acquire_many_owned((wanted - held) as u32)
            {
                Ok(more) => {
                    permit.merge(more);
                    true
                }
                Err(_) => false,
            }
        } else {
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_within_the_budget_and_gives_back_on_drop() {
        let admission = Admission::new(10);
        let a = admission.try_admit(6).expect("6 of 10 fit");
        assert!(admission.try_admit(5).is_none(), "6 + 5 > 10");
        let b = admission.try_admit(4).expect("6 + 4 fit");
        assert!(admission.try_admit(1).is_none());
        drop(a);
        assert!(admission.try_admit(6).is_some());
        drop(b);
        // A request larger than the budget still gets in when everything is free.
        assert!(admission.try_admit(1000).is_some());
    }

    #[test]
    fn a_reservation_settles_on_the_exact_count() {
        let admission = Admission::new(10);
        let mut a = admission
            .try_admit(Admission::estimate(Some(8 * EVENT_BYTES_HINT)))
            .unwrap();
        assert!(admission.try_admit(3).is_none(), "8 reserved");
        assert!(a.settle(&admission, 2), "fewer events than estimated");
        let b = admission.try_admit(8).expect("2 + 8 fit");
        assert!(!a.settle(&admission, 3), "one more does not fit");
        drop(b);
        assert!(a.settle(&admission, 10));
        assert!(admission.try_admit(1).is_none());
        drop(a);
        assert!(admission.try_admit(10).is_some());
    }

    #[test]
    fn estimates_from_the_body_size() {
        assert_eq!(Admission::estimate(None), 1);
        assert_eq!(Admission::estimate(Some(10)), 1);
        assert_eq!(Admission::estimate(Some(256_000)), 1000);
    }

    #[test]
    fn zero_means_unlimited() {
        let admission = Admission::new(0);
        assert_eq!(admission.limit(), 0);
        let mut held: Vec<_> = (0..100)
            .map(|_| admission.try_admit(1_000_000).expect("no limit"))
            .collect();
        assert!(held[0].settle(&admission, 5_000_000));
    }
}
