//! OpenTelemetry tracing end to end: the collector and the processor export to a real Jaeger
//! (all-in-one, in memory, on loopback), and an event's way from its POST to ClickHouse is
//! one trace, carried across NATS in the messages' `traceparent` headers. With tracing off
//! (the default) no trace header is published at all.

use std::time::Duration;

use async_nats::jetstream;
use serde_json::{Value, json};
use tally_contracts::naming;
use tally_e2e::jaeger::{Jaeger, SpanRecord, Trace};
use tally_e2e::{DATABASE, Options, PIPELINE, Stack, eventually};
use uuid::Uuid;

const COLLECTOR: &str = "tally-collector";
const PROCESSOR: &str = "tally-processor";

fn page_view(site: &str, event_id: Uuid) -> Value {
    json!({"site_id": site, "event_type": "page_view", "path": "/traced", "event_id": event_id})
}

/// The headers of the last message the stream holds for `site`.
async fn last_message_headers(stack: &Stack, site: &str) -> anyhow::Result<async_nats::HeaderMap> {
    let nats = stack.nats_client().await?;
    let stream = jetstream::new(nats)
        .get_stream(naming::stream_name(PIPELINE))
        .await?;
    let message = stream
        .get_last_raw_message_by_subject(&naming::event_subject(PIPELINE, site))
        .await?;
    Ok(message.headers)
}

/// (trace id, span id) of a `traceparent` header value.
fn parse_traceparent(value: &str) -> (String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {value:?}");
    assert_eq!(parts[0], "00", "traceparent version");
    assert_eq!(
        parts[3], "01",
        "the collector samples every request by default"
    );
    (parts[1].to_owned(), parts[2].to_owned())
}

/// Jaeger may write ids without their leading zeros.
fn same_id(a: &str, b: &str) -> bool {
    a.trim_start_matches('0') == b.trim_start_matches('0')
}

fn is_child_of(span: &SpanRecord, parent: &SpanRecord) -> bool {
    span.parent
        .as_ref()
        .is_some_and(|(t, s)| same_id(t, &parent.trace_id) && same_id(s, &parent.span_id))
}

#[tokio::test]
async fn with_tracing_off_no_trace_header_is_published() -> anyhow::Result<()> {
    let mut stack = Stack::start_servers(Options::default()).await?;
    // No processor: the message stays in the stream to be looked at.
    stack.start_collector().await?;
    let event_id = Uuid::new_v4();
    let (status, answer) = stack.post(page_view("shop", event_id).to_string()).await?;
    assert_eq!(status, 202, "{answer}");
    let headers = last_message_headers(&stack, "shop").await?;
    let names: Vec<String> = headers.iter().map(|(k, _)| k.to_string()).collect();
    assert_eq!(
        headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned()),
        Some(event_id.to_string())
    );
    assert!(
        names.iter().all(
            |n| !n.eq_ignore_ascii_case("traceparent") && !n.eq_ignore_ascii_case("tracestate")
        ),
        "headers of a message published with tracing off: {names:?}"
    );
    Ok(())
}

