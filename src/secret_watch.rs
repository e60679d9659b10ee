//! The managed Secrets, watched once per scope for both kinds: a label-selected,
//! metadata-only watch whose cache serves the expiry collector, and whose changes by
//! anyone but the operator go to the controller of the owner's kind as a repair.
//!
//! One watch (and one cache) per scope, not one per kind: both kinds' Secrets carry the
//! same label, so a watch per kind cached every managed Secret twice.

use std::collections::HashSet;
use std::sync::Arc;

use futures::stream::BoxStream;
use futures::{StreamExt, channel::mpsc};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::Resource;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};

use crate::api::{AzureKeyVaultSecret, VaultSecret};
use crate::context::Context;
use crate::ownership::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, MANAGER};
use crate::sync::SyncedResource;

/// The last-applied annotation `kubectl apply` keeps: a copy of the whole manifest.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Changes to managed Secrets that someone else made, for one kind's controller.
pub type SecretEvents = BoxStream<'static, Result<PartialObjectMeta<Secret>, watcher::Error>>;

pub struct SecretWatch {
    /// Every managed Secret of the scope, trimmed (see [`trim_secret`]).
    pub store: Store<PartialObjectMeta<Secret>>,
    pub vault: SecretEvents,
    pub azure: SecretEvents,
    /// The cache's size and whether it has its first complete listing: a generation is
    /// rebuilt only once its Secrets are gone too (`crate::rebuild`).
    pub size: crate::rebuild::CacheSize,
    /// Drives the watch; aborted at shutdown.
    pub driver: tokio::task::JoinHandle<()>,
}

/// The managed-fields entry of the latest writer.
fn latest_writer(fields: &[ManagedFieldsEntry]) -> Option<&ManagedFieldsEntry> {
    fields
        .iter()
        .filter(|f| f.time.is_some())
        .max_by_key(|f| f.time.as_ref().map(|t| t.0))
}

/// Whether the operator's field manager wrote a Secret last, from its managed fields.
fn last_written_by_operator(secret: &PartialObjectMeta<Secret>) -> bool {
    latest_writer(
        secret
            .metadata
            .managed_fields
            .as_deref()
            .unwrap_or_default(),
    )
    .is_some_and(|latest| latest.manager.as_deref() == Some(MANAGER))
}

/// Trims a cached Secret's metadata to what is read here: of the managed fields, only
/// the latest writer's name and time.
fn trim_secret(secret: &mut PartialObjectMeta<Secret>) {
    let meta = &mut secret.metadata;
    let latest = latest_writer(meta.managed_fields.as_deref().unwrap_or_default()).map(|f| {
        ManagedFieldsEntry {
            manager: f.manager.clone(),
            time: f.time.clone(),
            ..ManagedFieldsEntry::default()
        }
    });
    meta.managed_fields = latest.map(|f| vec![f]);
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// Starts the watch of the managed Secrets in `namespace` (or all), keeping only those
/// in `only` (if set; see `crate::scope`).
pub fn start(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    only: Option<Arc<HashSet<String>>>,
) -> SecretWatch {
    let api = match namespace {
        Some(ns) => Api::<PartialObjectMeta<Secret>>::namespaced(ctx.client.clone(), ns),
        None => Api::<PartialObjectMeta<Secret>>::all(ctx.client.clone()),
    };
    let config =
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
    let (store, writer) = reflector::store();
    let size = {
        let counted = store.clone();
        crate::rebuild::CacheSize::new(move || counted.len())
    };
    let events = crate::scope::filter(watcher(api, config).default_backoff(), only)
        .modify(trim_secret)
        .reflect(writer)
        .inspect({
            let size = size.clone();
            move |event| size.observe(event)
        });
    let (vault_tx, vault_rx) = mpsc::unbounded();
    let (azure_tx, azure_rx) = mpsc::unbounded();
    let driver = tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            let (secret, deleted) = match event {
                Ok(watcher::Event::Apply(secret)) => (secret, false),
                Ok(watcher::Event::Delete(secret)) => (secret, true),
                Ok(_) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "managed Secrets watch");
                    continue;
                }
            };
            let namespace = secret.metadata.namespace.clone().unwrap_or_default();
            // The operator's own writes (recognised by the resourceVersion it got back, not
            // by a field-manager name anyone can claim) trigger nothing. Without a record,
            // the managed fields say who wrote last; a reconcile compares the data with
            // status.dataHmac in any case.
            let own = ctx
                .is_own_write(
                    &namespace,
                    secret.metadata.name.as_deref().unwrap_or_default(),
                    secret.metadata.resource_version.as_deref(),
                    deleted,
                )
                .unwrap_or_else(|| last_written_by_operator(&secret));
            if own && !deleted {
                continue;
            }
            let Some(owner) = crate::ownership::vaultsync_controller(&secret.metadata) else {
                continue;
            };
            // Someone else's edit or deletion: the owner's next reconcile is a repair,
            // ahead of routine refreshes.
            let (kind, tx) = if owner.kind == VaultSecret::kind(&()) {
                (VaultSecret::KIND, &vault_tx)
            } else if owner.kind == AzureKeyVaultSecret::kind(&()) {
                (AzureKeyVaultSecret::KIND, &azure_tx)
            } else {
                continue;
            };
            ctx.lanes.mark_urgent(kind, &namespace, &owner.name);
            let _ = tx.unbounded_send(secret);
        }
    });
    SecretWatch {
        store,
        size,
        vault: vault_rx.map(Ok).boxed(),
        azure: azure_rx.map(Ok).boxed(),
        driver,
    }
}
