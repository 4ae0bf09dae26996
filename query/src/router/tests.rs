//! The router in process (tower's `oneshot`), over a ClickHouse URL where nothing listens:
//! every answer the query service gives without ClickHouse's help — the checks of the query
//! string, a store that does not answer, readiness, metrics and CORS. The e2e tests
//! (`e2e/tests/query.rs`, `e2e/tests/data_path.rs`) read real answers from a real ClickHouse.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use tally_contracts::RuntimeConfig;
use tally_runtime::testing::{answer, body_text, send};

use super::router;
use crate::state::AppState;

/// A URL on loopback that refuses connections: a port that was free a moment ago.
fn refusing_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

fn config() -> RuntimeConfig {
    RuntimeConfig::parse(
        "router-test",
        &format!(
            "apiVersion: tally.dev/v1alpha1\nkind: AnalyticsPipeline\nmetadata: {{name: web}}\n\
             spec: {{clickhouse: {{url: \"{}\"}}, adminKeys: [{{secretRef: {{name: keys, key: admin}}}}]}}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {{name: keys}}\n\
             stringData: {{admin: {ADMIN_KEY}, shop: {SHOP_READ_KEY}, blog: {BLOG_KEY}}}\n---\n\
             apiVersion: tally.dev/v1alpha1\nkind: AnalyticsSite\nmetadata: {{name: shop}}\n\
             spec: {{pipelineRef: {{name: web}}, siteId: shop, apiKeys: [{{secretRef: {{name: keys, key: shop}}, scopes: [read]}}]}}\n---\n\
             apiVersion: tally.dev/v1alpha1\nkind: AnalyticsSite\nmetadata: {{name: blog}}\n\
             spec: {{pipelineRef: {{name: web}}, siteId: blog, apiKeys: [{{secretRef: {{name: keys, key: blog}}, scopes: [ingest, read]}}]}}\n",
            refusing_url()
        ),
    )
    .expect("the test configuration is valid")
}

const ADMIN_KEY: &str = "admin-read-key-0123456789";
const SHOP_READ_KEY: &str = "shop-read-key-0123456789";
const BLOG_KEY: &str = "blog-key-0123456789abcdef";

/// GETs `uri` with the admin key.
async fn get(app: &axum::Router, uri: &str) -> axum::response::Response {
    get_with(app, uri, &[("x-api-key", ADMIN_KEY)]).await
}

async fn get_with(
    app: &axum::Router,
    uri: &str,
    headers: &[(&str, &str)],
) -> axum::response::Response {
    let mut request = Request::get(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(app, request.body(Body::empty()).unwrap()).await
}

fn app() -> (AppState, axum::Router) {
    let state = AppState::new(config());
    (state.clone(), router(state))
}

#[tokio::test]
async fn stats_queries_are_checked_before_clickhouse_is_asked() {
    let (_, app) = app();
    let cases = [
        (
            "/v1/stats",
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "site_id",
        ),
        (
            "/v1/stats?site_id=",
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "site_id",
        ),
        (
            "/v1/stats?site_id=nope",
            StatusCode::NOT_FOUND,
            "unknown_site",
            "\"nope\"",
        ),
        (
            "/v1/stats?site_id=shop&date=May",
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "date",
        ),
        (
            "/v1/stats?site_id=shop&date=2026-02-30",
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "date",
        ),
        (
            "/v1/stats?site_id=shop&limit=0",
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "limit",
        ),
        (
            "/v1/stats?site_id=shop&limit=1001",
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "limit",
        ),
        (
            "/v1/stats?site_id=shop&limit=ten",
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "limit",
        ),
    ];
    for (uri, want_status, want_code, named) in cases {
        let (status, retry_after, body) = answer(get(&app, uri).await).await;
        assert_eq!(
            (status, body["error"].as_str().unwrap()),
            (want_status, want_code),
            "{uri}"
        );
        assert!(
            body["message"].as_str().unwrap().contains(named),
            "{uri}: {body}"
        );
        assert_eq!(retry_after, None, "{uri}");
        assert_eq!(
            body.as_object().unwrap().len(),
            2,
            "{uri}: only error and message: {body}"
        );
    }
}

#[tokio::test]
async fn reads_need_a_read_key_of_the_site_or_an_admin_key() {
    let (_, app) = app();
    let bearer = |key: &str| format!("Bearer {key}");
    // (site, headers, status, error code)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, StatusCode, &'a str);
    let cases: [Case; 8] = [
        ("shop", vec![], StatusCode::UNAUTHORIZED, "missing_api_key"),
        (
            "shop",
            vec![("x-api-key", "not-a-key-at-all".into())],
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
        ),
        (
            "shop",
            vec![("authorization", "Basic c2hvcDpzaG9w".into())],
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
        ),
        (
            "shop",
            vec![("authorization", bearer(BLOG_KEY))],
            StatusCode::FORBIDDEN,
            "forbidden_site",
        ),
        (
            "blog",
            vec![("x-api-key", SHOP_READ_KEY.into())],
            StatusCode::FORBIDDEN,
            "forbidden_site",
        ),
        // A key of another site cannot learn whether a site exists.
        (
            "nope",
            vec![("x-api-key", SHOP_READ_KEY.into())],
            StatusCode::FORBIDDEN,
            "forbidden_site",
        ),
        // Allowed: the store (down here) is asked.
        (
            "shop",
            vec![("authorization", bearer(SHOP_READ_KEY))],
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
        ),
        (
            "blog",
            vec![("x-api-key", ADMIN_KEY.into())],
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
        ),
    ];
    for (site, headers, want_status, want_code) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let uri = format!("/v1/stats?site_id={site}");
        let response = get_with(&app, &uri, &headers).await;
        let challenge = response.headers().get(header::WWW_AUTHENTICATE).cloned();
        let (status, _, body) = answer(response).await;
        assert_eq!(
            (status, body["error"].as_str().unwrap()),
            (want_status, want_code),
            "{site} {headers:?}: {body}"
        );
        assert_eq!(
            challenge.is_some(),
            status == StatusCode::UNAUTHORIZED,
            "{site} {headers:?}"
        );
        let text = body.to_string();
        for key in [ADMIN_KEY, SHOP_READ_KEY, BLOG_KEY] {
            assert!(!text.contains(key), "{text}");
        }
    }
}

