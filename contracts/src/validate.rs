//! Validates one event's JSON and turns it into the [`Event`] envelope: the collector's
//! check of every posted event, and `tally-import`'s of every imported record. Every problem of an
//! event is reported at once, each naming its field; camelCase spellings and a few common
//! aliases are accepted for every field.

use std::borrow::Cow;
use std::fmt;

use crate::access::Grant;
use crate::{Event, RuntimeConfig, schema::PAGE_VIEW};
use serde::Serialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use tally_crds::{AnalyticsSiteSpec, KeyScope};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

/// Limits on the text of one event.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_properties_bytes: usize,
}

/// One thing wrong with an event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    pub field: &'static str,
    pub message: String,
}

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    /// Fields are missing, of the wrong type, or out of range (400).
    Invalid(Vec<Problem>),
    /// The event is well-formed but its `site_id` is not configured (404).
    UnknownSite(String),
    /// A browser origin sent an event for a site that does not list it (403).
    ForbiddenOrigin {
        site_id: String,
        origin_host: String,
    },
    /// The site takes this request's events only with one of its ingest keys (401).
    MissingKey { site_id: String },
    /// The request's key is not an ingest key of the event's site (403).
    OtherSite { site_id: String },
}

/// Who sent a request, as the site checks see it: the host of its `Origin` header, and the
/// grant of its API key (already known to be a valid key).
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller<'a> {
    pub origin_host: Option<&'a str>,
    pub key: Option<&'a Grant>,
}

impl Caller<'_> {
    /// The rules of DESIGN.md's "Access": a key must be an ingest key of the event's site
    /// (and then nothing else is asked); without one, a browser request (with `Origin`)
    /// needs an origin among the site's domains and a site that takes browser events, and a
    /// server-side request a site without ingest keys.
    fn may_send(&self, site: &AnalyticsSiteSpec) -> Result<(), Rejection> {
        let site_id = &site.site_id;
        match (self.key, self.origin_host) {
            (Some(key), _) if key.may_ingest(site_id) => Ok(()),
            (Some(_), _) => Err(Rejection::OtherSite {
                site_id: site_id.clone(),
            }),
            (None, Some(_)) if !site.browser_ingest => Err(Rejection::MissingKey {
                site_id: site_id.clone(),
            }),
            (None, Some(host)) if !site.allows_origin_host(host) => {
                Err(Rejection::ForbiddenOrigin {
                    site_id: site_id.clone(),
                    origin_host: host.to_owned(),
                })
            }
            (None, Some(_)) => Ok(()),
            (None, None) if site.has_key_with(KeyScope::Ingest) => Err(Rejection::MissingKey {
                site_id: site_id.clone(),
            }),
            (None, None) => Ok(()),
        }
    }
}

/// The canonical fields, each with every spelling accepted for it.
const FIELDS: &[(&str, &[&str])] = &[
    ("site_id", &["site_id", "siteId"]),
    ("event_type", &["event_type", "eventType", "type"]),
    ("path", &["path"]),
    ("url", &["url", "page_url", "pageUrl"]),
    ("timestamp", &["timestamp"]),
    ("event_id", &["event_id", "eventId"]),
    ("user_id", &["user_id", "userId"]),
    ("visitor_id", &["visitor_id", "visitorId"]),
    ("session_id", &["session_id", "sessionId"]),
    ("referrer", &["referrer"]),
    ("title", &["title"]),
    ("properties", &["properties", "metadata"]),
    ("user_agent", &["user_agent", "userAgent"]),
    ("screen_width", &["screen_width", "screenWidth"]),
    ("screen_height", &["screen_height", "screenHeight"]),
];

/// Longest accepted text, in bytes, per string field.
fn max_len(field: &str) -> usize {
    match field {
        "site_id" => 63,
        "event_type" => 100,
        "user_id" | "visitor_id" | "session_id" => 256,
        "title" | "user_agent" => 1024,
        "path" => 2048,
        _ => 4096, // url, referrer
    }
}

/// The most unknown or repeated fields of one event that are named among its problems; the
/// rest are counted in one more problem. An event of a million unknown fields thus costs no
/// more memory, and no longer an answer, than its own text.
const MAX_LISTED_FIELDS: usize = 20;

