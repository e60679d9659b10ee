//! Harness for end-to-end tests: a real `vaultsync run` process per test, scoped to the
//! test's own namespace, against the local apiserver and OpenBao.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use serde_json::json;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};

use crate::common;

/// A canary value: tests put it in sources and assert it never shows up elsewhere.
pub fn canary(tag: &str) -> String {
    format!("canary-{tag}-{}", common::unique("v"))
}

pub fn root_vault() -> VaultClient {
    VaultClient::new(
        VaultClientSettingsBuilder::default()
            .address(common::env("VAULT_ADDR", "OpenBao server"))
            .token(common::env("VAULT_TOKEN", "OpenBao server"))
            .build()
            .expect("vault settings"),
    )
    .expect("vault client")
}

/// Creates service account `sa` in `ns`, a Vault policy reading `secret/data/{path_prefix}*`
/// (and KV v1 `kv1/{path_prefix}*`), and a Kubernetes auth role named after the namespace
/// bound to that account.
pub async fn tenant(client: &kube::Client, ns: &str, sa: &str, path_prefix: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": sa}})).expect("sa");
    let _ = accounts.create(&PostParams::default(), &account).await;
    let root = root_vault();
    let role = format!("{ns}-{sa}");
    let policy = format!(
        "path \"secret/data/{path_prefix}*\" {{ capabilities = [\"read\"] }}\n\
         path \"kv1/{path_prefix}*\" {{ capabilities = [\"read\"] }}\n\
         path \"auth/token/renew-self\" {{ capabilities = [\"update\"] }}\n\
         path \"auth/token/revoke-self\" {{ capabilities = [\"update\"] }}\n"
    );
    vaultrs::sys::policy::set(&root, &role, &policy)
        .await
        .expect("policy");
    vaultrs::auth::kubernetes::role::create(
        &root,
        "kubernetes",
        &role,
        Some(
            &mut vaultrs::api::auth::kubernetes::requests::CreateKubernetesRoleRequest::builder()
                .bound_service_account_names(vec![sa.to_string()])
                .bound_service_account_namespaces(vec![ns.to_string()])
                .audience("vault")
                .token_policies(vec![role.clone()])
                // As the README advises: Vault's `default` policy would let the token
                // renew any lease whose id it knows (`sys/leases/renew`, id in the body).
                .token_no_default_policy(true)
                .token_ttl("10m"),
        ),
    )
    .await
    .expect("kubernetes auth role (is auth/kubernetes configured? run `make env-up`)");
    role
}

pub mod keyvault;
pub mod operator;

use operator::{ConfigSpec, Launch, OperatorProcess};

/// How a test's operator differs from the default one.
#[derive(Clone, Debug, Default)]
pub struct OperatorOptions {
    /// YAML appended to the configuration (leader election, log format, ...).
    pub extra_config: String,
    /// Extra environment variables, such as `VAULTSYNC_FAILPOINT`.
    pub env: Vec<(String, String)>,
    /// The `default` connection's address instead of `VAULT_ADDR` (such as the address
    /// pods on the node reach OpenBao at).
    pub vault_addr: Option<String>,
    /// `defaults:` entries that replace or add to the test defaults
    /// (`ttl: 1h, refreshInterval: 30m, minRefreshInterval: 1s`), such as
    /// `("revocationTimeout", "5s")`.
    pub defaults: Vec<(String, String)>,
    /// Talk to the apiserver with this kubeconfig instead of `KUBECONFIG`.
    pub kubeconfig: Option<PathBuf>,
    /// Do not wait for `/readyz` (a process expected to abort may never get there).
    pub no_wait: bool,
    /// `watchNamespaces` as YAML, such as `[a, b]`, instead of the test's namespace only.
    pub watch_namespaces: Option<String>,
}

