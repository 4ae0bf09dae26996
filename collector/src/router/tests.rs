//! The router in process (tower's `oneshot`), over an in-memory sink: the answer of every
//! status path of the collector's HTTP contract. The e2e tests run the same paths against
//! real NATS and ClickHouse.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::response::Response;
use futures::future::BoxFuture;
use serde_json::{Value, json};
use tally_contracts::{Event, RuntimeConfig};
use tally_runtime::testing::{answer, body_json, body_text, send};
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::router;
use crate::sink::{EventSink, Stored};
use crate::state::AppState;

/// The limits of these tests: a 2 KiB body, three events per request.
const MAX_BODY: usize = 2048;

fn config() -> RuntimeConfig {
    RuntimeConfig::parse(
        "router-test",
        &format!(
            "apiVersion: tally.dev/v1alpha1\nkind: AnalyticsPipeline\nmetadata: {{name: web}}\n\
             spec: {{collector: {{maxBodyBytes: {MAX_BODY}, maxBatchEvents: 3}}}}\n---\n\
             apiVersion: tally.dev/v1alpha1\nkind: AnalyticsSite\nmetadata: {{name: shop}}\n\
             spec: {{pipelineRef: {{name: web}}, siteId: shop, domains: [shop.example.com]}}\n---\n\
             apiVersion: tally.dev/v1alpha1\nkind: AnalyticsSite\nmetadata: {{name: quiet}}\n\
             spec: {{pipelineRef: {{name: web}}, siteId: quiet, privacy: {{respectDoNotTrack: true}}}}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {{name: keys}}\n\
             stringData: {{ingest: {PRIVATE_INGEST}, read: {PRIVATE_READ}, other: {OTHER_INGEST}}}\n---\n\
             apiVersion: tally.dev/v1alpha1\nkind: AnalyticsSite\nmetadata: {{name: private}}\n\
             spec: {{pipelineRef: {{name: web}}, siteId: private, browserIngest: false, apiKeys: [\
               {{secretRef: {{name: keys, key: ingest}}, scopes: [ingest]}},\
               {{secretRef: {{name: keys, key: read}}, scopes: [read]}}]}}\n---\n\
             apiVersion: tally.dev/v1alpha1\nkind: AnalyticsSite\nmetadata: {{name: other}}\n\
             spec: {{pipelineRef: {{name: web}}, siteId: other, domains: [other.example.com], \
               apiKeys: [{{secretRef: {{name: keys, key: other}}, scopes: [ingest]}}]}}\n---\n\
             apiVersion: tally.dev/v1alpha1\nkind: AnalyticsSite\nmetadata: {{name: limited}}\n\
             spec: {{pipelineRef: {{name: web}}, siteId: limited, rateLimit: {{eventsPerSecond: 1, burst: 2}}}}\n---\n\
             apiVersion: tally.dev/v1alpha1\nkind: AnalyticsSite\nmetadata: {{name: cookies}}\n\
             spec: {{pipelineRef: {{name: web}}, siteId: cookies, privacy: {{visitorId: cookie}}}}\n---\n\
             apiVersion: tally.dev/v1alpha1\nkind: AnalyticsSite\nmetadata: {{name: hashed}}\n\
             spec: {{pipelineRef: {{name: web}}, siteId: hashed, privacy: {{visitorId: hash}}, bots: flag}}\n"
        ),
    )
    .expect("the test configuration is valid")
}

const PRIVATE_INGEST: &str = "private-ingest-0123456789";
const PRIVATE_READ: &str = "private-read-0123456789";
const OTHER_INGEST: &str = "other-ingest-0123456789";

/// Stores events in memory, de-duplicating ids as the stream does; it can be told to fail
/// every store, to report itself not ready, or to hold each store until let go.
struct MemorySink {
    stored: Mutex<Vec<Event>>,
    seen: Mutex<HashSet<Uuid>>,
    failure: Option<String>,
    not_ready: Option<String>,
    /// When set, a store waits for a permit of it (taken, never given back).
    gate: Option<Arc<Semaphore>>,
    /// Stores that have begun.
    entered: Arc<Semaphore>,
}

