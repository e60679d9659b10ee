//! What `bench` and `bench_dynamic` share: the environment, Prometheus text parsing, the
//! operator process, and the setup and cleanup of the CRDs, namespaces and tenants.

// Each example uses only part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};

/// `name` from the environment; `make` names the target that sets it up.
pub fn env(name: &str, make: &str) -> anyhow::Result<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty()).with_context(|| {
        format!("{name} is not set: run `make env-up` and `source target/env/env.sh` ({make} does both)")
    })
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
// Prometheus text parsing

#[derive(Clone, Default)]
pub struct Samples(Vec<(String, BTreeMap<String, String>, f64)>);

impl Samples {
    pub fn parse(text: &str) -> Self {
        let mut out = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            out.push((name.to_string(), labels, value));
        }
        Samples(out)
    }

    fn values<'a>(
        &'a self,
        name: &'a str,
        keep: impl Fn(&BTreeMap<String, String>) -> bool + 'a,
    ) -> impl Iterator<Item = f64> + 'a {
        self.0
            .iter()
            .filter(move |(n, l, _)| n == name && keep(l))
            .map(|(_, _, v)| *v)
    }

    /// Sum of the series named `name` whose labels pass `keep`.
    pub fn sum(&self, name: &str, keep: impl Fn(&BTreeMap<String, String>) -> bool) -> f64 {
        // An empty float sum is -0.0; print it as 0.
        self.values(name, keep).sum::<f64>() + 0.0
    }

    /// Like `sum`, leaving out values that are not finite (and an empty sum -0.0).
    pub fn sum_finite(&self, name: &str, keep: impl Fn(&BTreeMap<String, String>) -> bool) -> f64 {
        self.values(name, keep).filter(|v| v.is_finite()).sum()
    }

    /// Sums of the series named `name` passing `keep`, grouped by `key`.
    pub fn group(
        &self,
        name: &str,
        keep: impl Fn(&BTreeMap<String, String>) -> bool,
        key: impl Fn(&BTreeMap<String, String>) -> String,
    ) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (n, l, v) in &self.0 {
            if n == name && keep(l) {
                *out.entry(key(l)).or_insert(0.0) += v;
            }
        }
        out
    }
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                other => value.push(other),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    labels
}

pub fn delta(
    after: &BTreeMap<String, f64>,
    before: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

/// The `top` largest entries, then the rest as one sum.
pub fn fmt_top(map: &BTreeMap<String, f64>, top: usize) -> String {
    let mut items: Vec<(&String, &f64)> = map.iter().collect();
    items.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
    let mut parts: Vec<String> = items
        .iter()
        .take(top)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let rest: f64 = items.iter().skip(top).map(|(_, v)| **v).sum();
    if rest > 0.0 {
        parts.push(format!("other {rest}"));
    }
    parts.join(", ")
}

const WRITE_VERBS: [&str; 6] = [
    "POST",
    "PUT",
    "PATCH",
    "DELETE",
    "DELETECOLLECTION",
    "APPLY",
];

/// Apiserver write requests so far (all clients), by "verb resource[/subresource]".
pub async fn apiserver_writes(client: &Client) -> anyhow::Result<BTreeMap<String, f64>> {
    let request = axum::http::Request::get("/metrics").body(Vec::new())?;
    let text = client
        .request_text(request)
        .await
        .context("read the kube-apiserver's /metrics")?;
    Ok(Samples::parse(&text).group(
        "apiserver_request_total",
        |l| WRITE_VERBS.contains(&l.get("verb").map(String::as_str).unwrap_or_default()),
        |l| {
            let resource = l.get("resource").cloned().unwrap_or_default();
            let sub = l.get("subresource").cloned().unwrap_or_default();
            let verb = l.get("verb").cloned().unwrap_or_default();
            if sub.is_empty() {
                format!("{verb} {resource}")
            } else {
                format!("{verb} {resource}/{sub}")
            }
        },
    ))
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

// ---------------------------------------------------------------------------------------
// Setup and cleanup

pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/vaultsync.dev.yaml"
    ))?;
    let mut names = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&yaml) {
        let crd: CustomResourceDefinition = serde::Deserialize::deserialize(doc)?;
        let name = crd.name_any();
        // The same field manager as the tests, so the two never co-own CRD fields.
        api.patch(
            &name,
            &PatchParams::apply("vaultsync-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("apply CRD {name}"))?;
        names.push(name);
    }
    for name in names {
        wait_for(Duration::from_secs(30), &format!("CRD {name}"), || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let crd = api.get(&name).await.ok()?;
                crd.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            }
        })
        .await?;
    }
    Ok(())
}

pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The namespaces `<prefix><n>`.
pub async fn bench_namespaces(client: &Client, prefix: &str) -> anyhow::Result<Vec<String>> {
    Ok(Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|n| n.name_any())
        .filter(|n| is_numbered(n, prefix))
        .collect())
}

/// Waits up to `timeout` until no namespace `<prefix><n>` is left.
pub async fn wait_namespaces_gone(
    client: &Client,
    prefix: &str,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<()> {
    wait_for(timeout, what, || async {
        bench_namespaces(client, prefix)
            .await
            .ok()
            .filter(|left| left.is_empty())
            .map(|_| ())
    })
    .await
}

/// A tenant: namespace `ns` labelled `label`, service account `app`, OpenBao policy
/// `<ns>-app` with `policy`, and a Kubernetes auth role of that name bound to the
/// account. Returns the account's uid.
pub async fn create_tenant(
    client: &Client,
    vault: &VaultClient,
    ns: &str,
    label: &str,
    policy: &str,
) -> anyhow::Result<String> {
    let namespace: Namespace = serde_json::from_value(json!({
        "metadata": {"name": ns, "labels": {label: "true"}}
    }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .with_context(|| format!("create namespace {ns}"))?;
    let account: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "app"}}))?;
    let account = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &account)
        .await
        .with_context(|| format!("create service account {ns}/app"))?;
    let uid = account.uid().unwrap_or_default();
    let role = format!("{ns}-app");
    vaultrs::sys::policy::set(vault, &role, policy)
        .await
        .with_context(|| format!("policy {role}"))?;
    vaultrs::auth::kubernetes::role::create(
        vault,
        "kubernetes",
        &role,
        Some(
            &mut vaultrs::api::auth::kubernetes::requests::CreateKubernetesRoleRequest::builder()
                .bound_service_account_names(vec!["app".to_string()])
                .bound_service_account_namespaces(vec![ns.to_string()])
                .audience("vault")
                .token_policies(vec![role.clone()])
                .token_ttl("10m"),
        ),
    )
    .await
    .with_context(|| format!("kubernetes auth role {role} (is auth/kubernetes configured?)"))?;
    Ok(uid)
}

/// Deletes the tenant's OpenBao role and policy, ignoring errors.
pub async fn delete_tenant_vault(vault: &VaultClient, ns: &str) {
    let role = format!("{ns}-app");
    let _ = vaultrs::auth::kubernetes::role::delete(vault, "kubernetes", &role).await;
    let _ = vaultrs::sys::policy::delete(vault, &role).await;
}
