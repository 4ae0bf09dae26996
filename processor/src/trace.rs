//! The processor's spans: one `batch` span per fetched batch, with a child span for each
//! stage — `fetch`, `lookup` (the dedup look-up of its event ids), `insert`, `ack` — each
//! with its row counts. With tracing off every span here is disabled and nothing is parsed.
//!
//! A batch holds messages of many requests, and so of many traces. Its span is made the
//! *child* of one of them and *links* to all the others: the parent is the first message
//! whose `traceparent` is sampled (else the first with any), so that an event's way from
//! its POST to ClickHouse reads as one trace, and the link of every other publish context
//! (each distinct one once, up to the SDK's limit of 128 per span,
//! `OTEL_SPAN_LINK_COUNT_LIMIT`) leads from the batch to the requests it also carried.
//! Messages without trace context (published with tracing off) add nothing.
//!
//! An empty pull makes no span: the spans start when the first message of a pull arrives,
//! and the parent is chosen once the pull has ended (the `fetch` span covers the time from
//! that first message to the end of the pull).
//!
//! Counts are recorded as `i64`: `tracing-opentelemetry` exports an unsigned integer field
//! as a string, a signed one as an integer attribute.

use std::collections::HashSet;

use async_nats::jetstream::Message;
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use tally_runtime::propagation::{self, TRACEPARENT, remote_span_context};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The spans of a pull in progress, opened at its first message.
pub struct FetchSpans {
    batch: Span,
    fetch: Span,
}

impl FetchSpans {
    /// Opens the `batch` span and its `fetch` stage; the parent comes at [`Self::fetched`].
    pub fn start() -> Self {
        Self {
            batch: tracing::info_span!(
                parent: None,
                "batch",
                otel.kind = "consumer",
                otel.status_code = Empty,
                messaging.system = "nats",
                messaging.operation.type = "process",
                rows = Empty,
                traces = Empty,
                written = Empty,
                skipped = Empty,
                poison = Empty,
            ),
            fetch: tracing::info_span!(parent: None, "fetch", rows = Empty),
        }
    }

    /// The pull ended with `messages`: parents the batch span on one publish context and
    /// links it to the others (see the module documentation), closes the `fetch` stage,
    /// and returns the batch span.
    pub fn fetched(self, messages: &[Message]) -> Span {
        let Self { batch, fetch } = self;
        batch.record("rows", messages.len() as i64);
        fetch.record("rows", messages.len() as i64);
        let contexts = publish_contexts(messages);
        batch.record("traces", contexts.len() as i64);
        let parent = contexts
            .iter()
            .position(SpanContext::is_sampled)
            .or((!contexts.is_empty()).then_some(0));
        if let Some(parent) = parent {
            let cx =
                opentelemetry::Context::new().with_remote_span_context(contexts[parent].clone());
            // Fails only when the span is disabled (tracing off): nothing to parent then.
            let _ = batch.set_parent(cx);
        }
        for (i, context) in contexts.into_iter().enumerate() {
            if Some(i) != parent {
                batch.add_link(context);
            }
        }
        // The fetch span was opened at the first message (so it starts then) but is given
        // its parent only now, once the batch span's own parent is known.
        let _ = fetch.set_parent(batch.context());
        drop(fetch);
        batch
    }
}

/// The distinct publish contexts the messages carry, in message order. All the messages of
/// one publish carry the same `traceparent`, so each distinct header is parsed once.
fn publish_contexts(messages: &[Message]) -> Vec<SpanContext> {
    if !tally_runtime::telemetry::enabled() {
        return Vec::new();
    }
    let mut seen = HashSet::new();
    messages
        .iter()
        .filter_map(|m| m.headers.as_ref())
        .filter(|headers| {
            propagation::header(headers, TRACEPARENT)
                .is_some_and(|traceparent| seen.insert(traceparent))
        })
        .filter_map(|headers| remote_span_context(Some(headers)))
        .collect()
}

/// A stage span that failed: the error is recorded on it and its status set.
pub fn record_error(span: &Span, error: &dyn std::fmt::Display) {
    span.record("otel.status_code", "ERROR");
    span.record("error", tracing::field::display(error));
}
