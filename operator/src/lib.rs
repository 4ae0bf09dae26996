//! `tally-operator`: the Kubernetes controller for `AnalyticsPipeline` and `AnalyticsSite`
//! (group `tally.dev`). One controller per kind, both in this process; with leader election
//! only one replica reconciles at a time.
//!
//! The binary (`main.rs`) reads its command line and calls [`run`]. Everything else stays
//! inside the crate: `controllers` wires both controllers to what they watch, `pipeline`
//! and `site` reconcile one object each, `api` holds the API-server calls both make,
//! `render` and `acceptance` are the pure decisions they share.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use kube::runtime::events::{Recorder, Reporter};

mod acceptance;
mod api;
mod conditions;
mod context;
mod controllers;
#[cfg(test)]
mod fixtures;
mod health;
mod leadership;
mod pipeline;
mod render;
mod site;

/// How the operator runs: the command line's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address of the HTTP server for /healthz, /readyz and /metrics.
    pub listen: SocketAddr,
    /// Take the `tally-operator` Lease before reconciling.
    pub leader_election: bool,
    /// Namespace of the leader-election Lease.
    pub lease_namespace: String,
    /// Identity in the leader election and on recorded Events; defaults to the host name.
    pub identity: Option<String>,
    /// Collector image for pipelines that do not set `spec.collector.image`.
    pub collector_image: String,
    /// Processor image for pipelines that do not set `spec.processor.image`.
    pub processor_image: String,
    /// Query image for pipelines that do not set `spec.query.image`.
    pub query_image: String,
}

/// Serves /healthz, /readyz and /metrics on `settings.listen` and reconciles both kinds in
/// every namespace (once this replica leads, with leader election on) until SIGINT or
/// SIGTERM. Fails when the lease is lost, so that the replica starts over as a candidate.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("cannot configure a Kubernetes client (in-cluster or from KUBECONFIG)")?;
    let identity = settings.identity.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME")
            .unwrap_or_else(|_| format!("tally-operator-{}", std::process::id()))
    });
    let metrics = Arc::new(context::Metrics::default());
    let health = Arc::new(health::Health::new(metrics.clone()));
    let listener = tally_runtime::health::bind(settings.listen).await?;
    let server =
        tally_runtime::serve_health(listener, health.clone(), tally_runtime::shutdown_signal());
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "the health server stopped");
        }
    });

    let ctx = Arc::new(context::Context {
        backoff: context::Backoff::default(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: render::MANAGER.into(),
                instance: Some(identity.clone()),
            },
        ),
        client: client.clone(),
        metrics,
        nats: context::NatsPool::default(),
        images: render::Images {
            collector: settings.collector_image,
            processor: settings.processor_image,
            query: settings.query_image,
        },
    });
    let controllers = controllers::run(ctx);
    if settings.leader_election {
        leadership::lead(
            client,
            &settings.lease_namespace,
            &identity,
            &health,
            controllers,
        )
        .await
    } else {
        leadership::without_election(&health, controllers).await;
        Ok(())
    }
}
