//! Guardrails on the operator's own rights: the ValidatingAdmissionPolicies of the Helm
//! chart (`templates/guardrails.yaml`) and the kustomize base (`config/default/guardrails.yaml`),
//! checked against the real local apiserver.
//!
//! - The base and the chart's default ship the same policies, failing closed, denying,
//!   matching only the operator's ServiceAccount.
//! - Under the operator's identity (impersonated, with the chart's RBAC), every request
//!   outside the fence is refused with the policy's message, and the operator's own
//!   requests (a 600 s token for audience vault, a restart annotation, writes of managed
//!   Secrets, the HMAC key) pass.
//!
//! Each test renders the chart for a release named after its own namespace, so the
//! policies name a ServiceAccount of this test only and leave other tests alone. The
//! cluster-scoped objects are deleted by a guard, on failure too.

mod common;
mod manifests;

use manifests::*;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject};
use serde_json::{Value, json};

const POLICY: &str = "ValidatingAdmissionPolicy";
const BINDING: &str = "ValidatingAdmissionPolicyBinding";
/// Every refusal of the guardrails starts so.
const GUARDRAIL: &str = "vaultsync guardrail:";

fn name_of(object: &Value) -> String {
    object["metadata"]["name"]
        .as_str()
        .expect("metadata.name")
        .to_string()
}

/// The guardrail policies and bindings, by kind and name, as their specs.
fn guardrails(objects: &[Value]) -> BTreeMap<(String, String), Value> {
    objects
        .iter()
        .filter(|o| o["kind"] == POLICY || o["kind"] == BINDING)
        .map(|o| {
            (
                (o["kind"].as_str().expect("kind").to_string(), name_of(o)),
                o["spec"].clone(),
            )
        })
        .collect()
}

