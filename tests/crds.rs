//! The CRDs: generated YAML matches the Rust types, the real apiserver accepts them as
//! structural schemas, refuses malformed resources at admission with a clear message,
//! and accepts the DESIGN.md examples and akv2k8s manifests.

mod common;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

/// `crds/` is generated from the types; a stale copy fails here with the fix.
#[test]
fn committed_crds_match_the_rust_types() {
    let generated = vaultsync::api::crds_yaml().expect("CRDs serialize");
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/vaultsync.dev.yaml"
    ))
    .expect("crds/vaultsync.dev.yaml exists: run `make crds`");
    assert!(
        generated == committed,
        "crds/vaultsync.dev.yaml differs from what the Rust types generate: run `make crds` and commit"
    );
}

/// Every spec property in both CRDs carries a description, which `kubectl explain` shows.
#[test]
fn every_field_is_documented() {
    fn walk(path: &str, schema: &Value, missing: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, prop) in props {
                let p = format!("{path}.{name}");
                // The standard Condition type documents itself upstream; metadata is Kubernetes'.
                if prop.get("description").is_none() && name != "metadata" {
                    missing.push(p.clone());
                }
                walk(&p, prop, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    let mut missing = Vec::new();
    for crd in [
        serde_json::to_value(<vaultsync::api::VaultSecret as kube::CustomResourceExt>::crd()),
        serde_json::to_value(
            <vaultsync::api::AzureKeyVaultSecret as kube::CustomResourceExt>::crd(),
        ),
    ] {
        let crd = crd.expect("crd json");
        let kind = crd["spec"]["names"]["kind"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        for part in ["spec", "status"] {
            walk(
                &format!("{kind}.{part}"),
                &schema["properties"][part],
                &mut missing,
            );
        }
    }
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:?}"
    );
}

fn resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("vaultsync.dev", "v1alpha1", kind))
}

/// Server-side applies `manifest` as a dry run with strict field validation (what
/// `kubectl apply` does), so admission runs in full but nothing is stored.
async fn dry_run_apply(client: &kube::Client, ns: &str, manifest: &Value) -> Result<(), String> {
    let kind = manifest["kind"].as_str().expect("kind");
    let name = manifest["metadata"]["name"].as_str().expect("name");
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource(kind));
    let params = PatchParams::apply("vaultsync-tests")
        .dry_run()
        .validation_strict();
    api.patch(name, &params, &Patch::Apply(manifest))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn vault_secret(spec: Value) -> Value {
    json!({"apiVersion": "vaultsync.dev/v1alpha1", "kind": "VaultSecret",
           "metadata": {"name": "bad"}, "spec": spec})
}

fn azure_secret(spec: Value) -> Value {
    json!({"apiVersion": "vaultsync.dev/v1alpha1", "kind": "AzureKeyVaultSecret",
           "metadata": {"name": "bad"}, "spec": spec})
}

fn kv() -> Value {
    json!({"mount": "secret", "path": "app/config"})
}

fn akv_object() -> Value {
    json!({"name": "token", "type": "secret"})
}

