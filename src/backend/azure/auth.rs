//! Who the operator is toward Entra ID for a resource: a service account of the
//! resource's namespace (workload identity: a Kubernetes token exchanged through the
//! federated flow), a service principal whose secret is in the namespace, or, only in
//! namespaces the administrator lists, the operator's own managed identity.
//!
//! Credentials are the official `azure_identity` ones, cached per identity so their
//! access tokens are reused until they near expiry.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use azure_core::credentials::{Secret, TokenCredential};
use azure_core::http::ClientMethodOptions;
use azure_identity::{
    ClientAssertion, ClientAssertionCredential, ClientAssertionCredentialOptions,
    ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId,
};
use k8s_openapi::api::core::v1::Secret as KubeSecret;
use kube::api::Api;

use super::Connection;
use crate::api::AzureAuth;
use crate::config::AzureCredentialKind;
use crate::error::{Error, Result};

/// The audience Entra ID expects on a federated service-account token.
pub const FEDERATED_AUDIENCE: &str = "api://AzureADTokenExchange";

/// The identity a resource reads as. Two resources share cached tokens only when their
/// identities are equal, and never across namespaces.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    Workload {
        namespace: String,
        service_account: String,
        tenant: String,
        /// `None`: the service account's `azure.workload.identity/client-id` annotation,
        /// the Azure Workload Identity convention.
        client_id: Option<String>,
    },
    ClientSecret {
        namespace: String,
        tenant: String,
        client_id: String,
        /// Secret name and key in `namespace`.
        secret: (String, String),
    },
    Managed {
        client_id: Option<String>,
    },
}

impl Identity {
    /// For messages: who this is, without any secret.
    pub fn describe(&self) -> String {
        match self {
            Identity::Workload {
                namespace,
                service_account,
                client_id,
                ..
            } => format!(
                "service account {namespace}/{service_account} (workload identity, client {})",
                client_id.as_deref().unwrap_or("from its annotation")
            ),
            Identity::ClientSecret {
                client_id, secret, ..
            } => format!(
                "service principal {client_id} (secret {}/{})",
                secret.0, secret.1
            ),
            Identity::Managed { client_id } => format!(
                "the operator's managed identity{}",
                client_id
                    .as_ref()
                    .map(|c| format!(" {c}"))
                    .unwrap_or_default()
            ),
        }
    }
}

/// The identity a resource reads as, as the connection allows.
pub fn identity(namespace: &str, conn: &Connection, auth: Option<&AzureAuth>) -> Result<Identity> {
    let c = &conn.config;
    let tenant = |own: &Option<String>| {
        own.clone().or_else(|| c.tenant_id.clone()).ok_or_else(|| {
            Error::InvalidSpec(format!(
                "set tenantId: connection {:?} has no default tenant",
                conn.name
            ))
        })
    };
    let allowed = |kind: AzureCredentialKind, field: &str| {
        if c.allowed_credentials.contains(&kind) {
            Ok(())
        } else {
            Err(Error::InvalidSpec(format!(
                "connection {:?} does not allow spec.vault.auth.{field}; it allows {:?}",
                conn.name, c.allowed_credentials
            )))
        }
    };
    Ok(match auth {
        Some(AzureAuth {
            workload_identity: Some(w),
            ..
        }) => {
            allowed(AzureCredentialKind::WorkloadIdentity, "workloadIdentity")?;
            Identity::Workload {
                namespace: namespace.into(),
                service_account: w.service_account_name.clone(),
                tenant: tenant(&w.tenant_id)?,
                client_id: Some(w.client_id.clone()),
            }
        }
        Some(AzureAuth {
            client_secret: Some(s),
            ..
        }) => {
            allowed(AzureCredentialKind::ClientSecret, "clientSecret")?;
            Identity::ClientSecret {
                namespace: namespace.into(),
                tenant: tenant(&s.tenant_id)?,
                client_id: s.client_id.clone(),
                secret: (s.secret_ref.name.clone(), s.secret_ref.key.clone()),
            }
        }
        Some(AzureAuth {
            managed_identity: Some(m),
            ..
        }) => {
            if !c.managed_identity_namespaces.iter().any(|n| n == namespace) {
                return Err(Error::InvalidSpec(format!(
                    "spec.vault.auth.managedIdentity reads as the operator itself, which connection {:?} allows only in the namespaces its administrator lists (managedIdentityNamespaces); {namespace} is not one: use workloadIdentity",
                    conn.name
                )));
            }
            Identity::Managed {
                client_id: m.client_id.clone(),
            }
        }
        Some(_) => return Err(Error::InvalidSpec("spec.vault.auth sets no method".into())),
        None => match &c.default_auth {
            Some(d) => Identity::Workload {
                namespace: namespace.into(),
                service_account: d.workload_identity.service_account_name.clone(),
                tenant: tenant(&d.workload_identity.tenant_id)?,
                client_id: d
                    .workload_identity
                    .client_id
                    .as_ref()
                    .map(|c| c.replace("{namespace}", namespace)),
            },
            None => {
                return Err(Error::InvalidSpec(format!(
                    "spec.vault.auth is not set and connection {:?} has no default auth: set spec.vault.auth",
                    conn.name
                )));
            }
        },
    })
}

