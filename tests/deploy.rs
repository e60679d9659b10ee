//! The deployable product: the Helm chart (`charts/vaultsync`), the kustomize base
//! (`config/default`) and their RBAC, checked against the real local apiserver.
//!
//! - The rendered RBAC has no wildcard and no verb outside the documented allow-list.
//! - The pods meet Pod Security "restricted" (the apiserver's admission says so).
//! - The CRDs shipped are the generated `crds/`, byte for byte.
//! - Both render and pass a server-side dry run.
//! - The chart's RBAC is enough: the operator runs under a token of the chart's
//!   ServiceAccount, bound only to the chart's Roles and fenced by the chart's guardrails
//!   (ValidatingAdmissionPolicies), and syncs, rotates, repairs, collects and records
//!   Events; and the namespaced scope grants nothing outside the listed namespaces.
//!
//! helm and kubectl come from `make env-up` (PATH from target/env/env.sh); a missing
//! one fails the test with the fix, never skips it.

mod common;
mod manifests;

use manifests::*;
mod e2e;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use e2e::{
    Operator, apply, assert_no_leak, canary, root_vault, secret, tenant, value, wait_ready,
    wait_secret,
};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};

const CRDS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crds");

/// Every verb the operator may hold, per (API group, resource), and why. A rendered rule
/// outside this list fails `rbac_is_least_privilege`; the union of the rendered rules
/// must also be exactly this list, so nothing documented is missing.
const ALLOWED: &[(&str, &str, &[&str], &str)] = &[
    (
        "vaultsync.dev",
        "vaultsecrets",
        &["get", "list", "watch", "patch"],
        "the controller's watch; the finalizer that revokes dynamic credentials (patch)",
    ),
    (
        "vaultsync.dev",
        "azurekeyvaultsecrets",
        &["get", "list", "watch"],
        "the controller's watch",
    ),
    (
        "vaultsync.dev",
        "vaultsecrets/status",
        &["get", "patch"],
        "Ready and sync fields, server-side apply on /status; a fresh read of a dynamic \
         source's lease (get)",
    ),
    (
        "vaultsync.dev",
        "azurekeyvaultsecrets/status",
        &["patch"],
        "Ready and sync fields, server-side apply on /status",
    ),
    (
        "",
        "secrets",
        &["get", "list", "watch", "create", "patch", "delete"],
        "ownership check and AppRole/token credentials (get), drift and expiry watch \
         (list, watch), server-side apply that may create (create, patch), the expiry \
         collector and type changes (delete), the HMAC key (create, get)",
    ),
    (
        "",
        "serviceaccounts/token",
        &["create"],
        "tenants' short-lived tokens for Vault's Kubernetes auth",
    ),
    (
        "",
        "serviceaccounts",
        &["get"],
        "the app registration a service account is annotated with (Azure workload \
         identity, and pods injected with @azurekeyvault references)",
    ),
    (
        "",
        "configmaps",
        &["get", "create", "update"],
        "an AzureKeyVaultSecret's output.configMap (public material): ownership check, \
         create if absent, replace at the version read",
    ),
    (
        "authorization.k8s.io",
        "subjectaccessreviews",
        &["create"],
        "the admission webhook: may the resource's writer use what it references?",
    ),
    (
        "events.k8s.io",
        "events",
        &["create"],
        "Events, one object per occurrence",
    ),
    ("apps", "deployments", &["patch"], "rollout restarts"),
    ("apps", "statefulsets", &["patch"], "rollout restarts"),
    ("apps", "daemonsets", &["patch"], "rollout restarts"),
    (
        "coordination.k8s.io",
        "leases",
        &["get", "list", "watch", "create", "patch"],
        "leader election in the operator's namespace (kube-lease-manager; the standby \
         watches the Lease, by name, to take it as soon as it is released)",
    ),
    (
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        &["get"],
        "waiting for the two CRDs to be Established",
    ),
];

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(objects, kind);
    assert_eq!(found.len(), 1, "exactly one {kind}: {found:#?}");
    found[0]
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().expect("a string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// One granted permission: where, on what, which verb.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Grant {
    /// "ClusterRole" or "Role <namespace>".
    scope: String,
    group: String,
    resource: String,
    names: Vec<String>,
    verb: String,
}

/// Every (role, rule) permission of the rendered Roles and ClusterRoles, after checking
/// that no rule uses a wildcard or a non-resource URL and every verb is allowed.
fn grants(objects: &[Value]) -> BTreeSet<Grant> {
    let allowed: BTreeMap<(&str, &str), &[&str]> = ALLOWED
        .iter()
        .map(|(g, r, verbs, _)| ((*g, *r), *verbs))
        .collect();
    let mut out = BTreeSet::new();
    for role in objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role")
    {
        let scope = match role["metadata"]["namespace"].as_str() {
            Some(ns) => format!("Role {ns}"),
            None => "ClusterRole".to_string(),
        };
        let name = role["metadata"]["name"].as_str().unwrap_or_default();
        assert!(
            role.get("aggregationRule").is_none(),
            "{name}: no aggregated roles"
        );
        for rule in role["rules"].as_array().expect("rules") {
            assert!(
                rule.get("nonResourceURLs").is_none(),
                "{name}: no non-resource URLs: {rule}"
            );
            for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                assert!(
                    !strings(&rule[field]).iter().any(|s| s.contains('*')),
                    "{name}: wildcard in {field}: {rule}"
                );
            }
            let names = strings(&rule["resourceNames"]);
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    let permitted = allowed
                        .get(&(group.as_str(), resource.as_str()))
                        .unwrap_or_else(|| {
                            panic!("{name}: {group:?}/{resource} is not in the allow-list")
                        });
                    for verb in strings(&rule["verbs"]) {
                        assert!(
                            permitted.contains(&verb.as_str()),
                            "{name}: verb {verb} on {group:?}/{resource} is not in the allow-list {permitted:?}"
                        );
                        out.insert(Grant {
                            scope: scope.clone(),
                            group: group.clone(),
                            resource: resource.clone(),
                            names: names.clone(),
                            verb,
                        });
                    }
                }
            }
        }
    }
    out
}

