//! `POST /v1/events`: the handler reads the body within its limits, [`parse_events`] turns
//! it into events (the one parsing path, which the fuzz target and the property test run
//! too), the valid events are stored, and `api` builds the answer.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::IntoResponse as _;
use axum::response::Response;
use tally_contracts::access::Grant;
use tally_contracts::{Event, RuntimeConfig};
use tally_crds::{BotPolicy, KeyScope, VisitorIdMode};
use tally_runtime::access::{Denied, find_key, grant_of};
use time::OffsetDateTime;

use crate::admission::Admission;
use crate::api::{self, ApiError, EventOutcome, NotStored};
use crate::metrics::{BotAction, Metrics};
use crate::payload::{Item, Shape, decode_body, split_items};
use crate::pixel;
use crate::rate_limit::{RateLimits, Standing};
use crate::salt::Salts;
use crate::segment;
use crate::sink::{EventSink, Stored};
use crate::visitor::{self, TrustedProxies};
use tally_contracts::validate::{Caller, Limits, Problem, Rejection, validate_event};

/// What the ingest handler needs: the rules requests are checked against, the events
/// budget, the sink and the metrics it counts outcomes in.
pub struct IngestState {
    /// Replaced whole when the configuration is reloaded (SIGHUP); a request keeps the
    /// rules it started with.
    pub rules: ArcSwap<Rules>,
    /// How many collectors share the rate limits.
    pub collectors: u32,
    /// The daily salt of `hash` visitor ids.
    pub salts: Arc<Salts>,
    /// Load shedding: the events requests in progress may hold.
    pub admission: Admission,
    pub sink: Arc<dyn EventSink>,
    pub metrics: Arc<Metrics>,
}

/// The part of the configuration a request is checked against: the sites and keys, the
/// request limits, and the rate limits (whose buckets start full again after a reload).
pub struct Rules {
    pub config: RuntimeConfig,
    pub limits: IngestLimits,
    /// The sites' and keys' rate limits, at this collector's share.
    pub rate_limits: RateLimits,
    /// Whose forwarding headers are believed.
    pub proxies: TrustedProxies,
}

impl Rules {
    pub fn new(config: RuntimeConfig, collectors: u32) -> Self {
        Self {
            limits: IngestLimits::of(&config),
            rate_limits: RateLimits::of(&config, collectors),
            proxies: TrustedProxies(config.trusted_proxies.clone()),
            config,
        }
    }
}

impl IngestState {
    /// Checks the requests that start from now on against `config`. Connection settings,
    /// NATS and the events budget stay as they were started.
    pub fn reload(&self, config: RuntimeConfig) {
        self.rules
            .store(Arc::new(Rules::new(config, self.collectors)));
    }
}

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

/// What parsing reads of a request: its headers, and the grant of its API key (checked
/// before the body is read).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestHeaders<'a> {
    pub content_type: Option<&'a str>,
    pub content_encoding: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub key: Option<&'a Grant>,
}

impl<'a> RequestHeaders<'a> {
    fn of(headers: &'a HeaderMap, key: Option<&'a Grant>) -> Self {
        Self {
            content_type: header_str(headers, header::CONTENT_TYPE),
            content_encoding: header_str(headers, header::CONTENT_ENCODING),
            origin: header_str(headers, header::ORIGIN),
            key,
        }
    }
}

/// A request's body made into events: its shape, and each item's event or refusal, in
/// request order.
#[derive(Debug)]
pub struct Parsed {
    pub shape: Shape,
    pub items: Vec<Result<Event, ApiError>>,
}

/// What `POST /v1/events` makes of a request before it stores anything: the request's own
/// error, or the outcome of each of its events in order. `body` is the body as received;
/// `now_ms` is the server time given to events without a timestamp. `admit` is asked, once
/// the events are counted and before any is validated, whether that many may go on (the
/// handler's load shedding; the fuzz target admits everything).
pub fn parse_events(
    config: &RuntimeConfig,
    body: bytes::Bytes,
    headers: RequestHeaders<'_>,
    now_ms: i64,
    admit: impl FnOnce(usize) -> Result<(), ApiError>,
) -> Result<Parsed, ApiError> {
    let limits = IngestLimits::of(config);
    if body.len() > limits.max_body_bytes {
        return Err(limits.body_too_large());
    }
    let body = decode_body(body, headers.content_encoding, limits.max_body_bytes)?;
    let (shape, items) = read_items(&body, headers.content_type, &limits)?;
    admit(items.len())?;
    let origin_host = origin_host(headers.origin);
    let caller = Caller {
        origin_host: origin_host.as_deref(),
        key: headers.key,
    };
    let items = items
        .into_iter()
        .map(|item| check_item(item, config, &limits.event, now_ms, caller).map_err(ApiError::from))
        .collect();
    Ok(Parsed { shape, items })
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
    caller: Caller<'_>,
) -> Result<Event, Rejection> {
    match item {
        Ok(raw) => validate_event(raw, config, limits, now_ms, caller),
        Err(message) => Err(Rejection::Invalid(vec![Problem {
            field: "event",
            message,
        }])),
    }
}

