//! The one way the Azure backend talks to Key Vault: [`Connection::read`] applies the
//! per-vault rate limit and any pause a 429 asked for, makes identical reads in flight
//! once, records the metric and maps SDK errors to reasons without echoing a value.
//!
//! The vault and the authority are reached over a reqwest client with the connection's
//! CA; the SDK's challenge-resource check stays on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, RetryOptions, Transport};
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions, models::KeyClientGetKeyOptions};
use azure_security_keyvault_secrets::{
    SecretClient, SecretClientOptions, models::SecretClientGetSecretOptions,
};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use super::auth::Identity;
use super::throttle::VaultLimit;
use crate::backend::SecretValue;
use crate::config::AzureConnection;
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// What to read: a secret (also a certificate's secret) or a key, at a version or latest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    pub key: bool,
    /// What the object is to the user (`certificate` for a certificate read through its
    /// secret), for messages.
    pub kind: &'static str,
    pub name: String,
    pub version: Option<String>,
}

/// What Key Vault returned, without anything the pipeline does not need.
#[derive(Clone, Debug)]
pub enum Read {
    Secret {
        value: SecretValue,
        content_type: Option<String>,
        version: String,
    },
    Key {
        /// The public JWK as Key Vault's JSON (base64url members).
        jwk: serde_json::Value,
        version: String,
    },
}

type SharedRead = Shared<BoxFuture<'static, std::result::Result<Arc<Read>, Arc<SharedError>>>>;
type ReadKey = (String, Identity, ObjectRef);

/// An error that can be handed to every waiter of a coalesced read.
#[derive(Debug)]
pub struct SharedError {
    reason: &'static str,
    message: String,
    retry_after: Option<Duration>,
}

impl SharedError {
    fn from_error(e: Error) -> Self {
        Self {
            reason: e.reason(),
            retry_after: e.retry_after(),
            message: e.to_string(),
        }
    }

    fn to_error(&self) -> Error {
        let m = self.message.clone();
        match self.reason {
            "InvalidSpec" => Error::InvalidSpec(m),
            "InvalidData" => Error::InvalidData(m),
            "NotFound" => Error::NotFound(m),
            "AuthFailed" => Error::AuthFailed(m),
            _ => Error::BackendUnavailable {
                message: m,
                retry_after: self.retry_after,
            },
        }
    }
}

/// The SDK clients of one vault for one identity.
struct VaultClients {
    secrets: SecretClient,
    keys: KeyClient,
}

/// A named Azure connection from the operator config.
pub struct Connection {
    pub name: String,
    pub config: AzureConnection,
    http: reqwest::Client,
    vaults: Mutex<HashMap<String, Arc<VaultLimit>>>,
    /// SDK clients by vault and identity: each keeps the scope of the vault's first
    /// challenge, so only an identity's first request to a vault goes unauthenticated.
    clients: Mutex<HashMap<(String, Identity), Arc<VaultClients>>>,
    in_flight: Arc<Mutex<HashMap<ReadKey, SharedRead>>>,
}

impl Connection {
    pub fn new(name: &str, config: &AzureConnection) -> anyhow::Result<Self> {
        let http = crate::backend::http_client(
            &format!("azure.{name}.caFile"),
            config.ca_file.as_deref(),
            Duration::from_secs(15),
        )?;
        Ok(Self::with_http(name, config, http))
    }

    /// A connection over `http`, whose trust the caller set up.
    pub fn with_http(name: &str, config: &AzureConnection, http: reqwest::Client) -> Self {
        Self {
            name: name.to_string(),
            config: config.clone(),
            http,
            vaults: Mutex::default(),
            clients: Mutex::default(),
            in_flight: Arc::default(),
        }
    }

    /// The URL of vault `name`, from the admin's template.
    pub fn vault_url(&self, name: &str) -> String {
        self.config.vault_url_template.replace("{name}", name)
    }

    fn client_options(&self, retry: bool) -> ClientOptions {
        let mut cloud = CustomConfiguration::default();
        cloud.authority_host = self.config.authority_host.clone();
        ClientOptions {
            transport: Some(Transport::new(Arc::new(self.http.clone()))),
            cloud: Some(Arc::new(CloudConfiguration::from(cloud))),
            retry: if retry {
                RetryOptions::default()
            } else {
                RetryOptions::none()
            },
            ..Default::default()
        }
    }

    /// Options of the credentials: the authority host and the CA.
    pub fn credential_options(&self) -> ClientOptions {
        self.client_options(true)
    }

