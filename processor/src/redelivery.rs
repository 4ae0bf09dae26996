//! The redelivery policy of a message that cannot be stored: NAK'd with a delay growing
//! from 100 ms to 5 s while JetStream has delivered it fewer than `maxDeliver` times; on
//! its `maxDeliver`th delivery published to the dead-letter stream and then acknowledged,
//! only after the dead-letter stream confirmed it.

use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};

use crate::backoff::{MAX_BACKOFF, MIN_BACKOFF};
use crate::dead_letter::DeadLetters;
use crate::metrics::Metrics;
use crate::poison::Poison;

/// What becomes of a message that could not be stored on one of its deliveries.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// NAK it: JetStream delivers it again after this delay.
    Redeliver(Duration),
    /// Publish it to the dead-letter stream, then acknowledge it.
    DeadLetter,
}

/// The verdict on a message that could not be stored on its `delivered`th delivery, when
/// `max_deliver` deliveries are allowed.
pub fn verdict(delivered: i64, max_deliver: i64) -> Verdict {
    if delivered < max_deliver {
        Verdict::Redeliver(nak_delay(delivered))
    } else {
        Verdict::DeadLetter
    }
}

/// A message that cannot be stored: NAK'd for a later delivery, or on its `maxDeliver`th
/// delivery dead-lettered and then acknowledged.
pub async fn give_back(
    message: &Message,
    poison: &Poison,
    max_deliver: i64,
    dead_letters: &DeadLetters,
    metrics: &Metrics,
) {
    let delivered = message.info().map(|i| i.delivered).unwrap_or(i64::MAX);
    metrics.count_poison();
    if let Verdict::Redeliver(delay) = verdict(delivered, max_deliver) {
        tracing::warn!(subject = %message.subject, delivered, kind = poison.kind, reason = %poison.reason, retry_in = ?delay, "a message cannot be stored; JetStream will deliver it again");
        if let Err(e) = message.ack_with(AckKind::Nak(Some(delay))).await {
            tracing::warn!(error = %e, "NAK failed; the message comes back after the ack wait");
        }
        return;
    }
    match dead_letters.publish(message, poison).await {
        Ok((subject, duplicate)) => {
            if duplicate {
                // Dead-lettered before, but its acknowledgement was lost.
                tracing::warn!(subject = %message.subject, dead_letter_subject = %subject, delivered, "the dead-letter stream held this message already");
            } else {
                metrics.count_dead_lettered();
                tracing::error!(subject = %message.subject, dead_letter_subject = %subject, delivered, kind = poison.kind, reason = %poison.reason, "dead-lettered a message that cannot be stored");
            }
            if let Err(e) = message.ack().await {
                // It comes back, and is dead-lettered again: the dead-letter stream drops
                // the copy (same Nats-Msg-Id within its duplicate window).
                tracing::warn!(error = %e, "acknowledging a dead-lettered message failed");
            }
        }
        Err(e) => {
            metrics.count_dead_letter_failure();
            tracing::warn!(error = %e, subject = %message.subject, "cannot publish a dead letter; JetStream will deliver the message again");
            if let Err(e) = message.ack_with(AckKind::Nak(Some(MAX_BACKOFF))).await {
                tracing::warn!(error = %e, "NAK failed; the message comes back after the ack wait");
            }
        }
    }
}

/// The redelivery delay of a message that could not be stored on its `delivered`th
/// delivery: 100 ms doubling to 5 s.
fn nak_delay(delivered: i64) -> Duration {
    let doublings = u32::try_from(delivered.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    (MIN_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redelivery_delays_double_up_to_five_seconds() {
        let delays: Vec<u128> = [1, 2, 3, 4, 7, 8, 1000, i64::MAX]
            .into_iter()
            .map(|d| nak_delay(d).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 5000, 5000, 5000, 5000]);
        assert_eq!(nak_delay(0), MIN_BACKOFF);
    }

    #[test]
    fn the_max_deliver_th_delivery_is_dead_lettered() {
        assert_eq!(verdict(1, 3), Verdict::Redeliver(MIN_BACKOFF));
        assert_eq!(verdict(2, 3), Verdict::Redeliver(MIN_BACKOFF * 2));
        assert_eq!(verdict(3, 3), Verdict::DeadLetter);
        assert_eq!(verdict(1, 1), Verdict::DeadLetter);
        // No delivery count: as if delivered without end.
        assert_eq!(verdict(i64::MAX, 5), Verdict::DeadLetter);
    }
}
