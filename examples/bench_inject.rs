//! `make bench-inject` (part of `make bench`): what pod injection costs, against the local
//! environment with a release-built operator serving admission and injection on loopback.
//! It prints figures, no targets. Every series is sequential, after unmeasured warm-ups.
//!
//! 1. The handler alone: AdmissionReviews POSTed to `https://127.0.0.1:PORT/mutate-pods`
//!    (the apiserver's certificate, K8S_CA_FILE's CA) over one keep-alive HTTP/1.1
//!    connection: an opted-in pod (role, two `vault:` references, a command), and the
//!    same pod without the annotation.
//! 2. Through the apiserver: dry-run pod creates with the webhook registered by URL for
//!    `benchinject-0` only, with the chart's `matchConditions`: opted in and not there,
//!    and not in `benchinject-1`, which the webhook does not select (the baseline).
//! 3. `vaultsync env -- /bin/true` start-up to exec, as the tenant's service account
//!    (TokenRequest, audience `vault`, role `benchinject-0-app`) with no, one and three
//!    KV v2 references (three paths: one login, three reads); `/bin/true` alone as a floor.
//!
//! What it creates is deleted at the end, also on failure; the wrapper's OpenBao tokens
//! expire by themselves (10 minutes).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use common::percentile;
use common::report::Report;
use common::setup::{create_namespace, create_tenant, delete_namespaces, delete_tenant_vault};
use common::setup::{install_crds, wait_for};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use vaultrs::client::VaultClient;

const MAKE: &str = "make bench-inject";
const NS_PREFIX: &str = "benchinject-";
/// Selected by the webhook; the tenant's namespace.
const NS: &str = "benchinject-0";
/// Not selected: the baseline.
const NS_OTHER: &str = "benchinject-1";
/// The tenant's OpenBao role and policy (`create_tenant`).
const ROLE: &str = "benchinject-0-app";
const LABEL: &str = "vaultsync.dev/bench-inject";
const WEBHOOK: &str = "vaultsync-bench-inject";
/// Under `secret/<NS>/`; also the wrapper's variable names.
const KV_PATHS: [&str; 3] = ["A", "B", "C"];
const DIRECT_N: usize = 500;
const APISERVER_N: usize = 200;
const WRAPPER_N: usize = 50;
/// Requests before the measured ones (connections, caches), not counted.
const WARMUP: usize = 20;
const WRAPPER_WARMUP: usize = 3;

/// A pod with two `vault:` references and a command; opted in with a role, or not.
fn pod(ns: &str, opted_in: bool) -> Value {
    let reference = |key: &str| format!("vault:secret/data/{NS}/a#{key}");
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "bench", "namespace": ns},
        "spec": {
            "serviceAccountName": "app", "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "app", "image": "registry.example/app:1",
                "command": ["/app/server", "--serve"],
                "env": [{"name": "DB_PASSWORD", "value": reference("password")},
                        {"name": "DB_USER", "value": reference("username")},
                        {"name": "PLAIN", "value": "stays"}],
                "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                    "capabilities": {"drop": ["ALL"]}},
                "resources": {"requests": {"cpu": "5m", "memory": "8Mi"}, "limits": {"memory": "32Mi"}},
            }],
        },
    });
    if opted_in {
        pod["metadata"]["annotations"] =
            json!({"vaultsync.dev/inject": "true", "vaultsync.dev/role": ROLE});
    }
    pod
}

/// Runs `once` `warmup` times, then `n` times timed; the latencies in ms, sorted.
async fn timed<F, Fut>(warmup: usize, n: usize, mut once: F) -> Result<Vec<f64>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    for _ in 0..warmup {
        once().await?;
    }
    let mut ms = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        once().await?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms)
}

fn summary(ms: &[f64]) -> String {
    let [p50, p99, max] = [0.5, 0.99, 1.0].map(|q| percentile(ms, q));
    format!("p50 {p50:.2} / p99 {p99:.2} / max {max:.2} ms")
}

// 1. The handler alone ------------------------------------------------------------------

async fn direct(report: &mut Report, ca: &[u8], port: u16) -> Result<()> {
    let http = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(ca)?)
        .http1_only()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(10))
        .build()?;
    let url = format!("https://127.0.0.1:{port}/mutate-pods");
    report.section(&format!(
        "webhook handler alone: POST /mutate-pods, {DIRECT_N} sequential requests over one keep-alive connection"
    ));
    for (what, opted_in) in [
        ("opted-in pod (JSON patch)", true),
        ("pod without the annotation", false),
    ] {
        let body = serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "7b0c7b4e-0000-4000-8000-000000000001",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": NS, "operation": "CREATE",
                "userInfo": {"username": "bench"}, "object": pod(NS, opted_in),
            },
        }))?;
        let post = || async {
            let answer: Value = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let response = &answer["response"];
            if response["allowed"] != true || response["patch"].is_null() == opted_in {
                bail!("unexpected answer to the {what}: {response}");
            }
            Ok(())
        };
        // The admission server may start after /readyz; the last error if it never answers.
        let up = wait_for(Duration::from_secs(30), "", || async { post().await.ok() });
        if up.await.is_err() {
            post().await.context("POST /mutate-pods")?;
        }
        report.row(what, summary(&timed(WARMUP, DIRECT_N, post).await?));
    }
    Ok(())
}

