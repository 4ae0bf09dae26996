//! Leader election: the controllers run only while this replica holds the `tally-operator`
//! Lease, so that several replicas are safe.

use std::future::Future;

use anyhow::Context as _;
use tally_runtime::shutdown_signal;

use crate::health::Health;

/// Runs `controllers` until SIGINT or SIGTERM, leader election off.
pub async fn without_election(health: &Health, controllers: impl Future<Output = ()>) {
    health.set_leading();
    tracing::info!("reconciling (leader election off)");
    tokio::select! {
        _ = controllers => {}
        _ = shutdown_signal() => {}
    }
}

/// Waits for the Lease in `namespace`, then runs `controllers` until SIGINT or SIGTERM.
/// Losing the Lease is an error: another replica may be reconciling, so this one exits and
/// starts over as a candidate.
pub async fn lead(
    client: kube::Client,
    namespace: &str,
    identity: &str,
    health: &Health,
    controllers: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let lease = kube_lease_manager::LeaseManagerBuilder::new(client, "tally-operator")
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await
        .context("cannot set up leader election")?;
    let (mut leader, lease_task) = lease.watch().await;
    tracing::info!(%identity, %namespace, "waiting to lead");
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
        health.set_leading();
        tracing::info!(%identity, "leading: reconciling");
        let lost = async {
            while leader.changed().await.is_ok() {
                if !*leader.borrow_and_update() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = controllers => {}
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
