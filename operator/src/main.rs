//! `tally-operator`: the Kubernetes controller for `AnalyticsPipeline` and `AnalyticsSite`
//! (group `tally.dev`). One controller per kind, both in this process; with leader election
//! only one replica reconciles at a time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::{ArgAction, Parser};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, ResourceExt};
use tally_contracts::service::{LogFormat, init_logging, shutdown_signal};
use tally_crds::{AnalyticsPipeline, AnalyticsSite};

mod acceptance;
mod conditions;
mod context;
#[cfg(test)]
mod fixtures;
mod pipeline;
mod render;
mod site;

/// Tally operator: reconciles AnalyticsPipelines (ConfigMap, collector and processor
/// Deployments, collector Service, JetStream stream) and AnalyticsSites (acceptance and
/// status) in every namespace.
#[derive(Debug, Parser)]
#[command(name = "tally-operator", version)]
struct Cli {
    /// Address of the HTTP server for /healthz, /readyz and /metrics.
    #[arg(long, env = "TALLY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Take the `tally-operator` Lease before reconciling, so that several replicas are safe.
    #[arg(long, env = "TALLY_LEADER_ELECTION", default_value_t = true, action = ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the leader-election Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Identity in the leader election; defaults to the host name.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Collector image for pipelines that do not set `spec.collector.image`.
    #[arg(
        long,
        env = "TALLY_COLLECTOR_IMAGE",
        default_value = "tally/collector:0.1.0"
    )]
    collector_image: String,
    /// Processor image for pipelines that do not set `spec.processor.image`.
    #[arg(
        long,
        env = "TALLY_PROCESSOR_IMAGE",
        default_value = "tally/processor:0.1.0"
    )]
    processor_image: String,
    /// Log format: JSON lines or text, on stderr; level from `RUST_LOG`.
    #[arg(long, env = "TALLY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
}

struct Health {
    metrics: Arc<context::Metrics>,
    /// Reconciling (this replica leads, or leader election is off).
    leading: AtomicBool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let client = kube::Client::try_default()
        .await
        .context("cannot configure a Kubernetes client (in-cluster or from KUBECONFIG)")?;
    let identity = cli.identity.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME")
            .unwrap_or_else(|_| format!("tally-operator-{}", std::process::id()))
    });
    let metrics = Arc::new(context::Metrics::default());
    let health = Arc::new(Health {
        metrics: metrics.clone(),
        leading: AtomicBool::new(false),
    });
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    tokio::spawn(axum::serve(listener, http_router(health.clone())).into_future());

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
            collector: cli.collector_image.clone(),
            processor: cli.processor_image.clone(),
        },
    });

    if !cli.leader_election {
        health.leading.store(true, Ordering::Relaxed);
        tracing::info!("reconciling (leader election off)");
        tokio::select! {
            _ = run_controllers(ctx) => {}
            _ = shutdown_signal() => {}
        }
        return Ok(());
    }

    let lease = kube_lease_manager::LeaseManagerBuilder::new(client, "tally-operator")
        .with_namespace(&cli.lease_namespace)
        .with_identity(&identity)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await
        .context("cannot set up leader election")?;
    let (mut leader, lease_task) = lease.watch().await;
    tracing::info!(%identity, namespace = %cli.lease_namespace, "waiting to lead");
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            changed = leader.changed() => {
                changed.context("the leader-election task ended")?;
                if *leader.borrow_and_update() {
                    break;
                }
            }
        }
    }
    if *leader.borrow() {
        health.leading.store(true, Ordering::Relaxed);
        tracing::info!(%identity, "leading: reconciling");
        let lost = async {
            while leader.changed().await.is_ok() {
                if !*leader.borrow_and_update() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = run_controllers(ctx) => {}
            _ = &mut shutdown => tracing::info!("shutting down"),
            _ = lost => {
                // Another replica may be reconciling now; exit and start over as a candidate.
                anyhow::bail!("lost the leader lease");
            }
        }
    }
    drop(leader); // closing the channel releases the lease
    let _ = lease_task.await;
    Ok(())
}

/// Both controllers, until the process is asked to stop.
async fn run_controllers(ctx: Arc<context::Context>) {
    let client = ctx.client.clone();
    let config = watcher::Config::default();
    let pipelines = Api::<AnalyticsPipeline>::all(client.clone());
    let sites = Api::<AnalyticsSite>::all(client.clone());

    let pipeline_controller = Controller::new(pipelines.clone(), config.clone())
        .owns(Api::<ConfigMap>::all(client.clone()), config.clone())
        .owns(Api::<Deployment>::all(client.clone()), config.clone())
        .owns(Api::<Service>::all(client.clone()), config.clone())
        .watches(sites.clone(), config.clone(), |site| {
            let ns = site.namespace()?;
            Some(ObjectRef::new(&site.spec.pipeline_ref.name).within(&ns))
        })
        .shutdown_on_signal()
        .run(pipeline::reconcile, pipeline::error_policy, ctx.clone())
        .for_each(|_| async {});

    let site_controller = Controller::new(sites, config.clone());
    let site_store = site_controller.store();
    let by_pipeline = site_store.clone();
    let site_controller = site_controller
        .watches(pipelines, config.clone(), move |p| {
            let (ns, name) = (p.namespace(), p.name_any());
            by_pipeline
                .state()
                .into_iter()
                .filter(|s| s.namespace() == ns && s.spec.pipeline_ref.name == name)
                .map(|s| ObjectRef::from_obj(&*s))
                .collect::<Vec<_>>()
        })
        .watches(Api::<Secret>::all(client), config, move |secret| {
            let (ns, name) = (secret.namespace(), secret.name_any());
            site_store
                .state()
                .into_iter()
                .filter(|s| {
                    s.namespace() == ns
                        && s.spec
                            .api_key_secret_ref
                            .as_ref()
                            .is_some_and(|r| r.name == name)
                })
                .map(|s| ObjectRef::from_obj(&*s))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(site::reconcile, site::error_policy, ctx)
        .for_each(|_| async {});

    futures::join!(pipeline_controller, site_controller);
}

fn http_router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(health)
}

/// Ready while this replica reconciles or stands by for the lease: a standby is healthy.
async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let role = if health.leading.load(Ordering::Relaxed) {
        "leading"
    } else {
        "standing by"
    };
    (StatusCode::OK, role)
}

async fn render_metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &health.metrics.registry)
        .expect("writing to a String never fails");
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
}
