//! Segment's HTTP Tracking API, for back-ends: `POST /segment/v1/{batch,track,page,screen,
//! identify,group,alias}` in Segment's JSON shape, the protocol of Segment's, RudderStack's
//! and Jitsu's SDKs. Mounted under `/segment` (an SDK's host is then
//! `http://collector/segment`) so that no route clashes with Tally's own `/v1/...`.
//!
//! The write key is a site's ingest key, sent as Segment sends it: HTTP Basic with the key
//! as the user name (or the body's `writeKey`), checked as any ingest key is. Each message becomes a Tally event and then
//! takes the path every event takes — [`crate::ingest::parse_events`] validates it exactly
//! as a native one — so limits, rate limits, identity, de-duplication and storage are the
//! same. What is mapped:
//!
//! | Segment | Tally |
//! |---|---|
//! | `messageId` | `event_id` (itself when a UUID, else a UUIDv5 of the site and the id, so a retry is the same event) |
//! | `type: track` + `event` | `event_type` = the event's name |
//! | `type: page` / `screen` | `event_type` `page_view` / `screen_view`; `properties.url`, `path`, `title`, `referrer` (else `context.page.*`) to the page fields; `name` to `properties.name` |
//! | `type: identify` / `group` / `alias` | `event_type` `identify` / `group` / `alias`; `traits` (identify, group) to `properties`, `groupId` / `previousId` to `properties` |
//! | `userId`, `anonymousId` | `user_id`, `visitor_id` |
//! | `properties` | `properties`, nested objects flattened to dotted keys and arrays kept as JSON text |
//! | `timestamp` (else `originalTimestamp`), `sentAt` | `timestamp`, moved by the clock skew `receivedAt − sentAt` |
//! | `context.userAgent`, `context.screen.width` / `height` | `user_agent`, `screen_width` / `screen_height` (read by the processor's enrichment) |
//!
//! Ignored: the rest of `context` (`ip`, `locale`, `library`, …), `integrations`, `options`.

use axum::http::{HeaderMap, header};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value};
use tally_runtime::access::Denied;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::api::ApiError;

/// The namespace of the UUIDv5 event ids of messages whose `messageId` is not a UUID.
const MESSAGE_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f2c_8d0e_4b6a_4c1e_9a57_3e0d_5b8f_21c4);

/// The Segment call a route takes: `batch`, or one message of that type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Batch,
    Single(&'static str),
}

/// The write key of a Segment request: HTTP Basic's user name, else the body's `writeKey`
/// (`body_key`, once the body is read); `None` when it has neither.
pub fn write_key(headers: &HeaderMap, body_key: Option<&str>) -> Result<Option<String>, Denied> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
        .map(|encoded| {
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .map(|text| text.split(':').next().unwrap_or_default().to_owned())
                .ok_or(Denied::InvalidKey(
                    "the Authorization header is not Basic base64",
                ))
        })
        .transpose()?;
    Ok(basic
        .filter(|k| !k.is_empty())
        .or_else(|| body_key.map(str::to_owned)))
}

/// A Segment request without a write key.
pub fn no_write_key() -> Denied {
    Denied::MissingKey(
        "the Segment API needs a site's ingest key as the write key (HTTP Basic user name)".into(),
    )
}

/// The body of a Segment call.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    #[serde(default)]
    batch: Option<Vec<Value>>,
    #[serde(default)]
    sent_at: Option<String>,
    #[serde(default)]
    write_key: Option<String>,
}

/// A Segment body read: its write key (if in the body) and the Tally events it becomes, as
/// the JSON array `parse_events` reads.
pub struct Translated {
    pub write_key: Option<String>,
    pub events: bytes::Bytes,
}

/// Reads a Segment body (already decompressed) as `call` takes it, and turns its messages
/// into Tally events for `site_id` (the key's site) received at `now`.
pub fn translate(
    call: Call,
    body: &[u8],
    site_id: Option<&str>,
    now: OffsetDateTime,
) -> Result<Translated, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidBody(format!("the body is not JSON: {e}")))?;
    let parsed: Body = serde_json::from_value(value.clone())
        .map_err(|e| ApiError::InvalidBody(format!("not a Segment message: {e}")))?;
    let messages = match call {
        Call::Batch => parsed.batch.ok_or_else(|| {
            ApiError::InvalidBody("a Segment batch needs a \"batch\" array".into())
        })?,
        Call::Single(kind) => {
            let mut message = value;
            if let Some(object) = message.as_object_mut() {
                object
                    .entry("type")
                    .or_insert_with(|| Value::String(kind.to_owned()));
            }
            vec![message]
        }
    };
    let events: Vec<Value> = messages
        .iter()
        .map(|message| event_of(message, parsed.sent_at.as_deref(), site_id, now))
        .collect();
    Ok(Translated {
        write_key: parsed.write_key,
        events: serde_json::to_vec(&events)
            .expect("JSON values serialize")
            .into(),
    })
}