impl Default for MemorySink {
    fn default() -> Self {
        Self {
            stored: Mutex::default(),
            seen: Mutex::default(),
            failure: None,
            not_ready: None,
            gate: None,
            entered: Arc::new(Semaphore::new(0)),
        }
    }
}

impl MemorySink {
    fn stored(&self) -> Vec<Event> {
        self.stored.lock().unwrap().clone()
    }
}

impl EventSink for MemorySink {
    fn store<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Vec<Result<Stored, String>>> {
        Box::pin(async move {
            self.entered.add_permits(1);
            if let Some(gate) = &self.gate {
                gate.acquire().await.expect("the gate stays open").forget();
            }
            events
                .iter()
                .map(|event| match &self.failure {
                    Some(why) => Err(why.clone()),
                    None => {
                        let duplicate = !self.seen.lock().unwrap().insert(event.event_id);
                        if !duplicate {
                            self.stored.lock().unwrap().push(event.clone());
                        }
                        Ok(Stored { duplicate })
                    }
                })
                .collect()
        })
    }

    fn ready(&self) -> Result<(), String> {
        self.not_ready.clone().map_or(Ok(()), Err)
    }
}

/// A collector over `sink` with the configuration's events budget (the default).
fn app(sink: Arc<MemorySink>) -> axum::Router {
    router(AppState::new(config(), sink, 1))
}

/// A POST to `/v1/events` declaring JSON; add headers, then the body.
fn post() -> axum::http::request::Builder {
    Request::post("/v1/events").header(header::CONTENT_TYPE, "application/json")
}

fn json_post(body: &Value) -> Request<Body> {
    post()
        .body(Body::from(body.to_string()))
        .expect("a valid request")
}

fn event(site: &str) -> Value {
    json!({"site_id": site, "type": "page_view", "path": "/home"})
}

#[tokio::test]
async fn a_valid_event_is_stored_and_answered_202() {
    let sink = Arc::new(MemorySink::default());
    let app = app(sink.clone());
    let (status, retry_after, body) = answer(send(&app, json_post(&event("shop"))).await).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(retry_after, None);
    assert_eq!(body["accepted"], 1);
    assert_eq!(body["results"][0]["status"], 202);
    let stored = sink.stored();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        body["results"][0]["event_id"],
        stored[0].event_id.to_string()
    );
    assert_eq!(stored[0].path, "/home");
}