/// A field name as a message quotes it: its first 64 characters, so that a name a megabyte
/// long does not make the answer megabytes long.
fn quoted(name: &str) -> String {
    match name.char_indices().nth(64) {
        None => format!("{name:?}"),
        Some((cut, _)) => format!("{:?}…", &name[..cut]),
    }
}

/// The raw JSON value of each canonical field, borrowed from the body.
#[derive(Default)]
struct RawFields<'a> {
    values: [Option<&'a RawValue>; FIELDS.len()],
    problems: Vec<Problem>,
    /// Unknown or repeated fields past [`MAX_LISTED_FIELDS`].
    unlisted: usize,
}

impl<'de> serde::Deserialize<'de> for RawFields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = RawFields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = RawFields::default();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    let Some(index) = FIELDS.iter().position(|(_, names)| names.contains(&&*key))
                    else {
                        map.next_value::<IgnoredAny>()?;
                        fields.field_problem("event", || format!("unknown field {}", quoted(&key)));
                        continue;
                    };
                    let value: &'de RawValue = map.next_value()?;
                    if fields.values[index].replace(value).is_some() {
                        let (field, names) = FIELDS[index];
                        fields.field_problem(field, || {
                            format!("given more than once (as one of {})", names.join(", "))
                        });
                    }
                }
                if fields.unlisted > 0 {
                    let message =
                        format!("and {} more unknown or repeated fields", fields.unlisted);
                    fields.problem("event", message);
                }
                Ok(fields)
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

impl<'a> RawFields<'a> {
    fn get(&self, field: &str) -> Option<&'a RawValue> {
        let index = FIELDS.iter().position(|(name, _)| *name == field)?;
        self.values[index].filter(|v| v.get() != "null")
    }

    /// A problem with the fields themselves (unknown, repeated): listed up to
    /// [`MAX_LISTED_FIELDS`], counted after that.
    fn field_problem(&mut self, field: &'static str, message: impl FnOnce() -> String) {
        if self.problems.len() < MAX_LISTED_FIELDS {
            self.problem(field, message());
        } else {
            self.unlisted += 1;
        }
    }

    fn problem(&mut self, field: &'static str, message: impl Into<String>) {
        self.problems.push(Problem {
            field,
            message: message.into(),
        });
    }

    /// A string field: absent (or null) gives `None`; anything but a string is a problem.
    fn text(&mut self, field: &'static str) -> Option<Cow<'a, str>> {
        let raw = self.get(field)?;
        match unescaped_str(raw).map_or_else(
            || serde_json::from_str::<Cow<'a, str>>(raw.get()),
            |s| Ok(Cow::Borrowed(s)),
        ) {
            Ok(s) if s.len() > max_len(field) => {
                self.problem(field, format!("is longer than {} bytes", max_len(field)));
                None
            }
            Ok(s) => Some(s),
            Err(_) => {
                self.problem(field, "must be a string");
                None
            }
        }
    }

    /// A screen dimension in CSS pixels: absent gives `None`; it must be an integer from 0
    /// to 65535.
    fn screen_size(&mut self, field: &'static str) -> Option<u16> {
        let raw = self.get(field)?;
        match serde_json::from_str::<u16>(raw.get()) {
            Ok(n) => Some(n),
            Err(_) => {
                self.problem(field, "must be an integer from 0 to 65535");
                None
            }
        }
    }
}

/// The text of a JSON string without escapes, borrowed as it is; `None` for anything else
/// (which then goes through the full parser). The value is already known to be valid JSON,
/// so a string without a backslash holds exactly the characters between its quotes.
fn unescaped_str(raw: &RawValue) -> Option<&str> {
    let text = raw.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('\\')).then_some(inner)
}

