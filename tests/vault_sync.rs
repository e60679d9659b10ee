//! VaultSecret end to end: a real operator process against the local apiserver and
//! OpenBao, one namespace and one operator per test, tenants logging in with Kubernetes
//! auth. Every test seeds canary values and checks that none leaks.

mod common;
mod e2e;

use std::time::Duration;

use e2e::{
    Operator, apply, assert_no_leak, canary, root_vault, secret, seeded, setup, tenant, value,
    vault_secret, wait_ready, wait_secret,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

const SYNCED: &str = "vaultsync_syncs_total{kind=\"VaultSecret\",result=\"Synced\"}";
const DATA_WRITES: &str = "vaultsync_secret_writes_total{part=\"data\"}";
const META_WRITES: &str = "vaultsync_secret_writes_total{part=\"metadata\"}";

#[tokio::test]
async fn kv_v2_keys_version_pin_and_template() {
    let (client, ns) = setup("e2e-kv2").await;
    let role = tenant(&client, &ns, "app", &format!("{ns}/")).await;
    let root = root_vault();
    let (old, new) = (canary("old"), canary("new"));
    let path = format!("{ns}/db");
    vaultrs::kv2::set(
        &root,
        "secret",
        &path,
        &json!({"username": "app", "password": old}),
    )
    .await
    .expect("v1");
    vaultrs::kv2::set(
        &root,
        "secret",
        &path,
        &json!({"username": "app", "password": new, "extra": "x"}),
    )
    .await
    .expect("v2");
    let op = Operator::start(&ns, "").await;

    apply(
        &client,
        &ns,
        &vault_secret(
            "all",
            &role,
            &format!("kv: {{mount: secret, path: {path}}}"),
            "",
        ),
    )
    .await;
    apply(
        &client,
        &ns,
        &vault_secret(
            "subset",
            &role,
            &format!("kv: {{mount: secret, path: {path}, keys: [password]}}"),
            "",
        ),
    )
    .await;
    apply(
        &client,
        &ns,
        &vault_secret(
            "pinned",
            &role,
            &format!("kv: {{mount: secret, path: {path}, version: 1}}"),
            "",
        ),
    )
    .await;
    apply(
        &client,
        &ns,
        &vault_secret(
            "templated",
            &role,
            &format!("kv: {{mount: secret, path: {path}}}"),
            "  output:\n    secret:\n      name: db-url\n      template:\n        url: \"postgres://{{ username }}:{{ password }}@db:5432/app\"\n",
        ),
    )
    .await;

    let all = wait_secret(&client, &ns, "all", "the full copy", |_| true).await;
    assert_eq!(value(&all, "password").as_deref(), Some(new.as_str()));
    assert_eq!(all.data.as_ref().map(|d| d.len()), Some(3));
    assert_eq!(
        all.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("app.kubernetes.io/managed-by"))
            .map(String::as_str),
        Some("vaultsync")
    );
    let annotations = all.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get("vaultsync.dev/source-version")
            .map(String::as_str),
        Some("2")
    );
    assert!(annotations.contains_key("vaultsync.dev/expires-at"));
    let owner = &all.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("VaultSecret", Some(true))
    );

    let subset = wait_secret(&client, &ns, "subset", "the keys subset", |_| true).await;
    assert_eq!(
        subset
            .data
            .as_ref()
            .map(|d| d.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["password".to_string()])
    );
    let pinned = wait_secret(&client, &ns, "pinned", "the pinned version", |_| true).await;
    assert_eq!(value(&pinned, "password").as_deref(), Some(old.as_str()));
    let templated = wait_secret(&client, &ns, "db-url", "the templated copy", |_| true).await;
    assert_eq!(
        value(&templated, "url"),
        Some(format!("postgres://app:{new}@db:5432/app"))
    );

    let status = wait_ready(&client, &ns, "VaultSecret", "all", "True", "Synced").await;
    assert_eq!(status["secretName"], "all");
    assert_eq!(status["sourceVersion"], "2");
    assert!(
        status["dataHmac"]
            .as_str()
            .is_some_and(|h| h.starts_with("hmac-sha256:"))
    );
    for field in [
        "lastSyncTime",
        "expiresAt",
        "nextRefreshTime",
        "observedGeneration",
    ] {
        assert!(!status[field].is_null(), "status.{field} is set");
    }
    assert_eq!(
        e2e::ready_condition(&status).map(|c| c["message"].clone()),
        Some(json!("Secret all holds version 2"))
    );
    // A first sync is routine: Ready says it, and no Event does.
    let events = e2e::events(&client, &ns).await;
    assert!(
        !events
            .iter()
            .any(|e| e.starts_with("SecretSynced") || e.starts_with("SecretRotated")),
        "{events:?}"
    );
    assert_no_leak(&client, &ns, &op, &[&old, &new]).await;
}