#[tokio::test]
async fn a_store_that_does_not_answer_gives_503_with_retry_after() {
    let (_, app) = app();
    for uri in [
        "/v1/stats?site_id=shop",
        "/v1/stats?site_id=shop&date=2026-01-31&limit=1000",
        "/v1/stats?site_id=shop&date=&limit=",
    ] {
        let (status, retry_after, body) = answer(get(&app, uri).await).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{uri}: {body}");
        assert_eq!(retry_after.as_deref(), Some("1"));
        assert_eq!(body["error"], "unavailable");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .starts_with("the stats store did not answer"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn readiness_follows_the_clickhouse_check() {
    let (state, app) = app();
    let response = get(&app, "/readyz").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body_text(response).await,
        "starting: ClickHouse not checked yet"
    );
    // What the watch records for a ClickHouse that refuses connections.
    let verdict = state.stats.store.check().await;
    assert!(
        verdict
            .as_ref()
            .is_err_and(|why| why.starts_with("ClickHouse does not answer")),
        "{verdict:?}"
    );
    state.readiness.set(verdict);
    let response = get(&app, "/readyz").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body_text(response)
            .await
            .starts_with("ClickHouse does not answer")
    );
    state.readiness.set(Ok(()));
    let response = get(&app, "/readyz").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_text(response).await, "ready");
    // Liveness never depends on ClickHouse.
    state.readiness.set(Err("down".into()));
    assert_eq!(get(&app, "/healthz").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn metrics_time_requests_by_route_and_clickhouse_queries_by_outcome() {
    let (_, app) = app();
    get(&app, "/v1/stats").await;
    get(&app, "/v1/stats?site_id=shop").await;
    get(&app, "/nowhere").await;
    let response = get(&app, "/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = body_text(response).await;
    for line in [
        "tally_query_request_duration_seconds_count{route=\"/v1/stats\",status=\"400\"} 1",
        "tally_query_request_duration_seconds_count{route=\"/v1/stats\",status=\"503\"} 1",
        "tally_query_request_duration_seconds_count{route=\"unmatched\",status=\"404\"} 1",
        "tally_query_clickhouse_query_duration_seconds_count{query=\"Totals\",outcome=\"Failed\"} 1",
        "tally_query_clickhouse_query_duration_seconds_count{query=\"TopPaths\",outcome=\"Failed\"} 1",
    ] {
        assert!(text.contains(line), "{line} in:\n{text}");
    }
}

#[tokio::test]
async fn cross_origin_reads_are_allowed_and_events_are_not_taken() {
    let (_, app) = app();
    let preflight = Request::options("/v1/stats")
        .header(header::ORIGIN, "https://dashboard.example.com")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
        .body(Body::empty())
        .unwrap();
    let response = send(&app, preflight).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    let allowed = response.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        allowed.contains("authorization") && allowed.contains("x-api-key"),
        "{allowed}"
    );
    // Ingest is the collector's alone.
    let post = Request::post("/v1/events")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            r#"{"site_id":"shop","type":"page_view","path":"/"}"#,
        ))
        .unwrap();
    assert_eq!(send(&app, post).await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_openapi_document_and_its_page_are_served_without_a_key() {
    let (_, app) = app();
    let response = get_with(&app, "/v1/openapi.json", &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = body_text(response).await;
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/v1/stats",
        "/v1/query",
        "/v1/events/recent",
        "/v1/experiments",
        "/v1/experiments/{id}/summary",
        "/v1/sessions",
        "/v1/sessions/{id}",
        "/v1/pipeline/health",
        "/v1/pipeline/dead-letters",
        "/v1/pipeline/dead-letters/replay",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} is not in the document"
        );
    }
    if let Ok(out) = std::env::var("TALLY_OPENAPI_OUT") {
        std::fs::write(out, &body).unwrap();
    }
    let page = get_with(&app, "/v1/docs/", &[]).await;
    assert_eq!(page.status(), StatusCode::OK);
    let page = body_text(page).await;
    assert!(page.contains("swagger-ui"), "{page}");
    let script = get_with(&app, "/v1/docs/swagger-ui-bundle.js", &[]).await;
    assert_eq!(script.status(), StatusCode::OK);
    assert!(
        body_text(script).await.len() > 100_000,
        "the bundle is served from the binary"
    );
}