/// A fresh UUIDv7 for an event received at `now_ms`. The 74 random bits come from a
/// per-thread SplitMix64 generator seeded once from the operating system, instead of a
/// `getrandom` system call per id (`Uuid::now_v7`), which the profile showed at ~5 % of a
/// batch's cost. Within a thread the generator never repeats (its state is a counter with
/// period 2^64 and its output a bijection of it); across threads and processes the seeds
/// differ, so ids stay unique for every practical purpose. Event ids only need uniqueness.
fn new_event_id(now_ms: i64) -> Uuid {
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new({
            let seed = Uuid::new_v4().as_u64_pair();
            seed.0 ^ seed.1.rotate_left(32)
        });
    }
    let next = || {
        STATE.with(|state| {
            let mut z = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
            state.set(z);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        })
    };
    let (a, b) = (next(), next());
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&a.to_le_bytes());
    random[8..].copy_from_slice(&b.to_le_bytes()[..2]);
    uuid::Builder::from_unix_timestamp_millis(u64::try_from(now_ms).unwrap_or(0), &random)
        .into_uuid()
}

/// Parses and validates one event. `now_ms` is the server time used for absent timestamps;
/// `caller` says who sent it (see [`Caller::may_send`]). An event without `site_id` sent
/// with a site's key is that site's.
pub fn validate_event(
    raw: &RawValue,
    config: &RuntimeConfig,
    limits: &Limits,
    now_ms: i64,
    caller: Caller<'_>,
) -> Result<Event, Rejection> {
    let mut f: RawFields<'_> = match serde_json::from_str(raw.get()) {
        Ok(fields) => fields,
        Err(_) if !raw.get().starts_with('{') => {
            return Err(Rejection::Invalid(vec![Problem {
                field: "event",
                message: "each event must be a JSON object".into(),
            }]));
        }
        Err(e) => {
            return Err(Rejection::Invalid(vec![Problem {
                field: "event",
                message: format!("is not valid JSON: {e}"),
            }]));
        }
    };

    let site_id = match (f.text("site_id"), caller.key.and_then(Grant::site_id)) {
        (None, Some(own)) if f.get("site_id").is_none() => Some(Cow::Borrowed(own)),
        (given, _) => given,
    };
    let event_type = f.text("event_type");
    let mut path = f.text("path");
    let url = f.text("url");
    let referrer = f.text("referrer");
    let title = f.text("title");
    let user_id = f.text("user_id");
    let visitor_id = f.text("visitor_id");
    let session_id = f.text("session_id");
    let user_agent = f.text("user_agent");
    let screen_width = f.screen_size("screen_width");
    let screen_height = f.screen_size("screen_height");

    let site = match site_id.as_deref() {
        None | Some("") => {
            if site_id.is_some() || f.get("site_id").is_none() {
                f.problem("site_id", "is required");
            }
            None
        }
        Some(id) => config.site(id),
    };

    match event_type.as_deref() {
        // A present value of the wrong type has been reported already.
        None if f.get("event_type").is_some() => {}
        None | Some("") => f.problem("event_type", "is required"),
        Some(t) if t.chars().any(char::is_control) => {
            f.problem("event_type", "must not contain control characters")
        }
        _ => {}
    }

    let parsed_url =
        url.as_deref()
            .filter(|u| !u.is_empty())
            .and_then(|u| match url::Url::parse(u) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Some(parsed),
                Ok(_) => {
                    f.problem("url", "must be an http or https URL");
                    None
                }
                Err(e) => {
                    f.problem("url", format!("is not a valid absolute URL: {e}"));
                    None
                }
            });
    if let Some(p) = path.as_deref()
        && !p.is_empty()
        && !p.starts_with('/')
    {
        f.problem("path", "must start with /");
    }
    if path.as_deref().is_none_or(str::is_empty)
        && let Some(u) = &parsed_url
    {
        path = Some(Cow::Owned(u.path().to_owned()));
    }
    if event_type.as_deref() == Some(PAGE_VIEW)
        && path.as_deref().is_none_or(str::is_empty)
        && url.as_deref().is_none_or(str::is_empty)
    {
        f.problem("path", "a page_view needs a path or a url");
    }

    let timestamp_ms = match f.text("timestamp") {
        None => Some(now_ms),
        Some(text) => parse_timestamp(&text, now_ms)
            .map_err(|message| f.problem("timestamp", message))
            .ok(),
    };

    let event_id = match f.text("event_id") {
        None => Some(new_event_id(now_ms)),
        Some(text) => match Uuid::try_parse(&text) {
            Ok(id) if !id.is_nil() => Some(id),
            Ok(_) => {
                f.problem("event_id", "must not be the nil UUID");
                None
            }
            Err(_) => {
                f.problem(
                    "event_id",
                    "must be a UUID such as 0193a7e4-5b1c-7d2e-8f00-1234567890ab",
                );
                None
            }
        },
    };

    let properties = match f.get("properties") {
        None => Some(Event::empty_properties()),
        Some(raw) => check_properties(raw, limits)
            .map_err(|message| f.problem("properties", message))
            .ok(),
    };

    if !f.problems.is_empty() {
        // An unknown site alone answers 404; among other problems it is one more of them.
        if let (None, Some(id)) = (site, site_id.as_deref().filter(|id| !id.is_empty())) {
            f.problem("site_id", format!("site {id:?} is not configured"));
        }
        return Err(Rejection::Invalid(f.problems));
    }
    let (Some(site_id), Some(timestamp_ms), Some(event_id), Some(properties)) =
        (site_id, timestamp_ms, event_id, properties)
    else {
        unreachable!("every missing value above recorded a problem");
    };
    // A key of another site learns nothing of this one, not even whether it exists.
    if let Some(key) = caller.key
        && !key.may_ingest(&site_id)
    {
        return Err(Rejection::OtherSite {
            site_id: site_id.into_owned(),
        });
    }
    let Some(site) = site else {
        return Err(Rejection::UnknownSite(site_id.into_owned()));
    };
    caller.may_send(site)?;

    let owned = |v: Option<Cow<'_, str>>| v.map(Cow::into_owned).unwrap_or_default();
    Ok(Event {
        event_id,
        site_id: site_id.into_owned(),
        event_type: owned(event_type),
        timestamp_ms,
        received_at_ms: now_ms,
        path: owned(path),
        url: owned(url),
        referrer: owned(referrer),
        title: owned(title),
        user_id: owned(user_id),
        visitor_id: owned(visitor_id),
        session_id: owned(session_id),
        properties,
        user_agent: owned(user_agent),
        screen_width: screen_width.unwrap_or(0),
        screen_height: screen_height.unwrap_or(0),
        bot: false,
    })
}

