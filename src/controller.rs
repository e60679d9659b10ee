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
use crate::leader::{become_leader, signalled};
use crate::metrics::Metrics;
use crate::rebuild::CacheSize;
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

/// A controller that runs, and its cache of resources.
struct Running<K: SyncedResource> {
    run: future::BoxFuture<'static, ()>,
    cache: Store<DeserializeGuard<K>>,
    size: CacheSize,
}

/// The uids of the resources in `cache`: the owners the expiry collector may act for.
fn owner_uids<K: SyncedResource>(cache: &Store<DeserializeGuard<K>>) -> Owners {
    let known = cache.clone();
    Box::new(move || {
        known
            .state()
            .iter()
            .filter_map(|o| match &o.0 {
                Ok(valid) => valid.meta().uid.clone(),
                Err(invalid) => invalid.metadata.uid.clone(),
            })
            .collect()
    })
}

/// One controller of kind `K` over one scope (a namespace, or all), fed by the scope's
/// watch of the managed Secrets, until `stop`.
fn controller_for<K: SyncedResource>(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    secret_events: SecretEvents,
    only: Option<Arc<HashSet<String>>>,
    stop: &Stop,
) -> Running<K> {
    let objects = match namespace {
        Some(ns) => Api::<DeserializeGuard<K>>::namespaced(ctx.client.clone(), ns),
        None => Api::<DeserializeGuard<K>>::all(ctx.client.clone()),
    };
    // Only spec changes (generation) trigger a reconcile: the operator's own status
    // writes must not, or every sync would schedule the next one at once.
    let (object_reader, object_writer) = reflector::store();
    let size = {
        let counted = object_reader.clone();
        CacheSize::new(move || counted.len())
    };
    let object_events = crate::triggers::spec_changes(
        crate::scope::filter(
            watcher(objects, watcher::Config::default().any_semantic()).default_backoff(),
            only,
        )
        .modify(trim_resource::<K>)
        .reflect(object_writer)
        .inspect({
            let size = size.clone();
            move |event| size.observe(event)
        }),
    );
    let cache = object_reader.clone();
    let concurrency = ctx.config.defaults.concurrency;
    let run = Controller::for_stream(object_events, object_reader)
        .owns_stream(secret_events)
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .graceful_shutdown_on(stop.requested())
        .run(reconcile_guarded::<K>, error_policy_guarded::<K>, ctx)
        .for_each(|result| {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile loop");
            }
            future::ready(())
        })
        .boxed();
    Running { run, cache, size }
}

/// Asks one generation's controllers to stop taking work; they end once the reconciles
/// in flight have finished.
struct Stop(future::Shared<futures::channel::oneshot::Receiver<()>>);

impl Stop {
    fn new() -> (futures::channel::oneshot::Sender<()>, Self) {
        let (tx, rx) = futures::channel::oneshot::channel();
        (tx, Self(rx.shared()))
    }

    fn requested(&self) -> impl std::future::Future<Output = ()> + Send + Sync + 'static {
        self.0.clone().map(|_| ())
    }
}

/// One generation of the controllers: per watched scope, the managed-Secrets watch and a
/// controller per kind; and over their caches, the expiry collector and housekeeping.
struct Generation {
    controllers: future::JoinAll<future::BoxFuture<'static, ()>>,
    /// The watches' drivers, the collector and housekeeping: aborted when it ends.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The sizes of its caches: the resources and their managed Secrets.
    sizes: Vec<CacheSize>,
}