// 2. Through the apiserver --------------------------------------------------------------

/// A dry-run create of `pod` in `ns`; whether the stored pod was injected.
async fn dry_run(client: &Client, ns: &str, pod: &Pod) -> Result<bool> {
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let stored = Api::<Pod>::namespaced(client.clone(), ns)
        .create(&params, pod)
        .await
        .with_context(|| format!("dry-run pod create in {ns}"))?;
    let inits = stored.spec.and_then(|s| s.init_containers);
    Ok(inits.is_some_and(|c| c.iter().any(|c| c.name == "vaultsync-install")))
}

async fn through_apiserver(
    report: &mut Report,
    client: &Client,
    ca: &[u8],
    port: u16,
) -> Result<()> {
    let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": WEBHOOK},
        "webhooks": [{
            "name": "inject.vaultsync.dev",
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/mutate-pods"),
                             "caBundle": k8s_openapi::ByteString(ca.to_vec())},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
            "matchConditions": [{"name": "opted-in", "expression":
                "has(object.metadata.annotations) && 'vaultsync.dev/inject' in object.metadata.annotations && object.metadata.annotations['vaultsync.dev/inject'] == 'true'"}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NS}},
            "failurePolicy": "Fail", "sideEffects": "None",
            "admissionReviewVersions": ["v1"], "timeoutSeconds": 10,
        }],
    }))?;
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &config)
        .await
        .context("register the webhook")?;
    let opted_in: Pod = serde_json::from_value(pod(NS, true))?;
    // The apiserver picks the new configuration up after a moment.
    wait_for(Duration::from_secs(30), "the webhook to mutate", || async {
        dry_run(client, NS, &opted_in).await.ok().filter(|m| *m)
    })
    .await?;
    report.section(&format!(
        "server-side dry-run pod creates through the apiserver, {APISERVER_N} sequential each"
    ));
    for (what, ns, annotated) in [
        ("opted-in pod (webhook called)", NS, true),
        ("pod without the annotation (matchConditions)", NS, false),
        ("baseline: a namespace not selected", NS_OTHER, false),
    ] {
        let pod: Pod = serde_json::from_value(pod(ns, annotated))?;
        let ms = timed(WARMUP, APISERVER_N, || async {
            if dry_run(client, ns, &pod).await? != annotated {
                bail!("{what}: injected = {}, expected {annotated}", !annotated);
            }
            Ok(())
        })
        .await?;
        report.row(what, summary(&ms));
    }
    Ok(())
}

// 3. The wrapper ------------------------------------------------------------------------

fn vaultsync_binary() -> Result<PathBuf> {
    // The examples run from <target>/release/examples/; the binary is <target>/release/.
    let exe = std::env::current_exe()?;
    let release = exe.parent().and_then(|p| p.parent()).context("exe dir")?;
    Some(release.join("vaultsync"))
        .filter(|p| p.is_file())
        .context("target/release/vaultsync is missing: run `cargo build --release` first")
}