/// Supplies a fresh, short-lived service-account token for each exchange.
struct ServiceAccountAssertion {
    kube: kube::Client,
    namespace: String,
    name: String,
}

impl fmt::Debug for ServiceAccountAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ServiceAccountAssertion({}/{})",
            self.namespace, self.name
        )
    }
}

#[async_trait::async_trait]
impl ClientAssertion for ServiceAccountAssertion {
    async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        crate::backend::service_account_token(
            &self.kube,
            &self.namespace,
            &self.name,
            FEDERATED_AUDIENCE,
        )
        .await
        .map_err(|e| {
            azure_core::Error::with_message(azure_core::error::ErrorKind::Credential, e.to_string())
        })
    }
}

/// Credentials by (connection, identity).
#[derive(Default)]
pub struct Credentials {
    cache: Mutex<HashMap<(String, Identity), Arc<dyn TokenCredential>>>,
}

impl Credentials {
    /// The cached credential of `identity`, or a new one.
    pub async fn get(
        &self,
        kube: &kube::Client,
        conn: &Connection,
        identity: &Identity,
    ) -> Result<Arc<dyn TokenCredential>> {
        let key = (conn.name.clone(), identity.clone());
        if let Some(c) = self.lock().get(&key) {
            return Ok(c.clone());
        }
        let credential = build(kube, conn, identity).await?;
        self.lock().insert(key, credential.clone());
        Ok(credential)
    }

    /// Forgets an identity's credential: its secret may have changed, or it was refused.
    pub fn forget(&self, connection: &str, identity: &Identity) {
        self.lock()
            .remove(&(connection.to_string(), identity.clone()));
    }

    /// Keeps only the credentials of identities still in use.
    pub fn retain(&self, live: &std::collections::HashSet<(String, Identity)>) {
        let mut cache = self.lock();
        cache.retain(|key, _| live.contains(key));
        crate::janitor::shrink(&mut cache);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(String, Identity), Arc<dyn TokenCredential>>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn credential_error(identity: &Identity, e: azure_core::Error) -> Error {
    Error::AuthFailed(format!(
        "cannot build the credential of {}: {e}",
        identity.describe()
    ))
}

async fn build(
    kube: &kube::Client,
    conn: &Connection,
    identity: &Identity,
) -> Result<Arc<dyn TokenCredential>> {
    let client_options = conn.credential_options();
    Ok(match identity {
        Identity::Workload {
            namespace,
            service_account,
            tenant,
            client_id,
        } => ClientAssertionCredential::new(
            tenant.clone(),
            match client_id {
                Some(c) => c.clone(),
                None => annotated_client_id(kube, namespace, service_account).await?,
            },
            ServiceAccountAssertion {
                kube: kube.clone(),
                namespace: namespace.clone(),
                name: service_account.clone(),
            },
            Some(ClientAssertionCredentialOptions { client_options }),
        )
        .map_err(|e| credential_error(identity, e))?,
        Identity::ClientSecret {
            namespace,
            tenant,
            client_id,
            secret: (name, key),
        } => {
            let value = read_client_secret(kube, namespace, name, key).await?;
            ClientSecretCredential::new(
                tenant,
                client_id.clone(),
                Secret::new(value),
                Some(ClientSecretCredentialOptions { client_options }),
            )
            .map_err(|e| credential_error(identity, e))?
        }
        Identity::Managed { client_id } => {
            ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                client_options,
            }))
            .map_err(|e| credential_error(identity, e))?
        }
    })
}

/// The annotation naming a service account's app registration (Azure Workload Identity).
pub const CLIENT_ID_ANNOTATION: &str = "azure.workload.identity/client-id";

