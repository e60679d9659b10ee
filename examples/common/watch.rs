//! What the benches see of their own resources, whatever else the operator reconciles:
//! watches of the resources and of the Secrets vaultsync manages for them (readiness,
//! sync times, writes).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use vaultsync::api::{AzureKeyVaultSecret, SyncStatus, VaultSecret};

use super::setup::wait_for;

/// A resource kind whose status the operator keeps.
pub trait Synced:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static
{
    fn sync_status(&self) -> Option<&SyncStatus>;
}

impl Synced for VaultSecret {
    fn sync_status(&self) -> Option<&SyncStatus> {
        self.status.as_ref()
    }
}

impl Synced for AzureKeyVaultSecret {
    fn sync_status(&self) -> Option<&SyncStatus> {
        self.status.as_ref()
    }
}

/// One resource, as its watch saw it.
#[derive(Default)]
pub struct Seen {
    /// When the watch first saw Ready=True.
    pub first_ready: Option<Instant>,
    /// status.lastSyncTime when first seen Ready.
    pub first_sync: Option<Timestamp>,
    /// The latest status.nextRefreshTime: when the operator planned to read the source
    /// next. Status is written only when a sync brings news, so this says when the next
    /// refresh is due, not that it happened.
    pub next_refresh: Option<Timestamp>,
    pub reason: String,
    resource_version: String,
}

/// Counters of writes to bench objects, as seen by watches: every change of
/// resourceVersion after the first sight is one effective write.
#[derive(Clone, Copy, Default, Debug)]
pub struct Writes {
    pub cr: u64,
    pub secret_created: u64,
    pub secret_data: u64,
    pub secret_metadata: u64,
    pub secret_deleted: u64,
}

impl Writes {
    pub fn minus(self, before: Self) -> Self {
        Self {
            cr: self.cr - before.cr,
            secret_created: self.secret_created - before.secret_created,
            secret_data: self.secret_data - before.secret_data,
            secret_metadata: self.secret_metadata - before.secret_metadata,
            secret_deleted: self.secret_deleted - before.secret_deleted,
        }
    }
}

#[derive(Default)]
pub struct State {
    /// By "namespace/name".
    pub objects: HashMap<String, Seen>,
    /// Per bench Secret: resourceVersion and a digest of type and data.
    secrets: HashMap<String, (String, u64)>,
    /// Writes in the namespaces that count (see [`Watch::start`]).
    pub writes: Writes,
}

