//! `POST /v1/events`: read the body within its limits, validate every event, store the
//! valid ones, and answer per event.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tally_contracts::Event;
use time::OffsetDateTime;

use crate::admission::Admission;
use crate::api::{ApiError, IngestResponse, ItemResult};
use crate::metrics::Outcome;
use crate::payload::{Shape, decode_body, split_items};
use crate::router::AppState;
use crate::validate::{Rejection, validate_event};

pub async fn post_events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let max_body = state.max_body_bytes;
    let too_large =
        || ApiError::PayloadTooLarge(format!("body exceeds the limit of {max_body} bytes"));
    let content_length =
        header_str(&headers, header::CONTENT_LENGTH).and_then(|v| v.parse::<usize>().ok());
    if content_length.is_some_and(|len| len > max_body) {
        // Read a moderately oversized body through before answering, so the client (still
        // writing it) gets to read the 413 instead of a reset connection; beyond 4× the
        // limit the connection is simply closed.
        drain(body, max_body.saturating_mul(4)).await;
        return Err(too_large());
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
        .map_err(|_| too_large())?;
    let body = decode_body(
        raw,
        header_str(&headers, header::CONTENT_ENCODING),
        max_body,
    )?;
    let ndjson = header_str(&headers, header::CONTENT_TYPE).is_some_and(|ct| {
        let mime = ct.split(';').next().unwrap_or_default().trim();
        [
            "application/x-ndjson",
            "application/ndjson",
            "application/jsonl",
        ]
        .iter()
        .any(|m| mime.eq_ignore_ascii_case(m))
    });
    let (shape, items) = split_items(&body, ndjson)?;
    if items.len() > state.max_batch_events {
        return Err(ApiError::PayloadTooLarge(format!(
            "the batch holds {} events; the limit is {}",
            items.len(),
            state.max_batch_events
        )));
    }
    if !admitted.settle(&state.admission, items.len()) {
        return Err(overloaded());
    }

    let origin_host = origin_host(&headers);
    let now_ms = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let mut valid: Vec<Event> = Vec::with_capacity(items.len());
    let mut valid_index = Vec::with_capacity(items.len());
    let mut results: Vec<Option<ItemResult>> = Vec::with_capacity(items.len());
    // Outcomes are counted once per request, not once per event.
    let mut counts = OutcomeCounts::default();
    for (index, item) in items.into_iter().enumerate() {
        let checked = match item {
            Ok(raw) => validate_event(
                raw,
                &state.config,
                &state.limits,
                now_ms,
                origin_host.as_deref(),
            ),
            Err(message) => Err(Rejection::Invalid(vec![crate::validate::Problem {
                field: "event",
                message,
            }])),
        };
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
fn origin_host(headers: &HeaderMap) -> Option<String> {
    let origin = header_str(headers, header::ORIGIN)?;
    Some(match url::Url::parse(origin) {
        Ok(url) => url.host_str().unwrap_or(origin).to_owned(),
        Err(_) => origin.to_owned(),
    })
}