#[tokio::test]
async fn kv_v1_sync() {
    let (client, ns) = setup("e2e-kv1").await;
    let role = tenant(&client, &ns, "app", &format!("{ns}/")).await;
    let value_ = canary("kv1");
    vaultrs::kv1::set(
        &root_vault(),
        "kv1",
        &format!("{ns}/app"),
        &[("token", value_.as_str())].into(),
    )
    .await
    .expect("write KV v1 (is kv1/ mounted? run `make env-up`)");
    let op = Operator::start(&ns, "").await;
    apply(
        &client,
        &ns,
        &vault_secret(
            "v1",
            &role,
            &format!("kv: {{mount: kv1, path: {ns}/app}}"),
            "",
        ),
    )
    .await;
    let copy = wait_secret(&client, &ns, "v1", "the KV v1 copy", |_| true).await;
    assert_eq!(value(&copy, "token").as_deref(), Some(value_.as_str()));
    wait_ready(&client, &ns, "VaultSecret", "v1", "True", "Synced").await;
    assert_no_leak(&client, &ns, &op, &[&value_]).await;
}

#[tokio::test]
async fn rotation_restarts_workloads_and_refreshes_do_not_write() {
    let (client, ns) = setup("e2e-rotate").await;
    let role = tenant(&client, &ns, "app", &format!("{ns}/")).await;
    let root = root_vault();
    let (first, second) = (canary("first"), canary("second"));
    let path = format!("{ns}/app");
    vaultrs::kv2::set(&root, "secret", &path, &json!({"password": first}))
        .await
        .expect("seed");
    let deployments = e2e::deployment(&client, &ns).await;

    let op = Operator::start(&ns, "").await;
    apply(
        &client,
        &ns,
        &vault_secret(
            "app",
            &role,
            &format!("kv: {{mount: secret, path: {path}}}"),
            "  refreshInterval: 1s\n  ttl: 8s\n  rolloutRestartTargets: [{kind: Deployment, name: api}]\n",
        ),
    )
    .await;
    wait_secret(&client, &ns, "app", "the first copy", |s| {
        value(s, "password").as_deref() == Some(first.as_str())
    })
    .await;
    wait_ready(&client, &ns, "VaultSecret", "app", "True", "Synced").await;

    // Steady state: ~8 refreshes of unchanged data write no data, and the expiry mark
    // moves at most once per half ttl (4 s).
    // The first write made the data counter exist; the metadata counter may not exist yet
    // (no metadata-only write so far), but it must by the end of the window below.
    let data_before = op.present_metric(DATA_WRITES).await;
    let meta_before = op.metric(META_WRITES).await.unwrap_or(0.0);
    let syncs_before = op.present_metric(SYNCED).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let syncs = op.present_metric(SYNCED).await - syncs_before;
    let data_writes = op.present_metric(DATA_WRITES).await - data_before;
    let meta_writes = op.present_metric(META_WRITES).await - meta_before;
    assert!(syncs >= 4.0, "refreshes happened ({syncs})");
    assert_eq!(data_writes, 0.0, "unchanged data is never rewritten");
    // Without a move the copy, marked to expire 8 s after its first write, would expire
    // inside this 8 s window: the mark moved at least once.
    assert!(
        (1.0..=3.0).contains(&meta_writes),
        "the expiry mark moved {meta_writes} times in 8 s with a 8 s ttl"
    );
    assert!(
        e2e::restarted_at(&deployments).await.is_none(),
        "a plain refresh restarts nothing"
    );

    // Rotation: a new value in OpenBao lands within a refresh, with one Event and a restart.
    vaultrs::kv2::set(&root, "secret", &path, &json!({"password": second}))
        .await
        .expect("rotate");
    wait_secret(&client, &ns, "app", "the rotated copy", |s| {
        value(s, "password").as_deref() == Some(second.as_str())
    })
    .await;
    common::wait_until(
        Duration::from_secs(15),
        "the restart annotation on the Deployment",
        || {
            let deployments = deployments.clone();
            async move { e2e::restarted_at(&deployments).await }
        },
    )
    .await;
    let events = e2e::events(&client, &ns).await;
    assert!(
        events.iter().any(|e| e.starts_with("SecretRotated")),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e.starts_with("WorkloadRestarted")),
        "{events:?}"
    );
    // Status is written right after the Secret: wait for it to name the new version.
    common::wait_until(Duration::from_secs(15), "status to show version 2", || {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            let status = e2e::status(&client, &ns, "VaultSecret", "app").await;
            (status["sourceVersion"] == "2").then_some(())
        }
    })
    .await;
    assert_no_leak(&client, &ns, &op, &[&first, &second]).await;
}