/// The union of grants as (group, resource) -> verbs.
fn union(grants: &BTreeSet<Grant>) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for g in grants {
        out.entry((g.group.clone(), g.resource.clone()))
            .or_default()
            .insert(g.verb.clone());
    }
    out
}

fn allow_list() -> BTreeMap<(String, String), BTreeSet<String>> {
    ALLOWED
        .iter()
        .map(|(g, r, verbs, _)| {
            (
                (g.to_string(), r.to_string()),
                verbs.iter().map(|v| v.to_string()).collect(),
            )
        })
        .collect()
}

/// The operator's config from a rendered ConfigMap, parsed by the operator's own parser.
fn operator_config(objects: &[Value]) -> vaultsync::config::Config {
    let map = one(objects, "ConfigMap");
    let text = map["data"]["config.yaml"]
        .as_str()
        .expect("the ConfigMap holds config.yaml");
    vaultsync::config::Config::parse(text)
        .unwrap_or_else(|e| panic!("the rendered operator config is refused: {e}\n{text}"))
}

/// The generated CRD files, by file name.
fn generated_crds() -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(CRDS_DIR).expect("crds/ exists") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        out.insert(name, std::fs::read(&path).expect("read CRD file"));
    }
    assert!(!out.is_empty(), "crds/ holds the generated CRDs");
    out
}

// ---------------------------------------------------------------------------------------
// Static checks of the rendered manifests

#[test]
fn helm_lint_is_clean() {
    for values in [
        vec![],
        vec![
            "--set",
            "rbac.scope=namespaces",
            "--set",
            "watchNamespaces={a,b}",
        ],
        vec![
            "--set",
            "replicaCount=1",
            "--set",
            "vault.default.address=https://vault.example.com:8200",
            "--set",
            "metrics.serviceMonitor.enabled=true",
        ],
    ] {
        let out = run(helm().args(["lint", "--strict", CHART]).args(&values), None);
        assert!(out.contains("0 chart(s) failed"), "{out}");
        assert!(!out.contains("[WARNING]"), "{out}");
    }
    // The schema and the template checks refuse contradictions with a message.
    for (values, message) in [
        (vec!["--set", "rbac.scope=namespaces"], "watchNamespaces"),
        (vec!["--set", "rbac.scope=everything"], "rbac/scope"),
        (
            vec!["--set", "vault.default.address=vault:8200"],
            "vault/default/address",
        ),
        (
            vec![
                "--set",
                "replicaCount=2",
                "--set",
                "leaderElection.enabled=false",
            ],
            "leaderElection",
        ),
    ] {
        let out = helm()
            .args(["template", "t", CHART])
            .args(&values)
            .output()
            .expect("helm runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(message),
            "{values:?} is refused naming {message}: {stderr}"
        );
    }
}

