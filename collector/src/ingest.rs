//! `POST /v1/events`: read the body within its limits, validate every event, store the
//! valid ones, and answer per event. [`parse_events`] runs the same steps short of storing.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tally_contracts::{Event, RuntimeConfig};
use time::OffsetDateTime;

use crate::admission::Admission;
use crate::api::{ApiError, IngestResponse, ItemResult};
use crate::metrics::Outcome;
use crate::payload::{Item, Shape, decode_body, split_items};
use crate::router::AppState;
use crate::validate::{Limits, Problem, Rejection, validate_event};

/// The limits of one request, from the pipeline's `spec.collector`.
#[derive(Debug, Clone)]
pub struct IngestLimits {
    /// `maxBodyBytes`: the largest body, before and after decompression.
    pub max_body_bytes: usize,
    /// `maxBatchEvents`: the most events in one request.
    pub max_batch_events: usize,
    /// Limits on the text of one event.
    pub event: Limits,
}

impl IngestLimits {
    /// The limits `config` sets (or their defaults).
    pub fn of(config: &RuntimeConfig) -> Self {
        let collector = &config.pipeline.spec.collector;
        Self {
            max_body_bytes: collector.max_body_bytes as usize,
            max_batch_events: collector.max_batch_events as usize,
            event: Limits {
                max_properties_bytes: collector.max_properties_bytes as usize,
            },
        }
    }

    fn body_too_large(&self) -> ApiError {
        ApiError::PayloadTooLarge(format!(
            "body exceeds the limit of {} bytes",
            self.max_body_bytes
        ))
    }
}

/// What `POST /v1/events` makes of a request before it stores anything: the request's own
/// error, or the outcome of each of its events in order. `body` is the body as received,
/// the other arguments the request's `Content-Type`, `Content-Encoding` and `Origin`
/// headers; `now_ms` is the server time given to events without a timestamp. The handler
/// runs these same steps, with load shedding between reading the body and validating it.
pub fn parse_events(
    config: &RuntimeConfig,
    body: bytes::Bytes,
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    origin: Option<&str>,
    now_ms: i64,
) -> Result<Vec<Result<Event, ApiError>>, ApiError> {
    let limits = IngestLimits::of(config);
    if body.len() > limits.max_body_bytes {
        return Err(limits.body_too_large());
    }
    let body = decode_body(body, content_encoding, limits.max_body_bytes)?;
    let (_, items) = read_items(&body, content_type, &limits)?;
    let origin_host = origin_host(origin);
    Ok(items
        .into_iter()
        .map(|item| {
            check_item(item, config, &limits.event, now_ms, origin_host.as_deref())
                .map_err(ApiError::from)
        })
        .collect())
}

/// The events of a decoded body, read as NDJSON when `content_type` says so, within the
/// batch limit.
fn read_items<'a>(
    body: &'a [u8],
    content_type: Option<&str>,
    limits: &IngestLimits,
) -> Result<(Shape, Vec<Item<'a>>), ApiError> {
    let ndjson = content_type.is_some_and(|ct| {
        let mime = ct.split(';').next().unwrap_or_default().trim();
        [
            "application/x-ndjson",
            "application/ndjson",
            "application/jsonl",
        ]
        .iter()
        .any(|m| mime.eq_ignore_ascii_case(m))
    });
    split_items(body, ndjson, limits.max_batch_events)
}

/// One item of a body, validated: an event to store, or why it is refused.
fn check_item(
    item: Item<'_>,
    config: &RuntimeConfig,
    limits: &Limits,
    now_ms: i64,
    origin_host: Option<&str>,
) -> Result<Event, Rejection> {
    match item {
        Ok(raw) => validate_event(raw, config, limits, now_ms, origin_host),
        Err(message) => Err(Rejection::Invalid(vec![Problem {
            field: "event",
            message,
        }])),
    }
}