/// Refreshes that find nothing new write nothing at all: not the Secret, and not the
/// status (the expiry mark of a 1 h ttl does not move within the window), though the
/// source is read every second. The next version then writes both, with an Event.
#[tokio::test]
async fn refreshes_without_news_write_neither_the_secret_nor_the_status() {
    let (client, ns) = setup("e2e-quiet").await;
    let role = tenant(&client, &ns, "app", &format!("{ns}/")).await;
    let root = root_vault();
    let (first, second) = (canary("first"), canary("second"));
    let path = format!("{ns}/app");
    vaultrs::kv2::set(&root, "secret", &path, &json!({"password": first}))
        .await
        .expect("seed");
    let op = Operator::start(&ns, "").await;
    apply(
        &client,
        &ns,
        &vault_secret(
            "app",
            &role,
            &format!("kv: {{mount: secret, path: {path}}}"),
            "  refreshInterval: 1s\n  ttl: 1h\n",
        ),
    )
    .await;
    let copy = wait_secret(&client, &ns, "app", "the first copy", |s| {
        value(s, "password").as_deref() == Some(first.as_str())
    })
    .await;
    let status = wait_ready(&client, &ns, "VaultSecret", "app", "True", "Synced").await;
    let resources = e2e::vault_secrets(&client, &ns);
    let written = resources.get("app").await.expect("get the resource");

    // Four seconds of refreshes, each reading OpenBao and finding version 1 again.
    let syncs_before = op.present_metric(SYNCED).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let syncs = op.present_metric(SYNCED).await - syncs_before;
    assert!(syncs >= 3.0, "refreshes happened ({syncs})");
    let now = resources.get("app").await.expect("get the resource");
    assert_eq!(
        now.metadata.resource_version, written.metadata.resource_version,
        "{syncs} refreshes without news wrote no status: {:?} then {:?}",
        status, now.data["status"]
    );
    let unchanged = secret(&client, &ns, "app").await.expect("the copy");
    assert_eq!(
        unchanged.metadata.resource_version, copy.metadata.resource_version,
        "nor the Secret"
    );

    // A new version is news: the Secret, the status and an Event.
    vaultrs::kv2::set(&root, "secret", &path, &json!({"password": second}))
        .await
        .expect("rotate");
    wait_secret(&client, &ns, "app", "the rotated copy", |s| {
        value(s, "password").as_deref() == Some(second.as_str())
    })
    .await;
    let status = common::wait_until(Duration::from_secs(15), "status to show version 2", || {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            let status = e2e::status(&client, &ns, "VaultSecret", "app").await;
            (status["sourceVersion"] == "2").then_some(status)
        }
    })
    .await;
    assert_eq!(
        e2e::ready_condition(&status).map(|c| c["message"].clone()),
        Some(json!("Secret app holds version 2"))
    );
    let events = e2e::events(&client, &ns).await;
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("SecretRotated: updated Secret app to version 2")),
        "{events:?}"
    );
    assert_no_leak(&client, &ns, &op, &[&first, &second]).await;
}

#[tokio::test]
async fn drift_is_repaired_and_deleting_the_resource_collects_the_copy() {
    let (client, ns, role, original) = seeded("e2e-drift", "drift").await;
    let op = Operator::start(&ns, "").await;
    // A long refresh interval: repairs must come from the watch, not the schedule.
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

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"password": "tampered", "added": "x"}})),
        )
        .await
        .expect("edit the copy");
    let repaired = wait_secret(&client, &ns, "app", "the edited copy to be repaired", |s| {
        is_original(s) && value(s, "added").is_none()
    })
    .await;
    assert_eq!(repaired.data.map(|d| d.len()), Some(1));

    secrets
        .delete("app", &DeleteParams::default())
        .await
        .expect("delete the copy");
    wait_secret(
        &client,
        &ns,
        "app",
        "the deleted copy to be restored",
        is_original,
    )
    .await;

    let resources: Api<kube::core::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
            "vaultsync.dev",
            "v1alpha1",
            "VaultSecret",
        )),
    );
    resources
        .delete("app", &DeleteParams::default())
        .await
        .expect("delete the VaultSecret");
    common::wait_until(
        Duration::from_secs(60),
        "the garbage collector to delete the copy",
        || {
            let client = client.clone();
            let ns = ns.clone();
            async move { secret(&client, &ns, "app").await.is_none().then_some(()) }
        },
    )
    .await;
    assert_no_leak(&client, &ns, &op, &[&original]).await;
}