/// Earliest accepted event time: 2000-01-01T00:00:00Z.
const EARLIEST_MS: i64 = 946_684_800_000;
/// How far ahead of the server's clock an event may be (client clock skew).
const MAX_FUTURE_MS: i64 = 24 * 3600 * 1000;

fn parse_timestamp(text: &str, now_ms: i64) -> Result<i64, String> {
    let parsed = OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|_| "must be an RFC 3339 date-time such as 2026-01-31T12:00:00Z".to_owned())?;
    let ms = i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| "is out of range".to_owned())?;
    if ms < EARLIEST_MS {
        return Err("must not be before 2000-01-01".into());
    }
    if ms > now_ms + MAX_FUTURE_MS {
        return Err("is more than 24 hours in the future".into());
    }
    Ok(ms)
}

/// Properties must be a flat JSON object (values: string, number, boolean or null) within the
/// size limit. Returns the object's JSON text unchanged.
fn check_properties(raw: &RawValue, limits: &Limits) -> Result<Box<RawValue>, String> {
    let text = raw.get();
    if text.len() > limits.max_properties_bytes {
        return Err(format!(
            "is {} bytes of JSON, more than the limit of {}",
            text.len(),
            limits.max_properties_bytes
        ));
    }
    let map: std::collections::BTreeMap<Cow<'_, str>, &RawValue> =
        serde_json::from_str(text).map_err(|_| "must be a JSON object".to_owned())?;
    let nested: Vec<&str> = map
        .iter()
        .filter(|(_, v)| matches!(v.get().as_bytes().first(), Some(b'{' | b'[')))
        .map(|(k, _)| k.as_ref())
        .collect();
    if !nested.is_empty() {
        return Err(format!(
            "must be flat: values must be strings, numbers, booleans or null, but {} hold objects or arrays",
            nested.join(", ")
        ));
    }
    Ok(raw.to_owned())
}

