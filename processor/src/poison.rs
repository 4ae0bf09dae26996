//! Messages that can never be stored: [`Poison`] says why, and [`decode`] finds the
//! payloads that are not envelopes, or envelopes no table can hold.

use tally_contracts::Event;
use tally_contracts::stream::dead_letter;

/// Why a message cannot be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Poison {
    /// One of the `tally_contracts::stream::dead_letter` kinds.
    pub kind: &'static str,
    /// Why, in words, for the logs and the dead letter's headers.
    pub reason: String,
}

/// Earliest event time every table can hold: 1970-01-01 (`Date` and `DateTime` start there).
const EARLIEST_MS: i64 = 0;
/// Latest: 2106-02-07T06:28:15.999Z, the end of `DateTime` (the hourly rollup's key).
const LATEST_MS: i64 = u32::MAX as i64 * 1000 + 999;

/// The envelope of a message, when it is one that every table can hold. ClickHouse stores an
/// out-of-range time without complaint, but wrapped to another date: such an envelope (which
/// the collector never writes) is refused here rather than counted on the wrong day.
pub fn decode(payload: &[u8]) -> Result<Event, Poison> {
    let event: Event = serde_json::from_slice(payload).map_err(|e| Poison {
        kind: dead_letter::NOT_AN_EVENT,
        reason: format!("not a Tally event envelope: {e}"),
    })?;
    for (field, ms) in [
        ("timestamp_ms", event.timestamp_ms),
        ("received_at_ms", event.received_at_ms),
    ] {
        if !(EARLIEST_MS..=LATEST_MS).contains(&ms) {
            return Err(Poison {
                kind: dead_letter::INVALID_EVENT,
                reason: format!(
                    "{field} {ms} is outside 1970-01-01..2106-02-07, the range the tables hold"
                ),
            });
        }
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_no_table_can_hold_are_poison() {
        let envelope = |ts: i64| {
            format!(
                r#"{{"event_id":"0193a7e4-5b1c-7d2e-8f00-1234567890ab","site_id":"shop","event_type":"x",
                   "timestamp_ms":{ts},"received_at_ms":1780000000000,"properties":{{}}}}"#
            )
        };
        assert!(decode(envelope(1_780_000_000_000).as_bytes()).is_ok());
        assert!(decode(envelope(LATEST_MS).as_bytes()).is_ok());
        for ts in [-1, LATEST_MS + 1, i64::MAX, i64::MIN] {
            let poison = decode(envelope(ts).as_bytes()).unwrap_err();
            assert_eq!(poison.kind, dead_letter::INVALID_EVENT, "{ts}");
        }
        for junk in [
            &b"not json"[..],
            b"{}",
            b"[1]",
            br#"{"event_id":"nope"}"#,
            b"\xff",
        ] {
            assert_eq!(
                decode(junk).unwrap_err().kind,
                dead_letter::NOT_AN_EVENT,
                "{junk:?}"
            );
        }
    }
}
