//! `VaultSecret`: a Secret synced from HashiCorp Vault or OpenBao.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{
    DNS_SUBDOMAIN_MESSAGE, DNS_SUBDOMAIN_RULE, DURATION_MESSAGE, DURATION_RULE, SecretKeyRef,
    SecretTarget, SyncPolicy, SyncStatus,
};

const NON_EMPTY: &str = "self != ''";
/// CEL: a Vault mount or role: `/`-separated segments of letters, digits, '.', '_' and
/// '-', none of them '.' or '..'.
const VAULT_NAME_RULE: &str =
    "self.matches('^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$') && !self.matches('(^|/)[.]{1,2}(/|$)')";
const VAULT_NAME_MESSAGE: &str = "must be a Vault mount or role name: segments of letters, digits, '.', '_' and '-' separated by '/', none empty, '.' or '..'";
/// CEL: a path within a KV mount, without the characters that would change the request.
const VAULT_PATH_RULE: &str =
    "self.matches('^[^/?#%]+(/[^/?#%]+)*$') && !self.matches('(^|/)[.]{1,2}(/|$)')";
const VAULT_PATH_MESSAGE: &str = "must be a path within the mount, such as accounts/aws: no empty, '.' or '..' segments, no leading or trailing '/', and no '?', '#' or '%'";

/// Syncs one Vault or OpenBao source (a KV secret, dynamic database credentials or a PKI
/// certificate) into a short-lived Secret in this namespace. The copy is refreshed on
/// schedule, restored if edited or deleted, and deleted when it expires.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "vaultsync.dev",
    version = "v1alpha1",
    kind = "VaultSecret",
    namespaced,
    shortname = "vs",
    category = "vaultsync",
    status = "SyncStatus",
    doc = "VaultSecret syncs a secret from HashiCorp Vault or OpenBao into a short-lived, owner-referenced Secret in its namespace."
)]
#[kube(
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#
)]
#[kube(
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[kube(printcolumn = r#"{"name":"Secret","type":"string","jsonPath":".status.secretName"}"#)]
#[kube(printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.expiresAt"}"#)]
#[kube(printcolumn = r#"{"name":"Last Sync","type":"date","jsonPath":".status.lastSyncTime"}"#)]
#[kube(printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#)]
#[serde(rename_all = "camelCase")]
pub struct VaultSecretSpec {
    /// Where to read from: the connection, how to log in, and exactly one source
    /// (`kv`, `database` or `pki`).
    pub vault: VaultSource,

    /// The Secret to write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<VaultOutput>,

    /// Refresh interval, ttl and workloads to restart.
    #[serde(flatten)]
    pub policy: SyncPolicy,

    /// For `database` and `pki` sources: renew or re-issue when this percentage of the
    /// lease or certificate lifetime has passed. Between 1 and 90; default 67.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self >= 1 && self <= 90").message("renewalPercent must be between 1 and 90"))]
    pub renewal_percent: Option<i32>,
}

/// The Vault connection, authentication and source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("(has(self.kv) ? 1 : 0) + (has(self.database) ? 1 : 0) + (has(self.pki) ? 1 : 0) == 1").message("set exactly one source: spec.vault.kv, spec.vault.database or spec.vault.pki"))]
#[serde(rename_all = "camelCase")]
pub struct VaultSource {
    /// Name of a Vault connection defined by the cluster administrator in the operator's
    /// configuration. The address and CA come from there, never from this resource.
    /// Defaults to `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(NON_EMPTY).message("connection must not be empty: leave it out to use the default connection"))]
    #[schemars(length(max = 63))]
    pub connection: Option<String>,

    /// How to log in to Vault. When absent, the connection's default auth applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<VaultAuth>,

    /// Read a static secret from a KV (version 1 or 2) mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv: Option<KvSource>,

    /// Issue dynamic database credentials with a lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseSource>,

    /// Issue a certificate from a PKI mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pki: Option<PkiSource>,
}

/// Vault login. Set exactly one method.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("(has(self.kubernetes) ? 1 : 0) + (has(self.appRole) ? 1 : 0) + (has(self.token) ? 1 : 0) == 1").message("set exactly one auth method: kubernetes, appRole or token"))]
#[serde(rename_all = "camelCase")]
pub struct VaultAuth {
    /// Log in with Vault's Kubernetes auth as a service account of this namespace. The
    /// operator requests a short-lived token for that service account, so Vault policy
    /// decides what this tenant may read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesAuth>,

    /// Log in with AppRole; the secret-id comes from a Secret in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_role: Option<AppRoleAuth>,

    /// Use a Vault token stored in a Secret in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenAuth>,
}

/// Vault Kubernetes auth as a service account of this namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesAuth {
    /// Vault role to log in with, as configured on the Kubernetes auth mount.
    #[x_kube(validation = kube::core::Rule::new(VAULT_NAME_RULE).message(VAULT_NAME_MESSAGE))]
    #[schemars(length(max = 253))]
    pub role: String,
    /// Service account in this namespace whose identity is used. Defaults to `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(DNS_SUBDOMAIN_RULE).message(DNS_SUBDOMAIN_MESSAGE))]
    #[schemars(length(max = 253))]
    pub service_account_name: Option<String>,
    /// Path of the Kubernetes auth mount. Defaults to the connection's setting, usually
    /// `kubernetes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(VAULT_NAME_RULE).message(VAULT_NAME_MESSAGE))]
    #[schemars(length(max = 253))]
    pub mount: Option<String>,
}

/// Vault AppRole login.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppRoleAuth {
    /// The AppRole role-id (not secret by itself).
    #[x_kube(validation = kube::core::Rule::new(VAULT_NAME_RULE).message(VAULT_NAME_MESSAGE))]
    #[schemars(length(max = 253))]
    pub role_id: String,
    /// The Secret key in this namespace holding the secret-id.
    pub secret_id_ref: SecretKeyRef,
    /// Path of the AppRole auth mount. Defaults to `approle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(VAULT_NAME_RULE).message(VAULT_NAME_MESSAGE))]
    #[schemars(length(max = 253))]
    pub mount: Option<String>,
}