/// Runs `command` to its end; fails with its stderr unless it succeeded.
fn run(command: &mut Command) -> Result<()> {
    let output = command.output().context("spawn")?;
    if !output.status.success() {
        bail!("{command:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

async fn wrapper(report: &mut Report, client: &Client, dir: &Path) -> Result<()> {
    let request: TokenRequest = serde_json::from_value(json!({
        "spec": {"audiences": ["vault"], "expirationSeconds": 600}
    }))?;
    let token = Api::<ServiceAccount>::namespaced(client.clone(), NS)
        .create_token_request("app", &PostParams::default(), &request)
        .await
        .context("TokenRequest for the tenant's service account")?
        .status
        .and_then(|s| s.token)
        .context("TokenRequest without a token")?;
    let token_file = dir.join("token");
    std::fs::write(&token_file, token)?;
    let binary = vaultsync_binary()?;
    let base = [
        ("VAULTSYNC_VAULT_ADDR", common::env("VAULT_ADDR", MAKE)?),
        ("VAULTSYNC_VAULT_AUTH_MOUNT", "kubernetes".into()),
        ("VAULTSYNC_VAULT_ROLE", ROLE.into()),
        ("VAULTSYNC_TOKEN_FILE", token_file.display().to_string()),
    ];
    report.section(&format!(
        "`vaultsync env -- /bin/true`, KV v2 references: start-up to exec and exit, {WRAPPER_N} runs each"
    ));
    // The floor: /bin/true alone; otherwise /bin/true through the wrapper, with `refs`.
    let command = |refs: Option<&[&str]>| {
        let mut c = Command::new(refs.map_or(Path::new("/bin/true"), |_| &binary));
        c.env_clear();
        for p in refs.unwrap_or_default() {
            c.env(p, format!("vault:secret/data/{NS}/{p}#password"));
        }
        if refs.is_some() {
            c.args(["env", "--", "/bin/true"]).envs(base.clone());
        }
        c
    };
    for (what, mut command) in [
        ("/bin/true alone (process start floor)", command(None)),
        ("no reference (no login)", command(Some(&[]))),
        (
            "1 reference (login + 1 read)",
            command(Some(&KV_PATHS[..1])),
        ),
        (
            "3 references, 3 paths (login + 3 reads)",
            command(Some(&KV_PATHS)),
        ),
    ] {
        let ms = timed(WRAPPER_WARMUP, WRAPPER_N, || {
            let done = run(&mut command);
            async move { done }
        });
        report.row(what, summary(&ms.await?));
    }
    Ok(())
}

async fn setup(client: &Client, vault: &VaultClient) -> Result<()> {
    let policy = format!("path \"secret/data/{NS}/*\" {{ capabilities = [\"read\"] }}\n");
    create_tenant(client, vault, NS, LABEL, &policy).await?;
    create_namespace(client, NS_OTHER, LABEL).await?;
    let account: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "app"}}))?;
    Api::<ServiceAccount>::namespaced(client.clone(), NS_OTHER)
        .create(&PostParams::default(), &account)
        .await?;
    for path in KV_PATHS {
        let data = json!({"password": format!("bench-{path}-{:016x}", rand::random::<u64>()),
                          "username": "app"});
        vaultrs::kv2::set(vault, "secret", &format!("{NS}/{path}"), &data).await?;
    }
    Ok(())
}

async fn cleanup(client: &Client, vault: &VaultClient) -> Result<()> {
    let webhooks = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let _ = webhooks.delete(WEBHOOK, &DeleteParams::default()).await;
    delete_tenant_vault(vault, NS).await;
    for path in KV_PATHS {
        let _ = vaultrs::kv2::delete_metadata(vault, "secret", &format!("{NS}/{path}")).await;
    }
    delete_namespaces(client, NS_PREFIX, Duration::from_secs(120)).await?;
    Ok(())
}

async fn bench(client: &Client, vault: &VaultClient, dir: &Path) -> Result<()> {
    setup(client, vault).await?;
    let ca_file = PathBuf::from(common::env("K8S_CA_FILE", MAKE)?);
    let (ca, pki) = (std::fs::read(&ca_file)?, ca_file.parent().context("pki")?);
    let image = std::env::var("VAULTSYNC_IMAGE").unwrap_or_else(|_| "vaultsync.local/bench".into());
    let port = common::operator::free_port()?;
    let mut op = common::start_operator(
        dir,
        common::OperatorConfig {
            watch_namespaces: &format!("[{NS}]"),
            concurrency: 4,
            vault_addr: common::env("VAULT_ADDR", MAKE)?,
            log_level: common::bench_log_level(),
            extra: format!(
                "admission:\n  enabled: true\n  address: 127.0.0.1:{port}\n  certFile: {}\n  keyFile: {}\n\
                 injection:\n  enabled: true\n  image: {image}\n",
                pki.join("apiserver.crt").display(),
                pki.join("apiserver.key").display()
            ),
        },
    )?;
    if !op.wait_ready(Duration::from_secs(60)).await {
        bail!("the operator is not ready; see {}", op.log.display());
    }
    let mut report = Report::new(format!(
        "vaultsync bench: pod injection (operator log: {})",
        op.log.display()
    ));
    direct(&mut report, &ca, port).await?;
    through_apiserver(&mut report, client, &ca, port).await?;
    wrapper(&mut report, client, dir).await?;
    report.notes = vec![
        format!(
            "sequential requests, after {WARMUP} unmeasured ones ({WRAPPER_WARMUP} for the wrapper); handler alone: one HTTP/1.1 keep-alive TLS connection"
        ),
        format!(
            "operator: release build, log level {}; load average {}",
            common::bench_log_level(),
            common::load_average()
        ),
    ];
    report.print();
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let started = Instant::now();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-inject");
    std::fs::create_dir_all(&dir)?;
    let client = common::kube_client(MAKE).await?;
    let vault = common::root_vault(MAKE)?;
    install_crds(&client).await?;
    cleanup(&client, &vault).await?;
    let result = bench(&client, &vault, &dir).await;
    let cleaned = cleanup(&client, &vault).await;
    println!("bench-inject took {:.1} s", started.elapsed().as_secs_f64());
    result.and(cleaned)
}
