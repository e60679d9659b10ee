//! `AzureKeyVaultSecret`: a Secret synced from Azure Key Vault. Its spec accepts the
//! akv2k8s (`spv.no`) shape unchanged, so migrating is a change of `apiVersion`.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    DNS_SUBDOMAIN_MESSAGE, DNS_SUBDOMAIN_RULE, SecretKeyRef, SecretTarget, SyncPolicy, SyncStatus,
};

const NON_EMPTY: &str = "self != ''";

/// Syncs one Azure Key Vault object (secret, certificate, key or multi-key-value secret)
/// into a short-lived Secret in this namespace.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "vaultsync.dev",
    version = "v1alpha1",
    kind = "AzureKeyVaultSecret",
    namespaced,
    shortname = "akvs",
    category = "vaultsync",
    status = "SyncStatus",
    doc = "AzureKeyVaultSecret syncs an Azure Key Vault object into a short-lived, owner-referenced Secret in its namespace. Its spec accepts the akv2k8s spv.no shape."
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
#[x_kube(validation = kube::core::Rule::new("!has(self.output) || !has(self.output.configMap) || !has(self.output.secret)").message("set one of output.secret and output.configMap"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.output) || !has(self.output.configMap) || self.vault.object.type in ['certificate', 'key']").message("output.configMap may hold only public material (a certificate without its key, or a public key): anyone who can read ConfigMaps can read it; sync a secret into output.secret"))]
#[serde(rename_all = "camelCase")]
pub struct AzureKeyVaultSecretSpec {
    /// The Key Vault, how to authenticate, and the object to read.
    pub vault: AzureVault,

    /// The Secret to write, and transforms applied to single values first. Without
    /// `output` nothing is written: the resource serves pod injection only
    /// (`NAME@azurekeyvault` in an opted-in pod of this namespace), as akv2k8s'
    /// env-injector resources do, and reports `Ready=True`, reason `InjectionOnly`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<AzureOutput>,

    /// Refresh interval, ttl and workloads to restart.
    #[serde(flatten)]
    pub policy: SyncPolicy,
}

/// The Key Vault and the object in it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureVault {
    /// Name of the Key Vault, such as `contoso-production-keyvault`. The URL is built from
    /// the connection's URL template, set by the cluster administrator; it never comes
    /// from this resource.
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-zA-Z0-9-]+$')").message("name must be a Key Vault name (letters, digits and '-'), not a URL: the URL comes from the operator's connection"))]
    #[schemars(length(min = 1, max = 127))]
    pub name: String,

    /// Name of an Azure connection defined in the operator's configuration. Defaults to
    /// `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(NON_EMPTY).message("connection must not be empty: leave it out to use the default connection"))]
    #[schemars(length(max = 63))]
    pub connection: Option<String>,

    /// How to authenticate to Key Vault: as a service account of this namespace (workload
    /// identity), a service principal, or, where the connection allows it, the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AzureAuth>,

    /// Accepted for akv2k8s compatibility (aad-pod-identity binding) and ignored: use
    /// `auth.workloadIdentity` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure_identity: Option<AzureIdentityRef>,

    /// The Key Vault object to sync.
    pub object: AzureObject,
}

/// akv2k8s' aad-pod-identity reference, kept only so old manifests are accepted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AzureIdentityRef {
    /// Name of the AzureIdentity binding (ignored by vaultsync).
    pub name: String,
}

/// Azure credential. Set exactly one method.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("(has(self.workloadIdentity) ? 1 : 0) + (has(self.clientSecret) ? 1 : 0) + (has(self.managedIdentity) ? 1 : 0) == 1").message("set exactly one auth method: workloadIdentity, clientSecret or managedIdentity"))]
#[serde(rename_all = "camelCase")]
pub struct AzureAuth {
    /// Federated workload identity of a service account in this namespace: the operator
    /// requests a token for it (audience `api://AzureADTokenExchange`) and exchanges it at
    /// the connection's authority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity: Option<WorkloadIdentityAuth>,
    /// A service principal whose client secret is stored in a Secret in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<ClientSecretAuth>,
    /// The operator's own managed identity. Only allowed where the administrator's
    /// connection permits it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_identity: Option<ManagedIdentityAuth>,
}

/// Workload identity federation for a service account of this namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadIdentityAuth {
    /// Service account in this namespace whose token is exchanged.
    #[x_kube(validation = kube::core::Rule::new(DNS_SUBDOMAIN_RULE).message(DNS_SUBDOMAIN_MESSAGE))]
    #[schemars(length(max = 253))]
    pub service_account_name: String,
    /// Application (client) ID of the Entra ID app or managed identity that trusts the
    /// service account.
    #[x_kube(validation = kube::core::Rule::new(NON_EMPTY).message("clientId must not be empty"))]
    #[schemars(length(max = 128))]
    pub client_id: String,
    /// Directory (tenant) ID. Defaults to the connection's tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(NON_EMPTY).message("tenantId must not be empty: leave it out for the connection's tenant"))]
    #[schemars(length(max = 128))]
    pub tenant_id: Option<String>,
}

