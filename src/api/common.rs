//! Parts shared by both kinds: the output Secret, references, rollout targets, timing
//! fields and the status.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Secret types that make Kubernetes mint credentials of its own; vaultsync refuses them.
pub const FORBIDDEN_SECRET_TYPES: [&str; 2] = [
    "kubernetes.io/service-account-token",
    "bootstrap.kubernetes.io/token",
];

/// CEL: a duration written as one or more number+unit pairs, such as `30s`, `5m`, `1h30m`.
pub(crate) const DURATION_RULE: &str = "self.matches('^([0-9]+(s|m|h))+$')";
pub(crate) const DURATION_MESSAGE: &str =
    "must be a duration written like 30s, 5m, 1h or 1h30m (units: s, m, h)";

/// CEL: a DNS-1123 subdomain, the rule for Secret and object names.
pub(crate) const DNS_SUBDOMAIN_RULE: &str = "size(self) <= 253 && self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')";
pub(crate) const DNS_SUBDOMAIN_MESSAGE: &str = "must be a valid Kubernetes object name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters";

/// CEL: every key of a map is a valid label or annotation key (an optional DNS-subdomain
/// prefix and `/`, then a name of at most 63 characters).
pub(crate) const METADATA_KEYS_RULE: &str = "self.all(k, size(k) <= 317 && k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$'))";
pub(crate) const METADATA_KEYS_MESSAGE: &str = "keys must be valid Kubernetes label/annotation keys: an optional DNS prefix and '/', then at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit";
/// CEL: every value of a map is a valid label value.
pub(crate) const LABEL_VALUES_RULE: &str =
    "self.all(k, self[k].matches('^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$'))";
pub(crate) const LABEL_VALUES_MESSAGE: &str = "label values must be empty or at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit";
/// CEL: a Secret data key.
pub(crate) const SECRET_KEY_RULE: &str = "size(self) <= 253 && self.matches('^[-._a-zA-Z0-9]+$')";
pub(crate) const SECRET_KEY_MESSAGE: &str =
    "must be a valid Secret key: letters, digits, '-', '_' and '.', at most 253 characters";

/// A map of strings with at most `properties` entries of at most `length` characters each.
fn bounded_map(
    properties: u32,
    length: u32,
) -> impl Fn(&mut schemars::SchemaGenerator) -> schemars::Schema {
    move |_| {
        schemars::json_schema!({
            "type": "object",
            "maxProperties": properties,
            "additionalProperties": {"type": "string", "maxLength": length},
        })
    }
}

fn labels_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    bounded_map(64, 63)(g)
}

fn annotations_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    bounded_map(64, 4096)(g)
}

fn templates_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    bounded_map(64, 8192)(g)
}

/// Where the synced copy is written. The Secret always lives in the namespace of the
/// resource that declares it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretTarget {
    /// Name of the Secret to create in this resource's namespace. Defaults to the
    /// resource's own name. vaultsync never overwrites a Secret it did not create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(DNS_SUBDOMAIN_RULE).message(DNS_SUBDOMAIN_MESSAGE))]
    #[schemars(length(max = 253))]
    pub name: Option<String>,

    /// Kubernetes Secret type, for example `Opaque` (the default), `kubernetes.io/tls`,
    /// `kubernetes.io/basic-auth` or `kubernetes.io/dockerconfigjson`. The types
    /// `kubernetes.io/service-account-token` and `bootstrap.kubernetes.io/token` are
    /// refused because they make Kubernetes mint credentials.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self != 'kubernetes.io/service-account-token' && self != 'bootstrap.kubernetes.io/token'").message("types kubernetes.io/service-account-token and bootstrap.kubernetes.io/token are not allowed: they make Kubernetes mint credentials; use Opaque or another type"))]
    #[x_kube(validation = kube::core::Rule::new("self != ''").message("must not be empty: leave type out for Opaque"))]
    #[schemars(length(max = 253))]
    pub type_: Option<String>,

    /// Extra labels to put on the Secret, at most 64. The label
    /// `app.kubernetes.io/managed-by` is always set to `vaultsync`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "labels_schema")]
    #[x_kube(validation = kube::core::Rule::new(METADATA_KEYS_RULE).message(METADATA_KEYS_MESSAGE))]
    #[x_kube(validation = kube::core::Rule::new(LABEL_VALUES_RULE).message(LABEL_VALUES_MESSAGE))]
    pub labels: Option<BTreeMap<String, String>>,

    /// Extra annotations to put on the Secret, at most 64 of at most 4096 characters.
    /// Annotations under `vaultsync.dev/` are reserved for the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "annotations_schema")]
    #[x_kube(validation = kube::core::Rule::new(METADATA_KEYS_RULE).message(METADATA_KEYS_MESSAGE))]
    #[x_kube(validation = kube::core::Rule::new("!self.exists(k, k.startsWith('vaultsync.dev/'))").message("annotations under vaultsync.dev/ are reserved for the operator"))]
    pub annotations: Option<BTreeMap<String, String>>,

    /// Optional templates, one per output key (at most 64, each at most 8192 characters).
    /// Each value is a sandboxed template over
    /// the fetched keys, for example `postgres://{{ username }}:{{ password }}@db:5432/app`.
    /// When set, only the templated keys are written. Templates cannot read files,
    /// environment variables, the network or cluster objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "templates_schema")]
    #[x_kube(validation = kube::core::Rule::new("self.all(k, size(k) <= 253 && k.matches('^[-._a-zA-Z0-9]+$'))").message("template keys must be valid Secret keys: letters, digits, '-', '_' and '.', at most 253 characters"))]
    pub template: Option<BTreeMap<String, String>>,
}