/// Checks the shape every guardrail shares: four policies, each failing closed, matching
/// only `user`, refusing as Forbidden with a guardrail message; four bindings that deny.
fn assert_guardrail_shape(what: &str, objects: &[Value], user: &str) {
    let policies = of_kind(objects, POLICY);
    let bindings = of_kind(objects, BINDING);
    assert_eq!(
        policies.len(),
        4,
        "{what}: tokens, workloads, secrets and configmaps"
    );
    assert_eq!(bindings.len(), 4, "{what}: one binding per policy");
    for policy in &policies {
        let name = name_of(policy);
        let spec = &policy["spec"];
        assert_eq!(spec["failurePolicy"], "Fail", "{what}: {name}");
        assert_eq!(
            spec["matchConditions"],
            json!([{"name": "the-operator",
                    "expression": format!("request.userInfo.username == '{user}'")}]),
            "{what}: {name} matches the operator's ServiceAccount only"
        );
        let validations = spec["validations"].as_array().expect("validations");
        assert!(!validations.is_empty(), "{what}: {name}");
        for v in validations {
            assert_eq!(v["reason"], "Forbidden", "{what}: {name}: {v}");
            assert!(
                v["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(GUARDRAIL) && !m.contains('\n')),
                "{what}: {name}: a one-line message a person understands: {v}"
            );
        }
        assert!(
            bindings
                .iter()
                .any(|b| b["spec"] == json!({"policyName": name, "validationActions": ["Deny"]})),
            "{what}: {name} is bound, validationActions [Deny]"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Static checks

#[test]
fn the_chart_and_the_base_ship_the_same_guardrails() {
    let chart = helm_template("vaultsync", "vaultsync-system", &[]);
    let base = kustomize();
    let user = "system:serviceaccount:vaultsync-system:vaultsync";
    assert_guardrail_shape("chart", &chart, user);
    assert_guardrail_shape("config/default", &base, user);
    assert_eq!(
        guardrails(&chart),
        guardrails(&base),
        "config/default/guardrails.yaml and the chart's templates/guardrails.yaml \
         (release vaultsync in vaultsync-system) must agree"
    );

    // The values reach the expressions: audiences, extra forbidden namespaces, the
    // release namespace of the HMAC key, the ServiceAccount's name.
    let custom = helm_template(
        "r",
        "ops",
        &[
            "--set-json",
            r#"guardrails.tokenAudiences=["https://vault.example.com"]"#,
            "--set",
            "guardrails.forbiddenNamespaces={prod-db}",
            "--set",
            "serviceAccount.name=syncer",
        ],
    );
    assert_guardrail_shape("custom", &custom, "system:serviceaccount:ops:syncer");
    let text = serde_json::to_string(&guardrails(&custom).into_values().collect::<Vec<_>>())
        .expect("json");
    for needle in [
        r#"[\"https://vault.example.com\"]"#,
        r#"[\"kube-system\",\"kube-public\",\"kube-node-lease\",\"prod-db\"]"#,
        "request.namespace == 'ops'",
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    assert!(!text.contains("AzureADTokenExchange"), "{text}");

    // Off on request; and the schema refuses an empty audience list or an unknown key.
    let off = helm_template("r", "ops", &["--set", "guardrails.enabled=false"]);
    assert!(guardrails(&off).is_empty(), "guardrails.enabled=false");
    for (args, message) in [
        (
            ["--set-json", "guardrails.tokenAudiences=[]"],
            "tokenAudiences",
        ),
        (
            ["--set", "guardrails.forbiddenNamespaces={Not_A_Name}"],
            "forbiddenNamespaces",
        ),
        (["--set", "guardrails.maxSeconds=3600"], "maxSeconds"),
    ] {
        let out = Command::new(tool("helm"))
            .args(["template", "r", CHART])
            .args(args)
            .output()
            .expect("helm runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(message),
            "{args:?} is refused naming {message}: {stderr}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Against the apiserver

/// Deletes the cluster-scoped objects a test applied (policies, bindings, ClusterRoles),
/// on every path, a failing test's panic included.
struct ClusterObjects {
    objects: Vec<(ApiResource, String)>,
}

impl Drop for ClusterObjects {
    fn drop(&mut self) {
        let objects = std::mem::take(&mut self.objects);
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Runtime::new() else {
                return;
            };
            runtime.block_on(async move {
                let Ok(config) = kube::Config::infer().await else {
                    return;
                };
                let Ok(client) = kube::Client::try_from(config) else {
                    return;
                };
                for (ar, name) in objects {
                    let _ = Api::<DynamicObject>::all_with(client.clone(), &ar)
                        .delete(&name, &DeleteParams::default())
                        .await;
                }
            });
        })
        .join();
    }
}

/// Applies the chart's ServiceAccount, RBAC and guardrails as the admin; the guard
/// deletes the cluster-scoped ones. Nothing else of the chart is applied.
async fn apply_guardrails(admin: &kube::Client, objects: &[Value]) -> ClusterObjects {
    let wanted = identity_objects(objects);
    let guard = ClusterObjects {
        objects: wanted
            .iter()
            .filter(|o| o["metadata"]["namespace"].is_null())
            .map(|o| (api_resource(o), name_of(o)))
            .collect(),
    };
    apply_objects(admin, &wanted, "vaultsync-guardrails-test").await;
    guard
}

/// A client that acts as the operator's ServiceAccount (impersonation by the admin).
async fn as_service_account(namespace: &str, name: &str) -> kube::Client {
    let mut config = kube::Config::infer().await.expect("KUBECONFIG");
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{namespace}:{name}"));
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{namespace}"),
        "system:authenticated".into(),
    ]);
    kube::Client::try_from(config).expect("impersonating client")
}

/// The outcome of a request: Ok, or the apiserver's (code, message).
type Outcome = Result<(), (u16, String)>;

/// An update (PUT, the verb the operator has on ConfigMaps) of ConfigMap `name` as
/// `change` makes it.
async fn update_config_map(
    api: &Api<ConfigMap>,
    name: &str,
    change: impl FnOnce(&mut ConfigMap),
) -> Outcome {
    let mut cm = api.get(name).await.expect("get ConfigMap");
    change(&mut cm);
    outcome(api.replace(name, &PostParams::default(), &cm).await)
}

fn outcome<T>(result: Result<T, kube::Error>) -> Outcome {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) => Err((s.code, s.message.to_string())),
        Err(e) => Err((0, e.to_string())),
    }
}

#[track_caller]
fn assert_refused(what: &str, got: Outcome, message: &str) {
    match got {
        Err((403, m)) if m.contains(GUARDRAIL) && m.contains(message) => {}
        other => panic!(
            "{what}: expected a refusal (403) by the guardrail with {message:?}, got {other:?}"
        ),
    }
}

#[track_caller]
fn assert_allowed(what: &str, got: Outcome) {
    if let Err(e) = got {
        panic!("{what}: expected it allowed, got {e:?}");
    }
}

/// Retries `attempt` until the guardrail refuses it: a policy takes a moment to be in
/// effect after it is created. Attempts that pass meanwhile must be harmless.
async fn wait_in_effect<F, Fut>(what: &str, mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Outcome>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let last = attempt().await;
        if matches!(&last, Err((403, m)) if m.contains(GUARDRAIL)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the {what} guardrail is not in effect 30 s after it was created \
             (ValidatingAdmissionPolicy enabled in the apiserver?); last outcome: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn token(
    client: &kube::Client,
    namespace: &str,
    sa: &str,
    audiences: Option<&[&str]>,
    seconds: Option<i64>,
) -> Outcome {
    // Sent as JSON so that an absent field stays absent (the typed spec always has
    // audiences).
    let mut spec = json!({});
    if let Some(audiences) = audiences {
        spec["audiences"] = json!(audiences);
    }
    if let Some(seconds) = seconds {
        spec["expirationSeconds"] = json!(seconds);
    }
    let request =
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
    let issued = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_subresource::<_, TokenRequest>("token", sa, &PostParams::default(), &request)
        .await;
    if let Ok(issued) = &issued {
        assert!(
            issued
                .status
                .as_ref()
                .and_then(|s| s.token.as_ref())
                .is_some_and(|t| !t.is_empty()),
            "an allowed TokenRequest returns a token"
        );
    }
    outcome(issued)
}

async fn merge<K>(api: &Api<K>, name: &str, patch: Value) -> Outcome
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    outcome(
        api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await,
    )
}

async fn create_as<K>(api: &Api<K>, object: Value) -> Outcome
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object: K = serde_json::from_value(object).expect("object");
    outcome(api.create(&PostParams::default(), &object).await)
}

fn secret(name: &str, managed: bool) -> Value {
    let labels = if managed {
        json!({"app.kubernetes.io/managed-by": "vaultsync"})
    } else {
        json!({"team": "a"})
    };
    json!({"metadata": {"name": name, "labels": labels}, "stringData": {"k": "v"}})
}

fn workload(kind: &str, name: &str) -> Value {
    json!({
        "metadata": {"name": name, "labels": {"app": name}, "annotations": {"owner": "team-a"}},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": {"team": "a"}},
                "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]},
            },
        },
        "kind": kind,
    })
}

