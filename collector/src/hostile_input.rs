//! Hostile input against the collector's parsing, as `POST /v1/events` runs it:
//! [`parse_events`] — gzip decoding with its size cap, the three body shapes (object, array
//! or NDJSON), the batch-size limit and every item's validation. Property tests feed it well
//! over 10,000 malformed, oversized, deeply nested, invalid UTF-8, gzip-bomb and wrong-type
//! payloads; none may panic, none may be stored, and every answer must be an error with a
//! reason and a 4xx status. The fuzz target in `collector/fuzz` drives the same function
//! with coverage-guided input.

use std::io::Write as _;
use std::sync::OnceLock;

use axum::http::StatusCode;
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Map, Value, json};
use tally_contracts::{Event, RuntimeConfig};

use crate::api::ApiError;
use crate::ingest::{RequestHeaders, parse_events};

/// The server clock of every case: 2026-05-28T20:26:40Z.
const NOW_MS: i64 = 1_780_000_000_000;
const MAX_BODY: usize = 64 * 1024;
const MAX_BATCH: usize = 50;
const MAX_PROPERTIES: usize = 512;

fn config() -> &'static RuntimeConfig {
    static CONFIG: OnceLock<RuntimeConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        RuntimeConfig::parse(
            "hostile",
            &format!(
                "apiVersion: tally.dev/v1alpha1\nkind: AnalyticsPipeline\nmetadata: {{name: web}}\n\
                 spec: {{collector: {{maxBodyBytes: {MAX_BODY}, maxBatchEvents: {MAX_BATCH}, \
                 maxPropertiesBytes: {MAX_PROPERTIES}}}}}\n---\n\
                 apiVersion: tally.dev/v1alpha1\nkind: AnalyticsSite\nmetadata: {{name: shop}}\n\
                 spec: {{pipelineRef: {{name: web}}, siteId: shop}}\n"
            ),
        )
        .expect("the test configuration is valid")
    })
}

/// What the collector makes of one request: the request's error, or each item's outcome.
fn ingest(
    body: Vec<u8>,
    encoding: Option<&str>,
    ndjson: bool,
) -> Result<Vec<Result<Event, ApiError>>, ApiError> {
    let headers = RequestHeaders {
        content_type: ndjson.then_some("application/x-ndjson"),
        content_encoding: encoding,
        origin: None,
        key: None,
    };
    parse_events(config(), body.into(), headers, NOW_MS, |_| Ok(())).map(|parsed| parsed.items)
}

/// Every answer is a 4xx error with a reason; no event is accepted.
fn assert_refused(outcome: Result<Vec<Result<Event, ApiError>>, ApiError>) {
    let refusals: Vec<ApiError> = match outcome {
        Err(error) => vec![error],
        Ok(items) => {
            assert!(!items.is_empty(), "a request with no item must be an error");
            items
                .into_iter()
                .map(|item| match item {
                    Ok(event) => panic!("a hostile event was accepted: {event:?}"),
                    Err(error) => error,
                })
                .collect()
        }
    };
    for error in refusals {
        if let ApiError::InvalidEvent(problems) = &error {
            assert!(!problems.is_empty(), "an invalid event names its problems");
            for p in problems {
                assert!(!p.field.is_empty() && !p.message.is_empty(), "{p:?}");
            }
        }
        let (status, code) = error.status_and_code();
        assert!(status.is_client_error(), "{status} for {error:?}");
        assert_ne!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            !code.is_empty() && !error.to_string().trim().is_empty(),
            "{error:?}"
        );
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).expect("writing to a Vec");
    encoder.finish().expect("writing to a Vec")
}

/// A valid event of the test pipeline, as a JSON object.
fn valid_event(n: u32) -> Map<String, Value> {
    let Value::Object(event) = json!({
        "site_id": "shop",
        "event_type": "page_view",
        "path": format!("/p/{n}"),
        "url": "https://shop.example.com/p",
        "timestamp": "2026-05-28T10:00:00Z",
        "event_id": "0193a7e4-5b1c-7d2e-8f00-1234567890ab",
        "user_id": "u",
        "visitor_id": "v",
        "session_id": "s",
        "referrer": "https://ref.example.com/",
        "title": "t",
        "properties": {"plan": "pro", "n": 3, "ok": true, "none": null},
    }) else {
        unreachable!()
    };
    event
}

/// A JSON value that is not a string (nor null, which means absent).
fn not_a_string() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(json!(1.5e300)),
        Just(json!([])),
        Just(json!(["shop"])),
        Just(json!({"a": "b"})),
    ]
}