/// Each malformed manifest, and a part of the message that must tell a person what to fix.
fn malformed() -> Vec<(&'static str, Value, &'static str)> {
    let many_labels: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("l{i}"), json!("v"))).collect();
    vec![
        (
            "no source",
            vault_secret(json!({"vault": {}})),
            "set exactly one source: spec.vault.kv, spec.vault.database or spec.vault.pki",
        ),
        (
            "two sources",
            vault_secret(
                json!({"vault": {"kv": kv(), "database": {"mount": "database", "role": "app"}}}),
            ),
            "set exactly one source",
        ),
        (
            "duration in words",
            vault_secret(json!({"vault": {"kv": kv()}, "refreshInterval": "10 minutes"})),
            "must be a duration written like 30s, 5m, 1h",
        ),
        (
            "duration in days",
            vault_secret(json!({"vault": {"kv": kv()}, "ttl": "1d"})),
            "must be a duration written like 30s, 5m, 1h",
        ),
        (
            "renewalPercent too high",
            vault_secret(
                json!({"vault": {"database": {"mount": "database", "role": "app"}}, "renewalPercent": 95}),
            ),
            "renewalPercent must be between 1 and 90",
        ),
        (
            "renewalPercent zero",
            vault_secret(
                json!({"vault": {"database": {"mount": "database", "role": "app"}}, "renewalPercent": 0}),
            ),
            "renewalPercent must be between 1 and 90",
        ),
        (
            "empty kv path",
            vault_secret(json!({"vault": {"kv": {"mount": "secret", "path": ""}}})),
            "must be a path within the mount",
        ),
        (
            "empty kv mount",
            vault_secret(json!({"vault": {"kv": {"mount": "", "path": "app"}}})),
            "must be a Vault mount or role name",
        ),
        (
            "kv path escaping the mount",
            vault_secret(json!({"vault": {"kv": {"mount": "secret", "path": "../sys/raw"}}})),
            "must be a path within the mount",
        ),
        (
            "kv path with a query",
            vault_secret(json!({"vault": {"kv": {"mount": "secret", "path": "app?version=1"}}})),
            "must be a path within the mount",
        ),
        (
            "service account name that is not DNS-1123",
            vault_secret(
                json!({"vault": {"auth": {"kubernetes": {"role": "r", "serviceAccountName": "../admin"}},
                                          "kv": {"mount": "secret", "path": "app"}}}),
            ),
            "serviceAccountName",
        ),
        (
            "invalid label key",
            vault_secret(json!({"vault": {"kv": {"mount": "secret", "path": "app"}},
                                "output": {"secret": {"labels": {"bad key!": "v"}}}})),
            "valid Kubernetes label",
        ),
        (
            "too many labels",
            vault_secret(json!({"vault": {"kv": {"mount": "secret", "path": "app"}},
                                "output": {"secret": {"labels": many_labels}}})),
            "must have at most 64 items",
        ),
        (
            "service-account-token output",
            vault_secret(
                json!({"vault": {"kv": kv()}, "output": {"secret": {"type": "kubernetes.io/service-account-token"}}}),
            ),
            "they make Kubernetes mint credentials",
        ),
        (
            "bootstrap token output",
            azure_secret(
                json!({"vault": {"name": "kv1", "object": akv_object()}, "output": {"secret": {"type": "bootstrap.kubernetes.io/token"}}}),
            ),
            "they make Kubernetes mint credentials",
        ),
        (
            "ttl shorter than refreshInterval",
            vault_secret(json!({"vault": {"kv": kv()}, "refreshInterval": "1h", "ttl": "5m"})),
            "ttl must be longer than refreshInterval",
        ),
        (
            "ttl equal to refreshInterval (Azure)",
            azure_secret(
                json!({"vault": {"name": "kv1", "object": akv_object()}, "refreshInterval": "60m", "ttl": "1h"}),
            ),
            "ttl must be longer than refreshInterval",
        ),
        (
            "vault address in the resource",
            vault_secret(
                json!({"vault": {"address": "https://attacker.example:8200", "kv": kv()}}),
            ),
            ".spec.vault.address: field not declared in schema",
        ),
        (
            "key vault URL instead of a name",
            azure_secret(
                json!({"vault": {"name": "https://attacker.example", "object": akv_object()}}),
            ),
            "not a URL: the URL comes from the operator's connection",
        ),
        (
            "unknown Azure object type",
            azure_secret(
                json!({"vault": {"name": "kv1", "object": {"name": "x", "type": "blob"}}}),
            ),
            "supported values: \"secret\", \"certificate\", \"key\", \"multi-key-value-secret\"",
        ),
        (
            "multi-key-value secret without content type",
            azure_secret(
                json!({"vault": {"name": "kv1", "object": {"name": "x", "type": "multi-key-value-secret"}}}),
            ),
            "contentType (application/x-json or application/x-yaml) is required",
        ),
        (
            "two auth methods",
            vault_secret(json!({"vault": {"kv": kv(), "auth": {
                "kubernetes": {"role": "a"}, "token": {"secretRef": {"name": "t", "key": "token"}}}}})),
            "set exactly one auth method: kubernetes, appRole or token",
        ),
        (
            "invalid Secret name",
            vault_secret(
                json!({"vault": {"kv": kv()}, "output": {"secret": {"name": "Bad_Name"}}}),
            ),
            "must be a valid Kubernetes object name",
        ),
        (
            "invalid template key",
            vault_secret(
                json!({"vault": {"kv": kv()}, "output": {"secret": {"template": {"bad key": "x"}}}}),
            ),
            "template keys must be valid Secret keys",
        ),
        (
            "restart target of an unknown kind",
            vault_secret(
                json!({"vault": {"kv": kv()}, "rolloutRestartTargets": [{"kind": "Pod", "name": "p"}]}),
            ),
            "supported values: \"Deployment\", \"StatefulSet\", \"DaemonSet\"",
        ),
        (
            "empty Kubernetes auth role",
            vault_secret(json!({"vault": {"kv": kv(), "auth": {"kubernetes": {"role": ""}}}})),
            "must be a Vault mount or role name",
        ),
        (
            "Azure object missing",
            azure_secret(json!({"vault": {"name": "kv1"}})),
            "spec.vault.object: Required value",
        ),
        (
            "a secret into a ConfigMap",
            azure_secret(json!({"vault": {"name": "kv1", "object": akv_object()},
                "output": {"configMap": {"name": "cm", "dataKey": "token"}}})),
            "output.configMap may hold only public material",
        ),
        (
            "a ConfigMap beside a Secret",
            azure_secret(
                json!({"vault": {"name": "kv1", "object": {"name": "c", "type": "certificate"}},
                "output": {"secret": {"name": "s"}, "configMap": {"name": "cm", "dataKey": "ca.crt"}}}),
            ),
            "set one of output.secret and output.configMap",
        ),
        (
            "a ConfigMap name that is not one",
            azure_secret(
                json!({"vault": {"name": "kv1", "object": {"name": "c", "type": "certificate"}},
                "output": {"configMap": {"name": "Bad_Name", "dataKey": "ca.crt"}}}),
            ),
            "DNS-1123 subdomain",
        ),
        (
            "an Azure version that is not one",
            azure_secret(
                json!({"vault": {"name": "kv1", "object": {"name": "token", "type": "secret", "version": "latest"}}}),
            ),
            "32 hexadecimal characters",
        ),
    ]
}