/// One Segment message as a Tally event. What cannot be mapped is left for validation to
/// name (a message without `type` becomes an event without `event_type`, and so on).
fn event_of(
    message: &Value,
    batch_sent_at: Option<&str>,
    site_id: Option<&str>,
    now: OffsetDateTime,
) -> Value {
    let text = |name: &str| message.get(name).and_then(Value::as_str);
    let kind = text("type").unwrap_or_default();
    let mut properties = Map::new();
    let mut event = Map::new();
    let event_type = match kind {
        "track" => text("event").map(str::to_owned),
        "page" => Some("page_view".to_owned()),
        "screen" => Some("screen_view".to_owned()),
        "identify" | "group" | "alias" => Some(kind.to_owned()),
        _ => None,
    };
    if let Some(event_type) = event_type {
        event.insert("event_type".into(), Value::String(event_type));
    }
    if let Some(site_id) = site_id {
        event.insert("site_id".into(), Value::String(site_id.to_owned()));
    }
    if let Some(id) = text("messageId") {
        let uuid = Uuid::try_parse(id).unwrap_or_else(|_| {
            Uuid::new_v5(
                &MESSAGE_ID_NAMESPACE,
                format!("{}\0{id}", site_id.unwrap_or_default()).as_bytes(),
            )
        });
        event.insert("event_id".into(), Value::String(uuid.to_string()));
    }
    for (from, to) in [("userId", "user_id"), ("anonymousId", "visitor_id")] {
        match message.get(from) {
            Some(Value::String(s)) => {
                event.insert(to.into(), Value::String(s.clone()));
            }
            // Segment allows numbers as ids.
            Some(Value::Number(n)) => {
                event.insert(to.into(), Value::String(n.to_string()));
            }
            _ => {}
        }
    }
    if let Some(timestamp) = corrected_timestamp(message, batch_sent_at, now) {
        event.insert("timestamp".into(), Value::String(timestamp));
    }
    let source = match kind {
        "identify" | "group" => message.get("traits"),
        _ => message.get("properties"),
    };
    if let Some(Value::Object(object)) = source {
        flatten("", object, &mut properties);
    }
    if matches!(kind, "page" | "screen") {
        let page = message.pointer("/context/page");
        for field in ["url", "path", "title", "referrer"] {
            let value = properties
                .remove(field)
                .or_else(|| page.and_then(|p| p.get(field)).cloned());
            if let Some(Value::String(s)) = value {
                event.insert(field.into(), Value::String(s));
            }
        }
        if let Some(name) = text("name") {
            properties.insert("name".into(), Value::String(name.to_owned()));
        }
    }
    for (from, to) in [("groupId", "group_id"), ("previousId", "previous_id")] {
        if let Some(Value::String(s)) = message.get(from) {
            properties.insert(to.into(), Value::String(s.clone()));
        }
    }
    // The visitor's browser and screen, which the processor's enrichment reads.
    if let Some(Value::String(agent)) = message.pointer("/context/userAgent") {
        event.insert("user_agent".into(), Value::String(agent.clone()));
    }
    for (from, to) in [("width", "screen_width"), ("height", "screen_height")] {
        // A size Tally cannot hold is left out rather than refusing the message.
        let size = message.pointer(&format!("/context/screen/{from}"));
        if let Some(size) = size
            .and_then(Value::as_u64)
            .filter(|n| *n <= u16::MAX.into())
        {
            event.insert(to.into(), size.into());
        }
    }
    if !properties.is_empty() {
        event.insert("properties".into(), Value::Object(properties));
    }
    Value::Object(event)
}

/// Segment's clock-skew correction: the message's `timestamp` (else `originalTimestamp`)
/// moved by how far the server's clock is ahead of the client's at sending (`now −
/// sentAt`). Without a `sentAt` the timestamp is taken as it is; without a timestamp, none
/// (the server's time is used).
fn corrected_timestamp(
    message: &Value,
    batch_sent_at: Option<&str>,
    now: OffsetDateTime,
) -> Option<String> {
    let field = |name: &str| message.get(name).and_then(Value::as_str);
    let timestamp = field("timestamp").or_else(|| field("originalTimestamp"))?;
    let Ok(at) = OffsetDateTime::parse(timestamp, &Rfc3339) else {
        // Validation names the bad value.
        return Some(timestamp.to_owned());
    };
    let sent_at = field("sentAt")
        .or(batch_sent_at)
        .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok());
    let corrected = match sent_at {
        Some(sent) => at + (now - sent),
        None => at,
    };
    corrected.format(&Rfc3339).ok()
}

