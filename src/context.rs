//! The state shared by every reconcile: the apiserver client, the config, the backends,
//! metrics, Events, the HMAC key of `status.dataHmac` and the per-object error backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::backend::azure::AzureBackend;
use crate::backend::vault::VaultBackend;
use crate::config::Config;
use crate::events::{EventSink, EventType};
use crate::metrics::Metrics;
use crate::sync::SyncedResource;
use crate::sync::lanes::Lanes;

/// Name of the Secret, in the operator's namespace, holding the key of `status.dataHmac`.
pub const HMAC_KEY_SECRET: &str = "vaultsync-hmac-key";

/// State shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub config: Config,
    pub vault: VaultBackend,
    pub azure: AzureBackend,
    pub metrics: Arc<Metrics>,
    pub events: EventSink,
    pub hmac_key: Vec<u8>,
    /// Consecutive failures per object, for the error backoff.
    failures: Mutex<HashMap<(&'static str, String, String), u32>>,
    /// The resourceVersion of each managed Secret as the operator last wrote it: a watch
    /// event with that version is the operator's own write and triggers nothing. Any
    /// other writer makes a new version, whatever field manager it claims.
    own_writes: Mutex<HashMap<(String, String), String>>,
    /// When the running generation of controllers started (the process, or its last
    /// rebuild, `crate::rebuild`), by the monotonic and the wall clock: a start does not
    /// re-read every settled copy at once, and copies settled before it are told apart.
    epoch: Mutex<(std::time::Instant, jiff::Timestamp)>,
    /// Routine refreshes give way to first syncs, spec changes and repairs.
    pub lanes: Lanes,
}

impl Context {
    pub fn new(
        client: Client,
        config: Config,
        metrics: Arc<Metrics>,
        hmac_key: Vec<u8>,
    ) -> anyhow::Result<Self> {
        let vault = VaultBackend::new(client.clone(), &config, metrics.clone())?;
        let azure = AzureBackend::new(client.clone(), &config, metrics.clone())?;
        let events = EventSink::new(client.clone());
        let lanes = Lanes::new(usize::from(config.defaults.concurrency));
        Ok(Self {
            client,
            config,
            vault,
            azure,
            metrics,
            events,
            hmac_key,
            failures: Mutex::default(),
            own_writes: Mutex::default(),
            epoch: Mutex::new((std::time::Instant::now(), jiff::Timestamp::now())),
            lanes,
        })
    }

    /// When the running generation of controllers started.
    pub fn epoch(&self) -> (std::time::Instant, jiff::Timestamp) {
        *self.epoch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the start of a generation of controllers.
    pub fn begin_epoch(&self) {
        *self.epoch.lock().unwrap_or_else(|e| e.into_inner()) =
            (std::time::Instant::now(), jiff::Timestamp::now());
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

    /// Whether a reconcile of `obj` failed since its last success.
    pub fn failed_since_success<K: SyncedResource>(&self, obj: &K) -> bool {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.contains_key(&Self::key(obj))
    }

    pub fn reset_backoff<K: SyncedResource>(&self, obj: &K) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.remove(&Self::key(obj));
    }

    /// Forgets the failure counts of resources of kind `K` not among `live` (namespace,
    /// name): resources that are gone.
    pub fn retain_backoff<K: SyncedResource>(
        &self,
        live: &std::collections::HashSet<(String, String)>,
    ) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.retain(|(kind, ns, name), _| {
            *kind != K::KIND || live.contains(&(ns.clone(), name.clone()))
        });
        crate::janitor::shrink(&mut failures);
    }

    /// Remembers the version of a Secret the operator just wrote.
    pub fn record_write(&self, namespace: &str, name: &str, resource_version: Option<String>) {
        let mut writes = self.own_writes.lock().unwrap_or_else(|p| p.into_inner());
        match resource_version {
            Some(v) => writes.insert((namespace.to_string(), name.to_string()), v),
            None => writes.remove(&(namespace.to_string(), name.to_string())),
        };
    }

    /// Whether a watched Secret version is the operator's own last write: `Some(true)` or
    /// `Some(false)` when the operator has written this Secret, `None` when it has no
    /// record of it (after a restart, or a watch event that outran the write's answer).
    /// A Secret that is gone is forgotten, so the map holds one entry per managed Secret.
    pub fn is_own_write(
        &self,
        namespace: &str,
        name: &str,
        resource_version: Option<&str>,
        deleted: bool,
    ) -> Option<bool> {
        let mut writes = self.own_writes.lock().unwrap_or_else(|p| p.into_inner());
        let key = (namespace.to_string(), name.to_string());
        if deleted {
            writes.remove(&key);
            crate::janitor::shrink(&mut writes);
            return Some(false);
        }
        writes
            .get(&key)
            .map(|own| resource_version == Some(own.as_str()))
    }

    /// Whether the managed-Secrets caches are synced and hold no Secret `namespace/name`:
    /// then a first sync can create the Secret without reading it first (the create
    /// fails if one exists after all). `false` whenever the caches cannot say.
    pub fn no_managed_secret(&self, namespace: &str, name: &str) -> bool {
        let stores = self.metrics.secret_caches.get();
        let key = ObjectRef::new(name).within(namespace);
        !stores.is_empty()
            && stores
                .iter()
                .all(|(store, listed)| listed.is_listed() && store.get(&key).is_none())
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
