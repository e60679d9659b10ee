//! Azure Key Vault: log in as the resource's identity (`auth`), read one object through
//! the official SDK with per-vault limits and coalescing (`client`), and turn what was
//! read into Secret data (`material`, pure).

mod auth;
mod client;
pub mod material;
mod throttle;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

pub use auth::{CLIENT_ID_ANNOTATION, FEDERATED_AUDIENCE, Identity};
pub use client::Connection;
use client::{ObjectRef, Read};

use super::{Backend, Fresh, Lease, Material, Prior, SecretValue};
use crate::api::{
    AzureContentType, AzureKeyVaultSecret, AzureKeyVaultSecretSpec, AzureObjectType, ChainOrder,
    SecretTarget, SyncPolicy, SyncStatus, Transform,
};
use crate::config::Config;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::sync::SyncedResource;

/// The Secret type written for a certificate without a `dataKey`.
const TLS: &str = "kubernetes.io/tls";

/// An AzureKeyVaultSecret resolved against the operator config.
#[derive(Clone, Debug)]
pub struct AzureRequest {
    pub connection: String,
    pub vault_url: String,
    pub identity: Identity,
    pub object_type: AzureObjectType,
    pub object: ObjectRef,
    pub content_type: Option<AzureContentType>,
    pub transforms: Vec<Transform>,
    /// Key of a single value; `None` for a certificate written as `kubernetes.io/tls`
    /// and for multi-key-value secrets.
    pub data_key: Option<String>,
    pub chain_order: Option<ChainOrder>,
    /// `output.configMap`'s key: the data is the public part only (a certificate's chain,
    /// a key's public key), for a ConfigMap.
    pub public_key: Option<String>,
}

/// The Azure backend: connections from the config and credentials per identity.
pub struct AzureBackend {
    kube: kube::Client,
    connections: BTreeMap<String, Connection>,
    credentials: auth::Credentials,
    metrics: Arc<Metrics>,
}

impl AzureBackend {
    pub fn new(kube: kube::Client, config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        for (name, c) in &config.azure {
            if let Some(d) = &c.default_auth
                && let Some(client_id) = &d.workload_identity.client_id
                && !client_id.contains("{namespace}")
            {
                tracing::warn!(
                    connection = %name,
                    client_id = %client_id,
                    "azure.{name}.defaultAuth.workloadIdentity.clientId names one app registration for every namespace: each namespace's default service account reads as it, so any namespace reads what it may; use {{namespace}} in it for one identity per namespace"
                );
            }
        }
        let connections = config
            .azure
            .iter()
            .map(|(name, c)| Ok((name.clone(), Connection::new(name, c)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            kube,
            connections,
            credentials: auth::Credentials::default(),
            metrics,
        })
    }

    fn connection(&self, name: &str) -> Result<&Connection> {
        self.connections.get(name).ok_or_else(|| {
            Error::InvalidSpec(format!(
                "there is no Azure connection {name:?} in the operator's configuration; known: {:?}",
                self.connections.keys().collect::<Vec<_>>()
            ))
        })
    }

    /// Credentials cached now, for tests of housekeeping.
    pub fn cached_credentials(&self) -> usize {
        self.credentials.len()
    }
}

impl Backend for AzureBackend {
    type Source = AzureKeyVaultSecretSpec;
    type Request = AzureRequest;

    fn resolve(&self, namespace: &str, spec: &AzureKeyVaultSecretSpec) -> Result<AzureRequest> {
        let connection = spec
            .vault
            .connection
            .clone()
            .unwrap_or_else(|| "default".into());
        let conn = self.connection(&connection)?;
        let identity = auth::identity(namespace, conn, spec.vault.auth.as_ref())?;
        request(connection, conn, identity, spec)
    }

    fn issues(_: &AzureRequest) -> bool {
        false
    }

    fn needs_finalizer(_: &AzureRequest) -> bool {
        false
    }

    async fn fetch(&self, request: &AzureRequest, _: Prior<'_>) -> Result<Material> {
        let conn = self.connection(&request.connection)?;
        let result = async {
            let credential = self
                .credentials
                .get(&self.kube, conn, &request.identity)
                .await?;
            read(conn, &self.metrics, request, credential).await
        }
        .await;
        if let Err(Error::AuthFailed(_)) = &result {
            // A changed client secret or a revoked grant: build the credential afresh.
            self.credentials
                .forget(&request.connection, &request.identity);
            conn.forget(&request.identity);
        }
        result.map(Material::Fresh)
    }

