//! The pipeline's health and its dead letters, from JetStream (seed 004's queue health and
//! Bull Board):
//! - `GET /v1/pipeline/health`: the backlog (waiting, in flight, redelivered), the dead
//!   letters, what the stream and ClickHouse hold, the oldest waiting event's age and the
//!   processors' lag;
//! - `GET /v1/pipeline/dead-letters?site_id=&after=&limit=`: the dead letters, oldest first,
//!   with why each was given up on;
//! - `POST /v1/pipeline/dead-letters/replay` `{"sequences": [...]}`: sends chosen ones back
//!   through the pipeline. The processor looks every event up by `event_id` before it
//!   stores it, so an event that was stored after all is not stored twice; a replay has its
//!   own `Nats-Msg-Id`, so replaying one twice within the stream's duplicate window
//!   publishes it once. A replayed letter leaves the dead-letter stream.
//!
//! The health and the replay describe and change the whole pipeline: they need an admin
//! key. The dead letters of one site (`site_id`) may be listed with its read key too.

use std::sync::Arc;

use async_nats::HeaderMap as NatsHeaders;
use async_nats::jetstream;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tally_contracts::stream::{self, dead_letter};
use tally_contracts::{RuntimeConfig, naming};
use tally_runtime::access::authorize_admin;
use time::OffsetDateTime;
use tokio::sync::OnceCell;

use crate::api::{ApiError, parse_limit};
use crate::stats::StatsState;

/// The query service's JetStream connection, made at the first request that needs it (so
/// the service starts, and answers reads, while NATS is away).
#[derive(Default)]
pub struct Nats {
    js: OnceCell<jetstream::Context>,
}

/// How long a request waits for NATS to answer.
const NATS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Nats {
    async fn js(&self, config: &RuntimeConfig) -> Result<&jetstream::Context, ApiError> {
        self.js
            .get_or_try_init(|| async {
                let servers = stream::nats_servers(&config.pipeline.spec.nats.url)
                    .map_err(|e| unavailable(&format!("spec.nats.url: {e}")))?;
                let options = config
                    .credentials
                    .nats
                    .connect_options()
                    .map_err(|e| unavailable(&e))?
                    .name("tally-query")
                    .connection_timeout(NATS_TIMEOUT);
                let client = options
                    .connect(servers)
                    .await
                    .map_err(|e| unavailable(&e.to_string()))?;
                let mut js = jetstream::new(client);
                js.set_timeout(NATS_TIMEOUT);
                Ok(js)
            })
            .await
    }
}

fn unavailable(why: &str) -> ApiError {
    tracing::warn!(error = %why, "NATS did not answer");
    ApiError::Unavailable(format!("NATS did not answer: {why}"))
}

/// The answer of `/v1/pipeline/health`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    pub pipeline: String,
    /// Events in the stream not yet given to a processor.
    pub waiting: u64,
    /// Events given to a processor and not yet acknowledged.
    pub in_flight: u64,
    /// Deliveries beyond the first of the events in flight.
    pub redelivered: u64,
    /// Messages in the dead-letter stream.
    pub dead_lettered: u64,
    /// Messages the events stream holds (until its `maxAge`), stored or not.
    pub in_stream: u64,
    /// Rows of the `events` table.
    pub stored: u64,
    /// How long the oldest waiting event has waited; null when none waits.
    pub oldest_waiting_age_seconds: Option<f64>,
    /// How long ago the oldest event not yet acknowledged arrived: how far the processors
    /// are behind (0 when they are not).
    pub processor_lag_seconds: f64,
    /// When this was read, RFC 3339.
    pub checked_at: String,
}

/// The pipeline's backlog, dead letters and lag (admin key).
#[utoipa::path(get, path = "/v1/pipeline/health", tag = "pipeline",
    responses((status = 200, description = "The pipeline's health", body = Health), crate::api::ErrorAnswers))]
