//! The reconcile pipeline, shared by both kinds:
//! resolve (IO) -> fetch (IO) -> render (pure) -> apply (IO) -> status (IO).
//!
//! The kinds differ only in how they resolve and fetch ([`SyncedResource::fetch`]);
//! output building, templating, apply, expiry, rotation and status are this module.

pub mod apply;
mod finalizers;
mod kinds;
pub mod render;
pub mod schedule;
pub mod status;

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use kube::Resource;
use kube::runtime::controller::Action;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{SecretTarget, SyncPolicy, SyncStatus};
use crate::backend::Fetched;
use crate::config::parse_duration;
use crate::controller::Context;
use crate::error::{Error, Result};

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
    /// The Secret to write.
    fn target(&self) -> SecretTarget;
    /// Refresh interval, ttl and workloads to restart.
    fn policy(&self) -> &SyncPolicy;
    fn status(&self) -> Option<&SyncStatus>;
    /// For dynamic sources: renew or re-issue at this share of the lifetime.
    fn renewal_percent(&self) -> u8 {
        67
    }
    /// Whether the source issues material (database credentials, certificates).
    fn is_dynamic(&self) -> bool {
        false
    }
    /// Resolve and fetch: read the source as the tenant. `copy_present` says whether the
    /// managed Secret exists with data (a dynamic source can then keep its lease).
    fn fetch(
        &self,
        ctx: &Context,
        copy_present: bool,
    ) -> impl Future<Output = Result<Fetched>> + Send;
    /// After the new material is written (and workloads restarted): revoke what it replaced.
    fn after_write(&self, _ctx: &Context, _fetched: &Fetched) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// A finalizer this resource needs, for cleanup outside the cluster (a Vault lease).
    fn finalizer(&self) -> Option<&'static str> {
        None
    }
    /// The cleanup behind the finalizer; an error keeps the finalizer and is retried.
    fn cleanup(&self, _ctx: &Context) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
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

/// Reconciles one resource through the whole pipeline.
pub async fn reconcile<K: SyncedResource>(obj: &K, ctx: &Context) -> Result<Action> {
    let started = Instant::now();
    let _in_flight = ctx.metrics.queue_depth.inc();
    let result = run_pipeline(obj, ctx).await;
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
    let has_finalizer = |name: &str| obj.meta().finalizers.iter().flatten().any(|f| f == name);
    if obj.meta().deletion_timestamp.is_some() {
        // The Secret is owned by the resource; Kubernetes' garbage collector removes it.
        // Only what lives outside the cluster needs the operator.
        if let Some(name) = obj.finalizer().filter(|n| has_finalizer(n)) {
            obj.cleanup(ctx).await?;
            finalizers::remove(obj, ctx, name).await?;
        }
        return Ok(Action::await_change());
    }
    let timing = timing(obj, ctx)?;
    if let Some(name) = obj.finalizer().filter(|n| !has_finalizer(n)) {
        // Before anything is issued, so that no lease can outlive its resource.
        finalizers::add(obj, ctx, name).await?;
    }
    let target = obj.target();
    let name = target
        .name
        .clone()
        .unwrap_or_else(|| obj.meta().name.clone().unwrap_or_default());
    // Ownership first: a Secret someone else owns is never read further or touched.
    let existing = apply::existing_secret(obj, ctx, &name).await?;
    let copy_present = existing
        .as_ref()
        .is_some_and(|s| s.data.as_ref().is_some_and(|d| !d.is_empty()));
    let fetched = obj.fetch(ctx, copy_present).await?;
    let desired = match (&existing, fetched.keep_existing) {
        // A kept lease: the Secret already holds the material, which the operator does
        // not keep in memory.
        (Some(secret), true) => render::from_existing(&name, secret, &target),
        _ => render::render(&name, &fetched, &target)?,
    };
    let outcome = apply::apply(obj, ctx, &desired, &fetched, &timing, existing).await?;
    obj.after_write(ctx, &fetched).await;
    status::report_success(obj, ctx, &fetched, &outcome).await?;
    Ok(Action::requeue(outcome.next_refresh))
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

/// Resolve, fetch and render one resource without writing anything: what
/// `vaultsync check` shows. Returns the desired Secret and the source version.
pub async fn check<K: SyncedResource>(
    obj: &K,
    ctx: &Context,
) -> Result<(render::DesiredSecret, String)> {
    timing(obj, ctx)?;
    if obj.is_dynamic() {
        // Checking would issue credentials or a certificate nobody would revoke.
        return Err(Error::InvalidSpec(
            "vaultsync check does not issue dynamic credentials or certificates; it checks kv sources".into(),
        ));
    }
    let target = obj.target();
    let name = target
        .name
        .clone()
        .unwrap_or_else(|| obj.meta().name.clone().unwrap_or_default());
    let fetched = obj.fetch(ctx, false).await?;
    let desired = render::render(&name, &fetched, &target)?;
    Ok((desired, fetched.version))
}
