//! Backends: where secret material comes from. Each backend module reads its source as
//! the tenant and returns [`Fetched`] material; everything after that is shared.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};

use crate::error::{Error, Result};

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

/// A lease on dynamic credentials, or the validity of an issued certificate (whose id
/// is its serial and which is never renewable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: String,
    /// Length of the current period: from issue or the last renewal to `expires_at`.
    pub duration: std::time::Duration,
    pub renewable: bool,
    pub expires_at: jiff::Timestamp,
}

/// What a backend read: the key/value material and where it came from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fetched {
    pub data: BTreeMap<String, SecretValue>,
    /// Version of the source: KV version, Key Vault object version, lease or serial.
    pub version: String,
    /// Lease of dynamic credentials.
    pub lease: Option<Lease>,
    /// End of validity of the material itself (a certificate's notAfter), if it has one.
    pub not_after: Option<jiff::Timestamp>,
    /// The material is still in the existing Secret (a lease kept or renewed): write
    /// nothing new; `data` is empty.
    pub keep_existing: bool,
    /// A lease replaced by this fetch, to revoke once the new material is written.
    pub replaces: Option<Replaced>,
}

/// Material that a re-issue replaced and that is revoked after the new copy is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replaced {
    Lease(String),
    Certificate { mount: String, serial: String },
}
pub mod vault;

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

/// A client-side rate limit: requests are spaced evenly at `per_second`, each waiting
/// for its own slot, so a burst of reconciles cannot flood a backend.
pub struct RateLimiter {
    interval: std::time::Duration,
    next_slot: tokio::sync::Mutex<tokio::time::Instant>,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> Self {
        Self {
            interval: std::time::Duration::from_secs(1) / per_second.max(1),
            next_slot: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits for the next free slot.
    pub async fn acquire(&self) {
        let slot = {
            let mut next = self.next_slot.lock().await;
            let now = tokio::time::Instant::now();
            let slot = (*next).max(now);
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_do_not_print() {
        let v = SecretValue::from("hunter2");
        assert_eq!(format!("{v:?}"), "SecretValue(<7 bytes redacted>)");
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_spaces_requests() {
        let limiter = RateLimiter::new(10);
        let start = tokio::time::Instant::now();
        for _ in 0..11 {
            limiter.acquire().await;
        }
        // Eleven requests at ten per second: the last waits a full second.
        assert_eq!(start.elapsed(), std::time::Duration::from_secs(1));
    }
}