/// `object` flattened into `out`: nested objects as dotted keys, arrays as their JSON text,
/// so that Segment's nested properties fit Tally's flat ones.
fn flatten(prefix: &str, object: &Map<String, Value>, out: &mut Map<String, Value>) {
    for (key, value) in object {
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            Value::Object(inner) => flatten(&name, inner, out),
            Value::Array(_) => {
                out.insert(name, Value::String(value.to_string()));
            }
            other => {
                out.insert(name, other.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::parse("2026-12-04T12:00:10Z", &Rfc3339).unwrap()
    }

    fn events(call: Call, body: Value) -> Vec<Value> {
        let translated = translate(call, body.to_string().as_bytes(), Some("shop"), now()).unwrap();
        serde_json::from_slice(&translated.events).unwrap()
    }

    #[test]
    fn messages_map_to_events() {
        let body = json!({
            "batch": [
                {"type": "track", "event": "Order Completed", "messageId": "m-1", "userId": "u1",
                 "properties": {"revenue": 12.5, "items": [1, 2], "shipping": {"method": "post"}},
                 "timestamp": "2026-12-04T12:00:00Z"},
                {"type": "page", "name": "Pricing", "anonymousId": "a1",
                 "properties": {"url": "https://shop.example.com/pricing", "path": "/pricing"}},
                {"type": "identify", "userId": 7, "traits": {"plan": "pro"}},
                {"type": "screen", "name": "Home", "context": {"page": {"path": "/app"}}},
            ],
            "sentAt": "2026-12-04T12:00:05Z",
            "writeKey": "k",
        });
        let mapped = events(Call::Batch, body);
        assert_eq!(mapped[0]["event_type"], "Order Completed");
        assert_eq!(mapped[0]["site_id"], "shop");
        assert_eq!(mapped[0]["user_id"], "u1");
        // Sent 5 s after the event by a clock 5 s behind the server's: moved by 5 s.
        assert_eq!(mapped[0]["timestamp"], "2026-12-04T12:00:05Z");
        assert_eq!(
            mapped[0]["properties"],
            json!({"revenue": 12.5, "items": "[1,2]", "shipping.method": "post"})
        );
        let id = mapped[0]["event_id"].as_str().unwrap();
        assert_eq!(
            id,
            events(
                Call::Batch,
                json!({"batch": [{"type": "track", "event": "x", "messageId": "m-1"}]})
            )[0]["event_id"]
        );
        assert_eq!(mapped[1]["event_type"], "page_view");
        assert_eq!(mapped[1]["path"], "/pricing");
        assert_eq!(mapped[1]["visitor_id"], "a1");
        assert_eq!(mapped[1]["properties"], json!({"name": "Pricing"}));
        assert_eq!(mapped[2]["event_type"], "identify");
        assert_eq!(mapped[2]["user_id"], "7");
        assert_eq!(mapped[2]["properties"], json!({"plan": "pro"}));
        assert_eq!(mapped[3]["event_type"], "screen_view");
        assert_eq!(mapped[3]["path"], "/app");
    }

    #[test]
    fn a_single_call_takes_its_route_type_and_a_uuid_message_id_as_is() {
        let id = "0193a7e4-5b1c-7d2e-8f00-1234567890ab";
        let events = events(
            Call::Single("track"),
            json!({"event": "Signed Up", "messageId": id}),
        );
        assert_eq!(events[0]["event_type"], "Signed Up");
        assert_eq!(events[0]["event_id"], id);
    }

    #[test]
    fn a_body_that_is_no_segment_call_is_refused_with_the_reason() {
        let refused = |call, body: &str| match translate(call, body.as_bytes(), None, now()) {
            Err(ApiError::InvalidBody(message)) => message,
            other => panic!("{:?}", other.map(|t| t.events)),
        };
        assert!(refused(Call::Batch, "nope").contains("not JSON"));
        assert!(refused(Call::Batch, "{}").contains("\"batch\" array"));
        assert!(refused(Call::Batch, r#"{"batch": 3}"#).contains("not a Segment message"));
    }
}