pub async fn post_events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let limits = &state.limits;
    let max_body = limits.max_body_bytes;
    let content_length =
        header_str(&headers, header::CONTENT_LENGTH).and_then(|v| v.parse::<usize>().ok());
    if content_length.is_some_and(|len| len > max_body) {
        // Read a moderately oversized body through before answering, so the client (still
        // writing it) gets to read the 413 instead of a reset connection; beyond 4× the
        // limit the connection is simply closed.
        drain(body, max_body.saturating_mul(4)).await;
        return Err(limits.body_too_large());
    }
    // Load shedding: reserve this request's share of the events budget before buffering its
    // body (estimated from its size, settled once parsed); held until the answer is built.
    let overloaded = || ApiError::Overloaded(state.admission.limit());
    let Some(mut admitted) = state
        .admission
        .try_admit(Admission::estimate(content_length))
    else {
        // Read the body through without keeping it, so the connection stays usable.
        drain(body, max_body).await;
        return Err(overloaded());
    };
    let raw = axum::body::to_bytes(body, max_body)
        .await
        .map_err(|_| limits.body_too_large())?;
    let body = decode_body(
        raw,
        header_str(&headers, header::CONTENT_ENCODING),
        max_body,
    )?;
    let (shape, items) = read_items(&body, header_str(&headers, header::CONTENT_TYPE), limits)?;
    if !admitted.settle(&state.admission, items.len()) {
        return Err(overloaded());
    }

    let origin_host = origin_host(header_str(&headers, header::ORIGIN));
    let now_ms = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let mut valid: Vec<Event> = Vec::with_capacity(items.len());
    let mut valid_index = Vec::with_capacity(items.len());
    let mut results: Vec<Option<ItemResult>> = Vec::with_capacity(items.len());
    // Outcomes are counted once per request, not once per event.
    let mut counts = OutcomeCounts::default();
    for (index, item) in items.into_iter().enumerate() {
        let checked = check_item(
            item,
            &state.config,
            &limits.event,
            now_ms,
            origin_host.as_deref(),
        );
        match checked {
            Ok(event) => {
                valid.push(event);
                valid_index.push(index);
                results.push(None);
            }
            Err(rejection) => {
                if shape == Shape::Single {
                    state.metrics.count(Outcome::from(&rejection), 1);
                    return Err(rejection.into());
                }
                counts.add(Outcome::from(&rejection));
                results.push(Some(ItemResult::failed(index, rejection.into(), None)));
            }
        }
    }

    let outcomes = state.sink.store(&valid).await;
    let mut failed = 0;
    for ((event, index), outcome) in valid.iter().zip(valid_index).zip(outcomes) {
        results[index] = Some(match outcome {
            Ok(stored) => {
                counts.add(if stored.duplicate {
                    Outcome::Duplicate
                } else {
                    Outcome::Accepted
                });
                ItemResult::stored(index, event.event_id, stored.duplicate)
            }
            Err(why) => {
                failed += 1;
                counts.add(Outcome::Failed);
                tracing::warn!(error = %why, event_id = %event.event_id, "event not stored");
                ItemResult::failed(index, ApiError::Unavailable(why), Some(event.event_id))
            }
        });
    }
    counts.record(&state.metrics);
    let results: Vec<ItemResult> = results.into_iter().flatten().collect();
    if shape == Shape::Single && failed > 0 {
        let message = results[0].message.clone().unwrap_or_default();
        return Err(ApiError::Unavailable(message));
    }

    let accepted = results.iter().filter(|r| r.status == 202).count();
    let rejected = results.len() - accepted - failed;
    let status = if failed > 0 {
        // Some events were not stored: the client must retry (stored ones are de-duplicated).
        StatusCode::SERVICE_UNAVAILABLE
    } else if accepted > 0 {
        StatusCode::ACCEPTED
    } else {
        // Nothing stored: the status every item shares, else plain 400.
        let first = results[0].status;
        if results.iter().all(|r| r.status == first) {
            StatusCode::from_u16(first).unwrap_or(StatusCode::BAD_REQUEST)
        } else {
            StatusCode::BAD_REQUEST
        }
    };
    let body = IngestResponse {
        accepted,
        rejected,
        failed,
        results,
    };
    let mut response = (status, Json(body)).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("1"),
        );
    }
    Ok(response)
}

