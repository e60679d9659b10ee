//! Setup and cleanup: the CRDs, the bench namespaces, tenants and resources.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt as _, TryStreamExt as _, stream};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use vaultrs::client::VaultClient;

use super::is_numbered;
use super::watch::Synced;

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

/// Deletes every namespace `<prefix><n>` and waits up to `timeout` until they are gone;
/// how many there were.
pub async fn delete_namespaces(
    client: &Client,
    prefix: &str,
    timeout: Duration,
) -> anyhow::Result<usize> {
    let api = Api::<Namespace>::all(client.clone());
    let names = bench_namespaces(client, prefix).await?;
    for name in &names {
        let _ = api.delete(name, &DeleteParams::default()).await;
    }
    if !names.is_empty() {
        let what = format!(
            "the {} namespaces to be deleted",
            prefix.trim_end_matches('-')
        );
        wait_namespaces_gone(client, prefix, timeout, &what).await?;
    }
    Ok(names.len())
}

/// Deletes the namespaces `<prefix><n>` an earlier run left, saying so on stderr as
/// `tag`.
pub async fn delete_leftovers(client: &Client, prefix: &str, tag: &str) -> anyhow::Result<()> {
    let t = Instant::now();
    let leftovers = delete_namespaces(client, prefix, Duration::from_secs(180)).await?;
    if leftovers > 0 {
        eprintln!(
            "{tag}: deleted {leftovers} leftover {} namespaces in {:.1} s",
            prefix.trim_end_matches('-'),
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Creates namespace `ns` labelled `<label>=true`.
pub async fn create_namespace(client: &Client, ns: &str, label: &str) -> anyhow::Result<()> {
    let namespace: Namespace = serde_json::from_value(json!({
        "metadata": {"name": ns, "labels": {label: "true"}}
    }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .with_context(|| format!("create namespace {ns}"))?;
    Ok(())
}

/// Applies (server-side, as `field_manager`) the resources of kind `K` given as
/// (namespace, name, manifest), `concurrency` at a time.
pub async fn apply_all<K: Synced<Scope = NamespaceResourceScope>>(
    client: &Client,
    field_manager: &str,
    resources: Vec<(String, String, serde_json::Value)>,
    concurrency: usize,
) -> anyhow::Result<()> {
    let params = PatchParams::apply(field_manager).force();
    stream::iter(resources)
        .map(|(ns, name, manifest)| {
            let api = Api::<K>::namespaced(client.clone(), &ns);
            let params = &params;
            async move {
                api.patch(&name, params, &Patch::Apply(&manifest))
                    .await
                    .with_context(|| format!("apply {} {ns}/{name}", K::kind(&())))
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
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
    create_namespace(client, ns, label).await?;
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
