//! The event envelope: what the collector publishes on `tally.<pipeline>.events.<site_id>`
//! and the processor stores. JSON, one event per message; the message's `Nats-Msg-Id`
//! header carries `event_id` so JetStream drops re-published duplicates.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// One validated event. Optional text fields are empty strings, not absent, so that every
/// stored row has the same shape.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Event {
    pub event_id: Uuid,
    pub site_id: String,
    pub event_type: String,
    /// When the event happened (client clock, or server time when the client gave none),
    /// Unix milliseconds.
    pub timestamp_ms: i64,
    /// When the collector accepted the event, Unix milliseconds.
    pub received_at_ms: i64,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub referrer: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub user_id: String,
    #[serde(default)]
    pub visitor_id: String,
    #[serde(default)]
    pub session_id: String,
    /// A flat JSON object, kept as its JSON text.
    pub properties: Box<RawValue>,
    /// The visitor's browser as its `User-Agent` names it: the request's header for browser
    /// requests, or what a back-end passes on. The processor parses it into the enrichment
    /// columns; it is not stored itself.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_agent: String,
    /// The screen's size in CSS pixels, as the tracker reports it (0: unknown).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub screen_width: u16,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub screen_height: u16,
    /// Sent by a known bot or crawler to a site that flags bots (`spec.bots: flag`); absent
    /// (false) otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bot: bool,
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

impl Event {
    /// The JSON text of an empty `properties` object.
    pub fn empty_properties() -> Box<RawValue> {
        RawValue::from_string("{}".to_owned()).expect("{} is JSON")
    }
}