pub async fn get_health(
    State(state): State<Arc<StatsState>>,
    headers: HeaderMap,
) -> Result<Json<Health>, ApiError> {
    let config = state.config.load_full();
    authorize_admin(config.keys(), &headers)?;
    let js = state.nats.js(&config).await?;
    let (backlog, stored) = tokio::join!(stream::backlog(js, &config), state.store.event_count());
    let backlog = backlog.map_err(|e| unavailable(&e.to_string()))?;
    let now = OffsetDateTime::now_utc();
    let now_ms = (now.unix_timestamp_nanos() / 1_000_000) as i64;
    let age = |ms: Option<i64>| ms.map(|ms| ((now_ms - ms).max(0)) as f64 / 1000.0);
    Ok(Json(Health {
        pipeline: config.name().to_owned(),
        waiting: backlog.waiting,
        in_flight: backlog.in_flight,
        redelivered: backlog.redelivered,
        dead_lettered: backlog.dead_lettered,
        in_stream: backlog.in_stream,
        stored: stored?,
        oldest_waiting_age_seconds: age(backlog.oldest_waiting_ms),
        processor_lag_seconds: age(backlog.oldest_unacknowledged_ms).unwrap_or(0.0),
        checked_at: rfc3339(now),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLettersQuery {
    /// One site's dead letters only (then its read key may list them).
    site_id: Option<String>,
    /// The `next_after` of the previous page.
    after: Option<String>,
    /// 1–500 (default 50).
    limit: Option<String>,
}

/// One dead letter.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    /// Its sequence in the dead-letter stream: what a replay names.
    pub sequence: u64,
    /// When it was dead-lettered, RFC 3339.
    pub dead_lettered_at: String,
    /// The site its subject names (`unknown` when the payload named none).
    pub site_id: String,
    /// `not_an_event`, `invalid_event` or `rejected_by_clickhouse`.
    pub kind: String,
    pub reason: String,
    pub deliveries: Option<u64>,
    pub event_id: Option<String>,
    pub original_subject: String,
    pub original_sequence: Option<u64>,
    /// The message as it was published: its JSON, or its text when it is not JSON.
    pub payload: Value,
}

/// The answer of `/v1/pipeline/dead-letters`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetters {
    pub dead_letters: Vec<DeadLetter>,
    /// The `after` of the next page; null on the last.
    pub next_after: Option<u64>,
}

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 500;

/// The dead letters, oldest first (admin key, or a site's read key with `site_id`).
#[utoipa::path(get, path = "/v1/pipeline/dead-letters", tag = "pipeline", params(DeadLettersQuery),
    responses((status = 200, description = "A page of dead letters", body = DeadLetters), crate::api::ErrorAnswers))]
pub async fn get_dead_letters(
    State(state): State<Arc<StatsState>>,
    headers: HeaderMap,
    Query(query): Query<DeadLettersQuery>,
) -> Result<Json<DeadLetters>, ApiError> {
    let config = state.config.load_full();
    let site = match query.site_id.filter(|s| !s.is_empty()) {
        Some(site_id) => Some(state.readable_site(&headers, Some(site_id))?.0),
        None => {
            authorize_admin(config.keys(), &headers)?;
            None
        }
    };
    let limit = parse_limit(query.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let after = match query.after.as_deref() {
        None | Some("") => 0,
        Some(text) => text.parse::<u64>().map_err(|_| {
            ApiError::InvalidQuery(format!("after {text:?} must be a dead letter's sequence"))
        })?,
    };
    let js = state.nats.js(&config).await?;
    let subject = match &site {
        Some(site_id) => naming::dead_letter_subject(config.name(), Some(site_id)),
        None => naming::dead_letter_subjects(config.name()),
    };
    let dlq = match js
        .get_stream(naming::dead_letter_stream_name(config.name()))
        .await
    {
        Ok(dlq) => dlq,
        // No dead letter yet: the processor creates the stream with the first.
        Err(e) if stream::is_missing_stream(&e) => {
            return Ok(Json(DeadLetters {
                dead_letters: Vec::new(),
                next_after: None,
            }));
        }
        Err(e) => return Err(unavailable(&e.to_string())),
    };
    let mut letters = Vec::new();
    let mut next = after + 1;
    let mut more = false;
    while letters.len() <= limit as usize {
        let message = match dlq.get_first_raw_message_by_subject(&subject, next).await {
            Ok(message) => message,
            Err(e) if stream::is_missing_message(&e) => break,
            Err(e) => return Err(unavailable(&e.to_string())),
        };
        if letters.len() == limit as usize {
            more = true;
            break;
        }
        next = message.sequence + 1;
        letters.push(letter(config.name(), &message));
    }
    let next_after = more
        .then(|| letters.last().map(|l: &DeadLetter| l.sequence))
        .flatten();
    Ok(Json(DeadLetters {
        dead_letters: letters,
        next_after,
    }))
}

fn letter(pipeline: &str, message: &jetstream::message::StreamMessage) -> DeadLetter {
    let header = |name: &str| header(&message.headers, name);
    let prefix = naming::dead_letter_subject(pipeline, None);
    let prefix = prefix.trim_end_matches(naming::UNKNOWN_SITE);
    DeadLetter {
        sequence: message.sequence,
        dead_lettered_at: rfc3339(message.time),
        site_id: message
            .subject
            .strip_prefix(prefix)
            .unwrap_or(naming::UNKNOWN_SITE)
            .to_owned(),
        kind: header(dead_letter::KIND).unwrap_or_default(),
        reason: header(dead_letter::REASON).unwrap_or_default(),
        deliveries: header(dead_letter::DELIVERIES).and_then(|d| d.parse().ok()),
        event_id: header(dead_letter::EVENT_ID),
        original_subject: header(dead_letter::ORIGINAL_SUBJECT).unwrap_or_default(),
        original_sequence: header(dead_letter::ORIGINAL_SEQUENCE).and_then(|s| s.parse().ok()),
        payload: serde_json::from_slice(&message.payload).unwrap_or_else(|_| {
            Value::String(String::from_utf8_lossy(&message.payload).into_owned())
        }),
    }
}

fn header(headers: &NatsHeaders, name: &str) -> Option<String> {
    headers.get(name).map(|v| v.as_str().to_owned())
}

/// The body of a replay.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// The dead letters' sequences, 1 to 1000 of them.
    #[schema(min_items = 1, max_items = 1000)]
    pub sequences: Vec<u64>,
}

