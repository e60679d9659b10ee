//! Prometheus metrics (prometheus-client). Labels carry kinds, reasons, backends and
//! object names, never values.

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
    expiry: Family<SecretLabels, Gauge<f64, AtomicU64>>,
    /// The series of `expiry` that exist, so those of Secrets that are gone can be
    /// dropped (the family cannot be listed).
    expiry_series: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
    pub queue_depth: Gauge,
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
        let expiry = Family::<SecretLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "secret_expiry_timestamp_seconds",
            "Unix time at which a managed Secret expires unless refreshed",
            expiry.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Reconciles running or waiting for a concurrency slot",
            queue_depth.clone(),
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
            expiry,
            expiry_series: Default::default(),
            queue_depth,
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

    pub fn set_expiry(&self, namespace: &str, secret: &str, unix_seconds: f64) {
        self.expiry_series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((namespace.into(), secret.into()));
        self.expiry
            .get_or_create(&SecretLabels {
                namespace: namespace.into(),
                secret: secret.into(),
            })
            .set(unix_seconds);
    }

    pub fn clear_expiry(&self, namespace: &str, secret: &str) {
        self.expiry_series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(namespace.into(), secret.into()));
        self.expiry.remove(&SecretLabels {
            namespace: namespace.into(),
            secret: secret.into(),
        });
    }

    /// Drops the expiry series of every Secret not in `live` (namespace, name).
    pub fn retain_expiry(&self, live: &std::collections::HashSet<(String, String)>) {
        let gone: Vec<(String, String)> = {
            let mut series = self.expiry_series.lock().unwrap_or_else(|p| p.into_inner());
            let gone = series
                .iter()
                .filter(|k| !live.contains(*k))
                .cloned()
                .collect();
            series.retain(|k| live.contains(k));
            crate::janitor::shrink_set(&mut series);
            gone
        };
        for (namespace, secret) in gone {
            self.expiry.remove(&SecretLabels { namespace, secret });
        }
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