    async fn retain(&self, live: &[AzureRequest]) {
        let identities: HashSet<(String, Identity)> = live
            .iter()
            .map(|r| (r.connection.clone(), r.identity.clone()))
            .collect();
        self.credentials.retain(&identities);
        for (name, conn) in &self.connections {
            let used: HashSet<(String, Identity)> = live
                .iter()
                .filter(|r| &r.connection == name)
                .map(|r| (r.vault_url.clone(), r.identity.clone()))
                .collect();
            conn.retain(&used);
        }
    }

    async fn release(&self, _: &AzureRequest, _: &Lease) -> Result<()> {
        // Key Vault objects are read, never issued: there is nothing to give back.
        Ok(())
    }
}

/// The request of an AzureKeyVaultSecret spec read as `identity` through `conn` (named
/// `connection`). Pure: also what injection resolves a pod's references with.
pub fn request(
    connection: String,
    conn: &Connection,
    identity: Identity,
    spec: &AzureKeyVaultSecretSpec,
) -> Result<AzureRequest> {
    let object = &spec.vault.object;
    // The schema says so too; checked again here for what bypasses it (`vaultsync
    // check` reads a file, and an object stored under an older schema).
    for (field, name) in [
        ("spec.vault.name", &spec.vault.name),
        ("spec.vault.object.name", &object.name),
    ] {
        if name.is_empty()
            || name.len() > 127
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(Error::InvalidSpec(format!(
                "{field} must be 1 to 127 letters, digits and '-'"
            )));
        }
    }
    let version = object.version.clone().filter(|v| !v.is_empty());
    if let Some(v) = &version
        && !(v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(Error::InvalidSpec(format!(
            "spec.vault.object.version {v:?} is not a Key Vault version (32 hexadecimal characters)"
        )));
    }
    let output = spec.output.clone().unwrap_or_default();
    let public_key = match &output.config_map {
        Some(_) if output.secret.is_some() => {
            return Err(Error::InvalidSpec(
                "set one of spec.output.secret and spec.output.configMap".into(),
            ));
        }
        Some(config_map) => {
            material::config_map_allowed(object.type_)?;
            Some(config_map.data_key.clone())
        }
        None => None,
    };
    let target = output.secret.unwrap_or_default();
    let data_key = target.data_key.clone();
    let tls = target.secret.type_.as_deref() == Some(TLS)
        || (object.type_ == AzureObjectType::Certificate && data_key.is_none());
    match object.type_ {
        AzureObjectType::Secret | AzureObjectType::Key
            if data_key.is_none() && public_key.is_none() =>
        {
            return Err(Error::InvalidSpec(
                "spec.output.secret.dataKey is required for a secret or key object: it names the Secret key the value is written under".into(),
            ));
        }
        AzureObjectType::Secret | AzureObjectType::Key | AzureObjectType::MultiKeyValueSecret
            if tls =>
        {
            return Err(Error::InvalidSpec(
                "only a certificate object can be written as a kubernetes.io/tls Secret".into(),
            ));
        }
        _ => {}
    }
    Ok(AzureRequest {
        vault_url: conn.vault_url(&spec.vault.name.to_ascii_lowercase()),
        connection,
        identity,
        object_type: object.type_,
        object: ObjectRef {
            key: object.type_ == AzureObjectType::Key,
            kind: match object.type_ {
                AzureObjectType::Secret => "secret",
                AzureObjectType::Certificate => "certificate",
                AzureObjectType::Key => "key",
                AzureObjectType::MultiKeyValueSecret => "multi-key-value secret",
            },
            name: object.name.clone(),
            version,
        },
        content_type: object.content_type,
        transforms: output.transform.unwrap_or_default(),
        data_key: if tls { None } else { data_key },
        chain_order: target.chain_order,
        public_key,
    })
}

/// Reads the request's object as `credential` and shapes it into Secret data: the
/// backend's read, also what injection resolves a pod's references with.
pub async fn read(
    conn: &Connection,
    metrics: &Arc<Metrics>,
    request: &AzureRequest,
    credential: Arc<dyn azure_core::credentials::TokenCredential>,
) -> Result<Fresh> {
    let read = conn
        .read(
            metrics,
            &request.vault_url,
            &request.identity,
            credential,
            &request.object,
        )
        .await
        .map_err(|e| e.with_context(|m| format!("{m} (as {})", request.identity.describe())))?;
    // Decoding a PKCS#12 or checking a chain is CPU work: off the async workers.
    let owned = request.clone();
    tokio::task::spawn_blocking(move || shape(&owned, &read))
        .await
        .map_err(|e| Error::unavailable(format!("decoding what Key Vault returned failed: {e}")))?
}

