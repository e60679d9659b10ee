//! In the cluster: the Helm chart runs on the environment's node (tests/env/node.sh), as
//! users install it, and workloads consume what it writes.
//!
//! One scenario, in order, on one release: `helm install` into a namespace that enforces
//! Pod Security "restricted" (two replicas Running, one leader, `/readyz` ok, the admission
//! webhook answering the apiserver, a KV and a database VaultSecret synced from OpenBao
//! through the node's proxy, metrics scraped through the Service); a pod that mounts the
//! Secret sees a rotation in its volume without a restart, and a Deployment that reads it
//! as environment variables is replaced by the rollout restart; a pod opted in to
//! injection gets its value through the chart's mutating webhook; deleting the leader pod
//! hands over to another replica within the lease duration with no rewrite and no re-issue;
//! `helm upgrade` with a changed value keeps copies byte-identical and leases kept; `helm
//! uninstall` leaves the copies and the resources, and a resource with a revocation
//! finalizer waits for an operator (README, "Uninstalling").
//!
//! The node, the images and the chart's values come from `make env-up` (VAULTSYNC_IMAGE,
//! UTILITY_IMAGE, VAULTSYNC_CHART_VALUES); a missing one fails the test with the fix.

mod common;
mod e2e;
mod manifests;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use e2e::{apply, canary, root_vault, secret, value, wait_ready};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams};
use manifests::{CHART, helm, kubectl, run};
use serde_json::json;

/// The chart's default lease duration.
const LEASE_DURATION: Duration = Duration::from_secs(15);

/// A Helm release, uninstalled when dropped (a failed test leaves no cluster-wide webhook,
/// ClusterRole or admission policy behind).
struct Release {
    name: String,
    namespace: String,
    installed: bool,
}

impl Drop for Release {
    fn drop(&mut self) {
        if self.installed {
            let _ = helm()
                .args(["uninstall", &self.name, "-n", &self.namespace, "--wait"])
                .args(["--timeout", "60s"])
                .output();
        }
    }
}

impl Release {
    /// `helm install` or `helm upgrade` with the environment's values and `sets`, waiting
    /// for the rollout; on failure, the pods' state and logs explain why.
    fn deploy(&mut self, verb: &str, sets: &[String]) {
        let values = common::env("VAULTSYNC_CHART_VALUES", "node (tests/env/node.sh)");
        let mut cmd = helm();
        cmd.args([verb, &self.name, CHART, "-n", &self.namespace])
            .args(["-f", &values, "--wait", "--timeout", "180s"]);
        for set in sets {
            cmd.args(["--set", set]);
        }
        let out = cmd.output().expect("run helm");
        self.installed = true;
        assert!(
            out.status.success(),
            "helm {verb} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            diagnose(&self.namespace)
        );
    }

    fn selector(&self) -> String {
        format!("app.kubernetes.io/instance={}", self.name)
    }
}

/// Pods, their Events and the operator's logs in `ns`, for a failure message.
fn diagnose(ns: &str) -> String {
    let get = |args: &[&str]| {
        kubectl()
            .args(args)
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr)
            })
            .unwrap_or_default()
    };
    [
        get(&["-n", ns, "get", "pods,deploy,rs", "-o", "wide"]),
        get(&["-n", ns, "get", "events", "--sort-by=.lastTimestamp"]),
        get(&[
            "-n",
            ns,
            "logs",
            "-l",
            "app.kubernetes.io/name=vaultsync",
            "--tail=30",
            "--prefix",
        ]),
    ]
    .join("\n")
}

/// `kubectl get --raw PATH` through the apiserver (its service and pod proxy reach the pods).
fn raw(path: &str) -> Result<String, String> {
    let out = kubectl()
        .args(["get", "--raw", path])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The Running pods matching `selector` whose containers are all ready, by name.
async fn ready_pods(client: &kube::Client, ns: &str, selector: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .expect("list pods");
    list.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            let status = p.status.as_ref();
            status.and_then(|s| s.phase.as_deref()) == Some("Running")
                && status
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|cs| cs.iter().all(|c| c.ready))
        })
        .collect()
}

fn name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