impl OperatorOptions {
    pub fn failpoint(step: &str) -> Self {
        OperatorOptions::default().env("VAULTSYNC_FAILPOINT", step)
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn default_value(mut self, key: &str, value: &str) -> Self {
        self.defaults.push((key.to_string(), value.to_string()));
        self
    }

    pub fn vault_addr(mut self, address: &str) -> Self {
        self.vault_addr = Some(address.to_string());
        self
    }

    pub fn extra(mut self, yaml: &str) -> Self {
        self.extra_config.push_str(yaml);
        self
    }
}

/// A running operator scoped to one namespace. Dropping it kills the process at once
/// (SIGKILL), as a crash would; [`Operator::terminate`] is the graceful way.
pub struct Operator {
    pub process: OperatorProcess,
    pub log: PathBuf,
    pub metrics_url: String,
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.process.kill();
    }
}

impl Operator {
    /// Starts `vaultsync run` at debug log level, watching only `ns`, with `extra` YAML
    /// appended to its configuration.
    pub async fn start(ns: &str, extra: &str) -> Operator {
        Self::start_with(ns, OperatorOptions::default().extra(extra)).await
    }

    /// Like [`Operator::start`], but talking to the apiserver with the credentials of
    /// `kubeconfig` (for example a service account's token) instead of `KUBECONFIG`.
    pub async fn start_with_kubeconfig(
        ns: &str,
        extra: &str,
        kubeconfig: Option<&std::path::Path>,
    ) -> Operator {
        let mut options = OperatorOptions::default().extra(extra);
        options.kubeconfig = kubeconfig.map(PathBuf::from);
        Self::start_with(ns, options).await
    }

    /// Starts the operator for `ns` as `options` say, and waits until it is ready
    /// (unless `options.no_wait`).
    pub async fn start_with(ns: &str, options: OperatorOptions) -> Operator {
        let mut config = ConfigSpec {
            operator_namespace: ns.to_string(),
            watch_namespaces: options
                .watch_namespaces
                .clone()
                .unwrap_or_else(|| format!("[{ns}]")),
            defaults: Vec::new(),
            vault_addr: options
                .vault_addr
                .clone()
                .unwrap_or_else(|| common::env("VAULT_ADDR", "OpenBao server")),
            log_format: None,
            extra: options.extra_config.clone(),
        };
        for (k, v) in [
            ("ttl", "1h"),
            ("refreshInterval", "30m"),
            ("minRefreshInterval", "1s"),
        ]
        .into_iter()
        .chain(
            options
                .defaults
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        ) {
            config.default_value(k, v);
        }
        let mut env = options.env.clone();
        if let Some(path) = &options.kubeconfig {
            env.push(("KUBECONFIG".into(), path.display().to_string()));
        }
        let launch = Launch {
            binary: PathBuf::from(env!("CARGO_BIN_EXE_vaultsync")),
            dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join("e2e")
                .join(ns),
            config,
            log_level: "debug".into(),
            env,
            per_port_files: true,
        };
        let process = OperatorProcess::spawn(&launch).expect("start vaultsync");
        let mut operator = Operator {
            log: process.log.clone(),
            metrics_url: process.metrics_url.clone(),
            process,
        };
        if !options.no_wait {
            let ready = operator.process.wait_ready(Duration::from_secs(30)).await;
            assert!(
                ready,
                "the operator did not get ready within 30 s (exit: {:?}); its log {}:\n{}",
                operator.process.try_exit(),
                operator.log.display(),
                tail(&operator.logs(), 30)
            );
        }
        operator
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit; returns whether it
    /// exited successfully in time.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        self.process.terminate(timeout)
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Waits up to `timeout` for the process to end by itself (a failpoint, say); its exit
    /// status, or `None` if it still runs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.try_exit() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn logs(&self) -> String {
        self.process.logs()
    }

    pub async fn metrics(&self) -> String {
        self.process.metrics_text().await.expect("metrics endpoint")
    }

