//! Harness for end-to-end tests: a real `vaultsync run` process per test, scoped to the
//! test's own namespace, against the local apiserver and OpenBao.
#![allow(dead_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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
         path \"kv1/{path_prefix}*\" {{ capabilities = [\"read\"] }}\n"
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
                .token_ttl("10m"),
        ),
    )
    .await
    .expect("kubernetes auth role (is auth/kubernetes configured? run `make env-up`)");
    role
}

/// A running operator scoped to one namespace. Dropping it stops the process.
pub struct Operator {
    child: Child,
    pub log: PathBuf,
    pub metrics_url: String,
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Operator {
    /// Sends SIGTERM and waits up to `timeout` for the process to exit; returns whether it
    /// exited successfully in time.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Operator {
    /// Starts `vaultsync run` at debug log level, watching only `ns`, with `extra` YAML
    /// appended to its configuration.
    pub async fn start(ns: &str, extra: &str) -> Operator {
        Self::start_with_kubeconfig(ns, extra, None).await
    }

    /// Like [`Operator::start`], but talking to the apiserver with the credentials of
    /// `kubeconfig` (for example a service account's token) instead of `KUBECONFIG`.
    pub async fn start_with_kubeconfig(
        ns: &str,
        extra: &str,
        kubeconfig: Option<&std::path::Path>,
    ) -> Operator {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("e2e")
            .join(ns);
        std::fs::create_dir_all(&dir).expect("e2e dir");
        let port = free_port();
        let config = format!(
            "metricsAddress: 127.0.0.1:{port}\n\
             operatorNamespace: {ns}\n\
             watchNamespaces: [{ns}]\n\
             defaults: {{ttl: 1h, refreshInterval: 30m, minRefreshInterval: 1s}}\n\
             vault:\n  default:\n    address: {addr}\n    kvVersions: {{}}\n{extra}",
            addr = common::env("VAULT_ADDR", "OpenBao server"),
        );
        let config_path = dir.join(format!("config-{port}.yaml"));
        std::fs::write(&config_path, config).expect("write config");
        let log = dir.join(format!("operator-{port}.log"));
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_vaultsync"));
        command
            .args(["run", "--config"])
            .arg(&config_path)
            .env("VAULTSYNC_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log_file);
        if let Some(path) = kubeconfig {
            command.env("KUBECONFIG", path);
        }
        let child = command.spawn().expect("start vaultsync");
        let operator = Operator {
            child,
            log,
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
        };
        let ready = format!("http://127.0.0.1:{port}/readyz");
        common::wait_until(Duration::from_secs(30), "the operator to be ready", || {
            let ready = ready.clone();
            async move {
                let ok = reqwest::get(&ready).await.ok()?.status().is_success();
                ok.then_some(())
            }
        })
        .await;
        operator
    }

    pub fn logs(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(&self.metrics_url)
            .await
            .expect("metrics endpoint")
            .text()
            .await
            .expect("metrics text")
    }

    /// The value of one metric line, such as `vaultsync_secret_writes_total{part="data"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }
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

/// Replaces `role`'s policy with one that also covers dynamic credentials, lease renewal
/// and revocation, and PKI issue/revoke, besides the KV paths under `{ns}/`.
pub async fn dynamic_policy(role: &str, ns: &str) {
    let policy = format!(
        "path \"secret/data/{ns}/*\" {{ capabilities = [\"read\"] }}\n\
         path \"kv1/{ns}/*\" {{ capabilities = [\"read\"] }}\n\
         path \"database/creds/{ns}\" {{ capabilities = [\"read\"] }}\n\
         path \"sys/leases/renew\" {{ capabilities = [\"update\"] }}\n\
         path \"sys/leases/revoke\" {{ capabilities = [\"update\"] }}\n\
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

/// Creates Deployment `api` in `ns` (no kubelet runs it; its pod template is what a
/// rollout restart changes).
pub async fn deployment(client: &kube::Client, ns: &str) -> Api<Deployment> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "api"},
        "spec": {"selector": {"matchLabels": {"app": "api"}},
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

/// A client with the CRDs installed and a fresh namespace.
pub async fn setup(prefix: &str) -> (kube::Client, String) {
    let client = common::client().await;
    common::install_crds(&client).await;
    let ns = common::create_namespace(&client, prefix).await;
    (client, ns)
}

/// A fresh namespace with tenant `app` (role returned) and a KV v2 secret `{ns}/app`
/// holding one canary password (returned).
pub async fn seeded(prefix: &str, tag: &str) -> (kube::Client, String, String, String) {
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
