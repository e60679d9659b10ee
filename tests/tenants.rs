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

// ---------------------------------------------------------------------------------------
// The admission check: the operator does for a tenant only what the tenant's writer could do

/// A client that acts as `user` (impersonated by the admin credential of the environment).
async fn client_as(user: &str) -> kube::Client {
    let mut config = kube::Config::infer().await.expect("kubeconfig");
    config.auth_info.impersonate = Some(user.to_string());
    kube::Client::try_from(config).expect("client")
}

/// The webhook registered by URL on loopback, for this namespace only, removed on drop.
struct Registered {
    name: String,
}

impl Registered {
    async fn new(client: &kube::Client, ns: &str, port: u16) -> Self {
        use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
        let ca = std::fs::read(common::env("K8S_CA_FILE", "Kubernetes control plane")).expect("ca");
        let name = format!("vaultsync-{ns}");
        let config: ValidatingWebhookConfiguration = serde_json::from_value(json!({
            "metadata": {"name": name},
            "webhooks": [{
                "name": "references.vaultsync.dev",
                "clientConfig": {
                    "url": format!("https://127.0.0.1:{port}/validate"),
                    "caBundle": k8s_openapi::ByteString(ca),
                },
                "rules": [{
                    "apiGroups": ["vaultsync.dev"], "apiVersions": ["*"],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": ["vaultsecrets", "azurekeyvaultsecrets"],
                }],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 10,
            }],
        }))
        .expect("webhook configuration");
        Api::<ValidatingWebhookConfiguration>::all(client.clone())
            .create(&PostParams::default(), &config)
            .await
            .expect("register the webhook");
        Registered { name }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ =
            std::thread::spawn(move || {
                tokio::runtime::Runtime::new().expect("runtime").block_on(async move {
                use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
                let client = common::client().await;
                let _ = Api::<ValidatingWebhookConfiguration>::all(client)
                    .delete(&name, &Default::default())
                    .await;
            })
            })
            .join();
    }
}

/// A user who may write `resource` objects in `ns` and read Secret `mine` only; the
/// Secrets `secrets` (`mine` among them) exist.
async fn writer_with_one_secret(
    client: &kube::Client,
    ns: &str,
    user: &str,
    resource: &str,
    secrets: &[&str],
) {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    for name in secrets {
        let secret =
            serde_json::from_value(json!({"metadata": {"name": name}, "stringData": {"id": "x"}}))
                .expect("secret");
        api.create(&PostParams::default(), &secret)
            .await
            .expect("secret");
    }
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "writer"},
        "rules": [
            {"apiGroups": ["vaultsync.dev"], "resources": [resource],
             "verbs": ["get", "list", "create", "update", "patch"]},
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["mine"], "verbs": ["get"]},
        ],
    }))
    .expect("role");
    Api::<Role>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &role)
        .await
        .expect("role");
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "writer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "writer"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }))
    .expect("binding");
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .expect("binding");
}

/// An operator serving the admission webhook, registered for `ns`, with `extra` config.
/// The webhook serves with the environment's apiserver certificate (CA-signed, for
/// 127.0.0.1): the apiserver verifies it against caBundle like any webhook.
async fn operator_with_webhook(
    client: &kube::Client,
    ns: &str,
    extra: &str,
) -> (Operator, Registered) {
    let pki = std::path::PathBuf::from(common::env("K8S_CA_FILE", "Kubernetes control plane"))
        .parent()
        .expect("pki dir")
        .to_path_buf();
    let port = e2e::operator::free_port().expect("free port");
    let op = Operator::start_with(
        ns,
        e2e::OperatorOptions::default()
            .extra(&format!(
                "admission:\n  enabled: true\n  address: 127.0.0.1:{port}\n  certFile: {}\n  keyFile: {}\n",
                pki.join("apiserver.crt").display(),
                pki.join("apiserver.key").display()
            ))
            .extra(extra),
    )
    .await;
    let registered = Registered::new(client, ns, port).await;
    (op, registered)
}

