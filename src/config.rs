//! The operator configuration: an admin-owned YAML file (`--config` or
//! `VAULTSYNC_CONFIG`). It is the only place endpoints come from; custom resources name
//! a connection, never an address.
//!
//! Past 400 lines only because of its tests: the types and validation are ~300.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why the configuration cannot be used. Every message names the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the operator config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("operator config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("operator config: {field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Address for `/metrics`, `/healthz` and `/readyz`.
    #[serde(default = "default_metrics_address")]
    pub metrics_address: SocketAddr,
    #[serde(default)]
    pub log_format: LogFormat,
    /// Namespaces to watch; empty means all.
    #[serde(default)]
    pub watch_namespaces: Vec<String>,
    /// Namespace the operator runs in; holds the HMAC key Secret and the leader Lease.
    #[serde(default = "default_operator_namespace")]
    pub operator_namespace: String,
    #[serde(default)]
    pub defaults: Defaults,
    /// Leader election among replicas; off for a single process.
    #[serde(default)]
    pub leader_election: LeaderElection,
    /// How often the operator forgets the cached state (Vault tokens, which it revokes,
    /// failure counts, metric series) of resources that are gone.
    #[serde(default = "default_housekeeping_interval", with = "duration")]
    pub housekeeping_interval: Duration,
    /// The admission webhook that refuses resources referencing what their writer may not
    /// use (see the README's security section).
    #[serde(default)]
    pub admission: Admission,
    /// Pod injection: the mutating webhook that wraps opted-in containers in
    /// `vaultsync env` (README, "Injection").
    #[serde(default)]
    pub injection: crate::inject::Injection,
    #[serde(default)]
    pub vault: BTreeMap<String, VaultConnection>,
    #[serde(default)]
    pub azure: BTreeMap<String, AzureConnection>,
}

/// The validating admission webhook, served over TLS by every replica. Off by default for
/// a process run by hand; the Helm chart and the kustomize base turn it on and register
/// it. Turn it off only where every namespace user may read every Secret of their
/// namespace anyway.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Admission {
    #[serde(default)]
    pub enabled: bool,
    /// Where to serve `POST /validate`.
    #[serde(default = "default_admission_address")]
    pub address: Option<SocketAddr>,
    /// PEM certificate (with chain) and key the webhook serves with.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

fn default_housekeeping_interval() -> Duration {
    Duration::from_secs(30)
}

fn default_admission_address() -> Option<SocketAddr> {
    "0.0.0.0:9443".parse().ok()
}

/// Leader election through a `coordination.k8s.io` Lease in the operator's namespace:
/// only the holder reconciles and writes.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaderElection {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_lease_name")]
    pub lease_name: String,
    /// How long a leader's claim lasts without renewal; a standby takes over after it.
    #[serde(default = "default_lease_duration", with = "duration")]
    pub lease_duration: Duration,
}

impl Default for LeaderElection {
    fn default() -> Self {
        Self {
            enabled: false,
            lease_name: default_lease_name(),
            lease_duration: default_lease_duration(),
        }
    }
}

fn default_lease_name() -> String {
    "vaultsync-leader".into()
}
fn default_lease_duration() -> Duration {
    Duration::from_secs(15)
}

/// Global defaults and limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Defaults {
    /// Validity of a copy without a successful refresh, when a resource sets no `ttl`.
    #[serde(default = "default_ttl", with = "duration")]
    pub ttl: Duration,
    /// Refresh interval of static sources, when a resource sets none.
    #[serde(default = "default_refresh", with = "duration")]
    pub refresh_interval: Duration,
    /// Shortest refresh interval a resource may ask for.
    #[serde(default = "default_min_refresh", with = "duration")]
    pub min_refresh_interval: Duration,
    /// Resources reconciled at the same time.
    #[serde(default = "default_concurrency")]
    pub concurrency: u16,
    /// How long a deleted resource waits for its lease to be revoked (when the tenant can
    /// no longer log in, say) before its finalizer is removed anyway, with a Warning Event.
    #[serde(default = "default_revocation_timeout", with = "duration")]
    pub revocation_timeout: Duration,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            ttl: default_ttl(),
            refresh_interval: default_refresh(),
            min_refresh_interval: default_min_refresh(),
            concurrency: default_concurrency(),
            revocation_timeout: default_revocation_timeout(),
        }
    }
}

