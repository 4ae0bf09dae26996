//! The HTTP contract of the query service: every error a request can meet, mapped to its
//! status code and stable error code in one place, and the body of an error answer. The codes
//! and bodies are the ones the collector answered `/v1/stats` with before the read side moved
//! here: `{"error","message"}`, and `Retry-After: 1` with every 503.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tally_runtime::access::{Denied, with_challenge};

use crate::query::request::Problem;

/// Everything that ends a request with an error. The `Display` text is the message clients
/// read.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A query parameter is missing or malformed; the message names it.
    #[error("{0}")]
    InvalidQuery(String),
    /// A `/v1/query` body with problems, each with a JSON pointer to its place.
    #[error("{} problem(s) with the query: {}", .0.len(), .0.iter().map(|p| format!("{} {}", if p.pointer.is_empty() { "(body)" } else { &p.pointer }, p.message)).collect::<Vec<_>>().join("; "))]
    InvalidBody(Vec<Problem>),
    #[error("site_id {0:?} is not configured in this pipeline")]
    UnknownSite(String),
    #[error("the site declares no experiment {0:?} (spec.experiments)")]
    UnknownExperiment(String),
    #[error("the site has no session {0:?}")]
    UnknownSession(String),
    /// The request's key may not read what it asks (401 or 403).
    #[error(transparent)]
    Denied(#[from] Denied),
    /// ClickHouse did not answer; the client may retry.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    /// The status code and the stable machine-readable error code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidQuery(_) | Self::InvalidBody(_) => {
                (StatusCode::BAD_REQUEST, "invalid_query")
            }
            Self::UnknownSite(_) => (StatusCode::NOT_FOUND, "unknown_site"),
            Self::UnknownExperiment(_) => (StatusCode::NOT_FOUND, "unknown_experiment"),
            Self::UnknownSession(_) => (StatusCode::NOT_FOUND, "unknown_session"),
            Self::Denied(denied) => denied.status_and_code(),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }
}

/// A `limit` query parameter: `default` when absent or empty, else a whole number from 1
/// to `max`.
pub fn parse_limit(text: Option<&str>, default: u32, max: u32) -> Result<u32, ApiError> {
    match text {
        None | Some("") => Ok(default),
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::InvalidQuery(format!(
                    "limit {text:?} must be a whole number from 1 to {max}"
                ))
            }),
    }
}

/// The JSON body of an error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable code: `invalid_query`, `missing_api_key`, `invalid_api_key`,
    /// `forbidden_site`, `insufficient_scope`, `unknown_site`, `unknown_experiment`,
    /// `unknown_session` or `unavailable`.
    error: &'static str,
    /// What went wrong, for people.
    message: String,
    /// With `invalid_query` from `POST /v1/query`: each problem and where it is.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    problems: Vec<Problem>,
}

/// The error answers every endpoint may give (the OpenAPI document lists them).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum ErrorAnswers {
    /// A parameter or the body is malformed; the message (and `problems`) names it.
    #[response(status = 400)]
    Invalid(ErrorBody),
    /// No key, or a key that is not one of the pipeline's.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The key may not read this site, or this needs an admin key.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// No such site, experiment or session.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// ClickHouse or NATS did not answer; retry after the `Retry-After` seconds.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = self.to_string();
        let problems = match self {
            Self::InvalidBody(problems) => problems,
            _ => Vec::new(),
        };
        let body = ErrorBody {
            error: code,
            message,
            problems,
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // A 503 tells the client when to retry: after a second.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        with_challenge(response)
    }
}