#[tokio::test]
async fn do_not_track_requests_are_answered_and_not_stored_where_the_site_respects_them() {
    let sink = Arc::new(MemorySink::default());
    let app = app(sink.clone());
    for header in ["dnt", "sec-gpc"] {
        let request = post()
            .header(header, "1")
            .body(Body::from(
                json!([event("quiet"), event("shop")]).to_string(),
            ))
            .expect("a valid request");
        let (status, _, body) = answer(send(&app, request).await).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(
            (&body["accepted"], &body["not_stored"]),
            (&json!(2), &json!(1))
        );
        let quiet = &body["results"][0];
        assert_eq!(quiet["status"], 202);
        assert_eq!(
            (&quiet["stored"], &quiet["reason"]),
            (&json!(false), &json!("do_not_track"))
        );
        assert!(quiet.get("event_id").is_none(), "{quiet}");
        // The site that does not ask for it stores the event as before.
        assert!(body["results"][1].get("stored").is_none(), "{body}");
    }
    // Only the two `shop` events were stored; without the header `quiet` stores too.
    assert!(sink.stored().iter().all(|e| e.site_id == "shop"));
    assert_eq!(sink.stored().len(), 2);
    let request = post()
        .header("dnt", "0")
        .body(Body::from(event("quiet").to_string()))
        .expect("a valid request");
    let (status, _, body) = answer(send(&app, request).await).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(sink.stored().len(), 3);
    let metrics = body_text(tally_runtime::testing::get(&app, "/metrics").await).await;
    assert!(
        metrics.contains("tally_collector_events_total{outcome=\"DoNotTrack\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn keys_decide_who_may_post_for_a_site() {
    let sink = Arc::new(MemorySink::default());
    let app = app(sink.clone());
    let no_site = json!({"type": "signup"});
    let bearer = format!("Bearer {PRIVATE_INGEST}");
    // (headers, body, status, error code)
    type Case<'a> = (Vec<(&'a str, &'a str)>, Value, u16, &'a str);
    let cases: Vec<Case> = vec![
        (vec![], event("private"), 401, "missing_api_key"),
        (
            vec![("x-api-key", "garbage")],
            event("private"),
            401,
            "invalid_api_key",
        ),
        (
            vec![("x-api-key", "garbage")],
            event("shop"),
            401,
            "invalid_api_key",
        ),
        (
            vec![("x-api-key", OTHER_INGEST)],
            event("private"),
            403,
            "forbidden_site",
        ),
        // A key of another site learns nothing, not even whether a site exists.
        (
            vec![("x-api-key", OTHER_INGEST)],
            event("nope"),
            403,
            "forbidden_site",
        ),
        (
            vec![("x-api-key", PRIVATE_READ)],
            event("private"),
            403,
            "insufficient_scope",
        ),
        (
            vec![("x-api-key", PRIVATE_INGEST)],
            event("shop"),
            403,
            "forbidden_site",
        ),
        // browserIngest: false: a browser needs a key too.
        (
            vec![("origin", "https://private.example.com")],
            event("private"),
            401,
            "missing_api_key",
        ),
        // A site with ingest keys refuses server-side posts without one...
        (vec![], event("other"), 401, "missing_api_key"),
        // ...and keeps taking browser events from its domains.
        (
            vec![("origin", "https://www.other.example.com")],
            event("other"),
            202,
            "",
        ),
        (
            vec![("origin", "https://elsewhere.example.net")],
            event("other"),
            403,
            "forbidden_origin",
        ),
        // With its key: no site_id needed, any origin.
        (vec![("authorization", &bearer)], no_site.clone(), 202, ""),
        (
            vec![
                ("x-api-key", PRIVATE_INGEST),
                ("origin", "https://app.example.org"),
            ],
            event("private"),
            202,
            "",
        ),
        // A site without keys is open as before.
        (vec![], event("shop"), 202, ""),
    ];
    for (headers, body, want_status, want_code) in cases {
        let mut request = post();
        for (name, value) in &headers {
            request = request.header(*name, *value);
        }
        let response = send(&app, request.body(Body::from(body.to_string())).unwrap()).await;
        let challenge = response.headers().contains_key(header::WWW_AUTHENTICATE);
        let (status, _, answer) = answer(response).await;
        assert_eq!(status.as_u16(), want_status, "{headers:?} {body}: {answer}");
        assert_eq!(challenge, want_status == 401, "{headers:?}");
        if want_status != 202 {
            assert_eq!(answer["error"], want_code, "{headers:?} {body}: {answer}");
            let message = answer["message"].as_str().unwrap();
            for key in [PRIVATE_INGEST, PRIVATE_READ, OTHER_INGEST, "garbage"] {
                assert!(!message.contains(key), "{message}");
            }
        }
    }
    let stored: Vec<String> = sink.stored().into_iter().map(|e| e.site_id).collect();
    assert_eq!(stored, ["other", "private", "private", "shop"]);
    // The 403 names the site it refuses.
    let request = post()
        .header("x-api-key", OTHER_INGEST)
        .body(Body::from(event("private").to_string()))
        .unwrap();
    let (_, _, answer) = answer(send(&app, request).await).await;
    assert_eq!(
        answer["message"],
        "this API key may not post events for site \"private\""
    );
}

#[tokio::test]
async fn a_site_over_its_rate_limit_is_answered_429_and_others_are_not() {
    let sink = Arc::new(MemorySink::default());
    let app = app(sink.clone());
    let batch = |site: &str, n: usize| json_post(&Value::Array(vec![event(site); n]));
    let headers_of = |response: &Response| {
        let get = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        (
            get("ratelimit-policy"),
            get("ratelimit"),
            get("retry-after"),
        )
    };
    // The burst of 2 is taken at once; the answer says what is left.
    let response = send(&app, batch("limited", 2)).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let (policy, state, retry) = headers_of(&response);
    assert_eq!(policy.as_deref(), Some("\"site:limited\";q=2;w=2"));
    assert_eq!(state.as_deref(), Some("\"site:limited\";r=0;t=2"));
    assert_eq!(retry, None);
    // The next event is over the limit.
    let response = send(&app, json_post(&event("limited"))).await;
    let (policy, state, retry) = headers_of(&response);
    let (status, _, body) = answer(response).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"], "rate_limited");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("site \"limited\" is over its rate limit of 1 events per second"),
        "{body}"
    );
    assert!(policy.is_some() && state.unwrap().contains("r=0"));
    assert_eq!(retry.as_deref(), Some("1"));
    // A batch larger than the burst can never pass: 413, not 429.
    let (status, _, body) = answer(send(&app, batch("limited", 3)).await).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(
        body["results"][0]["message"]
            .as_str()
            .unwrap()
            .contains("send smaller batches")
    );
    // Other sites are not limited by it; in a mixed batch only the limited site's events wait.
    let mixed = json_post(&json!([event("shop"), event("limited")]));
    let (status, _, body) = answer(send(&app, mixed).await).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["results"][0]["status"], 202);
    assert_eq!(body["results"][1]["status"], 429);
    assert_eq!(body["results"][1]["error"], "rate_limited");
    let stored: Vec<String> = sink.stored().into_iter().map(|e| e.site_id).collect();
    assert_eq!(stored, ["limited", "limited", "shop"]);
    let metrics =
        body_text(send(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await).await;
    assert!(
        metrics.contains("tally_collector_rate_limited_events_total{site=\"limited\"} 5"),
        "{metrics}"
    );
}

