//! The reconcile pipeline, shared by both kinds:
//! resolve (IO) -> fetch (IO) -> render (pure) -> apply (IO) -> status (IO).
//!
//! The kinds differ only in how they resolve and fetch ([`SyncedResource::fetch`]);
//! output building, templating, apply, expiry, rotation and status are this module.

pub mod apply;
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

use crate::api::{SecretTarget, SyncPolicy, SyncStatus, VaultSecret};
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
    /// Resolve and fetch: read the source as the tenant.
    fn fetch(&self, ctx: &Context) -> impl Future<Output = Result<Fetched>> + Send;
}

impl SyncedResource for VaultSecret {
    const KIND: &'static str = "VaultSecret";

    fn target(&self) -> SecretTarget {
        self.spec
            .output
            .as_ref()
            .and_then(|o| o.secret.clone())
            .unwrap_or_default()
    }
    fn policy(&self) -> &SyncPolicy {
        &self.spec.policy
    }
    fn status(&self) -> Option<&SyncStatus> {
        self.status.as_ref()
    }
    async fn fetch(&self, ctx: &Context) -> Result<Fetched> {
        let namespace = self.metadata.namespace.as_deref().unwrap_or_default();
        let source = &self.spec.vault;
        let resolved = ctx.vault.resolve(namespace, source)?;
        let client = ctx.vault.login(&ctx.client, &resolved).await?;
        let result = if let Some(kv) = &source.kv {
            ctx.vault.fetch_kv(&client, &resolved, kv).await
        } else {
            Err(Error::InvalidSpec(
                "database and pki sources are not supported yet by this version of vaultsync"
                    .into(),
            ))
        };
        if let Err(Error::AuthFailed(_)) = &result {
            // The cached token may have been revoked: log in afresh next time.
            ctx.vault.forget(&resolved);
        }
        result
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
    if obj.meta().deletion_timestamp.is_some() {
        // The Secret is owned by the resource; Kubernetes' garbage collector removes it.
        return Ok(Action::await_change());
    }
    let timing = timing(obj, ctx)?;
    let target = obj.target();
    let name = target
        .name
        .clone()
        .unwrap_or_else(|| obj.meta().name.clone().unwrap_or_default());
    // Ownership first: a Secret someone else owns is never read further or touched.
    let existing = apply::existing_secret(obj, ctx, &name).await?;
    let fetched = obj.fetch(ctx).await?;
    let desired = render::render(&name, &fetched, &target)?;
    let outcome = apply::apply(obj, ctx, &desired, &fetched, &timing, existing).await?;
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
    let target = obj.target();
    let name = target
        .name
        .clone()
        .unwrap_or_else(|| obj.meta().name.clone().unwrap_or_default());
    let fetched = obj.fetch(ctx).await?;
    let desired = render::render(&name, &fetched, &target)?;
    Ok((desired, fetched.version))
}
