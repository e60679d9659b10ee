//! Certificates from Vault's PKI secrets engine, issued and rotated before they expire.
//! A certificate's "lease" is its serial and validity; it is never renewed.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Value, json};

use super::request::{Call, path};
use super::{VaultBackend, VaultRequest};
use crate::api::PkiSource;
use crate::backend::{Fresh, Lease, Material, Prior, SecretValue};
use crate::error::{Error, Result};
use crate::sync::schedule::{LeaseAction, lease_action};

/// Whether `id` looks like a certificate serial (`0a:1b:...`).
pub(super) fn is_serial(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
}

impl VaultBackend {
    /// Keeps the certificate until its renewal point, then issues a new one.
    pub(super) async fn fetch_certificate(
        &self,
        request: &VaultRequest,
        pki: &PkiSource,
        prior: Prior<'_>,
    ) -> Result<Material> {
        let current = prior.lease.filter(|l| is_serial(&l.id));
        match (
            lease_action(
                Timestamp::now(),
                current,
                prior.renewal_percent,
                prior.copy_intact,
            ),
            current,
        ) {
            (LeaseAction::Keep, Some(lease)) => Ok(Material::Unchanged {
                lease: lease.clone(),
            }),
            _ => self.issue_certificate(request, pki).await,
        }
    }

    /// Issues a certificate: `{mount}/issue/{role}`, written as `tls.crt` (with the chain),
    /// `tls.key` and `ca.crt`.
    async fn issue_certificate(&self, request: &VaultRequest, pki: &PkiSource) -> Result<Material> {
        let token = self.login(request).await?;
        let what = format!("{}/issue/{}", pki.mount, pki.role);
        let mut body = json!({"common_name": pki.common_name});
        if let Some(alt) = &pki.alt_names {
            body["alt_names"] = Value::from(alt.join(","));
        }
        if let Some(ips) = &pki.ip_sans {
            body["ip_sans"] = Value::from(ips.join(","));
        }
        if let Some(ttl) = &pki.ttl {
            body["ttl"] = Value::from(ttl.as_str());
        }
        let answer = self
            .call(
                request,
                Call {
                    method: reqwest::Method::PUT,
                    path: &path(&[pki.mount.as_str(), "issue", pki.role.as_str()])?,
                    body: Some(body),
                    token: Some(&token),
                    operation: "pki_issue",
                    what: &what,
                },
            )
            .await?;
        let data = &answer["data"];
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
            .and_then(|secs| Timestamp::from_second(secs).ok())
            .ok_or_else(|| {
                Error::unavailable(format!("Vault's answer for {what} has no expiration"))
            })?;
        let duration =
            Duration::try_from(expires_at.duration_since(Timestamp::now())).unwrap_or_default();
        let out = BTreeMap::from([
            ("tls.crt".to_string(), SecretValue::new(bundle)),
            (
                "tls.key".to_string(),
                SecretValue::new(format!("{}\n", key.trim_end())),
            ),
            (
                "ca.crt".to_string(),
                SecretValue::new(format!("{}\n", ca.trim_end())),
            ),
        ]);
        Ok(Material::Fresh(Fresh {
            data: out,
            version: serial.clone(),
            not_after: Some(expires_at),
            lease: Some(Lease {
                id: serial,
                duration,
                renewable: false,
                expires_at,
            }),
        }))
    }

    /// Revokes a certificate replaced by a newer one (`revokeOnRotate`).
    pub(super) async fn revoke_certificate(
        &self,
        request: &VaultRequest,
        pki: &PkiSource,
        serial: &str,
    ) -> Result<()> {
        let token = self.login(request).await?;
        self.call(
            request,
            Call {
                method: reqwest::Method::PUT,
                path: &path(&[pki.mount.as_str(), "revoke"])?,
                body: Some(json!({"serial_number": serial})),
                token: Some(&token),
                operation: "revoke",
                what: "the certificate revocation",
            },
        )
        .await
        .map(|_| ())
    }
}
