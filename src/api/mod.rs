//! The custom resources: `VaultSecret` and `AzureKeyVaultSecret` in `vaultsync.dev/v1alpha1`.

mod azure_key_vault_secret;
mod common;
mod vault_secret;

pub use azure_key_vault_secret::*;
pub use common::*;
pub use vault_secret::*;

use kube::CustomResourceExt;

/// Both CRDs as one multi-document YAML stream, as committed under `crds/`.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in [VaultSecret::crd(), AzureKeyVaultSecret::crd()] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}
