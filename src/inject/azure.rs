//! Azure Key Vault references of pod injection, in akv2k8s' env-injector syntax:
//! `NAME@azurekeyvault` or `NAME@azurekeyvault?KEY`, where NAME is an
//! AzureKeyVaultSecret of the pod's namespace (its vault, object, version, transforms and
//! chain order; its `output` name and `auth` are not used) and KEY one of the keys its
//! Secret would hold (`tls.key`, a multi-key-value secret's key, ...).
//!
//! The webhook ([`plan`]) reads those resources and the pod's service account, and tells
//! the wrapper, in `VAULTSYNC_AZURE_*` variables, the connection's URL template,
//! authority, tenant and CA (from the operator config) and the client id the service
//! account is annotated with. The wrapper ([`Azure`]) exchanges the pod's own projected
//! token through the federated flow and reads each object once, as the backend does.
//! The identity is always the pod's own service account: an AzureKeyVaultSecret's
//! `auth` never lends a pod another identity.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail};
use azure_core::credentials::TokenCredential;
use azure_core::http::ClientMethodOptions;
use azure_identity::{
    ClientAssertion, ClientAssertionCredential, ClientAssertionCredentialOptions,
};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::Api;
use serde_json::{Value, json};

use crate::api::{
    AzureKeyVaultSecret, AzureKeyVaultSecretSpec, AzureObjectType, AzureOutput, AzureSecretTarget,
};
use crate::backend::azure::{self, CLIENT_ID_ANNOTATION, Connection, Identity};
use crate::config::{AzureConnection, AzureCredentialKind, Config};

/// What marks a reference, after the AzureKeyVaultSecret's name.
pub const SUFFIX: &str = "@azurekeyvault";
/// The connection's `vaultUrlTemplate`.
pub const ENV_URL_TEMPLATE: &str = "VAULTSYNC_AZURE_VAULT_URL_TEMPLATE";
/// The connection's `authorityHost`.
pub const ENV_AUTHORITY: &str = "VAULTSYNC_AZURE_AUTHORITY_HOST";
pub const ENV_TENANT: &str = "VAULTSYNC_AZURE_TENANT_ID";
/// The app registration the pod's service account is annotated with.
pub const ENV_CLIENT_ID: &str = "VAULTSYNC_AZURE_CLIENT_ID";
/// `namespace/name` of the pod's service account, for messages.
pub const ENV_SERVICE_ACCOUNT: &str = "VAULTSYNC_AZURE_SERVICE_ACCOUNT";
/// The projected token for the federated flow (audience `api://AzureADTokenExchange`).
pub const ENV_TOKEN_FILE: &str = "VAULTSYNC_AZURE_TOKEN_FILE";
/// PEM CA bundle of the connection (its `caFile`'s content), if any.
pub const ENV_CACERT: &str = "VAULTSYNC_AZURE_CACERT";
/// JSON: AzureKeyVaultSecret name to the part of its spec that says what to read.
pub const ENV_OBJECTS: &str = "VAULTSYNC_AZURE_OBJECTS";
/// The tenant annotation of Azure Workload Identity.
const TENANT_ANNOTATION: &str = "azure.workload.identity/tenant-id";
/// AzureKeyVaultSecrets one pod may reference: each is read from the apiserver at
/// admission, with the operator's identity that every tenant's syncs share.
const MAX_RESOURCES: usize = 32;
/// The data key a single value is shaped under (the key a reference without `?KEY` reads).
const SINGLE: &str = "value";

/// One reference: the variable, the AzureKeyVaultSecret and the key asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzureRef {
    pub var: String,
    pub name: String,
    pub key: Option<String>,
}