#[tokio::test]
async fn a_user_cannot_make_the_operator_read_a_secret_they_may_not_read() {
    let (client, ns, role, original) = seeded("e2e-deputy", "deputy").await;
    let alice = format!("alice-{ns}");
    writer_with_one_secret(
        &client,
        &ns,
        &alice,
        "vaultsecrets",
        &["mine", "admin-token"],
    )
    .await;
    let (op, _registered) = operator_with_webhook(&client, &ns, "").await;

    let as_alice: Api<kube::core::DynamicObject> = Api::namespaced_with(
        client_as(&alice).await,
        &ns,
        &kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
            "vaultsync.dev",
            "v1alpha1",
            "VaultSecret",
        )),
    );
    let approle = |name: &str, secret: &str| -> kube::core::DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "vaultsync.dev/v1alpha1", "kind": "VaultSecret",
            "metadata": {"name": name},
            "spec": {"vault": {
                "auth": {"appRole": {"roleId": "r", "secretIdRef": {"name": secret, "key": "id"}}},
                "kv": {"mount": "secret", "path": format!("{ns}/app")},
            }},
        }))
        .expect("resource")
    };
    let refused = common::wait_until(Duration::from_secs(30), "the webhook to answer", || {
        let api = as_alice.clone();
        let obj = approle("steal", "admin-token");
        async move {
            match api.create(&PostParams::default(), &obj).await {
                Err(kube::Error::Api(s))
                    if s.code != 500 || !s.message.contains("connection refused") =>
                {
                    Some(s)
                }
                _ => None,
            }
        }
    })
    .await;
    assert_eq!(refused.code, 403, "{refused:?}");
    assert!(
        refused.message.contains(&alice)
            && refused
                .message
                .contains("may not get secrets \"admin-token\"")
            && refused.message.contains("secretIdRef"),
        "the refusal says who, what and which field: {}",
        refused.message
    );
    // What alice may read herself, she may reference.
    as_alice
        .create(&PostParams::default(), &approle("allowed", "mine"))
        .await
        .expect("a reference alice may use is admitted");
    // Nor can an update swap in a reference she may not use.
    // (A merge patch: a replace could lose a race with the operator's status write.)
    let swap =
        json!({"spec": {"vault": {"auth": {"appRole": {"secretIdRef": {"name": "admin-token"}}}}}});
    let err = as_alice
        .patch("allowed", &PatchParams::default(), &Patch::Merge(&swap))
        .await
        .expect_err("an update to a forbidden reference is refused");
    assert!(err.to_string().contains("admin-token"), "{err}");
    // Kubernetes auth as a service account alice may not request tokens for.
    let kubernetes_auth: kube::core::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "vaultsync.dev/v1alpha1", "kind": "VaultSecret",
        "metadata": {"name": "as-app"},
        "spec": {"vault": {
            "auth": {"kubernetes": {"role": role, "serviceAccountName": "app"}},
            "kv": {"mount": "secret", "path": format!("{ns}/app")},
        }},
    }))
    .expect("resource");
    let err = as_alice
        .create(&PostParams::default(), &kubernetes_auth)
        .await
        .expect_err("tokens of a service account alice may not impersonate");
    assert!(
        err.to_string()
            .contains("create serviceaccounts/token \"app\""),
        "{err}"
    );
    // The cluster admin, who may, is admitted.
    apply(
        &client,
        &ns,
        &vault_secret(
            "admin-made",
            &role,
            &format!("kv: {{mount: secret, path: {ns}/app}}"),
            "",
        ),
    )
    .await;
    wait_ready(&client, &ns, "VaultSecret", "admin-made", "True", "Synced").await;
    e2e::assert_no_leak(&client, &ns, &op, &[&original]).await;
}