/// Service principal with a client secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientSecretAuth {
    /// Directory (tenant) ID. Defaults to the connection's tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(NON_EMPTY).message("tenantId must not be empty: leave it out for the connection's tenant"))]
    #[schemars(length(max = 128))]
    pub tenant_id: Option<String>,
    /// Application (client) ID of the service principal.
    #[x_kube(validation = kube::core::Rule::new(NON_EMPTY).message("clientId must not be empty"))]
    #[schemars(length(max = 128))]
    pub client_id: String,
    /// The Secret key in this namespace holding the client secret.
    pub secret_ref: SecretKeyRef,
}

/// The operator's managed identity.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedIdentityAuth {
    /// Client ID of a user-assigned identity; the system-assigned one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// Kinds of Key Vault object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AzureObjectType {
    /// A secret; its value goes under `output.secret.dataKey`.
    Secret,
    /// A certificate with its private key, written as `tls.crt` and `tls.key`.
    Certificate,
    /// A key; its public part is written in PEM.
    Key,
    /// A secret holding a JSON or YAML object, expanded to one Secret key per entry.
    MultiKeyValueSecret,
}

/// Content types of a multi-key-value secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AzureContentType {
    #[serde(rename = "application/x-json")]
    Json,
    #[serde(rename = "application/x-yaml")]
    Yaml,
}

/// The Key Vault object to read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("self.type != 'multi-key-value-secret' || has(self.contentType)").message("contentType (application/x-json or application/x-yaml) is required when type is multi-key-value-secret"))]
#[serde(rename_all = "camelCase")]
pub struct AzureObject {
    /// Name of the object in the Key Vault.
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-zA-Z0-9-]+$')").message("name must be a Key Vault object name: letters, digits and '-'"))]
    #[schemars(length(min = 1, max = 127))]
    pub name: String,
    /// Kind of object: `secret`, `certificate`, `key` or `multi-key-value-secret`.
    #[serde(rename = "type")]
    pub type_: AzureObjectType,
    /// Pin this object version (32 hexadecimal characters, the last part of the
    /// object's id) instead of following the latest. Empty means latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self == '' || self.matches('^[0-9a-fA-F]{32}$')").message("version must be a Key Vault object version: 32 hexadecimal characters (or empty for the latest)"))]
    #[schemars(length(max = 32))]
    pub version: Option<String>,
    /// For `multi-key-value-secret`: how the value is encoded, `application/x-json` or
    /// `application/x-yaml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<AzureContentType>,
}

/// Transforms applied, in order, to a single value before it is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Transform {
    /// Remove leading and trailing whitespace.
    Trim,
    /// Encode the value as base64.
    Base64encode,
    /// Decode a base64 value.
    Base64decode,
}

/// Order of certificates in `tls.crt`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChainOrder {
    /// Put the server (leaf) certificate first, followed by its issuers in order.
    Ensureserverfirst,
}

/// What to write.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureOutput {
    /// The Secret to create in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<AzureSecretTarget>,
    /// Transforms applied in order to single-value objects: `trim`, `base64encode`,
    /// `base64decode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8))]
    pub transform: Option<Vec<Transform>>,
    /// akv2k8s' ConfigMap output, for public material only: a certificate's chain (PEM,
    /// never its key) or a key's public key (PEM), under `dataKey`. Refused at admission
    /// for secrets and multi-key-value secrets, since anyone who can read ConfigMaps could
    /// read them, and together with `secret`. The ConfigMap is owner-referenced and
    /// labelled like a managed Secret, rewritten when the object changes, and does not
    /// expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapTarget>,
}

/// akv2k8s' ConfigMap output: the ConfigMap to write in this namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapTarget {
    /// Name of the ConfigMap. A ConfigMap of that name that this resource does not own is
    /// never overwritten (`Conflict`).
    #[x_kube(validation = kube::core::Rule::new("size(self) <= 253 && self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')").message("name must be a DNS-1123 subdomain (lowercase letters, digits, '-' and '.')"))]
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the ConfigMap that holds the PEM.
    #[x_kube(validation = kube::core::Rule::new("size(self) <= 253 && self.matches('^[-._a-zA-Z0-9]+$')").message("dataKey must be a valid ConfigMap key: letters, digits, '-', '_' and '.'"))]
    #[schemars(length(min = 1, max = 253))]
    pub data_key: String,
}

/// The Secret written for an Azure Key Vault object: the fields of akv2k8s, plus the
/// labels, annotations and templates of VaultSecret.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureSecretTarget {
    /// Name, type, labels, annotations and templates, as for VaultSecret.
    #[serde(flatten)]
    pub secret: SecretTarget,
    /// Key under which a single value (a secret, key or PEM bundle) is written. Required
    /// for `secret` and `key` objects written as Opaque; ignored for multi-key-value
    /// secrets and for `kubernetes.io/tls` output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("size(self) <= 253 && self.matches('^[-._a-zA-Z0-9]+$')").message("dataKey must be a valid Secret key: letters, digits, '-', '_' and '.'"))]
    #[schemars(length(max = 253))]
    pub data_key: Option<String>,
    /// `ensureserverfirst` puts the server (leaf) certificate first in `tls.crt`, followed
    /// by its issuers, whatever order the stored chain is in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_order: Option<ChainOrder>,
}
