//! The dead-letter publisher: a message the processor gives up on goes to the pipeline's
//! dead-letter stream (`TALLY_<PIPELINE>_DLQ`, subject `tally.<pipeline>.dlq.<site>`) with
//! headers saying why, each header one bounded line.

use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, Message};
use tally_contracts::stream::dead_letter;
use tally_contracts::{RuntimeConfig, naming, stream};
use uuid::Uuid;

use crate::poison::Poison;

/// Publishes the messages the processor gives up on to the pipeline's dead-letter stream,
/// creating that stream the first time (and again after a failed publish).
pub struct DeadLetters {
    js: jetstream::Context,
    config: RuntimeConfig,
    stream_ready: AtomicBool,
}

impl DeadLetters {
    /// A publisher to `config`'s dead-letter stream; the stream is made sure of at the first
    /// dead letter.
    pub fn new(js: jetstream::Context, config: RuntimeConfig) -> Self {
        Self {
            js,
            config,
            stream_ready: AtomicBool::new(false),
        }
    }

    /// Publishes `message`'s payload as a dead letter and waits for the dead-letter stream's
    /// acknowledgement. Returns the subject it went to, and whether the stream held it
    /// already.
    pub async fn publish(
        &self,
        message: &Message,
        poison: &Poison,
    ) -> Result<(String, bool), async_nats::Error> {
        let outcome = self.try_publish(message, poison).await;
        if outcome.is_err() {
            // Perhaps the stream is gone: make sure of it before the next dead letter.
            self.stream_ready.store(false, Ordering::Relaxed);
        }
        outcome
    }

    async fn try_publish(
        &self,
        message: &Message,
        poison: &Poison,
    ) -> Result<(String, bool), async_nats::Error> {
        if !self.stream_ready.load(Ordering::Relaxed) {
            stream::ensure_dead_letter_stream(&self.js, &self.config).await?;
            self.stream_ready.store(true, Ordering::Relaxed);
        }
        let info = message.info()?;
        // The site and id of the envelope; a payload that is not an envelope names none, even
        // if it holds a field called site_id.
        let envelope = (poison.kind != dead_letter::NOT_AN_EVENT)
            .then(|| serde_json::from_slice::<SiteAndId>(&message.payload).ok())
            .flatten();
        let subject = naming::dead_letter_subject(
            self.config.name(),
            envelope.as_ref().and_then(|e| e.site_id.as_deref()),
        );
        let mut headers = HeaderMap::new();
        headers.insert(dead_letter::REASON, header_text(&poison.reason));
        headers.insert(dead_letter::KIND, poison.kind);
        headers.insert(
            dead_letter::ORIGINAL_SUBJECT,
            header_text(message.subject.as_str()),
        );
        headers.insert(dead_letter::ORIGINAL_STREAM, info.stream);
        headers.insert(
            dead_letter::ORIGINAL_SEQUENCE,
            info.stream_sequence.to_string(),
        );
        headers.insert(dead_letter::DELIVERIES, info.delivered.to_string());
        if let Some(id) = envelope.and_then(|e| e.event_id) {
            headers.insert(dead_letter::EVENT_ID, id.to_string());
        }
        // A message dead-lettered twice (its ack was lost) is stored once.
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("{}:{}", info.stream, info.stream_sequence),
        );
        let ack = self
            .js
            .publish_with_headers(subject.clone(), headers, message.payload.clone())
            .await?
            .await?;
        Ok((subject, ack.duplicate))
    }
}

/// What a dead letter's subject and headers need from a payload that may not be an envelope.
#[derive(serde::Deserialize)]
struct SiteAndId {
    site_id: Option<String>,
    event_id: Option<Uuid>,
}

/// `text` as one header line: control characters become spaces, at most 1024 bytes.
fn header_text(text: &str) -> String {
    let mut line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.len() > 1024 {
        let mut end = 1024;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_one_bounded_line() {
        assert_eq!(header_text("a\r\nb\tc"), "a  b c");
        let long = "é".repeat(1000);
        let cut = header_text(&long);
        assert!(cut.len() <= 1024 && cut.chars().all(|c| c == 'é'));
    }
}
