//! Wiring: the shared [`Context`], one Controller per kind and watched scope, the
//! label-selected metadata watch of managed Secrets (drift repair and the expiry
//! collector's view), and the HTTP endpoints.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::api::VaultSecret;
use crate::backend::vault::VaultBackend;
use crate::config::Config;
use crate::error::Error;
use crate::events::{EventSink, EventType};
use crate::metrics::Metrics;
use crate::sync::apply::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, MANAGER};
use crate::sync::{self, SyncedResource};

/// Name of the Secret, in the operator's namespace, holding the key of `status.dataHmac`.
pub const HMAC_KEY_SECRET: &str = "vaultsync-hmac-key";

/// State shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub config: Config,
    pub vault: VaultBackend,
    pub metrics: Arc<Metrics>,
    pub events: EventSink,
    pub hmac_key: Vec<u8>,
    /// Consecutive failures per object, for the error backoff.
    failures: Mutex<HashMap<(&'static str, String, String), u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        config: Config,
        metrics: Arc<Metrics>,
        hmac_key: Vec<u8>,
    ) -> anyhow::Result<Self> {
        let vault = VaultBackend::new(&config, metrics.clone())?;
        let events = EventSink::new(client.clone());
        Ok(Self {
            client,
            config,
            vault,
            metrics,
            events,
            hmac_key,
            failures: Mutex::default(),
        })
    }

    fn key<K: SyncedResource>(obj: &K) -> (&'static str, String, String) {
        (K::KIND, obj.namespace().unwrap_or_default(), obj.name_any())
    }

    /// The attempt number of this failure (0 for the first since the last success).
    pub fn next_backoff_attempt<K: SyncedResource>(&self, obj: &K) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let count = failures.entry(Self::key(obj)).or_insert(0);
        let attempt = *count;
        *count = count.saturating_add(1);
        attempt
    }

    pub fn reset_backoff<K: SyncedResource>(&self, obj: &K) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.remove(&Self::key(obj));
    }

    /// Publishes an Event on `obj`. Notes never contain values; a failure to publish is
    /// logged and otherwise ignored.
    pub async fn publish<K: SyncedResource>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        self.events
            .publish(&obj.object_ref(&()), type_, reason, &note)
            .await;
    }
}

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

/// The HMAC key for `status.dataHmac`, kept in a Secret of the operator's namespace and
/// created on first start.
pub async fn hmac_key(client: &Client, namespace: &str) -> anyhow::Result<Vec<u8>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    if let Some(secret) = api.get_opt(HMAC_KEY_SECRET).await? {
        if let Some(key) = secret.data.and_then(|mut d| d.remove("key")) {
            return Ok(key.0);
        }
        anyhow::bail!(
            "Secret {namespace}/{HMAC_KEY_SECRET} has no key \"key\": delete it and vaultsync will create a new one"
        );
    }
    let key: [u8; 32] = rand::random();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": HMAC_KEY_SECRET, "labels": {"app.kubernetes.io/name": "vaultsync"}},
        "data": {"key": k8s_openapi::ByteString(key.to_vec())},
    }))?;
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(key.to_vec()),
        // Another replica created it first: use theirs.
        Err(kube::Error::Api(s)) if s.code == 409 => Box::pin(hmac_key(client, namespace)).await,
        Err(e) => Err(anyhow::anyhow!(
            "cannot create Secret {namespace}/{HMAC_KEY_SECRET} (does namespace {namespace} exist? set operatorNamespace in the config): {e}"
        )),
    }
}

/// Whether the latest change to a Secret was the operator's own (its field manager wrote
/// last), judged from the managed fields the metadata watch carries.
fn written_by_operator(secret: &PartialObjectMeta<Secret>) -> bool {
    secret
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|f| f.time.is_some())
        .max_by_key(|f| f.time.as_ref().map(|t| t.0))
        .is_some_and(|latest| latest.manager.as_deref() == Some(MANAGER))
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
    // Edits and deletions by others trigger a repair at once; the operator's own writes do
    // not trigger another sync of what it just wrote.
    let secret_events = watcher(secrets, managed_secrets_config())
        .default_backoff()
        .reflect(writer)
        .filter_map(|event| {
            future::ready(match event {
                Ok(watcher::Event::Apply(secret)) if written_by_operator(&secret) => None,
                Ok(watcher::Event::Apply(secret) | watcher::Event::Delete(secret)) => {
                    Some(Ok(secret))
                }
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
        });
    // Only spec changes (generation) trigger a reconcile: the operator's own status
    // writes must not, or every sync would schedule the next one at once.
    let (object_reader, object_writer) = reflector::store();
    let object_events = watcher(objects, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(object_writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
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

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Leader election: waits until this process holds the Lease. Returns the channel that
/// reports losing it, and the task that releases the Lease when the channel is dropped.
/// Returns `None` when a shutdown signal comes first.
async fn become_leader(
    client: &Client,
    config: &Config,
) -> anyhow::Result<
    Option<(
        tokio::sync::watch::Receiver<bool>,
        tokio::task::JoinHandle<()>,
    )>,
> {
    let election = &config.leader_election;
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "vaultsync".into());
        format!("{host}-{:08x}", rand::random::<u32>())
    });
    let duration = election.lease_duration.as_secs().max(2);
    let manager =
        kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &election.lease_name)
            .with_namespace(&config.operator_namespace)
            .with_identity(&identity)
            .with_duration(duration)
            .with_grace((duration / 3).max(1))
            .build()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "leader election: cannot use Lease {}/{}: {e}",
                    config.operator_namespace,
                    election.lease_name
                )
            })?;
    let (mut leading, task) = manager.watch().await;
    let release = tokio::spawn(async move {
        if let Ok(Err(e)) = task.await {
            tracing::warn!(error = %e, "leader election stopped with an error");
        }
    });
    tracing::info!(%identity, lease = %election.lease_name, "waiting to become the leader");
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    while !*leading.borrow_and_update() {
        tokio::select! {
            changed = leading.changed() => {
                if changed.is_err() {
                    anyhow::bail!("leader election stopped before this process became the leader");
                }
            }
            _ = &mut shutdown => return Ok(None),
        }
    }
    tracing::info!(%identity, "became the leader");
    Ok(Some((leading, release)))
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
    for scope in &scopes {
        controllers.push(controller_for::<VaultSecret>(
            ctx.clone(),
            scope.as_deref(),
            &mut stores,
        ));
    }
    let collector = tokio::spawn(crate::expiry::run_collector(ctx.clone(), stores));
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
    server.abort();
    result
}
