//! HashiCorp Vault / OpenBao: log in as the tenant (`auth`), read KV v1/v2 (`kv`), issue
//! and keep database credentials under leases (`leases`), and issue certificates (`pki`).
//! Every call goes through one request function (`request`).

mod auth;
mod kv;
mod leases;
mod pki;
mod request;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde_json::Value;

pub use auth::Identity;
use request::{Call, Connection};

use super::{Backend, Lease, Material, Prior};
use crate::api::{
    DatabaseSource, KvSource, PkiSource, SecretTarget, SyncPolicy, SyncStatus, VaultAuth,
    VaultSecret, VaultSource,
};
use crate::config::Config;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::sync::SyncedResource;

/// What a VaultSecret reads: one source, validated once.
#[derive(Clone, Debug)]
pub enum Source {
    Kv(KvSource),
    Database(DatabaseSource),
    Pki(PkiSource),
}

/// A VaultSecret resolved against the operator config: which connection, as whom, what.
#[derive(Clone, Debug)]
pub struct VaultRequest {
    pub connection: String,
    pub identity: Identity,
    pub source: Source,
}

/// The Vault backend: connections from the config, a token cache and KV mount versions.
pub struct VaultBackend {
    kube: kube::Client,
    /// Shared with the revocations that run on after a housekeeping pass.
    connections: BTreeMap<String, Arc<Connection>>,
    tokens: Mutex<HashMap<(String, Identity), auth::TokenSlot>>,
    /// Identities whose token no resource used at the last `retain`.
    unused_tokens: Mutex<std::collections::HashSet<(String, Identity)>>,
    kv_versions: Mutex<HashMap<(String, String), u8>>,
    metrics: Arc<Metrics>,
}

impl VaultBackend {
    pub fn new(kube: kube::Client, config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let connections = config
            .vault
            .iter()
            .map(|(name, c)| Ok((name.clone(), Arc::new(Connection::new(name, c)?))))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            kube,
            connections,
            tokens: Mutex::default(),
            unused_tokens: Mutex::default(),
            kv_versions: Mutex::default(),
            metrics,
        })
    }

    /// One call to Vault through the request's connection.
    async fn call(&self, request: &VaultRequest, call: Call<'_>) -> Result<Value> {
        self.connection(&request.connection)?
            .call(&self.metrics, call)
            .await
    }

    fn connection(&self, name: &str) -> Result<&Arc<Connection>> {
        self.connections.get(name).ok_or_else(|| {
            Error::InvalidSpec(format!(
                "there is no Vault connection {name:?} in the operator's configuration; known: {:?}",
                self.connections.keys().collect::<Vec<_>>()
            ))
        })
    }
}

impl Backend for VaultBackend {
    type Source = VaultSource;
    type Request = VaultRequest;