#[tokio::test]
async fn a_foreign_secret_is_a_conflict_and_stays_untouched() {
    let (client, ns, role, value_) = seeded("e2e-conflict", "conflict").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let foreign: Secret = serde_json::from_value(
        json!({"metadata": {"name": "taken"}, "stringData": {"mine": "keep"}}),
    )
    .expect("secret");
    let before = secrets
        .create(&PostParams::default(), &foreign)
        .await
        .expect("foreign secret");

    let op = Operator::start(&ns, "").await;
    apply(
        &client,
        &ns,
        &vault_secret(
            "first",
            &role,
            &format!("kv: {{mount: secret, path: {ns}/app}}"),
            "  output: {secret: {name: taken}}\n",
        ),
    )
    .await;
    let status = wait_ready(&client, &ns, "VaultSecret", "first", "False", "Conflict").await;
    assert!(
        status["conditions"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("never overwrites"))
    );
    let after = secrets.get("taken").await.expect("foreign secret");
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "untouched"
    );

    // Two resources claiming one name: the second gets the conflict, no tug of war.
    apply(
        &client,
        &ns,
        &vault_secret(
            "owner",
            &role,
            &format!("kv: {{mount: secret, path: {ns}/app}}"),
            "  output: {secret: {name: shared}}\n",
        ),
    )
    .await;
    let owned = wait_secret(&client, &ns, "shared", "the first claim", |_| true).await;
    apply(
        &client,
        &ns,
        &vault_secret(
            "intruder",
            &role,
            &format!("kv: {{mount: secret, path: {ns}/app}}"),
            "  output: {secret: {name: shared}}\n",
        ),
    )
    .await;
    wait_ready(&client, &ns, "VaultSecret", "intruder", "False", "Conflict").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = secrets.get("shared").await.expect("shared");
    assert_eq!(
        still.metadata.resource_version,
        owned.metadata.resource_version
    );
    assert!(
        e2e::events(&client, &ns)
            .await
            .iter()
            .any(|e| e.starts_with("SyncFailed"))
    );
    assert_no_leak(&client, &ns, &op, &[&value_]).await;
}

#[tokio::test]
async fn tenants_cannot_read_each_others_paths() {
    let client = common::client().await;
    common::install_crds(&client).await;
    let ns_a = common::create_namespace(&client, "e2e-tenant-a").await;
    let ns_b = common::create_namespace(&client, "e2e-tenant-b").await;
    tenant(&client, &ns_a, "app", &format!("{ns_a}/")).await;
    let role_b = tenant(&client, &ns_b, "app", &format!("{ns_b}/")).await;
    let secret_a = canary("tenant-a");
    vaultrs::kv2::set(
        &root_vault(),
        "secret",
        &format!("{ns_a}/app"),
        &json!({"password": secret_a}),
    )
    .await
    .expect("seed");

    let op = Operator::start(&ns_b, "").await;
    apply(
        &client,
        &ns_b,
        &vault_secret(
            "steal",
            &role_b,
            &format!("kv: {{mount: secret, path: {ns_a}/app}}"),
            "",
        ),
    )
    .await;
    let status = wait_ready(
        &client,
        &ns_b,
        "VaultSecret",
        "steal",
        "False",
        "AuthFailed",
    )
    .await;
    assert!(
        status["conditions"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("permission denied"))
    );
    assert!(
        secret(&client, &ns_b, "steal").await.is_none(),
        "no Secret appears"
    );
    assert_no_leak(&client, &ns_b, &op, &[&secret_a]).await;
}

#[tokio::test]
async fn denial_keeps_the_copy_until_expiry_then_collects_and_restores() {
    let (client, ns, role, value_) = seeded("e2e-denial", "denial").await;
    let root = root_vault();
    let op = Operator::start(&ns, "").await;
    apply(
        &client,
        &ns,
        &vault_secret(
            "app",
            &role,
            &format!("kv: {{mount: secret, path: {ns}/app}}"),
            "  refreshInterval: 1s\n  ttl: 6s\n",
        ),
    )
    .await;
    let before = wait_secret(&client, &ns, "app", "the copy", |_| true).await;

    // Take the tenant's access away.
    vaultrs::sys::policy::set(
        &root,
        &role,
        "path \"secret/data/nothing\" { capabilities = [\"read\"] }",
    )
    .await
    .expect("deny");
    wait_ready(&client, &ns, "VaultSecret", "app", "False", "AuthFailed").await;
    let during = secret(&client, &ns, "app")
        .await
        .expect("the copy is kept while valid");
    assert_eq!(
        during.data, before.data,
        "byte-identical while the backend denies"
    );
    common::wait_until(
        Duration::from_secs(20),
        "the expired copy to be collected",
        || {
            let client = client.clone();
            let ns = ns.clone();
            async move { secret(&client, &ns, "app").await.is_none().then_some(()) }
        },
    )
    .await;
    assert!(
        e2e::events(&client, &ns)
            .await
            .iter()
            .any(|e| e.starts_with("SecretExpired"))
    );

    // Access returns: the copy comes back.
    tenant(&client, &ns, "app", &format!("{ns}/")).await;
    let restored = wait_secret(&client, &ns, "app", "the restored copy", |_| true).await;
    assert_eq!(restored.data, before.data);
    assert_no_leak(&client, &ns, &op, &[&value_]).await;
}

