//! Rendering and applying the deployment manifests (the Helm chart, the kustomize base)
//! with the helm and kubectl of the local environment: shared by the tests that check them.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};

use kube::api::{Api, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde::Deserialize;
use serde_json::Value;

use super::common;

pub const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/vaultsync");
pub const KUSTOMIZE_BASE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/default");

/// The path of `name` on PATH, or a panic that says how to get it.
pub fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} missing: run make env-up (and `source target/env/env.sh`; make test does both)"
            )
        })
}

/// Runs a command and returns its stdout, or panics with its stderr.
pub fn run(command: &mut Command, stdin: Option<&str>) -> String {
    let what = format!("{command:?}");
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

pub fn helm() -> Command {
    Command::new(tool("helm"))
}

pub fn kubectl() -> Command {
    common::env("KUBECONFIG", "Kubernetes control plane");
    Command::new(tool("kubectl"))
}

/// Parses multi-document YAML into JSON values, skipping empty documents.
pub fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

/// `helm template` of the chart as text, CRDs included.
pub fn helm_template_text(release: &str, namespace: &str, args: &[&str]) -> String {
    run(
        helm()
            .args(["template", release, CHART, "--namespace", namespace])
            .arg("--include-crds")
            .args(args),
        None,
    )
}

pub fn helm_template(release: &str, namespace: &str, args: &[&str]) -> Vec<Value> {
    documents(&helm_template_text(release, namespace, args))
}

pub fn kustomize() -> Vec<Value> {
    documents(&run(kubectl().args(["kustomize", KUSTOMIZE_BASE]), None))
}

pub fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// The API resource of a rendered object, from its apiVersion and kind.
pub fn api_resource(object: &Value) -> ApiResource {
    let kind = object["kind"].as_str().expect("kind");
    let (group, version) = object["apiVersion"]
        .as_str()
        .expect("apiVersion")
        .split_once('/')
        .unwrap_or(("", "v1"));
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
}

/// The objects that make up the operator's identity and its fences: its ServiceAccount,
/// RBAC and guardrail policies (nothing that runs).
pub fn identity_objects(objects: &[Value]) -> Vec<&Value> {
    objects
        .iter()
        .filter(|o| {
            matches!(
                o["kind"].as_str(),
                Some(
                    "ServiceAccount"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                        | "Role"
                        | "RoleBinding"
                        | "ValidatingAdmissionPolicy"
                        | "ValidatingAdmissionPolicyBinding"
                )
            )
        })
        .collect()
}

/// Server-side applies rendered objects as `manager`, namespaced or cluster-scoped.
pub async fn apply_objects(client: &kube::Client, objects: &[&Value], manager: &str) {
    for object in objects {
        let ar = api_resource(object);
        let api: Api<DynamicObject> = match object["metadata"]["namespace"].as_str() {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        let name = object["metadata"]["name"].as_str().expect("metadata.name");
        api.patch(
            name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(object),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {} {name}: {e}", ar.kind));
    }
}
