//! The processor's backoff between attempts — 100 ms doubling to 5 s — and the wait that a
//! shutdown cuts short.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// The first delay after a failure.
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest delay between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The delay after `delay`: twice as long, at most [`MAX_BACKOFF`].
pub fn doubled(delay: Duration) -> Duration {
    (delay * 2).min(MAX_BACKOFF)
}

/// Asked to stop while a batch was still unwritten; its messages will be redelivered.
pub struct Interrupted;

/// Sleeps for `delay`; returns early with `Interrupted` when asked to stop.
pub async fn wait_unless_stopped(
    delay: Duration,
    shutdown: &mut Pin<&mut impl Future<Output = ()>>,
) -> Result<(), Interrupted> {
    tokio::select! {
        _ = shutdown.as_mut() => Err(Interrupted),
        _ = tokio::time::sleep(delay) => Ok(()),
    }
}