#[tokio::test]
async fn cookie_sites_set_the_visitor_cookie_once_and_derive_the_id_from_it() {
    let sink = Arc::new(MemorySink::default());
    let app = app(sink.clone());
    let body =
        json!({"site_id": "cookies", "type": "page_view", "path": "/", "visitor_id": "mine"});
    let response = send(&app, json_post(&body)).await;
    let set_cookie = response.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    let (status, _, first) = answer(response).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(
        set_cookie.starts_with("tally_vid=") && set_cookie.contains("SameSite=Lax"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let id = first["results"][0]["visitor_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 32);
    // With the cookie: the same id, and no new cookie.
    let again = post()
        .header(header::COOKIE, &cookie)
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = send(&app, again).await;
    assert!(!response.headers().contains_key(header::SET_COOKIE));
    let (_, _, second) = answer(response).await;
    assert_eq!(second["results"][0]["visitor_id"], id.as_str());
    let stored = sink.stored();
    assert!(
        stored.iter().all(|e| e.visitor_id == id),
        "the client's id is replaced"
    );
    // A site of client ids keeps what the client sends, and is not told an id.
    let (_, _, shop) = answer(
        send(
            &app,
            json_post(&json!({"site_id": "shop", "type": "x", "visitor_id": "mine"})),
        )
        .await,
    )
    .await;
    assert!(shop["results"][0].get("visitor_id").is_none(), "{shop}");
    assert_eq!(sink.stored().last().unwrap().visitor_id, "mine");
}

#[tokio::test]
async fn hash_sites_need_the_salt_and_hash_the_agent() {
    let sink = Arc::new(MemorySink::default());
    let state = AppState::new(config(), sink.clone(), 1);
    let app = router(state.clone());
    let body = json!({"site_id": "hashed", "type": "page_view", "path": "/"}).to_string();
    let from = |agent: &str| {
        post()
            .header(header::USER_AGENT, agent)
            .body(Body::from(body.clone()))
            .unwrap()
    };
    // No salt yet (NATS has not answered): retry later, nothing stored.
    let (status, retry_after, _) = answer(send(&app, from("Firefox")).await).await;
    assert_eq!(
        (status, retry_after.as_deref()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("1"))
    );
    assert!(sink.stored().is_empty());
    state
        .ingest
        .salts
        .set(crate::salt::DaySalt::from_bytes([7; 32]));
    let id = |answer: Value| {
        answer["results"][0]["visitor_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let firefox = id(answer(send(&app, from("Firefox")).await).await.2);
    assert_eq!(
        firefox,
        id(answer(send(&app, from("Firefox")).await).await.2)
    );
    assert_ne!(
        firefox,
        id(answer(send(&app, from("Chrome")).await).await.2)
    );
}

#[tokio::test]
async fn bots_are_dropped_or_flagged_as_their_site_says() {
    let sink = Arc::new(MemorySink::default());
    let state = AppState::new(config(), sink.clone(), 1);
    state
        .ingest
        .salts
        .set(crate::salt::DaySalt::from_bytes([7; 32]));
    let app = router(state);
    let googlebot = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
    let batch = json!([event("shop"), event("hashed")]).to_string();
    let request = post()
        .header(header::USER_AGENT, googlebot)
        .body(Body::from(batch))
        .unwrap();
    let (status, _, body) = answer(send(&app, request).await).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["results"][0]["stored"], false);
    assert_eq!(body["results"][0]["reason"], "bot");
    assert_eq!(body["results"][1]["status"], 202);
    let stored = sink.stored();
    assert_eq!(stored.len(), 1);
    assert!(stored[0].bot && stored[0].site_id == "hashed");
    // A browser is no bot.
    let browser = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0";
    let request = post()
        .header(header::USER_AGENT, browser)
        .body(Body::from(event("shop").to_string()))
        .unwrap();
    assert_eq!(send(&app, request).await.status(), StatusCode::ACCEPTED);
    assert!(!sink.stored()[1].bot);
    // A site's own back-end, with its ingest key, is not checked: curl is on the list.
    let request = post()
        .header(header::USER_AGENT, "curl/8.14.1")
        .header("x-api-key", PRIVATE_INGEST)
        .body(Body::from(json!({"type": "signup"}).to_string()))
        .unwrap();
    let (status, _, body) = answer(send(&app, request).await).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert!(body["results"][0].get("reason").is_none(), "{body}");
    assert_eq!(sink.stored()[2].site_id, "private");
    let metrics =
        body_text(send(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await).await;
    for line in [
        "tally_collector_bot_events_total{site=\"shop\",action=\"Dropped\"} 1",
        "tally_collector_bot_events_total{site=\"hashed\",action=\"Flagged\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[tokio::test]
async fn segment_calls_take_the_write_key_and_answer_as_segment_does() {
    use base64::Engine as _;
    let sink = Arc::new(MemorySink::default());
    let app = app(sink.clone());
    let basic = |key: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
        )
    };
    let call = |path: &str, auth: Option<String>, body: Value| {
        let mut request = Request::post(path).header(header::CONTENT_TYPE, "application/json");
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        request.body(Body::from(body.to_string())).unwrap()
    };
    let batch = json!({"batch": [
        {"type": "track", "event": "Signed Up", "userId": "u1", "messageId": "m1"},
        {"type": "page", "anonymousId": "a1", "messageId": "m2", "properties": {"path": "/pricing"}},
    ]});
    let response = send(
        &app,
        call(
            "/segment/v1/batch",
            Some(basic(PRIVATE_INGEST)),
            batch.clone(),
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_json(response).await, json!({"success": true}));
    let stored = sink.stored();
    assert_eq!(stored.len(), 2);
    assert!(stored.iter().all(|e| e.site_id == "private"));
    assert_eq!(
        (stored[0].event_type.as_str(), stored[1].path.as_str()),
        ("Signed Up", "/pricing")
    );
    // The same batch again (an SDK's retry): the same event ids, stored once.
    let again = send(
        &app,
        call("/segment/v1/batch", Some(basic(PRIVATE_INGEST)), batch),
    )
    .await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(sink.stored().len(), 2);
    // The write key may be in the body instead.
    let single = json!({"event": "Logged In", "userId": "u1", "writeKey": PRIVATE_INGEST});
    assert_eq!(
        send(&app, call("/segment/v1/track", None, single))
            .await
            .status(),
        StatusCode::OK
    );
    // Refused: no key, a key that is not one, a read key, a body that is no Segment call.
    let track = json!({"event": "x", "userId": "u"});
    for (auth, body, status, code) in [
        (None, track.clone(), 401, "missing_api_key"),
        (
            Some(basic("not-a-key")),
            track.clone(),
            401,
            "invalid_api_key",
        ),
        (
            Some(basic(PRIVATE_READ)),
            track.clone(),
            403,
            "insufficient_scope",
        ),
        (
            Some(basic(PRIVATE_INGEST)),
            json!({"no": "batch"}),
            400,
            "invalid_body",
        ),
    ] {
        let path = if status == 400 {
            "/segment/v1/batch"
        } else {
            "/segment/v1/track"
        };
        let (got, _, answer) = answer(send(&app, call(path, auth, body)).await).await;
        assert_eq!(
            (got.as_u16(), answer["error"].as_str()),
            (status, Some(code)),
            "{answer}"
        );
    }
    assert_eq!(
        send(
            &app,
            call("/segment/v1/nope", Some(basic(PRIVATE_INGEST)), json!({}))
        )
        .await
        .status(),
        StatusCode::NOT_FOUND
    );
}

#[test]
fn the_tracker_stays_within_2_kb_gzipped() {
    use std::io::Write as _;
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gzip.write_all(crate::router::TRACKER.as_bytes()).unwrap();
    let size = gzip.finish().unwrap().len();
    assert!(
        size <= 2048,
        "tracker.js is {size} bytes gzipped, over its 2 KB budget"
    );
}

#[tokio::test]
async fn the_pixel_records_a_page_view_and_always_answers_an_image() {
    let sink = Arc::new(MemorySink::default());
    let app = app(sink.clone());
    let pixel = |query: &str, referer: Option<&str>| {
        let mut request = Request::get(format!("/v1/pixel.gif?{query}"));
        if let Some(referer) = referer {
            request = request.header(header::REFERER, referer);
        }
        request.body(Body::empty()).unwrap()
    };
    let cases = [
        // The page from the Referer, checked against the site's domains.
        (
            "site_id=shop",
            Some("https://www.shop.example.com/pricing"),
            200,
        ),
        ("site_id=shop", Some("https://elsewhere.example.net/"), 403),
        // The page in the query; a site with ingest keys wants one from a pixel too.
        (
            "site_id=quiet&url=https%3A%2F%2Fquiet.example%2Fa",
            None,
            200,
        ),
        (
            "site_id=other&url=https%3A%2F%2Fother.example.com%2F",
            None,
            401,
        ),
        ("site_id=nope", Some("https://shop.example.com/"), 404),
        ("site_id=shop", None, 400),
    ];
    for (query, referer, status) in cases {
        let response = send(&app, pixel(query, referer)).await;
        assert_eq!(response.status().as_u16(), status, "{query} {referer:?}");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "image/gif");
        let image = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert!(image.starts_with(b"GIF89a"));
    }
    let stored = sink.stored();
    assert_eq!(stored.len(), 2);
    assert_eq!(
        (stored[0].event_type.as_str(), stored[0].path.as_str()),
        ("page_view", "/pricing")
    );
    assert_eq!(stored[1].url, "https://quiet.example/a");
}

#[tokio::test]
async fn a_reposted_event_is_answered_as_a_duplicate_and_stored_once() {
    let sink = Arc::new(MemorySink::default());
    let app = app(sink.clone());
    let mut one = event("shop");
    one["event_id"] = json!("0193a7e4-5b1c-7d2e-8f00-1234567890ab");
    let first = body_json(send(&app, json_post(&one)).await).await;
    assert!(first["results"][0].get("duplicate").is_none());
    let (status, _, second) = answer(send(&app, json_post(&one)).await).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(second["results"][0]["duplicate"], true);
    assert_eq!(sink.stored().len(), 1);
}

#[tokio::test]
async fn a_single_refused_event_answers_with_its_own_error() {
    let app = app(Arc::new(MemorySink::default()));
    let (status, _, body) = answer(
        send(
            &app,
            json_post(&json!({"site_id": "shop", "timestamp": "soon"})),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_event");
    let fields: Vec<&str> = body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["field"].as_str().unwrap())
        .collect();
    assert!(fields.contains(&"timestamp"), "{body}");

    let (status, _, body) = answer(send(&app, json_post(&event("nope"))).await).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::NOT_FOUND, &json!("unknown_site"))
    );
    assert!(body["message"].as_str().unwrap().contains("nope"));

    let request = post()
        .header(header::ORIGIN, "https://elsewhere.example.net")
        .body(Body::from(event("shop").to_string()))
        .unwrap();
    let (status, _, body) = answer(send(&app, request).await).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::FORBIDDEN, &json!("forbidden_origin"))
    );
}

#[tokio::test]
async fn a_batch_answers_per_item() {
    let sink = Arc::new(MemorySink::default());
    let app = app(sink.clone());
    let batch = json!([event("shop"), {"site_id": "shop", "type": ""}, event("nope")]);
    let (status, _, body) = answer(send(&app, json_post(&batch)).await).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        (&body["accepted"], &body["rejected"], &body["failed"]),
        (&json!(1), &json!(2), &json!(0))
    );
    let statuses: Vec<u64> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [202, 400, 404]);
    assert_eq!(body["results"][1]["error"], "invalid_event");
    assert_eq!(sink.stored().len(), 1);

    // Nothing stored: the status all items share, else 400.
    let (status, _, _) =
        answer(send(&app, json_post(&json!([event("x"), event("y")]))).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, body) =
        answer(send(&app, json_post(&json!([event("x"), {"type": 1}]))).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["accepted"], 0);
}

