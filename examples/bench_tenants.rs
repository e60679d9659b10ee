//! `make bench-tenants` (part of `make bench`): what one hostile tenant's resources do to
//! the operator's memory, and whether the operator's memory follows its resources.
//!
//! 1. Peak RSS: after a warm-up sync, hostile VaultSecrets are applied one at a time (the
//!    memory-bomb template, the largest templates, labels and annotations the schema
//!    admits, a near-1 MiB Vault value) and the rise of the operator's peak RSS (VmHWM)
//!    is printed for each. Target: no resource raises it by more than 16 MiB.
//! 2. Churn: `BENCH_CHURN` (default 5000) VaultSecrets, each logging in as a service
//!    account of its own, are created, synced and deleted; RSS before and after (once
//!    their tokens are revoked and their Secrets gone, and the operator has been quiet for
//!    30 s, as before) is printed. Target: within 10% of where it started.
//!
//! Runs against the local environment (`make env-up`) with the release build.

mod common;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use common::operator::ProcStats;
use common::setup::wait_for;
use common::{OperatorConfig, kube_client, root_vault};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

const MAKE: &str = "make bench";
const NS: &str = "bench-tenants";
/// Tenant B of the fairness figure.
const NS_B: &str = "bench-tenants-b";
const ROLE: &str = "bench-tenants-any";
const MIB: f64 = 1024.0;

fn vault_secrets(client: &kube::Client) -> Api<DynamicObject> {
    vault_secrets_in(client, NS)
}

fn vault_secrets_in(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "vaultsync.dev",
        "v1alpha1",
        "VaultSecret",
    ));
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// A VaultSecret reading `secret/bench-tenants/<path>` as service account `sa`.
fn manifest(name: &str, sa: &str, path: &str, output: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "vaultsync.dev/v1alpha1", "kind": "VaultSecret",
        "metadata": {"name": name, "labels": {"bench": "tenants"}},
        "spec": {
            "vault": {
                "auth": {"kubernetes": {"role": ROLE, "serviceAccountName": sa}},
                "kv": {"mount": "secret", "path": format!("{NS}/{path}")},
            },
            "output": {"secret": output},
        },
    })
}

async fn apply(client: &kube::Client, obj: &serde_json::Value) -> anyhow::Result<()> {
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    vault_secrets(client)
        .patch(
            &name,
            &PatchParams::apply("bench").force(),
            &Patch::Apply(obj),
        )
        .await
        .with_context(|| format!("apply VaultSecret {name}"))?;
    Ok(())
}

/// Waits until the resource has a Ready condition for its generation; returns its reason.
async fn settled(client: &kube::Client, name: &str) -> anyhow::Result<String> {
    let api = vault_secrets(client);
    wait_for(
        Duration::from_secs(60),
        &format!("VaultSecret {name} to settle"),
        || {
            let api = api.clone();
            async move {
                let obj = api.get(name).await.ok()?;
                let generation = obj.metadata.generation;
                let ready = obj.data["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == "Ready")?
                    .clone();
                (ready["observedGeneration"].as_i64() == generation)
                    .then(|| ready["reason"].as_str().unwrap_or_default().to_string())
            }
        },
    )
    .await
}

async fn setup(client: &kube::Client) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in [NS, NS_B] {
        if namespaces.get_opt(ns).await?.is_some() {
            let _ = namespaces.delete(ns, &DeleteParams::default()).await;
            wait_for(
                Duration::from_secs(120),
                "the previous run's namespace to go",
                || {
                    let namespaces = namespaces.clone();
                    async move { namespaces.get_opt(ns).await.ok()?.is_none().then_some(()) }
                },
            )
            .await?;
        }
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
            )
            .await?;
        let account: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "app"}}))?;
        Api::<ServiceAccount>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &account)
            .await?;
    }
    let vault = root_vault(MAKE)?;
    let policy = format!(
        "path \"secret/data/{NS}/*\" {{ capabilities = [\"read\"] }}\n\
         path \"auth/token/renew-self\" {{ capabilities = [\"update\"] }}\n\
         path \"auth/token/revoke-self\" {{ capabilities = [\"update\"] }}\n"
    );
    vaultrs::sys::policy::set(&vault, ROLE, &policy).await?;
    vaultrs::auth::kubernetes::role::create(
        &vault,
        "kubernetes",
        ROLE,
        Some(
            &mut vaultrs::api::auth::kubernetes::requests::CreateKubernetesRoleRequest::builder()
                .bound_service_account_names(vec!["*".to_string()])
                .bound_service_account_namespaces(vec![NS.to_string(), NS_B.to_string()])
                .audience("vault")
                .token_policies(vec![ROLE.to_string()])
                .token_no_default_policy(true)
                .token_ttl("10m"),
        ),
    )
    .await
    .context("kubernetes auth role (is auth/kubernetes configured? make env-up)")?;
    let password: String = (0..32).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    vaultrs::kv2::set(
        &vault,
        "secret",
        &format!("{NS}/app"),
        &json!({"username": "app", "password": password}),
    )
    .await?;
    // Near the Secret's 1 MiB: the largest value a tenant's Vault path can hand over.
    vaultrs::kv2::set(
        &vault,
        "secret",
        &format!("{NS}/big"),
        &json!({"blob": "b".repeat(900 * 1024)}),
    )
    .await?;
    Ok(())
}