/// A named Vault or OpenBao server.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VaultConnection {
    /// Base URL, such as `https://vault.example.com:8200`.
    pub address: String,
    /// PEM file of the CA that signed Vault's certificate; the system roots when absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Vault Enterprise / OpenBao namespace sent as `X-Vault-Namespace`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// KV version per mount (1 or 2). Mounts not listed are detected on first use.
    #[serde(default)]
    pub kv_versions: BTreeMap<String, u8>,
    /// Audience of the service-account tokens requested for Kubernetes auth.
    #[serde(default = "default_audience")]
    pub token_audience: String,
    /// Auth used when a resource sets none.
    #[serde(default)]
    pub default_auth: Option<VaultDefaultAuth>,
    /// Client-side limit of requests per second to this server.
    #[serde(default = "default_vault_rps")]
    pub requests_per_second: u32,
}

/// Default auth of a Vault connection. `{namespace}` in a role is replaced by the
/// resource's namespace, so one line serves every tenant.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VaultDefaultAuth {
    pub kubernetes: KubernetesDefaultAuth,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesDefaultAuth {
    #[serde(default = "default_kubernetes_mount")]
    pub mount: String,
    pub role: String,
    #[serde(default = "default_service_account")]
    pub service_account_name: String,
}

/// Credential kinds a resource may use on an Azure connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AzureCredentialKind {
    WorkloadIdentity,
    ClientSecret,
    ManagedIdentity,
}

/// A named family of Azure Key Vaults.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AzureConnection {
    /// URL of a vault, with `{name}` standing for the resource's `spec.vault.name`, such
    /// as `https://{name}.vault.azure.net`.
    pub vault_url_template: String,
    /// Entra ID authority, such as `https://login.microsoftonline.com`.
    #[serde(default = "default_authority")]
    pub authority_host: String,
    /// Default tenant for resources that set none.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Extra PEM CA bundle trusted for the vault and the authority.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Credential kinds resources may use: `workloadIdentity` and `clientSecret` by
    /// default. `managedIdentity` is not set here but per namespace, in
    /// `managedIdentityNamespaces`.
    #[serde(default = "default_credentials")]
    pub allowed_credentials: Vec<AzureCredentialKind>,
    /// Namespaces whose resources may use `auth.managedIdentity`, the operator's own
    /// identity. Empty (the default) means none: any resource that may read as the
    /// operator reads everything the operator may.
    #[serde(default)]
    pub managed_identity_namespaces: Vec<String>,
    /// The identity of a resource that sets no `auth`: a service account of the
    /// resource's own namespace through workload identity. Without it, `auth` is required.
    #[serde(default)]
    pub default_auth: Option<AzureDefaultAuth>,
    /// Client-side limit of requests per second to each vault.
    #[serde(default = "default_azure_rps")]
    pub requests_per_second: u32,
}

/// The default identity of an Azure connection.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AzureDefaultAuth {
    pub workload_identity: AzureDefaultWorkloadIdentity,
}

/// Workload identity as the resource namespace's service account `serviceAccountName`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AzureDefaultWorkloadIdentity {
    #[serde(default = "default_service_account")]
    pub service_account_name: String,
    /// Application (client) ID trusted by the service accounts; `{namespace}` stands for
    /// the resource's namespace. When absent, each service account's
    /// `azure.workload.identity/client-id` annotation names it.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Tenant; the connection's `tenantId` when absent.
    #[serde(default)]
    pub tenant_id: Option<String>,
}

