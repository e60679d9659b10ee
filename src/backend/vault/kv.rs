//! KV version 1 and 2 reads. The KV version is set per mount on the connection, or
//! asked of Vault once per mount and remembered.

use std::collections::BTreeMap;

use serde_json::Value;

use super::request::{Call, path};
use super::{VaultBackend, VaultRequest, json_bytes};
use crate::api::KvSource;
use crate::backend::{Fresh, SecretValue};
use crate::error::{Error, Result};

impl VaultBackend {
    /// Reads a KV secret (v1 or v2, detected per mount) as the tenant.
    pub(super) async fn fetch_kv(&self, request: &VaultRequest, kv: &KvSource) -> Result<Fresh> {
        let token = self.login(request).await?;
        let version = self.kv_version(request, &token, &kv.mount).await?;
        let what = format!("{}/{}", kv.mount, kv.path);
        if version == 1 && kv.version.is_some() {
            return Err(Error::InvalidSpec(format!(
                "mount {} is KV version 1, which has no versions: remove spec.vault.kv.version",
                kv.mount
            )));
        }
        let url_path = match (version, kv.version) {
            (1, _) => path(&[kv.mount.as_str(), kv.path.as_str()])?,
            (_, Some(v)) => format!(
                "{}?version={v}",
                path(&[kv.mount.as_str(), "data", kv.path.as_str()])?
            ),
            (_, None) => path(&[kv.mount.as_str(), "data", kv.path.as_str()])?,
        };
        let mut body = self
            .call(
                request,
                Call {
                    method: reqwest::Method::GET,
                    path: &url_path,
                    body: None,
                    token: Some(&token),
                    operation: "kv_read",
                    what: &what,
                },
            )
            .await?;
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
        let Value::Object(object) = data else {
            return Err(Error::InvalidData(format!(
                "{what} does not hold key/value data"
            )));
        };
        let mut out = BTreeMap::new();
        for (key, value) in object {
            if kv.keys.as_ref().is_some_and(|keys| !keys.contains(&key)) {
                continue;
            }
            out.insert(key, SecretValue::new(json_bytes(&value)));
        }
        if let Some(keys) = &kv.keys {
            let missing: Vec<&String> = keys.iter().filter(|k| !out.contains_key(*k)).collect();
            if !missing.is_empty() {
                return Err(Error::NotFound(format!("{what} has no keys {missing:?}")));
            }
        }
        Ok(Fresh {
            data: out,
            version: source_version,
            ..Fresh::default()
        })
    }

    /// KV version of a mount: from the connection's config, else asked once of Vault.
    async fn kv_version(&self, request: &VaultRequest, token: &str, mount: &str) -> Result<u8> {
        let conn = self.connection(&request.connection)?;
        if let Some(v) = conn.config.kv_versions.get(mount) {
            return Ok(*v);
        }
        let key = (request.connection.clone(), mount.to_string());
        if let Some(v) = self
            .kv_versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(*v);
        }
        // The endpoint the Vault CLI itself uses; any token may read it for mounts it can
        // access.
        let what = format!("mount {mount}");
        let body = conn
            .call(
                &self.metrics,
                Call {
                    method: reqwest::Method::GET,
                    path: &path(&["sys/internal/ui/mounts", mount])?,
                    body: None,
                    token: Some(token),
                    operation: "kv_mount",
                    what: &what,
                },
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
}
