//! Injection without etcd: a mutating webhook rewrites opted-in pods so that
//! `vaultsync env` (copied into an in-memory volume by an init container) resolves their
//! `vault:` references as the pod's own service account and `exec`s the original command
//! with the values in its environment (or in files) only.
//!
//! The webhook (`webhook`) and the wrapper (`env`) agree on the environment variables
//! below: the webhook sets them from the operator's configuration, never from the pod's
//! annotations, and the wrapper removes them before it execs.

pub mod azure;
mod client;
pub mod env;
pub mod reference;
pub mod webhook;

/// Vault or OpenBao address of the connection (from the operator config).
pub const ENV_VAULT_ADDR: &str = "VAULTSYNC_VAULT_ADDR";
/// PEM bundle of CA certificates for the connection (the content of its `caFile`), if any.
pub const ENV_VAULT_CACERT: &str = "VAULTSYNC_VAULT_CACERT";
/// Vault Enterprise / OpenBao namespace of the connection, if any.
pub const ENV_VAULT_NAMESPACE: &str = "VAULTSYNC_VAULT_NAMESPACE";
/// Mount of the Kubernetes auth method.
pub const ENV_AUTH_MOUNT: &str = "VAULTSYNC_VAULT_AUTH_MOUNT";
/// Vault role to log in with (the pod's `vaultsync.dev/role` annotation, or the
/// connection's default with `{namespace}` replaced).
pub const ENV_ROLE: &str = "VAULTSYNC_VAULT_ROLE";
/// File holding the pod's projected service-account token for the connection's audience.
pub const ENV_TOKEN_FILE: &str = "VAULTSYNC_TOKEN_FILE";
/// CA bundle file the init container copied from the operator's image, trusted besides
/// [`ENV_VAULT_CACERT`] (an application image may have no CA certificates).
pub const ENV_CA_BUNDLE: &str = "VAULTSYNC_CA_BUNDLE_FILE";
/// The bundle's name in the directory `install-self` fills.
pub const CA_BUNDLE: &str = "ca-certificates.crt";
/// Every variable above starts with this; the wrapper removes all of them before exec.
pub const ENV_PREFIX: &str = "VAULTSYNC_";
/// Every variable the wrapper reads: the webhook sets each one.
pub const RESERVED: [&str; 15] = [
    ENV_VAULT_ADDR,
    ENV_VAULT_CACERT,
    ENV_VAULT_NAMESPACE,
    ENV_AUTH_MOUNT,
    ENV_ROLE,
    ENV_TOKEN_FILE,
    ENV_CA_BUNDLE,
    azure::ENV_URL_TEMPLATE,
    azure::ENV_AUTHORITY,
    azure::ENV_TENANT,
    azure::ENV_CLIENT_ID,
    azure::ENV_SERVICE_ACCOUNT,
    azure::ENV_TOKEN_FILE,
    azure::ENV_CACERT,
    azure::ENV_OBJECTS,
];

/// `injection` in the operator config: the mutating webhook, served beside the validating
/// one (`admission`) at `POST /mutate-pods`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Injection {
    #[serde(default)]
    pub enabled: bool,
    /// Image of the init container that copies `vaultsync` into the pod (the operator's
    /// own image); required when enabled.
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default = "default_pull_policy")]
    pub image_pull_policy: String,
}

impl Default for Injection {
    fn default() -> Self {
        Self {
            enabled: false,
            image: None,
            image_pull_policy: default_pull_policy(),
        }
    }
}

fn default_pull_policy() -> String {
    "IfNotPresent".into()
}

/// Name of the dynamic loader in the directory `install-self` fills.
pub const LOADER: &str = "ld.so";

/// Copies the running binary into `dir` as `vaultsync`, with every shared library it has
/// loaded (read from /proc/self/maps) and the dynamic loader as [`LOADER`], all mode 0555:
/// the injection init container's job (the operator image has no shell and no `cp`). The
/// binary links glibc, which an application image may lack (Alpine, distroless/static,
/// scratch), so the webhook runs it through this loader with `--library-path dir`: it then
/// needs nothing from the application's image.
pub fn install_self(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let copy = |from: &std::path::Path, name: &str| -> anyhow::Result<()> {
        let to = dir.join(name);
        std::fs::copy(from, &to).map_err(|e| {
            anyhow::anyhow!(
                "install-self: cannot copy {} to {}: {e}",
                from.display(),
                to.display()
            )
        })?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o555))
            .map_err(|e| anyhow::anyhow!("install-self: cannot chmod {}: {e}", to.display()))
    };
    let exe = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("install-self: cannot find this binary: {e}"))?;
    copy(&exe, "vaultsync")?;
    let maps = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| anyhow::anyhow!("install-self: cannot read /proc/self/maps: {e}"))?;
    let mut libraries: Vec<&str> = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| path.starts_with('/') && path.contains(".so"))
        .collect();
    libraries.sort_unstable();
    libraries.dedup();
    let mut loader = false;
    for path in libraries {
        let path = std::path::Path::new(path);
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with("ld-linux") || name.starts_with("ld64") {
            copy(path, LOADER)?;
            loader = true;
        } else {
            copy(path, name)?;
        }
    }
    anyhow::ensure!(
        loader,
        "install-self: no dynamic loader among this binary's mappings"
    );
    let bundle = std::path::Path::new("/etc/ssl/certs/ca-certificates.crt");
    if bundle.exists() {
        copy(bundle, CA_BUNDLE)?;
    }
    Ok(())
}
