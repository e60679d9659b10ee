//! Helpers shared by the integration tests. They run against the real local environment
//! (`make env-up`), whose settings arrive as environment variables from
//! `target/env/env.sh`. A missing setting is a failure that names the component, never
//! a skipped test.
#![allow(dead_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, Config};

/// The value of `name`, or a panic that says which component of the environment is missing.
pub fn env(name: &str, component: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set, so the {component} of the local environment is missing: \
             run `make env-up` and `source target/env/env.sh` (make test does both)"
        ),
    }
}

/// A kube client for the local apiserver, from `KUBECONFIG`.
pub async fn client() -> Client {
    env("KUBECONFIG", "Kubernetes control plane");
    let config = Config::infer()
        .await
        .expect("KUBECONFIG is set but unreadable: run `make env-up` again");
    let client = Client::try_from(config).expect("kube client");
    client
        .apiserver_version()
        .await
        .expect("the local kube-apiserver does not answer: run `make env-up` and check target/env/k8s/*.log");
    client
}

/// A name unique to this test run, for namespaces and objects.
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{:x}", std::process::id(), nanos)
}

/// Creates a fresh namespace for one test. The returned guard reads as the namespace's
/// name (`&ns` is a `&str`, `ns.clone()` a `String`) and deletes the namespace when it
/// goes out of scope, on every path, a failing test's panic included.
pub async fn create_namespace(client: &Client, prefix: &str) -> NamespaceGuard {
    let name = unique(prefix);
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
    }))
    .expect("namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    NamespaceGuard::new(name)
}

pub async fn delete_namespace(client: &Client, name: &str) {
    let _ = Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

/// A test's namespace, deleted when the guard is dropped.
///
/// Drop runs inside the test's tokio runtime, where blocking on another future is not
/// allowed, so the clean-up runs on a plain thread with a runtime of its own, and Drop
/// waits for it (at most ~30 s). It deletes the namespace without waiting for it to go,
/// removes vaultsync's finalizers from resources left in it (the test's operator is dead
/// by then: it was started after the namespace, so it is dropped first), and revokes, with
/// the root token, the OpenBao leases of the database role named after the namespace (and
/// of any prefix added with [`NamespaceGuard::revoke_on_drop`]), so a failed test leaves
/// neither a Terminating namespace nor live database users behind.
pub struct NamespaceGuard {
    name: String,
    lease_prefixes: std::sync::Mutex<Vec<String>>,
}

impl NamespaceGuard {
    pub fn new(name: String) -> Self {
        let lease_prefixes = std::sync::Mutex::new(vec![format!("database/creds/{name}/")]);
        NamespaceGuard {
            name,
            lease_prefixes,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Also revoke OpenBao leases under `prefix` (such as `database/creds/<role>/`) when
    /// the guard drops.
    pub fn revoke_on_drop(&self, prefix: &str) {
        self.lease_prefixes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(prefix.to_string());
    }
}

impl std::ops::Deref for NamespaceGuard {
    type Target = String;
    fn deref(&self) -> &String {
        &self.name
    }
}

impl AsRef<str> for NamespaceGuard {
    fn as_ref(&self) -> &str {
        &self.name
    }
}

impl AsRef<std::path::Path> for NamespaceGuard {
    fn as_ref(&self) -> &std::path::Path {
        self.name.as_ref()
    }
}

impl std::fmt::Display for NamespaceGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl serde::Serialize for NamespaceGuard {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name)
    }
}

impl PartialEq<str> for NamespaceGuard {
    fn eq(&self, other: &str) -> bool {
        self.name == other
    }
}

impl std::fmt::Debug for NamespaceGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NamespaceGuard({})", self.name)
    }
}

impl Drop for NamespaceGuard {
    fn drop(&mut self) {
        let name = self.name.clone();
        let prefixes = std::mem::take(
            &mut *self
                .lease_prefixes
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(30),
                    cleanup_namespace(&name, &prefixes),
                )
                .await;
            });
        });
        let _ = cleanup.join();
    }
}

async fn cleanup_namespace(name: &str, lease_prefixes: &[String]) {
    if let Ok(config) = Config::infer().await
        && let Ok(client) = Client::try_from(config)
    {
        delete_namespace(&client, name).await;
        for kind in ["VaultSecret", "AzureKeyVaultSecret"] {
            let ar = kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
                "vaultsync.dev",
                "v1alpha1",
                kind,
            ));
            let api: Api<kube::core::DynamicObject> =
                Api::namespaced_with(client.clone(), name, &ar);
            let Ok(list) = api.list_metadata(&Default::default()).await else {
                continue;
            };
            for obj in list.items {
                if obj
                    .metadata
                    .finalizers
                    .as_ref()
                    .is_some_and(|f| !f.is_empty())
                    && let Some(obj_name) = obj.metadata.name.as_deref()
                {
                    let _ = api
                        .patch(
                            obj_name,
                            &PatchParams::default(),
                            &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
                        )
                        .await;
                }
            }
        }
    }
    if let (Ok(addr), Ok(token)) = (std::env::var("VAULT_ADDR"), std::env::var("VAULT_TOKEN")) {
        let http = reqwest::Client::new();
        for prefix in lease_prefixes {
            let _ = http
                .put(format!("{addr}/v1/sys/leases/revoke-prefix/{prefix}"))
                .header("X-Vault-Token", &token)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
        }
    }
}

/// Applies the committed CRDs from `crds/` and waits until both are Established.
pub async fn install_crds(client: &Client) {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/vaultsync.dev.yaml"
    ))
    .expect("read crds/vaultsync.dev.yaml");
    let mut names = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&yaml) {
        let crd: CustomResourceDefinition =
            serde::Deserialize::deserialize(doc).expect("crds/ holds CustomResourceDefinitions");
        let name = crd.metadata.name.clone().expect("CRD name");
        api.patch(
            &name,
            &PatchParams::apply("vaultsync-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("the apiserver refused CRD {name}: {e}"));
        names.push(name);
    }
    for name in names {
        wait_until(
            Duration::from_secs(30),
            &format!("CRD {name} to be Established"),
            || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let crd = api.get(&name).await.ok()?;
                    let conditions = crd.status?.conditions?;
                    conditions
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                        .then_some(())
                }
            },
        )
        .await;
    }
}

/// Polls `check` until it yields a value, or panics after `timeout` naming what it waited for.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
