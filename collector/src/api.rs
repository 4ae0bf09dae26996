//! The HTTP contract of the collector: every error a request can meet, mapped to its status
//! code in one place, the response bodies, and the answer to a POST of events (its status
//! and `Retry-After` are decided here and nowhere else).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use uuid::Uuid;

use tally_runtime::access::{Denied, with_challenge};

use crate::payload::Shape;
use crate::rate_limit::{Limited, Standing, header_values};
use tally_contracts::validate::{Problem, Rejection};

/// Everything that ends a request with an error. The `Display` text is the message clients
/// read.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidBody(String),
    #[error("{0}")]
    BadEncoding(String),
    #[error("Content-Encoding {0:?} is not supported; send gzip or uncompressed bodies")]
    UnsupportedEncoding(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{} problem(s) with the event: {}", .0.len(), summary(.0))]
    InvalidEvent(Vec<Problem>),
    #[error("site_id {0:?} is not configured in this pipeline")]
    UnknownSite(String),
    #[error("origin {origin_host:?} is not among the domains of site {site_id:?}")]
    ForbiddenOrigin {
        site_id: String,
        origin_host: String,
    },
    /// The request's key is missing, unknown, or not one of the event's site (401/403).
    #[error(transparent)]
    Denied(#[from] Denied),
    /// Over a site's or key's rate limit (429), or more events at once than its burst (413).
    #[error("{}", limited_message(.0))]
    RateLimited(Limited),
    #[error("{0}")]
    Unavailable(String),
    /// Load shedding: the collector holds as many events as it admits at once.
    #[error("the collector is at its limit of {0} events in flight; retry shortly")]
    Overloaded(u32),
}

fn limited_message(limited: &Limited) -> String {
    let whose = |name: &str| match name.strip_prefix("site:") {
        Some(site_id) => format!("site {site_id:?}"),
        None => "this API key".to_owned(),
    };
    match limited {
        Limited::Over(standing) => {
            let policy = &standing.policy;
            format!(
                "{} is over its rate limit of {} events per second (burst {}) at this collector; retry in {} s",
                whose(&policy.name),
                policy.per_second,
                policy.burst,
                standing.reset_seconds
            )
        }
        Limited::LargerThanBurst { policy, events } => format!(
            "a request of {events} events is more than the burst of {} events that {} allows; send smaller batches",
            policy.burst,
            whose(&policy.name)
        ),
    }
}

fn summary(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("{} {}", p.field, p.message))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ApiError {
    /// The status code and the stable machine-readable error code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidBody(_) => (StatusCode::BAD_REQUEST, "invalid_body"),
            Self::BadEncoding(_) => (StatusCode::BAD_REQUEST, "invalid_encoding"),
            Self::UnsupportedEncoding(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_encoding")
            }
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::InvalidEvent(_) => (StatusCode::BAD_REQUEST, "invalid_event"),
            Self::UnknownSite(_) => (StatusCode::NOT_FOUND, "unknown_site"),
            Self::ForbiddenOrigin { .. } => (StatusCode::FORBIDDEN, "forbidden_origin"),
            Self::Denied(denied) => denied.status_and_code(),
            Self::RateLimited(Limited::Over(_)) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::RateLimited(Limited::LargerThanBurst { .. }) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        match rejection {
            Rejection::Invalid(problems) => Self::InvalidEvent(problems),
            Rejection::UnknownSite(site) => Self::UnknownSite(site),
            Rejection::ForbiddenOrigin {
                site_id,
                origin_host,
            } => Self::ForbiddenOrigin {
                site_id,
                origin_host,
            },
            Rejection::MissingKey { site_id } => Self::Denied(Denied::no_ingest_key(&site_id)),
            Rejection::OtherSite { site_id } => Self::Denied(Denied::OtherSite {
                action: "post events for",
                site_id,
            }),
        }
    }
}

/// The JSON body of an error answer.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = self.to_string();
        let limited = match &self {
            Self::RateLimited(Limited::Over(standing)) => vec![standing.clone()],
            _ => Vec::new(),
        };
        let problems = match self {
            Self::InvalidEvent(problems) => problems,
            _ => Vec::new(),
        };
        let mut response = (
            status,
            Json(ErrorBody {
                error: code,
                message,
                problems,
            }),
        )
            .into_response();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was not read, so this connection cannot carry another
            // request: say so, or the client may send its next request into a closing socket.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        with_challenge(with_limits(with_retry_after(response), &limited))
    }
}

/// A 503 tells the client when to retry: after a second.
fn with_retry_after(mut response: Response) -> Response {
    if response.status() == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// The `RateLimit-Policy` and `RateLimit` headers of the limits a request met, and for a
/// 429 the `Retry-After` of the longest wait among them.
pub fn with_limits(mut response: Response, standings: &[Standing]) -> Response {
    let Some((policy, state)) = header_values(standings) else {
        return response;
    };
    let headers = response.headers_mut();
    for (name, value) in [("ratelimit-policy", policy), ("ratelimit", state)] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    if response.status() == StatusCode::TOO_MANY_REQUESTS {
        let wait = standings.iter().map(|s| s.reset_seconds).max().unwrap_or(1);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait));
    }
    response
}

/// The answer to a request that ended before its events were looked at one by one.
pub fn error_answer(error: ApiError) -> Response {
    error.into_response()
}

