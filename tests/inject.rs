//! Pod injection against the real apiserver, with the operator's mutating webhook
//! registered by URL on loopback, and end to end on the environment's node: the pods run
//! the node's operator image (init container) and utility image, and reach OpenBao
//! through the node's proxy, which is also the address the test's operator is given.
//!
//! Shapes (server-side dry runs, so nothing runs): every part of the mutation, opt-out
//! pods untouched, refusals with their messages, no value anywhere in the stored pod.
//! On the node: a pod's process sees the values and no Secret holds them; the file mode
//! and its refreshing sidecar.

mod common;
mod e2e;
mod manifests;

use std::time::Duration;

use e2e::{Operator, canary, root_vault};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};

const BIN: &str = "/var/run/vaultsync/bin";
const LOADER: &str = "/var/run/vaultsync/bin/ld.so";
const WRAPPER: &str = "/var/run/vaultsync/bin/vaultsync";

/// The mutating webhook registered for one namespace, deleted when dropped.
struct Registered(String);

impl Drop for Registered {
    fn drop(&mut self) {
        let _ = manifests::kubectl()
            .args([
                "delete",
                "mutatingwebhookconfiguration",
                &self.0,
                "--ignore-not-found",
            ])
            .output();
    }
}

/// An operator serving injection for `ns` (connection `default` at the node's OpenBao
/// address, the node's operator image), and its webhook registered for `ns` only.
async fn injecting_operator(client: &kube::Client, ns: &str) -> (Operator, Registered) {
    injecting_operator_with(client, ns, "").await
}

/// [`injecting_operator`] with `extra` configuration (an `azure:` section).
async fn injecting_operator_with(
    client: &kube::Client,
    ns: &str,
    extra: &str,
) -> (Operator, Registered) {
    let pki = std::path::PathBuf::from(common::env("K8S_CA_FILE", "Kubernetes control plane"))
        .parent()
        .expect("pki dir")
        .to_path_buf();
    let image = common::env("VAULTSYNC_IMAGE", "node (tests/env/node.sh)");
    let vault = common::env("VAULTSYNC_NODE_VAULT_ADDR", "node (tests/env/node.sh)");
    let port = e2e::operator::free_port().expect("free port");
    let op = Operator::start_with(
        ns,
        e2e::OperatorOptions::default().vault_addr(&vault).extra(&format!(
            "admission:\n  enabled: true\n  address: 127.0.0.1:{port}\n  certFile: {}\n  keyFile: {}\n\
             injection:\n  enabled: true\n  image: {image}\n  imagePullPolicy: Never\n{extra}",
            pki.join("apiserver.crt").display(),
            pki.join("apiserver.key").display()
        )),
    )
    .await;
    let ca = std::fs::read(common::env("K8S_CA_FILE", "Kubernetes control plane")).expect("ca");
    let name = format!("vaultsync-inject-{ns}");
    let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": name},
        "webhooks": [{
            "name": "inject.vaultsync.dev",
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/mutate-pods"),
                             "caBundle": k8s_openapi::ByteString(ca)},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
            "matchConditions": [{"name": "opted-in", "expression":
                "has(object.metadata.annotations) && 'vaultsync.dev/inject' in object.metadata.annotations && object.metadata.annotations['vaultsync.dev/inject'] == 'true'"}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 10,
        }],
    }))
    .expect("webhook configuration");
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &config)
        .await
        .expect("register the webhook");
    (op, Registered(name))
}

/// A pod running the utility image as user 65532 with `command` and `env`, opted in with
/// `annotations` (none: not opted in).
fn pod(name: &str, annotations: Value, command: Option<Vec<&str>>, env: Value) -> Pod {
    let image = common::env("UTILITY_IMAGE", "node (tests/env/node.sh)");
    let mut container = json!({
        "name": "app", "image": image, "imagePullPolicy": "Never", "env": env,
        "args": ["arg-one"],
        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]}},
        "resources": {"requests": {"cpu": "5m", "memory": "8Mi"}, "limits": {"memory": "32Mi"}},
    });
    if let Some(command) = command {
        container["command"] = json!(command);
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "serviceAccountName": "app",
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container],
        },
    }))
    .expect("pod")
}

fn opted_in(role: &str) -> Value {
    json!({"vaultsync.dev/inject": "true", "vaultsync.dev/role": role})
}