#[tokio::test]
async fn ndjson_and_gzip_bodies_are_read() {
    use std::io::Write as _;
    let sink = Arc::new(MemorySink::default());
    let app = app(sink.clone());
    let lines = format!("{}\n{}\n", event("shop"), event("shop"));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(lines.as_bytes()).unwrap();
    let request = Request::post("/v1/events")
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CONTENT_ENCODING, "gzip")
        .body(Body::from(gz.finish().unwrap()))
        .unwrap();
    let (status, _, body) = answer(send(&app, request).await).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["accepted"], 2);
    assert_eq!(sink.stored().len(), 2);
}

#[tokio::test]
async fn malformed_bodies_are_refused_as_a_whole() {
    let sink = Arc::new(MemorySink::default());
    let app = app(sink.clone());
    let cases: [(Request<Body>, StatusCode, &str); 4] = [
        (
            post().body(Body::from("{not json")).unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            post().body(Body::empty()).unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            post()
                .header(header::CONTENT_ENCODING, "gzip")
                .body(Body::from("not gzip"))
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_encoding",
        ),
        (
            post()
                .header(header::CONTENT_ENCODING, "br")
                .body(Body::from(event("shop").to_string()))
                .unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
        ),
    ];
    for (request, want_status, want_code) in cases {
        let (status, _, body) = answer(send(&app, request).await).await;
        assert_eq!(
            (status, body["error"].as_str().unwrap()),
            (want_status, want_code),
            "{body}"
        );
        assert!(!body["message"].as_str().unwrap().is_empty());
    }
    assert!(sink.stored().is_empty());
}