#[tokio::test]
async fn the_guardrails_fence_the_operators_service_account() {
    let admin = common::client().await;
    let operator_ns = common::create_namespace(&admin, "guard-op").await;
    let tenant_ns = common::create_namespace(&admin, "guard-tenant").await;
    let forbidden_ns = common::create_namespace(&admin, "guard-forbidden").await;
    // The release is named after the test's namespace: unique policy, binding and role
    // names, and a ServiceAccount that exists for this test only.
    let release = operator_ns.to_string();
    let rendered = helm_template(
        &release,
        &operator_ns,
        &[
            "--set",
            &format!("guardrails.forbiddenNamespaces={{{forbidden_ns}}}"),
        ],
    );
    let sa = name_of(of_kind(&rendered, "ServiceAccount")[0]);
    let user = format!("system:serviceaccount:{operator_ns}:{sa}");
    assert_guardrail_shape("test release", &rendered, &user);
    assert!(
        guardrails(&rendered)
            .keys()
            .all(|(_, name)| name.starts_with(&release)),
        "the policies are named after the release: {:?}",
        guardrails(&rendered).keys()
    );
    let _cluster_objects = apply_guardrails(&admin, &rendered).await;
    let operator = as_service_account(&operator_ns, &sa).await;

    // The tenant's objects, created by the admin.
    for ns in [&tenant_ns, &forbidden_ns] {
        create_as(
            &Api::<ServiceAccount>::namespaced(admin.clone(), ns),
            json!({"metadata": {"name": "app"}}),
        )
        .await
        .expect("tenant ServiceAccount");
    }
    let admin_secrets: Api<Secret> = Api::namespaced(admin.clone(), &tenant_ns);
    for (name, managed) in [("plain", false), ("copy", true), ("copy-2", true)] {
        create_as(&admin_secrets, secret(name, managed))
            .await
            .expect("tenant Secret");
    }
    let admin_config_maps: Api<ConfigMap> = Api::namespaced(admin.clone(), &tenant_ns);
    for (name, managed) in [("settings", false), ("ca", true)] {
        let mut cm = secret(name, managed);
        cm["data"] = json!({"k": "v"});
        cm.as_object_mut().map(|o| o.remove("stringData"));
        create_as(&admin_config_maps, cm)
            .await
            .expect("tenant ConfigMap");
    }
    let admin_deployments: Api<Deployment> = Api::namespaced(admin.clone(), &tenant_ns);
    create_as(&admin_deployments, workload("Deployment", "api"))
        .await
        .expect("Deployment");
    let admin_daemonsets: Api<DaemonSet> = Api::namespaced(admin.clone(), &tenant_ns);
    create_as(&admin_daemonsets, workload("DaemonSet", "agent"))
        .await
        .expect("DaemonSet");

    let secrets: Api<Secret> = Api::namespaced(operator.clone(), &tenant_ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(operator.clone(), &tenant_ns);
    let deployments: Api<Deployment> = Api::namespaced(operator.clone(), &tenant_ns);
    let daemonsets: Api<DaemonSet> = Api::namespaced(operator.clone(), &tenant_ns);

    // Wait until each policy is in effect, with a request that is harmless if it passes
    // meanwhile (a token of a test ServiceAccount, an annotation on a test object).
    wait_in_effect("tokens", || {
        token(&operator, &tenant_ns, "app", Some(&["other"]), Some(600))
    })
    .await;
    wait_in_effect("workloads", || {
        merge(
            &deployments,
            "api",
            json!({"metadata": {"annotations": {"probe": "x"}}}),
        )
    })
    .await;
    wait_in_effect("secrets", || {
        merge(
            &secrets,
            "plain",
            json!({"metadata": {"annotations": {"probe": "x"}}}),
        )
    })
    .await;

    wait_in_effect("configmaps", || {
        update_config_map(&config_maps, "settings", |cm| {
            cm.metadata.annotations = Some([("probe".into(), "x".into())].into());
        })
    })
    .await;

    // 1. Tokens.
    assert_refused(
        "a token in kube-system",
        token(
            &operator,
            "kube-system",
            "default",
            Some(&["vault"]),
            Some(600),
        )
        .await,
        "in namespace kube-system",
    );
    assert_refused(
        "a token in a namespace of guardrails.forbiddenNamespaces",
        token(&operator, &forbidden_ns, "app", Some(&["vault"]), Some(600)).await,
        &format!("in namespace {forbidden_ns}"),
    );
    assert_refused(
        "a token for audience other",
        token(&operator, &tenant_ns, "app", Some(&["other"]), Some(600)).await,
        "only for the audiences vault, api://AzureADTokenExchange",
    );
    assert_refused(
        "a token for audiences vault and other",
        token(
            &operator,
            &tenant_ns,
            "app",
            Some(&["vault", "other"]),
            Some(600),
        )
        .await,
        "only for the audiences",
    );
    assert_refused(
        "a token with the apiserver's default audiences",
        token(&operator, &tenant_ns, "app", None, Some(600)).await,
        "only for the audiences",
    );
    assert_refused(
        "a token for 3600 s",
        token(&operator, &tenant_ns, "app", Some(&["vault"]), Some(3600)).await,
        "expirationSeconds set and at most 600",
    );
    assert_refused(
        "a token without expirationSeconds (the apiserver's default is 3600 s)",
        token(&operator, &tenant_ns, "app", Some(&["vault"]), None).await,
        "at most 600",
    );
    assert_allowed(
        "a 600 s token for audience vault in a tenant namespace",
        token(&operator, &tenant_ns, "app", Some(&["vault"]), Some(600)).await,
    );
    assert_allowed(
        "a 600 s token for Azure workload identity's audience",
        token(
            &operator,
            &tenant_ns,
            "app",
            Some(&["api://AzureADTokenExchange"]),
            Some(600),
        )
        .await,
    );

    // 2. Workloads: only the restart annotation.
    let restart = |at: &str| json!({"spec": {"template": {"metadata": {"annotations": {"vaultsync.dev/restartedAt": at}}}}});
    for (what, patch, message) in [
        (
            "a new container image",
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "app", "image": "registry.example.com/evil:1"}]}}}}),
            "may not change the pod spec of",
        ),
        (
            "a new service account",
            json!({"spec": {"template": {"spec": {"serviceAccountName": "app"}}}}),
            "may not change the pod spec of",
        ),
        (
            "a new replica count",
            json!({"spec": {"replicas": 5}}),
            "may not change replicas, selector or any other field of its spec",
        ),
        (
            "a new pod-template label",
            json!({"spec": {"template": {"metadata": {"labels": {"extra": "x"}}}}}),
            "may not change the pod template's labels",
        ),
        (
            "another pod-template annotation",
            json!({"spec": {"template": {"metadata": {"annotations": {"team": "b"}}}}}),
            "may change only the pod-template annotation vaultsync.dev/restartedAt",
        ),
        (
            "a removed pod-template annotation",
            json!({"spec": {"template": {"metadata": {"annotations": {"team": null}}}}}),
            "may change only the pod-template annotation vaultsync.dev/restartedAt",
        ),
        (
            "a new label of the Deployment",
            json!({"metadata": {"labels": {"extra": "x"}}}),
            "may not change the workload's labels",
        ),
        (
            "an ownerReference (the garbage collector would delete the Deployment)",
            json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap",
                "name": "gone", "uid": "00000000-0000-0000-0000-000000000000"}]}}),
            "ownerReferences or finalizers",
        ),
    ] {
        assert_refused(
            &format!("Deployment patch: {what}"),
            merge(&deployments, "api", patch).await,
            message,
        );
    }
    let mut restart_and_image = restart("2026-01-01T00:00:00Z");
    restart_and_image["spec"]["template"]["spec"] =
        json!({"containers": [{"name": "app", "image": "registry.example.com/evil:1"}]});
    assert_refused(
        "Deployment patch: the restart annotation together with a new image",
        merge(&deployments, "api", restart_and_image).await,
        "may not change the pod spec",
    );
    for at in ["2026-01-01T00:00:00Z", "2026-01-01T00:10:00Z"] {
        assert_allowed(
            &format!("Deployment patch: only the restart annotation ({at})"),
            merge(&deployments, "api", restart(at)).await,
        );
    }
    let api = admin_deployments.get("api").await.expect("get Deployment");
    let template = api.spec.expect("spec").template;
    let annotations = template
        .metadata
        .and_then(|m| m.annotations)
        .unwrap_or_default();
    assert_eq!(
        annotations
            .get("vaultsync.dev/restartedAt")
            .map(String::as_str),
        Some("2026-01-01T00:10:00Z"),
        "the allowed restart was written: {annotations:?}"
    );
    assert_eq!(
        template.spec.expect("pod spec").containers[0]
            .image
            .as_deref(),
        Some("registry.k8s.io/pause:3.10"),
        "the image is unchanged"
    );
    // A DaemonSet (no replicas field): the same fence.
    assert_refused(
        "DaemonSet patch: a new container image",
        merge(
            &daemonsets,
            "agent",
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "app", "image": "registry.example.com/evil:1"}]}}}}),
        )
        .await,
        "may not change the pod spec of",
    );
    assert_allowed(
        "DaemonSet patch: only the restart annotation",
        merge(&daemonsets, "agent", restart("2026-01-01T00:00:00Z")).await,
    );

    // 3. Secrets: only managed copies.
    assert_refused(
        "update of a Secret not labelled managed-by vaultsync",
        merge(&secrets, "plain", json!({"stringData": {"k": "stolen"}})).await,
        &format!("Secret {tenant_ns}/plain is not one of them"),
    );
    assert_refused(
        "delete of a Secret not labelled managed-by vaultsync",
        outcome(secrets.delete("plain", &DeleteParams::default()).await),
        "may update or delete only Secrets labelled app.kubernetes.io/managed-by=vaultsync",
    );
    assert_refused(
        "update that labels a foreign Secret managed-by vaultsync",
        merge(
            &secrets,
            "plain",
            json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "vaultsync"}}}),
        )
        .await,
        "is not one of them",
    );
    assert_allowed(
        "update of a managed copy",
        merge(&secrets, "copy", json!({"stringData": {"k": "rotated"}})).await,
    );
    assert_refused(
        "update that removes the managed-by label",
        merge(
            &secrets,
            "copy",
            json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": null}}}),
        )
        .await,
        "may not remove the label app.kubernetes.io/managed-by=vaultsync",
    );
    assert_allowed(
        "delete of a managed copy",
        outcome(secrets.delete("copy-2", &DeleteParams::default()).await),
    );
    assert_refused(
        "create of an unlabelled Secret",
        create_as(&secrets, secret("new-plain", false)).await,
        "may create only Secrets labelled app.kubernetes.io/managed-by=vaultsync",
    );
    assert_allowed(
        "create of a managed copy",
        create_as(&secrets, secret("new-copy", true)).await,
    );
    let mut minting = secret("new-token", true);
    minting["type"] = json!("kubernetes.io/service-account-token");
    minting["metadata"]["annotations"] = json!({"kubernetes.io/service-account.name": "app"});
    assert_refused(
        "create of a managed Secret of type service-account-token",
        create_as(&secrets, minting).await,
        "may not write Secrets of type kubernetes.io/service-account-token",
    );
    let hmac_key = json!({
        "metadata": {"name": "vaultsync-hmac-key", "labels": {"app.kubernetes.io/name": "vaultsync"}},
        "stringData": {"key": "0123456789abcdef"},
    });
    assert_refused(
        "create of vaultsync-hmac-key outside the operator's namespace",
        create_as(&secrets, hmac_key.clone()).await,
        "may create only Secrets labelled",
    );
    assert_allowed(
        "create of the HMAC key in the operator's namespace",
        create_as(
            &Api::<Secret>::namespaced(operator.clone(), &operator_ns),
            hmac_key,
        )
        .await,
    );
    // 4. ConfigMaps: only managed ones.
    assert_refused(
        "update of a ConfigMap not labelled managed-by vaultsync",
        update_config_map(&config_maps, "settings", |cm| {
            cm.data = Some([("k".into(), "taken".into())].into());
        })
        .await,
        &format!("ConfigMap {tenant_ns}/settings is not one of them"),
    );
    assert_refused(
        "update that labels a foreign ConfigMap managed-by vaultsync",
        update_config_map(&config_maps, "settings", |cm| {
            cm.metadata.labels =
                Some([("app.kubernetes.io/managed-by".into(), "vaultsync".into())].into());
        })
        .await,
        "is not one of them",
    );
    assert_allowed(
        "update of a managed ConfigMap",
        update_config_map(&config_maps, "ca", |cm| {
            cm.data = Some([("k".into(), "rotated".into())].into());
        })
        .await,
    );
    assert_refused(
        "create of an unlabelled ConfigMap",
        create_as(
            &config_maps,
            json!({"metadata": {"name": "new-plain"}, "data": {"k": "v"}}),
        )
        .await,
        "may write only ConfigMaps labelled app.kubernetes.io/managed-by=vaultsync",
    );
    assert_eq!(
        admin_config_maps
            .get("settings")
            .await
            .expect("settings")
            .data,
        Some(std::collections::BTreeMap::from([(
            "k".to_string(),
            "v".to_string()
        )])),
        "the foreign ConfigMap is unchanged"
    );

    // What was refused did not happen.
    let plain = admin_secrets
        .get("plain")
        .await
        .expect("plain is still there");
    assert_eq!(
        plain.data.and_then(|d| d.get("k").map(|v| v.0.clone())),
        Some(b"v".to_vec()),
        "the foreign Secret is unchanged"
    );
    assert!(
        admin_secrets
            .get_opt("copy-2")
            .await
            .expect("get")
            .is_none(),
        "the managed copy was deleted"
    );

    // The guardrails bind the operator only: the admin may still do all of it.
    assert_allowed(
        "the admin updates a foreign Secret",
        merge(&admin_secrets, "plain", json!({"stringData": {"k": "w"}})).await,
    );
    assert_allowed(
        "the admin changes the Deployment's image",
        merge(
            &admin_deployments,
            "api",
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "app", "image": "registry.k8s.io/pause:3.9"}]}}}}),
        )
        .await,
    );
    assert_allowed(
        "the admin requests a one-hour token for another audience",
        token(&admin, &tenant_ns, "app", Some(&["other"]), Some(3600)).await,
    );
    for ns in [&operator_ns, &tenant_ns, &forbidden_ns] {
        common::delete_namespace(&admin, ns).await;
    }
}
