//! Status (IO): the `Ready` condition and the sync fields, written through the
//! `/status` subresource. Nothing here carries a value.
//!
//! Success and a pending lease are written with server-side apply of the whole status;
//! a failure only merges the condition in, so it can never roll back the lease fields
//! with an older copy of the status. A success that says nothing the recorded status
//! does not already say (only `lastSyncTime` and `nextRefreshTime` would move) is not
//! written at all.

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
    /// A reconcile failed since the last success: the status may say so in a write the
    /// watch cache has not shown yet, so this one is written whatever the cache says.
    pub after_failure: bool,
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

/// Records a new lease as pending before the Secret is written; returns the status
/// written.
pub async fn record_pending<K: SyncedResource>(
    obj: &K,
    ctx: &Context,
    base: &SyncStatus,
    lease: &Lease,
    data_hmac: &str,
) -> Result<SyncStatus> {
    let mut status = base.clone();
    status.pending_lease = Some(PendingLease {
        lease: lease_status(lease),
        data_hmac: Some(data_hmac.to_string()),
    });
    apply(obj, ctx, &status).await?;
    Ok(status)
}

/// The status a successful sync at `now` records. The Ready message names the version,
/// not what this sync did, so a refresh that finds the same version says the same thing.
pub fn success_status(
    previous: &SyncStatus,
    generation: Option<i64>,
    synced: &Synced<'_>,
    now: Timestamp,
) -> SyncStatus {
    let next = now
        .saturating_add(jiff::SignedDuration::try_from(synced.next_refresh).unwrap_or_default())
        .unwrap_or(now);
    let message = if synced.version.is_empty() {
        format!("Secret {} is in sync", synced.secret_name)
    } else {
        format!(
            "Secret {} holds version {}",
            synced.secret_name, synced.version
        )
    };
    SyncStatus {
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
    }
}

/// Whether `new` says anything `recorded` does not, compared as the apiserver stores them
/// (timestamps to the second): everything but `lastSyncTime`, `nextRefreshTime` and the
/// conditions' `lastTransitionTime` counts, so a new version, expiry mark, lease, pending
/// lease, HMAC, Secret name, generation or condition is news, and a field added later
/// counts too.
pub fn carries_news(recorded: &SyncStatus, new: &SyncStatus) -> bool {
    fn gist(status: &SyncStatus) -> serde_json::Result<serde_json::Value> {
        let mut status = status.clone();
        status.last_sync_time = None;
        status.next_refresh_time = None;
        for condition in &mut status.conditions {
            condition.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        }
        serde_json::to_value(&status)
    }
    match (gist(recorded), gist(new)) {
        (Ok(before), Ok(after)) => before != after,
        // Not expected; when in doubt, write.
        _ => true,
    }
}

/// Records a success, unless `recorded` (the status as last seen, possibly from the watch
/// cache) already says all it would and no failure came in between.
pub async fn report_success<K: SyncedResource>(
    obj: &K,
    ctx: &Context,
    recorded: &SyncStatus,
    synced: &Synced<'_>,
) -> Result<()> {
    let status = success_status(recorded, obj.meta().generation, synced, Timestamp::now());
    report(obj, ctx, recorded, status, synced.after_failure).await
}

/// Writes `status`, unless `recorded` already says all it does and no failure came in
/// between (`after_failure`).
pub async fn report<K: SyncedResource>(
    obj: &K,
    ctx: &Context,
    recorded: &SyncStatus,
    status: SyncStatus,
    after_failure: bool,
) -> Result<()> {
    if !after_failure && !carries_news(recorded, &status) {
        return Ok(());
    }
    apply(obj, ctx, &status).await
}

/// The status of a resource whose output is ConfigMap `name`: no Secret and no expiry.
pub fn config_map_status(
    previous: &SyncStatus,
    generation: Option<i64>,
    name: &str,
    version: &str,
    data_hmac: String,
    next_refresh: std::time::Duration,
    now: Timestamp,
) -> SyncStatus {
    let next = now
        .saturating_add(jiff::SignedDuration::try_from(next_refresh).unwrap_or_default())
        .unwrap_or(now);
    let message = format!("ConfigMap {name} holds version {version}");
    SyncStatus {
        conditions: vec![ready(Some(previous), generation, true, "Synced", message)],
        observed_generation: generation,
        last_sync_time: Some(Time(now)),
        next_refresh_time: Some(Time(next)),
        source_version: Some(version.to_string()).filter(|v| !v.is_empty()),
        data_hmac: Some(data_hmac),
        ..SyncStatus::default()
    }
}