impl Generation {
    fn start(ctx: &Arc<Context>, scopes: &crate::scope::Scopes, stop: &Stop) -> Self {
        ctx.begin_epoch();
        let mut secret_caches = Vec::new();
        let mut owners = Vec::new();
        let mut controllers = Vec::new();
        let mut vault_secrets = Vec::new();
        let mut azure_secrets = Vec::new();
        let mut tasks = Vec::new();
        let mut sizes = Vec::new();
        for scope in &scopes.watches {
            let secrets =
                crate::secret_watch::start(ctx.clone(), scope.as_deref(), scopes.only.clone());
            secret_caches.push((secrets.store.clone(), secrets.size.listed.clone()));
            sizes.push(secrets.size);
            tasks.push(secrets.driver);
            let vault = controller_for::<VaultSecret>(
                ctx.clone(),
                scope.as_deref(),
                secrets.vault,
                scopes.only.clone(),
                stop,
            );
            let azure = controller_for::<AzureKeyVaultSecret>(
                ctx.clone(),
                scope.as_deref(),
                secrets.azure,
                scopes.only.clone(),
                stop,
            );
            owners.extend([owner_uids(&vault.cache), owner_uids(&azure.cache)]);
            sizes.extend([vault.size, azure.size]);
            controllers.extend([vault.run, azure.run]);
            vault_secrets.push(vault.cache);
            azure_secrets.push(azure.cache);
        }
        ctx.metrics.secret_caches.set(secret_caches.clone());
        tasks.push(tokio::spawn(crate::expiry::run_collector(
            ctx.clone(),
            secret_caches,
            owners,
        )));
        let listed = sizes.iter().map(|s| s.listed.clone()).collect();
        tasks.push(tokio::spawn(crate::janitor::run(
            ctx.clone(),
            vault_secrets,
            azure_secrets,
            listed,
        )));
        Self {
            controllers: future::join_all(controllers),
            tasks,
            sizes,
        }
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Why a generation of controllers ended.
enum End {
    /// SIGTERM or SIGINT, or the controllers ended by themselves.
    Shutdown,
    /// Another replica may hold the Lease now.
    LostLease,
    /// Its caches shrank (`crate::rebuild`): a new generation takes over.
    Shrunk { peak: usize, live: usize },
}

/// Resolves when this process stops being the leader (never without leader election).
async fn lost(leading: Option<&mut tokio::sync::watch::Receiver<bool>>) {
    match leading {
        Some(leading) => {
            let _ = leading.wait_for(|is_leader| !is_leader).await;
        }
        None => std::future::pending().await,
    }
}

/// Runs one generation until it ends, and drains it: a shutdown or a rebuild lets the
/// reconciles in flight finish (a second signal, or losing the Lease, cuts that short).
async fn run_generation(
    ctx: &Arc<Context>,
    scopes: &crate::scope::Scopes,
    signals: &mut tokio::sync::watch::Receiver<u32>,
    mut leading: Option<&mut tokio::sync::watch::Receiver<bool>>,
) -> End {
    let (stop_tx, stop) = Stop::new();
    let mut generation = Generation::start(ctx, scopes, &stop);
    let end = tokio::select! {
        _ = &mut generation.controllers => return End::Shutdown,
        _ = signalled(signals, 1) => End::Shutdown,
        _ = lost(leading.as_deref_mut()) => return End::LostLease,
        (peak, live) = crate::rebuild::until_shrunk(&generation.sizes) => {
            End::Shrunk { peak, live }
        }
    };
    let _ = stop_tx.send(());
    tokio::select! {
        _ = &mut generation.controllers => end,
        _ = signalled(signals, 2) => End::Shutdown,
        _ = lost(leading) => End::LostLease,
    }
}

/// Runs the operator until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut signals = crate::leader::signals();
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

    tokio::select! {
        ready = wait_for_crds(&client) => ready?,
        _ = signalled(&mut signals, 1) => return Ok(()),
    }
    // A standby is ready too: it serves health and takes over when the leader goes.
    ready.store(true, Ordering::SeqCst);
    let leadership = if config.leader_election.enabled {
        match become_leader(&client, &config, &mut signals).await? {
            Some(leadership) => Some(leadership),
            None => {
                server.abort();
                return Ok(());
            }
        }
    } else {
        None
    };
    let (mut leading, release) = leadership.unzip();

    let key = hmac_key(&client, &config.operator_namespace).await?;
    let ctx = Arc::new(Context::new(client, config, metrics, key)?);
    let scopes = crate::scope::plan(&ctx.client, &ctx.config.watch_namespaces).await;
    tracing::info!(
        watches = ?scopes.watches,
        namespaces = ?ctx.config.watch_namespaces,
        "vaultsync controllers started"
    );
    let result = loop {
        match run_generation(&ctx, &scopes, &mut signals, leading.as_mut()).await {
            End::Shutdown => break Ok(()),
            // Stop writing at once; the process exits so that its restart rejoins as a
            // standby.
            End::LostLease => break Err(anyhow::anyhow!("lost the leader Lease; exiting")),
            End::Shrunk { peak, live } => {
                ctx.metrics.controller_rebuilds.inc();
                tracing::info!(
                    peak,
                    live,
                    "rebuilding the controllers and their caches: most resources went, and this gives their memory back"
                );
                // A signal during the drain: no new generation to start.
                if *signals.borrow() > 0 {
                    break Ok(());
                }
            }
        }
    };
    // Dropping the channel makes the manager release the Lease for a fast handover.
    drop(leading);
    if let Some(release) = release {
        let _ = tokio::time::timeout(Duration::from_secs(5), release).await;
    }
    tracing::info!("shutting down");
    server.abort();
    if let Some(webhook) = webhook {
        webhook.abort();
    }
    result
}
