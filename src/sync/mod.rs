//! The reconcile pipeline, shared by both kinds:
//! resolve (pure) -> fetch (IO) -> render (pure) -> plan (pure) -> apply (IO) -> status (IO).
//!
//! The kinds differ only in their backend (`crate::backend`); leases, output building,
//! templating, apply, expiry, rotation and status are this module, and it names no type
//! of any one backend.

pub mod apply;
pub mod bounds;
mod config_map;
mod finalizers;
pub mod lanes;
mod lifecycle;
pub mod plan;
pub mod render;
pub mod schedule;
pub mod status;

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::NamespaceResourceScope;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{SecretTarget, SyncPolicy, SyncStatus};
use crate::backend::{Backend, Lease, Material, Prior};
use crate::config::parse_duration;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::ownership::{REVOKE_FINALIZER, data_hmac, secret_hmac};

/// What the pipeline needs from a custom resource kind.
pub trait SyncedResource:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    /// The kind's name, for metrics and logs.
    const KIND: &'static str;
    /// Where this kind's material comes from.
    type Backend: Backend;
    fn backend(ctx: &Context) -> &Self::Backend;
    /// The source part of the spec, which the backend resolves.
    fn source(&self) -> &<Self::Backend as Backend>::Source;
    /// The Secret to write.
    fn target(&self) -> SecretTarget;
    /// Refresh interval, ttl and workloads to restart.
    fn policy(&self) -> &SyncPolicy;
    fn status(&self) -> Option<&SyncStatus>;
    /// For issued material: renew or re-issue at this share of the lifetime.
    fn renewal_percent(&self) -> u8 {
        67
    }
    /// Whether the resource asks for a Secret at all (an AzureKeyVaultSecret without
    /// `output` serves pod injection only).
    fn writes_secret(&self) -> bool {
        true
    }
    /// The ConfigMap to write instead of a Secret, for public material
    /// (an AzureKeyVaultSecret's `output.configMap`).
    fn config_map(&self) -> Option<String> {
        None
    }
}

/// Reads material that is read, not issued (no prior lease, no copy to keep): what
/// `vaultsync check` and the ConfigMap output read.
pub async fn read_fresh<K: SyncedResource>(
    obj: &K,
    ctx: &Context,
    request: &<K::Backend as Backend>::Request,
) -> Result<crate::backend::Fresh> {
    let prior = Prior {
        lease: None,
        copy_intact: false,
        renewal_percent: obj.renewal_percent(),
    };
    match K::backend(ctx).fetch(request, prior).await? {
        Material::Fresh(fresh) => Ok(fresh),
        Material::Unchanged { .. } => Err(Error::unavailable("the backend returned no material")),
    }
}

/// Durations a resource asks for, with the operator's defaults and limits applied.
pub struct Timing {
    pub refresh_interval: Duration,
    pub ttl: Duration,
}

pub fn timing<K: SyncedResource>(obj: &K, ctx: &Context) -> Result<Timing> {
    let defaults = &ctx.config.defaults;
    let parse = |field: &str, value: Option<&str>, default: Duration| match value {
        Some(text) => {
            parse_duration(text).map_err(|e| Error::InvalidSpec(format!("spec.{field}: {e}")))
        }
        None => Ok(default),
    };
    let refresh_interval = parse(
        "refreshInterval",
        obj.policy().refresh_interval.as_deref(),
        defaults.refresh_interval,
    )?
    .max(defaults.min_refresh_interval);
    let ttl = parse("ttl", obj.policy().ttl.as_deref(), defaults.ttl)?;
    if ttl <= refresh_interval {
        return Err(Error::InvalidSpec(format!(
            "ttl ({}s) must be longer than the refresh interval ({}s)",
            ttl.as_secs(),
            refresh_interval.as_secs()
        )));
    }
    Ok(Timing {
        refresh_interval,
        ttl,
    })
}

/// The name of the managed Secret: `spec.output.secret.name`, else the resource's name.
pub fn secret_name<K: SyncedResource>(obj: &K, target: &SecretTarget) -> String {
    target.name.clone().unwrap_or_else(|| obj.name_any())
}