/// Per-request tallies of event outcomes, recorded in the metrics in one go.
#[derive(Default)]
struct OutcomeCounts(Vec<(Outcome, u64)>);

impl OutcomeCounts {
    fn add(&mut self, outcome: Outcome) {
        match self.0.iter_mut().find(|(o, _)| *o == outcome) {
            Some((_, n)) => *n += 1,
            None => self.0.push((outcome, 1)),
        }
    }

    fn record(&self, metrics: &crate::metrics::Metrics) {
        for (outcome, n) in &self.0 {
            metrics.count(*outcome, *n);
        }
    }
}

/// Reads a body through without keeping it (at most `limit` bytes).
async fn drain(body: Body, limit: usize) {
    use futures::StreamExt as _;
    let mut stream = body.into_data_stream();
    let mut seen = 0;
    while let Some(Ok(chunk)) = stream.next().await {
        seen += chunk.len();
        if seen > limit {
            break;
        }
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The host of a browser's `Origin` header. An origin that is not a URL (such as `null`)
/// is returned as written, so it matches no site domain.
fn origin_host(origin: Option<&str>) -> Option<String> {
    let origin = origin?;
    Some(match url::Url::parse(origin) {
        Ok(url) => url.host_str().unwrap_or(origin).to_owned(),
        Err(_) => origin.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::tests::config;

    const NOW_MS: i64 = 1_780_000_000_000;
    const EVENT: &str = r#"{"site_id":"shop","event_type":"click"}"#;

    fn parse(
        body: &str,
        content_type: Option<&str>,
        origin: Option<&str>,
    ) -> Result<Vec<Result<Event, ApiError>>, ApiError> {
        let body = bytes::Bytes::copy_from_slice(body.as_bytes());
        parse_events(&config(), body, content_type, None, origin, NOW_MS)
    }

    #[test]
    fn parse_events_applies_the_configured_limits() {
        // The defaults: maxBodyBytes 1 MiB, maxBatchEvents 1000.
        let long = format!(r#"{{"site_id":"shop","title":"{}"}}"#, "x".repeat(1 << 20));
        assert!(matches!(
            parse(&long, None, None),
            Err(ApiError::PayloadTooLarge(_))
        ));
        assert!(matches!(
            parse(&[EVENT; 1001].join("\n"), None, None),
            Err(ApiError::PayloadTooLarge(_))
        ));
        let most = parse(&[EVENT; 1000].join("\n"), None, None).unwrap();
        assert!(most.len() == 1000 && most.iter().all(Result::is_ok));
    }

    #[test]
    fn parse_events_reads_the_headers_as_the_handler_does() {
        // A declared NDJSON body of one line is a batch; the media type may carry parameters.
        let items = parse(EVENT, Some("Application/X-NDJSON; charset=utf-8"), None).unwrap();
        assert_eq!(items.len(), 1);
        let items = parse("{\"a\":\n1}", Some("application/x-ndjson"), None).unwrap();
        assert_eq!(items.len(), 2);
        assert!(parse("{\"a\":\n1}", Some("application/json"), None).is_ok());
        // The origin's host must be one of the site's domains.
        let from = |origin| parse(EVENT, None, Some(origin)).unwrap().remove(0);
        assert!(from("https://www.shop.example.com:8443").is_ok());
        assert!(matches!(
            from("https://elsewhere.example.net"),
            Err(ApiError::ForbiddenOrigin { .. })
        ));
        assert!(matches!(
            from("null"),
            Err(ApiError::ForbiddenOrigin { .. })
        ));
    }
}
