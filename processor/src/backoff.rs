//! The processor's backoff between attempts — 100 ms doubling to 5 s — and the wait that a
//! shutdown cuts short.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tally_runtime::Backoff;

/// The first delay after a failure.
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest delay between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The processor's delays between attempts: [`MIN_BACKOFF`] doubling to [`MAX_BACKOFF`].
pub fn backoff() -> Backoff {
    Backoff::new(MIN_BACKOFF, MAX_BACKOFF)
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