async fn lease_holder(client: &kube::Client, ns: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt("vaultsync-leader")
        .await
        .ok()??
        .spec?
        .holder_identity
}

fn logs(ns: &str, pod: &str) -> String {
    kubectl()
        .args(["-n", ns, "logs", pod])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn sha256(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

/// The restricted security context every workload pod here runs with.
const RESTRICTED: &str = r#""securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}}"#;

/// A pod spec running the utility image with `script`, mounting or reading Secret `kv`.
fn workload_spec(script: &str, from_env: bool) -> serde_json::Value {
    let image = common::env("UTILITY_IMAGE", "node (tests/env/node.sh)");
    let restricted: serde_json::Value =
        serde_json::from_str(&format!("{{{RESTRICTED}}}")).expect("json");
    let mut container = json!({
        "name": "app", "image": image, "imagePullPolicy": "Never",
        "command": ["/bin/sh", "-c", script],
        "securityContext": restricted["securityContext"],
        "resources": {"requests": {"cpu": "5m", "memory": "8Mi"}, "limits": {"memory": "32Mi"}},
    });
    let mut spec = json!({
        "terminationGracePeriodSeconds": 1,
        "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [],
    });
    if from_env {
        container["env"] = json!([{"name": "PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "kv", "key": "password"}}}]);
    } else {
        container["volumeMounts"] =
            json!([{"name": "kv", "mountPath": "/secret", "readOnly": true}]);
        spec["volumes"] = json!([{"name": "kv", "secret": {"secretName": "kv"}}]);
    }
    spec["containers"] = json!([container]);
    spec
}

/// Waits until a pod's log (of the pods matching `selector`) shows the hash of `value`;
/// returns that pod.
async fn wait_log_hash(
    client: &kube::Client,
    ns: &str,
    selector: &str,
    value: &str,
    what: &str,
) -> Pod {
    let want = format!("hash={}", sha256(value));
    common::wait_until(Duration::from_secs(90), what, || {
        let want = want.clone();
        async move {
            ready_pods(client, ns, selector)
                .await
                .into_iter()
                .find(|p| logs(ns, &name(p)).lines().any(|l| l == want))
        }
    })
    .await
}

#[tokio::test]
async fn the_chart_runs_on_the_node_and_workloads_consume_its_secrets() {
    let client = common::client().await;
    common::install_crds(&client).await;
    common::env("VAULTSYNC_IMAGE", "node (tests/env/node.sh)");
    let op_ns = restricted_namespace(&client, "incluster-op").await;
    let app_ns = restricted_namespace(&client, "incluster-app").await;
    let role = e2e::dynamic_tenant(&client, &app_ns).await;
    e2e::database_role(&app_ns, 3600, 7200).await;
    let first = canary("incluster");
    vaultrs::kv2::set(
        &root_vault(),
        "secret",
        &format!("{app_ns}/app"),
        &json!({"password": first}),
    )
    .await
    .expect("seed");

    // --- helm install: two replicas, one leader, ready, webhook and metrics reachable.
    let mut release = Release {
        // Contains the chart's name, so the objects are named after the release alone.
        name: format!("vaultsync-{}", &op_ns[op_ns.len() - 7..]),
        namespace: op_ns.to_string(),
        installed: false,
    };
    let sets = vec![
        "rbac.scope=namespaces".to_string(),
        format!("watchNamespaces[0]={app_ns}"),
    ];
    let started = Instant::now();
    release.deploy("install", &sets);
    eprintln!("helm install --wait: {:?}", started.elapsed());
    let pods = ready_pods(&client, &op_ns, &release.selector()).await;
    assert_eq!(
        pods.len(),
        2,
        "two replicas Running and ready:\n{}",
        diagnose(&op_ns)
    );
    let names: Vec<String> = pods.iter().map(name).collect();
    let leader = common::wait_until(Duration::from_secs(30), "a leader", || async {
        lease_holder(&client, &op_ns)
            .await
            .filter(|h| names.contains(h))
    })
    .await;
    for pod in &names {
        let ready = raw(&format!(
            "/api/v1/namespaces/{op_ns}/pods/{pod}:8080/proxy/readyz"
        ));
        assert_eq!(ready.as_deref(), Ok("ok"), "/readyz of {pod}");
    }

    // Through the in-cluster admission webhook (failurePolicy Fail: an unreachable webhook
    // refuses these), synced by the leader from OpenBao through the node's proxy.
    apply(&client, &app_ns, &e2e::vault_secret(
        "kv", &role, &format!("kv: {{mount: secret, path: {app_ns}/app}}"),
        "  refreshInterval: 5s\n  rolloutRestartTargets: [{kind: Deployment, name: env-reader}]\n",
    ))
    .await;
    apply(&client, &app_ns, &e2e::database_secret(&role, &app_ns, "")).await;
    wait_ready(&client, &app_ns, "VaultSecret", "kv", "True", "Synced").await;
    let db_status = wait_ready(&client, &app_ns, "VaultSecret", "db", "True", "Synced").await;
    let lease_id = db_status["lease"]["id"]
        .as_str()
        .expect("lease id in status")
        .to_string();
    let kv = secret(&client, &app_ns, "kv").await.expect("kv Secret");
    assert_eq!(value(&kv, "password").as_deref(), Some(first.as_str()));

    let service = format!("{}-metrics", release.name);
    let metrics = raw(&format!(
        "/api/v1/namespaces/{op_ns}/services/{service}:metrics/proxy/metrics"
    ))
    .unwrap_or_else(|e| panic!("metrics through Service {service}: {e}"));
    assert!(
        metrics.contains("vaultsync_"),
        "vaultsync metrics through the Service:\n{metrics}"
    );

    // --- workloads: a volume follows the rotation; an env reader is restarted.
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &app_ns);
    let vol_script = "while true; do echo \"hash=$(cat /secret/password | sha256sum | cut -c1-64)\"; sleep 2; done";
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "vol-reader", "labels": {"app": "vol-reader"}},
        "spec": workload_spec(vol_script, false),
    }))
    .expect("pod");
    pods_api
        .create(&Default::default(), &pod)
        .await
        .expect("create vol-reader");
    let env_script =
        "echo \"hash=$(printf %s \"$PASSWORD\" | sha256sum | cut -c1-64)\"; exec sleep 3600";
    apply(
        &client,
        &app_ns,
        &serde_json::to_string(&json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "env-reader"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "env-reader"}},
                     "template": {"metadata": {"labels": {"app": "env-reader"}},
                                  "spec": workload_spec(env_script, true)}},
        }))
        .expect("json"),
    )
    .await;
    let vol = wait_log_hash(
        &client,
        &app_ns,
        "app=vol-reader",
        &first,
        "vol-reader to print the first value's hash",
    )
    .await;
    let env_before = wait_log_hash(
        &client,
        &app_ns,
        "app=env-reader",
        &first,
        "env-reader to print the first value's hash",
    )
    .await;

    let second = canary("incluster-rotated");
    vaultrs::kv2::set(
        &root_vault(),
        "secret",
        &format!("{app_ns}/app"),
        &json!({"password": second}),
    )
    .await
    .expect("rotate");
    let vol_after = wait_log_hash(
        &client,
        &app_ns,
        "app=vol-reader",
        &second,
        "the mounted Secret to show the rotated value",
    )
    .await;
    assert_eq!(
        vol_after.metadata.uid, vol.metadata.uid,
        "the same pod, not a new one"
    );
    let restarts = vol_after
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum::<i32>());
    assert_eq!(restarts, Some(0), "the volume reader was not restarted");
    let env_after = wait_log_hash(
        &client,
        &app_ns,
        "app=env-reader",
        &second,
        "the rollout restart to start a pod with the rotated value",
    )
    .await;
    assert_ne!(
        env_after.metadata.uid, env_before.metadata.uid,
        "env-reader was replaced"
    );
    for pod in [name(&vol_after), name(&env_after)] {
        let text = logs(&app_ns, &pod);
        assert!(
            !text.contains(&first) && !text.contains(&second),
            "a value in {pod}'s log"
        );
    }

    // --- injection through the chart's mutating webhook: the value only in the process.
    let script =
        "echo \"hash=$(printf %s \"$PASSWORD\" | sha256sum | cut -c1-64)\"; exec sleep 3600";
    let mut spec = workload_spec(script, false);
    spec["serviceAccountName"] = json!("app");
    spec["volumes"] = json!([]);
    spec["containers"][0]["volumeMounts"] = json!([]);
    spec["containers"][0]["env"] =
        json!([{"name": "PASSWORD", "value": format!("vault:secret/data/{app_ns}/app#password")}]);
    let injected: Pod = serde_json::from_value(json!({
        "metadata": {"name": "injected", "labels": {"app": "injected"},
                     "annotations": {"vaultsync.dev/inject": "true", "vaultsync.dev/role": role}},
        "spec": spec,
    }))
    .expect("pod");
    pods_api
        .create(&Default::default(), &injected)
        .await
        .expect("the chart's webhook admits an opted-in pod");
    wait_log_hash(
        &client,
        &app_ns,
        "app=injected",
        &second,
        "the injected pod to print the value's hash",
    )
    .await;
    // --- the leader pod goes: another replica takes over within the lease duration, and
    // nothing is rewritten or re-issued. The standby usually wins (it watches the Lease and
    // takes it when the leader releases it on SIGTERM); the pod that replaces the leader may
    // win instead on a loaded machine. Either is a handover: what is promised is the time.
    let kv = secret(&client, &app_ns, "kv").await.expect("kv");
    let db = secret(&client, &app_ns, "db").await.expect("db");
    let standby = names
        .iter()
        .find(|n| **n != leader)
        .expect("standby")
        .clone();
    // The leader's own account of its shutdown, for the failure message: the pod and its
    // log are gone once it exits.
    let leader_log = std::env::temp_dir().join(format!("vaultsync-{op_ns}-leader.log"));
    let mut follow = kubectl()
        .args(["-n", &op_ns, "logs", "-f", "--timestamps", &leader])
        .stdout(std::fs::File::create(&leader_log).expect("leader log file"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kubectl logs -f");
    let gone = Instant::now();
    Api::<Pod>::namespaced(client.clone(), &op_ns)
        .delete(&leader, &DeleteParams::default())
        .await
        .expect("delete the leader pod");
    let deadline = gone + LEASE_DURATION + Duration::from_secs(15);
    let successor = loop {
        if let Some(holder) = lease_holder(&client, &op_ns).await.filter(|h| *h != leader) {
            let live = ready_pods(&client, &op_ns, &release.selector()).await;
            if live.iter().any(|p| name(p) == holder) {
                break holder;
            }
        }
        if Instant::now() > deadline {
            let _ = follow.kill();
            let _ = follow.wait();
            let lease = kubectl()
                .args([
                    "-n",
                    &op_ns,
                    "get",
                    "lease",
                    "vaultsync-leader",
                    "-o",
                    "yaml",
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            panic!(
                "no replica took the Lease within {:?} of the leader pod's deletion\n\
                 --- lease\n{lease}\n--- leader {leader}'s log\n{}\n--- standby {standby}\n{}\n{}",
                deadline - gone,
                std::fs::read_to_string(&leader_log).unwrap_or_default(),
                logs(&op_ns, &standby),
                diagnose(&op_ns),
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let takeover = gone.elapsed();
    let _ = follow.kill();
    let _ = follow.wait();
    let _ = std::fs::remove_file(&leader_log);
    let who = if successor == standby {
        "the standby"
    } else {
        "the replacement pod"
    };
    eprintln!("{who} {successor} took over {takeover:?} after the leader pod was deleted");
    assert!(
        takeover <= LEASE_DURATION,
        "takeover within the lease duration, took {takeover:?}"
    );
    // The new leader reconciles everything at start; give it two refresh intervals.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_unchanged(&client, &app_ns, &kv, &db, &lease_id, "after the failover").await;

    // --- helm upgrade with a changed value: the pods roll, the copies and leases stay.
    let mut sets = sets;
    sets.push("logLevel=debug".into());
    release.deploy("upgrade", &sets);
    common::wait_until(
        Duration::from_secs(60),
        "a leader among the upgraded pods",
        || async {
            let pods: Vec<String> = ready_pods(&client, &op_ns, &release.selector())
                .await
                .iter()
                .map(name)
                .collect();
            lease_holder(&client, &op_ns)
                .await
                .filter(|h| pods.contains(h) && !names.contains(h))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_unchanged(&client, &app_ns, &kv, &db, &lease_id, "after helm upgrade").await;

    // --- helm uninstall: copies and resources stay; a finalizer waits for an operator.
    run(
        helm().args([
            "uninstall",
            &release.name,
            "-n",
            &op_ns,
            "--wait",
            "--timeout",
            "60s",
        ]),
        None,
    );
    release.installed = false;
    assert!(
        ready_pods(&client, &op_ns, &release.selector())
            .await
            .is_empty()
    );
    assert_unchanged(
        &client,
        &app_ns,
        &kv,
        &db,
        &lease_id,
        "after helm uninstall",
    )
    .await;
    let vs = e2e::vault_secrets(&client, &app_ns);
    vs.delete("db", &DeleteParams::default())
        .await
        .expect("delete db");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let db_vs = vs
        .get("db")
        .await
        .expect("db stays while its finalizer waits for an operator");
    assert!(db_vs.metadata.deletion_timestamp.is_some());
    assert!(
        e2e::lease_lookup(&lease_id).await.is_some(),
        "the lease lives until revoked or expired"
    );
    // The documented way out without reinstalling: remove the finalizer; the lease then
    // runs out at its TTL (the guard revokes it here).
    run(
        kubectl().args([
            "-n",
            &app_ns,
            "patch",
            "vaultsecret",
            "db",
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ]),
        None,
    );
    common::wait_until(
        Duration::from_secs(30),
        "db and its Secret to go",
        || async {
            (vs.get_opt("db").await.ok()?.is_none()
                && secret(&client, &app_ns, "db").await.is_none())
            .then_some(())
        },
    )
    .await;
}

/// The Secrets' bytes and resourceVersions are those of `kv` and `db`, and the database
/// lease is still `lease_id`, the only one of its role.
async fn assert_unchanged(
    client: &kube::Client,
    ns: &str,
    kv: &Secret,
    db: &Secret,
    lease_id: &str,
    when: &str,
) {
    for before in [kv, db] {
        let name = before.metadata.name.as_deref().unwrap_or_default();
        let now = secret(client, ns, name)
            .await
            .unwrap_or_else(|| panic!("{name} gone {when}"));
        assert_eq!(data(&now), data(before), "{name}'s data {when}");
        assert_eq!(
            now.metadata.resource_version, before.metadata.resource_version,
            "{name} rewritten {when}"
        );
    }
    let status = e2e::status(client, ns, "VaultSecret", "db").await;
    assert_eq!(
        status["lease"]["id"].as_str(),
        Some(lease_id),
        "db's lease {when}"
    );
    assert_eq!(
        e2e::role_leases(ns).await,
        vec![lease_id.to_string()],
        "credentials re-issued {when}"
    );
}

async fn restricted_namespace(client: &kube::Client, prefix: &str) -> common::NamespaceGuard {
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

/// The kustomize install, removed when dropped: the objects it applied (`owned.yaml` in
/// the overlay directory), what the operator made in vaultsync-system (its Lease and HMAC
/// key), and the overlay directory with its private key.
struct Applied(std::path::PathBuf);

impl Drop for Applied {
    fn drop(&mut self) {
        let _ = kubectl()
            .args(["delete", "--ignore-not-found", "--wait=false", "-f"])
            .arg(self.0.join("owned.yaml"))
            .output();
        let _ = kubectl()
            .args(["-n", "vaultsync-system", "delete", "--ignore-not-found"])
            .args(["lease/vaultsync-leader", "secret/vaultsync-hmac-key"])
            .output();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA and a serving certificate for the base's webhook Service, made with openssl:
/// (CA PEM, certificate PEM, key PEM).
fn webhook_certificate(dir: &std::path::Path) -> (String, String, String) {
    let host = "vaultsync-webhook.vaultsync-system.svc";
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    std::fs::write(dir.join("san.ext"), format!("subjectAltName=DNS:{host}\n")).expect("ext");
    let openssl = || {
        let mut c = std::process::Command::new("openssl");
        c.current_dir(dir);
        c
    };
    run(
        openssl().args(["req", "-x509"]).args(ec).args([
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=in-cluster test CA",
        ]),
        None,
    );
    run(
        openssl()
            .args(["req"])
            .args(ec)
            .args(["-keyout", "tls.key", "-out", "tls.csr", "-subj"])
            .arg(format!("/CN={host}")),
        None,
    );
    run(
        openssl().args([
            "x509",
            "-req",
            "-in",
            "tls.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "tls.crt",
        ]),
        None,
    );
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("pem");
    (read("ca.crt"), read("tls.crt"), read("tls.key"))
}

/// The path from directory `from` to `to`, both resolved to their real paths.
fn relative(from: &std::path::Path, to: &std::path::Path) -> std::path::PathBuf {
    let from = from.canonicalize().expect("real path");
    let to = to.canonicalize().expect("real path");
    let common = from
        .components()
        .zip(to.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut path = std::path::PathBuf::new();
    for _ in from.components().skip(common) {
        path.push("..");
    }
    path.extend(to.components().skip(common));
    path
}

/// An overlay of config/default as a user without cert-manager writes it: the operator
/// image from the node, the environment's Vault connection watching `app_ns` only, the
/// webhook's certificate as a Secret instead of cert-manager's Issuer and Certificate, and
/// the webhook asked for `app_ns` only (the suite's other tests run their own operators).
/// The CRDs are left out: the suite installed the same files, and deleting them at the
/// end would delete every test's resources.
fn overlay(app_ns: &str) -> std::path::PathBuf {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("target/in-cluster/{app_ns}"));
    std::fs::create_dir_all(&dir).expect("overlay dir");
    let (ca, cert, key) = webhook_certificate(&dir);
    let image = common::env("VAULTSYNC_IMAGE", "node (tests/env/node.sh)");
    let (repo, tag) = image.rsplit_once(':').expect("repository:tag");
    let vault = common::env("VAULTSYNC_NODE_VAULT_ADDR", "node (tests/env/node.sh)");
    let delete = |api: &str, kind: &str, name: &str, ns: &str| {
        format!(
            "  - patch: |-\n      $patch: delete\n      apiVersion: {api}\n      kind: {kind}\n      metadata: {{name: {name}{ns}}}\n"
        )
    };
    let ns = ", namespace: vaultsync-system";
    // Relative, as kustomize wants, between the real paths: target/ may be a symlink
    // (a shared build cache), and kustomize resolves symlinks first.
    let base = relative(
        &dir,
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default"),
    );
    let mut k = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\n  - webhook-tls.yaml\n\
         images:\n  - name: ghcr.io/vaultsync/vaultsync\n    newName: {repo}\n    newTag: {tag}\n\
         configMapGenerator:\n  - name: vaultsync-config\n    behavior: replace\n    files: [config.yaml]\n\
         patches:\n",
        base.display()
    );
    k += &delete("cert-manager.io/v1", "Issuer", "vaultsync-webhook", ns);
    k += &delete("cert-manager.io/v1", "Certificate", "vaultsync-webhook", ns);
    for crd in [
        "vaultsecrets.vaultsync.dev",
        "azurekeyvaultsecrets.vaultsync.dev",
    ] {
        k += &delete(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            crd,
            "",
        );
    }
    k += &format!(
        "  - target: {{kind: ValidatingWebhookConfiguration, name: vaultsync}}\n    patch: |-\n      \
         - {{op: add, path: /webhooks/0/clientConfig/caBundle, value: {}}}\n      \
         - {{op: add, path: /webhooks/0/namespaceSelector, value: {{matchLabels: {{kubernetes.io/metadata.name: {app_ns}}}}}}}\n\
         \x20 - target: {{kind: MutatingWebhookConfiguration, name: vaultsync-inject}}\n    patch: |-\n      \
         - {{op: add, path: /webhooks/0/clientConfig/caBundle, value: {}}}\n      \
         - {{op: replace, path: /webhooks/0/namespaceSelector, value: {{matchLabels: {{kubernetes.io/metadata.name: {app_ns}}}}}}}\n\
         \x20 - target: {{kind: Deployment, name: vaultsync}}\n    patch: |-\n      \
         - {{op: add, path: /spec/template/spec/containers/0/imagePullPolicy, value: Never}}\n",
        b64(&ca),
        b64(&ca)
    );
    std::fs::write(dir.join("kustomization.yaml"), k).expect("kustomization");
    std::fs::write(
        dir.join("webhook-tls.yaml"),
        format!(
            "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/tls\nmetadata: {{name: vaultsync-webhook-tls, namespace: vaultsync-system}}\n\
             data:\n  tls.crt: {}\n  tls.key: {}\n",
            b64(&cert),
            b64(&key)
        ),
    )
    .expect("tls secret");
    std::fs::write(
        dir.join("config.yaml"),
        format!(
            "metricsAddress: 0.0.0.0:8080\nlogFormat: text\nwatchNamespaces: [{app_ns}]\n\
             leaderElection: {{enabled: true, leaseName: vaultsync-leader, leaseDuration: 15s}}\n\
             admission: {{enabled: true, address: 0.0.0.0:9443, certFile: /etc/vaultsync/tls/tls.crt, keyFile: /etc/vaultsync/tls/tls.key}}\n\
             defaults: {{minRefreshInterval: 5s}}\n\
             vault:\n  default: {{address: \"{vault}\", tokenAudience: vault, kvVersions: {{secret: 2}}}}\n"
        ),
    )
    .expect("config");
    dir
}

#[tokio::test]
async fn the_kustomize_base_runs_on_the_node() {
    let client = common::client().await;
    common::install_crds(&client).await;
    let app_ns = restricted_namespace(&client, "incluster-kust").await;
    let role = e2e::tenant(&client, &app_ns, "app", &format!("{app_ns}/")).await;
    let password = canary("kustomize");
    vaultrs::kv2::set(
        &root_vault(),
        "secret",
        &format!("{app_ns}/app"),
        &json!({"password": password}),
    )
    .await
    .expect("seed");
    let dir = overlay(&app_ns);
    // Everything the overlay renders but the shared namespace, deleted at the end.
    let rendered = manifests::documents(&run(kubectl().args(["kustomize"]).arg(&dir), None));
    let owned: Vec<String> = rendered
        .iter()
        .filter(|o| o["kind"] != "Namespace")
        .map(|o| serde_yaml::to_string(o).expect("yaml"))
        .collect();
    std::fs::write(dir.join("owned.yaml"), owned.join("---\n")).expect("owned");
    let _applied = Applied(dir.clone());
    run(kubectl().args(["apply", "-k"]).arg(&dir), None);

    let selector = "app.kubernetes.io/name=vaultsync,app.kubernetes.io/component=operator";
    let op_ns = "vaultsync-system";
    let names: Vec<String> = common::wait_until(
        Duration::from_secs(120),
        "two kustomize replicas ready",
        || async {
            let pods = ready_pods(&client, op_ns, selector).await;
            (pods.len() == 2).then(|| pods.iter().map(name).collect())
        },
    )
    .await;
    common::wait_until(Duration::from_secs(30), "a leader", || async {
        lease_holder(&client, op_ns)
            .await
            .filter(|h| names.contains(h))
    })
    .await;
    apply(
        &client,
        &app_ns,
        &e2e::vault_secret(
            "kv",
            &role,
            &format!("kv: {{mount: secret, path: {app_ns}/app}}"),
            "",
        ),
    )
    .await;
    wait_ready(&client, &app_ns, "VaultSecret", "kv", "True", "Synced").await;
    let kv = secret(&client, &app_ns, "kv").await.expect("kv Secret");
    assert_eq!(value(&kv, "password").as_deref(), Some(password.as_str()));
    let metrics = raw(&format!(
        "/api/v1/namespaces/{op_ns}/services/vaultsync-metrics:metrics/proxy/metrics"
    ))
    .unwrap_or_else(|e| panic!("metrics through Service vaultsync-metrics: {e}"));
    assert!(metrics.contains("vaultsync_"), "{metrics}");
}