fn default_metrics_address() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}
fn default_operator_namespace() -> String {
    std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "vaultsync-system".into())
}
fn default_ttl() -> Duration {
    Duration::from_secs(3 * 3600)
}
fn default_refresh() -> Duration {
    Duration::from_secs(3600)
}
fn default_min_refresh() -> Duration {
    Duration::from_secs(10)
}
fn default_revocation_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_concurrency() -> u16 {
    16
}
fn default_audience() -> String {
    "vault".into()
}
fn default_vault_rps() -> u32 {
    200
}
fn default_kubernetes_mount() -> String {
    "kubernetes".into()
}
fn default_service_account() -> String {
    "default".into()
}
fn default_authority() -> String {
    "https://login.microsoftonline.com".into()
}
fn default_credentials() -> Vec<AzureCredentialKind> {
    vec![
        AzureCredentialKind::WorkloadIdentity,
        AzureCredentialKind::ClientSecret,
    ]
}
fn default_azure_rps() -> u32 {
    300
}

/// Parses durations such as `30s`, `5m` or `1h30m`, the form the CRDs accept.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let parsed: kube::core::Duration = text
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 30s, 5m or 1h"))?;
    if parsed.is_negative() {
        return Err(format!("{text:?} is negative"));
    }
    Ok(parsed.into())
}

mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

fn check_url(field: &str, url: &str) -> Result<(), ConfigError> {
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(invalid(
            field,
            format!("{url:?} must start with https:// or http://"),
        ));
    }
    Ok(())
}

