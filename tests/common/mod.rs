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

/// Creates a fresh namespace for one test; the test deletes it with `delete_namespace`.
pub async fn create_namespace(client: &Client, prefix: &str) -> String {
    let name = unique(prefix);
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
    }))
    .expect("namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    name
}

pub async fn delete_namespace(client: &Client, name: &str) {
    let _ = Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await;
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