/// What the tests of event validation share.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use crate::RuntimeConfig;

    /// The pipeline `web` with default limits and the site `shop` (domain shop.example.com).
    pub fn config() -> RuntimeConfig {
        RuntimeConfig::parse(
            "test",
            "apiVersion: tally.dev/v1alpha1\nkind: AnalyticsPipeline\nmetadata: {name: web}\nspec: {}\n---\n\
             apiVersion: tally.dev/v1alpha1\nkind: AnalyticsSite\nmetadata: {name: shop}\n\
             spec: {pipelineRef: {name: web}, siteId: shop, domains: [shop.example.com]}\n",
        )
        .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::config;
    use super::*;

    const NOW: i64 = 1_780_000_000_000;

    fn check(json: &str) -> Result<Event, Rejection> {
        check_from(json, None)
    }

    fn check_from(json: &str, origin: Option<&str>) -> Result<Event, Rejection> {
        let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
        let limits = Limits {
            max_properties_bytes: 256,
        };
        let caller = Caller {
            origin_host: origin,
            key: None,
        };
        validate_event(&raw, &config(), &limits, NOW, caller)
    }

    fn problems(json: &str) -> Vec<&'static str> {
        match check(json) {
            Err(Rejection::Invalid(p)) => p.iter().map(|p| p.field).collect(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn accepts_canonical_fields() {
        let e = check(
            r#"{"site_id":"shop","event_type":"page_view","path":"/home","timestamp":"2026-05-01T10:00:00Z",
               "event_id":"0193a7e4-5b1c-7d2e-8f00-1234567890ab","user_id":"u1","visitor_id":"v1",
               "session_id":"s1","referrer":"https://x.test/","title":"Home","properties":{"plan":"pro","n":3}}"#,
        )
        .unwrap();
        assert_eq!(e.site_id, "shop");
        assert_eq!(e.path, "/home");
        assert_eq!(e.timestamp_ms, 1_777_629_600_000);
        assert_eq!(
            e.event_id.to_string(),
            "0193a7e4-5b1c-7d2e-8f00-1234567890ab"
        );
        assert_eq!(e.properties.get(), r#"{"plan":"pro","n":3}"#);
        assert_eq!(e.received_at_ms, NOW);
    }

    #[test]
    fn accepts_camel_case_and_aliases() {
        let e = check(
            r#"{"siteId":"shop","eventType":"signup","page_url":"https://shop.example.com/a/b?q=1",
               "userId":"u","visitorId":"v","sessionId":"s","eventId":"0193a7e4-5b1c-7d2e-8f00-1234567890ab",
               "metadata":{"k":"v"}}"#,
        )
        .unwrap();
        assert_eq!((e.event_type.as_str(), e.path.as_str()), ("signup", "/a/b"));
        assert_eq!(
            (
                e.user_id.as_str(),
                e.visitor_id.as_str(),
                e.session_id.as_str()
            ),
            ("u", "v", "s")
        );
        assert_eq!(e.properties.get(), r#"{"k":"v"}"#);
    }

    #[test]
    fn fills_server_time_and_a_fresh_id() {
        let a = check(r#"{"site_id":"shop","type":"click"}"#).unwrap();
        let b = check(r#"{"site_id":"shop","type":"click"}"#).unwrap();
        assert_eq!(a.timestamp_ms, NOW);
        assert_ne!(a.event_id, b.event_id);
        assert_eq!(a.properties.get(), "{}");
    }

    #[test]
    fn lists_every_problem() {
        let fields = problems(
            r#"{"site_id":7,"event_type":"","timestamp":"yesterday","event_id":"nope",
               "properties":{"nested":{"a":1}},"url":"ftp://x","color":"red"}"#,
        );
        for f in [
            "site_id",
            "event_type",
            "timestamp",
            "event_id",
            "properties",
            "url",
            "event",
        ] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
        // A wrong type is one problem, not also "is required".
        assert_eq!(
            fields.iter().filter(|f| **f == "site_id").count(),
            1,
            "{fields:?}"
        );
    }

    #[test]
    fn names_at_most_twenty_unknown_or_repeated_fields() {
        // 50,000 unknown fields and a path given 50,000 times: a 1 MB event that used to
        // cost a problem (and a 10 MB list of them) per field.
        let fields: Vec<String> = (0..50_000)
            .map(|i| format!(r#""f{i}":0,"path":"/""#))
            .collect();
        let json = format!(r#"{{"site_id":"shop",{}}}"#, fields.join(","));
        let Err(Rejection::Invalid(problems)) = check(&json) else {
            panic!("expected Invalid");
        };
        assert_eq!(problems.len(), MAX_LISTED_FIELDS + 2, "{problems:?}");
        assert_eq!(problems[0].message, r#"unknown field "f0""#);
        assert_eq!(problems[1].message, r#"unknown field "f1""#);
        assert_eq!(problems[2].field, "path");
        assert_eq!(
            problems[MAX_LISTED_FIELDS].message,
            "and 99979 more unknown or repeated fields"
        );
        // The fields' own problems are still reported.
        assert_eq!(problems[MAX_LISTED_FIELDS + 1].field, "event_type");
        // A long unknown name is quoted in part.
        let long = format!(
            r#"{{"site_id":"shop","event_type":"x","{}":0}}"#,
            "é".repeat(100_000)
        );
        let Err(Rejection::Invalid(problems)) = check(&long) else {
            panic!("expected Invalid");
        };
        assert_eq!(
            problems[0].message,
            format!("unknown field {:?}…", "é".repeat(64))
        );
    }

    #[test]
    fn refuses_duplicates_through_aliases_and_bad_shapes() {
        assert_eq!(
            problems(r#"{"site_id":"shop","siteId":"shop","type":"x"}"#),
            ["site_id"]
        );
        assert_eq!(problems(r#"[1,2]"#), ["event"]);
        assert_eq!(
            problems(r#"{"site_id":"shop","type":"page_view"}"#),
            ["path"]
        );
        assert_eq!(
            problems(r#"{"site_id":"shop","type":"x","path":"home"}"#),
            ["path"]
        );
        assert_eq!(
            problems(r#"{"site_id":"shop","type":"x","properties":[1]}"#),
            ["properties"]
        );
        let big = format!(
            r#"{{"site_id":"shop","type":"x","properties":{{"k":"{}"}}}}"#,
            "a".repeat(300)
        );
        assert_eq!(problems(&big), ["properties"]);
        let long = format!(
            r#"{{"site_id":"shop","type":"x","title":"{}"}}"#,
            "a".repeat(2000)
        );
        assert_eq!(problems(&long), ["title"]);
        assert_eq!(
            problems(r#"{"site_id":"shop","type":"x","timestamp":"2099-01-01T00:00:00Z"}"#),
            ["timestamp"]
        );
        assert_eq!(
            problems(r#"{"site_id":"shop","type":"x","timestamp":"1999-12-31T23:59:59Z"}"#),
            ["timestamp"]
        );
    }

    #[test]
    fn generated_ids_are_distinct_v7_at_the_server_time() {
        let ids: std::collections::HashSet<Uuid> = (0..10_000).map(|_| new_event_id(NOW)).collect();
        assert_eq!(ids.len(), 10_000);
        let id = *ids.iter().next().unwrap();
        assert_eq!(id.get_version_num(), 7);
        let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
        assert_eq!(secs as i64 * 1000 + i64::from(nanos / 1_000_000), NOW);
    }

    #[test]
    fn strings_with_and_without_escapes_read_the_same() {
        let e =
            check(r#"{"site_id":"shop","type":"x","title":"caf\u00e9 \"a\"","user_id":"plain"}"#)
                .unwrap();
        assert_eq!(e.title, "café \"a\"");
        assert_eq!(e.user_id, "plain");
    }

    #[test]
    fn null_means_absent() {
        let e = check(r#"{"site_id":"shop","type":"x","user_id":null,"properties":null}"#).unwrap();
        assert_eq!(e.user_id, "");
    }

    #[test]
    fn unknown_site_is_its_own_rejection() {
        assert!(matches!(
            check(r#"{"site_id":"blog","type":"x"}"#),
            Err(Rejection::UnknownSite(site)) if site == "blog"
        ));
        // With other problems too, everything is reported together as invalid.
        assert_eq!(
            problems(r#"{"site_id":"blog","type":""}"#),
            ["event_type", "site_id"]
        );
    }

    #[test]
    fn browser_origins_must_match_the_site_domains() {
        let json = r#"{"site_id":"shop","type":"x"}"#;
        assert!(check_from(json, Some("shop.example.com")).is_ok());
        assert!(matches!(
            check_from(json, Some("evil.test")),
            Err(Rejection::ForbiddenOrigin { .. })
        ));
    }
}