/// `len` bytes of one repeated character (multi-byte ones included).
fn long_text(len: usize) -> impl Strategy<Value = String> {
    prop_oneof![Just('a'), Just('é'), Just('漢'), Just('😀'), Just(' ')]
        .prop_map(move |c| c.to_string().repeat(len.div_ceil(c.len_utf8())))
}

/// One change that makes a valid event invalid, applied to its JSON text.
#[derive(Debug, Clone)]
enum Mutation {
    Set(&'static str, Value),
    Remove(&'static str),
    /// A field given twice, under two spellings or the same one.
    Twice(&'static str, &'static str),
    Unknown(String),
    /// The event is not an object at all.
    Replace(Value),
}

const STRING_FIELDS: &[&str] = &[
    "site_id",
    "event_type",
    "path",
    "url",
    "timestamp",
    "event_id",
    "user_id",
    "visitor_id",
    "session_id",
    "referrer",
    "title",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    let limits: Vec<(&'static str, usize)> = vec![
        ("site_id", 63),
        ("event_type", 100),
        ("path", 2048),
        ("url", 4096),
        ("user_id", 256),
        ("visitor_id", 256),
        ("session_id", 256),
        ("referrer", 4096),
        ("title", 1024),
    ];
    prop_oneof![
        (proptest::sample::select(STRING_FIELDS), not_a_string())
            .prop_map(|(f, v)| Mutation::Set(f, v)),
        (proptest::sample::select(limits), 1usize..5000).prop_flat_map(|((f, max), extra)| {
            long_text(max + extra).prop_map(move |text| {
                // An over-long path or URL must still look like one.
                let text = match f {
                    "path" => format!("/{text}"),
                    "url" => format!("https://shop.example.com/{text}"),
                    _ => text,
                };
                Mutation::Set(f, Value::String(text))
            })
        }),
        prop_oneof![
            Just(Mutation::Remove("site_id")),
            Just(Mutation::Remove("event_type")),
            Just(Mutation::Set("site_id", json!(null))),
            Just(Mutation::Set("site_id", json!(""))),
            Just(Mutation::Set("site_id", json!("blog"))),
            Just(Mutation::Set("site_id", json!("SHOP"))),
            Just(Mutation::Set("event_type", json!(""))),
            Just(Mutation::Set("event_type", json!("page\u{0}view"))),
            Just(Mutation::Set("event_type", json!("page\nview"))),
            Just(Mutation::Set("path", json!("home"))),
            Just(Mutation::Set("url", json!("ftp://shop.example.com/"))),
            Just(Mutation::Set("url", json!("javascript:alert(1)"))),
            Just(Mutation::Set("url", json!("::not a url"))),
            Just(Mutation::Set("timestamp", json!("1999-12-31T23:59:59Z"))),
            Just(Mutation::Set("timestamp", json!("2026-05-30T00:00:00Z"))),
            Just(Mutation::Set("timestamp", json!("+275760-09-13T00:00:00Z"))),
            Just(Mutation::Set("timestamp", json!("9999-99-99T99:99:99Z"))),
            Just(Mutation::Set("timestamp", json!(1_780_000_000))),
            Just(Mutation::Set(
                "event_id",
                json!("00000000-0000-0000-0000-000000000000")
            )),
            Just(Mutation::Set("event_id", json!("0193a7e4-5b1c-7d2e-8f00"))),
            Just(Mutation::Set("properties", json!("plan=pro"))),
            Just(Mutation::Set("properties", json!([1, 2]))),
            Just(Mutation::Set("properties", json!(42))),
            Just(Mutation::Set("properties", json!({"nested": {"a": 1}}))),
            Just(Mutation::Set("properties", json!({"list": [1]}))),
            Just(Mutation::Twice("site_id", "siteId")),
            Just(Mutation::Twice("event_type", "type")),
            Just(Mutation::Twice("url", "pageUrl")),
            Just(Mutation::Twice("site_id", "site_id")),
            Just(Mutation::Replace(json!(null))),
            Just(Mutation::Replace(json!(7))),
            Just(Mutation::Replace(json!("event"))),
            Just(Mutation::Replace(json!([{"site_id": "shop"}]))),
        ],
        (1usize..40).prop_map(|n| Mutation::Set(
            "properties",
            json!({"k": "x".repeat(MAX_PROPERTIES + n)})
        )),
        "[a-zA-Z_][a-zA-Z0-9_]{0,20}"
            .prop_filter("a field the collector knows", |k| !KNOWN
                .contains(&k.as_str()))
            .prop_map(Mutation::Unknown),
    ]
}

/// Every spelling the collector accepts.
const KNOWN: &[&str] = &[
    "site_id",
    "siteId",
    "event_type",
    "eventType",
    "type",
    "path",
    "url",
    "page_url",
    "pageUrl",
    "timestamp",
    "event_id",
    "eventId",
    "user_id",
    "userId",
    "visitor_id",
    "visitorId",
    "session_id",
    "sessionId",
    "referrer",
    "title",
    "properties",
    "metadata",
];

fn mutated_event(n: u32, mutation: &Mutation) -> String {
    let mut event = valid_event(n);
    match mutation {
        Mutation::Set(field, value) => {
            event.insert((*field).to_owned(), value.clone());
        }
        Mutation::Remove(field) => {
            event.remove(*field);
        }
        Mutation::Unknown(key) => {
            event.insert(key.clone(), json!("x"));
        }
        Mutation::Twice(field, alias) => {
            let value = event[*field].to_string();
            let text = Value::Object(event).to_string();
            return format!("{{{}:{value},{}", json!(alias), &text[1..]);
        }
        Mutation::Replace(value) => return value.to_string(),
    }
    Value::Object(event).to_string()
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    Single,
    Array,
    Ndjson,
}

/// Events laid out as one request body.
fn body_of(events: &[String], shape: Shape) -> String {
    match (shape, events) {
        (Shape::Single, [one]) => one.clone(),
        (Shape::Ndjson, _) => events.join("\n"),
        _ => format!("[{}]", events.join(",")),
    }
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![Just(Shape::Single), Just(Shape::Array), Just(Shape::Ndjson)]
}

fn encoding() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        Just(None),
        Just(Some("identity")),
        Just(Some("gzip")),
        Just(Some("x-gzip")),
        Just(Some("GZIP")),
        Just(Some("br")),
        Just(Some("deflate")),
        Just(Some("gzip, br")),
        Just(Some("")),
    ]
}