/// A key in a Secret of this resource's namespace. There is no namespace field on
/// purpose: references never cross namespaces.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the same namespace as this resource.
    #[x_kube(validation = kube::core::Rule::new(DNS_SUBDOMAIN_RULE).message(DNS_SUBDOMAIN_MESSAGE))]
    #[schemars(length(max = 253))]
    pub name: String,
    /// Key within that Secret's data.
    #[x_kube(validation = kube::core::Rule::new(SECRET_KEY_RULE).message(SECRET_KEY_MESSAGE))]
    #[schemars(length(max = 253))]
    pub key: String,
}

/// The kinds of workload that can be restarted when the synced data changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

/// A workload in this resource's namespace whose pods are restarted (by a pod-template
/// annotation bump, like `kubectl rollout restart`) when the synced data changes. A
/// refresh that finds the same data restarts nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRestartTarget {
    /// Kind of the workload: `Deployment`, `StatefulSet` or `DaemonSet`.
    pub kind: WorkloadKind,
    /// Name of the workload, in the same namespace as this resource.
    #[x_kube(validation = kube::core::Rule::new(DNS_SUBDOMAIN_RULE).message(DNS_SUBDOMAIN_MESSAGE))]
    #[schemars(length(max = 253))]
    pub name: String,
}

/// State of a dynamic secret's lease, kept in status so that a restarted or newly
/// elected operator carries on without issuing new credentials.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeaseStatus {
    /// Vault lease identifier (not a credential by itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Lease duration granted at the last issue or renewal, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<i64>,
    /// Whether Vault allows the lease to be renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewable: Option<bool>,
    /// When the lease ends unless it is renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
}

/// A lease issued to replace the current one and recorded before the Secret is written,
/// so that a crash at any step leaves no lease the operator does not know of.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingLease {
    /// The new lease.
    #[serde(flatten)]
    pub lease: LeaseStatus,
    /// Keyed HMAC of the data issued under the new lease: when the Secret holds it, the
    /// re-issue got as far as the write and is completed; otherwise the lease is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_hmac: Option<String>,
}

/// Observed state, written by the operator. It never contains a secret value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// Conditions in the standard Kubernetes shape. `Ready` is True when the Secret holds
    /// current data; when False, `reason` says why (`BackendUnavailable`, `AuthFailed`,
    /// `NotFound`, `InvalidSpec`, `InvalidData`, `Conflict`, ...) and `message` what to do.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` that the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Name of the managed Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// When the status last recorded a successful read that brought news: a new version,
    /// a moved expiry mark, a new or renewed lease, or a new spec generation. Refreshes
    /// that find nothing new do not write status, so this does not move at every refresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    /// When the managed Secret expires and is deleted unless a refresh succeeds first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// When the operator planned, at the time of `lastSyncTime`, to read the source next.
    /// Later refreshes that find nothing new reschedule without writing status, so this
    /// may lie in the past.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_refresh_time: Option<Time>,
    /// Version of the source that the Secret holds (KV version, Key Vault object version,
    /// lease or certificate serial).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_version: Option<String>,
    /// Lease of a dynamic source (database credentials); absent for static sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseStatus>,
    /// A new lease being put in place of `lease`, while the Secret is rewritten. It is
    /// present only for the moment of a re-issue, or after one was interrupted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_lease: Option<PendingLease>,
    /// Keyed HMAC-SHA256 of the Secret's data, to tell whether content changed. The key is
    /// held by the operator, so this reveals nothing about the values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_hmac: Option<String>,
}

/// When to read the source again, how long a copy stays valid, and which workloads to
/// restart: the same for both kinds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("!has(self.ttl) || !has(self.refreshInterval) || duration(self.ttl) > duration(self.refreshInterval)").message("ttl must be longer than refreshInterval, or every copy would expire before its next refresh"))]
#[serde(rename_all = "camelCase")]
pub struct SyncPolicy {
    /// How often to read the source again, such as `1h`. Dynamic and PKI sources rotate
    /// from their lease or certificate lifetime instead. Defaults to the operator's
    /// configured default; never shorter than its configured minimum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub refresh_interval: Option<String>,

    /// How long a copy stays valid without a successful refresh, such as `3h`. Once it
    /// passes, the Secret is deleted, so a copy outlives its source's reachability by at
    /// most this long. Defaults to the operator's configured default ttl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub ttl: Option<String>,

    /// Workloads in this namespace to restart when the synced data changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub rollout_restart_targets: Option<Vec<RolloutRestartTarget>>,
}
