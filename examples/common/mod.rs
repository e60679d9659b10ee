//! What the benches share: the environment and the operator process here, the rest by
//! topic in the submodules: metrics, setup and cleanup, watches of the bench resources,
//! the runs measured on them, the report, and the local Key Vault's logs.

// Each example uses only part of this module.
#![allow(dead_code)]

pub mod keyvault_log;
pub mod metrics;
pub mod probe;
pub mod report;
pub mod runs;
pub mod setup;
pub mod watch;

use std::path::PathBuf;

use anyhow::Context as _;
use kube::Client;
use metrics::Samples;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};

/// `name` from the environment; `make` names the target that sets it up.
pub fn env(name: &str, make: &str) -> anyhow::Result<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty()).with_context(|| {
        format!("{name} is not set: run `make env-up` and `source target/env/env.sh` ({make} does both)")
    })
}

/// `name` from the environment as a number; `None` when it is not set.
pub fn env_number<T: std::str::FromStr>(name: &str) -> anyhow::Result<Option<T>> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| anyhow::anyhow!("{name}={v:?} is not a number")),
        _ => Ok(None),
    }
}

pub fn root_vault(make: &str) -> anyhow::Result<VaultClient> {
    Ok(VaultClient::new(
        VaultClientSettingsBuilder::default()
            .address(env("VAULT_ADDR", make)?)
            .token(env("VAULT_TOKEN", make)?)
            .build()?,
    )?)
}

/// A kube client from KUBECONFIG, checked against the apiserver.
pub async fn kube_client(make: &str) -> anyhow::Result<Client> {
    env("KUBECONFIG", make)?;
    let client = Client::try_default()
        .await
        .context("kube client from KUBECONFIG")?;
    client
        .apiserver_version()
        .await
        .context("the local kube-apiserver does not answer: run `make env-up`")?;
    Ok(client)
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `<prefix><n>`, as `ns_name` makes them.
pub fn is_numbered(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
}

pub fn all_pairs(namespaces: usize, per_namespace: usize) -> Vec<(usize, usize)> {
    (0..namespaces)
        .flat_map(|n| (0..per_namespace).map(move |i| (n, i)))
        .collect()
}

pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

// ---------------------------------------------------------------------------------------
// The operator process: the harness the end-to-end tests use too.

#[path = "../../tests/e2e/operator.rs"]
pub mod operator;

use operator::{ConfigSpec, Launch, OperatorProcess};

/// The operator under benchmark: the shared process harness, with metrics parsed into
/// [`Samples`]. Dropping it stops the process (SIGTERM, SIGKILL after five seconds).
pub struct Operator {
    process: OperatorProcess,
}

impl std::ops::Deref for Operator {
    type Target = OperatorProcess;
    fn deref(&self) -> &OperatorProcess {
        &self.process
    }
}

impl std::ops::DerefMut for Operator {
    fn deref_mut(&mut self) -> &mut OperatorProcess {
        &mut self.process
    }
}

impl Operator {
    /// The operator's metrics; empty when the endpoint does not answer.
    pub async fn metrics(&self) -> Samples {
        Samples::parse(&self.process.metrics_text().await.unwrap_or_default())
    }

    /// WARN and ERROR lines in its log.
    pub fn log_problems(&self) -> usize {
        self.logs()
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("WARN"))
            .count()
    }
}

fn operator_binary() -> anyhow::Result<PathBuf> {
    // The examples run from <target>/release/examples/; the operator is
    // <target>/release/vaultsync.
    let exe = std::env::current_exe()?;
    let candidates = [
        exe.parent()
            .and_then(|p| p.parent())
            .map(|p| p.join("vaultsync")),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/vaultsync")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .context("target/release/vaultsync is missing: run `cargo build --release` first")
}

/// The operator's log level for a bench: VAULTSYNC_BENCH_LOG, such as `debug` to see why
/// reconciles run, or `info`.
pub fn bench_log_level() -> String {
    std::env::var("VAULTSYNC_BENCH_LOG").unwrap_or_else(|_| "info".into())
}

/// A VaultSecret `namespace/name` labelled `<label>=true`, reading KV v2 `secret/<path>`
/// as service account `app` with the tenant's role `<namespace>-app` (as
/// [`setup::create_tenant`] makes them).
pub fn kv_vault_secret(
    namespace: &str,
    name: &str,
    label: &str,
    path: &str,
    refresh_interval: &str,
    ttl: &str,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "vaultsync.dev/v1alpha1",
        "kind": "VaultSecret",
        "metadata": {"name": name, "namespace": namespace, "labels": {label: "true"}},
        "spec": {
            "vault": {
                "auth": {"kubernetes": {"role": format!("{namespace}-app"), "serviceAccountName": "app"}},
                "kv": {"mount": "secret", "path": path},
            },
            "refreshInterval": refresh_interval,
            "ttl": ttl,
        }
    })
}

/// `[a, b, ...]`: a YAML list of `names`, such as namespaces to watch.
pub fn yaml_list(names: impl IntoIterator<Item = String>) -> String {
    format!("[{}]", names.into_iter().collect::<Vec<_>>().join(", "))
}

/// How the operator is started.
pub struct OperatorConfig<'a> {
    /// YAML: `[]` for all namespaces, or a list.
    pub watch_namespaces: &'a str,
    pub concurrency: usize,
    pub vault_addr: String,
    /// VAULTSYNC_LOG.
    pub log_level: String,
    /// YAML appended to the configuration, such as `housekeepingInterval: 5s`.
    pub extra: String,
}

/// Starts the operator with its config and log in `dir`.
pub fn start_operator(dir: &std::path::Path, cfg: OperatorConfig) -> anyhow::Result<Operator> {
    let OperatorConfig {
        watch_namespaces,
        concurrency,
        vault_addr,
        log_level,
        extra,
    } = cfg;
    let config = ConfigSpec {
        operator_namespace: "vaultsync-system".into(),
        watch_namespaces: watch_namespaces.into(),
        defaults: [
            ("ttl", "3h".to_string()),
            ("refreshInterval", "1h".to_string()),
            ("minRefreshInterval", "5s".to_string()),
            ("concurrency", concurrency.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        vault_addr,
        log_format: Some("text".into()),
        extra,
    };
    let launch = Launch {
        binary: operator_binary()?,
        dir: dir.to_path_buf(),
        config,
        log_level,
        env: Vec::new(),
        per_port_files: false,
    };
    let process = OperatorProcess::spawn(&launch).context("start target/release/vaultsync")?;
    Ok(Operator { process })
}