#[test]
fn rbac_is_least_privilege() {
    let fullname = "t-vaultsync";
    let operator_ns = "Role vaultsync-system";
    let renders = vec![
        (
            "chart, scope cluster",
            helm_template("t", "vaultsync-system", &[]),
        ),
        (
            "chart, scope namespaces",
            helm_template(
                "t",
                "vaultsync-system",
                &[
                    "--set",
                    "rbac.scope=namespaces",
                    "--set",
                    "watchNamespaces={team-a,team-b}",
                ],
            ),
        ),
        ("config/default", kustomize()),
    ];
    for (what, objects) in &renders {
        let grants = grants(objects);
        assert_eq!(
            union(&grants),
            allow_list(),
            "{what}: the granted verbs are exactly the documented allow-list"
        );
        // Leases and the HMAC key only in the operator's own namespace, by name where
        // the verb allows it; CRDs only by their two names.
        for g in &grants {
            match (g.group.as_str(), g.resource.as_str()) {
                ("coordination.k8s.io", "leases") => {
                    assert_eq!(g.scope, operator_ns, "{what}: {g:?}");
                    if g.verb != "create" {
                        assert_eq!(g.names, ["vaultsync-leader"], "{what}: {g:?}");
                    }
                }
                ("apiextensions.k8s.io", _) => {
                    assert_eq!(g.scope, "ClusterRole", "{what}: {g:?}");
                    assert_eq!(
                        g.names,
                        [
                            "vaultsecrets.vaultsync.dev",
                            "azurekeyvaultsecrets.vaultsync.dev"
                        ],
                        "{what}: {g:?}"
                    );
                }
                ("", "secrets") if g.scope == operator_ns && g.verb == "get" => {
                    assert_eq!(g.names, ["vaultsync-hmac-key"], "{what}: {g:?}");
                }
                _ => assert!(g.names.is_empty() || g.verb == "get", "{what}: {g:?}"),
            }
        }
        // Every binding names the operator's ServiceAccount, in its namespace.
        let sa = one(objects, "ServiceAccount");
        for binding in objects
            .iter()
            .filter(|o| o["kind"] == "RoleBinding" || o["kind"] == "ClusterRoleBinding")
        {
            assert_eq!(
                binding["subjects"],
                json!([{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                        "namespace": "vaultsync-system"}]),
                "{what}"
            );
        }
    }

    // Scope namespaces: nothing cluster-wide but `get` on the two CRDs and the admission
    // webhook's SubjectAccessReviews, and the sync rules in each listed namespace.
    let namespaced = grants(&renders[1].1);
    let cluster: Vec<&Grant> = namespaced
        .iter()
        .filter(|g| g.scope == "ClusterRole")
        .collect();
    assert!(
        cluster
            .iter()
            .all(|g| g.resource == "customresourcedefinitions"
                || (g.resource == "subjectaccessreviews" && g.verb == "create")),
        "{cluster:?}"
    );
    for ns in ["team-a", "team-b"] {
        let here: BTreeSet<(String, String)> = namespaced
            .iter()
            .filter(|g| g.scope == format!("Role {ns}"))
            .map(|g| (g.resource.clone(), g.verb.clone()))
            .collect();
        assert!(
            here.contains(&("secrets".into(), "watch".into()))
                && here.contains(&("serviceaccounts/token".into(), "create".into()))
                && here.contains(&("vaultsecrets/status".into(), "patch".into())),
            "{ns}: {here:?}"
        );
    }
    let cluster_roles = of_kind(&renders[1].1, "ClusterRole");
    assert_eq!(cluster_roles.len(), 1);
    assert_eq!(
        cluster_roles[0]["metadata"]["name"],
        format!("{fullname}-crds")
    );

    // The kustomize base grants what the chart's default grants.
    let chart = grants(&renders[0].1);
    let base = grants(&renders[2].1);
    assert_eq!(
        chart, base,
        "config/default/rbac.yaml and the chart's RBAC (scope cluster) must agree"
    );
}

fn assert_restricted_operator(what: &str, deployment: &Value) {
    assert_eq!(deployment["spec"]["replicas"], 2, "{what}: two replicas");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{what}");
    assert_eq!(pod["securityContext"]["runAsUser"], 65532, "{what}");
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
        "{what}"
    );
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "{what}");
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true, "{what}");
    assert_eq!(sc["runAsUser"], 65532, "{what}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{what}");
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{what}");
    assert_eq!(
        c["args"],
        json!(["run", "--config", "/etc/vaultsync/config.yaml"]),
        "{what}"
    );
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                c["resources"][kind][resource].is_string(),
                "{what}: resources.{kind}.{resource}"
            );
        }
    }
    assert_eq!(c["ports"][0]["containerPort"], 8080, "{what}");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{what}: {probe}");
        assert!(
            c[probe]["httpGet"]["port"] == 8080 || c[probe]["httpGet"]["port"] == "metrics",
            "{what}: {probe} on port 8080"
        );
    }
    let env: BTreeMap<String, Value> = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or_default().to_string(),
                e.clone(),
            )
        })
        .collect();
    assert_eq!(
        env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace",
        "{what}"
    );
    assert_eq!(
        env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name",
        "{what}"
    );
    let mounts = c["volumeMounts"].as_array().expect("mounts");
    assert!(
        mounts
            .iter()
            .any(|m| m["mountPath"] == "/etc/vaultsync" && m["readOnly"] == true),
        "{what}: the config is mounted read-only at /etc/vaultsync"
    );
}

