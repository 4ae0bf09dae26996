//! The processor's health endpoints: `/healthz`, `/readyz` and `/metrics`, and the
//! readiness state `/readyz` reports.
//!
//! [`router`] knows nothing of the processor: it is built from a readiness check and a
//! function rendering the metrics, so that it can be served by any binary.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::get;

/// The media type of the metrics `/metrics` renders.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `/healthz` (always "ok"), `/readyz` (200 "ready" when `ready` passes, else 503 with its
/// reason) and `/metrics` (what `render_metrics` writes, in the OpenMetrics text format).
pub fn router(
    ready: impl Fn() -> Result<(), &'static str> + Clone + Send + Sync + 'static,
    render_metrics: impl Fn() -> String + Clone + Send + Sync + 'static,
) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let answer = match ready() {
                    Ok(()) => (StatusCode::OK, "ready"),
                    Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
                };
                async move { answer }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let body = render_metrics();
                async move { ([(header::CONTENT_TYPE, OPENMETRICS)], body) }
            }),
        )
}

/// Whether the processor can do its work now: started, ClickHouse accepting writes and
/// JetStream reachable.
#[derive(Default)]
pub struct Readiness {
    nats_ok: AtomicBool,
    storage_ok: AtomicBool,
    started: AtomicBool,
    nats: OnceLock<async_nats::Client>,
}

impl Readiness {
    /// Records whether the last fetch from JetStream succeeded.
    pub fn set_nats_ok(&self, ok: bool) {
        self.nats_ok.store(ok, Ordering::Relaxed);
    }

    /// Records whether ClickHouse took (or answered) the last insert.
    pub fn set_storage_ok(&self, ok: bool) {
        self.storage_ok.store(ok, Ordering::Relaxed);
    }

    /// Marks the end of start-up (schema applied, consumer bound); `nats` is watched for
    /// readiness from then on.
    pub fn set_started(&self, nats: async_nats::Client) {
        let _ = self.nats.set(nats);
        self.started.store(true, Ordering::Relaxed);
        self.set_storage_ok(true);
        self.set_nats_ok(true);
    }

    /// `Ok` when the processor is ready, else why not.
    pub fn check(&self) -> Result<(), &'static str> {
        if !self.started.load(Ordering::Relaxed) {
            return Err("starting: schema or consumer not ready yet");
        }
        if !self.storage_ok.load(Ordering::Relaxed) {
            return Err("ClickHouse is failing; retrying the current batch");
        }
        let connected = self
            .nats
            .get()
            .is_some_and(|c| c.connection_state() == async_nats::connection::State::Connected);
        if !connected || !self.nats_ok.load(Ordering::Relaxed) {
            return Err("cannot fetch from JetStream");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// The answer to `GET path` from `router`, served on a loopback port.
    async fn get(router: Router, path: &str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(axum::serve(listener, router).into_future());
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn readyz_reports_the_check_and_metrics_the_rendering() {
        let router = |ready: Result<(), &'static str>| {
            super::router(move || ready, || "events_written_total 3\n".to_owned())
        };
        assert!(
            get(router(Ok(())), "/healthz")
                .await
                .ends_with("\r\n\r\nok")
        );
        let ready = get(router(Ok(())), "/readyz").await;
        assert!(
            ready.starts_with("HTTP/1.1 200") && ready.ends_with("\r\n\r\nready"),
            "{ready}"
        );
        let unready = get(router(Err("cannot fetch from JetStream")), "/readyz").await;
        assert!(
            unready.starts_with("HTTP/1.1 503")
                && unready.ends_with("\r\n\r\ncannot fetch from JetStream"),
            "{unready}"
        );
        let metrics = get(router(Ok(())), "/metrics").await;
        assert!(
            metrics.contains(&format!("content-type: {OPENMETRICS}"))
                && metrics.ends_with("\r\n\r\nevents_written_total 3\n"),
            "{metrics}"
        );
    }

    #[test]
    fn not_ready_until_started() {
        let readiness = Readiness::default();
        assert_eq!(
            readiness.check(),
            Err("starting: schema or consumer not ready yet")
        );
    }
}