/// The watches of one bench; [`Watch::stop`] ends them.
pub struct Watch {
    state: Arc<Mutex<State>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Watch {
    /// Watches the resources of kind `K` labelled `<label>=true` and the Secrets vaultsync
    /// manages, recording readiness, sync times and writes; writes count (and Secrets are
    /// followed) only in the namespaces that `counted` accepts.
    pub fn start<K: Synced>(client: &Client, label: &str, counted: fn(&str) -> bool) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let crs = Api::<K>::all(client.clone());
        let config = watcher::Config::default().labels(&format!("{label}=true"));
        let st = state.clone();
        let cr_task = tokio::spawn(async move {
            let mut events =
                std::pin::pin!(watcher(crs, config).default_backoff().applied_objects());
            while let Some(event) = events.next().await {
                let Ok(obj) = event else { continue };
                seen_resource(&mut lock(&st), &obj, Instant::now(), counted);
            }
        });
        let secrets = Api::<Secret>::all(client.clone());
        let config = watcher::Config::default().labels("app.kubernetes.io/managed-by=vaultsync");
        let st = state.clone();
        let secret_task = tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(secrets, config).default_backoff());
            while let Some(event) = events.next().await {
                let (secret, deleted) = match event {
                    Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => (s, false),
                    Ok(watcher::Event::Delete(s)) => (s, true),
                    _ => continue,
                };
                if counted(&secret.namespace().unwrap_or_default()) {
                    seen_secret(&mut lock(&st), &secret, deleted);
                }
            }
        });
        Self {
            state,
            tasks: vec![cr_task, secret_task],
        }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }

    /// Waits up to 30 s until the watch has seen `count` resources.
    pub async fn wait_seen(&self, count: usize) -> anyhow::Result<()> {
        wait_for(Duration::from_secs(30), "the watch to see every CR", || {
            let n = self.state().objects.len();
            async move { (n >= count).then_some(()) }
        })
        .await
    }

    /// How many of the resources whose "namespace/name" `keep` accepts are Ready.
    pub fn ready(&self, keep: impl Fn(&str) -> bool) -> usize {
        self.state()
            .objects
            .iter()
            .filter(|(k, s)| keep(k) && s.first_ready.is_some())
            .count()
    }

    /// Of the resources `keep` accepts: the latencies (s) from `t0` to Ready, sorted, and
    /// the reasons of those not Ready.
    pub fn latencies(
        &self,
        keep: impl Fn(&str) -> bool,
        t0: Instant,
    ) -> (Vec<f64>, BTreeMap<String, usize>) {
        let state = self.state();
        let kept = || {
            state
                .objects
                .iter()
                .filter(|(k, _)| keep(k))
                .map(|(_, s)| s)
        };
        let mut lat: Vec<f64> = kept()
            .filter_map(|s| {
                s.first_ready
                    .map(|r| r.saturating_duration_since(t0).as_secs_f64())
            })
            .collect();
        lat.sort_by(f64::total_cmp);
        let mut reasons = BTreeMap::new();
        for s in kept().filter(|s| s.first_ready.is_none()) {
            let reason = if s.reason.is_empty() {
                "no status yet".to_string()
            } else {
                s.reason.clone()
            };
            *reasons.entry(reason).or_default() += 1;
        }
        (lat, reasons)
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn seen_resource<K: Synced>(state: &mut State, obj: &K, now: Instant, counted: fn(&str) -> bool) {
    let ns = obj.namespace().unwrap_or_default();
    let key = format!("{ns}/{}", obj.name_any());
    let rv = obj.resource_version().unwrap_or_default();
    let status = obj.sync_status();
    let condition = status.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    let last_sync = status.and_then(|s| s.last_sync_time.as_ref()).map(|t| t.0);
    let next_refresh = status
        .and_then(|s| s.next_refresh_time.as_ref())
        .map(|t| t.0);
    let ready = condition.is_some_and(|c| c.status == "True");
    let entry = state.objects.entry(key).or_default();
    let changed = !entry.resource_version.is_empty() && entry.resource_version != rv;
    entry.resource_version = rv;
    entry.reason = condition.map(|c| c.reason.clone()).unwrap_or_default();
    entry.next_refresh = next_refresh.or(entry.next_refresh);
    if ready && entry.first_ready.is_none() {
        entry.first_ready = Some(now);
        entry.first_sync = last_sync;
    }
    if changed && counted(&ns) {
        state.writes.cr += 1;
    }
}

fn seen_secret(state: &mut State, secret: &Secret, deleted: bool) {
    let key = format!(
        "{}/{}",
        secret.namespace().unwrap_or_default(),
        secret.name_any()
    );
    if deleted {
        state.secrets.remove(&key);
        state.writes.secret_deleted += 1;
        return;
    }
    let rv = secret.resource_version().unwrap_or_default();
    let d = digest(secret);
    match state.secrets.insert(key, (rv.clone(), d)) {
        None => state.writes.secret_created += 1,
        Some((old_rv, _)) if old_rv == rv => {}
        Some((_, old)) if old != d => state.writes.secret_data += 1,
        Some(_) => state.writes.secret_metadata += 1,
    }
}

fn digest(secret: &Secret) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    secret.type_.hash(&mut h);
    if let Some(data) = &secret.data {
        for (k, v) in data {
            k.hash(&mut h);
            v.0.hash(&mut h);
        }
    }
    h.finish()
}
