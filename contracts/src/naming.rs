//! Names derived from a pipeline's name: the JetStream stream and subjects, the durable
//! consumer and the ClickHouse database.
//!
//! Pipeline names are Kubernetes object names (lower-case letters, digits, `-` and `.`);
//! characters that NATS or ClickHouse identifiers cannot hold become `_`.

/// The durable pull consumer that all processor replicas of a pipeline share.
pub const CONSUMER_NAME: &str = "tally-processor";

fn identifier(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The subject token for a pipeline: its name with `.` (a subject separator) replaced.
fn subject_token(pipeline: &str) -> String {
    pipeline.replace(['.', '*', '>', ' '], "_")
}

/// `TALLY_<PIPELINE>`: the stream that holds a pipeline's events.
pub fn stream_name(pipeline: &str) -> String {
    format!("TALLY_{}", identifier(pipeline).to_ascii_uppercase())
}

/// `tally.<pipeline>.events.<site_id>`: where one site's events are published.
pub fn event_subject(pipeline: &str, site_id: &str) -> String {
    format!("tally.{}.events.{site_id}", subject_token(pipeline))
}

/// `tally.<pipeline>.events.>`: every event subject of a pipeline (the stream's subjects).
pub fn event_subjects(pipeline: &str) -> String {
    format!("tally.{}.events.>", subject_token(pipeline))
}

/// `TALLY_<PIPELINE>_SALTS`: the JetStream key-value bucket of the daily salts of `hash`
/// visitor ids.
pub fn salt_bucket(pipeline: &str) -> String {
    format!("{}_SALTS", stream_name(pipeline))
}

/// `TALLY_<PIPELINE>_IMPORTS`: the key-value bucket of `tally-import`'s checkpoints, one per
/// imported object (its ETag and how far its records went).
pub fn import_checkpoint_bucket(pipeline: &str) -> String {
    format!("{}_IMPORTS", stream_name(pipeline))
}

/// `TALLY_<PIPELINE>_IMPORT_RUNS`: the key-value bucket of `tally-import`'s runs (their
/// status, kept after they end).
pub fn import_run_bucket(pipeline: &str) -> String {
    format!("{}_IMPORT_RUNS", stream_name(pipeline))
}

/// The site token of a dead letter whose payload names no usable site (not an envelope).
pub const UNKNOWN_SITE: &str = "unknown";

/// `TALLY_<PIPELINE>_DLQ`: the stream that keeps a pipeline's dead letters — messages the
/// processor gave up on after `spec.processor.maxDeliver` deliveries. Its subjects are not
/// event subjects, so the events stream never captures a dead letter.
pub fn dead_letter_stream_name(pipeline: &str) -> String {
    format!("{}_DLQ", stream_name(pipeline))
}

/// `tally.<pipeline>.dlq.<site_id>`: where a dead letter of one site is published. A site id
/// that cannot be one subject token (empty, or holding `.`, `*`, `>` or white space) and a
/// payload that names no site give [`UNKNOWN_SITE`].
pub fn dead_letter_subject(pipeline: &str, site_id: Option<&str>) -> String {
    let site = site_id
        .filter(|s| {
            !s.is_empty()
                && s.len() <= 256
                && !s
                    .chars()
                    .any(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control())
        })
        .unwrap_or(UNKNOWN_SITE);
    format!("tally.{}.dlq.{site}", subject_token(pipeline))
}

/// `tally.<pipeline>.dlq.>`: every dead-letter subject of a pipeline (the DLQ stream's
/// subjects).
pub fn dead_letter_subjects(pipeline: &str) -> String {
    format!("tally.{}.dlq.>", subject_token(pipeline))
}

/// `tally_<pipeline>`: the default ClickHouse database of a pipeline.
pub fn default_database(pipeline: &str) -> String {
    format!("tally_{}", identifier(pipeline))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_identifiers() {
        assert_eq!(stream_name("web-prod.eu"), "TALLY_WEB_PROD_EU");
        assert_eq!(
            event_subject("web-prod.eu", "shop"),
            "tally.web-prod_eu.events.shop"
        );
        assert_eq!(event_subjects("web"), "tally.web.events.>");
        assert_eq!(default_database("web-prod"), "tally_web_prod");
    }

    #[test]
    fn dead_letters_live_outside_the_event_subjects() {
        assert_eq!(
            dead_letter_stream_name("web-prod.eu"),
            "TALLY_WEB_PROD_EU_DLQ"
        );
        assert_eq!(
            dead_letter_subject("web-prod.eu", Some("shop")),
            "tally.web-prod_eu.dlq.shop"
        );
        assert_eq!(dead_letter_subject("web", None), "tally.web.dlq.unknown");
        for bad in ["", "a.b", "a b", "*", ">", "a\r\nb"] {
            assert_eq!(
                dead_letter_subject("web", Some(bad)),
                "tally.web.dlq.unknown",
                "{bad:?}"
            );
        }
        assert_eq!(dead_letter_subjects("web"), "tally.web.dlq.>");
        // The events stream's filter `tally.web.events.>` never matches a dead letter.
        assert!(!dead_letter_subject("web", Some("events")).starts_with("tally.web.events."));
    }
}