    fn resolve(&self, namespace: &str, spec: &VaultSource) -> Result<VaultRequest> {
        let connection = spec.connection.clone().unwrap_or_else(|| "default".into());
        let conn = self.connection(&connection)?;
        let default_mount = || {
            conn.config
                .default_auth
                .as_ref()
                .map(|d| d.kubernetes.mount.clone())
                .unwrap_or_else(|| "kubernetes".into())
        };
        let identity = match &spec.auth {
            Some(VaultAuth {
                kubernetes: Some(k),
                ..
            }) => Identity::Kubernetes {
                namespace: namespace.into(),
                service_account: k
                    .service_account_name
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                mount: k.mount.clone().unwrap_or_else(default_mount),
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
        if let Identity::Kubernetes { mount, .. } | Identity::AppRole { mount, .. } = &identity {
            request::path(&[mount.as_str()])?;
        }
        let source = match (&spec.kv, &spec.database, &spec.pki) {
            (Some(kv), None, None) => {
                request::path(&[kv.mount.as_str(), kv.path.as_str()])?;
                Source::Kv(kv.clone())
            }
            (None, Some(db), None) => {
                request::path(&[db.mount.as_str(), db.role.as_str()])?;
                Source::Database(db.clone())
            }
            (None, None, Some(pki)) => {
                request::path(&[pki.mount.as_str(), pki.role.as_str()])?;
                Source::Pki(pki.clone())
            }
            _ => {
                return Err(Error::InvalidSpec(
                    "set exactly one source: spec.vault.kv, spec.vault.database or spec.vault.pki"
                        .into(),
                ));
            }
        };
        Ok(VaultRequest {
            connection,
            identity,
            source,
        })
    }

    fn issues(request: &VaultRequest) -> bool {
        !matches!(request.source, Source::Kv(_))
    }

    fn needs_finalizer(request: &VaultRequest) -> bool {
        matches!(request.source, Source::Database(_))
    }

    async fn fetch(&self, request: &VaultRequest, prior: Prior<'_>) -> Result<Material> {
        let result = match &request.source {
            Source::Kv(kv) => self.fetch_kv(request, kv).await.map(Material::Fresh),
            Source::Database(db) => self.fetch_database(request, db, prior).await,
            Source::Pki(pki) => self.fetch_certificate(request, pki, prior).await,
        };
        if let Err(Error::AuthFailed(_)) = &result {
            // The cached token may have been revoked: log in afresh next time.
            self.forget(request);
        }
        result
    }

    async fn retain(&self, live: &[VaultRequest]) {
        let mounts: std::collections::HashSet<(String, String)> = live
            .iter()
            .filter_map(|r| match &r.source {
                Source::Kv(kv) => Some((r.connection.clone(), kv.mount.clone())),
                _ => None,
            })
            .collect();
        {
            let mut versions = self.kv_versions.lock().unwrap_or_else(|p| p.into_inner());
            versions.retain(|key, _| mounts.contains(key));
            crate::janitor::shrink(&mut versions);
        }
        self.retain_tokens(live).await;
    }

    async fn release(&self, request: &VaultRequest, lease: &Lease) -> Result<()> {
        let own = match &request.source {
            Source::Database(db) => lease.id.starts_with(&leases::lease_prefix(db)),
            // After a spec change the lease belongs to the previous source.
            Source::Kv(_) | Source::Pki(_) => true,
        };
        let result = match &request.source {
            Source::Pki(pki) if pki::is_serial(&lease.id) => {
                if pki.revoke_on_rotate != Some(true) {
                    // A replaced certificate ends on its own unless asked otherwise.
                    return Ok(());
                }
                self.revoke_certificate(request, pki, &lease.id).await
            }
            _ if own && leases::is_credentials_lease(&lease.id) => {
                self.revoke_lease(request, &lease.id).await
            }
            _ => {
                tracing::warn!(
                    lease = %lease.id,
                    "not revoking a lease recorded in status that this resource did not issue"
                );
                return Ok(());
            }
        };
        if let Err(Error::AuthFailed(_)) = &result {
            self.forget(request);
        }
        result
    }
}

impl SyncedResource for VaultSecret {
    const KIND: &'static str = "VaultSecret";
    type Backend = VaultBackend;

    fn backend(ctx: &Context) -> &VaultBackend {
        &ctx.vault
    }

    fn source(&self) -> &VaultSource {
        &self.spec.vault
    }

    fn target(&self) -> SecretTarget {
        let mut target = self
            .spec
            .output
            .as_ref()
            .and_then(|o| o.secret.clone())
            .unwrap_or_default();
        if self.spec.vault.pki.is_some() && target.type_.is_none() {
            target.type_ = Some("kubernetes.io/tls".into());
        }
        target
    }

    fn policy(&self) -> &SyncPolicy {
        &self.spec.policy
    }

    fn status(&self) -> Option<&SyncStatus> {
        self.status.as_ref()
    }

    fn renewal_percent(&self) -> u8 {
        self.spec
            .renewal_percent
            .and_then(|p| u8::try_from(p).ok())
            .unwrap_or(67)
            .clamp(1, 90)
    }
}

/// A JSON value as Secret bytes: strings as they are, anything else as JSON.
fn json_bytes(value: &Value) -> Vec<u8> {
    match value {
        Value::String(s) => s.clone().into_bytes(),
        Value::Null => Vec::new(),
        other => other.to_string().into_bytes(),
    }
}