/// Whether a status records no sync, no lease and no pending lease.
fn never_synced(status: Option<&SyncStatus>) -> bool {
    status.is_none_or(|s| {
        s.last_sync_time.is_none() && s.lease.is_none() && s.pending_lease.is_none()
    })
}

/// Reconciles one resource through the whole pipeline.
pub async fn reconcile<K: SyncedResource>(obj: &K, ctx: &Context) -> Result<Action> {
    let namespace = obj.namespace().unwrap_or_default();
    let _slot = match ctx
        .lanes
        .admit(K::KIND, &namespace, &obj.name_any(), routine(obj))
    {
        lanes::Admission::Go(slot) => slot,
        lanes::Admission::Later(delay) => return Ok(Action::requeue(delay)),
    };
    let started = Instant::now();
    let _in_flight = ctx.metrics.queue_depth.inc();
    let result = if obj.meta().deletion_timestamp.is_some() {
        lifecycle::finalize(obj, ctx).await
    } else {
        run_pipeline(obj, ctx).await
    };
    ctx.metrics.queue_depth.dec();
    match &result {
        Ok(_) => {
            ctx.metrics.sync(K::KIND, "Synced", started);
            ctx.reset_backoff::<K>(obj);
        }
        Err(e) => {
            ctx.metrics.sync(K::KIND, e.reason(), started);
            // The failure is reported on the resource; the existing Secret stays as it is.
            if let Err(status_err) = status::report_failure(obj, ctx, e).await {
                tracing::warn!(error = %status_err, "could not write the failure to status");
            }
        }
    }
    result
}

