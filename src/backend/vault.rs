//! HashiCorp Vault / OpenBao: login as the tenant, then read KV v1/v2.
//!
//! Logins go through vaultrs. Each tenant identity (connection, namespace, service
//! account, role) logs in once; the token is cached and renewed while renewable, so a
//! reconcile does not log in again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::Value;
use vaultrs::api::EndpointMiddleware;
use vaultrs::client::{Client as _, VaultClient, VaultClientSettings, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

use super::{Fetched, Lease, Replaced, SecretValue};
use crate::api::{DatabaseSource, KvSource, PkiSource, VaultAuth, VaultSource};
use crate::config::{Config, VaultConnection};
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// Who logs in: one cached Vault token per identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    Kubernetes {
        namespace: String,
        service_account: String,
        mount: String,
        role: String,
    },
    AppRole {
        namespace: String,
        mount: String,
        role_id: String,
        secret: (String, String),
    },
    Token {
        namespace: String,
        secret: (String, String),
    },
}

/// A source resolved against the operator config: which connection, as whom.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub connection: String,
    pub identity: Identity,
}

struct CachedToken {
    token: String,
    /// When to renew or log in again (two thirds into the token's lease).
    refresh_at: Instant,
    renewable: bool,
    /// When the token ends; Vault revokes the leases it created then. `None` for tokens
    /// without a lease (such as a static token whose lifetime the operator cannot see).
    expires_at: Option<jiff::Timestamp>,
}

/// The cached token of one identity; its lock makes concurrent reconciles share a login.
type TokenSlot = Arc<tokio::sync::Mutex<Option<CachedToken>>>;

struct Connection {
    config: VaultConnection,
    limiter: super::RateLimiter,
    settings: VaultClientSettings,
    http: reqwest::Client,
}

/// The Vault backend: connections from the config, a token cache and KV mount versions.
pub struct VaultBackend {
    connections: BTreeMap<String, Connection>,
    tokens: Mutex<HashMap<(String, Identity), TokenSlot>>,
    kv_versions: Mutex<HashMap<(String, String), u8>>,
    metrics: Arc<Metrics>,
}

