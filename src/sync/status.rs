//! Status (IO): the `Ready` condition and the sync fields, written through the
//! `/status` subresource. Nothing here carries a value.
//!
//! Success and a pending lease are written with server-side apply of the whole status;
//! a failure only merges the condition in, so it can never roll back the lease fields
//! with an older copy of the status.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::SyncedResource;
use crate::api::{LeaseStatus, PendingLease, SyncStatus};
use crate::backend::Lease;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::events::EventType;
use crate::ownership::{MANAGER, patch_params};

/// What a successful sync reports.
pub struct Synced<'a> {
    pub secret_name: &'a str,
    pub version: &'a str,
    pub lease: Option<&'a Lease>,
    pub expires_at: Timestamp,
    pub next_refresh: std::time::Duration,
    pub data_hmac: String,
    /// The data differed from what the Secret held before.
    pub data_changed: bool,
}

/// The `Ready` condition with `status`, keeping the transition time when unchanged.
fn ready(
    previous: Option<&SyncStatus>,
    generation: Option<i64>,
    status: bool,
    reason: &str,
    message: String,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let last_transition_time = previous
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(Timestamp::now()));
    Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

pub fn lease_status(lease: &Lease) -> LeaseStatus {
    LeaseStatus {
        id: Some(lease.id.clone()),
        duration_seconds: i64::try_from(lease.duration.as_secs()).ok(),
        renewable: Some(lease.renewable),
        expires_at: Some(Time(lease.expires_at)),
    }
}

/// The lease a status records, if it is complete.
pub fn lease_of(status: &LeaseStatus) -> Option<Lease> {
    Some(Lease {
        id: status.id.clone()?,
        duration: std::time::Duration::from_secs(u64::try_from(status.duration_seconds?).ok()?),
        renewable: status.renewable.unwrap_or(false),
        expires_at: status.expires_at.as_ref()?.0,
    })
}

async fn apply<K: SyncedResource>(obj: &K, ctx: &Context, status: &SyncStatus) -> Result<()> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn merge<K: SyncedResource>(obj: &K, ctx: &Context, status: serde_json::Value) -> Result<()> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    api.patch_status(
        &obj.name_any(),
        &patch_params(),
        &Patch::Merge(json!({"status": status})),
    )
    .await?;
    Ok(())
}

/// The status as the apiserver has it now, not as the watch cache last saw it: lease
/// decisions must see the status written by the previous reconcile.
pub async fn fresh<K: SyncedResource>(obj: &K, ctx: &Context) -> Result<SyncStatus> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    Ok(api
        .get_status(&obj.name_any())
        .await?
        .status()
        .cloned()
        .unwrap_or_default())
}

/// Records a new lease as pending before the Secret is written.
pub async fn record_pending<K: SyncedResource>(
    obj: &K,
    ctx: &Context,
    base: &SyncStatus,
    lease: &Lease,
    data_hmac: &str,
) -> Result<()> {
    let mut status = base.clone();
    status.pending_lease = Some(PendingLease {
        lease: lease_status(lease),
        data_hmac: Some(data_hmac.to_string()),
    });
    apply(obj, ctx, &status).await
}

pub async fn report_success<K: SyncedResource>(
    obj: &K,
    ctx: &Context,
    previous: &SyncStatus,
    synced: &Synced<'_>,
) -> Result<()> {
    let now = Timestamp::now();
    let generation = obj.meta().generation;
    let next = now
        .saturating_add(jiff::SignedDuration::try_from(synced.next_refresh).unwrap_or_default())
        .unwrap_or(now);
    let message = if synced.data_changed {
        format!(
            "Secret {} holds version {}",
            synced.secret_name, synced.version
        )
    } else {
        format!("Secret {} is up to date", synced.secret_name)
    };
    let status = SyncStatus {
        conditions: vec![ready(Some(previous), generation, true, "Synced", message)],
        observed_generation: generation,
        secret_name: Some(synced.secret_name.to_string()),
        last_sync_time: Some(Time(now)),
        expires_at: Some(Time(synced.expires_at)),
        next_refresh_time: Some(Time(next)),
        source_version: Some(synced.version.to_string()).filter(|v| !v.is_empty()),
        lease: synced.lease.map(lease_status),
        pending_lease: None,
        data_hmac: Some(synced.data_hmac.clone()),
    };
    apply(obj, ctx, &status).await
}

/// Records a failure: `Ready=False` with the reason for this generation, everything else
/// as it is, and a `SyncFailed` Event when the condition changes.
pub async fn report_failure<K: SyncedResource>(
    obj: &K,
    ctx: &Context,
    error: &Error,
) -> Result<()> {
    if matches!(error, Error::Kube(_)) && obj.status().is_some() {
        // An apiserver hiccup says nothing about the source; keep the last verdict.
        return Ok(());
    }
    let previous = obj.status();
    let generation = obj.meta().generation;
    let message = error.to_string();
    let changed = previous
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .is_none_or(|c| c.reason != error.reason() || c.message != message);
    let condition = ready(previous, generation, false, error.reason(), message.clone());
    if changed {
        ctx.publish(obj, EventType::Warning, "SyncFailed", message)
            .await;
    }
    merge(
        obj,
        ctx,
        json!({"conditions": [condition], "observedGeneration": generation}),
    )
    .await
}