async fn run_pipeline<K: SyncedResource>(obj: &K, ctx: &Context) -> Result<Action> {
    if !obj.writes_secret() {
        status::report_injection_only(obj, ctx).await?;
        return Ok(Action::await_change());
    }
    if let Some(name) = obj.config_map() {
        return config_map::run(obj, ctx, &name).await;
    }
    let timing = timing(obj, ctx)?;
    let backend = K::backend(ctx);
    let request = backend.resolve(&obj.namespace().unwrap_or_default(), obj.source())?;
    let needs_finalizer = K::Backend::needs_finalizer(&request);
    if needs_finalizer && !lifecycle::has_finalizer(obj) {
        // Before anything is issued, so that no lease can outlive its resource.
        finalizers::add(obj, ctx, REVOKE_FINALIZER).await?;
    }
    let target = obj.target();
    let name = secret_name(obj, &target);
    // Ownership first: a Secret someone else owns is never read further or touched. A
    // first sync of a static source whose Secret the managed-Secrets cache does not know
    // skips the read: the create that follows fails if a Secret of that name exists, and
    // ownership is checked then (a cold start of many resources saves a request each).
    let first_static_sync = !K::Backend::issues(&request) && never_synced(obj.status());
    let existing = if first_static_sync
        && ctx.no_managed_secret(&obj.namespace().unwrap_or_default(), &name)
    {
        None
    } else {
        apply::existing_secret(obj, ctx, &name).await?
    };
    // The status as last seen: the watch cache's copy for static sources (lease decisions
    // read the apiserver's). The cache can lag the operator's own writes: a lagging
    // success costs one write more, and after a failure the success is always written.
    let cached = obj.status().cloned().unwrap_or_default();
    let mut recorded =
        if K::Backend::issues(&request) || cached.lease.is_some() || cached.pending_lease.is_some()
        {
            status::fresh(obj, ctx).await?
        } else {
            cached
        };
    let copy_hmac = existing
        .as_ref()
        .filter(|s| s.data.as_ref().is_some_and(|d| !d.is_empty()))
        .map(|s| secret_hmac(&ctx.hmac_key, s));
    let prior = lifecycle::recover(obj, ctx, &request, &recorded, copy_hmac.as_deref()).await?;
    // A copy someone edited or emptied is not kept: static sources rewrite it, issued
    // material is issued anew.
    let copy_intact = copy_hmac.is_some() && copy_hmac == prior.data_hmac;
    tracing::debug!(
        kind = K::KIND,
        name = %obj.name_any(),
        copy = copy_hmac.is_some(),
        recorded = prior.data_hmac.is_some(),
        lease = prior.lease.is_some(),
        copy_intact,
        "prior state"
    );
    let (started, started_at) = ctx.epoch();
    if !K::Backend::issues(&request)
        && prior.lease.is_none()
        && copy_intact
        && settled_before(obj, &recorded, started_at)
        && let Some(last_sync) = recorded.last_sync_time.as_ref()
        && let Some(mark) = existing.as_ref().and_then(plan::mark_of)
        && let Some(delay) = schedule::resume_delay(
            started.elapsed(),
            Timestamp::now(),
            last_sync.0,
            mark,
            timing.refresh_interval,
            rand::random::<f64>(),
        )
    {
        // Just started, and the copy is as an earlier generation left it: read it when due.
        tracing::debug!(
            kind = K::KIND,
            name = %obj.name_any(),
            next_read_seconds = delay.as_secs(),
            "resumed: the copy is intact"
        );
        return Ok(Action::requeue(delay));
    }
    let material = backend
        .fetch(
            &request,
            Prior {
                lease: prior.lease.as_ref(),
                copy_intact,
                renewal_percent: obj.renewal_percent(),
            },
        )
        .await?;

    // The material, the lease it replaces (if any), and whether its lease is new.
    let (desired, version, lease, not_after, replaced) = match material {
        Material::Unchanged { lease } => {
            let secret = existing
                .as_ref()
                .ok_or_else(|| Error::unavailable("the kept lease's Secret is gone"))?;
            let desired = render::from_existing(&name, secret, &target);
            let version = recorded.source_version.clone().unwrap_or_default();
            let not_after = Some(lease.expires_at);
            (desired, version, Some(lease), not_after, None)
        }
        Material::Fresh(fresh) => {
            let replaced = prior
                .lease
                .clone()
                .filter(|old| fresh.lease.as_ref().is_none_or(|new| new.id != old.id));
            if replaced.is_some() && fresh.lease.is_some() {
                failpoint::hit("issued");
            }
            let desired = match render::render(&name, &fresh, &target) {
                Ok(desired) => desired,
                Err(e) => {
                    // Material nobody will receive is given back at once.
                    release_unused(obj, ctx, &request, fresh.lease.as_ref()).await;
                    return Err(e);
                }
            };
            if let Some(new) = &fresh.lease {
                let hmac = data_hmac(&ctx.hmac_key, &desired.type_, &desired.data);
                match status::record_pending(obj, ctx, &recorded, new, &hmac).await {
                    // What the apiserver now holds, for the success write to clear.
                    Ok(pending) => recorded = pending,
                    Err(e) => {
                        release_unused(obj, ctx, &request, Some(new)).await;
                        return Err(e);
                    }
                }
                if replaced.is_some() {
                    failpoint::hit("recorded");
                }
            }
            (
                desired,
                fresh.version,
                fresh.lease,
                fresh.not_after,
                replaced,
            )
        }
    };

    let now = Timestamp::now();
    let lifetime = lease.as_ref().map(|l| {
        let start = l
            .expires_at
            .saturating_sub(jiff::SignedDuration::try_from(l.duration).unwrap_or_default())
            .unwrap_or(l.expires_at);
        (start, l.expires_at)
    });
    let plan = plan::plan(
        existing.as_ref(),
        &desired,
        &plan::Inputs {
            now,
            refresh_interval: timing.refresh_interval,
            ttl: timing.ttl,
            renewal_percent: obj.renewal_percent(),
            version: &version,
            not_after,
            lifetime,
            jitter: rand::random::<f64>(),
        },
    );
    tracing::debug!(
        kind = K::KIND,
        namespace = obj.meta().namespace.as_deref().unwrap_or_default(),
        name = %obj.name_any(),
        write = ?plan.write,
        replace = plan.replace,
        restart = plan.restart,
        stripped_keys = plan.strip_keys.len(),
        next_refresh_seconds = plan.next_refresh.as_secs(),
        "planned"
    );
    let reissue = replaced.is_some() && lease.is_some();
    let issued = lease
        .as_ref()
        .is_some_and(|new| prior.lease.as_ref().is_none_or(|old| old.id != new.id));
    if let Err(e) = apply::execute(obj, ctx, &desired, &plan, existing.as_ref()).await {
        if issued {
            // The new lease never reached the Secret: revoke it; the pending record goes
            // with the next status write.
            release_unused(obj, ctx, &request, lease.as_ref()).await;
        }
        return Err(e);
    }
    if reissue {
        failpoint::hit("written");
    }
    if plan.restart {
        apply::restart_targets(obj, ctx, now).await;
    }
    if reissue {
        failpoint::hit("restarted");
    }
    if let Some(old) = &replaced {
        lifecycle::release_replaced(obj, ctx, &request, old).await;
    }
    if reissue {
        failpoint::hit("revoked");
    }
    status::report_success(
        obj,
        ctx,
        &recorded,
        &status::Synced {
            secret_name: &name,
            version: &version,
            lease: lease.as_ref(),
            expires_at: plan.expires_at,
            next_refresh: plan.next_refresh,
            data_hmac: data_hmac(&ctx.hmac_key, &desired.type_, &desired.data),
            after_failure: ctx.failed_since_success(obj),
        },
    )
    .await?;
    if reissue {
        failpoint::hit("committed");
    }
    if !needs_finalizer && lifecycle::has_finalizer(obj) {
        // What was issued under the previous spec is released and no longer recorded.
        finalizers::remove(obj, ctx, REVOKE_FINALIZER).await?;
    }
    Ok(Action::requeue(plan.next_refresh))
}