/// `NAME@azurekeyvault[?KEY]` as (NAME, KEY); `None` when the value is not a reference.
pub fn parse(var: &str, value: &str) -> Option<Result<AzureRef, String>> {
    let (name, key) = match value.split_once('?') {
        Some((head, key)) => (head.strip_suffix(SUFFIX)?, Some(key)),
        None => (value.strip_suffix(SUFFIX)?, None),
    };
    // A DNS-1123 subdomain, as Kubernetes names objects.
    let dns = |s: &str| {
        let label = |l: &str| {
            let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
            l.bytes().next().is_some_and(alnum)
                && l.bytes().last().is_some_and(alnum)
                && l.bytes().all(|b| alnum(b) || b == b'-')
        };
        s.len() <= 253 && s.split('.').all(label)
    };
    let secret_key = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    Some(if !dns(name) {
        Err(format!(
            "{var}: {SUFFIX} references name an AzureKeyVaultSecret of the pod's namespace (lowercase letters, digits, '-' and '.'), as NAME{SUFFIX} or NAME{SUFFIX}?KEY"
        ))
    } else if key.is_some_and(|k| !secret_key(k)) {
        Err(format!(
            "{var}: the key after '?' must be a Secret key (letters, digits, '-', '_' and '.')"
        ))
    } else {
        Ok(AzureRef {
            var: var.to_string(),
            name: name.to_string(),
            key: key.map(str::to_string),
        })
    })
}

