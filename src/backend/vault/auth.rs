//! Logging in as the tenant, and the token cache.
//!
//! Each tenant identity (connection, namespace, service account, role) logs in once; the
//! token is cached and renewed while renewable, so a reconcile does not log in again.
//! Concurrent reconciles of one identity share a login.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::{Value, json};

use super::request::{Call, path};
use super::{VaultBackend, VaultRequest};
use crate::error::{Error, Result};

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

impl Identity {
    fn describe(&self) -> String {
        match self {
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
}

pub(super) struct CachedToken {
    token: String,
    /// When to renew or log in again (two thirds into the token's lease).
    refresh_at: Instant,
    renewable: bool,
    /// When the token ends; Vault revokes the leases it created then. `None` for tokens
    /// without a lease (such as a static token whose lifetime the operator cannot see).
    expires_at: Option<jiff::Timestamp>,
}

/// The cached token of one identity; its lock makes concurrent reconciles share a login.
pub(super) type TokenSlot = std::sync::Arc<tokio::sync::Mutex<Option<CachedToken>>>;

impl VaultBackend {
    fn slot(&self, request: &VaultRequest) -> TokenSlot {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens
            .entry((request.connection.clone(), request.identity.clone()))
            .or_default()
            .clone()
    }

    /// A Vault token of `request`'s identity, from the cache when possible.
    pub(super) async fn login(&self, request: &VaultRequest) -> Result<String> {
        let slot = self.slot(request);
        let mut cached = slot.lock().await;
        let conn = self.connection(&request.connection)?;
        if let Some(c) = cached.as_ref() {
            if Instant::now() < c.refresh_at {
                return Ok(c.token.clone());
            }
            if c.renewable {
                let renewed = conn
                    .call(
                        &self.metrics,
                        Call {
                            method: reqwest::Method::POST,
                            path: "auth/token/renew-self",
                            body: Some(json!({})),
                            token: Some(&c.token),
                            operation: "renew_token",
                            what: "the token renewal",
                        },
                    )
                    .await;
                if let Ok(entry) = renewed.and_then(|body| cache_entry(&body)) {
                    let token = entry.token.clone();
                    *cached = Some(entry);
                    return Ok(token);
                }
            }
        }
        let identity = &request.identity;
        let (mount, body) = match identity {
            Identity::Kubernetes {
                namespace,
                service_account,
                mount,
                role,
            } => {
                let jwt = super::super::service_account_token(
                    &self.kube,
                    namespace,
                    service_account,
                    &conn.config.token_audience,
                )
                .await?;
                (mount, json!({"role": role, "jwt": jwt}))
            }
            Identity::AppRole {
                namespace,
                mount,
                role_id,
                secret,
            } => {
                let secret_id =
                    read_secret_key(&self.kube, namespace, &secret.0, &secret.1).await?;
                (mount, json!({"role_id": role_id, "secret_id": secret_id}))
            }
            Identity::Token { namespace, secret } => {
                let token = read_secret_key(&self.kube, namespace, &secret.0, &secret.1).await?;
                // A static token is used as given and re-read from its Secret each minute.
                *cached = Some(CachedToken {
                    token: token.clone(),
                    refresh_at: Instant::now() + Duration::from_secs(60),
                    renewable: false,
                    expires_at: None,
                });
                return Ok(token);
            }
        };
        let login_path = path(&["auth", mount.as_str(), "login"])?;
        let what = format!("the login as {}", identity.describe());
        let answer = conn
            .call(
                &self.metrics,
                Call {
                    method: reqwest::Method::POST,
                    path: &login_path,
                    body: Some(body),
                    token: None,
                    operation: "login",
                    what: &what,
                },
            )
            .await
            .map_err(|e| match e {
                Error::InvalidSpec(m) | Error::NotFound(m) | Error::AuthFailed(m) => {
                    Error::AuthFailed(format!(
                        "Vault refused {what} ({m}): check that the role exists and binds this service account and namespace"
                    ))
                }
                other => other,
            })?;
        let entry = cache_entry(&answer)?;
        let token = entry.token.clone();
        *cached = Some(entry);
        Ok(token)
    }

    /// When the cached token of an identity ends, if it has an end.
    pub(super) async fn token_expiry(&self, request: &VaultRequest) -> Option<jiff::Timestamp> {
        let slot = {
            let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
            tokens
                .get(&(request.connection.clone(), request.identity.clone()))?
                .clone()
        };
        slot.lock().await.as_ref().and_then(|c| c.expires_at)
    }

    /// Drops the cached tokens of identities no live request uses, and revokes those
    /// tokens (`auth/token/revoke-self`), so neither the cache nor Vault keeps a token
    /// nobody needs. A failed revocation is logged; the token then ends with its TTL.
    pub(super) async fn retain_tokens(&self, live: &[VaultRequest]) {
        let live: std::collections::HashSet<(&str, &Identity)> = live
            .iter()
            .map(|r| (r.connection.as_str(), &r.identity))
            .collect();
        let gone: Vec<((String, Identity), TokenSlot)> = {
            let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
            let unused: std::collections::HashSet<(String, Identity)> = tokens
                .keys()
                .filter(|(c, i)| !live.contains(&(c.as_str(), i)))
                .cloned()
                .collect();
            // Unused at two passes in a row: a resource created between the snapshot of
            // live resources and this pass is never left with a revoked token.
            let mut before = self.unused_tokens.lock().unwrap_or_else(|p| p.into_inner());
            let gone_keys: Vec<(String, Identity)> = unused
                .iter()
                .filter(|k| before.contains(*k))
                .cloned()
                .collect();
            *before = unused;
            for k in &gone_keys {
                before.remove(k);
            }
            let gone: Vec<_> = gone_keys
                .into_iter()
                .filter_map(|k| tokens.remove(&k).map(|slot| (k, slot)))
                .collect();
            crate::janitor::shrink(&mut tokens);
            gone
        };
        // The revocations run on their own: housekeeping may be stopped with its
        // generation of controllers (`crate::rebuild`), and a token taken out of the
        // cache must still be revoked.
        let mut revocations = Vec::new();
        for ((connection, identity), slot) in gone {
            let cached = slot.lock().await.take();
            // A static token belongs to its Secret's owner: it is forgotten, never revoked.
            let Some(cached) = cached.filter(|_| !matches!(identity, Identity::Token { .. }))
            else {
                continue;
            };
            let Ok(conn) = self.connection(&connection) else {
                continue;
            };
            revocations.push((conn.clone(), identity, cached.token));
        }
        if revocations.is_empty() {
            return;
        }
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            for (conn, identity, token) in revocations {
                let revoked = conn
                    .call(
                        &metrics,
                        Call {
                            method: reqwest::Method::POST,
                            path: "auth/token/revoke-self",
                            body: Some(json!({})),
                            token: Some(&token),
                            operation: "revoke_token",
                            what: "the revocation of an unused token",
                        },
                    )
                    .await;
                if let Err(e) = revoked {
                    tracing::info!(identity = %identity.describe(), error = %e, "could not revoke an unused Vault token; it ends with its TTL");
                }
            }
        });
    }

    /// Drops the cached token of an identity, after Vault refused it or before a login
    /// that must be fresh.
    pub(super) fn forget(&self, request: &VaultRequest) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.remove(&(request.connection.clone(), request.identity.clone()));
    }
}

/// The cache entry for a login or renewal answer (`auth.client_token` and its lease).
fn cache_entry(answer: &Value) -> Result<CachedToken> {
    let auth = &answer["auth"];
    let token = auth["client_token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::AuthFailed("Vault's login answer holds no token".into()))?;
    let lease_seconds = auth["lease_duration"].as_u64().unwrap_or(0);
    // Tokens without a lease (root-like) are still re-checked hourly.
    let lease = if lease_seconds == 0 {
        3600
    } else {
        lease_seconds
    };
    let now = jiff::Timestamp::now();
    Ok(CachedToken {
        token: token.to_string(),
        refresh_at: Instant::now() + Duration::from_secs(lease * 2 / 3),
        renewable: auth["renewable"].as_bool().unwrap_or(false),
        expires_at: (lease_seconds > 0)
            .then(|| {
                now.saturating_add(jiff::SignedDuration::from_secs(lease_seconds as i64))
                    .ok()
            })
            .flatten(),
    })
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