    /// The value of one series, such as `vaultsync_secret_writes_total{part="data"}`, or
    /// `None` when the operator exports no such series (a renamed metric or label, or a
    /// counter never incremented).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        operator::metric_value(&self.metrics().await, series)
    }

    /// The value of a series that must be exported by now; a missing one fails the test
    /// with a message naming it.
    pub async fn present_metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        operator::metric_value(&text, series).unwrap_or_else(|| {
            panic!(
                "the operator exports no series {series} (renamed?); it exports:\n{}",
                text.lines()
                    .filter(|l| !l.starts_with('#')
                        && l.starts_with(series.split('{').next().unwrap_or(series)))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Applies a manifest (YAML text) in `ns` with server-side apply.
pub async fn apply(client: &kube::Client, ns: &str, yaml: &str) {
    let value: serde_json::Value = serde_yaml::from_str(yaml).expect("manifest yaml");
    let kind = value["kind"].as_str().expect("kind").to_string();
    let name = value["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    let api_version = value["apiVersion"]
        .as_str()
        .expect("apiVersion")
        .to_string();
    let (group, version) = api_version
        .split_once('/')
        .unwrap_or(("", api_version.as_str()));
    let ar = kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
        group, version, &kind,
    ));
    let api: Api<kube::core::DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    api.patch(
        &name,
        &kube::api::PatchParams::apply("e2e-test").force(),
        &kube::api::Patch::Apply(&value),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
}

pub async fn secret(client: &kube::Client, ns: &str, name: &str) -> Option<Secret> {
    Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .expect("get secret")
}

pub fn value(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
}

/// Waits until the Secret exists and `check` accepts it.
pub async fn wait_secret(
    client: &kube::Client,
    ns: &str,
    name: &str,
    what: &str,
    check: impl Fn(&Secret) -> bool,
) -> Secret {
    let check = &check;
    common::wait_until(Duration::from_secs(30), what, || async move {
        secret(client, ns, name).await.filter(|s| check(s))
    })
    .await
}

/// The resource's status as JSON.
pub async fn status(client: &kube::Client, ns: &str, kind: &str, name: &str) -> serde_json::Value {
    let ar = kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
        "vaultsync.dev",
        "v1alpha1",
        kind,
    ));
    let api: Api<kube::core::DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let obj = api.get(name).await.expect("get resource");
    obj.data.get("status").cloned().unwrap_or_default()
}

/// Waits until the resource's Ready condition has `status` and `reason`.
pub async fn wait_ready(
    client: &kube::Client,
    ns: &str,
    kind: &str,
    name: &str,
    status_: &str,
    reason: &str,
) -> serde_json::Value {
    common::wait_until(
        Duration::from_secs(30),
        &format!("{kind} {name} to be Ready={status_} ({reason})"),
        || async move {
            let s = status(client, ns, kind, name).await;
            let ready = s["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Ready")?
                .clone();
            (ready["status"] == status_ && ready["reason"] == reason).then_some(s)
        },
    )
    .await
}

/// All Events in `ns`, as "reason: message" lines.
pub async fn events(client: &kube::Client, ns: &str) -> Vec<String> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    api.list(&Default::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default()
            )
        })
        .collect()
}

/// Asserts that `canaries` appear in none of the operator's logs, the namespace's Events,
/// the resources' status, or the metrics.
pub async fn assert_no_leak(
    client: &kube::Client,
    ns: &str,
    operator: &Operator,
    canaries: &[&str],
) {
    let logs = operator.logs();
    let events = events(client, ns).await.join("\n");
    let metrics = operator.metrics().await;
    let mut statuses = String::new();
    for kind in ["VaultSecret", "AzureKeyVaultSecret"] {
        let ar = kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
            "vaultsync.dev",
            "v1alpha1",
            kind,
        ));
        let api: Api<kube::core::DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        for obj in api.list(&Default::default()).await.expect("list").items {
            statuses.push_str(
                &obj.data
                    .get("status")
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
            );
        }
    }
    assert!(logs.contains("DEBUG"), "the operator ran at debug level");
    for canary in canaries {
        for (place, text) in [
            ("logs", &logs),
            ("events", &events),
            ("status", &statuses),
            ("metrics", &metrics),
        ] {
            assert!(
                !text.contains(canary),
                "a secret value leaked into the operator's {place}"
            );
        }
    }
}