/// The references among environment variables (vaultsync's own excepted).
pub fn from_env(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> anyhow::Result<Vec<AzureRef>> {
    let mut refs = Vec::new();
    for (name, value) in vars {
        let (Some(name), Some(value)) = (name.to_str(), value.to_str()) else {
            continue;
        };
        if name.starts_with(super::ENV_PREFIX) {
            continue;
        }
        if let Some(parsed) = parse(name, value) {
            refs.push(parsed.map_err(|e| anyhow!(e))?);
        }
    }
    Ok(refs)
}

// --- The webhook ----------------------------------------------------------------------

/// The wrapper's `VAULTSYNC_AZURE_*` variables for a pod whose containers hold `refs`
/// (AzureKeyVaultSecret names), read as the pod's service account. `Err` refuses the pod
/// with a message for the person who applied it.
pub async fn plan(
    client: &kube::Client,
    config: &Config,
    namespace: &str,
    pod: &Value,
    names: &[String],
) -> Result<Vec<Value>, String> {
    if names.len() > MAX_RESOURCES {
        return Err(format!(
            "the pod references {} AzureKeyVaultSecrets; at most {MAX_RESOURCES} are read at admission",
            names.len()
        ));
    }
    let api: Api<AzureKeyVaultSecret> = Api::namespaced(client.clone(), namespace);
    let mut objects = BTreeMap::new();
    let mut connection: Option<String> = None;
    for name in names {
        let resource = api
            .get_opt(name)
            .await
            .map_err(|e| format!("cannot read AzureKeyVaultSecret {namespace}/{name}: {e}"))?;
        let spec = resource
            .ok_or_else(|| {
                format!(
                    "no AzureKeyVaultSecret {name:?} in namespace {namespace}: {name}{SUFFIX} names one of the pod's namespace"
                )
            })?
            .spec;
        let this = spec
            .vault
            .connection
            .clone()
            .unwrap_or_else(|| "default".into());
        match &connection {
            Some(first) if *first != this => {
                return Err(format!(
                    "the pod's {SUFFIX} references use Azure connections {first:?} and {this:?}: one pod reads through one connection"
                ));
            }
            _ => connection = Some(this),
        }
        objects.insert(name.clone(), what_to_read(spec));
    }
    let connection = connection.unwrap_or_else(|| "default".into());
    let conn = config.azure.get(&connection).ok_or_else(|| {
        format!("no Azure connection {connection:?} in the operator's configuration")
    })?;
    if !conn
        .allowed_credentials
        .contains(&AzureCredentialKind::WorkloadIdentity)
    {
        return Err(format!(
            "Azure connection {connection:?} does not allow workloadIdentity, the only way an injected pod reads Key Vault (as its own service account)"
        ));
    }
    let account = pod["spec"]["serviceAccountName"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    let annotations = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .get_opt(account)
        .await
        .map_err(|e| format!("cannot read service account {namespace}/{account}: {e}"))?
        .ok_or_else(|| format!("service account {namespace}/{account} does not exist"))?
        .metadata
        .annotations
        .unwrap_or_default();
    let annotated = |key: &str| annotations.get(key).filter(|v| !v.is_empty()).cloned();
    // As the sync path decides (`backend::azure::auth::identity`): the connection's
    // default identity, when it is this account and names its app registration, is the
    // admin's mapping; otherwise the account's own annotations.
    let default = conn
        .default_auth
        .as_ref()
        .map(|d| &d.workload_identity)
        .filter(|w| w.service_account_name == account);
    let client_id = default
        .and_then(|w| w.client_id.as_ref())
        .map(|c| c.replace("{namespace}", namespace))
        .or_else(|| annotated(CLIENT_ID_ANNOTATION))
        .ok_or_else(|| {
            format!(
                "service account {namespace}/{account} has no {CLIENT_ID_ANNOTATION} annotation: annotate it with the client id of the app registration that trusts it"
            )
        })?;
    let tenant = default
        .and_then(|w| w.tenant_id.clone())
        .or_else(|| annotated(TENANT_ANNOTATION))
        .or_else(|| conn.tenant_id.clone())
        .ok_or_else(|| {
            format!(
                "Azure connection {connection:?} has no tenantId and service account {namespace}/{account} no {TENANT_ANNOTATION} annotation"
            )
        })?;
    let mut env = vec![
        json!({"name": ENV_URL_TEMPLATE, "value": conn.vault_url_template}),
        json!({"name": ENV_AUTHORITY, "value": conn.authority_host}),
        json!({"name": ENV_TENANT, "value": tenant}),
        json!({"name": ENV_CLIENT_ID, "value": client_id}),
        json!({"name": ENV_SERVICE_ACCOUNT, "value": format!("{namespace}/{account}")}),
        json!({"name": ENV_OBJECTS, "value": serde_json::to_string(&objects).unwrap_or_default()}),
    ];
    if let Some(path) = &conn.ca_file {
        let pem = std::fs::read_to_string(path).map_err(|e| {
            format!("the operator cannot read Azure connection {connection:?}'s caFile: {e}")
        })?;
        env.push(json!({"name": ENV_CACERT, "value": pem}));
    }
    Ok(env)
}

/// The part of a spec that says what to read and how to shape it: its vault and object,
/// transforms and chain order, a certificate's `kubernetes.io/tls` keys, and a single
/// value under one known key. Nothing about the Secret it would write, nor its `auth`.
fn what_to_read(mut spec: AzureKeyVaultSecretSpec) -> AzureKeyVaultSecretSpec {
    spec.vault.auth = None;
    spec.vault.azure_identity = None;
    let output = spec.output.take().unwrap_or_default();
    let target = output.secret.unwrap_or_default();
    let data_key = match spec.vault.object.type_ {
        AzureObjectType::Secret | AzureObjectType::Key => Some(SINGLE.to_string()),
        AzureObjectType::Certificate => target.data_key.as_ref().map(|_| SINGLE.to_string()),
        AzureObjectType::MultiKeyValueSecret => None,
    };
    spec.output = Some(AzureOutput {
        secret: Some(AzureSecretTarget {
            data_key,
            chain_order: target.chain_order,
            ..Default::default()
        }),
        transform: output.transform,
        config_map: None,
    });
    spec.policy = Default::default();
    spec
}

// --- The wrapper ----------------------------------------------------------------------

/// The projected service-account token, read afresh for each exchange (the kubelet
/// rotates it).
#[derive(Debug)]
struct TokenFile(PathBuf);

#[async_trait::async_trait]
impl ClientAssertion for TokenFile {
    async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        std::fs::read_to_string(&self.0)
            .map(|t| t.trim().to_string())
            .map_err(|e| {
                azure_core::Error::with_message(
                    azure_core::error::ErrorKind::Credential,
                    format!(
                        "cannot read the service-account token {}: {e}",
                        self.0.display()
                    ),
                )
            })
    }
}

/// Key Vault as the pod's service account, as the webhook described it.
pub struct Azure {
    conn: Connection,
    identity: Identity,
    credential: Arc<dyn TokenCredential>,
    objects: BTreeMap<String, AzureKeyVaultSecretSpec>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Azure {
    pub fn from_env() -> anyhow::Result<Self> {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| {
                anyhow!("{name} is not set: this pod has {SUFFIX} references but was not prepared by vaultsync's webhook")
            })
        };
        let config: AzureConnection = serde_json::from_value(json!({
            "vaultUrlTemplate": var(ENV_URL_TEMPLATE)?,
            "authorityHost": var(ENV_AUTHORITY)?,
        }))?;
        let http = super::client::http_client(ENV_CACERT, false)?;
        let conn = Connection::with_http("injection", &config, http);
        let (tenant, client_id) = (var(ENV_TENANT)?, var(ENV_CLIENT_ID)?);
        let account = var(ENV_SERVICE_ACCOUNT)?;
        let (namespace, service_account) = account.split_once('/').unwrap_or(("", &account));
        let credential = ClientAssertionCredential::new(
            tenant.clone(),
            client_id.clone(),
            TokenFile(var(ENV_TOKEN_FILE)?.into()),
            Some(ClientAssertionCredentialOptions {
                client_options: conn.credential_options(),
            }),
        )
        .map_err(|e| anyhow!("cannot build the workload identity credential: {e}"))?;
        let objects = serde_json::from_str(&var(ENV_OBJECTS)?)
            .map_err(|e| anyhow!("{ENV_OBJECTS} is not what the webhook writes: {e}"))?;
        Ok(Self {
            identity: Identity::Workload {
                namespace: namespace.into(),
                service_account: service_account.into(),
                tenant,
                client_id: Some(client_id),
            },
            conn,
            credential,
            objects,
            metrics: Arc::default(),
        })
    }

    /// The value of every reference; each AzureKeyVaultSecret's object is read once.
    pub async fn resolve(&self, refs: &[AzureRef]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let mut read: BTreeMap<&str, BTreeMap<String, crate::backend::SecretValue>> =
            BTreeMap::new();
        let mut out = Vec::new();
        for r in refs {
            if !read.contains_key(r.name.as_str()) {
                let spec = self.objects.get(&r.name).ok_or_else(|| {
                    anyhow!(
                        "{}: {}{SUFFIX} was not known when the pod was admitted; recreate the pod",
                        r.var,
                        r.name
                    )
                })?;
                let request =
                    azure::request("injection".into(), &self.conn, self.identity.clone(), spec)?;
                let fresh = self
                    .read(&request)
                    .await
                    .map_err(|e| anyhow!("{}: {}{SUFFIX}: {e}", r.var, r.name))?;
                read.insert(&r.name, fresh.data);
            }
            let data = &read[r.name.as_str()];
            out.push((r.var.clone(), pick(r, data)?));
        }
        Ok(out)
    }
}