#[test]
fn the_documented_query_body_is_what_the_parser_reads() {
    let body = serde_json::json!({
        "site_id": "shop", "metrics": ["visitors", "pageviews", "bounce_rate"],
        "date_range": "7d", "dimensions": ["time:day", "visit:source"],
        "filters": [["is", "event:page", ["/pricing"]], ["contains", "visit:utm_campaign", ["spring"]]],
        "order_by": [["visitors", "desc"]], "pagination": {"limit": 100, "offset": 0},
        "include": {"comparisons": "previous_period", "total_rows": true},
    });
    serde_json::from_value::<crate::query::request::QueryRequest>(body.clone()).unwrap();
    let now = time::macros::datetime!(2026-01-31 12:00 UTC);
    crate::query::request::parse(&body, now, now.date(), &[]).unwrap();
}

#[tokio::test]
async fn sites_are_listed_as_far_as_the_key_may_read() {
    let (_, app) = app();
    let (status, _, admin) = answer(get(&app, "/v1/sites").await).await;
    assert_eq!(status, StatusCode::OK, "{admin}");
    assert_eq!(admin["admin"], true);
    assert_eq!(admin["pipeline"], "web");
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["sites"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["site_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&admin), ["blog", "shop"]);
    assert_eq!(admin["sites"][1]["time_zone"], "UTC");
    for (key, site) in [(SHOP_READ_KEY, "shop"), (BLOG_KEY, "blog")] {
        let (status, _, own) =
            answer(get_with(&app, "/v1/sites", &[("x-api-key", key)]).await).await;
        assert_eq!(status, StatusCode::OK, "{own}");
        assert_eq!(
            (own["admin"].clone(), ids(&own)),
            (false.into(), vec![site.to_owned()])
        );
    }
    for (headers, code) in [
        (vec![], "missing_api_key"),
        (vec![("x-api-key", "not-a-key-at-all")], "invalid_api_key"),
    ] {
        let (status, _, body) = answer(get_with(&app, "/v1/sites", &headers).await).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::UNAUTHORIZED, Some(code))
        );
    }
}

#[tokio::test]
async fn the_console_is_served_with_its_policy_gzip_and_etag() {
    let (_, app) = app();
    let root = get_with(&app, "/", &[]).await;
    assert!(root.status().is_redirection());
    assert_eq!(root.headers()[header::LOCATION], "/console/");

    let page = get_with(&app, "/console/", &[]).await;
    assert_eq!(page.status(), StatusCode::OK);
    let headers = page.headers().clone();
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(
        policy.contains("script-src 'self'") && policy.contains("connect-src 'self'"),
        "{policy}"
    );
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    let html = body_text(page).await;
    assert!(
        html.contains(r#"<script type="module" src="app.js"></script>"#),
        "{html}"
    );

    let etag = headers[header::ETAG].to_str().unwrap().to_owned();
    let again = get_with(&app, "/console/", &[("if-none-match", &etag)]).await;
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);

    let gzipped = get_with(&app, "/console/app.js", &[("accept-encoding", "gzip, br")]).await;
    assert_eq!(gzipped.status(), StatusCode::OK);
    assert_eq!(gzipped.headers()[header::CONTENT_ENCODING], "gzip");
    assert_eq!(
        gzipped.headers()[header::CONTENT_TYPE],
        "text/javascript; charset=utf-8"
    );
    let plain = get_with(&app, "/console/app.js", &[]).await;
    assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
    assert!(body_text(plain).await.contains("import"));

    let missing = get_with(&app, "/console/secrets.txt", &[]).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}