impl VaultBackend {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let mut connections = BTreeMap::new();
        for (name, c) in &config.vault {
            let mut builder = VaultClientSettingsBuilder::default();
            builder.address(c.address.clone()).token("");
            if let Some(ca) = &c.ca_file {
                builder.ca_certs(vec![ca.display().to_string()]);
            }
            if let Some(ns) = &c.namespace {
                builder.namespace(Some(ns.clone()));
            }
            builder.timeout(Some(Duration::from_secs(10)));
            let settings = builder.build()?;
            // vaultrs builds its HTTP client from the settings; one per connection is kept
            // and shared by every tenant's client, so connections are pooled.
            let http = VaultClient::new(settings.clone())?.http.http;
            connections.insert(
                name.clone(),
                Connection {
                    config: c.clone(),
                    limiter: super::RateLimiter::new(c.requests_per_second),
                    settings,
                    http,
                },
            );
        }
        Ok(Self {
            connections,
            tokens: Mutex::default(),
            kv_versions: Mutex::default(),
            metrics,
        })
    }

    /// Resolve (no IO): the connection and identity a VaultSecret reads as.
    pub fn resolve(&self, namespace: &str, source: &VaultSource) -> Result<Resolved> {
        let connection = source
            .connection
            .clone()
            .unwrap_or_else(|| "default".into());
        let conn = self.connections.get(&connection).ok_or_else(|| {
            Error::InvalidSpec(format!(
                "there is no Vault connection {connection:?} in the operator's configuration; known: {:?}",
                self.connections.keys().collect::<Vec<_>>()
            ))
        })?;
        let identity = match &source.auth {
            Some(VaultAuth {
                kubernetes: Some(k),
                ..
            }) => Identity::Kubernetes {
                namespace: namespace.into(),
                service_account: k
                    .service_account_name
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                mount: k
                    .mount
                    .clone()
                    .unwrap_or_else(|| default_kubernetes_mount(&conn.config)),
                role: k.role.clone(),
            },
            Some(VaultAuth {
                app_role: Some(a), ..
            }) => Identity::AppRole {
                namespace: namespace.into(),
                mount: a.mount.clone().unwrap_or_else(|| "approle".into()),
                role_id: a.role_id.clone(),
                secret: (a.secret_id_ref.name.clone(), a.secret_id_ref.key.clone()),
            },
            Some(VaultAuth { token: Some(t), .. }) => Identity::Token {
                namespace: namespace.into(),
                secret: (t.secret_ref.name.clone(), t.secret_ref.key.clone()),
            },
            Some(_) => return Err(Error::InvalidSpec("spec.vault.auth sets no method".into())),
            None => match &conn.config.default_auth {
                Some(d) => Identity::Kubernetes {
                    namespace: namespace.into(),
                    service_account: d.kubernetes.service_account_name.clone(),
                    mount: d.kubernetes.mount.clone(),
                    role: d.kubernetes.role.replace("{namespace}", namespace),
                },
                None => {
                    return Err(Error::InvalidSpec(format!(
                        "spec.vault.auth is not set and connection {connection:?} has no default auth: set spec.vault.auth"
                    )));
                }
            },
        };
        Ok(Resolved {
            connection,
            identity,
        })
    }

    fn client(&self, connection: &str, token: &str) -> Result<VaultClient> {
        let conn = self.connections.get(connection).ok_or_else(|| {
            Error::InvalidSpec(format!("unknown Vault connection {connection:?}"))
        })?;
        let mut settings = conn.settings.clone();
        settings.token = token.to_string();
        Ok(VaultClient {
            http: rustify::clients::reqwest::Client::new(&conn.config.address, conn.http.clone()),
            middle: EndpointMiddleware {
                token: token.to_string(),
                version: "v1".into(),
                wrap: None,
                namespace: conn.config.namespace.clone(),
            },
            settings,
        })
    }

    /// A client logged in as `resolved`'s identity, from the cache when possible.
    pub async fn login(&self, kube: &kube::Client, resolved: &Resolved) -> Result<VaultClient> {
        let slot = {
            let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
            tokens
                .entry((resolved.connection.clone(), resolved.identity.clone()))
                .or_default()
                .clone()
        };
        // One login per identity at a time: concurrent reconciles wait for the first.
        let mut cached = slot.lock().await;
        if let Some(c) = cached.as_ref() {
            if Instant::now() < c.refresh_at {
                return self.client(&resolved.connection, &c.token);
            }
            if c.renewable {
                let client = self.client(&resolved.connection, &c.token)?;
                self.throttle(&resolved.connection).await;
                if let Ok(info) = client.renew(None).await {
                    self.metrics.backend_request("vault", "renew_token", "ok");
                    *cached = Some(cache_entry(
                        info.client_token,
                        info.lease_duration,
                        info.renewable,
                    ));
                    return Ok(client);
                }
                self.metrics
                    .backend_request("vault", "renew_token", "error");
            }
        }
        let anonymous = self.client(&resolved.connection, "")?;
        self.throttle(&resolved.connection).await;
        let result = match &resolved.identity {
            Identity::Kubernetes {
                namespace,
                service_account,
                mount,
                role,
            } => {
                let audience = &self.connections[&resolved.connection].config.token_audience;
                let jwt = super::service_account_token(kube, namespace, service_account, audience)
                    .await?;
                vaultrs::auth::kubernetes::login(&anonymous, mount, role, &jwt).await
            }
            Identity::AppRole {
                namespace,
                mount,
                role_id,
                secret,
            } => {
                let secret_id = read_secret_key(kube, namespace, &secret.0, &secret.1).await?;
                vaultrs::auth::approle::login(&anonymous, mount, role_id, &secret_id).await
            }
            Identity::Token { namespace, secret } => {
                let token = read_secret_key(kube, namespace, &secret.0, &secret.1).await?;
                // A static token is used as given and re-read from its Secret each minute.
                *cached = Some(CachedToken {
                    token: token.clone(),
                    refresh_at: Instant::now() + Duration::from_secs(60),
                    renewable: false,
                    expires_at: None,
                });
                return self.client(&resolved.connection, &token);
            }
        };
        match result {
            Ok(info) => {
                self.metrics.vault_login(&resolved.connection, "ok");
                let client = self.client(&resolved.connection, &info.client_token)?;
                *cached = Some(cache_entry(
                    info.client_token,
                    info.lease_duration,
                    info.renewable,
                ));
                Ok(client)
            }
            Err(e) => {
                self.metrics.vault_login(&resolved.connection, "error");
                Err(login_error(&resolved.identity, e))
            }
        }
    }

    /// When the cached token of an identity ends, if it has an end.
    pub async fn token_expiry(&self, resolved: &Resolved) -> Option<jiff::Timestamp> {
        let slot = {
            let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
            tokens
                .get(&(resolved.connection.clone(), resolved.identity.clone()))?
                .clone()
        };
        slot.lock().await.as_ref().and_then(|c| c.expires_at)
    }

    /// Drops the cached token of an identity, after Vault refused it.
    pub fn forget(&self, resolved: &Resolved) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.remove(&(resolved.connection.clone(), resolved.identity.clone()));
    }

    /// Fetch: reads a KV secret (v1 or v2, detected per mount) as the tenant.
    pub async fn fetch_kv(
        &self,
        client: &VaultClient,
        resolved: &Resolved,
        kv: &KvSource,
    ) -> Result<Fetched> {
        let version = self
            .kv_version(client, &resolved.connection, &kv.mount)
            .await?;
        let what = format!("{}/{}", kv.mount, kv.path);
        if version == 1 && kv.version.is_some() {
            return Err(Error::InvalidSpec(format!(
                "mount {} is KV version 1, which has no versions: remove spec.vault.kv.version",
                kv.mount
            )));
        }
        let path = match (version, kv.version) {
            (1, _) => what.clone(),
            (_, Some(v)) => format!("{}/data/{}?version={v}", kv.mount, kv.path),
            (_, None) => format!("{}/data/{}", kv.mount, kv.path),
        };
        // A plain request rather than vaultrs' KV calls: those drop the response headers,
        // and a 429's Retry-After must reach the backoff.
        let body = self
            .raw(
                client,
                &resolved.connection,
                reqwest::Method::GET,
                &path,
                None,
                &what,
            )
            .await;
        self.metrics
            .backend_request("vault", "kv_read", outcome(&body));
        let mut body = body?;
        let (data, source_version) = if version == 1 {
            (body["data"].take(), String::new())
        } else {
            let version = body["data"]["metadata"]["version"]
                .as_u64()
                .map(|v| v.to_string())
                .unwrap_or_default();
            if body["data"]["data"].is_null() {
                // A deleted or destroyed version answers with metadata only.
                return Err(Error::NotFound(format!(
                    "{what} version {version} is deleted"
                )));
            }
            (body["data"]["data"].take(), version)
        };
        let object = match data {
            Value::Object(map) => map,
            _ => {
                return Err(Error::InvalidData(format!(
                    "{what} does not hold key/value data"
                )));
            }
        };
        let mut out = BTreeMap::new();
        for (key, value) in object {
            if let Some(keys) = &kv.keys
                && !keys.contains(&key)
            {
                continue;
            }
            out.insert(key.clone(), SecretValue::new(json_bytes(&value)));
        }
        if let Some(keys) = &kv.keys {
            let missing: Vec<&String> = keys.iter().filter(|k| !out.contains_key(*k)).collect();
            if !missing.is_empty() {
                return Err(Error::NotFound(format!("{what} has no keys {missing:?}")));
            }
        }
        Ok(Fetched {
            data: out,
            version: source_version,
            ..Default::default()
        })
    }

    /// KV version of a mount: from the connection's config, else asked once of Vault.
    async fn kv_version(&self, client: &VaultClient, connection: &str, mount: &str) -> Result<u8> {
        if let Some(v) = self.connections[connection].config.kv_versions.get(mount) {
            return Ok(*v);
        }
        let key = (connection.to_string(), mount.to_string());
        if let Some(v) = self
            .kv_versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(*v);
        }
        // vaultrs has no call for this; it is the endpoint the Vault CLI itself uses, and
        // any token may read it for mounts it can access.
        let body = self
            .raw(
                client,
                connection,
                reqwest::Method::GET,
                &format!("sys/internal/ui/mounts/{mount}"),
                None,
                &format!("mount {mount}"),
            )
            .await?;
        let version = match body["data"]["options"]["version"].as_str() {
            Some("2") => 2,
            _ if body["data"]["type"] == "kv" => 1,
            _ => {
                return Err(Error::InvalidSpec(format!(
                    "mount {mount} is not a KV secrets engine"
                )));
            }
        };
        self.kv_versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, version);
        Ok(version)
    }

    /// A request vaultrs has no call for (or whose answer it does not fully return): the
    /// lease of dynamic credentials, `sys/leases/*`, PKI issue and revoke. Errors carry the
    /// status, Vault's own words and, on 429, its `Retry-After`.
    async fn raw(
        &self,
        client: &VaultClient,
        connection: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<Value> {
        let conn = &self.connections[connection];
        let url = format!("{}/v1/{path}", conn.config.address.trim_end_matches('/'));
        let mut request = conn
            .http
            .request(method, url)
            .header("X-Vault-Token", client.settings().token.as_str());
        if let Some(ns) = &conn.config.namespace {
            request = request.header("X-Vault-Namespace", ns);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.throttle(connection).await;
        let response = request.send().await.map_err(|e| {
            Error::unavailable(format!(
                "Vault is unreachable while handling {what}: {}",
                without_url(&e)
            ))
        })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // The body may hold credentials: it is parsed, never echoed.
        let body: Value = if status == 204 {
            Value::Null
        } else {
            response.json().await.unwrap_or(Value::Null)
        };
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let errors: Vec<String> = body["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        match status_error(what, status, &errors) {
            Error::BackendUnavailable { message, .. } if status == 429 => {
                Err(Error::BackendUnavailable {
                    message,
                    retry_after,
                })
            }
            other => Err(other),
        }
    }

    /// Issues database credentials: `{mount}/creds/{role}`, with their lease.
    pub async fn issue_database(
        &self,
        client: &VaultClient,
        resolved: &Resolved,
        db: &DatabaseSource,
    ) -> Result<Fetched> {
        let what = format!("{}/creds/{}", db.mount, db.role);
        let body = self
            .raw(
                client,
                &resolved.connection,
                reqwest::Method::GET,
                &what,
                None,
                &what,
            )
            .await;
        self.metrics
            .backend_request("vault", "database_creds", outcome(&body));
        let body = body?;
        let lease = lease_from(&body, &what)?;
        let data = body["data"]
            .as_object()
            .ok_or_else(|| Error::unavailable(format!("Vault returned no credentials for {what}")))?
            .iter()
            .map(|(k, v)| (k.clone(), SecretValue::new(json_bytes(v))))
            .collect();
        Ok(Fetched {
            data,
            version: short_id(&lease.id),
            not_after: Some(lease.expires_at),
            lease: Some(lease),
            ..Default::default()
        })
    }

    /// Renews a lease for another `increment`; returns the lease as Vault granted it.
    pub async fn renew_lease(
        &self,
        client: &VaultClient,
        resolved: &Resolved,
        lease_id: &str,
        increment: Duration,
    ) -> Result<Lease> {
        let body = self
            .raw(
                client,
                &resolved.connection,
                reqwest::Method::PUT,
                "sys/leases/renew",
                Some(serde_json::json!({"lease_id": lease_id, "increment": increment.as_secs()})),
                "the lease renewal",
            )
            .await;
        self.metrics
            .backend_request("vault", "lease_renew", outcome(&body));
        lease_from(&body?, "the lease renewal")
    }

    /// Revokes a lease, or a certificate replaced by a newer one.
    pub async fn revoke(
        &self,
        client: &VaultClient,
        resolved: &Resolved,
        replaced: &Replaced,
    ) -> Result<()> {
        let (path, body) = match replaced {
            Replaced::Lease(id) => (
                "sys/leases/revoke".to_string(),
                serde_json::json!({"lease_id": id}),
            ),
            Replaced::Certificate { mount, serial } => (
                format!("{mount}/revoke"),
                serde_json::json!({"serial_number": serial}),
            ),
        };
        let result = self
            .raw(
                client,
                &resolved.connection,
                reqwest::Method::PUT,
                &path,
                Some(body),
                "the revocation",
            )
            .await;
        self.metrics
            .backend_request("vault", "revoke", outcome(&result));
        result.map(|_| ())
    }

    /// Issues a certificate: `{mount}/issue/{role}`, written as `tls.crt` (with the chain),
    /// `tls.key` and `ca.crt`.
    pub async fn issue_certificate(
        &self,
        client: &VaultClient,
        resolved: &Resolved,
        pki: &PkiSource,
    ) -> Result<Fetched> {
        let what = format!("{}/issue/{}", pki.mount, pki.role);
        let mut request = serde_json::json!({"common_name": pki.common_name});
        if let Some(alt) = &pki.alt_names {
            request["alt_names"] = Value::from(alt.join(","));
        }
        if let Some(ips) = &pki.ip_sans {
            request["ip_sans"] = Value::from(ips.join(","));
        }
        if let Some(ttl) = &pki.ttl {
            request["ttl"] = Value::from(ttl.as_str());
        }
        let body = self
            .raw(
                client,
                &resolved.connection,
                reqwest::Method::PUT,
                &what,
                Some(request),
                &what,
            )
            .await;
        self.metrics
            .backend_request("vault", "pki_issue", outcome(&body));
        let data = &body?["data"];
        let text = |field: &str| {
            data[field].as_str().map(str::to_string).ok_or_else(|| {
                Error::unavailable(format!("Vault's answer for {what} has no {field}"))
            })
        };
        let certificate = text("certificate")?;
        let key = text("private_key")?;
        let serial = text("serial_number")?;
        let chain: Vec<String> = data["ca_chain"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let ca = chain
            .last()
            .cloned()
            .or_else(|| data["issuing_ca"].as_str().map(str::to_string))
            .unwrap_or_default();
        let mut bundle = certificate.trim_end().to_string();
        for c in chain
            .iter()
            .filter(|c| c.trim() != ca.trim() || chain.len() == 1)
        {
            bundle.push('\n');
            bundle.push_str(c.trim_end());
        }
        bundle.push('\n');
        let expires_at = data["expiration"]
            .as_i64()
            .and_then(|secs| jiff::Timestamp::from_second(secs).ok())
            .ok_or_else(|| {
                Error::unavailable(format!("Vault's answer for {what} has no expiration"))
            })?;
        let now = jiff::Timestamp::now();
        let duration = Duration::try_from(expires_at.duration_since(now)).unwrap_or_default();
        let mut out = BTreeMap::new();
        out.insert("tls.crt".to_string(), SecretValue::new(bundle));
        out.insert(
            "tls.key".to_string(),
            SecretValue::new(format!("{}\n", key.trim_end())),
        );
        out.insert(
            "ca.crt".to_string(),
            SecretValue::new(format!("{}\n", ca.trim_end())),
        );
        Ok(Fetched {
            data: out,
            version: serial.clone(),
            not_after: Some(expires_at),
            lease: Some(Lease {
                id: serial,
                duration,
                renewable: false,
                expires_at,
            }),
            ..Default::default()
        })
    }

    /// Waits for the connection's rate limit.
    async fn throttle(&self, connection: &str) {
        if let Some(c) = self.connections.get(connection) {
            c.limiter.acquire().await;
        }
    }
}

fn outcome<T>(result: &Result<T>) -> &'static str {
    if result.is_ok() { "ok" } else { "error" }
}

/// A JSON value as Secret bytes: strings as they are, anything else as JSON.
fn json_bytes(value: &Value) -> Vec<u8> {
    match value {
        Value::String(s) => s.clone().into_bytes(),
        Value::Null => Vec::new(),
        other => other.to_string().into_bytes(),
    }
}

/// The last segment of a lease id, as the source version.
fn short_id(lease_id: &str) -> String {
    lease_id.rsplit('/').next().unwrap_or(lease_id).to_string()
}

fn lease_from(body: &Value, what: &str) -> Result<Lease> {
    let id = body["lease_id"]
        .as_str()
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            Error::InvalidSpec(format!(
                "{what} returned no lease: is this a dynamic secrets engine?"
            ))
        })?;
    let seconds = body["lease_duration"].as_u64().unwrap_or(0);
    let duration = Duration::from_secs(seconds);
    let now = jiff::Timestamp::now();
    Ok(Lease {
        id: id.to_string(),
        duration,
        renewable: body["renewable"].as_bool().unwrap_or(false),
        expires_at: now
            .saturating_add(jiff::SignedDuration::from_secs(seconds as i64))
            .unwrap_or(now),
    })
}