fn config_cases(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// A gzip member that inflates to 64 KiB of `pattern`, for bombs made of many members.
fn member(pattern: &'static [u8]) -> Vec<u8> {
    gzip(&pattern.repeat(64 * 1024 / pattern.len()))
}

proptest! {
    #![proptest_config(config_cases(3000))]

    /// Random bytes, under every content encoding, as JSON or NDJSON.
    #[test]
    fn random_bytes_are_refused(
        body in proptest::collection::vec(any::<u8>(), 0..2048),
        encoding in encoding(),
        gzipped in any::<bool>(),
        ndjson in any::<bool>(),
    ) {
        let body = if gzipped { gzip(&body) } else { body };
        assert_refused(ingest(body, encoding, ndjson));
    }

    /// Events with one thing wrong each — a wrong type, an over-long field, a bad value, a
    /// field twice, an unknown field, no object at all — alone, in arrays or NDJSON, plain or
    /// gzip-compressed.
    #[test]
    fn events_with_a_wrong_field_are_refused(
        mutations in proptest::collection::vec(mutation(), 1..6),
        shape in shape(),
        gzipped in any::<bool>(),
        ndjson in any::<bool>(),
    ) {
        let events: Vec<String> = mutations
            .iter()
            .enumerate()
            .map(|(n, m)| mutated_event(n as u32, m))
            .collect();
        let body = body_of(&events, shape).into_bytes();
        let (body, encoding) = if gzipped { (gzip(&body), Some("gzip")) } else { (body, None) };
        assert_refused(ingest(body, encoding, ndjson));
    }
}

proptest! {
    #![proptest_config(config_cases(1500))]

    /// Nesting thousands of levels deep — the body itself, an event, its properties, one
    /// field — never overflows the stack.
    #[test]
    fn deep_nesting_is_refused(
        depth in 1usize..200_000,
        open in prop_oneof![Just("["), Just("{\"a\":"), Just("[{\"a\":")],
        place in 0..4u8,
        closed in any::<bool>(),
        ndjson in any::<bool>(),
    ) {
        let close: String = open
            .chars()
            .rev()
            .filter_map(|c| match c { '[' => Some(']'), '{' => Some('}'), _ => None })
            .collect();
        let nest = |inner: &str| {
            let tail = if closed { close.repeat(depth) } else { String::new() };
            format!("{}{inner}{tail}", open.repeat(depth))
        };
        let body = match place {
            0 => nest("1"),
            1 => format!(r#"{{"site_id":"shop","event_type":"x","properties":{{"deep":{}}}}}"#, nest("1")),
            2 => format!(r#"{{"site_id":"shop","event_type":{}}}"#, nest("\"x\"")),
            _ => format!("[{}]", nest("{}")),
        };
        assert_refused(ingest(body.into_bytes(), None, ndjson));
    }

    /// Invalid UTF-8 anywhere in an otherwise valid body, plain or compressed.
    #[test]
    fn invalid_utf8_is_refused(
        shape in shape(),
        count in 1usize..4,
        at in any::<proptest::sample::Index>(),
        bad in prop_oneof![
            Just(&b"\xff"[..]),
            Just(&b"\xc3\x28"[..]),
            Just(&b"\xed\xa0\x80"[..]),
            Just(&b"\xc0\xaf"[..]),
            Just(&b"\xf4\x90\x80\x80"[..]),
            Just(&b"\xe2\x82"[..]),
        ],
        gzipped in any::<bool>(),
        ndjson in any::<bool>(),
    ) {
        let events: Vec<String> = (0..count as u32)
            .map(|n| Value::Object(valid_event(n)).to_string())
            .collect();
        let mut body = body_of(&events, shape).into_bytes();
        let at = at.index(body.len() + 1);
        body.splice(at..at, bad.iter().copied());
        let (body, encoding) = if gzipped { (gzip(&body), Some("gzip")) } else { (body, None) };
        assert_refused(ingest(body, encoding, ndjson));
    }
}

proptest! {
    #![proptest_config(config_cases(1000))]

    /// Gzip bombs (members that inflate far past the body limit, whatever they hold — even
    /// valid events), truncated or corrupted gzip, and batches over the event limit.
    #[test]
    fn bombs_broken_gzip_and_oversized_batches_are_refused(
        kind in 0..5u8,
        members in 2usize..200,
        cut in any::<proptest::sample::Index>(),
        flip in any::<proptest::sample::Index>(),
        extra in 1usize..100,
        pattern in 0..3usize,
    ) {
        static MEMBERS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        let members_of = MEMBERS.get_or_init(|| {
            let valid = format!("{}\n", Value::Object(valid_event(0)));
            let valid: &'static [u8] = Box::leak(valid.into_bytes().into_boxed_slice());
            vec![member(b" "), member(b"[[[[{\"a\":"), member(valid)]
        });
        let valid_batch = |n: usize| {
            let events: Vec<String> = (0..n as u32)
                .map(|i| {
                    let mut e = valid_event(i);
                    e.insert("event_id".into(), json!(uuid::Uuid::new_v4()));
                    Value::Object(e).to_string()
                })
                .collect();
            events
        };
        let (body, encoding, ndjson) = match kind {
            // Many 64 KiB members: more than the 64 KiB limit once inflated.
            0 => (members_of[pattern].repeat(members), Some("gzip"), pattern == 2),
            // A valid compressed batch, cut short.
            1 => {
                let whole = gzip(body_of(&valid_batch(3), Shape::Array).as_bytes());
                let cut = cut.index(whole.len());
                (whole[..cut].to_vec(), Some("gzip"), false)
            }
            // A compressed body with one byte changed inside its compressed data or trailer
            // (bytes 10 on: the gzip header carries only a timestamp and flags worth keeping).
            2 => {
                let mut whole = gzip(body_of(&valid_batch(3), Shape::Ndjson).as_bytes());
                let at = 10 + flip.index(whole.len() - 10);
                whole[at] ^= 0x5a;
                (whole, Some("gzip"), true)
            }
            // More valid events than a batch may hold, as an array or as NDJSON.
            3 => {
                let body = body_of(&valid_batch(MAX_BATCH + extra), Shape::Array);
                (body.into_bytes(), None, false)
            }
            _ => {
                let body = body_of(&valid_batch(MAX_BATCH + extra), Shape::Ndjson);
                (gzip(body.as_bytes()), Some("gzip"), true)
            }
        };
        let outcome = ingest(body, encoding, ndjson);
        if kind == 2 {
            // A flipped byte can leave the deflate stream decodable with a different text;
            // then the events it yields must be refused or be the original, valid ones.
            if let Ok(items) = &outcome
                && items.iter().all(Result::is_ok)
                && items.len() == 3
            {
                return Ok(());
            }
        }
        assert_refused(outcome);
    }
}

#[test]
fn the_unmutated_events_are_valid() {
    // The properties above prove something only if the events they start from are valid.
    let events: Vec<String> = (0..3)
        .map(|n| Value::Object(valid_event(n)).to_string())
        .collect();
    for shape in [Shape::Array, Shape::Ndjson] {
        let items = ingest(body_of(&events, shape).into_bytes(), None, false).unwrap();
        assert!(items.iter().all(Result::is_ok), "{items:?}");
    }
    let one = ingest(events[0].clone().into_bytes(), Some("identity"), false).unwrap();
    assert!(one[0].is_ok());
    let limit = valid_batch_text(MAX_BATCH);
    assert!(ingest(gzip(limit.as_bytes()), Some("gzip"), true).is_ok());
}

fn valid_batch_text(n: usize) -> String {
    let events: Vec<String> = (0..n as u32)
        .map(|i| Value::Object(valid_event(i)).to_string())
        .collect();
    body_of(&events, Shape::Ndjson)
}
