//! `vaultsync check`: resolve, fetch and render one resource without writing anything.
//! It prints key names and sizes only, never a value.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use kube::ResourceExt;

use crate::api::{AzureKeyVaultSecret, VaultSecret};
use crate::backend::Backend;
use crate::config::Config;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::sync::render::{self, DesiredSecret};
use crate::sync::{SyncedResource, secret_name, timing};

/// Resolves, fetches and renders `obj`. Returns the desired Secret and the source version.
pub async fn check<K: SyncedResource>(obj: &K, ctx: &Context) -> Result<(DesiredSecret, String)> {
    if let Some(name) = obj.config_map() {
        return Err(Error::InvalidSpec(format!(
            "this resource writes ConfigMap {name} (public material), not a Secret: vaultsync check covers Secret outputs"
        )));
    }
    if !obj.writes_secret() {
        return Err(Error::InvalidSpec(
            "no spec.output: this resource writes no Secret, it serves pod injection only (NAME@azurekeyvault); add spec.output.secret to check a sync".into(),
        ));
    }
    timing(obj, ctx)?;
    let backend = K::backend(ctx);
    let request = backend.resolve(&obj.namespace().unwrap_or_default(), obj.source())?;
    if K::Backend::issues(&request) {
        // Checking would issue credentials or a certificate nobody would revoke.
        return Err(Error::InvalidSpec(
            "vaultsync check does not issue dynamic credentials or certificates; it checks sources that are read".into(),
        ));
    }
    let fresh = crate::sync::read_fresh(obj, ctx, &request).await?;
    let target = obj.target();
    let desired = render::render(&secret_name(obj, &target), &fresh, &target)?;
    Ok((desired, fresh.version))
}

/// The `check` command: reads the manifest, prints what would be written.
pub async fn run(file: &Path, config: &Path, namespace: Option<String>) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let manifest: serde_json::Value =
        serde_yaml::from_str(&text).with_context(|| format!("{} is not YAML", file.display()))?;
    let client = kube::Client::try_default()
        .await
        .context("cannot reach Kubernetes (KUBECONFIG)")?;
    let kind = manifest["kind"].as_str().unwrap_or_default().to_string();
    let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_string());
    let ctx = Context::new(client, config, Arc::default(), Vec::new())?;
    match kind.as_str() {
        "VaultSecret" => report::<VaultSecret>(file, manifest, namespace, &ctx).await,
        "AzureKeyVaultSecret" => {
            report::<AzureKeyVaultSecret>(file, manifest, namespace, &ctx).await
        }
        _ => anyhow::bail!(
            "vaultsync check supports kinds VaultSecret and AzureKeyVaultSecret; {} has kind {kind:?}",
            file.display()
        ),
    }
}

/// Checks one manifest of kind `K` and prints the Secret it would write.
async fn report<K: SyncedResource>(
    file: &Path,
    manifest: serde_json::Value,
    namespace: String,
    ctx: &Context,
) -> anyhow::Result<()> {
    let mut obj: K = serde_json::from_value(manifest)
        .map_err(|e| anyhow::anyhow!("{} is not a valid {}: {e}", file.display(), K::KIND))?;
    if obj.meta().namespace.is_none() {
        obj.meta_mut().namespace = Some(namespace);
    }
    match check(&obj, ctx).await {
        Ok((desired, version)) => {
            println!(
                "{} {}/{}: Secret {} of type {} from source version {}",
                K::KIND,
                obj.namespace().unwrap_or_default(),
                obj.name_any(),
                desired.name,
                desired.type_,
                if version.is_empty() { "-" } else { &version }
            );
            for (key, value) in &desired.data {
                println!("  {key}\t{} bytes", value.len());
            }
            Ok(())
        }
        Err(e) => anyhow::bail!("{}: {e}", e.reason()),
    }
}
