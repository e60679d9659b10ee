//! Leader election through a `coordination.k8s.io` Lease, and the shutdown signal.

use kube::Client;

use crate::config::Config;

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Leader election: waits until this process holds the Lease. Returns the channel that
/// reports losing it, and the task that releases the Lease when the channel is dropped.
/// Returns `None` when a shutdown signal comes first.
pub async fn become_leader(
    client: &Client,
    config: &Config,
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
    let release = tokio::spawn(async move {
        if let Ok(Err(e)) = task.await {
            tracing::warn!(error = %e, "leader election stopped with an error");
        }
    });
    tracing::info!(%identity, lease = %election.lease_name, "waiting to become the leader");
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    while !*leading.borrow_and_update() {
        tokio::select! {
            changed = leading.changed() => {
                if changed.is_err() {
                    anyhow::bail!("leader election stopped before this process became the leader");
                }
            }
            _ = &mut shutdown => return Ok(None),
        }
    }
    tracing::info!(%identity, "became the leader");
    Ok(Some((leading, release)))
}
