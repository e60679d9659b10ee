//! Status (IO): the `Ready` condition and the sync fields, written through the
//! `/status` subresource with server-side apply. Nothing here carries a value.

use crate::events::EventType;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::SyncedResource;
use super::apply::{MANAGER, Outcome};
use crate::api::{LeaseStatus, SyncStatus};
use crate::backend::Fetched;
use crate::controller::Context;
use crate::error::{Error, Result};

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

async fn write<K: SyncedResource>(obj: &K, ctx: &Context, status: &SyncStatus) -> Result<()> {
    let namespace = obj.meta().namespace.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
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

pub async fn report_success<K: SyncedResource>(
    obj: &K,
    ctx: &Context,
    fetched: &Fetched,
    outcome: &Outcome,
) -> Result<()> {
    let now = Timestamp::now();
    let generation = obj.meta().generation;
    let next = now
        .saturating_add(jiff::SignedDuration::try_from(outcome.next_refresh).unwrap_or_default())
        .unwrap_or(now);
    let message = if outcome.data_changed {
        format!(
            "Secret {} holds version {}",
            outcome.secret_name, fetched.version
        )
    } else {
        format!("Secret {} is up to date", outcome.secret_name)
    };
    let status = SyncStatus {
        conditions: vec![ready(obj.status(), generation, true, "Synced", message)],
        observed_generation: generation,
        secret_name: Some(outcome.secret_name.clone()),
        last_sync_time: Some(Time(now)),
        expires_at: Some(Time(outcome.expires_at)),
        next_refresh_time: Some(Time(next)),
        source_version: Some(fetched.version.clone()).filter(|v| !v.is_empty()),
        lease: fetched.lease.as_ref().map(|l| LeaseStatus {
            id: Some(l.id.clone()),
            duration_seconds: i64::try_from(l.duration.as_secs()).ok(),
            renewable: Some(l.renewable),
            expires_at: Some(Time(l.expires_at)),
        }),
        data_hmac: Some(outcome.data_hmac.clone()),
    };
    write(obj, ctx, &status).await
}

/// Records a failure: `Ready=False` with the reason, everything else as it was, and a
/// `SyncFailed` Event when the condition changes.
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
    let mut status = previous.cloned().unwrap_or_default();
    status.conditions = vec![ready(
        previous,
        generation,
        false,
        error.reason(),
        message.clone(),
    )];
    status.observed_generation = generation;
    if changed {
        ctx.publish(obj, EventType::Warning, "SyncFailed", message)
            .await;
    }
    write(obj, ctx, &status).await
}
