//! The mapping file: how a foreign record becomes Tally events. YAML:
//!
//! ```yaml
//! site_id: shop            # optional: the site of every event (--site overrides it)
//! each: /messages          # optional: a JSON pointer to an array; each element is an event
//! fields:                  # Tally's fields of an event
//!   event_type: {value: message}
//!   timestamp: {field: /sent_at, format: rfc3339}
//!   session_id: ^/conversation_id
//! properties:              # the event's properties
//!   role: /role
//!   text: text
//! ```
//!
//! A source is a JSON pointer (`/a/b`), a top-level field name (`a`), or, with `each`, `^`
//! and a pointer into the whole record (`^/conversation_id`) rather than the element. The
//! long form `{field, value, format, default}` takes a source (`field`) or a constant
//! (`value`), the timestamp's `format`, and a `default` when the source is missing.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};
use time::format_description::OwnedFormatItem;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, PrimitiveDateTime};

/// The Tally fields a mapping may set (the collector's names).
pub const FIELDS: &[&str] = &[
    "event_type",
    "timestamp",
    "path",
    "url",
    "referrer",
    "title",
    "user_id",
    "visitor_id",
    "session_id",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    site_id: Option<String>,
    #[serde(default)]
    each: Option<String>,
    #[serde(default)]
    fields: BTreeMap<String, Spec>,
    #[serde(default)]
    properties: BTreeMap<String, Spec>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Spec {
    Source(String),
    Long(LongSpec),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LongSpec {
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    value: Option<Value>,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    default: Option<Value>,
}

/// Where a value comes from.
#[derive(Debug, Clone)]
enum Origin {
    /// A JSON pointer into the element (or the record, without `each`).
    Item(String),
    /// A JSON pointer into the whole record.
    Record(String),
    Constant(Value),
}

/// How a timestamp is written in the source.
#[derive(Debug, Clone)]
pub enum TimeFormat {
    Rfc3339,
    EpochSeconds,
    EpochMillis,
    /// A strftime pattern (`%Y-%m-%d %H:%M:%S`), UTC unless it has `%z`.
    Pattern(String, OwnedFormatItem, bool),
}

#[derive(Debug, Clone)]
struct Rule {
    from: Origin,
    default: Option<Value>,
    format: Option<TimeFormat>,
}

/// A checked mapping.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub site_id: Option<String>,
    each: Option<String>,
    fields: Vec<(String, Rule)>,
    properties: Vec<(String, Rule)>,
}

/// A reference (`/a/b`, `a`, `^/a`) as a JSON pointer, and whether it is into the record.
fn reference(text: &str, each: bool) -> Result<Origin, String> {
    let (record, rest) = match text.strip_prefix('^') {
        Some(rest) if each => (true, rest),
        Some(_) => {
            return Err(format!(
                "{text:?}: `^` reads the record outside `each`, and there is no `each`"
            ));
        }
        None => (false, text),
    };
    let pointer = if rest.starts_with('/') {
        rest.to_owned()
    } else if rest.is_empty() {
        return Err("an empty source".into());
    } else {
        format!("/{}", rest.replace('~', "~0").replace('/', "~1"))
    };
    Ok(if record {
        Origin::Record(pointer)
    } else {
        Origin::Item(pointer)
    })
}

fn rule(name: &str, spec: Spec, each: bool, is_timestamp: bool) -> Result<Rule, String> {
    let long = match spec {
        Spec::Source(text) => LongSpec {
            field: Some(text),
            value: None,
            format: None,
            default: None,
        },
        Spec::Long(long) => long,
    };
    let from = match (long.field, long.value) {
        (Some(field), None) => reference(&field, each).map_err(|e| format!("{name}: {e}"))?,
        (None, Some(value)) => Origin::Constant(value),
        (Some(_), Some(_)) => return Err(format!("{name}: give `field` or `value`, not both")),
        (None, None) => {
            return Err(format!(
                "{name}: give a `field` (a source) or a `value` (a constant)"
            ));
        }
    };
    let format = match long.format {
        None if is_timestamp => Some(TimeFormat::Rfc3339),
        None => None,
        Some(_) if !is_timestamp => return Err(format!("{name}: only the timestamp has a format")),
        Some(text) => Some(match text.as_str() {
            "rfc3339" => TimeFormat::Rfc3339,
            "epoch_seconds" => TimeFormat::EpochSeconds,
            "epoch_millis" => TimeFormat::EpochMillis,
            pattern => {
                let items = time::format_description::parse_strftime_owned(pattern).map_err(|e| {
                    format!("{name}: format {pattern:?} is neither rfc3339, epoch_seconds, epoch_millis nor a strftime pattern: {e}")
                })?;
                TimeFormat::Pattern(pattern.to_owned(), items, pattern.contains("%z"))
            }
        }),
    };
    Ok(Rule {
        from,
        default: long.default,
        format,
    })
}

impl Mapping {
    /// Reads a mapping file's text; the error names what is wrong and where.
    pub fn parse(yaml: &str) -> Result<Self, String> {
        let file: File = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        let each = file.each.is_some();
        if let Some(pointer) = &file.each
            && !pointer.starts_with('/')
        {
            return Err(format!(
                "each: {pointer:?} must be a JSON pointer such as /messages"
            ));
        }
        let mut fields = Vec::new();
        for (name, spec) in file.fields {
            if !FIELDS.contains(&name.as_str()) {
                return Err(format!(
                    "fields.{name}: not a Tally field (use {})",
                    FIELDS.join(", ")
                ));
            }
            let is_timestamp = name == "timestamp";
            fields.push((
                name.clone(),
                rule(&format!("fields.{name}"), spec, each, is_timestamp)?,
            ));
        }
        if !fields.iter().any(|(n, _)| n == "event_type") {
            return Err("fields.event_type is required (a source, or {value: <type>})".into());
        }
        let mut properties = Vec::new();
        for (name, spec) in file.properties {
            properties.push((
                name.clone(),
                rule(&format!("properties.{name}"), spec, each, false)?,
            ));
        }
        Ok(Self {
            site_id: file.site_id,
            each: file.each,
            fields,
            properties,
        })
    }

    /// The events of one record, each the JSON object the collector takes (without
    /// `event_id` and `site_id`, which the importer adds), or why it cannot be made.
    pub fn events(&self, record: &Value) -> Result<Vec<Map<String, Value>>, String> {
        let items: Vec<&Value> = match &self.each {
            None => vec![record],
            Some(pointer) => match record.pointer(pointer) {
                Some(Value::Array(items)) => items.iter().collect(),
                Some(_) => return Err(format!("{pointer} is not an array")),
                None => return Err(format!("the record has no {pointer}")),
            },
        };
        items
            .into_iter()
            .map(|item| self.event(record, item))
            .collect()
    }

    fn event(&self, record: &Value, item: &Value) -> Result<Map<String, Value>, String> {
        let mut event = Map::new();
        for (name, rule) in &self.fields {
            if let Some(value) = value_of(rule, record, item, &format!("fields.{name}"))? {
                event.insert(name.clone(), value);
            }
        }
        let mut properties = Map::new();
        for (name, rule) in &self.properties {
            if let Some(value) = value_of(rule, record, item, &format!("properties.{name}"))? {
                properties.insert(name.clone(), value);
            }
        }
        event.insert("properties".into(), Value::Object(properties));
        Ok(event)
    }
}

fn value_of(
    rule: &Rule,
    record: &Value,
    item: &Value,
    name: &str,
) -> Result<Option<Value>, String> {
    let found = match &rule.from {
        Origin::Item(pointer) => item.pointer(pointer).cloned(),
        Origin::Record(pointer) => record.pointer(pointer).cloned(),
        Origin::Constant(value) => Some(value.clone()),
    };
    let Some(value) = found
        .filter(|v| !v.is_null())
        .or_else(|| rule.default.clone())
    else {
        return Ok(None);
    };
    match &rule.format {
        None => Ok(Some(value)),
        Some(format) => timestamp(&value, format)
            .map(Some)
            .map_err(|e| format!("{name}: {e}")),
    }
}

/// A source timestamp as RFC 3339 (what the collector's validation reads).
pub fn timestamp(value: &Value, format: &TimeFormat) -> Result<Value, String> {
    let instant = match format {
        TimeFormat::Rfc3339 => {
            let text = value
                .as_str()
                .ok_or_else(|| format!("{value} is not an RFC 3339 text"))?;
            OffsetDateTime::parse(text, &Rfc3339)
                .map_err(|_| format!("{text:?} is not an RFC 3339 date-time"))?
        }
        TimeFormat::EpochSeconds | TimeFormat::EpochMillis => {
            let text = match value {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.trim().to_owned(),
                _ => String::new(),
            };
            let unit: i128 = if matches!(format, TimeFormat::EpochSeconds) {
                1_000_000_000
            } else {
                1_000_000
            };
            // Whole numbers exactly; fractions (1.5 s) to the nanosecond.
            let nanos = match (text.parse::<i128>(), text.parse::<f64>()) {
                (Ok(whole), _) => whole.checked_mul(unit),
                (Err(_), Ok(x)) if x.is_finite() => Some((x * unit as f64).round() as i128),
                _ => None,
            }
            .ok_or_else(|| format!("{value} is not a number of seconds or milliseconds"))?;
            OffsetDateTime::from_unix_timestamp_nanos(nanos)
                .map_err(|_| format!("{value} is out of range"))?
        }
        TimeFormat::Pattern(pattern, items, with_offset) => {
            let text = value
                .as_str()
                .ok_or_else(|| format!("{value} is not a text"))?;
            let bad = |_| format!("{text:?} does not match {pattern:?}");
            if *with_offset {
                OffsetDateTime::parse(text, items).map_err(bad)?
            } else {
                PrimitiveDateTime::parse(text, items)
                    .map_err(bad)?
                    .assume_utc()
            }
        }
    };
    instant
        .to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .map(Value::String)
        .map_err(|e| format!("cannot write {value} as RFC 3339: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CONVERSATIONS: &str = r#"
site_id: bot
each: /messages
fields:
  event_type: {value: message}
  timestamp: {field: /at, format: "%Y-%m-%d %H:%M:%S"}
  session_id: ^/id
  user_id: ^/user
properties:
  role: role
  found: {field: /found, default: false}
"#;

    #[test]
    fn a_record_expands_into_its_messages() {
        let mapping = Mapping::parse(CONVERSATIONS).unwrap();
        assert_eq!(mapping.site_id.as_deref(), Some("bot"));
        let record = json!({"id": "c1", "user": "u1", "messages": [
            {"role": "user", "at": "2026-03-01 10:00:00"},
            {"role": "bot", "at": "2026-03-01 10:00:02", "found": true},
        ]});
        let events = mapping.events(&record).unwrap();
        assert_eq!(
            Value::Array(events.into_iter().map(Value::Object).collect()),
            json!([
                {"event_type": "message", "timestamp": "2026-03-01T10:00:00Z", "session_id": "c1", "user_id": "u1",
                 "properties": {"role": "user", "found": false}},
                {"event_type": "message", "timestamp": "2026-03-01T10:00:02Z", "session_id": "c1", "user_id": "u1",
                 "properties": {"role": "bot", "found": true}},
            ])
        );
        assert_eq!(
            mapping.events(&json!({"id": "c2"})).unwrap_err(),
            "the record has no /messages"
        );
        let bad = json!({"id": "c3", "messages": [{"at": "yesterday"}]});
        assert_eq!(
            mapping.events(&bad).unwrap_err(),
            r#"fields.timestamp: "yesterday" does not match "%Y-%m-%d %H:%M:%S""#
        );
    }

    #[test]
    fn timestamps_in_each_format() {
        let t = |v: Value, f: &str| {
            let mapping = Mapping::parse(&format!(
                "fields: {{event_type: {{value: x}}, timestamp: {{field: t, format: {f:?}}}}}"
            ))
            .unwrap();
            mapping
                .events(&json!({ "t": v }))
                .map(|e| e[0]["timestamp"].clone())
        };
        assert_eq!(
            t(json!(1_772_359_200), "epoch_seconds").unwrap(),
            "2026-03-01T10:00:00Z"
        );
        assert_eq!(
            t(json!("1772359200123"), "epoch_millis").unwrap(),
            "2026-03-01T10:00:00.123Z"
        );
        assert_eq!(
            t(json!("2026-03-01T12:00:00+02:00"), "rfc3339").unwrap(),
            "2026-03-01T10:00:00Z"
        );
        assert_eq!(
            t(json!("01/03/2026 10:00 +0100"), "%d/%m/%Y %H:%M %z").unwrap(),
            "2026-03-01T09:00:00Z"
        );
        assert!(t(json!(true), "epoch_seconds").is_err());
    }

    #[test]
    fn mistakes_in_the_mapping_are_named() {
        let err = |yaml: &str| Mapping::parse(yaml).unwrap_err();
        assert!(
            err("fields: {colour: /c, event_type: {value: x}}")
                .contains("fields.colour: not a Tally field")
        );
        assert!(err("fields: {path: /p}").contains("fields.event_type is required"));
        assert!(err("fields: {event_type: ^/t}").contains("there is no `each`"));
        assert!(
            err("fields: {event_type: {value: x}, timestamp: {field: t, format: \"%Q\"}}")
                .contains("strftime")
        );
        assert!(
            err("fields: {event_type: {value: x}}\nextra: 1").contains("unknown field `extra`")
        );
    }
}