#[test]
fn pods_are_restricted_and_the_config_is_valid() {
    let chart = helm_template("t", "ops", &["--set", "watchNamespaces={team-a}"]);
    assert_restricted_operator("chart", one(&chart, "Deployment"));
    let config = operator_config(&chart);
    assert_eq!(config.operator_namespace, "ops", "the release namespace");
    assert_eq!(config.metrics_address.to_string(), "0.0.0.0:8080");
    assert_eq!(config.watch_namespaces, ["team-a"]);
    assert!(config.leader_election.enabled, "on with two replicas");
    assert_eq!(config.leader_election.lease_name, "vaultsync-leader");

    // One replica: no leader election, no Lease permissions, no PodDisruptionBudget.
    let single = helm_template(
        "t",
        "ops",
        &[
            "--set",
            "replicaCount=1",
            "--set",
            "vault.default.address=https://vault.example.com:8200",
            "--set",
            "vault.default.kvVersions.secret=2",
            "--set",
            "vault.default.defaultAuth.kubernetes.role=tenant-x",
        ],
    );
    let config = operator_config(&single);
    assert!(!config.leader_election.enabled);
    assert_eq!(
        config.vault["default"].address,
        "https://vault.example.com:8200"
    );
    assert_eq!(config.vault["default"].kv_versions["secret"], 2);
    assert!(
        !grants(&single).iter().any(|g| g.resource == "leases"),
        "no Lease permissions without leader election"
    );
    assert!(of_kind(&single, "PodDisruptionBudget").is_empty());

    // The metrics Service, and the ServiceMonitor on request.
    let service = of_kind(&chart, "Service")
        .into_iter()
        .find(|s| s["metadata"]["name"] == "t-vaultsync-metrics")
        .expect("the metrics Service");
    assert_eq!(service["spec"]["ports"][0]["port"], 8080);

    // The admission webhook: on, failing closed, served by the pods over TLS.
    let webhook = one(&chart, "ValidatingWebhookConfiguration");
    assert_eq!(webhook["webhooks"][0]["failurePolicy"], "Fail");
    assert_eq!(
        webhook["webhooks"][0]["clientConfig"]["service"]["name"],
        "t-vaultsync-webhook"
    );
    assert!(config.admission.enabled, "the webhook is on in the chart");
    let base_config = operator_config(&kustomize());
    assert!(base_config.admission.enabled, "and in the kustomize base");
    assert_eq!(
        one(&kustomize(), "ValidatingWebhookConfiguration")["webhooks"][0]["failurePolicy"],
        "Fail"
    );
    assert!(of_kind(&chart, "ServiceMonitor").is_empty());
    let monitored = helm_template(
        "t",
        "ops",
        &["--set", "metrics.serviceMonitor.enabled=true"],
    );
    let monitor = one(&monitored, "ServiceMonitor");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");

    let base = kustomize();
    assert_restricted_operator("config/default", one(&base, "Deployment"));
    let config = operator_config(&base);
    assert!(config.leader_election.enabled);
    assert_eq!(
        one(&base, "Namespace")["metadata"]["name"],
        "vaultsync-system"
    );
}

