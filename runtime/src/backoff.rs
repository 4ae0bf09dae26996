//! Retrying with exponential backoff: the delay doubles after each failure, up to a cap.

use std::future::Future;
use std::time::Duration;

/// Delays that double from `first` up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Delays from `first`, doubling, never above `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        let first = first.min(max);
        Self {
            first,
            next: first,
            max,
        }
    }

    /// After a success: the next failure waits the first delay again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// What the services use while a server they need is unreachable: 200 ms doubling to
    /// 5 s.
    pub fn reconnect() -> Self {
        Self::new(Duration::from_millis(200), Duration::from_secs(5))
    }

    /// The delay before the next attempt; the one after it is twice as long (capped).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

/// Runs `step` until it succeeds, logging each failure as "cannot {what} yet" and waiting
/// with [`Backoff::reconnect`] between attempts.
pub async fn retry<T, E, F>(what: &str, mut step: impl FnMut() -> F) -> T
where
    E: std::fmt::Display,
    F: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::reconnect();
    loop {
        match step().await {
            Ok(value) => return value,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "cannot {what} yet");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let mut backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(30));
        let delays: Vec<u64> = (0..5).map(|_| backoff.next_delay().as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 30, 30]);
        backoff.reset();
        assert_eq!(backoff.next_delay().as_secs(), 5);
    }

    #[tokio::test]
    async fn retry_runs_until_the_step_succeeds() {
        let mut attempts = 0;
        let value = retry("count", || {
            attempts += 1;
            let attempt = attempts;
            async move {
                if attempt < 4 {
                    Err("not yet")
                } else {
                    Ok(attempt)
                }
            }
        })
        .await;
        assert_eq!(value, 4);
    }
}