#[tokio::test]
async fn one_trace_follows_events_from_post_to_clickhouse() -> anyhow::Result<()> {
    let mut stack = Stack::start_servers(Options::default()).await?;
    let jaeger = Jaeger::start(&stack.dir.join("jaeger")).await?;
    stack.env = jaeger.otel_env();
    stack.start_collector().await?;

    // Two requests while no processor runs: their messages wait in the stream, so that the
    // processor's first pull takes them all in one batch. A: three events, B: one.
    let a: Vec<Value> = (0..3).map(|_| page_view("shop", Uuid::new_v4())).collect();
    let (status, answer) = stack.post(json!(a).to_string()).await?;
    assert_eq!(status, 202, "{answer}");
    let (status, answer) = stack
        .post(page_view("docs", Uuid::new_v4()).to_string())
        .await?;
    assert_eq!(status, 202, "{answer}");

    // Each message carries its publish span's context.
    let header = |headers: &async_nats::HeaderMap| {
        headers
            .get("traceparent")
            .map(|v| v.as_str().to_owned())
            .expect("a message published with tracing on carries traceparent")
    };
    let (trace_a, publish_a) =
        parse_traceparent(&header(&last_message_headers(&stack, "shop").await?));
    let (trace_b, publish_b) =
        parse_traceparent(&header(&last_message_headers(&stack, "docs").await?));
    assert_ne!(trace_a, trace_b, "each request is a trace of its own");

    stack.start_processor(&[]).await?;
    stack
        .wait_sql(
            &format!("SELECT count() FROM {DATABASE}.events"),
            "4",
            Duration::from_secs(60),
        )
        .await?;

    // The processor's spans reach Jaeger within its export interval; the batch span, which
    // ends with the acknowledgements, is the last of them.
    let trace: Trace = eventually(
        "trace A to hold the collector's and the processor's spans",
        Duration::from_secs(30),
        || async {
            let traces = jaeger.traces(COLLECTOR, 50).await.ok()?;
            traces.into_iter().find(|t| {
                same_id(&t.trace_id, &trace_a)
                    && !t.spans_named(PROCESSOR, "batch").is_empty()
                    && !t.spans_named(PROCESSOR, "ack").is_empty()
            })
        },
    )
    .await?;

    // The collector: the request's server span, and its publish as a child.
    let request = trace.only(COLLECTOR, "POST /v1/events")?;
    assert_eq!(request.parent, None, "a request starts its trace");
    assert_eq!(request.text("http.request.method"), Some("POST"));
    assert_eq!(request.text("http.route"), Some("/v1/events"));
    assert_eq!(
        request.int("http.response.status_code"),
        Some(202),
        "{request:?}"
    );
    let publish = trace.only(COLLECTOR, "publish")?;
    assert!(
        is_child_of(publish, request),
        "publish under the request: {publish:?}"
    );
    assert!(
        same_id(&publish.span_id, &publish_a),
        "the messages carry the publish span"
    );
    assert_eq!(publish.int("events"), Some(3));
    assert_eq!(publish.int("failed"), Some(0));

    // The processor: the batch continues the trace of its first message (A's publish) and
    // links to the other request's publish.
    let batch = trace.only(PROCESSOR, "batch")?;
    assert!(
        is_child_of(batch, publish),
        "batch under A's publish: {batch:?}"
    );
    assert!(
        batch
            .links
            .iter()
            .any(|(t, s)| same_id(t, &trace_b) && same_id(s, &publish_b)),
        "the batch links to B's publish: {batch:?}"
    );
    assert_eq!(batch.int("rows"), Some(4));
    assert_eq!(batch.int("traces"), Some(2));
    assert_eq!(batch.int("written"), Some(4));
    assert_eq!(batch.int("skipped"), Some(0));
    assert_eq!(batch.int("poison"), Some(0));
    // Its stages, each a child of the batch, with their row counts.
    for stage in ["fetch", "lookup", "insert", "ack"] {
        let span = trace.only(PROCESSOR, stage)?;
        assert!(
            is_child_of(span, batch),
            "{stage} under the batch: {span:?}"
        );
        assert_eq!(span.int("rows"), Some(4), "{stage}: {span:?}");
    }
    assert_eq!(trace.only(PROCESSOR, "lookup")?.int("found"), Some(0));
    assert_eq!(trace.children_of(batch).count(), 4);

    // B's own trace holds its request and publish; the batch is reached through the link.
    let b = jaeger
        .traces(COLLECTOR, 50)
        .await?
        .into_iter()
        .find(|t| same_id(&t.trace_id, &trace_b))
        .expect("trace B in Jaeger");
    let publish = b.only(COLLECTOR, "publish")?;
    assert_eq!(publish.int("events"), Some(1));
    assert!(is_child_of(publish, b.only(COLLECTOR, "POST /v1/events")?));
    assert_eq!(b.spans_named(PROCESSOR, "batch").len(), 0);

    // Probes make no spans.
    let probed = jaeger.traces(COLLECTOR, 100).await?;
    assert!(
        probed
            .iter()
            .flat_map(|t| &t.spans)
            .all(|s| !s.operation.contains("/readyz") && !s.operation.contains("/healthz")),
        "health probes are not traced"
    );
    Ok(())
}