#[test]
fn the_crds_shipped_are_the_generated_ones() {
    let generated = generated_crds();
    // The chart's crds/ (a symlink to crds/) as Helm reads it, unpacked and packaged.
    let chart_dir = Path::new(CHART).join("crds");
    for (name, bytes) in &generated {
        let shipped = std::fs::read(chart_dir.join(name))
            .unwrap_or_else(|e| panic!("charts/vaultsync/crds/{name}: {e}"));
        assert!(
            &shipped == bytes,
            "charts/vaultsync/crds/{name} differs from crds/{name}"
        );
    }
    let concatenated: String = generated
        .values()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    let shown = run(helm().args(["show", "crds", CHART]), None);
    assert_eq!(shown.trim_end(), concatenated.trim_end(), "helm show crds");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(common::unique("helm-package"));
    std::fs::create_dir_all(&out).expect("package dir");
    run(
        helm().args(["package", CHART, "--destination"]).arg(&out),
        None,
    );
    let package = std::fs::read_dir(&out)
        .expect("package dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "tgz"))
        .expect("helm package wrote a .tgz");
    let packaged = run(helm().args(["show", "crds"]).arg(&package), None);
    assert_eq!(
        packaged.trim_end(),
        concatenated.trim_end(),
        "the packaged chart carries the generated CRDs"
    );
    let _ = std::fs::remove_dir_all(&out);

    // The kustomize base's copy: kustomize loads no file outside its directory.
    let copy = std::fs::read(Path::new(KUSTOMIZE_BASE).join("crd/vaultsync.dev.yaml"))
        .expect("config/default/crd/vaultsync.dev.yaml exists: run `make crds`");
    assert!(
        copy == generated["vaultsync.dev.yaml"],
        "config/default/crd/vaultsync.dev.yaml differs from crds/vaultsync.dev.yaml: run `make crds`"
    );
    // And both renderings carry them.
    let names = |objects: &[Value]| -> BTreeSet<String> {
        of_kind(objects, "CustomResourceDefinition")
            .iter()
            .map(|c| {
                c["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    };
    let expected: BTreeSet<String> = [
        "vaultsecrets.vaultsync.dev",
        "azurekeyvaultsecrets.vaultsync.dev",
    ]
    .map(String::from)
    .into();
    assert_eq!(names(&helm_template("t", "ops", &[])), expected);
    assert_eq!(names(&kustomize()), expected);
}

// ---------------------------------------------------------------------------------------
// Against the apiserver

/// Deletes what a test created outside its namespaces' lifetime, even when it panics.
struct Cleanup {
    release: String,
    namespaces: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let selector = format!("app.kubernetes.io/instance={}", self.release);
        let _ = kubectl()
            .args(["delete", "clusterrole,clusterrolebinding", "-l", &selector])
            .args(["--ignore-not-found", "--wait=false"])
            .output();
        let _ = kubectl()
            .args([
                "delete",
                "validatingadmissionpolicy,validatingadmissionpolicybinding",
            ])
            .args(["-l", &selector])
            .args(["--ignore-not-found", "--wait=false"])
            .output();
        for ns in &self.namespaces {
            // After a failure the operator is gone (it is dropped first), so finalizers it
            // added would hold the namespace in Terminating: take them off.
            let listed = kubectl()
                .args(["get", "vaultsecrets", "-n", ns, "-o", "name"])
                .output();
            for resource in listed
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
                .lines()
            {
                let _ = kubectl()
                    .args(["patch", resource, "-n", ns, "--type=merge"])
                    .args(["-p", r#"{"metadata":{"finalizers":null}}"#])
                    .output();
            }
            let _ = kubectl()
                .args(["delete", "namespace", ns])
                .args(["--ignore-not-found", "--wait=false"])
                .output();
        }
    }
}

async fn namespace_with_restricted_pods(
    client: &kube::Client,
    prefix: &str,
) -> common::NamespaceGuard {
    let ns = common::create_namespace(client, prefix).await;
    run(
        kubectl().args(["label", "namespace", &ns]).args([
            "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/enforce-version=latest",
        ]),
        None,
    );
    ns
}

/// A Pod from the Deployment's template, for Pod Security admission (which judges Pods,
/// not Deployments).
fn pod_of(deployment: &Value, namespace: &str) -> String {
    let mut spec = deployment["spec"]["template"]["spec"].clone();
    // The dry run runs every admission check, including that the ServiceAccount exists;
    // the namespace's own `default` account stands in for the chart's.
    spec["serviceAccountName"] = json!("default");
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "pod-security-check", "namespace": namespace},
        "spec": spec,
    });
    serde_json::to_string(&pod).expect("pod json")
}

#[tokio::test]
async fn the_manifests_pass_a_server_dry_run() {
    let client = common::client().await;
    common::install_crds(&client).await;
    let ns = namespace_with_restricted_pods(&client, "deploy-dry").await;
    let _cleanup = Cleanup {
        release: "dry".into(),
        namespaces: vec![ns.clone()],
    };
    for args in [
        vec![],
        vec![
            "--set".to_string(),
            "rbac.scope=namespaces".to_string(),
            "--set".to_string(),
            format!("watchNamespaces={{{ns}}}"),
        ],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let text = helm_template_text("dry", &ns, &args);
        let out = run(
            kubectl().args(["apply", "--dry-run=server", "-f", "-"]),
            Some(&text),
        );
        assert!(
            out.contains("deployment.apps/dry-vaultsync created (server dry run)"),
            "{out}"
        );
        // Pod Security admission in a namespace that enforces "restricted".
        let deployment = one(&documents(&text), "Deployment").clone();
        run(
            kubectl().args(["apply", "--dry-run=server", "-f", "-"]),
            Some(&pod_of(&deployment, &ns)),
        );
    }
    // The admission check is real: one relaxed field and the Pod is refused.
    let mut relaxed = one(&helm_template("dry", &ns, &[]), "Deployment").clone();
    let container = &mut relaxed["spec"]["template"]["spec"]["containers"][0];
    container["securityContext"]["allowPrivilegeEscalation"] = json!(true);
    let refused = kubectl()
        .args(["apply", "--dry-run=server", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(pod_of(&relaxed, &ns).as_bytes())?;
            child.wait_with_output()
        })
        .expect("kubectl runs");
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("PodSecurity \"restricted"),
        "Pod Security admission enforces restricted in the test namespace: {}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // The kustomize base, as `kubectl apply -k config/default` sends it. Its namespace
    // exists in the local environment (make env-up creates it), as in a cluster where
    // the base was applied before; a dry run cannot create it for the objects in it.
    // cert-manager's Issuer and Certificate (the webhook's certificate) are left out: its
    // CRDs cannot be installed here, so they are checked by shape only.
    let base = kustomize();
    let (cert_manager, rest): (Vec<&Value>, Vec<&Value>) = base.iter().partition(|o| {
        o["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("cert-manager.io/"))
    });
    let kinds: Vec<&str> = cert_manager
        .iter()
        .filter_map(|o| o["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        ["Certificate", "Issuer"],
        "the webhook's certificate"
    );
    let rest = rest
        .iter()
        .map(|o| serde_json::to_string(o).expect("json"))
        .collect::<Vec<_>>()
        .join("\n---\n");
    let out = run(
        kubectl().args(["apply", "--dry-run=server", "-f", "-"]),
        Some(&rest),
    );
    assert!(out.contains("deployment.apps/vaultsync"), "{out}");
    run(
        kubectl().args(["apply", "--dry-run=server", "-f", "-"]),
        Some(&pod_of(one(&base, "Deployment"), &ns)),
    );
    common::delete_namespace(&client, &ns).await;
}

/// Applies the chart's ServiceAccount, RBAC objects and guardrails (ValidatingAdmissionPolicies
/// bound to that ServiceAccount; nothing else) as the admin, so the operator runs inside
/// the guardrails too.
async fn apply_rbac(client: &kube::Client, objects: &[Value]) {
    apply_objects(client, &identity_objects(objects), "vaultsync-deploy-test").await;
}

/// A kubeconfig for a one-hour token of the chart's ServiceAccount: the operator's
/// identity in a cluster, with exactly the chart's permissions.
async fn service_account_kubeconfig(client: &kube::Client, ns: &str, sa: &str) -> PathBuf {
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"expirationSeconds": 3600}})).expect("request");
    let issued: TokenRequest = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_subresource("token", sa, &PostParams::default(), &request)
        .await
        .expect("a token for the chart's ServiceAccount");
    let token = issued
        .status
        .and_then(|s| s.token)
        .expect("the apiserver issued a token");
    let server = common::env("K8S_API_URL", "Kubernetes control plane");
    let ca = common::env("K8S_CA_FILE", "Kubernetes control plane");
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": sa, "context": {"cluster": "local", "user": sa, "namespace": ns}}],
        "current-context": sa,
    });
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("deploy")
        .join(ns);
    std::fs::create_dir_all(&dir).expect("kubeconfig dir");
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig).expect("yaml")).expect("write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .expect("kubeconfig mode");
    }
    path
}