#[tokio::test]
async fn one_login_per_identity_across_many_reconciles() {
    let (client, ns, role, value_) = seeded("e2e-logins", "logins").await;
    let op = Operator::start(&ns, "").await;
    for i in 0..5 {
        apply(
            &client,
            &ns,
            &vault_secret(
                &format!("s{i}"),
                &role,
                &format!("kv: {{mount: secret, path: {ns}/app}}"),
                "  refreshInterval: 1s\n  ttl: 1h\n",
            ),
        )
        .await;
    }
    for i in 0..5 {
        wait_secret(&client, &ns, &format!("s{i}"), "each copy", |_| true).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let syncs = op.present_metric(SYNCED).await;
    let logins = op
        .present_metric("vaultsync_vault_logins_total{connection=\"default\",outcome=\"ok\"}")
        .await;
    assert!(syncs >= 15.0, "many reconciles ({syncs})");
    assert_eq!(logins, 1.0, "one identity, one login");
    assert_no_leak(&client, &ns, &op, &[&value_]).await;
}

/// A KV v2 secret with `count` keys. OpenBao refuses requests with too many JSON strings,
/// so the keys arrive in merge patches of 400.
async fn write_many_keys(path: &str, count: usize) {
    let http = reqwest::Client::new();
    let url = format!(
        "{}/v1/secret/data/{path}",
        common::env("VAULT_ADDR", "OpenBao server")
    );
    let token = common::env("VAULT_TOKEN", "OpenBao server");
    for chunk in (0..count).collect::<Vec<_>>().chunks(400) {
        let data: serde_json::Map<String, serde_json::Value> = chunk
            .iter()
            .map(|i| (format!("key{i}"), json!("y".repeat(120))))
            .collect();
        let first = chunk[0] == 0;
        let request = if first {
            http.post(&url)
        } else {
            http.patch(&url)
                .header("Content-Type", "application/merge-patch+json")
        };
        let response = request
            .header("X-Vault-Token", &token)
            .json(&json!({"data": data}))
            .send()
            .await
            .expect("write keys");
        assert!(
            response.status().is_success(),
            "writing many keys: {}",
            response.status()
        );
    }
}

#[tokio::test]
async fn hostile_payloads_fail_closed_and_do_not_block_others() {
    let (client, ns) = setup("e2e-hostile").await;
    let role = tenant(&client, &ns, "app", &format!("{ns}/")).await;
    let root = root_vault();
    let good = canary("good");
    let huge = format!("{}{}", canary("huge"), "x".repeat(1024 * 1024 + 10));
    vaultrs::kv2::set(
        &root,
        "secret",
        &format!("{ns}/good"),
        &json!({"password": good}),
    )
    .await
    .expect("good");
    vaultrs::kv2::set(
        &root,
        "secret",
        &format!("{ns}/huge"),
        &json!({"blob": huge}),
    )
    .await
    .expect("huge");
    vaultrs::kv2::set(
        &root,
        "secret",
        &format!("{ns}/badkey"),
        &json!({"bad key/../x": good}),
    )
    .await
    .expect("badkey");
    write_many_keys(&format!("{ns}/many"), 10_000).await;
    vaultrs::kv2::set(
        &root,
        "secret",
        &format!("{ns}/tls"),
        &json!({"tls.crt": good, "tls.key": good}),
    )
    .await
    .expect("tls");
    let op = Operator::start(&ns, "").await;

    let kv = |p: &str| format!("kv: {{mount: secret, path: {ns}/{p}}}");
    apply(&client, &ns, &vault_secret("huge", &role, &kv("huge"), "")).await;
    apply(
        &client,
        &ns,
        &vault_secret("badkey", &role, &kv("badkey"), ""),
    )
    .await;
    apply(&client, &ns, &vault_secret("many", &role, &kv("many"), "")).await;
    apply(&client, &ns, &vault_secret("loop", &role, &kv("good"), "  output:\n    secret:\n      template:\n        x: \"{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}\"\n")).await;
    apply(
        &client,
        &ns,
        &vault_secret(
            "bomb",
            &role,
            &kv("good"),
            "  output:\n    secret:\n      template:\n        x: \"{{ password * 1000000 }}\"\n",
        ),
    )
    .await;
    apply(
        &client,
        &ns,
        &vault_secret(
            "badtls",
            &role,
            &kv("tls"),
            "  output: {secret: {type: kubernetes.io/tls}}\n",
        ),
    )
    .await;
    apply(&client, &ns, &vault_secret("good", &role, &kv("good"), "")).await;

    let copy = wait_secret(
        &client,
        &ns,
        "good",
        "the good copy despite the bad ones",
        |_| true,
    )
    .await;
    assert_eq!(value(&copy, "password").as_deref(), Some(good.as_str()));
    for (name, reason) in [
        ("huge", "InvalidData"),
        ("badkey", "InvalidData"),
        ("many", "InvalidData"),
        ("loop", "InvalidSpec"),
        ("bomb", "InvalidSpec"),
        ("badtls", "InvalidData"),
    ] {
        wait_ready(&client, &ns, "VaultSecret", name, "False", reason).await;
        assert!(
            secret(&client, &ns, name).await.is_none(),
            "{name}: nothing is written"
        );
    }
    assert_no_leak(&client, &ns, &op, &[&good, &huge[..40]]).await;
}

#[tokio::test]
async fn approle_and_token_auth_read_their_secret_from_this_namespace() {
    let (client, ns) = setup("e2e-approle").await;
    // The policy comes from the tenant helper; the service account is unused here.
    let policy = tenant(&client, &ns, "app", &format!("{ns}/")).await;
    let root = root_vault();
    let value_ = canary("approle");
    vaultrs::kv2::set(
        &root,
        "secret",
        &format!("{ns}/app"),
        &json!({"password": value_}),
    )
    .await
    .expect("seed");
    vaultrs::auth::approle::role::set(
        &root,
        "approle",
        &ns,
        Some(
            vaultrs::api::auth::approle::requests::SetAppRoleRequest::builder()
                .token_policies(vec![policy.clone()]),
        ),
    )
    .await
    .expect("approle role (is auth/approle enabled? run `make env-up`)");
    let role_id = vaultrs::auth::approle::role::read_id(&root, "approle", &ns)
        .await
        .expect("role id")
        .role_id;
    let secret_id = vaultrs::auth::approle::role::secret::generate(&root, "approle", &ns, None)
        .await
        .expect("secret id")
        .secret_id;
    let token = vaultrs::token::new(
        &root,
        Some(
            vaultrs::api::token::requests::CreateTokenRequest::builder()
                .policies(vec![policy])
                .ttl("10m"),
        ),
    )
    .await
    .expect("token")
    .client_token;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let creds: Secret = serde_json::from_value(json!({
        "metadata": {"name": "vault-creds"},
        "stringData": {"secret-id": secret_id, "token": token}
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &creds)
        .await
        .expect("creds secret");

    let op = Operator::start(&ns, "").await;
    let kv = format!("kv: {{mount: secret, path: {ns}/app}}");
    apply(&client, &ns, &format!(
        "apiVersion: vaultsync.dev/v1alpha1\nkind: VaultSecret\nmetadata: {{name: by-approle}}\nspec:\n  vault:\n    auth: {{appRole: {{roleId: {role_id}, secretIdRef: {{name: vault-creds, key: secret-id}}}}}}\n    {kv}\n"
    )).await;
    apply(&client, &ns, &format!(
        "apiVersion: vaultsync.dev/v1alpha1\nkind: VaultSecret\nmetadata: {{name: by-token}}\nspec:\n  vault:\n    auth: {{token: {{secretRef: {{name: vault-creds, key: token}}}}}}\n    {kv}\n"
    )).await;
    apply(&client, &ns, &format!(
        "apiVersion: vaultsync.dev/v1alpha1\nkind: VaultSecret\nmetadata: {{name: missing-ref}}\nspec:\n  vault:\n    auth: {{token: {{secretRef: {{name: nowhere, key: token}}}}}}\n    {kv}\n"
    )).await;
    for name in ["by-approle", "by-token"] {
        let copy = wait_secret(&client, &ns, name, "the copy", |_| true).await;
        assert_eq!(
            value(&copy, "password").as_deref(),
            Some(value_.as_str()),
            "{name}"
        );
    }
    let status = wait_ready(
        &client,
        &ns,
        "VaultSecret",
        "missing-ref",
        "False",
        "AuthFailed",
    )
    .await;
    assert!(
        status["conditions"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("nowhere"))
    );
    assert_no_leak(&client, &ns, &op, &[&value_, &token, &secret_id]).await;
}

#[tokio::test]
async fn typed_secrets_are_checked_before_writing() {
    let (client, ns) = setup("e2e-types").await;
    let role = tenant(&client, &ns, "app", &format!("{ns}/")).await;
    let root = root_vault();
    // A real certificate and key from OpenBao's PKI engine.
    let issued = vaultrs::pki::cert::generate(
        &root,
        "pki",
        "web",
        Some(
            vaultrs::api::pki::requests::GenerateCertificateRequest::builder()
                .common_name("app.example.com"),
        ),
    )
    .await
    .expect("issue a certificate (is pki/ set up? run `make env-up`)");
    let password = canary("types");
    let docker = json!({"auths": {"registry.example.com": {"auth": password}}}).to_string();
    vaultrs::kv2::set(
        &root,
        "secret",
        &format!("{ns}/tls"),
        &json!({"tls.crt": issued.certificate, "tls.key": issued.private_key}),
    )
    .await
    .expect("tls");
    vaultrs::kv2::set(
        &root,
        "secret",
        &format!("{ns}/basic"),
        &json!({"username": "app", "password": password}),
    )
    .await
    .expect("basic");
    vaultrs::kv2::set(
        &root,
        "secret",
        &format!("{ns}/docker"),
        &json!({".dockerconfigjson": docker}),
    )
    .await
    .expect("docker");
    vaultrs::kv2::set(
        &root,
        "secret",
        &format!("{ns}/notjson"),
        &json!({".dockerconfigjson": password}),
    )
    .await
    .expect("bad");
    let op = Operator::start(&ns, "").await;
    let kv = |p: &str| format!("kv: {{mount: secret, path: {ns}/{p}}}");
    for (name, path, type_) in [
        ("tls", "tls", "kubernetes.io/tls"),
        ("basic", "basic", "kubernetes.io/basic-auth"),
        ("docker", "docker", "kubernetes.io/dockerconfigjson"),
        ("docker-bad", "notjson", "kubernetes.io/dockerconfigjson"),
        ("tls-bad", "basic", "kubernetes.io/tls"),
    ] {
        apply(
            &client,
            &ns,
            &vault_secret(
                name,
                &role,
                &kv(path),
                &format!("  output: {{secret: {{type: {type_}}}}}\n"),
            ),
        )
        .await;
    }
    for (name, type_) in [
        ("tls", "kubernetes.io/tls"),
        ("basic", "kubernetes.io/basic-auth"),
        ("docker", "kubernetes.io/dockerconfigjson"),
    ] {
        let copy = wait_secret(&client, &ns, name, "a typed copy", |_| true).await;
        assert_eq!(copy.type_.as_deref(), Some(type_));
    }
    for name in ["docker-bad", "tls-bad"] {
        let status = wait_ready(&client, &ns, "VaultSecret", name, "False", "InvalidData").await;
        assert!(secret(&client, &ns, name).await.is_none());
        let message = status["conditions"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            !message.contains(&password),
            "the message names the problem, not the value"
        );
    }
    assert_no_leak(&client, &ns, &op, &[&password, &issued.private_key[40..80]]).await;
}

#[tokio::test]
async fn check_prints_key_names_and_sizes_only() {
    let (client, ns) = setup("e2e-check").await;
    let role = tenant(&client, &ns, "app", &format!("{ns}/")).await;
    let value_ = canary("check");
    vaultrs::kv2::set(
        &root_vault(),
        "secret",
        &format!("{ns}/app"),
        &json!({"password": value_, "user": "app"}),
    )
    .await
    .expect("seed");
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("e2e")
        .join(&ns);
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("check-config.yaml");
    std::fs::write(
        &config,
        format!(
            "vault:\n  default:\n    address: {}\n",
            common::env("VAULT_ADDR", "OpenBao server")
        ),
    )
    .expect("config");
    let run = |manifest: String| {
        let file = dir.join("cr.yaml");
        std::fs::write(&file, manifest).expect("manifest");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vaultsync"))
            .args(["check", "-f"])
            .arg(&file)
            .arg("--config")
            .arg(&config)
            .args(["-n", &ns])
            .output()
            .expect("run vaultsync check");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, text) = run(vault_secret(
        "app",
        &role,
        &format!("kv: {{mount: secret, path: {ns}/app}}"),
        "",
    ));
    assert!(ok, "{text}");
    assert!(
        text.contains("password") && text.contains(&format!("{} bytes", value_.len())),
        "{text}"
    );
    assert!(!text.contains(&value_), "check never prints values");
    let (ok, text) = run(vault_secret(
        "app",
        &role,
        &format!("kv: {{mount: secret, path: {ns}/missing}}"),
        "",
    ));
    assert!(!ok, "a failing check exits non-zero");
    assert!(text.contains("NotFound"), "{text}");
    assert!(
        secret(&client, &ns, "app").await.is_none(),
        "check writes nothing"
    );
}

#[tokio::test]
async fn throttling_honours_retry_after_and_keeps_the_copy() {
    let (client, ns, role, value_) = seeded("e2e-429", "throttle").await;
    let op = Operator::start(&ns, "").await;
    apply(
        &client,
        &ns,
        &vault_secret(
            "app",
            &role,
            &format!("kv: {{mount: secret, path: {ns}/app}}"),
            "  refreshInterval: 1s\n  ttl: 1h\n",
        ),
    )
    .await;
    let before = wait_secret(&client, &ns, "app", "the copy", |_| true).await;

    // An OpenBao rate-limit quota on this tenant's path: one read per 20 s, answered with
    // 429 and a Retry-After.
    let http = reqwest::Client::new();
    let quota = format!(
        "{}/v1/sys/quotas/rate-limit/{ns}",
        common::env("VAULT_ADDR", "OpenBao server")
    );
    let token = common::env("VAULT_TOKEN", "OpenBao server");
    // OpenBao sends Retry-After only when quota headers are switched on.
    let config = format!(
        "{}/v1/sys/quotas/config",
        common::env("VAULT_ADDR", "OpenBao server")
    );
    http.post(&config)
        .header("X-Vault-Token", &token)
        .json(&json!({"enable_rate_limit_response_headers": true}))
        .send()
        .await
        .expect("quota headers");
    let response = http
        .post(&quota)
        .header("X-Vault-Token", &token)
        .json(&json!({"path": format!("secret/data/{ns}/app"), "rate": 1, "interval": "20s", "block_interval": "20s"}))
        .send()
        .await
        .expect("quota");
    assert!(
        response.status().is_success(),
        "create rate-limit quota: {}",
        response.status()
    );
    let status = wait_ready(
        &client,
        &ns,
        "VaultSecret",
        "app",
        "False",
        "BackendUnavailable",
    )
    .await;
    assert!(
        status["conditions"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("429")),
        "{status}"
    );
    const KV_ERRORS: &str = "vaultsync_backend_requests_total{backend=\"vault\",operation=\"kv_read\",outcome=\"error\"}";
    let first = op.present_metric(KV_ERRORS).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let later = op.present_metric(KV_ERRORS).await;
    // With a 1 s refresh and a 1 s first backoff the operator would try ~8 times; the
    // Retry-After holds it off instead.
    assert!(
        later - first <= 1.0,
        "retried {} times within the Retry-After window",
        later - first
    );
    let during = secret(&client, &ns, "app").await.expect("the copy is kept");
    assert_eq!(during.data, before.data, "byte-identical while throttled");
    let _ = http
        .delete(&quota)
        .header("X-Vault-Token", &token)
        .send()
        .await;
    assert_no_leak(&client, &ns, &op, &[&value_]).await;
}

/// A restart reads none of the settled copies at once (they are intact and valid for
/// longer than the postponement), writes nothing, and still syncs a new resource at once.
#[tokio::test]
async fn a_restart_reads_no_settled_copy_at_once() {
    const KV_READS: &str =
        "vaultsync_backend_requests_total{backend=\"vault\",operation=\"kv_read\",outcome=\"ok\"}";
    let (client, ns) = setup("e2e-resume").await;
    let role = tenant(&client, &ns, "app", &format!("{ns}/")).await;
    let value_ = canary("resume");
    let path = format!("{ns}/app");
    vaultrs::kv2::set(&root_vault(), "secret", &path, &json!({"password": value_}))
        .await
        .expect("seed");
    let kv = format!("kv: {{mount: secret, path: {path}}}");
    let policy = "  refreshInterval: 30s\n  ttl: 1h\n";
    let op = Operator::start(&ns, "").await;
    apply(&client, &ns, &vault_secret("app", &role, &kv, policy)).await;
    wait_ready(&client, &ns, "VaultSecret", "app", "True", "Synced").await;
    let copy = secret(&client, &ns, "app").await.expect("the copy");
    drop(op);
    // Status times are whole seconds: the new process must start a moment later to tell.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let op = Operator::start(&ns, "").await;
    common::wait_until(
        Duration::from_secs(30),
        "the new process to reconcile",
        || {
            let op = &op;
            async move { op.metric(SYNCED).await.filter(|n| *n >= 1.0) }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        op.metric(KV_READS).await.unwrap_or(0.0),
        0.0,
        "the intact, settled copy was not read again at start"
    );
    let after = secret(&client, &ns, "app").await.expect("the copy");
    assert_eq!(
        after.metadata.resource_version, copy.metadata.resource_version,
        "no write"
    );

    // A new resource is not postponed.
    apply(&client, &ns, &vault_secret("new", &role, &kv, policy)).await;
    wait_secret(&client, &ns, "new", "the new resource's copy", |s| {
        value(s, "password").as_deref() == Some(value_.as_str())
    })
    .await;
    assert!(op.present_metric(KV_READS).await >= 1.0);
    assert_no_leak(&client, &ns, &op, &[&value_]).await;
}