/// What became of one dead letter.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Replayed {
    pub sequence: u64,
    /// `replayed` (published again, and removed from the dead letters), `not_found` (no
    /// such dead letter: replayed already, or never one), or `not_replayable` (it was not
    /// published on an event subject of this pipeline).
    pub outcome: &'static str,
    /// The sequence it was given in the events stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_sequence: Option<u64>,
}

/// The answer of a replay.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Replay {
    pub replayed: usize,
    pub results: Vec<Replayed>,
}

/// Most dead letters one replay sends.
const MAX_REPLAY: usize = 1000;

/// Sends chosen dead letters back through the pipeline (admin key).
#[utoipa::path(post, path = "/v1/pipeline/dead-letters/replay", tag = "pipeline", request_body = ReplayRequest,
    responses((status = 200, description = "What became of each", body = Replay), crate::api::ErrorAnswers))]
pub async fn post_replay(
    State(state): State<Arc<StatsState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Replay>, ApiError> {
    let config = state.config.load_full();
    authorize_admin(config.keys(), &headers)?;
    let request: ReplayRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::InvalidQuery(format!(
            "the body must be {{\"sequences\": [dead letter sequences]}}: {e}"
        ))
    })?;
    if request.sequences.is_empty() || request.sequences.len() > MAX_REPLAY {
        return Err(ApiError::InvalidQuery(format!(
            "sequences must hold 1 to {MAX_REPLAY} dead letters"
        )));
    }
    let js = state.nats.js(&config).await?;
    let dlq = match js
        .get_stream(naming::dead_letter_stream_name(config.name()))
        .await
    {
        Ok(dlq) => Some(dlq),
        // No dead letter yet: none of them is found.
        Err(e) if stream::is_missing_stream(&e) => None,
        Err(e) => return Err(unavailable(&e.to_string())),
    };
    let events = naming::event_subjects(config.name());
    let events_prefix = events.trim_end_matches('>');
    let mut results = Vec::with_capacity(request.sequences.len());
    for sequence in request.sequences {
        let found = match &dlq {
            Some(dlq) => dlq.get_raw_message(sequence).await.map(|m| (dlq, m)),
            None => Err(jetstream::stream::RawMessageError::new(
                jetstream::stream::RawMessageErrorKind::NoMessageFound,
            )),
        };
        let (dlq, message) = match found {
            Ok(found) => found,
            Err(e) if stream::is_missing_message(&e) => {
                results.push(Replayed {
                    sequence,
                    outcome: "not_found",
                    stream_sequence: None,
                });
                continue;
            }
            Err(e) => return Err(unavailable(&e.to_string())),
        };
        let subject = header(&message.headers, dead_letter::ORIGINAL_SUBJECT).unwrap_or_default();
        if !subject.starts_with(events_prefix) {
            results.push(Replayed {
                sequence,
                outcome: "not_replayable",
                stream_sequence: None,
            });
            continue;
        }
        let mut out = NatsHeaders::new();
        // Its own id: the event's would be dropped as a duplicate of the original within
        // the duplicate window, and the processor de-duplicates by event_id anyway.
        out.insert(
            "Nats-Msg-Id",
            format!("replay-{}-{sequence}", dlq.cached_info().config.name),
        );
        let ack = js
            .publish_with_headers(subject, out, message.payload.clone())
            .await
            .map_err(|e| unavailable(&e.to_string()))?
            .await
            .map_err(|e| unavailable(&e.to_string()))?;
        // Out of the dead letters only once the events stream holds it again.
        dlq.delete_message(sequence)
            .await
            .map_err(|e| unavailable(&e.to_string()))?;
        tracing::info!(
            sequence,
            stream_sequence = ack.sequence,
            "dead letter replayed"
        );
        results.push(Replayed {
            sequence,
            outcome: "replayed",
            stream_sequence: Some(ack.sequence),
        });
    }
    Ok(Json(Replay {
        replayed: results.iter().filter(|r| r.outcome == "replayed").count(),
        results,
    }))
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