    fn limit(&self, vault_url: &str) -> Arc<VaultLimit> {
        let mut vaults = self.vaults.lock().unwrap_or_else(|p| p.into_inner());
        vaults
            .entry(vault_url.to_string())
            .or_insert_with(|| Arc::new(VaultLimit::new(self.config.requests_per_second)))
            .clone()
    }

    fn clients(
        &self,
        vault_url: &str,
        identity: &Identity,
        credential: Arc<dyn TokenCredential>,
    ) -> Result<Arc<VaultClients>> {
        let key = (vault_url.to_string(), identity.clone());
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let invalid = |e: azure_core::Error| {
            Error::InvalidSpec(format!(
                "cannot build a Key Vault client for {vault_url}: {e}"
            ))
        };
        let built = Arc::new(VaultClients {
            secrets: SecretClient::new(
                vault_url,
                credential.clone(),
                Some(SecretClientOptions {
                    client_options: self.client_options(false),
                    ..Default::default()
                }),
            )
            .map_err(invalid)?,
            keys: KeyClient::new(
                vault_url,
                credential,
                Some(KeyClientOptions {
                    client_options: self.client_options(false),
                    ..Default::default()
                }),
            )
            .map_err(invalid)?,
        });
        clients.insert(key, built.clone());
        Ok(built)
    }

    /// Forgets the clients of an identity whose credential was dropped.
    pub fn forget(&self, identity: &Identity) {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(_, i), _| i != identity);
    }

    /// Forgets the limits and clients of vaults and identities no resource uses any more.
    pub fn retain(&self, live: &std::collections::HashSet<(String, Identity)>) {
        let urls: std::collections::HashSet<&String> = live.iter().map(|(u, _)| u).collect();
        self.vaults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|url, _| urls.contains(url));
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|key, _| live.contains(key));
    }

    /// Reads `object` from the vault at `vault_url` as `identity`; identical reads in
    /// flight (same vault, identity and object) are made once.
    pub async fn read(
        &self,
        metrics: &Arc<Metrics>,
        vault_url: &str,
        identity: &Identity,
        credential: Arc<dyn TokenCredential>,
        object: &ObjectRef,
    ) -> Result<Arc<Read>> {
        let key: ReadKey = (vault_url.to_string(), identity.clone(), object.clone());
        let shared = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(existing) = in_flight.get(&key) {
                existing.clone()
            } else {
                let fut = read_once(
                    self.clients(vault_url, identity, credential)?,
                    self.limit(vault_url),
                    metrics.clone(),
                    vault_url.to_string(),
                    object.clone(),
                );
                let map = self.in_flight.clone();
                let done_key = key.clone();
                let fut = async move {
                    let result = fut
                        .await
                        .map(Arc::new)
                        .map_err(|e| Arc::new(SharedError::from_error(e)));
                    map.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&done_key);
                    result
                }
                .boxed()
                .shared();
                in_flight.insert(key, fut.clone());
                fut
            }
        };
        shared.await.map_err(|e| e.to_error())
    }
}

/// One read: wait for the vault's slot, then one SDK call.
async fn read_once(
    clients: Arc<VaultClients>,
    limit: Arc<VaultLimit>,
    metrics: Arc<Metrics>,
    vault_url: String,
    object: ObjectRef,
) -> Result<Read> {
    let _probe = match limit.admit().await {
        Ok(probe) => probe,
        Err(wait) => {
            return Err(Error::BackendUnavailable {
                message: format!(
                    "Key Vault {vault_url} is throttling: not asking it again for {}s",
                    wait.as_secs_f64().ceil()
                ),
                retry_after: Some(wait),
            });
        }
    };
    let what = format!("{} {:?} in {vault_url}", object.kind, object.name);
    let operation = if object.key {
        "key_read"
    } else {
        "secret_read"
    };
    let result = if object.key {
        read_key(&clients.keys, &object).await
    } else {
        read_secret(&clients.secrets, &object).await
    };
    let header = match &result {
        Err(e) if e.http_status().map(u16::from) == Some(429) => Some(retry_after_header(e)),
        _ => None,
    };
    let wait = limit.record(header.flatten(), header.is_some());
    let result = result.map_err(|e| classify(&what, e, wait));
    let outcome = match &result {
        Ok(_) => "ok",
        Err(_) if header.is_some() => "throttled",
        Err(e) => e.reason(),
    };
    metrics.backend_request("azure", operation, outcome);
    if header.is_some() {
        tracing::info!(vault = %vault_url, wait_seconds = wait.as_secs_f64(), "Key Vault throttled: pausing requests to it");
    }
    tracing::debug!(vault = %vault_url, object = %object.name, outcome, "key vault read");
    result
}