async fn client_from(kubeconfig: &Path) -> kube::Client {
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig"),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("kube config from the token kubeconfig");
    kube::Client::try_from(config).expect("client")
}

/// Whether the client's identity may do `verb` (SelfSubjectAccessReview).
async fn can(
    client: &kube::Client,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> bool {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (resource, None),
    };
    let review: SelfSubjectAccessReview = serde_json::from_value(json!({
        "spec": {"resourceAttributes": {
            "verb": verb, "group": group, "resource": resource, "subresource": subresource,
            "namespace": namespace, "name": name,
        }}
    }))
    .expect("review");
    Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SelfSubjectAccessReview")
        .status
        .is_some_and(|s| s.allowed)
}

async fn wait_event(client: &kube::Client, ns: &str, reason: &str) {
    common::wait_until(
        Duration::from_secs(30),
        &format!("an Event {reason}"),
        || async move {
            e2e::events(client, ns)
                .await
                .iter()
                .any(|e| e.starts_with(&format!("{reason}:")))
                .then_some(())
        },
    )
    .await;
}

/// Installs the chart's RBAC for a release in a fresh namespace, runs the operator out of
/// cluster under the chart's ServiceAccount's token, and walks the core VaultSecret
/// scenarios: sync, rotation with a restart, drift repair, dynamic database credentials
/// revoked through the finalizer, expiry after access is revoked, and the Events.
async fn operator_runs_with_the_chart_rbac(scope: &str) {
    let admin = common::client().await;
    common::install_crds(&admin).await;
    let ns = common::create_namespace(&admin, &format!("deploy-rbac-{scope}")).await;
    let release = common::unique("rbac");
    let _cleanup = Cleanup {
        release: release.clone(),
        namespaces: vec![ns.clone()],
    };
    // The release namespace is the tenant's too: the e2e harness makes the watched
    // namespace the operator's namespace (HMAC key Secret, Lease).
    let watch = format!("watchNamespaces={{{ns}}}");
    let rendered = helm_template(
        &release,
        &ns,
        &["--set", &format!("rbac.scope={scope}"), "--set", &watch],
    );
    apply_rbac(&admin, &rendered).await;
    let sa = one(&rendered, "ServiceAccount")["metadata"]["name"]
        .as_str()
        .expect("sa name")
        .to_string();
    let kubeconfig = service_account_kubeconfig(&admin, &ns, &sa).await;
    let operator_client = client_from(&kubeconfig).await;
    assert!(
        !can(&operator_client, "list", "", "namespaces", None, None).await
            && !can(&operator_client, "list", "", "configmaps", Some(&ns), None).await,
        "the token carries only the chart's permissions"
    );
    // The chart's guardrails are in effect before the operator starts: a (dry-run) create
    // of a Secret not labelled managed-by vaultsync is refused.
    let probe: Secret =
        serde_json::from_value(json!({"metadata": {"name": "guardrail-probe"}})).expect("secret");
    common::wait_until(
        Duration::from_secs(30),
        "the chart's guardrails to refuse the operator an unlabelled Secret",
        || {
            let secrets: Api<Secret> = Api::namespaced(operator_client.clone(), &ns);
            let probe = probe.clone();
            async move {
                let pp = PostParams {
                    dry_run: true,
                    ..PostParams::default()
                };
                match secrets.create(&pp, &probe).await {
                    Err(kube::Error::Api(s)) if s.message.contains("vaultsync guardrail:") => {
                        Some(())
                    }
                    _ => None,
                }
            }
        },
    )
    .await;

    let role = tenant(&admin, &ns, "app", &format!("{ns}/")).await;
    e2e::dynamic_policy(&role, &ns).await;
    e2e::database_role(&ns, 3600, 7200).await;
    let root = root_vault();
    let (first, second) = (canary("first"), canary("second"));
    let path = format!("{ns}/app");
    vaultrs::kv2::set(&root, "secret", &path, &json!({"password": first}))
        .await
        .expect("seed");
    let deployments = e2e::deployment(&admin, &ns).await;

    // The chart's default Lease name, so the Lease permissions are the ones exercised.
    let op = Operator::start_with_kubeconfig(
        &ns,
        "leaderElection: {enabled: true, leaseName: vaultsync-leader, leaseDuration: 15s}\n",
        Some(&kubeconfig),
    )
    .await;
    println!("operator log: {}", op.log.display());
    let source = format!("kv: {{mount: secret, path: {path}}}");
    apply(
        &admin,
        &ns,
        &e2e::vault_secret(
            "app",
            &role,
            &source,
            "  refreshInterval: 1s\n  ttl: 6s\n  rolloutRestartTargets: [{kind: Deployment, name: api}]\n",
        ),
    )
    .await;
    // A long refresh interval: its repairs can only come from the Secret watch.
    apply(
        &admin,
        &ns,
        &e2e::vault_secret(
            "steady",
            &role,
            &source,
            "  refreshInterval: 30m\n  ttl: 2h\n",
        ),
    )
    .await;

    // Sync: the copies, the status, the HMAC key in the operator's namespace.
    let is_first = |s: &Secret| value(s, "password").as_deref() == Some(first.as_str());
    wait_secret(&admin, &ns, "app", "the first copy", is_first).await;
    wait_secret(&admin, &ns, "steady", "the steady copy", is_first).await;
    wait_ready(&admin, &ns, "VaultSecret", "app", "True", "Synced").await;
    wait_ready(&admin, &ns, "VaultSecret", "steady", "True", "Synced").await;
    assert!(
        secret(&admin, &ns, "vaultsync-hmac-key").await.is_some(),
        "the operator created its HMAC key Secret in its namespace"
    );
    // A first sync publishes no Event; the rotation below does, under the chart's RBAC.

    // Rotation: the new value, a restart of the Deployment, and their Events.
    vaultrs::kv2::set(&root, "secret", &path, &json!({"password": second}))
        .await
        .expect("rotate");
    wait_secret(&admin, &ns, "app", "the rotated copy", |s| {
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
    wait_event(&admin, &ns, "SecretRotated").await;
    wait_event(&admin, &ns, "WorkloadRestarted").await;

    // Drift: an edit and a deletion of the steady copy are put back from the watch.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    let is_current = |s: &Secret| {
        value(s, "password").as_deref() == Some(second.as_str()) && value(s, "added").is_none()
    };
    // The steady copy holds the first value until its next sync; the repair brings it to
    // whatever the source holds now.
    secrets
        .patch(
            "steady",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"password": "tampered", "added": "x"}})),
        )
        .await
        .expect("edit the copy");
    wait_secret(
        &admin,
        &ns,
        "steady",
        "the edited copy to be repaired",
        is_current,
    )
    .await;
    secrets
        .delete("steady", &DeleteParams::default())
        .await
        .expect("delete the copy");
    wait_secret(
        &admin,
        &ns,
        "steady",
        "the deleted copy to be restored",
        is_current,
    )
    .await;

    // Dynamic credentials: the finalizer (a patch of the resource), the lease read back
    // from /status, and revocation when the resource is deleted.
    apply(
        &admin,
        &ns,
        &format!(
            "apiVersion: vaultsync.dev/v1alpha1\nkind: VaultSecret\nmetadata: {{name: db}}\nspec:\n  vault:\n    auth: {{kubernetes: {{role: {role}, serviceAccountName: app}}}}\n    database: {{mount: database, role: {ns}}}\n"
        ),
    )
    .await;
    let db = wait_secret(&admin, &ns, "db", "database credentials", |s| {
        value(s, "username").is_some()
    })
    .await;
    let (user, password) = (
        value(&db, "username").unwrap_or_default(),
        value(&db, "password").unwrap_or_default(),
    );
    e2e::pg_login(&user, &password).expect("the synced credentials log in to PostgreSQL");
    let status = wait_ready(&admin, &ns, "VaultSecret", "db", "True", "Synced").await;
    assert!(status["lease"]["id"].is_string(), "{status}");
    let resources: Api<DynamicObject> = Api::namespaced_with(
        admin.clone(),
        &ns,
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "vaultsync.dev",
            "v1alpha1",
            "VaultSecret",
        )),
    );
    let with_finalizer = resources.get("db").await.expect("get db");
    assert!(
        with_finalizer
            .metadata
            .finalizers
            .is_some_and(|f| !f.is_empty()),
        "the operator added its finalizer"
    );
    resources
        .delete("db", &DeleteParams::default())
        .await
        .expect("delete db");
    common::wait_until(
        Duration::from_secs(30),
        "the database resource to be gone after revocation",
        || {
            let resources = resources.clone();
            async move { matches!(resources.get_opt("db").await, Ok(None)).then_some(()) }
        },
    )
    .await;
    assert!(
        e2e::pg_login(&user, &password).is_err(),
        "the revoked user can no longer log in"
    );

    // Expiry: with access revoked the copy stays until its ttl, then is collected.
    vaultrs::sys::policy::set(
        &root,
        &role,
        "path \"secret/data/nothing\" { capabilities = [\"read\"] }",
    )
    .await
    .expect("revoke");
    wait_ready(&admin, &ns, "VaultSecret", "app", "False", "AuthFailed").await;
    common::wait_until(
        Duration::from_secs(20),
        "the expired copy to be collected",
        || {
            let admin = admin.clone();
            let ns = ns.clone();
            async move { secret(&admin, &ns, "app").await.is_none().then_some(()) }
        },
    )
    .await;
    wait_event(&admin, &ns, "SyncFailed").await;
    wait_event(&admin, &ns, "SecretExpired").await;

    // Nothing the operator tried was refused.
    let logs = op.logs();
    for refused in ["forbidden", "Forbidden", "could not publish event"] {
        assert!(
            !logs.contains(refused),
            "the operator was refused something under the chart's RBAC ({refused}); log: {}",
            op.log.display()
        );
    }
    assert_no_leak(&admin, &ns, &op, &[&first, &second, &password]).await;
    drop(op);
    common::delete_namespace(&admin, &ns).await;
}