/// `POST /v1/events`: read the body, parse it, store the valid events, answer per event.
pub async fn post_events(State(state): State<Arc<IngestState>>, request: Request) -> Response {
    handle(&state, request, Source::Native).await
}

/// `POST /segment/v1/{call}`: Segment's Tracking API (see `segment.rs`); 200
/// `{"success": true}` when every message was stored.
pub async fn post_segment(
    State(state): State<Arc<IngestState>>,
    Path(call): Path<String>,
    request: Request,
) -> Response {
    let call = match call.as_str() {
        "batch" | "import" => segment::Call::Batch,
        "track" => segment::Call::Single("track"),
        "page" => segment::Call::Single("page"),
        "screen" => segment::Call::Single("screen"),
        "identify" => segment::Call::Single("identify"),
        "group" => segment::Call::Single("group"),
        "alias" => segment::Call::Single("alias"),
        _ => return axum::http::StatusCode::NOT_FOUND.into_response(),
    };
    let mut response = handle(&state, request, Source::Segment(call)).await;
    if response.status() == axum::http::StatusCode::ACCEPTED {
        // What Segment's SDKs take for success; the rate-limit headers stay.
        let headers = std::mem::take(response.headers_mut());
        response = axum::Json(serde_json::json!({"success": true})).into_response();
        for (name, value) in headers.iter() {
            if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
                response.headers_mut().append(name, value.clone());
            }
        }
    }
    response
}

/// `GET /v1/pixel.gif`: a page view from a `<noscript>` image (see `pixel.rs`), answered
/// with a 1×1 GIF whatever became of it; the status says what did.
pub async fn get_pixel(State(state): State<Arc<IngestState>>, request: Request) -> Response {
    let status = handle(&state, request, Source::Pixel).await.status();
    pixel::image(status)
}

/// Where a request's events come from: Tally's own body, one of Segment's calls, or the
/// query string of a pixel.
#[derive(Debug, Clone, Copy)]
enum Source {
    Native,
    Segment(segment::Call),
    Pixel,
}