async fn read_secret(client: &SecretClient, object: &ObjectRef) -> azure_core::Result<Read> {
    let secret = client
        .get_secret(
            &object.name,
            Some(SecretClientGetSecretOptions {
                secret_version: object.version.clone(),
                ..Default::default()
            }),
        )
        .await?
        .into_model()?;
    Ok(Read::Secret {
        value: SecretValue::new(secret.value.unwrap_or_default().into_bytes()),
        content_type: secret.content_type,
        version: version_of(secret.id.as_deref()),
    })
}

async fn read_key(client: &KeyClient, object: &ObjectRef) -> azure_core::Result<Read> {
    let key = client
        .get_key(
            &object.name,
            Some(KeyClientGetKeyOptions {
                key_version: object.version.clone(),
                ..Default::default()
            }),
        )
        .await?
        .into_model()?;
    let jwk = key.key.unwrap_or_default();
    let version = version_of(jwk.kid.as_deref());
    Ok(Read::Key {
        jwk: serde_json::to_value(&jwk)?,
        version,
    })
}

/// The version at the end of an object id (`https://v.vault.azure.net/secrets/n/VERSION`).
fn version_of(id: Option<&str>) -> String {
    id.and_then(|id| id.rsplit('/').next())
        .unwrap_or_default()
        .to_string()
}

/// Maps an SDK error to a reason. Key Vault's and Entra's error messages name objects,
/// identities and permissions, never values.
fn classify(what: &str, e: azure_core::Error, throttle_wait: Duration) -> Error {
    use azure_core::error::ErrorKind;
    let status = e.http_status().map(u16::from);
    let service_message = match e.kind() {
        ErrorKind::HttpResponse {
            raw_response: Some(raw),
            ..
        } => serde_json::from_slice::<serde_json::Value>(raw.body().as_ref())
            .ok()
            .and_then(|v| {
                let err = v.get("error")?;
                Some(format!(
                    "{}: {}",
                    err.get("code")?.as_str()?,
                    err.get("message").and_then(|m| m.as_str()).unwrap_or("")
                ))
            }),
        _ => None,
    };
    // Only the service's own code and message, bounded: a body that is not Key Vault's
    // JSON (a proxy's error page, say) can echo request headers, a token among them.
    let detail = match (service_message, status) {
        (Some(m), _) => bounded(&m),
        (None, Some(code)) => {
            format!("HTTP {code}, with a body that is not Key Vault's error JSON")
        }
        (None, None) => bounded(&error_chain(&e)),
    };
    match (status, e.kind()) {
        (Some(404), _) => Error::NotFound(format!("{what} does not exist: {detail}")),
        (Some(401 | 403), _) => Error::AuthFailed(format!("Key Vault refused {what}: {detail}")),
        (Some(400), _) => Error::InvalidSpec(format!(
            "Key Vault refused the request for {what}: {detail}"
        )),
        (Some(429), _) => Error::BackendUnavailable {
            message: format!("Key Vault is throttling reads ({what}): {detail}"),
            retry_after: Some(throttle_wait),
        },
        (_, ErrorKind::Credential) => {
            Error::AuthFailed(format!("cannot get a token to read {what}: {detail}"))
        }
        _ => Error::unavailable(format!("cannot read {what}: {detail}")),
    }
}

/// The delay a 429 asks for: `x-ms-retry-after-ms`, `retry-after-ms` or `Retry-After`
/// (seconds), in the order the SDK checks them.
fn retry_after_header(e: &azure_core::Error) -> Option<Duration> {
    use azure_core::http::headers::HeaderName;
    let azure_core::error::ErrorKind::HttpResponse {
        raw_response: Some(raw),
        ..
    } = e.kind()
    else {
        return None;
    };
    for (name, millis) in [
        ("x-ms-retry-after-ms", true),
        ("retry-after-ms", true),
        ("retry-after", false),
    ] {
        if let Some(v) = raw
            .headers()
            .get_optional_str(&HeaderName::from_static(name))
            && let Ok(n) = v.trim().parse::<u64>()
        {
            return Some(if millis {
                Duration::from_millis(n)
            } else {
                Duration::from_secs(n)
            });
        }
    }
    None
}

/// At most 300 characters, without control characters.
fn bounded(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    if text.chars().count() > 300 {
        out.push_str("...");
    }
    out
}

fn error_chain(e: &azure_core::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