async fn create_accounts(client: &kube::Client, n: usize) -> anyhow::Result<()> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), NS);
    let names: Vec<String> = (0..n).map(|i| format!("sa-{i}")).collect();
    for chunk in names.chunks(32) {
        let creates = chunk.iter().map(|name| {
            let api = api.clone();
            let account: ServiceAccount =
                serde_json::from_value(json!({"metadata": {"name": name}})).expect("account");
            async move {
                api.create(&PostParams::default(), &account)
                    .await
                    .map(|_| ())
            }
        });
        for result in futures::future::join_all(creates).await {
            result.context("create service account")?;
        }
    }
    Ok(())
}

/// Creates `n` resources (one identity each), waits until all are Ready, deletes them,
/// and waits until their tokens are revoked and their Secrets gone. Returns the time to
/// sync, and the operator's memory with all synced and after.
async fn churn_cycle(
    client: &kube::Client,
    op: &common::Operator,
    n: usize,
    cycle: usize,
) -> anyhow::Result<(Duration, ProcStats, ProcStats)> {
    let started = Instant::now();
    let revoked_before = revoked_tokens(op).await;
    let names: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    for (i, chunk) in names.chunks(32).enumerate() {
        let applies = chunk.iter().enumerate().map(|(j, name)| {
            let obj = manifest(name, &format!("sa-{}", i * 32 + j), "app", json!({}));
            let client = client.clone();
            async move { apply(&client, &obj).await }
        });
        for result in futures::future::join_all(applies).await {
            result?;
        }
    }
    let api = vault_secrets(client);
    wait_for(
        Duration::from_secs(900),
        &format!("cycle {cycle}: every resource to be Ready"),
        || {
            let api = api.clone();
            async move {
                let ready = ready_count(&api, 'c').await.ok()?;
                (ready == n).then_some(())
            }
        },
    )
    .await?;
    let synced = started.elapsed();
    let loaded = op.stats();
    for chunk in names.chunks(64) {
        let deletes = chunk.iter().map(|name| {
            let api = api.clone();
            async move { api.delete(name, &DeleteParams::default()).await.map(|_| ()) }
        });
        futures::future::join_all(deletes).await;
    }
    // A token unused at two housekeeping passes in a row is revoked.
    wait_for(
        Duration::from_secs(300),
        &format!("cycle {cycle}: the tokens to be revoked"),
        || async { (revoked_tokens(op).await >= revoked_before + n as f64).then_some(()) },
    )
    .await?;
    // The cycle is over once Kubernetes' garbage collector has deleted their Secrets too:
    // until then the operator's cache holds them, as it should.
    wait_for(
        Duration::from_secs(600),
        &format!("cycle {cycle}: the garbage collector to delete their Secrets"),
        || async { (cycle_secrets(client).await.ok()? == 0).then_some(()) },
    )
    .await?;
    settle().await;
    Ok((synced, loaded, op.stats()))
}

/// The managed Secrets of the churn's resources (named `c<i>`) still in the namespace.
async fn cycle_secrets(client: &kube::Client) -> anyhow::Result<usize> {
    let secrets = Api::<Secret>::namespaced(client.clone(), NS)
        .list_metadata(&ListParams::default().labels("app.kubernetes.io/managed-by=vaultsync"))
        .await?;
    Ok(secrets
        .items
        .iter()
        .filter(|s| {
            s.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with('c'))
        })
        .count())
}

/// Lets the operator go quiet before its memory is read, before a cycle as after one:
/// jemalloc gives dirty pages back after about ten seconds, muzzy ones ten more.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(30)).await;
}

