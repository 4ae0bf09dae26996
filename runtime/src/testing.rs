//! In-process router tests, as every service writes them: a request through the router
//! with tower's `oneshot` (no socket), and its answer read back. Behind the `testing`
//! feature, which the services enable for their tests only.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::response::Response;
use serde_json::Value;
use tower::ServiceExt as _;

/// Sends `request` through `app`.
pub async fn send(app: &Router, request: Request<Body>) -> Response {
    app.clone()
        .oneshot(request)
        .await
        .expect("the router never fails")
}

/// GETs `uri` from `app`.
pub async fn get(app: &Router, uri: &str) -> Response {
    let request = Request::get(uri)
        .body(Body::empty())
        .expect("a valid request");
    send(app, request).await
}

/// The body of an answer as text.
pub async fn body_text(response: Response) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("the body reads");
    String::from_utf8(bytes.to_vec()).expect("the body is UTF-8")
}

/// The body of an answer as JSON.
pub async fn body_json(response: Response) -> Value {
    let text = body_text(response).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("the body is not JSON ({e}): {text}"))
}

/// The status, the `Retry-After` header and the JSON body of an answer.
pub async fn answer(response: Response) -> (StatusCode, Option<String>, Value) {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().expect("an ASCII Retry-After").to_owned());
    (status, retry_after, body_json(response).await)
}