/// Logs in to the local PostgreSQL as `user`; the password goes through PGPASSWORD so
/// it never shows in a process list.
pub fn pg_login(user: &str, password: &str) -> Result<(), String> {
    let admin = common::env("DATABASE_URL", "PostgreSQL server");
    let rest = admin
        .split_once('@')
        .map(|(_, rest)| rest)
        .expect("DATABASE_URL has the form postgres://user:password@host:port/db");
    let out = Command::new("psql")
        .arg(format!("postgres://{user}@{rest}"))
        .args(["-tA", "-c", "select 1"])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .map_err(|e| format!("psql is not on PATH (run `make env-up`): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr)
            .lines()
            .next()
            .unwrap_or("")
            .to_string())
    }
}

/// A manifest of a VaultSecret reading as service account `app` with `role`.
pub fn vault_secret(name: &str, role: &str, source: &str, extra: &str) -> String {
    format!(
        "apiVersion: vaultsync.dev/v1alpha1\nkind: VaultSecret\nmetadata: {{name: {name}}}\nspec:\n  vault:\n    auth: {{kubernetes: {{role: {role}, serviceAccountName: app}}}}\n    {source}\n{extra}"
    )
}

/// Replaces `role`'s policy with one that also covers dynamic credentials of database role
/// `{ns}`, renewal and revocation of those leases only (path-scoped: the operator uses
/// `sys/leases/renew/<lease id>` and `sys/leases/revoke/<lease id>`), and PKI
/// issue/revoke, besides the KV paths under `{ns}/`.
pub async fn dynamic_policy(role: &str, ns: &str) {
    let policy = format!(
        "path \"secret/data/{ns}/*\" {{ capabilities = [\"read\"] }}\n\
         path \"kv1/{ns}/*\" {{ capabilities = [\"read\"] }}\n\
         path \"database/creds/{ns}\" {{ capabilities = [\"read\"] }}\n\
         path \"sys/leases/renew/database/creds/{ns}/*\" {{ capabilities = [\"update\"] }}\n\
         path \"sys/leases/revoke/database/creds/{ns}/*\" {{ capabilities = [\"update\"] }}\n\
         path \"auth/token/renew-self\" {{ capabilities = [\"update\"] }}\n\
         path \"auth/token/revoke-self\" {{ capabilities = [\"update\"] }}\n\
         path \"pki/issue/web\" {{ capabilities = [\"update\"] }}\n\
         path \"pki/revoke\" {{ capabilities = [\"update\"] }}\n"
    );
    vaultrs::sys::policy::set(&root_vault(), role, &policy)
        .await
        .expect("policy");
}

/// A database role named after the namespace with the given TTLs, reusing the
/// statements of the environment's `app` role.
pub async fn database_role(ns: &str, default_ttl: u64, max_ttl: u64) {
    let http = reqwest::Client::new();
    let addr = common::env("VAULT_ADDR", "OpenBao server");
    let token = common::env("VAULT_TOKEN", "OpenBao server");
    let app: serde_json::Value = http
        .get(format!("{addr}/v1/database/roles/app"))
        .header("X-Vault-Token", &token)
        .send()
        .await
        .expect("read role app")
        .json()
        .await
        .expect("role json");
    let data = &app["data"];
    assert!(
        data.is_object(),
        "database role app exists (run `make env-up`)"
    );
    let response = http
        .post(format!("{addr}/v1/database/roles/{ns}"))
        .header("X-Vault-Token", &token)
        .json(&json!({
            "db_name": data["db_name"],
            "creation_statements": data["creation_statements"],
            "revocation_statements": data["revocation_statements"],
            "default_ttl": default_ttl,
            "max_ttl": max_ttl,
        }))
        .send()
        .await
        .expect("create role");
    assert!(
        response.status().is_success(),
        "create database role: {}",
        response.status()
    );
}

/// Creates Deployment `api` in `ns` with no replicas (its pod template is what a rollout
/// restart changes; no pod of it runs on the environment's node).
pub async fn deployment(client: &kube::Client, ns: &str) -> Api<Deployment> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "api"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "api"}},
                 "template": {"metadata": {"labels": {"app": "api"}},
                              "spec": {"containers": [{"name": "api", "image": "example.invalid/api"}]}}}
    }))
    .expect("deployment");
    api.create(&PostParams::default(), &d)
        .await
        .expect("create deployment");
    api
}