#[tokio::test]
async fn apiserver_refuses_malformed_and_accepts_examples() {
    let client = common::client().await;
    common::install_crds(&client).await;
    let ns = common::create_namespace(&client, "crd-admission").await;

    let cases = malformed();
    assert!(cases.len() >= 12);
    let mut failures = Vec::new();
    for (what, manifest, expected) in &cases {
        match dry_run_apply(&client, &ns, manifest).await {
            Ok(()) => failures.push(format!("{what}: accepted, but should be refused")),
            Err(message) if !message.contains(expected) => failures.push(format!(
                "{what}: refused, but the message lacks {expected:?}: {message}"
            )),
            Err(_) => {}
        }
    }

    for name in [
        "design-vaultsecret.yaml",
        "design-azurekeyvaultsecret.yaml",
        "akv2k8s-v1.yaml",
        "akv2k8s-v2beta1.yaml",
    ] {
        if let Err(message) = dry_run_apply(&client, &ns, &fixture(name)).await {
            failures.push(format!("{name}: refused: {message}"));
        }
    }
    for (what, manifest) in [
        ("minimal kv", vault_secret(json!({"vault": {"kv": kv()}}))),
        (
            "compound duration",
            vault_secret(json!({"vault": {"kv": kv()}, "refreshInterval": "1h30m", "ttl": "2h"})),
        ),
        (
            "pki",
            vault_secret(
                json!({"vault": {"pki": {"mount": "pki", "role": "web", "commonName": "app.example.com", "altNames": ["a.example.com"], "ttl": "24h"}}}),
            ),
        ),
        (
            "approle",
            vault_secret(
                json!({"vault": {"kv": kv(), "auth": {"appRole": {"roleId": "r", "secretIdRef": {"name": "approle", "key": "secret-id"}}}}}),
            ),
        ),
        (
            "minimal azure",
            azure_secret(json!({"vault": {"name": "kv1", "object": akv_object()}})),
        ),
    ] {
        if let Err(message) = dry_run_apply(&client, &ns, &manifest).await {
            failures.push(format!("{what}: refused: {message}"));
        }
    }

    assert!(
        failures.is_empty(),
        "admission did not behave:\n{}",
        failures.join("\n")
    );
}