/// Tenant A applies 1000 resources at once; tenant B applies one during the burst. Prints
/// how long B's waited to be Ready, and how much of A's burst was done by then.
async fn fairness(client: &kube::Client) -> anyhow::Result<()> {
    println!(
        "{:<62}{:>16}",
        "[fairness: tenant A applies 1000 resources at once]", ""
    );
    let a = vault_secrets(client);
    let burst = async {
        let names: Vec<String> = (0..1000).map(|i| format!("f{i}")).collect();
        for chunk in names.chunks(64) {
            let applies = chunk.iter().map(|name| {
                let obj = manifest(name, "app", "app", json!({}));
                async move { apply(client, &obj).await }
            });
            for result in futures::future::join_all(applies).await {
                result?;
            }
        }
        anyhow::Ok(())
    };
    let b = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut obj = manifest("b", "app", "app", json!({}));
        obj["metadata"]["namespace"] = json!(NS_B);
        let started = Instant::now();
        vault_secrets_in(client, NS_B)
            .patch(
                "b",
                &PatchParams::apply("bench").force(),
                &Patch::Apply(&obj),
            )
            .await?;
        let api = vault_secrets_in(client, NS_B);
        wait_for(
            Duration::from_secs(120),
            "tenant B's resource to be Ready",
            || {
                let api = api.clone();
                async move {
                    let obj = api.get("b").await.ok()?;
                    obj.data["status"]["conditions"]
                        .as_array()?
                        .iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                        .then_some(())
                }
            },
        )
        .await?;
        anyhow::Ok(started.elapsed())
    };
    let (burst, waited) = tokio::join!(burst, b);
    burst?;
    let waited = waited?;
    let done = ready_count(&a, 'f').await?;
    println!(
        "{:<62}{:>16}  {:<10}{}",
        format!("tenant B's one resource Ready after (A: {done}/1000 Ready now)"),
        format!("{:.2} s", waited.as_secs_f64()),
        "<= 5 s",
        if waited <= Duration::from_secs(5) {
            "ok"
        } else {
            "MISSED"
        }
    );
    Ok(())
}

