//! W3C trace context (`traceparent`, `tracestate`) in NATS message headers: the one place
//! the collector writes it into the messages it publishes and the processor reads it back,
//! so that an event's way from its POST to ClickHouse is one trace.
//!
//! Both directions do nothing while tracing is off ([`crate::telemetry::enabled`]): no
//! header is added to a message, and none is parsed.

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The header names W3C trace context uses.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Writes trace context into a NATS header map.
pub struct HeaderInjector<'a>(pub &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    /// Sets a header; an empty value (the propagator's `tracestate` when there is no
    /// state) is left out.
    fn set(&mut self, key: &str, value: String) {
        if !value.is_empty() {
            self.0.insert(key, value.as_str());
        }
    }
}

/// Reads trace context from a NATS header map. NATS header names are case-sensitive;
/// a name written in another case is found too.
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        header(self.0, key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .iter()
            .map(|(name, _)| AsRef::<str>::as_ref(name))
            .collect()
    }
}

/// The first value of header `name`, whatever the case of its name in `headers`.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    if let Some(value) = headers.get(name) {
        return Some(value.as_str());
    }
    headers
        .iter()
        .find(|(key, _)| AsRef::<str>::as_ref(*key).eq_ignore_ascii_case(name))
        .and_then(|(_, values)| values.first())
        .map(|value| value.as_str())
}

/// The trace headers that carry `span`'s context, for the messages published within it;
/// `None` when tracing is off (or the span is not traced), so that nothing is added.
pub fn trace_headers(span: &tracing::Span) -> Option<HeaderMap> {
    if !crate::telemetry::enabled() {
        return None;
    }
    context_headers(&span.context())
}

/// The headers of `cx`, when it holds a valid span context.
fn context_headers(cx: &opentelemetry::Context) -> Option<HeaderMap> {
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut headers = HeaderMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(&mut headers));
    Some(headers)
}

/// The span context a message's headers carry (its publisher's), if tracing is on and the
/// headers hold a valid `traceparent`.
pub fn remote_span_context(headers: Option<&HeaderMap>) -> Option<SpanContext> {
    if !crate::telemetry::enabled() {
        return None;
    }
    headers.and_then(header_span_context)
}

fn header_span_context(headers: &HeaderMap) -> Option<SpanContext> {
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let span_context = cx.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};

    use super::*;

    fn span_context(sampled: bool) -> SpanContext {
        SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            if sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            TraceState::from_key_value([("tally", "1")]).unwrap(),
        )
    }

    #[test]
    fn a_context_round_trips_through_nats_headers() {
        let cx = opentelemetry::Context::new().with_remote_span_context(span_context(true));
        let headers = context_headers(&cx).unwrap();
        assert_eq!(
            headers.get(TRACEPARENT).map(|v| v.as_str()),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(headers.get(TRACESTATE).map(|v| v.as_str()), Some("tally=1"));
        let back = header_span_context(&headers).unwrap();
        assert_eq!(back.trace_id(), span_context(true).trace_id());
        assert_eq!(back.span_id(), span_context(true).span_id());
        assert!(back.is_sampled() && back.is_remote());
        // An unsampled context travels too, flagged so.
        let unsampled = opentelemetry::Context::new().with_remote_span_context(span_context(false));
        let headers = context_headers(&unsampled).unwrap();
        assert!(headers.get(TRACEPARENT).unwrap().as_str().ends_with("-00"));
        assert!(!header_span_context(&headers).unwrap().is_sampled());
        // No state, no tracestate header.
        let stateless = SpanContext::new(
            span_context(true).trace_id(),
            span_context(true).span_id(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(stateless);
        let headers = context_headers(&cx).unwrap();
        assert!(headers.get(TRACEPARENT).is_some());
        assert!(headers.get(TRACESTATE).is_none());
    }

    #[test]
    fn headers_are_read_whatever_the_case_of_their_names() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "Traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        assert!(header_span_context(&headers).is_some());
    }

    #[test]
    fn no_context_means_no_headers_and_bad_headers_mean_no_context() {
        assert!(context_headers(&opentelemetry::Context::new()).is_none());
        let mut headers = HeaderMap::new();
        assert!(header_span_context(&headers).is_none());
        headers.insert(
            TRACEPARENT,
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        );
        assert!(header_span_context(&headers).is_none());
        headers.insert(TRACEPARENT, "not a traceparent");
        assert!(header_span_context(&headers).is_none());
    }

    #[test]
    fn with_tracing_off_nothing_is_written_or_read() {
        // No test of this crate installs an exporter: tracing is off here.
        assert!(!crate::telemetry::enabled());
        let span = tracing::info_span!("publish");
        assert!(trace_headers(&span).is_none());
        let cx = opentelemetry::Context::new().with_remote_span_context(span_context(true));
        let headers = context_headers(&cx).unwrap();
        assert!(remote_span_context(Some(&headers)).is_none());
    }
}