/// The client id a service account is annotated with.
async fn annotated_client_id(kube: &kube::Client, namespace: &str, name: &str) -> Result<String> {
    let api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(kube.clone(), namespace);
    let account = api.get_opt(name).await?.ok_or_else(|| {
        Error::AuthFailed(format!(
            "service account {name:?} does not exist in namespace {namespace}"
        ))
    })?;
    account
        .metadata
        .annotations
        .and_then(|mut a| a.remove(CLIENT_ID_ANNOTATION))
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            Error::AuthFailed(format!(
                "service account {namespace}/{name} has no {CLIENT_ID_ANNOTATION} annotation: annotate it with the client id of the app registration that trusts it"
            ))
        })
}

/// The client secret from a Secret of the resource's namespace.
async fn read_client_secret(
    kube: &kube::Client,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<String> {
    let api: Api<KubeSecret> = Api::namespaced(kube.clone(), namespace);
    let secret = api.get_opt(name).await?.ok_or_else(|| {
        Error::AuthFailed(format!(
            "the client secret's Secret {namespace}/{name} does not exist"
        ))
    })?;
    let bytes = secret.data.and_then(|mut d| d.remove(key)).ok_or_else(|| {
        Error::AuthFailed(format!(
            "Secret {namespace}/{name} has no key {key:?} for the client secret"
        ))
    })?;
    String::from_utf8(bytes.0)
        .map(|s| s.trim().to_string())
        .map_err(|_| {
            Error::AuthFailed(format!(
                "the client secret in Secret {namespace}/{name} key {key:?} is not UTF-8 text"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ClientSecretAuth, ManagedIdentityAuth, SecretKeyRef, WorkloadIdentityAuth};

    fn connection(extra: &str) -> Connection {
        let config = crate::config::Config::parse(&format!(
            "azure:\n  default:\n    vaultUrlTemplate: https://{{name}}.vault.azure.net\n    tenantId: t0\n{extra}"
        ))
        .expect("config");
        Connection::new("default", &config.azure["default"]).expect("connection")
    }

    fn workload(sa: &str) -> AzureAuth {
        AzureAuth {
            workload_identity: Some(WorkloadIdentityAuth {
                service_account_name: sa.into(),
                client_id: "app".into(),
                tenant_id: None,
            }),
            client_secret: None,
            managed_identity: None,
        }
    }

    #[test]
    fn identities_are_namespaced_and_take_the_connection_tenant() {
        let conn = connection("");
        let a = identity("a", &conn, Some(&workload("app"))).unwrap();
        let b = identity("b", &conn, Some(&workload("app"))).unwrap();
        assert_ne!(
            a, b,
            "the same service account name in two namespaces is two identities"
        );
        assert!(matches!(a, Identity::Workload { ref tenant, .. } if tenant == "t0"));
    }

    #[test]
    fn no_auth_needs_a_default_and_takes_the_namespace() {
        let err = identity("a", &connection(""), None).unwrap_err();
        assert!(err.to_string().contains("no default auth"), "{err}");
        let conn = connection(
            "    defaultAuth:\n      workloadIdentity:\n        clientId: reader-{namespace}\n",
        );
        let id = identity("team-a", &conn, None).unwrap();
        assert_eq!(
            id,
            Identity::Workload {
                namespace: "team-a".into(),
                service_account: "default".into(),
                tenant: "t0".into(),
                client_id: Some("reader-team-a".into()),
            }
        );
    }

    #[test]
    fn managed_identity_only_in_listed_namespaces() {
        let managed = AzureAuth {
            workload_identity: None,
            client_secret: None,
            managed_identity: Some(ManagedIdentityAuth::default()),
        };
        let conn = connection("    managedIdentityNamespaces: [platform]\n");
        assert!(identity("platform", &conn, Some(&managed)).is_ok());
        let err = identity("tenant", &conn, Some(&managed)).unwrap_err();
        assert_eq!(err.reason(), "InvalidSpec");
        assert!(
            err.to_string().contains("managedIdentityNamespaces"),
            "{err}"
        );
    }

    #[test]
    fn a_credential_kind_the_connection_does_not_allow_is_refused() {
        let conn = connection("    allowedCredentials: [workloadIdentity]\n");
        let secret = AzureAuth {
            workload_identity: None,
            client_secret: Some(ClientSecretAuth {
                tenant_id: None,
                client_id: "sp".into(),
                secret_ref: SecretKeyRef {
                    name: "creds".into(),
                    key: "secret".into(),
                },
            }),
            managed_identity: None,
        };
        let err = identity("a", &conn, Some(&secret)).unwrap_err();
        assert!(err.to_string().contains("does not allow"), "{err}");
    }
}
