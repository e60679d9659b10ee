//! Prometheus metrics (prometheus-client). Labels carry kinds, reasons, backends and
//! object names, never values.

use std::sync::{Arc, RwLock};
use std::time::Instant;

use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::ownership::{expires_at, vaultsync_controller};
use crate::rebuild::Listed;

/// The caches of the managed-Secrets watches (one per scope) of the running generation of
/// controllers, replaced when the controllers are rebuilt (`crate::rebuild`).
#[derive(Clone, Debug, Default)]
pub struct SecretCaches(Arc<RwLock<Vec<SecretCache>>>);

/// One managed-Secrets cache, and whether it has its first complete listing.
pub type SecretCache = (Store<PartialObjectMeta<Secret>>, Listed);

impl SecretCaches {
    /// The caches now, and whether each is listed (cheap handles; empty before the
    /// controllers start).
    pub fn get(&self) -> Vec<SecretCache> {
        self.0.read().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn set(&self, stores: Vec<SecretCache>) {
        if let Ok(mut current) = self.0.write() {
            *current = stores;
        }
    }
}

/// `secret_expiry_timestamp_seconds`, read from the managed-Secrets caches at each scrape:
/// one series per Secret a vaultsync resource controls, with its `expires-at` mark. It
/// keeps no state of its own, so a Secret's series goes with the Secret.
#[derive(Debug)]
struct ExpiryCollector(SecretCaches);

impl Collector for ExpiryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "secret_expiry_timestamp_seconds",
            "Unix time at which a managed Secret expires unless refreshed",
            None,
            MetricType::Gauge,
        )?;
        for (store, _) in self.0.get() {
            for secret in store.state() {
                let meta = &secret.metadata;
                let (Some(mark), Some(_)) = (expires_at(meta), vaultsync_controller(meta)) else {
                    continue;
                };
                let labels = SecretLabels {
                    namespace: meta.namespace.clone().unwrap_or_default(),
                    secret: meta.name.clone().unwrap_or_default(),
                };
                ConstGauge::new(mark.as_millisecond() as f64 / 1000.0)
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    pub kind: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub backend: String,
    pub operation: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoginLabels {
    pub connection: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SecretLabels {
    pub namespace: String,
    pub secret: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub part: String,
}

/// All metrics of the operator, registered under the `vaultsync_` prefix.
pub struct Metrics {
    pub registry: Registry,
    syncs: Family<SyncLabels, Counter>,
    sync_duration: Family<KindLabels, Histogram>,
    backend_requests: Family<BackendLabels, Counter>,
    vault_logins: Family<LoginLabels, Counter>,
    secret_writes: Family<WriteLabels, Counter>,
    pub managed_secrets: Gauge,
    /// Bytes the allocator has handed out, and bytes it holds from the system (jemalloc's
    /// `stats.allocated` and `stats.resident`), refreshed at each scrape.
    heap_allocated: Gauge,
    heap_resident: Gauge,
    /// The managed-Secrets caches, which the expiry gauge is read from.
    pub secret_caches: SecretCaches,
    pub queue_depth: Gauge,
    /// Times the controllers were rebuilt to give back the memory of resources that went.
    pub controller_rebuilds: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("vaultsync");
        let syncs = Family::<SyncLabels, Counter>::default();
        registry.register(
            "syncs",
            "Reconciles by kind and result (Synced or a Ready=False reason)",
            syncs.clone(),
        );
        let sync_duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        registry.register(
            "sync_duration_seconds",
            "Time to reconcile one resource",
            sync_duration.clone(),
        );
        let backend_requests = Family::<BackendLabels, Counter>::default();
        registry.register(
            "backend_requests",
            "Requests to secret backends by backend, operation and outcome",
            backend_requests.clone(),
        );
        let vault_logins = Family::<LoginLabels, Counter>::default();
        registry.register(
            "vault_logins",
            "Vault logins by connection and outcome",
            vault_logins.clone(),
        );
        let secret_writes = Family::<WriteLabels, Counter>::default();
        registry.register(
            "secret_writes",
            "Writes of managed Secrets: part=data when content changed, part=metadata when only the expiry mark moved",
            secret_writes.clone(),
        );
        let managed_secrets = Gauge::default();
        registry.register(
            "managed_secrets",
            "Secrets currently managed by vaultsync",
            managed_secrets.clone(),
        );
        let heap_allocated = Gauge::default();
        registry.register(
            "heap_allocated_bytes",
            "Bytes of memory in use by the operator (jemalloc stats.allocated)",
            heap_allocated.clone(),
        );
        let heap_resident = Gauge::default();
        registry.register(
            "heap_resident_bytes",
            "Bytes of memory the allocator holds from the system (jemalloc stats.resident)",
            heap_resident.clone(),
        );
        let secret_caches = SecretCaches::default();
        registry.register_collector(Box::new(ExpiryCollector(secret_caches.clone())));
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Reconciles running or waiting for a concurrency slot",
            queue_depth.clone(),
        );
        let controller_rebuilds = Counter::default();
        registry.register(
            "controller_rebuilds",
            "Times the controllers and their watch caches were rebuilt after most resources went, to give their memory back",
            controller_rebuilds.clone(),
        );
        Self {
            registry,
            syncs,
            sync_duration,
            backend_requests,
            vault_logins,
            secret_writes,
            managed_secrets,
            heap_allocated,
            heap_resident,
            secret_caches,
            queue_depth,
            controller_rebuilds,
        }
    }
}

impl Metrics {
    pub fn sync(&self, kind: &str, result: &str, started: Instant) {
        self.syncs
            .get_or_create(&SyncLabels {
                kind: kind.into(),
                result: result.into(),
            })
            .inc();
        self.sync_duration
            .get_or_create(&KindLabels { kind: kind.into() })
            .observe(started.elapsed().as_secs_f64());
    }

    pub fn backend_request(&self, backend: &str, operation: &str, outcome: &str) {
        self.backend_requests
            .get_or_create(&BackendLabels {
                backend: backend.into(),
                operation: operation.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn vault_login(&self, connection: &str, outcome: &str) {
        self.vault_logins
            .get_or_create(&LoginLabels {
                connection: connection.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn secret_write(&self, part: &str) {
        self.secret_writes
            .get_or_create(&WriteLabels { part: part.into() })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        // jemalloc caches its statistics: advancing the epoch refreshes them.
        if tikv_jemalloc_ctl::epoch::advance().is_ok() {
            if let Ok(bytes) = tikv_jemalloc_ctl::stats::allocated::read() {
                self.heap_allocated.set(bytes as i64);
            }
            if let Ok(bytes) = tikv_jemalloc_ctl::stats::resident::read() {
                self.heap_resident.set(bytes as i64);
            }
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ownership::EXPIRES_AT;
    use kube::runtime::watcher;

    fn secret(name: &str, owner_api_version: Option<&str>) -> PartialObjectMeta<Secret> {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": "team-a",
                "annotations": {EXPIRES_AT: "2026-12-03T12:00:00Z"},
                "ownerReferences": owner_api_version.map(|v| vec![serde_json::json!({
                    "apiVersion": v, "kind": "VaultSecret", "name": name,
                    "uid": "u", "controller": true,
                })]),
            },
        }))
        .expect("secret")
    }

    #[test]
    fn expiry_series_are_read_from_the_cache_and_go_with_the_secret() {
        let metrics = Metrics::default();
        let (store, mut writer) = kube::runtime::reflector::store();
        let ours = secret("app", Some("vaultsync.dev/v1alpha1"));
        let foreign = secret("other", Some("v1"));
        writer.apply_watcher_event(&watcher::Event::Apply(ours.clone()));
        writer.apply_watcher_event(&watcher::Event::Apply(foreign));
        metrics.secret_caches.set(vec![(store, Listed::default())]);
        let text = metrics.encode();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("vaultsync_secret_expiry_timestamp_seconds{"))
            .collect();
        assert_eq!(
            series,
            [
                r#"vaultsync_secret_expiry_timestamp_seconds{namespace="team-a",secret="app"} 1796299200.0"#
            ]
        );
        writer.apply_watcher_event(&watcher::Event::Delete(ours));
        assert!(
            !metrics
                .encode()
                .contains("vaultsync_secret_expiry_timestamp_seconds{")
        );
    }
}