#[tokio::test]
async fn the_operator_runs_with_the_chart_rbac_scope_cluster() {
    operator_runs_with_the_chart_rbac("cluster").await;
}

#[tokio::test]
async fn the_operator_runs_with_the_chart_rbac_scope_namespaces() {
    operator_runs_with_the_chart_rbac("namespaces").await;
}

/// With rbac.scope=namespaces and the release in its own namespace, the operator's token
/// may do its work in the listed namespace and in its own (HMAC key, Lease), and nothing
/// anywhere else.
#[tokio::test]
async fn namespaced_scope_grants_nothing_outside_the_listed_namespaces() {
    let admin = common::client().await;
    common::install_crds(&admin).await;
    let operator_ns = common::create_namespace(&admin, "deploy-op").await;
    let tenant_ns = common::create_namespace(&admin, "deploy-tenant").await;
    let other_ns = common::create_namespace(&admin, "deploy-other").await;
    let release = common::unique("scope");
    let _cleanup = Cleanup {
        release: release.clone(),
        namespaces: vec![operator_ns.clone(), tenant_ns.clone(), other_ns.clone()],
    };
    let rendered = helm_template(
        &release,
        &operator_ns,
        &[
            "--set",
            "rbac.scope=namespaces",
            "--set",
            &format!("watchNamespaces={{{tenant_ns}}}"),
        ],
    );
    apply_rbac(&admin, &rendered).await;
    let sa = one(&rendered, "ServiceAccount")["metadata"]["name"]
        .as_str()
        .expect("sa")
        .to_string();
    let client = client_from(&service_account_kubeconfig(&admin, &operator_ns, &sa).await).await;
    let (t, op, other) = (
        Some(tenant_ns.as_str()),
        Some(operator_ns.as_str()),
        Some(other_ns.as_str()),
    );
    let vs = "vaultsync.dev";
    let crd = "apiextensions.k8s.io";
    let lease = "coordination.k8s.io";
    let allowed = [
        ("list", vs, "vaultsecrets", t, None),
        ("watch", vs, "vaultsecrets", t, None),
        ("patch", vs, "vaultsecrets", t, Some("x")),
        ("patch", vs, "vaultsecrets/status", t, Some("x")),
        ("get", vs, "vaultsecrets/status", t, Some("x")),
        ("watch", "", "secrets", t, None),
        ("get", "", "secrets", t, Some("x")),
        ("create", "", "secrets", t, None),
        ("patch", "", "secrets", t, Some("x")),
        ("delete", "", "secrets", t, Some("x")),
        ("create", "", "serviceaccounts/token", t, Some("app")),
        ("create", "events.k8s.io", "events", t, None),
        ("patch", "apps", "deployments", t, Some("api")),
        ("patch", "apps", "statefulsets", t, Some("db")),
        ("patch", "apps", "daemonsets", t, Some("agent")),
        (
            "get",
            crd,
            "customresourcedefinitions",
            None,
            Some("vaultsecrets.vaultsync.dev"),
        ),
        ("create", "", "secrets", op, None),
        ("get", "", "secrets", op, Some("vaultsync-hmac-key")),
        ("create", lease, "leases", op, None),
        ("get", lease, "leases", op, Some("vaultsync-leader")),
        ("patch", lease, "leases", op, Some("vaultsync-leader")),
        ("watch", lease, "leases", op, Some("vaultsync-leader")),
    ];
    let denied = [
        ("update", vs, "vaultsecrets", t, Some("x")),
        ("delete", vs, "vaultsecrets", t, Some("x")),
        ("list", "", "secrets", op, None),
        ("get", "", "secrets", op, Some("someone-elses")),
        ("delete", "", "secrets", op, Some("vaultsync-hmac-key")),
        ("list", "", "secrets", other, None),
        ("get", "", "secrets", other, Some("x")),
        ("create", "", "serviceaccounts/token", other, Some("app")),
        ("get", "", "secrets", Some("kube-system"), Some("x")),
        ("list", "", "secrets", None, None),
        ("list", vs, "vaultsecrets", other, None),
        ("create", "events.k8s.io", "events", other, None),
        ("patch", "apps", "deployments", other, Some("api")),
        ("create", "apps", "deployments", t, None),
        ("list", "", "configmaps", t, None),
        ("list", "", "pods", t, None),
        ("list", crd, "customresourcedefinitions", None, None),
        (
            "get",
            crd,
            "customresourcedefinitions",
            None,
            Some("other.example.com"),
        ),
        ("patch", lease, "leases", op, Some("someone-elses")),
        ("update", lease, "leases", op, Some("vaultsync-leader")),
        ("list", lease, "leases", op, None),
        ("watch", lease, "leases", op, Some("someone-elses")),
        ("patch", "events.k8s.io", "events", t, Some("x")),
        ("patch", vs, "azurekeyvaultsecrets", t, Some("x")),
        ("get", lease, "leases", t, Some("vaultsync-leader")),
        (
            "create",
            "rbac.authorization.k8s.io",
            "rolebindings",
            t,
            None,
        ),
        ("list", "", "namespaces", None, None),
    ];
    for (verb, group, resource, namespace, name) in allowed {
        assert!(
            can(&client, verb, group, resource, namespace, name).await,
            "the chart grants {verb} {group}/{resource} in {namespace:?} ({name:?})"
        );
    }
    for (verb, group, resource, namespace, name) in denied {
        assert!(
            !can(&client, verb, group, resource, namespace, name).await,
            "the chart must not grant {verb} {group}/{resource} in {namespace:?} ({name:?})"
        );
    }
    for ns in [&operator_ns, &tenant_ns, &other_ns] {
        common::delete_namespace(&admin, ns).await;
    }
}