/// A Vault token read from a Secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenAuth {
    /// The Secret key in this namespace holding the token.
    pub secret_ref: SecretKeyRef,
}

/// A static secret in a KV mount. The KV version (1 or 2) is detected per mount, or set
/// by the administrator on the connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct KvSource {
    /// Path of the KV mount, such as `secret`.
    #[x_kube(validation = kube::core::Rule::new(VAULT_NAME_RULE).message(VAULT_NAME_MESSAGE))]
    #[schemars(length(max = 253))]
    pub mount: String,
    /// Path of the secret within the mount, such as `accounts/aws`.
    #[x_kube(validation = kube::core::Rule::new(VAULT_PATH_RULE).message(VAULT_PATH_MESSAGE))]
    #[schemars(length(max = 1024))]
    pub path: String,
    /// KV v2 only: pin this version instead of following the latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self >= 1").message("version must be 1 or higher; leave it out to follow the latest version"))]
    pub version: Option<i64>,
    /// Copy only these keys of the secret. All keys when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self.all(k, k != '')").message("keys must not contain empty names"))]
    #[schemars(length(max = 1024))]
    pub keys: Option<Vec<String>>,
}

/// Dynamic database credentials from Vault's database secrets engine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSource {
    /// Path of the database secrets engine mount, such as `database`.
    #[x_kube(validation = kube::core::Rule::new(VAULT_NAME_RULE).message(VAULT_NAME_MESSAGE))]
    #[schemars(length(max = 253))]
    pub mount: String,
    /// Role to issue credentials for (`{mount}/creds/{role}`).
    #[x_kube(validation = kube::core::Rule::new(VAULT_NAME_RULE).message(VAULT_NAME_MESSAGE))]
    #[schemars(length(max = 253))]
    pub role: String,
}

/// A certificate issued by Vault's PKI secrets engine, written as a
/// `kubernetes.io/tls` Secret (`tls.crt` with the chain, `tls.key`, `ca.crt`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PkiSource {
    /// Path of the PKI mount, such as `pki`.
    #[x_kube(validation = kube::core::Rule::new(VAULT_NAME_RULE).message(VAULT_NAME_MESSAGE))]
    #[schemars(length(max = 253))]
    pub mount: String,
    /// PKI role to issue with (`{mount}/issue/{role}`).
    #[x_kube(validation = kube::core::Rule::new(VAULT_NAME_RULE).message(VAULT_NAME_MESSAGE))]
    #[schemars(length(max = 253))]
    pub role: String,
    /// Common name of the certificate.
    #[x_kube(validation = kube::core::Rule::new(NON_EMPTY).message("commonName must not be empty"))]
    #[schemars(length(max = 253))]
    pub common_name: String,
    /// DNS subject alternative names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub alt_names: Option<Vec<String>>,
    /// IP subject alternative names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub ip_sans: Option<Vec<String>>,
    /// Requested certificate lifetime, such as `24h`. The role's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub ttl: Option<String>,
    /// Revoke the previous certificate after a rotation has been written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_on_rotate: Option<bool>,
}

/// What to write.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct VaultOutput {
    /// The Secret to create in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretTarget>,
}