/// The restart annotation vaultsync puts on Deployment `api`, if any.
pub async fn restarted_at(api: &Api<Deployment>) -> Option<String> {
    api.get("api")
        .await
        .ok()?
        .spec?
        .template
        .metadata?
        .annotations?
        .get("vaultsync.dev/restartedAt")
        .cloned()
}

/// Deletes the VaultSecrets of `ns` while their operator still runs, so finalizers that
/// revoke leases are honoured before the namespace goes, then deletes the namespace.
pub async fn delete_resources_then_namespace(client: &kube::Client, ns: &str) {
    let ar = kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
        "vaultsync.dev",
        "v1alpha1",
        "VaultSecret",
    ));
    let api: Api<kube::core::DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let _ = api
        .delete_collection(&Default::default(), &Default::default())
        .await;
    common::wait_until(
        Duration::from_secs(30),
        "the resources (and their leases) to go",
        || {
            let api = api.clone();
            async move {
                api.list(&Default::default())
                    .await
                    .ok()
                    .filter(|l| l.items.is_empty())
                    .map(|_| ())
            }
        },
    )
    .await;
    common::delete_namespace(client, ns).await;
}

/// A client with the CRDs installed and a fresh namespace, deleted when the guard drops.
pub async fn setup(prefix: &str) -> (kube::Client, common::NamespaceGuard) {
    let client = common::client().await;
    common::install_crds(&client).await;
    let ns = common::create_namespace(&client, prefix).await;
    (client, ns)
}

/// A fresh namespace with tenant `app` (role returned) and a KV v2 secret `{ns}/app`
/// holding one canary password (returned).
pub async fn seeded(
    prefix: &str,
    tag: &str,
) -> (kube::Client, common::NamespaceGuard, String, String) {
    let (client, ns) = setup(prefix).await;
    let role = tenant(&client, &ns, "app", &format!("{ns}/")).await;
    let value = canary(tag);
    vaultrs::kv2::set(
        &root_vault(),
        "secret",
        &format!("{ns}/app"),
        &json!({"password": value}),
    )
    .await
    .expect("seed");
    (client, ns, role, value)
}

/// A tenant whose policy also covers dynamic credentials of database role `{ns}`, the
/// renewal and revocation of those leases only, and PKI issue/revoke.
pub async fn dynamic_tenant(client: &kube::Client, ns: &str) -> String {
    let role = tenant(client, ns, "app", &format!("{ns}/")).await;
    dynamic_policy(&role, ns).await;
    role
}

/// A namespace with a dynamic tenant, a database role named after it with the given TTLs,
/// and Deployment `api` to restart.
pub async fn database_setup(
    prefix: &str,
    default_ttl: u64,
    max_ttl: u64,
) -> (
    kube::Client,
    common::NamespaceGuard,
    String,
    Api<Deployment>,
) {
    let (client, ns) = setup(prefix).await;
    let role = dynamic_tenant(&client, &ns).await;
    database_role(&ns, default_ttl, max_ttl).await;
    let deployments = deployment(&client, &ns).await;
    (client, ns, role, deployments)
}

/// VaultSecret `db` reading database role `{ns}` as tenant `role`, with `extra` spec lines.
pub fn database_secret(role: &str, ns: &str, extra: &str) -> String {
    format!(
        "apiVersion: vaultsync.dev/v1alpha1\nkind: VaultSecret\nmetadata: {{name: db}}\nspec:\n  vault:\n    auth: {{kubernetes: {{role: {role}, serviceAccountName: app}}}}\n    database: {{mount: database, role: {ns}}}\n{extra}"
    )
}

/// The username and password a database Secret holds.
pub fn creds(s: &Secret) -> (String, String) {
    (
        value(s, "username").unwrap_or_default(),
        value(s, "password").unwrap_or_default(),
    )
}

