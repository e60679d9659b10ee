//! Proof that each component of the local environment is real: the Kubernetes control
//! plane (apiserver, garbage collector, service accounts, TokenRequest/TokenReview),
//! OpenBao (Kubernetes auth, KV v2, database engine) and PostgreSQL.
//! Lowkey Vault and the local token endpoint are proven in `environment_azure.rs`.

mod common;

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};

fn vault(token: &str) -> VaultClient {
    let address = common::env("VAULT_ADDR", "OpenBao server");
    VaultClient::new(
        VaultClientSettingsBuilder::default()
            .address(address)
            .token(token)
            .build()
            .expect("vault settings"),
    )
    .expect("vault client")
}

fn root_vault() -> VaultClient {
    vault(&common::env("VAULT_TOKEN", "OpenBao server"))
}

async fn service_account_token(
    client: &kube::Client,
    ns: &str,
    sa: &str,
    audience: &str,
) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    // The service-account controller of kube-controller-manager creates `default`; other
    // accounts are created here.
    if sa == "default" {
        common::wait_until(
            Duration::from_secs(30),
            "the default service account",
            || {
                let accounts = accounts.clone();
                async move { accounts.get_opt("default").await.ok().flatten() }
            },
        )
        .await;
    } else {
        let account: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": sa}})).expect("sa");
        accounts
            .create(&PostParams::default(), &account)
            .await
            .expect("create service account");
    }
    // The operator's own TokenRequest code, which every backend logs in with.
    vaultsync::backend::service_account_token(client, ns, sa, audience)
        .await
        .expect("TokenRequest for the service account")
}

#[tokio::test]
async fn namespace_and_secret_are_created_through_kube() {
    let client = common::client().await;
    let ns = common::create_namespace(&client, "env-basic").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "plain"}, "stringData": {"greeting": "hello"}
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret");
    let read = secrets.get("plain").await.expect("read secret back");
    let value = read.data.expect("data")["greeting"].0.clone();
    assert_eq!(value, b"hello");

    // The service-account controller runs: every new namespace gets `default`.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    common::wait_until(
        Duration::from_secs(30),
        "the default service account",
        || {
            let accounts = accounts.clone();
            async move { accounts.get_opt("default").await.ok().flatten() }
        },
    )
    .await;
}

#[tokio::test]
async fn garbage_collector_deletes_owned_secret() {
    let client = common::client().await;
    let ns = common::create_namespace(&client, "env-gc").await;
    let owners: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let owner: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "owner"}})).expect("configmap");
    let owner = owners
        .create(&PostParams::default(), &owner)
        .await
        .expect("create owner");
    let uid = owner.metadata.uid.expect("uid");

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let child: Secret = serde_json::from_value(json!({
        "metadata": {"name": "child", "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid, "controller": true
        }]},
        "stringData": {"k": "v"}
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &child)
        .await
        .expect("create child");

    owners
        .delete("owner", &DeleteParams::background())
        .await
        .expect("delete owner");
    common::wait_until(
        Duration::from_secs(60),
        "the garbage collector of kube-controller-manager to delete the owned Secret",
        || {
            let secrets = secrets.clone();
            async move { matches!(secrets.get_opt("child").await, Ok(None)).then_some(()) }
        },
    )
    .await;
}

#[tokio::test]
async fn openbao_kubernetes_auth_logs_in_with_a_token_request_and_reads_kv() {
    let client = common::client().await;
    let ns = common::create_namespace(&client, "env-bao").await;
    let root = root_vault();
    let value = common::unique("canary");

    vaultrs::kv2::set(
        &root,
        "secret",
        &format!("{ns}/app"),
        &json!({"password": value}),
    )
    .await
    .expect("write KV v2 secret with the root token");
    let policy = format!("path \"secret/data/{ns}/*\" {{ capabilities = [\"read\"] }}");
    vaultrs::sys::policy::set(&root, &ns, &policy)
        .await
        .expect("write policy");
    vaultrs::auth::kubernetes::role::create(
        &root,
        "kubernetes",
        &ns,
        Some(
            &mut vaultrs::api::auth::kubernetes::requests::CreateKubernetesRoleRequest::builder()
                .bound_service_account_names(vec!["app".to_string()])
                .bound_service_account_namespaces(vec![ns.clone()])
                .audience("vault")
                .token_policies(vec![ns.clone()])
                .token_ttl("5m"),
        ),
    )
    .await
    .expect("create Kubernetes auth role (is auth/kubernetes enabled? run `make env-up`)");

    let jwt = service_account_token(&client, &ns, "app", "vault").await;
    let login = vaultrs::auth::kubernetes::login(&root, "kubernetes", &ns, &jwt)
        .await
        .expect("OpenBao Kubernetes auth login (TokenReview against the local apiserver)");
    let tenant = vault(&login.client_token);
    let read: serde_json::Value = vaultrs::kv2::read(&tenant, "secret", &format!("{ns}/app"))
        .await
        .expect("the tenant token reads its KV v2 secret");
    assert_eq!(read["password"], json!(value));

    // The same login for another service account is refused: the role binds `app` only.
    let other = service_account_token(&client, &ns, "default", "vault").await;
    assert!(
        vaultrs::auth::kubernetes::login(&root, "kubernetes", &ns, &other)
            .await
            .is_err(),
        "a service account outside the role's binding must not log in"
    );
    assert!(tenant.settings().token.len() > 10);
}

#[tokio::test]
async fn openbao_database_engine_issues_postgres_credentials_that_log_in() {
    let database_url = common::env("DATABASE_URL", "PostgreSQL server");
    let root = root_vault();
    let creds = vaultrs::database::role::creds(&root, "database", "app")
        .await
        .expect("OpenBao database engine issues credentials for role app (run `make env-up`)");

    let url = url_with_credentials(&database_url, &creds.username);
    let out = Command::new("psql")
        .arg(&url)
        .args(["-tA", "-c", "select current_user"])
        .env("PGPASSWORD", &creds.password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql is on PATH (tools step of `make env-up`)");
    assert!(
        out.status.success(),
        "issued credentials did not log in to PostgreSQL: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), creds.username);
}

/// `postgres://admin:pw@host:port/db` with the user replaced and no password, which
/// psql then takes from PGPASSWORD so it never shows in a process list.
fn url_with_credentials(admin_url: &str, user: &str) -> String {
    let rest = admin_url
        .split_once('@')
        .map(|(_, rest)| rest)
        .expect("DATABASE_URL has the form postgres://user:password@host:port/db");
    format!("postgres://{user}@{rest}")
}
