//! The endpoints every service answers, written once: `/healthz` (the process lives),
//! `/readyz` (it can do its work now) and `/metrics` (Prometheus text). A service says what
//! "ready" means and what its metrics are by implementing [`Health`]; it either merges
//! [`routes`] into its own router (the collector, the query service) or serves them alone on its own port
//! ([`serve_health`]: the processor, the operator).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// The content type of `/metrics`.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a service's health endpoints report.
pub trait Health: Send + Sync + 'static {
    /// `Ok(state)` when the service can do its work now (`/readyz` answers 200 with it),
    /// else why not (503 with the reason).
    fn ready(&self) -> Result<String, String>;

    /// The service's metrics in the Prometheus text format.
    fn render_metrics(&self) -> String;
}

/// `/healthz`, `/readyz` and `/metrics` over `health`, for any router state.
pub fn routes<S: Clone + Send + Sync + 'static>(health: Arc<dyn Health>) -> Router<S> {
    let metrics = health.clone();
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                match health.ready() {
                    Ok(state) => (StatusCode::OK, state),
                    Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
                }
            }),
        )
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(header::CONTENT_TYPE, OPENMETRICS)],
                    metrics.render_metrics(),
                )
                    .into_response()
            }),
        )
}

/// Binds `listen` for [`serve_health`], so that a port in use fails the start at once.
pub async fn bind(listen: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))
}

/// Serves [`routes`] on `listener` until `shutdown` resolves, with the APIs' default
/// limits on slow, idle and surplus connections ([`crate::server`]; its connection counts
/// are not reported here).
pub async fn serve_health(
    listener: tokio::net::TcpListener,
    health: Arc<dyn Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    crate::server::serve(
        listener,
        routes::<()>(health),
        crate::ServerLimits::default(),
        crate::server::ConnectionMetrics::default(),
        shutdown,
    )
    .await
    .context("the health server failed")
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    use super::*;

    struct Switch(Mutex<Result<String, String>>);

    impl Health for Switch {
        fn ready(&self) -> Result<String, String> {
            self.0.lock().unwrap().clone()
        }

        fn render_metrics(&self) -> String {
            "# EOF\n".into()
        }
    }

    async fn get(router: &Router, path: &str) -> (StatusCode, String) {
        let response = router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readiness_and_metrics_come_from_the_service() {
        let switch = Arc::new(Switch(Mutex::new(Err("no NATS yet".into()))));
        let router: Router = routes(switch.clone());
        assert_eq!(
            get(&router, "/healthz").await,
            (StatusCode::OK, "ok".into())
        );
        assert_eq!(
            get(&router, "/readyz").await,
            (StatusCode::SERVICE_UNAVAILABLE, "no NATS yet".into())
        );
        *switch.0.lock().unwrap() = Ok("ready".into());
        assert_eq!(
            get(&router, "/readyz").await,
            (StatusCode::OK, "ready".into())
        );
        let response = router
            .clone()
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.headers()[header::CONTENT_TYPE], OPENMETRICS);
    }
}
