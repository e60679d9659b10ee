//! TLS toward Vault comes only from the operator config. The connection below points at
//! an HTTPS server whose CA the operator is not given (the local kube-apiserver): the
//! failure must say TLS, not "connection refused", and `VAULT_SKIP_VERIFY` /
//! `VAULT_CACERT` in the environment must not change it. Given the CA in `caFile`, the
//! handshake succeeds and the answer is the server's own (not a Vault, so not found).

mod common;

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use vaultsync::api::VaultSecret;
use vaultsync::backend::vault::VaultBackend;
use vaultsync::backend::{Backend, Prior};
use vaultsync::config::Config;

fn backend(client: &kube::Client, ca_file: Option<&str>) -> VaultBackend {
    let api = common::env("K8S_API_URL", "Kubernetes control plane");
    let ca = ca_file
        .map(|f| format!("    caFile: {f}\n"))
        .unwrap_or_default();
    let config = Config::parse(&format!(
        "vault:\n  default:\n    address: {api}\n{ca}    kvVersions: {{secret: 2}}\n"
    ))
    .expect("config");
    VaultBackend::new(client.clone(), &config, Arc::default()).expect("backend")
}

#[tokio::test]
async fn tls_settings_come_only_from_the_config_and_failures_say_tls() {
    let client = common::client().await;
    let ns = common::create_namespace(&client, "vault-tls").await;
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "vault-token"},
        "stringData": {"token": "not-a-real-token"},
    }))
    .expect("secret");
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("token secret");
    let resource: VaultSecret = serde_json::from_value(serde_json::json!({
        "apiVersion": "vaultsync.dev/v1alpha1", "kind": "VaultSecret",
        "metadata": {"name": "tls", "namespace": ns.as_str()},
        "spec": {"vault": {
            "auth": {"token": {"secretRef": {"name": "vault-token", "key": "token"}}},
            "kv": {"mount": "secret", "path": "app"}
        }}
    }))
    .expect("resource");
    let prior = Prior {
        lease: None,
        copy_intact: false,
        renewal_percent: 67,
    };

    // What vaultrs and the Vault CLI would read to skip verification or trust a CA.
    // SAFETY: this binary holds this one test, so no other thread reads the environment
    // while it is written.
    unsafe {
        std::env::set_var("VAULT_SKIP_VERIFY", "true");
        std::env::set_var(
            "VAULT_CACERT",
            common::env("K8S_CA_FILE", "Kubernetes control plane"),
        );
    }
    let untrusted = backend(&client, None);
    let request = untrusted
        .resolve(&ns, &resource.spec.vault)
        .expect("resolves");
    let error = untrusted
        .fetch(&request, prior)
        .await
        .expect_err("an untrusted certificate must fail");
    let message = error.to_string();
    assert_eq!(error.reason(), "BackendUnavailable");
    assert!(
        message.contains("TLS handshake failed") && message.contains("caFile"),
        "the failure names TLS and the fix: {message}"
    );
    assert!(!message.contains("connection refused"), "{message}");

    let ca = common::env("K8S_CA_FILE", "Kubernetes control plane");
    let trusted = backend(&client, Some(&ca));
    let request = trusted
        .resolve(&ns, &resource.spec.vault)
        .expect("resolves");
    let error = trusted
        .fetch(&request, prior)
        .await
        .expect_err("the apiserver is no Vault");
    assert!(
        !error.to_string().contains("TLS"),
        "with caFile the handshake succeeds: {error}"
    );
    common::delete_namespace(&client, &ns).await;
}