#[tokio::test]
async fn a_user_cannot_make_the_operator_read_as_an_azure_identity_they_may_not_use() {
    let kv = e2e::keyvault::KeyVaultEnv::load().unwrap_or_else(|e| panic!("{e}"));
    let (client, ns) = e2e::setup("e2e-akv-deputy").await;
    let bob = format!("bob-{}", &*ns);
    writer_with_one_secret(
        &client,
        &ns,
        &bob,
        "azurekeyvaultsecrets",
        &["mine", "admin-creds"],
    )
    .await;
    let (_op, _registered) =
        operator_with_webhook(&client, &ns, &kv.connection_yaml(kv.port, "")).await;
    let as_bob: Api<kube::core::DynamicObject> = Api::namespaced_with(
        client_as(&bob).await,
        &ns,
        &kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
            "vaultsync.dev",
            "v1alpha1",
            "AzureKeyVaultSecret",
        )),
    );
    let resource = |name: &str, auth: serde_json::Value| -> kube::core::DynamicObject {
        let mut vault = json!({"name": "default", "object": {"name": "x", "type": "secret"}});
        if !auth.is_null() {
            vault["auth"] = auth;
        }
        serde_json::from_value(json!({
            "apiVersion": "vaultsync.dev/v1alpha1", "kind": "AzureKeyVaultSecret",
            "metadata": {"name": name},
            "spec": {"vault": vault, "output": {"secret": {"dataKey": "v"}}},
        }))
        .expect("resource")
    };
    let client_secret = |secret: &str| json!({"clientSecret": {"clientId": "sp", "secretRef": {"name": secret, "key": "id"}}});
    let refused = common::wait_until(Duration::from_secs(30), "the webhook to answer", || {
        let api = as_bob.clone();
        let obj = resource("steal", client_secret("admin-creds"));
        async move {
            match api.create(&PostParams::default(), &obj).await {
                Err(kube::Error::Api(s))
                    if s.code != 500 || !s.message.contains("connection refused") =>
                {
                    Some(s)
                }
                _ => None,
            }
        }
    })
    .await;
    assert_eq!(refused.code, 403, "{refused:?}");
    assert!(
        refused
            .message
            .contains("may not get secrets \"admin-creds\"")
            && refused.message.contains("clientSecret.secretRef"),
        "{}",
        refused.message
    );
    for (name, auth, expected) in [
        (
            "as-app",
            json!({"workloadIdentity": {"serviceAccountName": "app", "clientId": "c"}}),
            "create serviceaccounts/token \"app\"",
        ),
        // No auth: the connection's default identity, the namespace's default account.
        (
            "as-default",
            serde_json::Value::Null,
            "create serviceaccounts/token \"default\"",
        ),
    ] {
        let err = as_bob
            .create(&PostParams::default(), &resource(name, auth))
            .await
            .expect_err("an identity bob may not use is refused");
        assert!(err.to_string().contains(expected), "{name}: {err}");
    }
    as_bob
        .create(
            &PostParams::default(),
            &resource("allowed", client_secret("mine")),
        )
        .await
        .expect("a Secret bob may read himself may be referenced");
    println!("refusal: {}", refused.message);
}

// ---------------------------------------------------------------------------------------
// Bounded state: what the operator keeps for a resource goes with it

const TOKEN_REVOKED: &str =
    "vaultsync_backend_requests_total{backend=\"vault\",operation=\"revoke_token\",outcome=\"ok\"}";
const LOGINS: &str = "vaultsync_vault_logins_total{connection=\"default\",outcome=\"ok\"}";

#[tokio::test]
async fn a_deleted_resource_leaves_no_token_no_series_and_no_cache_behind() {
    let (client, ns, role, original) = seeded("e2e-housekeeping", "housekeeping").await;
    let op = Operator::start_with(
        &ns,
        e2e::OperatorOptions::default().extra("housekeepingInterval: 1s\n"),
    )
    .await;
    let source = format!("kv: {{mount: secret, path: {ns}/app}}");
    apply(&client, &ns, &vault_secret("app", &role, &source, "")).await;
    wait_ready(&client, &ns, "VaultSecret", "app", "True", "Synced").await;
    let series =
        format!("vaultsync_secret_expiry_timestamp_seconds{{namespace=\"{ns}\",secret=\"app\"}}");
    assert!(
        op.metric(&series).await.is_some(),
        "the copy's expiry series exists"
    );
    let logins = op.present_metric(LOGINS).await;
    assert!(
        op.metric(TOKEN_REVOKED).await.is_none(),
        "no token revoked yet"
    );

    e2e::vault_secrets(&client, &ns)
        .delete("app", &Default::default())
        .await
        .expect("delete");
    common::wait_until(
        Duration::from_secs(30),
        "the unused token to be revoked and the expiry series dropped",
        || {
            let (op, series) = (&op, &series);
            async move {
                let revoked = op.metric(TOKEN_REVOKED).await.is_some_and(|v| v >= 1.0);
                (revoked && op.metric(series).await.is_none()).then_some(())
            }
        },
    )
    .await;
    // The identity's token is gone from the cache too: a new resource logs in afresh.
    apply(&client, &ns, &vault_secret("again", &role, &source, "")).await;
    wait_ready(&client, &ns, "VaultSecret", "again", "True", "Synced").await;
    assert!(
        op.present_metric(LOGINS).await > logins,
        "a fresh login, not the revoked token"
    );
    e2e::assert_no_leak(&client, &ns, &op, &[&original]).await;
}

