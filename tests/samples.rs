//! The samples in `config/samples/`: every one is accepted by the real apiserver (a
//! server-side dry-run apply with strict field validation, as `kubectl apply` does), and
//! together they show every source type and every Azure Key Vault object type.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;

/// Every YAML document of every `*.yaml`/`*.yml` file in `config/samples/`, with the
/// file it came from.
fn samples() -> Vec<(String, Value)> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/config/samples"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let name = path
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            text.starts_with('#'),
            "{name}: start with a comment header that says what the sample shows"
        );
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{name}: not valid YAML: {e}"));
            if !value.is_null() {
                out.push((name.clone(), value));
            }
        }
    }
    out
}

fn resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version
        .split_once('/')
        .unwrap_or_else(|| panic!("apiVersion {api_version:?} has no group"));
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
}

/// Server-side applies `manifest` as a dry run with strict field validation, so
/// admission runs in full but nothing is stored.
async fn dry_run_apply(client: &kube::Client, ns: &str, manifest: &Value) -> Result<(), String> {
    let api_version = manifest["apiVersion"].as_str().ok_or("no apiVersion")?;
    let kind = manifest["kind"].as_str().ok_or("no kind")?;
    let name = manifest["metadata"]["name"]
        .as_str()
        .ok_or("no metadata.name")?;
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &resource(api_version, kind));
    let params = PatchParams::apply("vaultsync-tests")
        .dry_run()
        .validation_strict();
    api.patch(name, &params, &Patch::Apply(manifest))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// What a sample shows: `VaultSecret/kv`, `AzureKeyVaultSecret/certificate`, ...
fn shows(manifest: &Value) -> Option<String> {
    let spec = &manifest["spec"];
    match manifest["kind"].as_str()? {
        "VaultSecret" => ["kv", "database", "pki"]
            .into_iter()
            .find(|source| spec["vault"].get(*source).is_some())
            .map(|source| format!("VaultSecret/{source}")),
        "AzureKeyVaultSecret" => spec["vault"]["object"]["type"]
            .as_str()
            .map(|t| format!("AzureKeyVaultSecret/{t}")),
        _ => None,
    }
}

#[test]
fn there_is_a_sample_for_every_source_and_azure_object_type() {
    let samples = samples();
    let shown: BTreeSet<String> = samples.iter().filter_map(|(_, m)| shows(m)).collect();
    let missing: Vec<&str> = [
        "VaultSecret/kv",
        "VaultSecret/database",
        "VaultSecret/pki",
        "AzureKeyVaultSecret/secret",
        "AzureKeyVaultSecret/certificate",
        "AzureKeyVaultSecret/key",
        "AzureKeyVaultSecret/multi-key-value-secret",
    ]
    .into_iter()
    .filter(|wanted| !shown.contains(*wanted))
    .collect();
    assert!(
        missing.is_empty(),
        "config/samples/ has no sample for {missing:?} (it shows {shown:?})"
    );
    for (file, manifest) in &samples {
        assert!(
            manifest["metadata"].get("namespace").is_none(),
            "{file}: samples leave metadata.namespace out, so `kubectl apply -n` picks it"
        );
        assert_eq!(
            manifest["apiVersion"], "vaultsync.dev/v1alpha1",
            "{file}: samples are vaultsync resources"
        );
    }
}

#[tokio::test]
async fn the_apiserver_accepts_every_sample() {
    let client = common::client().await;
    common::install_crds(&client).await;
    let ns = common::create_namespace(&client, "samples").await;

    let samples = samples();
    let mut failures = Vec::new();
    for (file, manifest) in &samples {
        if let Err(message) = dry_run_apply(&client, &ns, manifest).await {
            failures.push(format!("{file}: refused: {message}"));
        }
    }

    assert!(
        samples.len() >= 9,
        "expected at least 9 samples in config/samples/, found {}",
        samples.len()
    );
    assert!(
        failures.is_empty(),
        "the apiserver refused samples:\n{}",
        failures.join("\n")
    );
}
