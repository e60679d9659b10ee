//! Backends: where secret material comes from, behind one seam ([`Backend`]):
//! `resolve` (pure: spec + operator config -> a typed request), `fetch` (IO: read or issue
//! as the tenant) and `release` (IO: revoke a lease or certificate that was issued).
//!
//! The sync pipeline sees only the types of this module. Adding a backend is a module
//! that implements [`Backend`] and `SyncedResource` for its kind, a field of the
//! `Context`, and one line in the controller.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};

use crate::error::{Error, Result};

pub mod azure;
pub mod vault;

mod rate_limit;
pub use rate_limit::RateLimiter;

/// Lifetime asked for the service-account tokens used to log in. They are used once,
/// right away, so the minimum the apiserver accepts is plenty.
const SA_TOKEN_SECONDS: i64 = 600;

/// A secret value. It has no `Display`, and its `Debug` shows only the length, so it
/// cannot reach a log line or an error message by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue(<{} bytes redacted>)", self.0.len())
    }
}

impl From<&str> for SecretValue {
    fn from(s: &str) -> Self {
        Self(s.as_bytes().to_vec())
    }
}

/// A lease on issued material: dynamic credentials, or an issued certificate (whose id
/// is its serial and which is never renewable). The id is the backend's own handle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: String,
    /// Length of the current period: from issue or the last renewal to `expires_at`.
    pub duration: std::time::Duration,
    pub renewable: bool,
    pub expires_at: jiff::Timestamp,
}

/// What a fetch produced.
#[derive(Clone, Debug, PartialEq)]
pub enum Material {
    /// New material: read from a static source, or issued under a new lease.
    Fresh(Fresh),
    /// The material the managed Secret holds is still good: its lease was kept or
    /// renewed. The operator does not keep material in memory, so there is no data here.
    Unchanged { lease: Lease },
}

/// Material read or issued by a fetch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fresh {
    pub data: BTreeMap<String, SecretValue>,
    /// Version of the source: KV version, Key Vault object version, lease or serial.
    pub version: String,
    /// The lease of issued material, to renew, and to release when it is replaced.
    pub lease: Option<Lease>,
    /// End of validity of the material itself (a certificate's notAfter), if it has one.
    pub not_after: Option<jiff::Timestamp>,
}

/// What the operator knows of the copy before a fetch.
#[derive(Clone, Copy, Debug)]
pub struct Prior<'a> {
    /// The lease the managed Secret's material is under, from status.
    pub lease: Option<&'a Lease>,
    /// The managed Secret exists and holds exactly the data status records (its keyed
    /// HMAC matches): a lease may then be kept. A tampered or deleted copy is re-issued.
    pub copy_intact: bool,
    /// Renew or re-issue at this share of a lease's lifetime.
    pub renewal_percent: u8,
}

/// One backend: how a source spec is resolved, fetched and released.
pub trait Backend: Send + Sync + 'static {
    /// The source part of the resource's spec.
    type Source: Send + Sync;
    /// A validated, typed request: source, identity and connection.
    type Request: Send + Sync;

    /// Pure: the spec and the operator config become a request, or a clear `InvalidSpec`.
    fn resolve(&self, namespace: &str, source: &Self::Source) -> Result<Self::Request>;

    /// Whether fetching issues material (credentials, certificates) rather than reading it.
    fn issues(request: &Self::Request) -> bool;

    /// Whether what this request issues must be released when the resource goes, so the
    /// resource needs a finalizer.
    fn needs_finalizer(request: &Self::Request) -> bool;

    /// Reads or issues the material as the tenant, keeping a prior lease where it can.
    fn fetch(
        &self,
        request: &Self::Request,
        prior: Prior<'_>,
    ) -> impl Future<Output = Result<Material>> + Send;

    /// Forgets what the backend caches for anything not among `live`, the requests of the
    /// resources that exist now (tokens, detected mount versions), and gives back what it
    /// holds for them (revokes their tokens), so per-process state follows the resources.
    fn retain(&self, live: &[Self::Request]) -> impl Future<Output = ()> + Send;

    /// Releases a lease recorded in status (revokes credentials, or a certificate when
    /// the request asks for that). A lease that is not this resource's to release is left
    /// alone and reported as `Ok`.
    fn release(
        &self,
        request: &Self::Request,
        lease: &Lease,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// The reqwest client of a backend connection: its timeouts, and the system's roots plus
/// the PEM bundle `ca_file` (named `field` in errors). TLS settings come only from here.
pub fn http_client(
    field: &str,
    ca_file: Option<&std::path::Path>,
    timeout: std::time::Duration,
) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(std::time::Duration::from_secs(5));
    if let Some(ca) = ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| anyhow::anyhow!("{field}: cannot read {}: {e}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            anyhow::anyhow!("{field}: {} holds no PEM certificate: {e}", ca.display())
        })?;
        builder = builder.tls_certs_merge(certs);
    }
    Ok(builder.build()?)
}

/// A short-lived, audience-bound token for a service account of the resource's namespace:
/// the tenant identity every backend logs in with.
pub async fn service_account_token(
    kube: &kube::Client,
    namespace: &str,
    name: &str,
    audience: &str,
) -> Result<String> {
    let api: Api<ServiceAccount> = Api::namespaced(kube.clone(), namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![audience.to_string()]),
            expiration_seconds: Some(SA_TOKEN_SECONDS),
            bound_object_ref: None,
        }),
        ..Default::default()
    };
    let issued: TokenRequest = api
        .create_subresource("token", name, &PostParams::default(), &request)
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 404 => Error::AuthFailed(format!(
                "service account {name:?} does not exist in namespace {namespace}"
            )),
            kube::Error::Api(s) if s.code == 403 => Error::AuthFailed(format!(
                "the operator may not request tokens for service account {name:?}: {}",
                s.message
            )),
            other => Error::Kube(other),
        })?;
    issued
        .status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Error::AuthFailed("the apiserver returned an empty service-account token".into())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_do_not_print() {
        let v = SecretValue::from("hunter2");
        assert_eq!(format!("{v:?}"), "SecretValue(<7 bytes redacted>)");
    }
}