impl Azure {
    /// One object, with two more tries 1 s and 2 s apart when Key Vault or the network
    /// failed in passing (a pod start should not fail on a blip); refusals are final.
    async fn read(
        &self,
        request: &azure::AzureRequest,
    ) -> crate::error::Result<crate::backend::Fresh> {
        let mut wait = std::time::Duration::from_secs(1);
        for _ in 0..2 {
            match azure::read(&self.conn, &self.metrics, request, self.credential.clone()).await {
                Err(crate::error::Error::BackendUnavailable { .. }) => {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                other => return other,
            }
        }
        azure::read(&self.conn, &self.metrics, request, self.credential.clone()).await
    }
}

/// The value a reference asks for among what its object shaped into; names keys only.
fn pick(
    r: &AzureRef,
    data: &BTreeMap<String, crate::backend::SecretValue>,
) -> anyhow::Result<Vec<u8>> {
    let keys = || data.keys().cloned().collect::<Vec<_>>().join(", ");
    let key = match &r.key {
        Some(k) => k.as_str(),
        None if data.len() == 1 => data.keys().next().map_or(SINGLE, String::as_str),
        None => bail!(
            "{}: {}{SUFFIX} holds several values; name one as {}{SUFFIX}?KEY (its keys are: {})",
            r.var,
            r.name,
            r.name,
            keys()
        ),
    };
    match data.get(key) {
        Some(v) => Ok(v.expose().to_vec()),
        None if r.key.is_some() && data.len() == 1 => bail!(
            "{}: {}{SUFFIX} holds a single value: leave out ?{key}",
            r.var,
            r.name
        ),
        None => bail!(
            "{}: {}{SUFFIX} has no key {key:?}; its keys are: {}",
            r.var,
            r.name,
            keys()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::SecretValue;

    #[test]
    fn references_parse_as_akv2k8s_writes_them() {
        let ok = |v: &str| parse("V", v).expect("a reference").expect("valid");
        assert_eq!(ok("db@azurekeyvault").name, "db");
        let tls = ok("web-cert@azurekeyvault?tls.key");
        assert_eq!(
            (tls.name.as_str(), tls.key.as_deref()),
            ("web-cert", Some("tls.key"))
        );
        for plain in [
            "db",
            "user@example.com",
            "azurekeyvault",
            "vault:secret/data/a#b",
        ] {
            assert!(parse("V", plain).is_none(), "{plain}");
        }
        for bad in [
            "-db@azurekeyvault",
            "db.@azurekeyvault",
            "a..b@azurekeyvault",
            "..@azurekeyvault",
            "@azurekeyvault",
            "Db@azurekeyvault",
            "a/b@azurekeyvault",
            "db@azurekeyvault?a/b",
            "db@azurekeyvault?",
        ] {
            assert!(parse("V", bad).is_some_and(|r| r.is_err()), "{bad}");
        }
    }

    #[test]
    fn the_webhook_passes_what_to_read_and_nothing_of_the_output_or_auth() {
        let spec: AzureKeyVaultSecretSpec = serde_json::from_value(json!({
            "vault": {"name": "v", "auth": {"clientSecret": {"clientId": "c", "secretRef": {"name": "s", "key": "k"}}},
                      "object": {"name": "o", "type": "secret"}},
            "output": {"secret": {"name": "copy", "dataKey": "pw", "templates": {"x": "{{ pw }}"}},
                       "transform": ["trim"]},
            "refreshInterval": "1m",
        }))
        .expect("spec");
        let read = serde_json::to_value(what_to_read(spec)).expect("json");
        assert_eq!(read["vault"]["auth"], Value::Null);
        assert_eq!(read["output"]["secret"], json!({"dataKey": SINGLE}));
        assert_eq!(read["output"]["transform"], json!(["trim"]));
        assert_eq!(read.get("refreshInterval"), None);
    }

    #[test]
    fn picking_names_keys_never_values() {
        let r = |key: Option<&str>| AzureRef {
            var: "V".into(),
            name: "c".into(),
            key: key.map(Into::into),
        };
        let tls = BTreeMap::from([
            (
                "tls.crt".to_string(),
                SecretValue::new(b"crt-canary".to_vec()),
            ),
            (
                "tls.key".to_string(),
                SecretValue::new(b"key-canary".to_vec()),
            ),
        ]);
        assert_eq!(pick(&r(Some("tls.key")), &tls).unwrap(), b"key-canary");
        for err in [pick(&r(None), &tls), pick(&r(Some("x")), &tls)] {
            let err = err.unwrap_err().to_string();
            assert!(err.contains("tls.crt, tls.key"), "{err}");
            assert!(!err.contains("canary"), "{err}");
        }
        let single = BTreeMap::from([(SINGLE.to_string(), SecretValue::new(b"v".to_vec()))]);
        assert_eq!(pick(&r(None), &single).unwrap(), b"v");
        assert!(
            pick(&r(Some("pw")), &single)
                .unwrap_err()
                .to_string()
                .contains("leave out")
        );
    }
}