#[tokio::test]
async fn oversized_requests_answer_413() {
    let app = app(Arc::new(MemorySink::default()));
    let big = "x".repeat(MAX_BODY + 1);
    let request = post()
        .header(header::CONTENT_LENGTH, big.len())
        .body(Body::from(big))
        .unwrap();
    let response = send(&app, request).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(response.headers()[header::CONNECTION], "close");
    assert_eq!(body_json(response).await["error"], "payload_too_large");

    // Without Content-Length the limit holds while the body is read.
    let stream = futures::stream::iter(
        (0..3).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; MAX_BODY / 2]))),
    );
    let request = post().body(Body::from_stream(stream)).unwrap();
    assert_eq!(
        send(&app, request).await.status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );

    let four = json!([event("shop"), event("shop"), event("shop"), event("shop")]);
    let (status, _, body) = answer(send(&app, json_post(&four)).await).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        body["message"].as_str().unwrap().contains("limit is 3"),
        "{body}"
    );
}

#[tokio::test]
async fn events_that_cannot_be_stored_answer_503_with_retry_after() {
    let sink = Arc::new(MemorySink {
        failure: Some("JetStream publish failed: timed out".into()),
        ..MemorySink::default()
    });
    let app = app(sink);
    let (status, retry_after, body) = answer(send(&app, json_post(&event("shop"))).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(body["error"], "unavailable");
    assert!(body["message"].as_str().unwrap().contains("timed out"));

    let batch = json!([event("shop"), event("nope")]);
    let (status, retry_after, body) = answer(send(&app, json_post(&batch)).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!((&body["failed"], &body["rejected"]), (&json!(1), &json!(1)));
    assert_eq!(body["results"][0]["status"], 503);
    assert!(
        body["results"][0]["event_id"].is_string(),
        "a failed event keeps its id: {body}"
    );
}

#[tokio::test]
async fn requests_over_the_events_budget_answer_503_overloaded() {
    let gate = Arc::new(Semaphore::new(0));
    let sink = Arc::new(MemorySink {
        gate: Some(gate.clone()),
        ..MemorySink::default()
    });
    let mut config = config();
    config.pipeline.spec.collector.max_in_flight_events = 1;
    let app = router(AppState::new(config, sink.clone(), 1));
    // The first request holds the whole budget while its store waits at the gate.
    let first = tokio::spawn(send_owned(app.clone(), json_post(&event("shop"))));
    sink.entered.acquire().await.unwrap().forget();
    let (status, retry_after, body) = answer(send(&app, json_post(&event("shop"))).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(body["error"], "overloaded");
    gate.add_permits(1);
    assert_eq!(first.await.unwrap().status(), StatusCode::ACCEPTED);
    // The budget is free again.
    gate.add_permits(1);
    assert_eq!(
        send(&app, json_post(&event("shop"))).await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(sink.stored().len(), 2);
}

async fn send_owned(app: axum::Router, request: Request<Body>) -> Response {
    send(&app, request).await
}

#[tokio::test]
async fn readiness_follows_the_sink() {
    let ready = app(Arc::new(MemorySink::default()));
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    assert_eq!(send(&ready, get("/readyz")).await.status(), StatusCode::OK);
    assert_eq!(send(&ready, get("/healthz")).await.status(), StatusCode::OK);
    let not_ready = app(Arc::new(MemorySink {
        not_ready: Some("not connected to NATS".into()),
        ..MemorySink::default()
    }));
    let response = send(&not_ready, get("/readyz")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body_text(response).await, "not connected to NATS");
    // Liveness does not depend on NATS.
    assert_eq!(
        send(&not_ready, get("/healthz")).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn metrics_count_outcomes_and_time_requests_by_route() {
    let app = app(Arc::new(MemorySink::default()));
    let batch = json!([event("shop"), event("shop"), event("nope")]);
    send(&app, json_post(&batch)).await;
    let response = send(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = body_text(response).await;
    assert!(
        text.contains("tally_collector_events_total{outcome=\"Accepted\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("tally_collector_events_total{outcome=\"UnknownSite\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "tally_collector_request_duration_seconds_count{route=\"/v1/events\",status=\"202\"} 1"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn the_tracker_and_cors_preflights_are_served() {
    let app = app(Arc::new(MemorySink::default()));
    let response = send(
        &app,
        Request::get("/tracker.js").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/javascript")
    );
    // Cached for a day, revalidated by its ETag.
    assert_eq!(
        response.headers()[header::CACHE_CONTROL],
        "public, max-age=86400"
    );
    let etag = response.headers()[header::ETAG].clone();
    let again = Request::get("/tracker.js")
        .header(header::IF_NONE_MATCH, etag.clone())
        .body(Body::empty())
        .unwrap();
    let response = send(&app, again).await;
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(response.headers()[header::ETAG], etag);
    assert!(body_text(response).await.is_empty());
    let preflight = Request::options("/v1/events")
        .header(header::ORIGIN, "https://shop.example.com")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type")
        .body(Body::empty())
        .unwrap();
    let response = send(&app, preflight).await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    assert_eq!(
        headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://shop.example.com"
    );
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
}

#[tokio::test]
async fn the_collector_serves_no_reads() {
    // `/v1/stats` is the query service's (`tally-query`): reads never reach this process.
    let app = app(Arc::new(MemorySink::default()));
    let response = send(
        &app,
        Request::get("/v1/stats?site_id=shop")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}
