//! `ingest_body`: any bytes as a `POST /v1/events` request, through the collector's parsing
//! and validation ([`tally_collector::parse_events`], the function the handler itself calls
//! on the body it read) with the limits a pipeline has by default, admitting every request.
//!
//! The first byte chooses the headers: bits 0–2 the `Content-Type`, bits 3–5 the
//! `Content-Encoding`, bits 6–7 the `Origin` (see the tables below); the other bytes are the
//! body. Whatever the input, parsing must not panic, and its outcome must be either the
//! request's error or one outcome per event (at least one, at most `maxBatchEvents`), where
//! - every refusal is a 4xx with an error code and a message, and an invalid event names
//!   a field and a message for each of its problems;
//! - every accepted event keeps the documented rules (a configured site, a 1–100 byte
//!   event type, a time from 2000 to 24 h ahead, a path starting with `/`, a non-nil id,
//!   properties within their limit) and survives the JSON round trip the processor makes;
//! - the heap the parsing holds at its peak stays within [`HEAP_PER_BODY_BYTE`] times
//!   `maxBodyBytes`, so that no small body (a gzip bomb of many lines or fields, say) costs
//!   the collector memory out of proportion to the largest body it accepts.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use libfuzzer_sys::fuzz_target;
use tally_collector::{ApiError, Parsed, RequestHeaders, parse_events};
use tally_contracts::{Event, RuntimeConfig};

/// The `Content-Type` header, by bits 0–2 of the first byte.
const CONTENT_TYPES: [Option<&str>; 8] = [
    None,
    Some("application/json"),
    Some("application/x-ndjson"),
    Some("application/ndjson; charset=utf-8"),
    Some("application/jsonl"),
    Some("text/plain;charset=UTF-8"),
    Some("APPLICATION/X-NDJSON"),
    Some("multipart/form-data"),
];

/// The `Content-Encoding` header, by bits 3–5 of the first byte.
const CONTENT_ENCODINGS: [Option<&str>; 8] = [
    None,
    Some("gzip"),
    Some("identity"),
    Some("x-gzip"),
    Some(" GZIP "),
    Some(""),
    Some("br"),
    Some("gzip, br"),
];

/// The `Origin` header, by bits 6–7 of the first byte: none, the site `shop`'s domain, one
/// of its subdomains, and what a sandboxed page sends.
const ORIGINS: [Option<&str>; 4] = [
    None,
    Some("https://shop.example.com"),
    Some("https://www.shop.example.com:8443"),
    Some("null"),
];

/// The server clock: 2026-05-28T20:26:40Z.
const NOW_MS: i64 = 1_780_000_000_000;
/// The earliest event time accepted: 2000-01-01T00:00:00Z.
const EARLIEST_MS: i64 = 946_684_800_000;
/// How far ahead of the server clock an event may be.
const MAX_FUTURE_MS: i64 = 24 * 3600 * 1000;

/// The most heap one request's parsing may hold at once, per byte of `maxBodyBytes`: the
/// decoded body (with its buffer's spare room), the events copied out of it and their
/// problems' messages each take about the body's size.
const HEAP_PER_BODY_BYTE: usize = 4;

/// The global allocator: the system's, counting the bytes held ([`HELD`]) and their peak
/// since the last reset ([`PEAK`]).
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn held(more: usize) {
    let now = HELD.fetch_add(more, Relaxed) + more;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every call is passed to the system allocator as it came; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            held(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            held(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        HELD.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            HELD.fetch_sub(layout.size(), Relaxed);
            held(new_size);
        }
        new
    }
}

