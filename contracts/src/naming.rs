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
}