async fn handle(state: &IngestState, request: Request, source: Source) -> Response {
    let (parts, body) = request.into_parts();
    // The peer's address: the server puts it beside every request (none in-process).
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    let handled = match ingest(state, &parts.headers, parts.uri.query(), peer, body, source).await {
        Ok(handled) => handled,
        Err(error) => return api::error_answer(error),
    };
    state.metrics.count_outcomes(&handled.outcomes);
    let mut response = api::with_limits(
        api::ingest_answer(handled.shape, handled.outcomes),
        &handled.standings,
    );
    if let Some(cookie) = handled.set_cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// What a POST came to: each event's outcome, the rate limits it met, and the visitor
/// cookie to set.
struct Handled {
    shape: Shape,
    outcomes: Vec<EventOutcome>,
    standings: Vec<Standing>,
    set_cookie: Option<HeaderValue>,
}

/// The steps of a POST, up to what became of each event.
async fn ingest(
    state: &IngestState,
    headers: &HeaderMap,
    uri_query: Option<&str>,
    peer: Option<SocketAddr>,
    body: Body,
    source: Source,
) -> Result<Handled, ApiError> {
    let rules = state.rules.load_full();
    let limits = &rules.limits;
    // The key first: an unknown key, or one that may not ingest, is refused before the
    // body is buffered (it is read through, so the client gets to read the answer). A
    // Segment call without Basic auth may still name its write key in the body.
    let key = match source {
        Source::Native | Source::Pixel => ingest_key(&rules, headers),
        Source::Segment(_) => segment::write_key(headers, None)
            .and_then(|key| key.map(|key| ingest_grant(&rules, &key)).transpose()),
    };
    let key = match key {
        Ok(key) => key,
        Err(denied) => {
            drain(body, limits.max_body_bytes).await;
            return Err(denied.into());
        }
    };
    let max_body = limits.max_body_bytes;
    let content_length =
        header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.parse::<usize>().ok());
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
    let now = OffsetDateTime::now_utc();
    let now_ms = (now.unix_timestamp_nanos() / 1_000_000) as i64;
    let referer_origin;
    let (raw, key, request_headers) = match source {
        Source::Native => (raw, key, RequestHeaders::of(headers, key)),
        Source::Pixel => {
            let (event, origin) = pixel::event(uri_query, headers)?;
            referer_origin = origin;
            let request = RequestHeaders {
                content_type: Some("application/json"),
                content_encoding: None,
                // An image request has no Origin: the page it is on (its Referer) stands in
                // for it, so the site's domains check it the same way.
                origin: referer_origin.as_deref(),
                key,
            };
            (event, key, request)
        }
        Source::Segment(call) => {
            let body = decode_body(raw, header_str(headers, header::CONTENT_ENCODING), max_body)?;
            let translated = segment::translate(call, &body, key.and_then(Grant::site_id), now)?;
            let key = match key {
                Some(key) => key,
                None => {
                    let key = segment::write_key(headers, translated.write_key.as_deref())?
                        .ok_or_else(segment::no_write_key)?;
                    ingest_grant(&rules, &key)?
                }
            };
            let request = RequestHeaders {
                content_type: Some("application/json"),
                content_encoding: None,
                origin: None,
                key: Some(key),
            };
            (translated.events, Some(key), request)
        }
    };
    let parsed = parse_events(&rules.config, raw, request_headers, now_ms, |events| {
        if admitted.settle(&state.admission, events) {
            Ok(())
        } else {
            Err(overloaded())
        }
    })?;

    let mut items = parsed.items;

    // Who the visitor is: the ids of cookie and hash sites are the collector's to set.
    let client = rules.proxies.client(peer, headers);
    let cookie = visitor::identify(&rules.config, &state.salts, headers, client, &mut items);

    // Rate limits, before anything is published: the key's for all valid events, then each
    // site's for its own.
    let (standings, limited) = rules.rate_limits.take_request(
        key,
        items
            .iter()
            .filter_map(|item| item.as_ref().ok())
            .map(|event| event.site_id.as_str()),
    );

    // Refusals and events not stored on purpose keep their place; the other valid events
    // are stored together, then take theirs.
    let do_not_track = asks_not_to_be_tracked(headers);
    // A request with an ingest key comes from the site's own back-end, whose user agent is
    // an HTTP library's (curl, an SDK), not a visitor's: only keyless requests are checked.
    let bot = key.is_none() && visitor::is_bot(headers);
    // For the same reason, only a keyless request's user agent is the visitor's browser; a
    // back-end passes its visitor's on in `user_agent`.
    let browser_agent = key
        .is_none()
        .then(|| visitor::user_agent(headers))
        .flatten();
    let mut events = Vec::with_capacity(items.len());
    let kept: Vec<Option<EventOutcome>> = items
        .into_iter()
        .map(|item| {
            let mut event = match item {
                Ok(event) => event,
                Err(error) => return Some(EventOutcome::Refused(error)),
            };
            if let Some(refusal) = limited.get(&event.site_id) {
                state.metrics.count_rate_limited(&event.site_id);
                return Some(EventOutcome::Refused(ApiError::RateLimited(
                    refusal.clone(),
                )));
            }
            let site = rules.config.site(&event.site_id)?;
            if do_not_track && site.privacy.respect_do_not_track {
                return Some(EventOutcome::NotStored(NotStored::DoNotTrack));
            }
            if bot {
                match site.bots {
                    BotPolicy::Drop => {
                        state.metrics.count_bot(&event.site_id, BotAction::Dropped);
                        return Some(EventOutcome::NotStored(NotStored::Bot));
                    }
                    BotPolicy::Flag => {
                        state.metrics.count_bot(&event.site_id, BotAction::Flagged);
                        event.bot = true;
                    }
                }
            }
            if event.user_agent.is_empty()
                && let Some(agent) = browser_agent
            {
                agent.clone_into(&mut event.user_agent);
            }
            events.push(event);
            None
        })
        .collect();
    let results = if events.is_empty() {
        Vec::new()
    } else {
        state.sink.store(&events).await
    };
    let mut stored = events.iter().zip(results);
    let outcomes = kept
        .into_iter()
        .map(|outcome| outcome.unwrap_or_else(|| stored_outcome(&rules.config, stored.next())))
        .collect();
    let https = client.https
        || rules
            .config
            .pipeline
            .spec
            .collector
            .public_url
            .as_deref()
            .is_some_and(|url| url.starts_with("https://"));
    Ok(Handled {
        shape: parsed.shape,
        outcomes,
        standings,
        set_cookie: cookie.map(|value| visitor::set_cookie(&value, https)),
    })
}