/// The pipeline of `examples/`, with the collector limits left at their defaults.
static CONFIG: LazyLock<RuntimeConfig> = LazyLock::new(|| {
    RuntimeConfig::parse(
        "fuzz",
        "apiVersion: tally.dev/v1alpha1\nkind: AnalyticsPipeline\nmetadata: {name: web}\nspec: {}\n\
         ---\napiVersion: tally.dev/v1alpha1\nkind: AnalyticsSite\nmetadata: {name: shop}\n\
         spec: {pipelineRef: {name: web}, siteId: shop, domains: [shop.example.com]}\n\
         ---\napiVersion: tally.dev/v1alpha1\nkind: AnalyticsSite\nmetadata: {name: docs}\n\
         spec: {pipelineRef: {name: web}, siteId: docs, domains: [docs.example.com]}\n",
    )
    .expect("the fuzz pipeline is valid")
});

fuzz_target!(|data: &[u8]| {
    let (headers, body) = data.split_first().map_or((0, data), |(h, b)| (*h, b));
    let content_type = CONTENT_TYPES[usize::from(headers & 7)];
    let content_encoding = CONTENT_ENCODINGS[usize::from(headers >> 3 & 7)];
    let origin = ORIGINS[usize::from(headers >> 6)];
    let config = &*CONFIG;
    let before = HELD.load(Relaxed);
    PEAK.store(before, Relaxed);
    let headers = RequestHeaders {
        content_type,
        content_encoding,
        origin,
        key: None,
    };
    let outcome = parse_events(
        config,
        bytes::Bytes::copy_from_slice(body),
        headers,
        NOW_MS,
        |_| Ok(()),
    );
    let peak = PEAK.load(Relaxed) - before;
    let max_body = config.pipeline.spec.collector.max_body_bytes as usize;
    assert!(
        peak <= HEAP_PER_BODY_BYTE * max_body,
        "parsing held {peak} bytes of heap at its peak, more than {HEAP_PER_BODY_BYTE} × maxBodyBytes"
    );
    match outcome {
        Err(error) => assert_explained(&error),
        Ok(Parsed { items, .. }) => {
            let max_batch = config.pipeline.spec.collector.max_batch_events as usize;
            assert!(
                (1..=max_batch).contains(&items.len()),
                "{} events in one request",
                items.len()
            );
            for item in &items {
                match item {
                    Ok(event) => assert_storable(event, config),
                    Err(error) => assert_explained(error),
                }
            }
        }
    }
});

/// A refusal is a 4xx with a code and a message; an invalid event names every problem.
fn assert_explained(error: &ApiError) {
    let (status, code) = error.status_and_code();
    assert!(status.is_client_error(), "{status} ({code}) for {error:?}");
    assert!(!code.is_empty(), "no error code for {error:?}");
    assert!(
        !error.to_string().trim().is_empty(),
        "no message for {error:?}"
    );
    if let ApiError::InvalidEvent(problems) = error {
        assert!(!problems.is_empty(), "an invalid event without problems");
        for problem in problems {
            assert!(
                !problem.field.is_empty() && !problem.message.trim().is_empty(),
                "{problem:?}"
            );
        }
    }
}

/// An accepted event keeps the documented rules and reads back as the processor reads it.
fn assert_storable(event: &Event, config: &RuntimeConfig) {
    assert!(config.site(&event.site_id).is_some(), "{event:?}");
    assert!((1..=100).contains(&event.event_type.len()), "{event:?}");
    assert!(
        (EARLIEST_MS..=NOW_MS + MAX_FUTURE_MS).contains(&event.timestamp_ms),
        "{event:?}"
    );
    assert_eq!(event.received_at_ms, NOW_MS);
    assert!(
        event.path.is_empty() || event.path.starts_with('/'),
        "{event:?}"
    );
    assert!(!event.event_id.is_nil());
    let properties = event.properties.get();
    let max_properties = config.pipeline.spec.collector.max_properties_bytes as usize;
    assert!(
        properties.starts_with('{') && properties.len() <= max_properties,
        "{event:?}"
    );
    let envelope = serde_json::to_vec(event).expect("an accepted event encodes");
    let read: Event = serde_json::from_slice(&envelope).expect("the envelope decodes");
    assert_eq!(
        serde_json::to_vec(&read).expect("a decoded event encodes"),
        envelope,
        "the envelope does not round-trip"
    );
}