// ---------------------------------------------------------------------------------------
// Fairness: one tenant's burst does not starve another tenant's first sync

#[tokio::test]
async fn a_burst_in_one_namespace_does_not_hold_back_another_namespaces_resource() {
    let (client, ns_a, role_a, value_a) = seeded("e2e-fair-a", "faira").await;
    let ns_b = common::create_namespace(&client, "e2e-fair-b").await;
    let role_b = e2e::tenant(&client, &ns_b, "app", &format!("{ns_b}/")).await;
    vaultrs::kv2::set(
        &e2e::root_vault(),
        "secret",
        &format!("{ns_b}/app"),
        &json!({"password": "b"}),
    )
    .await
    .expect("seed b");
    // Two reconciles at a time and two Vault requests per second: A's twenty resources
    // take about ten seconds. B waits for at most one free reconcile slot and, at the
    // rate limit, behind the requests of the reconciles already running (at most
    // `concurrency` of them), never behind A's whole burst.
    let op = Operator::start_with(
        &ns_a,
        e2e::OperatorOptions {
            watch_namespaces: Some(format!("[{ns_a}, {ns_b}]")),
            // Appended under the `default` Vault connection, the config's last mapping.
            extra_config: "    requestsPerSecond: 2\n".into(),
            ..Default::default()
        }
        .default_value("concurrency", "2"),
    )
    .await;
    let source_a = format!("kv: {{mount: secret, path: {ns_a}/app}}");
    let burst: Vec<_> = (0..20)
        .map(|i| {
            let (client, ns_a, role_a, source_a) = (
                client.clone(),
                ns_a.to_string(),
                role_a.clone(),
                source_a.clone(),
            );
            async move {
                apply(
                    &client,
                    &ns_a,
                    &vault_secret(&format!("a{i}"), &role_a, &source_a, ""),
                )
                .await
            }
        })
        .collect();
    futures::future::join_all(burst).await;
    apply(
        &client,
        &ns_b,
        &vault_secret(
            "b",
            &role_b,
            &format!("kv: {{mount: secret, path: {ns_b}/app}}"),
            "",
        ),
    )
    .await;
    wait_ready(&client, &ns_b, "VaultSecret", "b", "True", "Synced").await;
    let mut ready_a = 0;
    for i in 0..20 {
        let s = status(&client, &ns_a, "VaultSecret", &format!("a{i}")).await;
        if e2e::ready_condition(&s).is_some_and(|c| c["status"] == "True") {
            ready_a += 1;
        }
    }
    println!("{ready_a}/20 of A's resources were Ready when B's was");
    assert!(
        ready_a <= 5,
        "B's resource waited for A's burst: {ready_a}/20 of A's were Ready first"
    );
    e2e::assert_no_leak(&client, &ns_a, &op, &[&value_a]).await;
}

// ---------------------------------------------------------------------------------------
// Rebuilt controllers: the memory of resources that went is given back, and the rest
// carry on as if nothing happened

const KV_READS: &str =
    "vaultsync_backend_requests_total{backend=\"vault\",operation=\"kv_read\",outcome=\"ok\"}";
const DB_ISSUED: &str = "vaultsync_backend_requests_total{backend=\"vault\",operation=\"database_creds\",outcome=\"ok\"}";
const REBUILDS: &str = "vaultsync_controller_rebuilds_total";
const SYNCED: &str = "vaultsync_syncs_total{kind=\"VaultSecret\",result=\"Synced\"}";