/// What became of one event of a request.
#[derive(Debug)]
pub enum EventOutcome {
    /// Durably stored (or stored before: a retried post, counted once). `visitor_id` is the
    /// id the collector gave it (cookie and hash sites), which the answer tells the client.
    Stored {
        event_id: Uuid,
        duplicate: bool,
        visitor_id: Option<String>,
    },
    /// Refused: the client must change it.
    Refused(ApiError),
    /// Valid but not stored: the client may retry it.
    Failed { event_id: Option<Uuid>, why: String },
    /// Valid, and not stored on purpose. Answered 202: nothing to retry.
    NotStored(NotStored),
}

/// Why a valid event was not stored on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// The visitor asked not to be tracked and the site respects it
    /// (`spec.privacy.respectDoNotTrack`).
    DoNotTrack,
    /// A known bot or crawler, and the site drops them (`spec.bots: drop`).
    Bot,
}

impl NotStored {
    /// The `reason` of the answer.
    pub fn reason(self) -> &'static str {
        match self {
            Self::DoNotTrack => "do_not_track",
            Self::Bot => "bot",
        }
    }
}

/// The answer to a POST of events, from what became of each. A single object answers as
/// its one event did (an error answer when refused or not stored); a batch answers per
/// item with 202 when anything was stored, 503 when anything must be retried, and
/// otherwise the status all its items share (else 400).
pub fn ingest_answer(shape: Shape, mut outcomes: Vec<EventOutcome>) -> Response {
    if shape == Shape::Single && outcomes.len() == 1 {
        match outcomes.pop() {
            Some(EventOutcome::Refused(error)) => return error.into_response(),
            Some(EventOutcome::Failed { why, .. }) => {
                return ApiError::Unavailable(why).into_response();
            }
            Some(stored) => outcomes.push(stored),
            None => {}
        }
    }
    let results: Vec<ItemResult> = outcomes
        .into_iter()
        .enumerate()
        .map(|(index, outcome)| ItemResult::of(index, outcome))
        .collect();
    let accepted = results.iter().filter(|r| r.status == 202).count();
    let failed = results.iter().filter(|r| r.status == 503).count();
    let rejected = results.len() - accepted - failed;
    let status = if failed > 0 {
        // Some events were not stored: the client must retry (stored ones are de-duplicated).
        StatusCode::SERVICE_UNAVAILABLE
    } else if accepted > 0 {
        StatusCode::ACCEPTED
    } else {
        // Nothing stored: the status every item shares, else plain 400.
        match results.first().map(|r| r.status) {
            Some(first) if results.iter().all(|r| r.status == first) => {
                StatusCode::from_u16(first).unwrap_or(StatusCode::BAD_REQUEST)
            }
            _ => StatusCode::BAD_REQUEST,
        }
    };
    let not_stored = results.iter().filter(|r| r.stored == Some(false)).count();
    let body = IngestResponse {
        accepted,
        not_stored,
        rejected,
        failed,
        results,
    };
    with_challenge(with_retry_after((status, Json(body)).into_response()))
}

/// The answer to a POST of events: counts, and one result per event in request order.
#[derive(Debug, Serialize)]
struct IngestResponse {
    /// Answered 202: stored, or (see `not_stored`) not stored on purpose.
    accepted: usize,
    /// Of the accepted, those not stored on purpose (Do Not Track, bots).
    #[serde(skip_serializing_if = "is_zero")]
    not_stored: usize,
    rejected: usize,
    failed: usize,
    results: Vec<ItemResult>,
}

/// What happened to one event of a request.
#[derive(Debug, Serialize)]
struct ItemResult {
    index: usize,
    /// 202 stored; 400/403/404 refused (see `error`); 503 not stored, retry.
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<Uuid>,
    /// The event id had been stored already (a retried post); it is counted once.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
    /// The visitor id the collector gave the event (sites whose `privacy.visitorId` is
    /// `cookie` or `hash`).
    #[serde(skip_serializing_if = "Option::is_none")]
    visitor_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    problems: Vec<Problem>,
    /// `false` for an event accepted but not stored on purpose (`reason` says why).
    #[serde(skip_serializing_if = "Option::is_none")]
    stored: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl ItemResult {
    fn of(index: usize, outcome: EventOutcome) -> Self {
        let not_stored = match &outcome {
            EventOutcome::NotStored(why) => Some(*why),
            _ => None,
        };
        let (event_id, duplicate, visitor_id, error) = match outcome {
            EventOutcome::Stored {
                event_id,
                duplicate,
                visitor_id,
            } => (Some(event_id), duplicate, visitor_id, None),
            EventOutcome::Refused(error) => (None, false, None, Some(error)),
            EventOutcome::Failed { event_id, why } => {
                (event_id, false, None, Some(ApiError::Unavailable(why)))
            }
            EventOutcome::NotStored(_) => (None, false, None, None),
        };
        let Some(error) = error else {
            return Self {
                index,
                status: StatusCode::ACCEPTED.as_u16(),
                event_id,
                duplicate,
                visitor_id,
                error: None,
                message: None,
                problems: Vec::new(),
                stored: not_stored.map(|_| false),
                reason: not_stored.map(NotStored::reason),
            };
        };
        let (status, code) = error.status_and_code();
        let message = error.to_string();
        Self {
            index,
            status: status.as_u16(),
            event_id,
            duplicate: false,
            visitor_id: None,
            error: Some(code),
            message: Some(message),
            problems: match error {
                ApiError::InvalidEvent(problems) => problems,
                _ => Vec::new(),
            },
            stored: None,
            reason: None,
        }
    }
}