impl Config {
    /// Reads and validates the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates YAML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        // serde_path_to_error names the full field path (`defaults.ttl`), which serde_yaml
        // alone loses inside custom deserializers.
        let config: Config = serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(
            text,
        ))
        .map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: format!("{}: {}", e.path(), e.inner()),
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let d = &self.defaults;
        if d.ttl <= d.refresh_interval {
            return Err(invalid(
                "defaults.ttl",
                "must be longer than defaults.refreshInterval",
            ));
        }
        if d.min_refresh_interval > d.refresh_interval {
            return Err(invalid(
                "defaults.minRefreshInterval",
                "must not exceed defaults.refreshInterval",
            ));
        }
        if self.admission.enabled
            && (self.admission.cert_file.is_none() || self.admission.key_file.is_none())
        {
            return Err(invalid(
                "admission",
                "enabled needs certFile and keyFile (the webhook is served over TLS)",
            ));
        }
        if self.injection.enabled && !self.admission.enabled {
            return Err(invalid(
                "injection",
                "enabled needs admission.enabled: the webhook is served by the admission server",
            ));
        }
        if self.injection.enabled && self.injection.image.as_deref().is_none_or(str::is_empty) {
            return Err(invalid(
                "injection.image",
                "is required when injection is enabled (the operator's own image)",
            ));
        }
        if self.housekeeping_interval < Duration::from_secs(1) {
            return Err(invalid("housekeepingInterval", "must be at least 1s"));
        }
        if self.leader_election.lease_duration < Duration::from_secs(2) {
            return Err(invalid(
                "leaderElection.leaseDuration",
                "must be at least 2s",
            ));
        }
        if d.concurrency == 0 {
            return Err(invalid("defaults.concurrency", "must be at least 1"));
        }
        if self.operator_namespace.is_empty() {
            return Err(invalid("operatorNamespace", "must not be empty"));
        }
        for (name, c) in &self.vault {
            check_url(&format!("vault.{name}.address"), &c.address)?;
            for (mount, version) in &c.kv_versions {
                if !matches!(version, 1 | 2) {
                    return Err(invalid(
                        format!("vault.{name}.kvVersions.{mount}"),
                        "must be 1 or 2",
                    ));
                }
            }
            if c.requests_per_second == 0 {
                return Err(invalid(
                    format!("vault.{name}.requestsPerSecond"),
                    "must be at least 1",
                ));
            }
            if let Some(ca) = &c.ca_file
                && !ca.is_file()
            {
                return Err(invalid(
                    format!("vault.{name}.caFile"),
                    format!("{} is not a readable file", ca.display()),
                ));
            }
        }
        for (name, c) in &self.azure {
            let field = format!("azure.{name}.vaultUrlTemplate");
            check_url(&field, &c.vault_url_template)?;
            if !c.vault_url_template.contains("{name}") {
                return Err(invalid(
                    field,
                    "must contain {name}, the resource's vault name",
                ));
            }
            check_url(&format!("azure.{name}.authorityHost"), &c.authority_host)?;
            if !c.vault_url_template.starts_with("https://")
                || !c.authority_host.starts_with("https://")
            {
                return Err(invalid(
                    format!("azure.{name}"),
                    "vaultUrlTemplate and authorityHost must be https:// URLs: the Azure SDK sends tokens over TLS only",
                ));
            }
            if c.allowed_credentials
                .contains(&AzureCredentialKind::ManagedIdentity)
            {
                return Err(invalid(
                    format!("azure.{name}.allowedCredentials"),
                    "managedIdentity is allowed per namespace: list the namespaces in managedIdentityNamespaces",
                ));
            }
            if let Some(ca) = &c.ca_file
                && !ca.is_file()
            {
                return Err(invalid(
                    format!("azure.{name}.caFile"),
                    format!("{} is not a readable file", ca.display()),
                ));
            }
            if c.tenant_id.is_none()
                && c.default_auth
                    .as_ref()
                    .is_some_and(|d| d.workload_identity.tenant_id.is_none())
            {
                return Err(invalid(
                    format!("azure.{name}.defaultAuth.workloadIdentity.tenantId"),
                    "set it, or the connection's tenantId",
                ));
            }
            if c.requests_per_second == 0 {
                return Err(invalid(
                    format!("azure.{name}.requestsPerSecond"),
                    "must be at least 1",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_config_parses() {
        let c = Config::parse(
            r#"
metricsAddress: 127.0.0.1:9090
logFormat: json
watchNamespaces: [team-a]
defaults: {ttl: 2h, refreshInterval: 30m, minRefreshInterval: 30s, concurrency: 4}
vault:
  default:
    address: http://127.0.0.1:8200
    kvVersions: {secret: 2, kv1: 1}
    defaultAuth: {kubernetes: {role: "tenant-{namespace}"}}
azure:
  default:
    vaultUrlTemplate: https://{name}.vault.azure.net
"#,
        )
        .expect("valid");
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.defaults.ttl, Duration::from_secs(7200));
        assert_eq!(c.vault["default"].kv_versions["kv1"], 1);
        assert_eq!(c.vault["default"].token_audience, "vault");
        let auth = c.vault["default"].default_auth.as_ref().expect("auth");
        assert_eq!(auth.kubernetes.mount, "kubernetes");
        assert_eq!(
            c.azure["default"].allowed_credentials,
            vec![
                AzureCredentialKind::WorkloadIdentity,
                AzureCredentialKind::ClientSecret
            ]
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                "vault: {default: {address: vault:8200}}",
                "vault.default.address",
            ),
            ("defaults: {ttl: 10m, refreshInterval: 1h}", "defaults.ttl"),
            ("defaults: {ttl: soon}", "defaults.ttl"),
            (
                "vault: {default: {address: http://x, kvVersions: {secret: 3}}}",
                "vault.default.kvVersions.secret",
            ),
            (
                "azure: {default: {vaultUrlTemplate: https://fixed.vault}}",
                "azure.default.vaultUrlTemplate",
            ),
            ("vault: {default: {address: http://x, adress: y}}", "adress"),
            ("defaults: {concurrency: 0}", "defaults.concurrency"),
        ];
        for (text, field) in cases {
            let err = Config::parse(text).expect_err(text).to_string();
            assert!(err.contains(field), "{text}: {err}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("45s"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("-5m").is_err());
    }
}
