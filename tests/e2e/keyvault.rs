//! The local Key Vault of the environment (tests/env/keyvault.sh), as tests and benchmarks
//! use it: seed objects through its REST API with the admin token, register identities
//! and grant them access with the environment's own script, and the operator's `azure:`
//! connection for it.
//!
//! Only `std`, `reqwest`, `serde_json` and `base64` are used, so the benchmarks can include
//! this file with `#[path]`. Errors are `String`s; callers panic or wrap them.
#![allow(dead_code)]

use std::process::Command;

use base64::Engine as _;
use serde_json::{Value, json};

pub const API_VERSION: &str = "2025-07-01";

fn var(name: &str) -> Result<String, String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            format!(
                "{name} is not set, so the local Key Vault of the environment is missing: run \
             `make env-up` and `source target/env/env.sh` (make test does both)"
            )
        })
}

/// The local Key Vault's settings, from `target/env/env.sh`.
#[derive(Clone, Debug)]
pub struct KeyVaultEnv {
    /// `https://default.vault.azure.net:PORT`
    pub default_url: String,
    pub port: u16,
    pub ca_file: String,
    pub admin_token: String,
    pub authority_host: String,
    pub tenant_id: String,
    pub script: String,
    http: reqwest::Client,
}

impl KeyVaultEnv {
    pub fn load() -> Result<Self, String> {
        let default_url = var("AZURE_KEYVAULT_URL")?;
        let port = default_url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .unwrap_or(443);
        let ca_file = var("AZURE_KEYVAULT_CA_FILE")?;
        let pem = std::fs::read(&ca_file).map_err(|e| format!("reading {ca_file}: {e}"))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("parsing {ca_file}: {e}"))?;
        let http = reqwest::Client::builder()
            .tls_certs_only(certs)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            default_url,
            port,
            ca_file,
            admin_token: var("AZURE_KEYVAULT_ADMIN_TOKEN")?,
            authority_host: var("AZURE_AUTHORITY_HOST")?,
            tenant_id: var("AZURE_TENANT_ID")?,
            script: var("AZURE_KEYVAULT_SH")?,
            http,
        })
    }

    pub fn vault_url(&self, vault: &str) -> String {
        format!("https://{vault}.vault.azure.net:{}", self.port)
    }

    /// The operator's `azure:` configuration section for the local Key Vault, with the
    /// vaults at `port` (the real one, or a test's proxy in front of it) and `extra`
    /// lines (indented four spaces) added to the `default` connection.
    pub fn connection_yaml(&self, port: u16, extra: &str) -> String {
        format!(
            "azure:\n  default:\n    vaultUrlTemplate: \"https://{{name}}.vault.azure.net:{port}\"\n    \
             authorityHost: \"{}\"\n    tenantId: \"{}\"\n    caFile: \"{}\"\n    \
             defaultAuth:\n      workloadIdentity:\n        serviceAccountName: default\n        \
             clientId: vaultsync-namespace-reader\n{extra}",
            self.authority_host, self.tenant_id, self.ca_file
        )
    }

    /// One admin request to the REST API; returns the JSON body of a 2xx answer.
    pub async fn call(
        &self,
        vault: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let url = format!("{}{path}?api-version={API_VERSION}", self.vault_url(vault));
        let mut request = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.admin_token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("{method} {url}: {e}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!("{method} {url}: {status}: {text}"));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Sets a secret; returns its new version.
    pub async fn set_secret(
        &self,
        vault: &str,
        name: &str,
        value: &str,
        content_type: Option<&str>,
    ) -> Result<String, String> {
        let mut body = json!({ "value": value });
        if let Some(ct) = content_type {
            body["contentType"] = json!(ct);
        }
        let bundle = self
            .call(
                vault,
                reqwest::Method::PUT,
                &format!("/secrets/{name}"),
                Some(body),
            )
            .await?;
        Ok(version(&bundle["id"]))
    }

    /// Imports a certificate (PFX bytes or PEM text) whose secret is served as
    /// `content_type` (`application/x-pkcs12` or `application/x-pem-file`); returns its
    /// version.
    pub async fn import_certificate(
        &self,
        vault: &str,
        name: &str,
        certificate: &[u8],
        pem: bool,
        content_type: &str,
    ) -> Result<String, String> {
        let value = if pem {
            String::from_utf8_lossy(certificate).into_owned()
        } else {
            base64::engine::general_purpose::STANDARD.encode(certificate)
        };
        let body = json!({
            "value": value,
            "policy": {
                "key_props": {"exportable": true},
                "secret_props": {"contentType": content_type}
            }
        });
        let bundle = self
            .call(
                vault,
                reqwest::Method::POST,
                &format!("/certificates/{name}/import"),
                Some(body),
            )
            .await?;
        Ok(version(&bundle["id"]))
    }

    /// Creates a key (`RSA` with 2048 bits, or `EC` on `curve`); returns its JWK.
    pub async fn create_key(
        &self,
        vault: &str,
        name: &str,
        kty: &str,
        curve: Option<&str>,
    ) -> Result<Value, String> {
        let body = match curve {
            Some(crv) => json!({"kty": kty, "crv": crv}),
            None => json!({"kty": kty, "key_size": 2048}),
        };
        let bundle = self
            .call(
                vault,
                reqwest::Method::POST,
                &format!("/keys/{name}/create"),
                Some(body),
            )
            .await?;
        Ok(bundle["key"].clone())
    }

    /// Runs `keyvault.sh ARGS...` (register-client, grant, revoke, throttle).
    pub fn script(&self, args: &[&str]) -> Result<(), String> {
        let out = Command::new("bash")
            .arg(&self.script)
            .args(args)
            .output()
            .map_err(|e| format!("running {}: {e}", self.script))?;
        if !out.status.success() {
            return Err(format!(
                "keyvault.sh {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }
}

/// The version at the end of an object id.
pub fn version(id: &Value) -> String {
    id.as_str()
        .and_then(|s| s.rsplit('/').next())
        .unwrap_or_default()
        .to_string()
}