/// Whether the resource's last sync succeeded for its current generation, and was
/// recorded before `started` (by an earlier process: status times are whole seconds, so
/// one second of margin).
fn settled_before<K: SyncedResource>(obj: &K, recorded: &SyncStatus, started: Timestamp) -> bool {
    let earlier = started
        .checked_sub(jiff::SignedDuration::from_secs(1))
        .unwrap_or(started);
    generation_synced(obj)
        && recorded
            .last_sync_time
            .as_ref()
            .is_some_and(|t| t.0 < earlier)
}

/// Whether the resource's last sync succeeded for its current generation.
pub fn generation_synced<K: SyncedResource>(obj: &K) -> bool {
    let generation = obj.meta().generation;
    obj.status().is_some_and(|s| {
        s.observed_generation == generation
            && s.conditions.iter().any(|c| {
                c.type_ == "Ready"
                    && c.status == "True"
                    && c.reason == "Synced"
                    && c.observed_generation == generation
            })
    })
}

/// Whether a reconcile would only refresh the resource: its generation is synced, it
/// holds no lease to renew (renewals keep their time), and it is not being deleted.
fn routine<K: SyncedResource>(obj: &K) -> bool {
    obj.meta().deletion_timestamp.is_none()
        && obj
            .status()
            .is_some_and(|s| s.lease.is_none() && s.pending_lease.is_none())
        && generation_synced(obj)
}

/// Releases a lease whose material will not be used; a failure is logged (the lease
/// stays recorded as pending when it was, and is retried from there).
async fn release_unused<K: SyncedResource>(
    obj: &K,
    ctx: &Context,
    request: &<K::Backend as Backend>::Request,
    lease: Option<&Lease>,
) {
    if let Some(lease) = lease
        && let Err(e) = K::backend(ctx).release(request, lease).await
    {
        tracing::warn!(
            kind = K::KIND,
            name = %obj.name_any(),
            error = %e,
            "could not revoke credentials that were issued but not written"
        );
    }
}

/// The error policy: back off per object, exponentially with jitter, honouring
/// `Retry-After`; the count resets on the next success.
pub fn error_policy<K: SyncedResource>(obj: &K, error: &Error, ctx: &Context) -> Action {
    let attempt = ctx.next_backoff_attempt::<K>(obj);
    let delay = schedule::backoff(attempt, rand::random::<f64>(), error.retry_after());
    tracing::info!(
        kind = K::KIND,
        namespace = obj.meta().namespace.as_deref().unwrap_or_default(),
        name = obj.meta().name.as_deref().unwrap_or_default(),
        reason = error.reason(),
        error = %error,
        retry_in_seconds = delay.as_secs_f64(),
        "sync failed"
    );
    Action::requeue(delay)
}
