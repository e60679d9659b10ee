//! Wiring: one Controller per kind and watched scope, the label-selected metadata watch
//! of managed Secrets (drift repair and the expiry collector's view), leadership, and the
//! HTTP endpoints.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{FutureExt, StreamExt, future};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::Client;
use kube::api::Api;
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};

use crate::api::{AzureKeyVaultSecret, VaultSecret};
use crate::config::Config;
use crate::context::{Context, hmac_key};
use crate::error::Error;
use crate::expiry::Owners;
use crate::leader::become_leader;
use crate::metrics::Metrics;
use crate::ownership::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, MANAGER};
use crate::sync::{self, SyncedResource};

/// Waits until the CRDs of both kinds are established, so that the watches do not fail.
pub async fn wait_for_crds(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let names = [
        "vaultsecrets.vaultsync.dev",
        "azurekeyvaultsecrets.vaultsync.dev",
    ];
    let mut warned = false;
    loop {
        let mut missing = Vec::new();
        for name in names {
            let established = api.get_opt(name).await?.is_some_and(|crd| {
                crd.status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            if !established {
                missing.push(name);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if !warned {
            tracing::warn!(
                ?missing,
                "waiting for the CRDs to be established: install them with `vaultsync crds | kubectl apply -f -`"
            );
            warned = true;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Whether the operator's field manager wrote a Secret last, from its managed fields.
fn last_written_by_operator(secret: &PartialObjectMeta<Secret>) -> bool {
    secret
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|f| f.time.is_some())
        .max_by_key(|f| f.time.as_ref().map(|t| t.0))
        .is_some_and(|latest| latest.manager.as_deref() == Some(MANAGER))
}

/// The last-applied annotation `kubectl apply` keeps: a copy of the whole manifest.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Trims a cached resource to what the operator reads: the managed fields (a tree per
/// writer) and kubectl's last-applied copy of the manifest are most of an object's
/// size in memory and nothing here uses them.
fn trim_resource<K: SyncedResource>(obj: &mut DeserializeGuard<K>) {
    let meta = match &mut obj.0 {
        Ok(valid) => valid.meta_mut(),
        Err(invalid) => &mut invalid.metadata,
    };
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// Trims a cached Secret's metadata to what the drift filter reads: of the managed
/// fields, only the latest writer's name and time.
fn trim_secret(secret: &mut PartialObjectMeta<Secret>) {
    let meta = &mut secret.metadata;
    let latest = meta
        .managed_fields
        .take()
        .into_iter()
        .flatten()
        .filter(|f| f.time.is_some())
        .max_by_key(|f| f.time.as_ref().map(|t| t.0))
        .map(|f| ManagedFieldsEntry {
            manager: f.manager,
            time: f.time,
            ..ManagedFieldsEntry::default()
        });
    meta.managed_fields = latest.map(|f| vec![f]);
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

fn managed_secrets_config() -> watcher::Config {
    watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"))
}

/// Reconciles a guarded object: one that failed to deserialize is logged and skipped, so
/// it cannot stall the others.
async fn reconcile_guarded<K: SyncedResource>(
    obj: Arc<DeserializeGuard<K>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    match &obj.0 {
        Ok(valid) => sync::reconcile(valid, &ctx).await,
        Err(invalid) => {
            tracing::warn!(
                kind = K::KIND,
                namespace = invalid.metadata.namespace.as_deref().unwrap_or_default(),
                name = invalid.metadata.name.as_deref().unwrap_or_default(),
                error = %invalid.error,
                "skipping a resource that does not match the schema"
            );
            Ok(Action::await_change())
        }
    }
}

fn error_policy_guarded<K: SyncedResource>(
    obj: Arc<DeserializeGuard<K>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    match &obj.0 {
        Ok(valid) => sync::error_policy(valid, error, &ctx),
        Err(_) => Action::await_change(),
    }
}

/// One controller of kind `K` over one scope (a namespace, or all), with its own
/// metadata-only watch of the managed Secrets in that scope.
fn controller_for<K: SyncedResource>(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    stores: &mut Vec<Store<PartialObjectMeta<Secret>>>,
    owners: &mut Vec<Owners>,
    resources: &mut Vec<Store<DeserializeGuard<K>>>,
) -> impl std::future::Future<Output = ()> + Send + use<K> {
    let client = ctx.client.clone();
    let (objects, secrets) = match namespace {
        Some(ns) => (
            Api::<DeserializeGuard<K>>::namespaced(client.clone(), ns),
            Api::<PartialObjectMeta<Secret>>::namespaced(client, ns),
        ),
        None => (
            Api::<DeserializeGuard<K>>::all(client.clone()),
            Api::<PartialObjectMeta<Secret>>::all(client),
        ),
    };
    let (reader, writer) = reflector::store();
    stores.push(reader);
    // Edits and deletions by others trigger a repair at once; the operator's own writes
    // (recognised by the resourceVersion it got back, not by a field-manager name anyone
    // can claim) do not trigger another sync of what it just wrote.
    let own = ctx.clone();
    let secret_events = watcher(secrets, managed_secrets_config())
        .default_backoff()
        .modify(trim_secret)
        .reflect(writer)
        .filter_map(move |event| {
            let is_own = |secret: &PartialObjectMeta<Secret>, deleted: bool| {
                own.is_own_write(
                    secret.metadata.namespace.as_deref().unwrap_or_default(),
                    secret.metadata.name.as_deref().unwrap_or_default(),
                    secret.metadata.resource_version.as_deref(),
                    deleted,
                )
                // Without a record, the managed fields say who wrote last; a reconcile
                // compares the data with status.dataHmac in any case.
                .unwrap_or_else(|| last_written_by_operator(secret))
            };
            // Someone else's change: the owner's next reconcile is a repair, ahead of
            // routine refreshes.
            let repair = |secret: &PartialObjectMeta<Secret>| {
                let owner = secret
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .find(|o| o.controller == Some(true) && o.kind == K::kind(&()));
                if let Some(owner) = owner {
                    own.lanes.mark_urgent(
                        K::KIND,
                        secret.metadata.namespace.as_deref().unwrap_or_default(),
                        &owner.name,
                    );
                }
            };
            future::ready(match event {
                Ok(watcher::Event::Apply(secret)) if is_own(&secret, false) => None,
                Ok(watcher::Event::Apply(secret)) => {
                    repair(&secret);
                    Some(Ok(secret))
                }
                Ok(watcher::Event::Delete(secret)) => {
                    is_own(&secret, true);
                    repair(&secret);
                    Some(Ok(secret))
                }
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
        });
    // Only spec changes (generation) trigger a reconcile: the operator's own status
    // writes must not, or every sync would schedule the next one at once.
    let (object_reader, object_writer) = reflector::store();
    let object_events = crate::triggers::spec_changes(
        watcher(objects, watcher::Config::default().any_semantic())
            .default_backoff()
            .modify(trim_resource::<K>)
            .reflect(object_writer),
    );
    resources.push(object_reader.clone());
    let known = object_reader.clone();
    owners.push(Box::new(move || {
        known
            .state()
            .iter()
            .filter_map(|o| match &o.0 {
                Ok(valid) => valid.meta().uid.clone(),
                Err(invalid) => invalid.metadata.uid.clone(),
            })
            .collect()
    }));
    let concurrency = ctx.config.defaults.concurrency;
    Controller::for_stream(object_events, object_reader)
        .owns_stream(secret_events)
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .shutdown_on_signal()
        .run(reconcile_guarded::<K>, error_policy_guarded::<K>, ctx)
        .for_each(|result| {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile loop");
            }
            future::ready(())
        })
}

/// Runs the operator until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let server = tokio::spawn(crate::http::serve(
        config.metrics_address,
        metrics.clone(),
        ready.clone(),
    ));

    let webhook = match (&config.admission.cert_file, &config.admission.key_file) {
        (Some(cert), Some(key)) if config.admission.enabled => {
            let address = config
                .admission
                .address
                .ok_or_else(|| anyhow::anyhow!("admission.address is not set"))?;
            let (cert, key) = (cert.clone(), key.clone());
            let (client, config) = (client.clone(), config.clone());
            Some(tokio::spawn(async move {
                if let Err(e) = crate::admission::serve(address, &cert, &key, client, config).await
                {
                    tracing::error!(error = %e, "the admission webhook stopped");
                }
            }))
        }
        _ => None,
    };

    wait_for_crds(&client).await?;
    // A standby is ready too: it serves health and takes over when the leader goes.
    ready.store(true, Ordering::SeqCst);
    let leadership = if config.leader_election.enabled {
        match become_leader(&client, &config).await? {
            Some(leadership) => Some(leadership),
            None => {
                server.abort();
                return Ok(());
            }
        }
    } else {
        None
    };

    let key = hmac_key(&client, &config.operator_namespace).await?;
    let ctx = Arc::new(Context::new(client, config, metrics, key)?);

    let mut stores = Vec::new();
    let mut owners = Vec::new();
    let scopes: Vec<Option<String>> = if ctx.config.watch_namespaces.is_empty() {
        vec![None]
    } else {
        ctx.config
            .watch_namespaces
            .iter()
            .cloned()
            .map(Some)
            .collect()
    };
    let mut controllers = Vec::new();
    let mut vault_secrets = Vec::new();
    let mut azure_secrets = Vec::new();
    for scope in &scopes {
        controllers.push(
            controller_for::<VaultSecret>(
                ctx.clone(),
                scope.as_deref(),
                &mut stores,
                &mut owners,
                &mut vault_secrets,
            )
            .boxed(),
        );
        controllers.push(
            controller_for::<AzureKeyVaultSecret>(
                ctx.clone(),
                scope.as_deref(),
                &mut stores,
                &mut owners,
                &mut azure_secrets,
            )
            .boxed(),
        );
    }
    let collector = tokio::spawn(crate::expiry::run_collector(ctx.clone(), stores, owners));
    let janitor = tokio::spawn(crate::janitor::run(
        ctx.clone(),
        vault_secrets,
        azure_secrets,
    ));
    tracing::info!(scopes = ?scopes, "vaultsync controllers started");

    let controllers = future::join_all(controllers);
    let result = match leadership {
        None => {
            controllers.await;
            Ok(())
        }
        Some((mut leading, release)) => {
            let outcome = tokio::select! {
                _ = controllers => Ok(()),
                _ = leading.wait_for(|is_leader| !is_leader) => {
                    // Another replica may hold the Lease now: stop writing at once. The
                    // process exits so that its restart rejoins as a standby.
                    Err(anyhow::anyhow!("lost the leader Lease; exiting"))
                }
            };
            // Dropping the channel makes the manager release the Lease for a fast handover.
            drop(leading);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), release).await;
            outcome
        }
    };
    tracing::info!("shutting down");
    collector.abort();
    janitor.abort();
    server.abort();
    if let Some(webhook) = webhook {
        webhook.abort();
    }
    result
}