/// Records that the resource writes nothing (an AzureKeyVaultSecret without `output`, read
/// only by pod injection): `Ready=True`, reason `InjectionOnly`, written once per
/// generation, and nothing else (an earlier output's fields are removed).
pub async fn report_injection_only<K: SyncedResource>(obj: &K, ctx: &Context) -> Result<()> {
    const REASON: &str = "InjectionOnly";
    let previous = obj.status();
    let generation = obj.meta().generation;
    let current = previous
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.reason == REASON && c.observed_generation == generation);
    if current {
        return Ok(());
    }
    let message = format!(
        "no spec.output: no Secret is written; pods of this namespace read it by injection ({}@azurekeyvault)",
        obj.name_any()
    );
    // The whole status, applied: what an earlier Secret output recorded goes.
    let status = SyncStatus {
        conditions: vec![ready(previous, generation, true, REASON, message)],
        observed_generation: generation,
        ..SyncStatus::default()
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ts(text: &str) -> Timestamp {
        text.parse().expect("timestamp")
    }

    fn lease(expires_at: &str) -> Lease {
        Lease {
            id: "database/creds/app/abc".into(),
            duration: Duration::from_secs(3600),
            renewable: true,
            expires_at: ts(expires_at),
        }
    }

    fn synced<'a>(version: &'a str, lease: Option<&'a Lease>) -> Synced<'a> {
        Synced {
            secret_name: "db",
            version,
            lease,
            expires_at: ts("2026-06-01T15:00:00Z"),
            next_refresh: Duration::from_secs(1800),
            data_hmac: "hmac-sha256:aa".into(),
            after_failure: false,
        }
    }

    /// `status` as the apiserver stores it and the watch hands it back.
    fn stored(status: &SyncStatus) -> SyncStatus {
        serde_json::from_value(serde_json::to_value(status).expect("to json")).expect("from json")
    }

    /// The status after the first sync at 12:00, as stored.
    fn first(synced: &Synced<'_>) -> SyncStatus {
        stored(&success_status(
            &SyncStatus::default(),
            Some(1),
            synced,
            ts("2026-06-01T12:00:00.250Z"),
        ))
    }

    const LATER: &str = "2026-06-01T12:30:07.900Z";

    #[test]
    fn a_refresh_that_finds_nothing_new_is_not_news() {
        let lease = lease("2026-06-01T13:00:00.731Z");
        for s in [
            synced("3", None),
            synced("", None),
            synced("abc", Some(&lease)),
        ] {
            let recorded = first(&s);
            let again = success_status(&recorded, Some(1), &s, ts(LATER));
            assert_ne!(again.last_sync_time, recorded.last_sync_time);
            assert_ne!(again.next_refresh_time, recorded.next_refresh_time);
            assert!(!carries_news(&recorded, &again), "{again:?}");
        }
    }

    #[test]
    fn the_ready_message_names_the_version_not_the_event() {
        let status = success_status(
            &SyncStatus::default(),
            Some(1),
            &synced("3", None),
            ts(LATER),
        );
        assert_eq!(status.conditions[0].message, "Secret db holds version 3");
        let status = success_status(
            &SyncStatus::default(),
            Some(1),
            &synced("", None),
            ts(LATER),
        );
        assert_eq!(status.conditions[0].message, "Secret db is in sync");
        assert_eq!(status.source_version, None);
    }

    #[test]
    fn anything_but_the_sync_times_is_news() {
        let renewed = lease("2026-06-01T14:00:00Z");
        let old_lease = lease("2026-06-01T13:00:00Z");
        let base = synced("3", Some(&old_lease));
        let recorded = first(&base);
        let news = |s: &Synced<'_>, generation: Option<i64>| {
            carries_news(
                &recorded,
                &success_status(&recorded, generation, s, ts(LATER)),
            )
        };
        assert!(
            news(&synced("4", Some(&old_lease)), Some(1)),
            "a new version"
        );
        assert!(news(&base, Some(2)), "a new generation");
        assert!(
            news(&synced("3", Some(&renewed)), Some(1)),
            "a renewed lease"
        );
        assert!(news(&synced("3", None), Some(1)), "a lease gone");
        let moved = Synced {
            expires_at: ts("2026-06-01T16:30:00Z"),
            ..synced("3", Some(&old_lease))
        };
        assert!(news(&moved, Some(1)), "a moved expiry mark");
        let rehashed = Synced {
            data_hmac: "hmac-sha256:bb".into(),
            ..synced("3", Some(&old_lease))
        };
        assert!(news(&rehashed, Some(1)), "new data");
        let renamed = Synced {
            secret_name: "db2",
            ..synced("3", Some(&old_lease))
        };
        assert!(news(&renamed, Some(1)), "another Secret");
        // Within the second the apiserver stores, an expiry is the same.
        let same_second = Synced {
            expires_at: ts("2026-06-01T15:00:00.600Z"),
            ..synced("3", Some(&old_lease))
        };
        assert!(!news(&same_second, Some(1)));
    }

    #[test]
    fn what_the_recorded_status_lacks_or_has_in_excess_is_news() {
        let s = synced("3", None);
        let fresh = |recorded: &SyncStatus| success_status(recorded, Some(1), &s, ts(LATER));
        let nothing = SyncStatus::default();
        assert!(carries_news(&nothing, &fresh(&nothing)), "no status yet");

        let mut pending = first(&s);
        pending.pending_lease = Some(PendingLease {
            lease: lease_status(&lease("2026-06-01T13:00:00Z")),
            data_hmac: Some("hmac-sha256:cc".into()),
        });
        assert!(
            carries_news(&pending, &fresh(&pending)),
            "a pending lease to clear"
        );

        let mut failed = first(&s);
        failed.conditions[0].status = "False".into();
        failed.conditions[0].reason = "BackendUnavailable".into();
        failed.conditions[0].message = "OpenBao did not answer".into();
        assert!(
            carries_news(&failed, &fresh(&failed)),
            "Ready turns True again"
        );

        let mut older = first(&s);
        older.conditions[0].observed_generation = Some(0);
        assert!(
            carries_news(&older, &fresh(&older)),
            "the condition's generation"
        );
    }
}
