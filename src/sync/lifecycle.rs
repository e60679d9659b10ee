//! The lease lifecycle, shared by every backend that issues material:
//! - cleanup follows what was issued (status and the finalizer), never the current spec;
//! - a new lease is recorded before the Secret is written and the old one revoked, and an
//!   interrupted re-issue is completed or undone at the next reconcile;
//! - deletion waits for revocation only for a bounded time.

use jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::{SyncedResource, apply, finalizers, status};
use crate::api::SyncStatus;
use crate::backend::{Backend, Lease};
use crate::context::Context;
use crate::error::Result;
use crate::events::EventType;
use crate::ownership::REVOKE_FINALIZER;

pub fn has_finalizer<K: SyncedResource>(obj: &K) -> bool {
    obj.meta()
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == REVOKE_FINALIZER)
}

/// The lease the copy is under, and the HMAC of the data issued under it, after an
/// interrupted re-issue (if any) was completed or undone.
pub struct Recorded {
    pub lease: Option<Lease>,
    pub data_hmac: Option<String>,
}

/// Completes or undoes a re-issue that a crash or failure interrupted: when the Secret
/// holds the pending lease's data, the re-issue got as far as the write, so the old lease
/// is revoked and the pending one becomes current; otherwise the pending lease is revoked.
pub async fn recover<K: SyncedResource>(
    obj: &K,
    ctx: &Context,
    request: &<K::Backend as Backend>::Request,
    recorded: &SyncStatus,
    copy_hmac: Option<&str>,
) -> Result<Recorded> {
    let current = recorded.lease.as_ref().and_then(status::lease_of);
    let Some(pending) = &recorded.pending_lease else {
        return Ok(Recorded {
            lease: current,
            data_hmac: recorded.data_hmac.clone(),
        });
    };
    let Some(pending_lease) = status::lease_of(&pending.lease) else {
        return Ok(Recorded {
            lease: current,
            data_hmac: recorded.data_hmac.clone(),
        });
    };
    let backend = K::backend(ctx);
    if copy_hmac.is_some() && copy_hmac == pending.data_hmac.as_deref() {
        tracing::info!(lease = %pending_lease.id, "completing an interrupted re-issue");
        if let Some(old) = current.filter(|old| old.id != pending_lease.id) {
            // The crash may have come before the restart: workloads must not keep using
            // credentials about to be revoked.
            apply::restart_targets(obj, ctx, Timestamp::now()).await;
            release_replaced(obj, ctx, request, &old).await;
        }
        Ok(Recorded {
            lease: Some(pending_lease),
            data_hmac: pending.data_hmac.clone(),
        })
    } else {
        tracing::info!(lease = %pending_lease.id, "revoking the lease of an interrupted re-issue");
        backend.release(request, &pending_lease).await?;
        Ok(Recorded {
            lease: current,
            data_hmac: recorded.data_hmac.clone(),
        })
    }
}

/// Releases a lease that new material replaced. A failure is reported and otherwise
/// accepted: the old credentials end with their lease.
pub async fn release_replaced<K: SyncedResource>(
    obj: &K,
    ctx: &Context,
    request: &<K::Backend as Backend>::Request,
    old: &Lease,
) {
    if let Err(e) = K::backend(ctx).release(request, old).await {
        ctx.publish(
            obj,
            EventType::Warning,
            "RevokeFailed",
            format!("could not revoke the replaced credentials, which expire on their own: {e}"),
        )
        .await;
    }
}

/// Deletion: revoke every lease the status records (current and pending), then remove
/// the finalizer. When revocation keeps failing, the finalizer is removed anyway after
/// the configured revocation timeout, with a Warning Event that says so.
pub async fn finalize<K: SyncedResource>(obj: &K, ctx: &Context) -> Result<Action> {
    if !has_finalizer(obj) {
        // The Secret is owned by the resource; Kubernetes' garbage collector removes it.
        return Ok(Action::await_change());
    }
    let recorded = status::fresh(obj, ctx).await?;
    let now = Timestamp::now();
    let leases: Vec<Lease> = [
        recorded.lease.as_ref(),
        recorded.pending_lease.as_ref().map(|p| &p.lease),
    ]
    .into_iter()
    .flatten()
    .filter_map(status::lease_of)
    // Expired leases are already gone in Vault: nothing left to revoke.
    .filter(|l| l.expires_at > now)
    .collect();
    let backend = K::backend(ctx);
    let result: Result<()> = async {
        if leases.is_empty() {
            return Ok(());
        }
        let request = backend.resolve(&obj.namespace().unwrap_or_default(), obj.source())?;
        for lease in &leases {
            backend.release(&request, lease).await?;
        }
        Ok(())
    }
    .await;
    let error = match result {
        Ok(()) => {
            finalizers::remove(obj, ctx, REVOKE_FINALIZER).await?;
            return Ok(Action::await_change());
        }
        Err(e) => e,
    };
    let timeout = ctx.config.defaults.revocation_timeout;
    let deleted_at = obj
        .meta()
        .deletion_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(now);
    let give_up_at = deleted_at
        .saturating_add(SignedDuration::try_from(timeout).unwrap_or(SignedDuration::MAX))
        .unwrap_or(now);
    let lease_end = leases.iter().map(|l| l.expires_at).max().unwrap_or(now);
    if now >= give_up_at {
        ctx.publish(
            obj,
            EventType::Warning,
            "RevocationAbandoned",
            format!(
                "could not revoke the lease for {}s ({error}); removed the finalizer so the resource can go. The credentials stay valid until their lease ends at {lease_end}",
                timeout.as_secs()
            ),
        )
        .await;
        finalizers::remove(obj, ctx, REVOKE_FINALIZER).await?;
        return Ok(Action::await_change());
    }
    // The failure becomes the Ready condition and a SyncFailed Event; the error policy
    // retries with backoff.
    Err(error.with_context(|m| {
        format!(
            "could not revoke the lease before deletion ({m}); retrying until {give_up_at}, then the finalizer is removed"
        )
    }))
}