/// The grant of the request's API key, if it sent one; refused when the key is not one of
/// the configuration's or may not ingest.
fn ingest_key<'a>(rules: &'a Rules, headers: &HeaderMap) -> Result<Option<&'a Grant>, Denied> {
    grant_of(rules.config.keys(), headers)?
        .map(may_ingest)
        .transpose()
}

/// The grant of `key` (a Segment write key), refused as [`ingest_key`] refuses.
fn ingest_grant<'a>(rules: &'a Rules, key: &str) -> Result<&'a Grant, Denied> {
    may_ingest(find_key(rules.config.keys(), key)?)
}

fn may_ingest(grant: &Grant) -> Result<&Grant, Denied> {
    if grant.has_scope(KeyScope::Ingest) {
        Ok(grant)
    } else {
        Err(Denied::MissingScope("ingest"))
    }
}

/// `DNT: 1` or `Sec-GPC: 1`: the visitor asked not to be tracked.
fn asks_not_to_be_tracked(headers: &HeaderMap) -> bool {
    let says_one = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() == "1")
    };
    says_one("dnt") || says_one("sec-gpc")
}

/// What the sink answered for one event (nothing at all counts as not stored).
fn stored_outcome(
    config: &RuntimeConfig,
    stored: Option<(&Event, Result<Stored, String>)>,
) -> EventOutcome {
    match stored {
        Some((event, Ok(stored))) => EventOutcome::Stored {
            event_id: event.event_id,
            duplicate: stored.duplicate,
            // The collector's own id is told to the client; a client's own is not echoed.
            visitor_id: config
                .site(&event.site_id)
                .filter(|site| site.privacy.visitor_id != VisitorIdMode::Client)
                .map(|_| event.visitor_id.clone()),
        },
        Some((event, Err(why))) => {
            tracing::warn!(error = %why, event_id = %event.event_id, "event not stored");
            EventOutcome::Failed {
                event_id: Some(event.event_id),
                why,
            }
        }
        None => EventOutcome::Failed {
            event_id: None,
            why: "the event store gave no answer for this event".into(),
        },
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
    use tally_contracts::validate::testing::config;

    const NOW_MS: i64 = 1_780_000_000_000;
    const EVENT: &str = r#"{"site_id":"shop","event_type":"click"}"#;

    fn parse(
        body: &str,
        content_type: Option<&str>,
        origin: Option<&str>,
    ) -> Result<Vec<Result<Event, ApiError>>, ApiError> {
        let body = bytes::Bytes::copy_from_slice(body.as_bytes());
        let headers = RequestHeaders {
            content_type,
            content_encoding: None,
            origin,
            key: None,
        };
        parse_events(&config(), body, headers, NOW_MS, |_| Ok(())).map(|parsed| parsed.items)
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

    #[test]
    fn parse_events_asks_admission_with_the_count_before_validating() {
        let body =
            bytes::Bytes::from([EVENT, r#"{"site_id":"nope","event_type":"click"}"#].join("\n"));
        let mut asked = None;
        let refused = parse_events(
            &config(),
            body.clone(),
            RequestHeaders::default(),
            NOW_MS,
            |n| {
                asked = Some(n);
                Err(ApiError::Overloaded(1))
            },
        );
        assert_eq!(asked, Some(2));
        assert!(matches!(refused, Err(ApiError::Overloaded(1))));
        let parsed = parse_events(&config(), body, RequestHeaders::default(), NOW_MS, |_| {
            Ok(())
        })
        .unwrap();
        assert_eq!(parsed.shape, Shape::Batch);
        assert!(parsed.items[0].is_ok());
        assert!(matches!(parsed.items[1], Err(ApiError::UnknownSite(_))));
    }
}
