//! Probes under load: how long a new resource, or a changed spec, waits while the
//! operator is busy with routine refreshes; and what a restart of the operator costs.

use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::Value;
use vaultsync::sync::{SyncedResource, generation_synced};

/// Applies `manifest` (server-side, as `manager`) and returns how long until the
/// apiserver shows its new generation synced, polling every 20 ms; `None` after `timeout`.
pub async fn apply_and_time<K: SyncedResource>(
    client: &Client,
    namespace: &str,
    name: &str,
    manifest: &Value,
    manager: &str,
    timeout: Duration,
) -> anyhow::Result<Option<Duration>> {
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let t = Instant::now();
    let applied = api
        .patch(
            name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(manifest),
        )
        .await?;
    let generation = applied.meta().generation;
    while t.elapsed() < timeout {
        let obj = api.get(name).await?;
        if obj.meta().generation >= generation && generation_synced(&obj) {
            return Ok(Some(t.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "bench: {namespace}/{} was not synced within {:.0} s",
        applied.name_any(),
        timeout.as_secs_f64()
    );
    Ok(None)
}

/// The largest of `times`, in seconds, or `None` if one of them timed out.
pub fn worst(times: &[Option<Duration>]) -> Option<f64> {
    times
        .iter()
        .try_fold(0.0f64, |worst, t| t.map(|d| worst.max(d.as_secs_f64())))
}

/// "0.12, 0.30, 0.08 s", with "timeout" for those that did not finish.
pub fn describe(times: &[Option<Duration>]) -> String {
    let parts: Vec<String> = times
        .iter()
        .map(|t| t.map_or("timeout".to_string(), |d| format!("{:.2}", d.as_secs_f64())))
        .collect();
    format!("{} s", parts.join(", "))
}