fn default_kubernetes_mount(c: &VaultConnection) -> String {
    c.default_auth
        .as_ref()
        .map(|d| d.kubernetes.mount.clone())
        .unwrap_or_else(|| "kubernetes".into())
}

fn cache_entry(token: String, lease_seconds: u64, renewable: bool) -> CachedToken {
    // Tokens without a lease (root-like) are still re-checked hourly.
    let lease = if lease_seconds == 0 {
        3600
    } else {
        lease_seconds
    };
    let now = jiff::Timestamp::now();
    CachedToken {
        token,
        refresh_at: Instant::now() + Duration::from_secs(lease * 2 / 3),
        renewable,
        expires_at: (lease_seconds > 0)
            .then(|| {
                now.saturating_add(jiff::SignedDuration::from_secs(lease_seconds as i64))
                    .ok()
            })
            .flatten(),
    }
}

/// One key of a Secret in the resource's namespace (a secret-id or token).
async fn read_secret_key(
    kube: &kube::Client,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<String> {
    let api: Api<Secret> = Api::namespaced(kube.clone(), namespace);
    let secret = api.get_opt(name).await?.ok_or_else(|| {
        Error::AuthFailed(format!(
            "Secret {name:?} named in spec.vault.auth does not exist"
        ))
    })?;
    let value = secret
        .data
        .and_then(|mut d| d.remove(key))
        .ok_or_else(|| Error::AuthFailed(format!("Secret {name:?} has no key {key:?}")))?;
    String::from_utf8(value.0)
        .map(|s| s.trim().to_string())
        .map_err(|_| Error::AuthFailed(format!("key {key:?} of Secret {name:?} is not text")))
}

fn describe(identity: &Identity) -> String {
    match identity {
        Identity::Kubernetes {
            service_account,
            mount,
            role,
            ..
        } => format!("service account {service_account:?} with role {role:?} at auth/{mount}"),
        Identity::AppRole { mount, .. } => format!("AppRole at auth/{mount}"),
        Identity::Token { secret, .. } => format!("the token in Secret {:?}", secret.0),
    }
}

fn login_error(identity: &Identity, e: ClientError) -> Error {
    let who = describe(identity);
    match e {
        ClientError::APIError { code, errors } if code < 500 && code != 429 => {
            Error::AuthFailed(format!(
                "Vault refused the login as {who} ({code}: {}): check that the role exists and binds this service account and namespace",
                vault_words(&errors)
            ))
        }
        other => backend_error(&format!("login as {who}"), other),
    }
}

/// Maps a vaultrs error to a reason; the message keeps only status and Vault's words.
fn backend_error(what: &str, e: ClientError) -> Error {
    match e {
        ClientError::APIError { code, errors } => status_error(what, code, &errors),
        ClientError::RestClientError { .. } => {
            Error::unavailable(format!("Vault is unreachable while reading {what}"))
        }
        _ => Error::unavailable(format!("unexpected answer from Vault while reading {what}")),
    }
}

fn status_error(what: &str, code: u16, errors: &[String]) -> Error {
    let words = vault_words(errors);
    match code {
        403 => Error::AuthFailed(format!(
            "permission denied reading {what}: the Vault policy of this identity does not allow it{words}"
        )),
        404 => Error::NotFound(format!("{what} does not exist in Vault")),
        400 => Error::InvalidSpec(format!("Vault refused the request for {what}{words}")),
        _ => Error::unavailable(format!("Vault answered {code} for {what}{words}")),
    }
}

/// Vault's own error strings, bounded in length.
fn vault_words(errors: &[String]) -> String {
    if errors.is_empty() {
        return String::new();
    }
    let joined = errors.join("; ");
    let short: String = joined.chars().take(200).collect();
    format!(": {short}")
}

/// A reqwest error without the URL or any body.
fn without_url(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection refused".into()
    } else {
        "request failed".into()
    }
}
