//! Wiring: one Controller per kind and watched scope, the scope's watch of the managed
//! Secrets (`crate::secret_watch`: drift repair and the expiry collector's view),
//! leadership, and the HTTP endpoints.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{FutureExt, StreamExt, future};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::Api;
use kube::core::DeserializeGuard;
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
use crate::secret_watch::SecretEvents;
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
        annotations.remove(crate::secret_watch::LAST_APPLIED);
    }
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

/// One controller of kind `K` over one scope (a namespace, or all), fed by the scope's
/// watch of the managed Secrets.
fn controller_for<K: SyncedResource>(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    secret_events: SecretEvents,
    only: Option<Arc<HashSet<String>>>,
    owners: &mut Vec<Owners>,
    resources: &mut Vec<Store<DeserializeGuard<K>>>,
) -> impl std::future::Future<Output = ()> + Send + use<K> {
    let objects = match namespace {
        Some(ns) => Api::<DeserializeGuard<K>>::namespaced(ctx.client.clone(), ns),
        None => Api::<DeserializeGuard<K>>::all(ctx.client.clone()),
    };
    // Only spec changes (generation) trigger a reconcile: the operator's own status
    // writes must not, or every sync would schedule the next one at once.
    let (object_reader, object_writer) = reflector::store();
    let object_events = crate::triggers::spec_changes(
        crate::scope::filter(
            watcher(objects, watcher::Config::default().any_semantic()).default_backoff(),
            only,
        )
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
    let scopes = crate::scope::plan(&ctx.client, &ctx.config.watch_namespaces).await;
    let mut controllers = Vec::new();
    let mut vault_secrets = Vec::new();
    let mut azure_secrets = Vec::new();
    let mut drivers = Vec::new();
    for scope in &scopes.watches {
        let secrets =
            crate::secret_watch::start(ctx.clone(), scope.as_deref(), scopes.only.clone());
        stores.push(secrets.store.clone());
        drivers.push(secrets.driver);
        controllers.push(
            controller_for::<VaultSecret>(
                ctx.clone(),
                scope.as_deref(),
                secrets.vault,
                scopes.only.clone(),
                &mut owners,
                &mut vault_secrets,
            )
            .boxed(),
        );
        controllers.push(
            controller_for::<AzureKeyVaultSecret>(
                ctx.clone(),
                scope.as_deref(),
                secrets.azure,
                scopes.only.clone(),
                &mut owners,
                &mut azure_secrets,
            )
            .boxed(),
        );
    }
    let _ = ctx.metrics.secret_caches.set(stores.clone());
    let collector = tokio::spawn(crate::expiry::run_collector(ctx.clone(), stores, owners));
    let janitor = tokio::spawn(crate::janitor::run(
        ctx.clone(),
        vault_secrets,
        azure_secrets,
    ));
    tracing::info!(
        watches = ?scopes.watches,
        namespaces = ?ctx.config.watch_namespaces,
        "vaultsync controllers started"
    );

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
    for driver in drivers {
        driver.abort();
    }
    server.abort();
    if let Some(webhook) = webhook {
        webhook.abort();
    }
    result
}
