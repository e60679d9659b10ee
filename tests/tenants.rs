//! Hostile tenants and careless neighbours, end to end against the real apiserver and
//! OpenBao: what one namespace's user can put in a resource, a Secret or a label must not
//! reach the operator's memory, another tenant's copies, or what the operator owns.

mod common;
mod e2e;

use std::time::Duration;

use e2e::{Operator, apply, seeded, status, value, vault_secret, wait_ready, wait_secret};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// The template from the issue: 90 bytes that made a 516 MiB string before the output
/// cap was ever reached.
const BLOW_UP: &str = r#"{% set a="x"*10000 %}{% set b=a|replace("x",a) %}{{ (b~b)|length }}"#;

#[tokio::test]
async fn a_template_that_would_exhaust_memory_is_refused_and_others_keep_syncing() {
    let (client, ns, role, original) = seeded("e2e-hostile-template", "hostile").await;
    let op = Operator::start(&ns, "").await;
    let rss_before = op.process.stats().rss_kib;
    let source = format!("kv: {{mount: secret, path: {ns}/app}}");
    let template = serde_json::to_string(BLOW_UP).expect("json");
    apply(
        &client,
        &ns,
        &vault_secret(
            "boom",
            &role,
            &source,
            &format!("  output:\n    secret:\n      template:\n        ok: \"{{{{ password }}}}\"\n        boom: {template}\n"),
        ),
    )
    .await;
    apply(&client, &ns, &vault_secret("fine", &role, &source, "")).await;

    let refused = wait_ready(&client, &ns, "VaultSecret", "boom", "False", "InvalidSpec").await;
    let message = refused["conditions"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("\"boom\"") && message.contains("line 1"),
        "the refusal names the key and line: {message}"
    );
    assert!(!message.contains(&original), "the refusal carries no value");
    assert!(
        e2e::secret(&client, &ns, "boom").await.is_none(),
        "nothing was written for the refused resource"
    );
    wait_ready(&client, &ns, "VaultSecret", "fine", "True", "Synced").await;
    let copy = e2e::secret(&client, &ns, "fine")
        .await
        .expect("the other copy");
    assert_eq!(value(&copy, "password").as_deref(), Some(original.as_str()));
    let rss_after = op.process.stats().rss_kib;
    // Not a timing target: a template that ran would have taken hundreds of MiB.
    println!("operator RSS {rss_before} KiB before, {rss_after} KiB after the hostile template");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "the hostile template did not run: RSS {rss_before} -> {rss_after} KiB"
    );
    e2e::assert_no_leak(&client, &ns, &op, &[&original]).await;
}

#[tokio::test]
async fn the_collector_deletes_only_secrets_a_vaultsync_resource_controls() {
    let (client, ns, role, original) = seeded("e2e-collector", "collector").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let owner = configmaps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "owner"}})).expect("cm"),
        )
        .await
        .expect("configmap");
    let marked = |name: &str, owner: Option<serde_json::Value>| {
        let mut metadata = json!({
            "name": name,
            "labels": {"app.kubernetes.io/managed-by": "vaultsync"},
            "annotations": {"vaultsync.dev/expires-at": "2000-01-01T00:00:00Z"},
        });
        if let Some(owner) = owner {
            metadata["ownerReferences"] = json!([owner]);
        }
        serde_json::from_value::<Secret>(json!({"metadata": metadata, "stringData": {"k": "keep"}}))
            .expect("secret")
    };
    // (A Secret whose controller names a vaultsync resource that does not exist is left to
    // Kubernetes' garbage collector, which deletes dependents of missing owners.)
    let planted = [
        marked("no-owner", None),
        marked(
            "configmap-owned",
            Some(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                        "uid": owner.metadata.uid, "controller": true}),
            ),
        ),
    ];
    for secret in &planted {
        secrets
            .create(&PostParams::default(), secret)
            .await
            .expect("planted secret");
    }
    let op = Operator::start(&ns, "").await;
    // The collector is running and sees this namespace: the operator's own copy syncs.
    apply(
        &client,
        &ns,
        &vault_secret(
            "real",
            &role,
            &format!("kv: {{mount: secret, path: {ns}/app}}"),
            "",
        ),
    )
    .await;
    wait_ready(&client, &ns, "VaultSecret", "real", "True", "Synced").await;
    // Several collector passes (every 2 s).
    tokio::time::sleep(Duration::from_secs(8)).await;
    for secret in &planted {
        let name = secret.metadata.name.as_deref().unwrap_or_default();
        let still = secrets.get_opt(name).await.expect("get");
        assert!(
            still.is_some(),
            "Secret {name} is not the operator's and must not be collected"
        );
    }
    e2e::assert_no_leak(&client, &ns, &op, &[&original]).await;
}

#[tokio::test]
async fn data_written_under_the_operators_field_manager_is_still_repaired() {
    let (client, ns, role, original) = seeded("e2e-fake-manager", "fakemanager").await;
    let op = Operator::start(&ns, "").await;
    apply(
        &client,
        &ns,
        &vault_secret(
            "app",
            &role,
            &format!("kv: {{mount: secret, path: {ns}/app}}"),
            "  refreshInterval: 30m\n  ttl: 2h\n",
        ),
    )
    .await;
    let is_original = |s: &Secret| value(s, "password").as_deref() == Some(original.as_str());
    wait_secret(&client, &ns, "app", "the copy", is_original).await;

    // A client posing as the operator: same field manager, server-side apply, forced.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .patch(
            "app",
            &PatchParams::apply("vaultsync").force(),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "app"},
                "stringData": {"password": "planted"},
            })),
        )
        .await
        .expect("impostor write");
    wait_secret(
        &client,
        &ns,
        "app",
        "the impostor's data to be repaired",
        is_original,
    )
    .await;
    let status = status(&client, &ns, "VaultSecret", "app").await;
    assert!(
        status["dataHmac"].as_str().is_some(),
        "status records the HMAC the repair compares with: {status}"
    );
    e2e::assert_no_leak(&client, &ns, &op, &[&original]).await;
}