/// The VaultSecrets of `ns`, as dynamic objects.
pub fn vault_secrets(client: &kube::Client, ns: &str) -> Api<kube::core::DynamicObject> {
    let ar = kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
        "vaultsync.dev",
        "v1alpha1",
        "VaultSecret",
    ));
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// A request to OpenBao with `token`: the HTTP status and the JSON body (null if none).
pub async fn bao(
    token: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let addr = common::env("VAULT_ADDR", "OpenBao server");
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("HTTP method");
    let mut request = reqwest::Client::new()
        .request(method, format!("{addr}/v1/{path}"))
        .timeout(Duration::from_secs(10));
    if !token.is_empty() {
        request = request.header("X-Vault-Token", token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("OpenBao {path}: {e}"));
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// A request to OpenBao with the root token.
pub async fn bao_root(
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    bao(
        &common::env("VAULT_TOKEN", "OpenBao server"),
        method,
        path,
        body,
    )
    .await
}

/// Every lease OpenBao holds for database role `role` (full ids), listed as root.
pub async fn role_leases(role: &str) -> Vec<String> {
    let prefix = format!("database/creds/{role}/");
    let (status, body) = bao_root("LIST", &format!("sys/leases/lookup/{prefix}"), None).await;
    if status == 404 {
        return Vec::new();
    }
    assert_eq!(status, 200, "LIST sys/leases/lookup/{prefix}: {body}");
    body["data"]["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k.as_str())
        .map(|k| format!("{prefix}{k}"))
        .collect()
}

/// The lease as OpenBao knows it (`sys/leases/lookup`, as root), or `None` when it does
/// not exist (revoked or expired).
pub async fn lease_lookup(id: &str) -> Option<serde_json::Value> {
    let (status, body) = bao_root("PUT", "sys/leases/lookup", Some(json!({"lease_id": id}))).await;
    (status == 200).then(|| body["data"].clone())
}

/// Issues credentials of database role `role` with the root token: (lease id, username,
/// password).
pub async fn root_database_creds(role: &str) -> (String, String, String) {
    let (status, body) = bao_root("GET", &format!("database/creds/{role}"), None).await;
    assert_eq!(status, 200, "database/creds/{role}: {body}");
    (
        body["lease_id"].as_str().expect("lease_id").to_string(),
        body["data"]["username"]
            .as_str()
            .expect("username")
            .to_string(),
        body["data"]["password"]
            .as_str()
            .expect("password")
            .to_string(),
    )
}

/// A TokenRequest token of service account `sa` in `ns` for `audience`, as the operator
/// asks for when it logs in as a tenant.
pub async fn service_account_token(
    client: &kube::Client,
    ns: &str,
    sa: &str,
    audience: &str,
) -> String {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    let request: TokenRequest = serde_json::from_value(json!({
        "spec": {"audiences": [audience], "expirationSeconds": 600}
    }))
    .expect("token request");
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request(sa, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {ns}/{sa}: {e}"))
        .status
        .expect("TokenRequest status")
        .token
        .expect("TokenRequest token")
}

/// Logs in to OpenBao as tenant `role` (Kubernetes auth, service account `sa` of `ns`,
/// audience `vault`), as the operator does; returns the client token.
pub async fn tenant_login(client: &kube::Client, ns: &str, sa: &str, role: &str) -> String {
    let jwt = service_account_token(client, ns, sa, "vault").await;
    let (status, body) = bao(
        "",
        "POST",
        "auth/kubernetes/login",
        Some(json!({"role": role, "jwt": jwt})),
    )
    .await;
    assert_eq!(status, 200, "Kubernetes auth login as {role}: {body}");
    body["auth"]["client_token"]
        .as_str()
        .expect("client_token")
        .to_string()
}

/// Polls `check` until it returns `Ok`, or panics after `timeout` with what it waited
/// for, the last `Err` it saw, and the end of the operator's log.
pub async fn wait_state<T, F, Fut>(
    timeout: Duration,
    what: &str,
    operator: &Operator,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(v) => return v,
            Err(e) => e,
        };
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}; last seen: {last}\n\
                 operator log {} ends with:\n{}",
                operator.log.display(),
                tail(&operator.logs(), 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The Ready condition of a status, if any.
pub fn ready_condition(status: &serde_json::Value) -> Option<&serde_json::Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
}
