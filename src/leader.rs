//! Leader election through a `coordination.k8s.io` Lease, and the shutdown signal.

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use crate::config::Config;

/// Counts SIGTERMs and SIGINTs from the moment it is called, so that none is missed
/// between two phases of the process (start, leader election, one generation of
/// controllers and the next). Once called, the signals no longer end the process by
/// themselves: whoever holds the receiver must watch it (see [`signalled`]).
pub fn signals() -> tokio::sync::watch::Receiver<u32> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = tokio::sync::watch::channel(0u32);
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::spawn(async move {
                loop {
                    let received = tokio::select! {
                        r = term.recv() => r,
                        r = int.recv() => r,
                    };
                    if received.is_none() {
                        break;
                    }
                    tx.send_modify(|n| *n += 1);
                }
            });
        }
        _ => tracing::warn!("cannot listen for SIGTERM and SIGINT: stop the process with SIGKILL"),
    }
    rx
}

/// Resolves once `n` signals have been counted (never if the count cannot change).
pub async fn signalled(signals: &mut tokio::sync::watch::Receiver<u32>, n: u32) {
    if signals.wait_for(|count| *count >= n).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Leader election: waits until this process holds the Lease. Returns the channel that
/// reports losing it, and the task that releases the Lease when the channel is dropped.
/// Returns `None` when a shutdown signal comes first (or came before).
pub async fn become_leader(
    client: &Client,
    config: &Config,
    signals: &mut tokio::sync::watch::Receiver<u32>,
) -> anyhow::Result<
    Option<(
        tokio::sync::watch::Receiver<bool>,
        tokio::task::JoinHandle<()>,
    )>,
> {
    let election = &config.leader_election;
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "vaultsync".into());
        format!("{host}-{:08x}", rand::random::<u32>())
    });
    let duration = election.lease_duration.as_secs().max(2);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &config.operator_namespace);
    tracing::info!(%identity, lease = %election.lease_name, "waiting to become the leader");
    // kube-lease-manager's standby sleeps until the holder's claim would expire, even when
    // the leader released the Lease on shutdown. A watch of the Lease sees the release, and
    // a fresh manager takes the Lease at once: a rolling update or a deleted leader pod
    // leaves the standby waiting for well under a second, not a lease duration.
    let (leading, task) = loop {
        let manager =
            kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &election.lease_name)
                .with_namespace(&config.operator_namespace)
                .with_identity(&identity)
                .with_duration(duration)
                .with_grace((duration / 3).max(1))
                .build()
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "leader election: cannot use Lease {}/{}: {e}",
                        config.operator_namespace,
                        election.lease_name
                    )
                })?;
        let (mut leading, task) = manager.watch().await;
        let released = released(leases.clone(), &election.lease_name, &identity);
        tokio::pin!(released);
        loop {
            if *leading.borrow_and_update() {
                break;
            }
            tokio::select! {
                changed = leading.changed() => {
                    if changed.is_err() {
                        anyhow::bail!("leader election stopped before this process became the leader");
                    }
                }
                _ = signalled(signals, 1) => return Ok(None),
                _ = &mut released => break,
            }
        }
        if *leading.borrow() {
            break (leading, task);
        }
        task.abort();
        tracing::info!("the leader released the Lease; taking it");
    };
    let release = tokio::spawn(async move {
        if let Ok(Err(e)) = task.await {
            tracing::warn!(error = %e, "leader election stopped with an error");
        }
    });
    tracing::info!(%identity, "became the leader");
    Ok(Some((leading, release)))
}

/// Resolves when the Lease, held by another process, is released (no holder any more).
/// Watch errors are retried with backoff; a Lease that is free when the watch starts does
/// not count, so a manager that is about to take it is not interrupted.
async fn released(leases: Api<Lease>, name: &str, identity: &str) {
    let holder = |lease: &Lease| {
        lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone())
            .filter(|h| !h.is_empty())
    };
    let events = watcher(
        leases,
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .default_backoff()
    .applied_objects();
    tokio::pin!(events);
    let mut held_by_another = false;
    while let Some(event) = events.next().await {
        let Ok(lease) = event else { continue };
        match holder(&lease) {
            Some(h) => held_by_another = h != identity,
            None if held_by_another => return,
            None => {}
        }
    }
    std::future::pending().await
}
