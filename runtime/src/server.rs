//! The HTTP server of every Tally API (the collector's, the query service's), with the
//! limits that keep one client from holding connections without end — what `axum::serve`
//! leaves out: a header read timeout (which also closes a keep-alive connection idle for
//! that long), a timeout on each request as a whole (a body trickling in is cut off with
//! 408), and a bound on open connections (beyond it a new connection is closed at once).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt as _;
use tower_http::timeout::TimeoutLayer;

/// How long a client may take and how many connections it may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// From the connection's start, or the end of its last answer, until a request's
    /// headers are complete; a connection that sends nothing for this long is closed.
    pub header_read_timeout: Duration,
    /// From a request's headers until its answer: the body is read within it.
    pub request_timeout: Duration,
    /// Open connections at most; the next one is closed as soon as it is accepted.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 10_000,
        }
    }
}

/// The server's connections in a service's metrics: `connections_open` and
/// `connections_refused_total` (refused because `max_connections` were open).
#[derive(Debug, Clone, Default)]
pub struct ConnectionMetrics {
    open: Gauge,
    refused: Counter,
}

impl ConnectionMetrics {
    /// The two metrics, registered in `registry` (under the service's prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "connections_open",
            "Open HTTP connections",
            metrics.open.clone(),
        );
        registry.register(
            "connections_refused",
            "HTTP connections closed at once because the most allowed were open",
            metrics.refused.clone(),
        );
        metrics
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` completes; then stops
/// accepting, lets the requests in progress finish (connections idle are closed) and
/// returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    metrics: ConnectionMetrics,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let app = app.layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        limits.request_timeout,
    ));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.as_mut() => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.refused.inc();
            drop(stream);
            continue;
        };
        let open = metrics.open.clone();
        open.inc();
        // Each request carries its peer's address, as axum's `ConnectInfo` extractor reads it.
        let service =
            TowerToHyperService::new(app.clone().map_request(move |request: Request<Incoming>| {
                let mut request = request.map(axum::body::Body::new);
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                request
            }));
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A client that went away or timed out is not the server's error.
            let _ = connection.await;
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