/// Pure: what was read becomes the Secret's data, as the request asks; for a ConfigMap
/// (`public_key`), a certificate's chain or a key's public key only.
fn shape(request: &AzureRequest, read: &Read) -> Result<Fresh> {
    // A ConfigMap's data: the public part only (resolve allows it for these two types).
    let public =
        |object: material::ReadObject<'_>, key: &str| -> Result<BTreeMap<String, SecretValue>> {
            Ok(material::config_map_data(object, key)?
                .into_iter()
                .map(|(k, v)| (k, SecretValue::new(v.into_bytes())))
                .collect())
        };
    let single = |value: Vec<u8>| -> Result<BTreeMap<String, SecretValue>> {
        let value = material::apply_transforms(value, &request.transforms)?;
        let key = request.data_key.clone().unwrap_or_default();
        Ok(BTreeMap::from([(key, SecretValue::new(value))]))
    };
    let (data, version, not_after) = match (request.object_type, read) {
        (AzureObjectType::Secret, Read::Secret { value, version, .. }) => {
            (single(value.expose().to_vec())?, version, None)
        }
        (AzureObjectType::MultiKeyValueSecret, Read::Secret { value, version, .. }) => {
            // As akv2k8s does, transforms apply to the stored value before it is parsed
            // (a base64-encoded document, for example).
            let raw = material::apply_transforms(value.expose().to_vec(), &request.transforms)?;
            let text = String::from_utf8(raw).map_err(|_| {
                Error::InvalidData(format!(
                    "secret {:?} is not UTF-8 text, so not JSON or YAML",
                    request.object.name
                ))
            })?;
            let content_type = request.content_type.unwrap_or(AzureContentType::Json);
            (
                material::multi_key_value(&text, content_type)?,
                version,
                None,
            )
        }
        (
            AzureObjectType::Certificate,
            Read::Secret {
                value,
                content_type,
                version,
            },
        ) => {
            let cert = certificate(request, value, content_type.as_deref())?;
            let data = match (&request.public_key, &request.data_key) {
                (Some(key), _) => public(material::ReadObject::Certificate(&cert), key)?,
                (None, None) => cert.tls_data()?,
                (None, Some(key)) => BTreeMap::from([(key.clone(), cert.pem_bundle())]),
            };
            (data, version, cert.not_after)
        }
        (AzureObjectType::Key, Read::Key { jwk, version }) => {
            let data = match &request.public_key {
                Some(key) => public(material::ReadObject::Key(jwk), key)?,
                None => single(material::public_key_pem(jwk)?.into_bytes())?,
            };
            (data, version, None)
        }
        _ => {
            return Err(Error::unavailable(
                "Key Vault returned a different kind of object than was asked for",
            ));
        }
    };
    Ok(Fresh {
        data,
        version: version.clone(),
        lease: None,
        not_after,
    })
}

/// A certificate's secret, decoded and its chain checked.
fn certificate(
    request: &AzureRequest,
    value: &SecretValue,
    content_type: Option<&str>,
) -> Result<material::Certificate> {
    let text = std::str::from_utf8(value.expose()).map_err(|_| {
        Error::InvalidData(format!(
            "the secret of certificate {:?} is not text (base64 PKCS#12 or PEM)",
            request.object.name
        ))
    })?;
    material::certificate(text, content_type, request.chain_order)
}

impl SyncedResource for AzureKeyVaultSecret {
    const KIND: &'static str = "AzureKeyVaultSecret";
    type Backend = AzureBackend;

    fn backend(ctx: &Context) -> &AzureBackend {
        &ctx.azure
    }

    fn source(&self) -> &AzureKeyVaultSecretSpec {
        &self.spec
    }

    fn config_map(&self) -> Option<String> {
        let output = self.spec.output.as_ref()?;
        output
            .config_map
            .as_ref()
            .filter(|_| output.secret.is_none())
            .map(|c| c.name.clone())
    }

    fn writes_secret(&self) -> bool {
        // akv2k8s: a resource without an output is read by the env-injector only.
        self.spec.output.is_some()
    }

    fn target(&self) -> SecretTarget {
        let output = self.spec.output.as_ref().and_then(|o| o.secret.as_ref());
        let mut target = output.map(|o| o.secret.clone()).unwrap_or_default();
        if self.spec.vault.object.type_ == AzureObjectType::Certificate
            && output.and_then(|o| o.data_key.as_ref()).is_none()
            && target.type_.is_none()
        {
            target.type_ = Some(TLS.into());
        }
        target
    }

    fn policy(&self) -> &SyncPolicy {
        &self.spec.policy
    }

    fn status(&self) -> Option<&SyncStatus> {
        self.status.as_ref()
    }
}