/// How many bench VaultSecrets whose name starts with `prefix` are Ready.
async fn ready_count(api: &Api<DynamicObject>, prefix: char) -> anyhow::Result<usize> {
    let list = api
        .list(&ListParams::default().labels("bench=tenants"))
        .await?;
    Ok(list
        .items
        .iter()
        .filter(|o| {
            o.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with(prefix))
        })
        .filter(|o| {
            o.data["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .count())
}

/// Bytes of memory in use by the operator, from its allocator's statistics.
async fn heap_allocated(op: &common::Operator) -> f64 {
    op.metrics()
        .await
        .sum("vaultsync_heap_allocated_bytes", |_| true)
}

async fn heap_resident(op: &common::Operator) -> f64 {
    op.metrics()
        .await
        .sum("vaultsync_heap_resident_bytes", |_| true)
}

async fn revoked_tokens(op: &common::Operator) -> f64 {
    op.metrics()
        .await
        .sum("vaultsync_backend_requests_total", |l| {
            l.get("operation").map(String::as_str) == Some("revoke_token")
        })
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / MIB)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let churn: usize = std::env::var("BENCH_CHURN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let client = kube_client(MAKE).await?;
    common::setup::install_crds(&client).await?;
    setup(&client).await?;
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-tenants");
    std::fs::create_dir_all(&dir)?;
    let op = common::start_operator(
        &dir,
        OperatorConfig {
            watch_namespaces: &format!("[{NS}, {NS_B}]"),
            concurrency: 16,
            vault_addr: common::env("VAULT_ADDR", MAKE)?,
            log_level: "info".into(),
            extra: "housekeepingInterval: 5s\n".into(),
        },
    )?;

    println!(
        "vaultsync bench: hostile tenants and memory (operator log: {})",
        dir.display()
    );
    println!("{:-<96}", "");
    println!("{:<62}{:>16}  {:<10}", "figure", "value", "target");
    println!("{:-<96}", "");
    apply(&client, &manifest("warm", "app", "app", json!({}))).await?;
    settled(&client, "warm").await?;
    let start = op.stats();
    println!(
        "{:<62}{:>16}",
        "[peak RSS, one hostile resource at a time]", ""
    );
    println!(
        "{:<62}{:>16}",
        "after a warm-up sync: RSS / peak",
        format!("{} / {}", mib(start.rss_kib), mib(start.hwm_kib))
    );
    let bomb = r#"{% set a="x"*10000 %}{% set b=a|replace("x",a) %}{{ (b~b)|length }}"#;
    let labels: serde_json::Map<String, serde_json::Value> = (0..64)
        .map(|i| (format!("l{i:02}"), json!("v".repeat(63))))
        .collect();
    let annotations: serde_json::Map<String, serde_json::Value> = (0..64)
        .map(|i| (format!("a{i:02}"), json!("a".repeat(4096))))
        .collect();
    let templates: serde_json::Map<String, serde_json::Value> = (0..64)
        .map(|i| {
            (
                format!("t{i:02}"),
                json!(format!("{{{{ password * 500 }}}}{}", " ".repeat(8000))),
            )
        })
        .collect();
    let hostile = [
        (
            "memory-bomb template (the issue's 90 bytes)",
            manifest("bomb", "app", "app", json!({"template": {"x": bomb}})),
        ),
        (
            "64 templates of 8 KiB rendering 1.5 MiB in all",
            manifest("templates", "app", "app", json!({"template": templates})),
        ),
        (
            "64 labels and 64 annotations of 4 KiB",
            manifest(
                "metadata",
                "app",
                "app",
                json!({"labels": labels, "annotations": annotations}),
            ),
        ),
        (
            "a 900 KiB value from the tenant's Vault path",
            manifest("big", "app", "big", json!({})),
        ),
    ];
    let mut worst = 0u64;
    let mut peak = start.hwm_kib;
    for (what, obj) in &hostile {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        apply(&client, obj).await?;
        let reason = settled(&client, name).await?;
        let now = op.stats();
        let rise = now.hwm_kib.saturating_sub(peak);
        worst = worst.max(rise);
        peak = peak.max(now.hwm_kib);
        let verdict = if rise <= 16 * 1024 { "ok" } else { "MISSED" };
        println!(
            "{:<62}{:>16}  {:<10}{verdict}",
            format!("  {what} ({reason})"),
            format!("+{}", mib(rise)),
            "<= 16 MiB"
        );
    }
    println!(
        "{:<62}{:>16}  {:<10}{}",
        "worst peak-RSS rise of one resource",
        mib(worst),
        "<= 16 MiB",
        if worst <= 16 * 1024 { "ok" } else { "MISSED" }
    );

    println!(
        "{:<62}{:>16}",
        format!("[churn: {churn} resources, one identity each, twice]"),
        ""
    );
    create_accounts(&client, churn).await?;
    settle().await;
    let start = op.stats();
    let heap_start = heap_allocated(&op).await;
    println!(
        "{:<62}{:>16}",
        "before: allocator resident / anon RSS / file RSS",
        format!(
            "{:.1} / {} / {}",
            heap_resident(&op).await / MIB / MIB,
            mib(start.rss_anon_kib),
            mib(start.rss_file_kib)
        )
    );
    for cycle in 1..=2 {
        let (synced, loaded, after) = churn_cycle(&client, &op, churn, cycle).await?;
        let heap_after = heap_allocated(&op).await;
        let ratio = after.rss_kib as f64 / start.rss_kib.max(1) as f64;
        println!(
            "{:<62}{:>16}",
            format!("cycle {cycle}: created and synced (one login each) in"),
            format!("{:.1} s", synced.as_secs_f64())
        );
        println!(
            "{:<62}{:>16}",
            format!("cycle {cycle}: RSS before / with all synced"),
            format!("{} / {}", mib(start.rss_kib), mib(loaded.rss_kib))
        );
        println!(
            "{:<62}{:>16}  {:<10}{}",
            format!("cycle {cycle}: RSS after deleting all"),
            format!("{} ({:+.1}%)", mib(after.rss_kib), (ratio - 1.0) * 100.0),
            "<= +10%",
            if ratio <= 1.10 { "ok" } else { "MISSED" }
        );
        println!(
            "{:<62}{:>16}",
            format!("cycle {cycle}: heap in use (jemalloc) before / after"),
            format!(
                "{:.1} / {:.1} MiB",
                heap_start / MIB / MIB,
                heap_after / MIB / MIB
            )
        );
        // Where the rest of the RSS is: the allocator's pages beyond the heap, other
        // anonymous memory (stacks, C libraries), and the binary's own pages.
        println!(
            "{:<62}{:>16}",
            format!("cycle {cycle}: allocator resident / anon RSS / file RSS, after"),
            format!(
                "{:.1} / {} / {}",
                heap_resident(&op).await / MIB / MIB,
                mib(after.rss_anon_kib),
                mib(after.rss_file_kib)
            )
        );
    }
    fairness(&client).await?;
    println!("{:-<96}", "");
    drop(op);
    for ns in [NS, NS_B] {
        let _ = Api::<Namespace>::all(client.clone())
            .delete(ns, &DeleteParams::default())
            .await;
    }
    let vault = root_vault(MAKE)?;
    let _ = vaultrs::auth::kubernetes::role::delete(&vault, "kubernetes", ROLE).await;
    let _ = vaultrs::sys::policy::delete(&vault, ROLE).await;
    Ok(())
}