#[tokio::test]
async fn when_most_resources_go_the_controllers_are_rebuilt_and_the_rest_are_not_reread() {
    let (client, ns) = e2e::setup("e2e-rebuild").await;
    let role = e2e::dynamic_tenant(&client, &ns).await;
    e2e::database_role(&ns, 3600, 7200).await;
    vaultrs::kv2::set(
        &e2e::root_vault(),
        "secret",
        &format!("{ns}/app"),
        &json!({"password": e2e::canary("rebuild")}),
    )
    .await
    .expect("seed");
    // Nine resources and their Secrets make a peak of 18; a floor of eight lets the two
    // left over (four objects) trigger a rebuild once the other Secrets are gone.
    let op = Operator::start_with(
        &ns,
        e2e::OperatorOptions::default().env(vaultsync::rebuild::FLOOR_ENV, "8"),
    )
    .await;
    let source = format!("kv: {{mount: secret, path: {ns}/app}}");
    for i in 0..8 {
        apply(
            &client,
            &ns,
            &vault_secret(&format!("k{i}"), &role, &source, ""),
        )
        .await;
    }
    apply(&client, &ns, &e2e::database_secret(&role, &ns, "")).await;
    for i in 0..8 {
        wait_ready(
            &client,
            &ns,
            "VaultSecret",
            &format!("k{i}"),
            "True",
            "Synced",
        )
        .await;
    }
    let db_status = wait_ready(&client, &ns, "VaultSecret", "db", "True", "Synced").await;
    let lease = db_status["lease"]["id"]
        .as_str()
        .expect("lease id")
        .to_string();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let version = |s: Secret| s.metadata.resource_version.expect("resourceVersion");
    let kept = version(secrets.get("k0").await.expect("k0"));
    let db = version(secrets.get("db").await.expect("db"));
    let (reads, issued) = (
        op.present_metric(KV_READS).await,
        op.present_metric(DB_ISSUED).await,
    );
    let logins = op.present_metric(LOGINS).await;
    let synced = op.present_metric(SYNCED).await;
    assert_eq!(op.metric(REBUILDS).await, Some(0.0), "no rebuild yet");

    for i in 1..8 {
        e2e::vault_secrets(&client, &ns)
            .delete(&format!("k{i}"), &Default::default())
            .await
            .expect("delete");
    }
    common::wait_until(
        Duration::from_secs(30),
        "the controllers to be rebuilt",
        || {
            let op = &op;
            async move { (op.metric(REBUILDS).await? >= 1.0).then_some(()) }
        },
    )
    .await;
    // The new generation reconciles the two left (deleted resources are not reconciled),
    // and finds them settled.
    common::wait_until(
        Duration::from_secs(30),
        "the new generation to reconcile k0 and db",
        || {
            let op = &op;
            async move { (op.metric(SYNCED).await? >= synced + 2.0).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        op.present_metric(KV_READS).await,
        reads,
        "k0 was not read again"
    );
    assert_eq!(
        op.present_metric(DB_ISSUED).await,
        issued,
        "no lease was issued"
    );
    assert_eq!(
        version(secrets.get("k0").await.expect("k0")),
        kept,
        "k0 not rewritten"
    );
    assert_eq!(
        version(secrets.get("db").await.expect("db")),
        db,
        "db not rewritten"
    );
    let db_status = status(&client, &ns, "VaultSecret", "db").await;
    assert_eq!(
        db_status["lease"]["id"].as_str(),
        Some(lease.as_str()),
        "the lease is kept"
    );

    // The new generation works: a new resource syncs, an edited copy is repaired.
    apply(&client, &ns, &vault_secret("after", &role, &source, "")).await;
    wait_ready(&client, &ns, "VaultSecret", "after", "True", "Synced").await;
    assert_eq!(
        op.present_metric(LOGINS).await,
        logins,
        "the identity's cached token outlived the old generation"
    );
    secrets
        .patch(
            "k0",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"password": "ZWRpdGVk"}})),
        )
        .await
        .expect("edit k0");
    common::wait_until(
        Duration::from_secs(30),
        "the edited copy to be repaired",
        || {
            let secrets = &secrets;
            async move {
                let k0 = secrets.get("k0").await.ok()?;
                (value(&k0, "password").as_deref() != Some("edited")).then_some(())
            }
        },
    )
    .await;
}