/// Creates `pod` with a server-side dry run: the pod as it would be stored, or the
/// apiserver's refusal.
async fn dry_run(pods: &Api<Pod>, pod: &Pod) -> Result<Value, String> {
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    pods.create(&params, pod)
        .await
        .map(|p| serde_json::to_value(p).expect("json"))
        .map_err(|e| e.to_string())
}

fn sha256(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn the_webhook_wraps_opted_in_containers_and_refuses_what_it_cannot_run() {
    let (client, ns, role, value) = e2e::seeded("inject-shape", "inject-shape").await;
    let (_op, _registered) = injecting_operator(&client, &ns).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let kv = json!([{"name": "PASSWORD", "value": format!("vault:secret/data/{ns}/app#password")},
                    {"name": "PLAIN", "value": "stays"}]);

    // Opted in: the whole shape. The apiserver may still be registering the webhook.
    let want = pod(
        "shape",
        opted_in(&role),
        Some(vec!["/bin/app", "--serve"]),
        kv.clone(),
    );
    let stored = common::wait_until(Duration::from_secs(30), "the webhook to mutate", || async {
        dry_run(&pods, &want)
            .await
            .ok()
            .filter(|p| p["spec"]["initContainers"].is_array())
    })
    .await;
    let spec = &stored["spec"];
    let init = &spec["initContainers"][0];
    assert_eq!(init["name"], "vaultsync-install");
    assert_eq!(init["image"], common::env("VAULTSYNC_IMAGE", "node"));
    assert_eq!(
        init["command"],
        json!(["/vaultsync", "install-self", "/var/run/vaultsync/bin"])
    );
    assert_eq!(init["securityContext"]["runAsNonRoot"], true);
    let app = &spec["containers"][0];
    assert_eq!(
        app["command"],
        json!([
            LOADER,
            "--library-path",
            BIN,
            WRAPPER,
            "env",
            "--",
            "/bin/app",
            "--serve"
        ]),
        "the original command after the wrapper"
    );
    assert_eq!(app["args"], json!(["arg-one"]), "args unchanged");
    let env: Vec<&Value> = app["env"].as_array().expect("env").iter().collect();
    let var = |name: &str| {
        env.iter()
            .find(|v| v["name"] == name)
            .map(|v| v["value"].clone())
    };
    assert_eq!(
        var("PASSWORD"),
        Some(json!(format!("vault:secret/data/{ns}/app#password")))
    );
    assert_eq!(var("PLAIN"), Some(json!("stays")));
    assert_eq!(
        var("VAULTSYNC_VAULT_ADDR"),
        Some(json!(common::env("VAULTSYNC_NODE_VAULT_ADDR", "node")))
    );
    assert_eq!(var("VAULTSYNC_VAULT_ROLE"), Some(json!(role)));
    assert_eq!(var("VAULTSYNC_VAULT_AUTH_MOUNT"), Some(json!("kubernetes")));
    let volumes = spec["volumes"].as_array().expect("volumes");
    let volume = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(volume("vaultsync-bin")["emptyDir"]["medium"], "Memory");
    let token = &volume("vaultsync-token")["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(token["audience"], "vault");
    assert!(token["expirationSeconds"].as_i64().unwrap_or(0) <= 600);
    let mounts = app["volumeMounts"].as_array().expect("mounts");
    assert!(
        mounts
            .iter()
            .any(|m| m["mountPath"] == "/var/run/vaultsync/bin" && m["readOnly"] == true)
    );
    assert!(
        !stored.to_string().contains(&value),
        "no value in the stored pod"
    );

    // An annotation cannot choose the address, the auth mount, the image or the account.
    let mut hostile = opted_in(&role);
    for (k, v) in [
        ("vaultsync.dev/vault-addr", "http://evil.example:8200"),
        ("vaultsync.dev/auth-mount", "evil"),
        ("vaultsync.dev/image", "evil/image"),
        (
            "vault.security.banzaicloud.io/vault-addr",
            "http://evil.example:8200",
        ),
    ] {
        hostile[k] = json!(v);
    }
    let stored = dry_run(
        &pods,
        &pod("hostile", hostile, Some(vec!["/bin/app"]), kv.clone()),
    )
    .await
    .expect("admitted");
    assert!(
        !stored["spec"].to_string().contains("evil"),
        "annotations chose nothing: {}",
        stored["spec"]
    );

    // Not opted in: untouched, references and all.
    let plain = dry_run(
        &pods,
        &pod("plain", json!({}), Some(vec!["/bin/app"]), kv.clone()),
    )
    .await
    .expect("admitted");
    assert!(plain["spec"]["initContainers"].is_null());
    assert_eq!(
        plain["spec"]["containers"][0]["command"],
        json!(["/bin/app"])
    );

    // Refusals, each saying what to do.
    let refused = |pod: Pod| {
        let pods = pods.clone();
        async move { dry_run(&pods, &pod).await.expect_err("refused") }
    };
    let message = refused(pod("nocmd", opted_in(&role), None, kv.clone())).await;
    assert!(
        message.contains("no command") && message.contains("vaultsync.dev/entrypoints"),
        "{message}"
    );
    let mut with_entrypoint = opted_in(&role);
    with_entrypoint["vaultsync.dev/entrypoints"] = json!(r#"{"app": ["/docker-entrypoint.sh"]}"#);
    let stored = dry_run(&pods, &pod("entry", with_entrypoint, None, kv.clone()))
        .await
        .expect("admitted");
    assert_eq!(
        stored["spec"]["containers"][0]["command"],
        json!([
            LOADER,
            "--library-path",
            BIN,
            WRAPPER,
            "env",
            "--",
            "/docker-entrypoint.sh"
        ])
    );
    let reserved = json!([{"name": "PASSWORD", "value": format!("vault:secret/data/{ns}/app#password")},
                          {"name": "VAULTSYNC_VAULT_ADDR", "value": "http://evil.example:8200"}]);
    let message = refused(pod(
        "reserved",
        opted_in(&role),
        Some(vec!["/bin/app"]),
        reserved,
    ))
    .await;
    assert!(
        message.contains("reserved") && message.contains("VAULTSYNC_VAULT_ADDR"),
        "{message}"
    );
    let bad = json!([{"name": "TRAVERSAL", "value": "vault:secret/data/../other/app#password"}]);
    let message = refused(pod("bad", opted_in(&role), Some(vec!["/bin/app"]), bad)).await;
    assert!(message.contains("TRAVERSAL"), "{message}");
    let mut unknown = opted_in(&role);
    unknown["vaultsync.dev/connection"] = json!("nowhere");
    let message = refused(pod("unknown", unknown, Some(vec!["/bin/app"]), kv.clone())).await;
    assert!(message.contains("nowhere"), "{message}");
}

/// Waits until the app container's log has `line`; on timeout, fails with the pod's
/// state and every container's log.
async fn wait_log_line(pods: &Api<Pod>, name: &str, line: &str, what: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let app = kube::api::LogParams {
        container: Some("app".into()),
        ..Default::default()
    };
    loop {
        if let Ok(logs) = pods.logs(name, &app).await
            && logs.lines().any(|l| l == line)
        {
            return logs;
        }
        if tokio::time::Instant::now() >= deadline {
            let pod = pods
                .get(name)
                .await
                .map(|p| serde_json::to_string_pretty(&p.status).unwrap_or_default());
            let mut all = String::new();
            for c in ["vaultsync-install", "app", "vaultsync-refresh"] {
                let params = kube::api::LogParams {
                    container: Some(c.into()),
                    ..Default::default()
                };
                all += &format!(
                    "--- {c}:\n{}\n",
                    pods.logs(name, &params)
                        .await
                        .unwrap_or_else(|e| e.to_string())
                );
            }
            panic!("timed out waiting for {what}\n{pod:?}\n{all}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn an_injected_pod_sees_its_values_and_no_secret_holds_them() {
    let (client, ns, _, value) = e2e::seeded("inject-run", "inject-run").await;
    let role = e2e::dynamic_tenant(&client, &ns).await;
    e2e::database_role(&ns, 3600, 7200).await;
    let (_op, _registered) = injecting_operator(&client, &ns).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let script = "echo \"password=$(printf %s \"$PASSWORD\" | sha256sum | cut -c1-64)\"; \
                  echo \"user=$(printf %s \"$DB_USER\" | sha256sum | cut -c1-64)\"; \
                  echo \"wrapper-vars=$(env | grep -c '^VAULTSYNC_')\"; echo \"args=$*\"; sleep 3600";
    let env = json!([
        {"name": "PASSWORD", "value": format!("vault:secret/data/{ns}/app#password")},
        {"name": "DB_USER", "value": format!("vault:database/creds/{ns}#username")},
        {"name": "DB_PASSWORD", "value": format!("vault:database/creds/{ns}#password")},
    ]);
    let app = pod(
        "app",
        opted_in(&role),
        Some(vec!["/bin/sh", "-c", script, "sh"]),
        env,
    );
    common::wait_until(
        Duration::from_secs(30),
        "the webhook to admit the pod",
        || async { pods.create(&PostParams::default(), &app).await.ok() },
    )
    .await;
    // The script's last line, so the lines before it are in the log too.
    let logs = wait_log_line(&pods, "app", "args=arg-one", "the pod's output").await;
    assert!(
        logs.lines()
            .any(|l| l == format!("password={}", sha256(&value))),
        "the value's hash:\n{logs}"
    );
    assert!(
        logs.lines().any(|l| l == "wrapper-vars=0"),
        "the wrapper's variables never reach the process:\n{logs}"
    );
    assert!(
        logs.lines().any(|l| l == "args=arg-one"),
        "args passed on:\n{logs}"
    );
    assert!(!logs.contains(&value), "no value in the log");
    let leases = e2e::role_leases(&ns).await;
    assert_eq!(
        leases.len(),
        1,
        "username and password from one lease: {leases:?}"
    );

    // The values exist only in the process: no Secret of the namespace holds them, and the
    // stored pod holds references.
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("secrets");
    for s in &secrets.items {
        for v in s
            .data
            .iter()
            .flatten()
            .map(|(_, v)| String::from_utf8_lossy(&v.0).into_owned())
        {
            assert!(
                !v.contains(&value),
                "Secret {:?} holds the value",
                s.metadata.name
            );
        }
    }
    let stored = serde_json::to_string(&pods.get("app").await.expect("pod")).expect("json");
    assert!(!stored.contains(&value));
    let _ = pods.delete("app", &DeleteParams::default()).await;
}

#[tokio::test]
async fn the_file_mode_writes_files_and_its_sidecar_follows_a_rotation() {
    let (client, ns, role, first) = e2e::seeded("inject-files", "inject-files").await;
    let (_op, _registered) = injecting_operator(&client, &ns).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut annotations = opted_in(&role);
    annotations["vaultsync.dev/inject-mode"] = json!("files");
    annotations["vaultsync.dev/refresh"] = json!("5s");
    let script = "while true; do echo \"at=$PASSWORD mode=$(stat -c %a \"$PASSWORD\" 2>/dev/null || ls -l \"$PASSWORD\" | cut -c1-10)\"; \
                  echo \"hash=$(cat \"$PASSWORD\" | sha256sum | cut -c1-64)\"; sleep 2; done";
    let env =
        json!([{"name": "PASSWORD", "value": format!("vault:secret/data/{ns}/app#password")}]);
    let app = pod(
        "files",
        annotations,
        Some(vec!["/bin/sh", "-c", script]),
        env,
    );
    common::wait_until(
        Duration::from_secs(30),
        "the webhook to admit the pod",
        || async { pods.create(&PostParams::default(), &app).await.ok() },
    )
    .await;
    let logs = wait_log_line(
        &pods,
        "files",
        &format!("hash={}", sha256(&first)),
        "the file to hold the value",
    )
    .await;
    assert!(
        logs.contains("at=/var/run/vaultsync/secrets/PASSWORD"),
        "the variable holds the file's path:\n{logs}"
    );
    let second = canary("inject-rotated");
    vaultrs::kv2::set(
        &root_vault(),
        "secret",
        &format!("{ns}/app"),
        &json!({"password": second}),
    )
    .await
    .expect("rotate");
    let logs = wait_log_line(
        &pods,
        "files",
        &format!("hash={}", sha256(&second)),
        "the sidecar to rewrite the file",
    )
    .await;
    assert!(
        !logs.contains(&first) && !logs.contains(&second),
        "no value in the log"
    );
    let pod = pods.get("files").await.expect("pod");
    let restarts: i32 = pod
        .status
        .and_then(|s| s.container_statuses)
        .into_iter()
        .flatten()
        .map(|c| c.restart_count)
        .sum();
    assert_eq!(restarts, 0, "rotated without a restart");
    let _ = pods.delete("files", &DeleteParams::default()).await;
}

/// akv2k8s' env-injector: `NAME@azurekeyvault[?KEY]` names an AzureKeyVaultSecret of the
/// pod's namespace; the pod reads Key Vault as its own service account (workload identity,
/// the client id from its annotation) through the node's proxies to the local Key Vault.
#[tokio::test]
async fn an_injected_pod_reads_key_vault_as_its_own_service_account() {
    let kv = e2e::keyvault::KeyVaultEnv::load().expect("local Key Vault");
    // The namespace's Vault tenant too: one pod reads both backends.
    let (client, ns, role, vault_value) = e2e::seeded("inject-akv", "inject-akv-vault").await;
    let host_ip = common::env("VAULTSYNC_NODE_HOST_IP", "node (tests/env/node.sh)");
    let authority = common::env("VAULTSYNC_NODE_AZURE_AUTHORITY", "node (tests/env/node.sh)");
    let (db, pass) = (canary("akv-inject-db"), canary("akv-inject-pass"));
    kv.set_secret("team-a", &format!("{}-db", &*ns), &db, None)
        .await
        .expect("seed the secret");
    let creds = json!({"user": "app", "pass": pass}).to_string();
    kv.set_secret("team-a", &format!("{}-creds", &*ns), &creds, None)
        .await
        .expect("seed the multi-key-value secret");
    let bundle = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/azure/rsa-bundle.pem"
    ))
    .expect("fixture");
    kv.import_certificate(
        "team-a",
        &format!("{}-web", &*ns),
        &bundle,
        true,
        "application/x-pem-file",
    )
    .await
    .expect("import the certificate");
    let client_id = format!("wi-{}", &*ns);
    kv.script(&[
        "register-client",
        &client_id,
        "--federated",
        &format!("system:serviceaccount:{}:app", &*ns),
    ])
    .expect("register the app");
    kv.script(&["grant", "team-a", &client_id, "secrets=get"])
        .expect("grant");
    // The tenant's service account `app` (made by `seeded`) names its app registration.
    let annotate =
        json!({"metadata": {"annotations": {"azure.workload.identity/client-id": client_id}}});
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), &ns)
        .patch(
            "app",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(annotate),
        )
        .await
        .expect("annotate the service account");
    // Resources for injection only, as akv2k8s writes them: no output.
    for (name, object) in [
        (
            "db",
            json!({"name": format!("{}-db", &*ns), "type": "secret"}),
        ),
        (
            "creds",
            json!({"name": format!("{}-creds", &*ns), "type": "multi-key-value-secret",
                   "contentType": "application/x-json"}),
        ),
        (
            "web",
            json!({"name": format!("{}-web", &*ns), "type": "certificate"}),
        ),
        // Another tenant's vault: the pod's identity has no grant there.
        (
            "other",
            json!({"name": format!("{}-db", &*ns), "type": "secret"}),
        ),
    ] {
        let vault = if name == "other" { "team-b" } else { "team-a" };
        let akvs = json!({"apiVersion": "vaultsync.dev/v1alpha1", "kind": "AzureKeyVaultSecret",
            "metadata": {"name": name, "namespace": &*ns},
            "spec": {"vault": {"name": vault, "object": object}}});
        e2e::apply(&client, &ns, &serde_json::to_string(&akvs).unwrap()).await;
    }
    let azure = format!(
        "azure:\n  default:\n    vaultUrlTemplate: \"https://{{name}}.vault.azure.net:{}\"\n    \
         authorityHost: \"{authority}\"\n    tenantId: \"{}\"\n    caFile: \"{}\"\n",
        kv.port, kv.tenant_id, kv.ca_file
    );
    let (_op, _registered) = injecting_operator_with(&client, &ns, &azure).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    // Without an output the resources write nothing, and say so.
    let status = e2e::wait_ready(
        &client,
        &ns,
        "AzureKeyVaultSecret",
        "db",
        "True",
        "InjectionOnly",
    )
    .await;
    assert!(status.to_string().contains("db@azurekeyvault"), "{status}");

    // Refusals at admission: an unknown resource, a malformed reference.
    let annotations = json!({"vaultsync.dev/inject": "true"});
    for (value, message) in [
        (
            "missing@azurekeyvault",
            "no AzureKeyVaultSecret \"missing\"",
        ),
        ("Bad/Name@azurekeyvault", "name an AzureKeyVaultSecret"),
    ] {
        let env = json!([{"name": "X", "value": value}]);
        let refused = dry_run(
            &pods,
            &pod("refused", annotations.clone(), Some(vec!["/bin/true"]), env),
        )
        .await;
        let error = refused.expect_err("refused");
        assert!(error.contains(message), "{value}: {error}");
    }

    let script = "echo \"db=$(printf %s \"$DB\" | sha256sum | cut -c1-64)\"; \
                  echo \"pass=$(printf %s \"$PASS\" | sha256sum | cut -c1-64)\"; \
                  echo \"key=$(printf %s \"$TLS_KEY\" | head -n 1)\"; \
                  echo \"vault=$(printf %s \"$VAULT_PW\" | sha256sum | cut -c1-64)\"; \
                  echo \"wrapper-vars=$(env | grep -c '^VAULTSYNC_')\"; sleep 3600";
    let env = json!([
        {"name": "DB", "value": "db@azurekeyvault"},
        {"name": "PASS", "value": "creds@azurekeyvault?pass"},
        {"name": "TLS_KEY", "value": "web@azurekeyvault?tls.key"},
        {"name": "VAULT_PW", "value": format!("vault:secret/data/{}/app#password", &*ns)},
    ]);
    let mut app = pod(
        "akv",
        opted_in(&role),
        Some(vec!["/bin/sh", "-c", script]),
        env,
    );
    let hosts = json!([{"ip": host_ip, "hostnames": ["team-a.vault.azure.net"]}]);
    app.spec.as_mut().unwrap().host_aliases = Some(serde_json::from_value(hosts).unwrap());
    let stored = dry_run(&pods, &app).await.expect("admitted");
    let text = stored.to_string();
    assert!(
        text.contains("api://AzureADTokenExchange") && text.contains(&client_id),
        "the pod's own account, federated: {text}"
    );
    assert!(
        !text.contains(&db) && !text.contains(&pass),
        "no value in the pod"
    );
    common::wait_until(
        Duration::from_secs(30),
        "the webhook to admit the pod",
        || async { pods.create(&PostParams::default(), &app).await.ok() },
    )
    .await;
    // The last line the script prints, so every other line is in the log.
    let logs = wait_log_line(&pods, "akv", "wrapper-vars=0", "the script's output").await;
    assert!(
        logs.lines().any(|l| l == format!("db={}", sha256(&db))),
        "the secret:\n{logs}"
    );
    assert!(
        logs.lines().any(|l| l == format!("pass={}", sha256(&pass))),
        "the multi-key-value secret's key:\n{logs}"
    );
    assert!(
        logs.lines()
            .any(|l| l == format!("vault={}", sha256(&vault_value))),
        "a vault: reference beside them:\n{logs}"
    );
    assert!(
        logs.lines().any(|l| l == "key=-----BEGIN PRIVATE KEY-----"),
        "a certificate's key by ?tls.key:\n{logs}"
    );
    for v in [&db, &pass, &vault_value] {
        assert!(!logs.contains(v.as_str()), "no value in the log");
    }
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("secrets");
    for s in &secrets.items {
        let data = serde_json::to_string(&s.data).unwrap();
        for v in [&db, &pass, &vault_value] {
            assert!(
                !data.contains(v.as_str()),
                "Secret {:?} holds a value",
                s.metadata.name
            );
        }
    }
    let _ = pods.delete("akv", &DeleteParams::default()).await;

    // What the pod's identity may not read stops the container, and says why.
    let env = json!([{"name": "DB", "value": "other@azurekeyvault"}]);
    let mut denied = pod(
        "denied",
        json!({"vaultsync.dev/inject": "true"}),
        Some(vec!["/bin/true"]),
        env,
    );
    let hosts = json!([{"ip": host_ip, "hostnames": ["team-b.vault.azure.net"]}]);
    denied.spec.as_mut().unwrap().host_aliases = Some(serde_json::from_value(hosts).unwrap());
    pods.create(&PostParams::default(), &denied)
        .await
        .expect("admitted");
    let logs = common::wait_until(Duration::from_secs(90), "the wrapper's refusal", || async {
        let params = kube::api::LogParams {
            container: Some("app".into()),
            ..Default::default()
        };
        pods.logs("denied", &params)
            .await
            .ok()
            .filter(|l| l.contains("vaultsync env:"))
    })
    .await;
    assert!(
        logs.contains("Key Vault refused") && logs.contains(&client_id),
        "{logs}"
    );
    let _ = pods.delete("denied", &DeleteParams::default()).await;
}
