//! `make bench`: a cold start and one steady-state refresh cycle of a release-built
//! operator against the local environment, printed as a table of figures and targets.
//!
//! Scenario: 1000 VaultSecrets over 50 namespaces (`bench-0` .. `bench-49`, 20 each),
//! each reading its own KV v2 secret as its namespace's tenant (Kubernetes auth, service
//! account `app`, one OpenBao role and policy per namespace).
//!
//! 1. Cold start: every CR is applied *before* the operator starts; the clock starts when
//!    the operator process is spawned and stops when a watch has seen all 1000 with
//!    Ready=True. Per-object latency is "operator start -> Ready observed by the watch"
//!    (and, at 1 s resolution, "operator start -> first status.lastSyncTime").
//! 2. Steady state: the CRs ask for `refreshInterval: 20s` with `ttl: 3h` (the default),
//!    so one refresh cycle of unchanged data takes about 20 s. The cycle ends when every
//!    object's status.lastSyncTime has moved past its value at the start of the cycle.
//!
//! Apiserver writes come from the kube-apiserver's own `/metrics`, so they include every
//! client (the operator, OpenBao's TokenReviews, kube-controller-manager, and any test
//! running at the same time); the breakdown by resource tells them apart.
//!
//! Run with `make bench` (or `cargo build --release && cargo run --release --example
//! bench` after `source target/env/env.sh`).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use common::{
    OperatorConfig, Samples, apiserver_writes, bench_namespaces, delta, fmt_top, install_crds,
    percentile, wait_for,
};
use futures::{StreamExt, TryStreamExt, stream};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use vaultrs::client::VaultClient;
use vaultsync::api::VaultSecret;

const MAKE: &str = "make bench";
const NS_PREFIX: &str = "bench-";
const NAMESPACES: usize = 50;
const PER_NAMESPACE: usize = 20;
const TOTAL: usize = NAMESPACES * PER_NAMESPACE;
const CONCURRENCY: usize = 32;
const OPERATOR_CONCURRENCY: usize = 32;
const REFRESH: &str = "20s";
const TTL: &str = "3h";
const LABEL: &str = "vaultsync.dev/bench";
const FIELD_MANAGER: &str = "vaultsync-bench";
const COLD_START_TIMEOUT: Duration = Duration::from_secs(120);
const CYCLE_TIMEOUT: Duration = Duration::from_secs(90);

const TARGET_READY_SECS: f64 = 20.0;
const TARGET_RSS_MIB: f64 = 64.0;

fn ns_name(n: usize) -> String {
    format!("{NS_PREFIX}{n}")
}

fn is_bench_namespace(name: &str) -> bool {
    common::is_numbered(name, NS_PREFIX)
}

fn env(name: &str) -> anyhow::Result<String> {
    common::env(name, MAKE)
}

/// `watch_namespaces` is YAML: `[]` for all namespaces, or a list.
fn start_operator(
    dir: &std::path::Path,
    watch_namespaces: &str,
) -> anyhow::Result<common::Operator> {
    common::start_operator(
        dir,
        OperatorConfig {
            watch_namespaces,
            concurrency: OPERATOR_CONCURRENCY,
            vault_addr: env("VAULT_ADDR")?,
            // VAULTSYNC_BENCH_LOG overrides the level, such as `debug` to see why reconciles run.
            log_level: std::env::var("VAULTSYNC_BENCH_LOG").unwrap_or_else(|_| "info".into()),
            extra: String::new(),
        },
    )
}

// ---------------------------------------------------------------------------------------
// Setup and cleanup

/// Deletes every `bench-<n>` namespace and waits up to `timeout` until they are gone.
async fn delete_namespaces(client: &Client, timeout: Duration) -> anyhow::Result<usize> {
    let api = Api::<Namespace>::all(client.clone());
    let names = bench_namespaces(client, NS_PREFIX).await?;
    for name in &names {
        let _ = api.delete(name, &DeleteParams::default()).await;
    }
    if !names.is_empty() {
        common::wait_namespaces_gone(
            client,
            NS_PREFIX,
            timeout,
            "the bench namespaces to be deleted",
        )
        .await?;
    }
    Ok(names.len())
}

/// One tenant per namespace: the namespace, service account `app`, a policy reading
/// `secret/data/bench/<ns>/*` and a Kubernetes auth role bound to the account.
async fn create_tenant(client: &Client, vault: &VaultClient, n: usize) -> anyhow::Result<String> {
    let ns = ns_name(n);
    let policy = format!("path \"secret/data/bench/{ns}/*\" {{ capabilities = [\"read\"] }}\n");
    common::create_tenant(client, vault, &ns, LABEL, &policy).await
}

fn kv_path(n: usize, i: usize) -> String {
    format!("bench/{}/s{i}", ns_name(n))
}

fn manifest(n: usize, i: usize) -> serde_json::Value {
    let ns = ns_name(n);
    json!({
        "apiVersion": "vaultsync.dev/v1alpha1",
        "kind": "VaultSecret",
        "metadata": {"name": format!("s{i}"), "namespace": ns, "labels": {LABEL: "true"}},
        "spec": {
            "vault": {
                "auth": {"kubernetes": {"role": format!("{ns}-app"), "serviceAccountName": "app"}},
                "kv": {"mount": "secret", "path": kv_path(n, i)},
            },
            "refreshInterval": REFRESH,
            "ttl": TTL,
        }
    })
}

fn all_pairs() -> Vec<(usize, usize)> {
    common::all_pairs(NAMESPACES, PER_NAMESPACE)
}

async fn cleanup_vault(vault: &VaultClient) {
    stream::iter(all_pairs())
        .for_each_concurrent(CONCURRENCY, |(n, i)| async move {
            let _ = vaultrs::kv2::delete_metadata(vault, "secret", &kv_path(n, i)).await;
        })
        .await;
    stream::iter(0..NAMESPACES)
        .for_each_concurrent(CONCURRENCY, |n| async move {
            common::delete_tenant_vault(vault, &ns_name(n)).await;
        })
        .await;
}

// ---------------------------------------------------------------------------------------
// Observation of the bench objects (only those, whatever else the operator reconciles)

#[derive(Default)]
struct Seen {
    /// When the watch first saw Ready=True.
    first_ready: Option<Instant>,
    /// status.lastSyncTime when first seen Ready.
    first_sync: Option<Timestamp>,
    /// The latest status.lastSyncTime.
    last_sync: Option<Timestamp>,
    reason: String,
    resource_version: String,
}

/// Counters of writes to bench objects, as seen by watches: every change of
/// resourceVersion after the first sight is one effective write.
#[derive(Clone, Copy, Default, Debug)]
struct Writes {
    cr: u64,
    secret_created: u64,
    secret_data: u64,
    secret_metadata: u64,
    secret_deleted: u64,
}

impl Writes {
    fn minus(self, before: Self) -> Self {
        Self {
            cr: self.cr - before.cr,
            secret_created: self.secret_created - before.secret_created,
            secret_data: self.secret_data - before.secret_data,
            secret_metadata: self.secret_metadata - before.secret_metadata,
            secret_deleted: self.secret_deleted - before.secret_deleted,
        }
    }
}

#[derive(Default)]
struct State {
    objects: HashMap<String, Seen>,
    /// Per bench Secret: resourceVersion and a digest of type and data.
    secrets: HashMap<String, (String, u64)>,
    writes: Writes,
}

type Observed = Arc<Mutex<State>>;

fn lock(state: &Observed) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn digest(secret: &Secret) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    secret.type_.hash(&mut h);
    if let Some(data) = &secret.data {
        for (k, v) in data {
            k.hash(&mut h);
            v.0.hash(&mut h);
        }
    }
    h.finish()
}

/// Watches the bench VaultSecrets (by label) and the Secrets vaultsync manages in the
/// bench namespaces, recording readiness, sync times and writes.
fn observe(client: &Client) -> (Observed, Vec<tokio::task::JoinHandle<()>>) {
    let state: Observed = Arc::default();
    let crs = Api::<VaultSecret>::all(client.clone());
    let config = watcher::Config::default().labels(&format!("{LABEL}=true"));
    let st = state.clone();
    let cr_task = tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(crs, config).default_backoff().applied_objects());
        while let Some(event) = events.next().await {
            let Ok(obj) = event else { continue };
            let now = Instant::now();
            let key = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
            let rv = obj.resource_version().unwrap_or_default();
            let status = obj.status.as_ref();
            let condition =
                status.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned());
            let last_sync = status.and_then(|s| s.last_sync_time.as_ref()).map(|t| t.0);
            let ready = condition.as_ref().is_some_and(|c| c.status == "True");
            let mut state = lock(&st);
            let entry = state.objects.entry(key).or_default();
            let changed = !entry.resource_version.is_empty() && entry.resource_version != rv;
            entry.resource_version = rv;
            entry.reason = condition.map(|c| c.reason).unwrap_or_default();
            entry.last_sync = last_sync.or(entry.last_sync);
            if ready && entry.first_ready.is_none() {
                entry.first_ready = Some(now);
                entry.first_sync = last_sync;
            }
            if changed {
                state.writes.cr += 1;
            }
        }
    });
    let secrets = Api::<Secret>::all(client.clone());
    let config = watcher::Config::default().labels("app.kubernetes.io/managed-by=vaultsync");
    let st = state.clone();
    let secret_task = tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(secrets, config).default_backoff());
        while let Some(event) = events.next().await {
            let Ok(event) = event else { continue };
            let (secret, deleted) = match event {
                watcher::Event::Apply(s) | watcher::Event::InitApply(s) => (s, false),
                watcher::Event::Delete(s) => (s, true),
                _ => continue,
            };
            let ns = secret.namespace().unwrap_or_default();
            if !is_bench_namespace(&ns) {
                continue;
            }
            let key = format!("{ns}/{}", secret.name_any());
            let rv = secret.resource_version().unwrap_or_default();
            let d = digest(&secret);
            let mut state = lock(&st);
            if deleted {
                state.secrets.remove(&key);
                state.writes.secret_deleted += 1;
                continue;
            }
            match state.secrets.insert(key, (rv.clone(), d)) {
                None => state.writes.secret_created += 1,
                Some((old_rv, _)) if old_rv == rv => {}
                Some((_, old)) if old != d => state.writes.secret_data += 1,
                Some(_) => state.writes.secret_metadata += 1,
            }
        }
    });
    (state, vec![cr_task, secret_task])
}

/// Logins of the bench identities, from OpenBao's token store: tokens issued by
/// `auth/kubernetes/login` to this run's service accounts, split at `split`.
async fn bench_logins(
    uids: &[String],
    since: Timestamp,
    split: Option<Timestamp>,
) -> anyhow::Result<(usize, usize)> {
    let addr = env("VAULT_ADDR")?;
    let token = env("VAULT_TOKEN")?;
    let http = reqwest::Client::new();
    let list: serde_json::Value = http
        .get(format!("{addr}/v1/auth/token/accessors?list=true"))
        .header("X-Vault-Token", &token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let accessors: Vec<String> = list["data"]["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter_map(|k| k.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let issued: Vec<Option<Timestamp>> = stream::iter(accessors)
        .map(|accessor| {
            let (http, addr, token) = (&http, &addr, &token);
            async move {
                let info: serde_json::Value = http
                    .post(format!("{addr}/v1/auth/token/lookup-accessor"))
                    .header("X-Vault-Token", token)
                    .json(&json!({"accessor": accessor}))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                let data = &info["data"];
                let uid = data["meta"]["service_account_uid"].as_str()?;
                if data["path"] != "auth/kubernetes/login" || !uids.iter().any(|u| u == uid) {
                    return None;
                }
                data["issue_time"].as_str()?.parse::<Timestamp>().ok()
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let issued: Vec<Timestamp> = issued
        .into_iter()
        .flatten()
        .filter(|t| *t >= since)
        .collect();
    let before = issued
        .iter()
        .filter(|t| split.is_none_or(|s| **t < s))
        .count();
    Ok((before, issued.len() - before))
}

// ---------------------------------------------------------------------------------------
// Operator metrics of interest

#[derive(Clone, Copy, Default)]
struct OpFigures {
    synced: f64,
    failed: f64,
    backend_requests: f64,
    logins: f64,
    logins_failed: f64,
    data_writes: f64,
    metadata_writes: f64,
}

impl OpFigures {
    fn from(samples: &Samples) -> Self {
        let result = |l: &BTreeMap<String, String>| l.get("result").cloned().unwrap_or_default();
        let outcome = |l: &BTreeMap<String, String>| l.get("outcome").cloned().unwrap_or_default();
        let part = |l: &BTreeMap<String, String>| l.get("part").cloned().unwrap_or_default();
        Self {
            synced: samples.sum("vaultsync_syncs_total", |l| result(l) == "Synced"),
            failed: samples.sum("vaultsync_syncs_total", |l| result(l) != "Synced"),
            backend_requests: samples.sum("vaultsync_backend_requests_total", |_| true),
            logins: samples.sum("vaultsync_vault_logins_total", |l| outcome(l) == "ok"),
            logins_failed: samples.sum("vaultsync_vault_logins_total", |l| outcome(l) != "ok"),
            data_writes: samples.sum("vaultsync_secret_writes_total", |l| part(l) == "data"),
            metadata_writes: samples
                .sum("vaultsync_secret_writes_total", |l| part(l) == "metadata"),
        }
    }

    fn minus(self, before: Self) -> Self {
        Self {
            synced: self.synced - before.synced,
            failed: self.failed - before.failed,
            backend_requests: self.backend_requests - before.backend_requests,
            logins: self.logins - before.logins,
            logins_failed: self.logins_failed - before.logins_failed,
            data_writes: self.data_writes - before.data_writes,
            metadata_writes: self.metadata_writes - before.metadata_writes,
        }
    }
}

fn breakdown(samples: &Samples, name: &str, labels: &[&str]) -> BTreeMap<String, f64> {
    samples.group(
        name,
        |_| true,
        |l| {
            labels
                .iter()
                .map(|k| l.get(*k).cloned().unwrap_or_default())
                .collect::<Vec<_>>()
                .join(" ")
        },
    )
}

// ---------------------------------------------------------------------------------------
// The report

struct Report {
    rows: Vec<(String, String, String, String)>,
    notes: Vec<String>,
}

impl Report {
    fn section(&mut self, title: &str) {
        self.rows.push((
            format!("[{title}]"),
            String::new(),
            String::new(),
            String::new(),
        ));
    }

    fn row(&mut self, figure: &str, value: String) {
        self.rows
            .push((figure.into(), value, String::new(), String::new()));
    }

    fn check(&mut self, figure: &str, value: String, target: &str, ok: bool) {
        self.rows.push((
            figure.into(),
            value,
            target.into(),
            if ok { "ok" } else { "MISS" }.into(),
        ));
    }

    /// A figure with a target that other objects may have polluted: judged only when
    /// `clean`.
    fn check_if(&mut self, figure: &str, value: String, target: &str, ok: bool, clean: bool) {
        if clean {
            self.check(figure, value, target, ok);
        } else {
            self.rows.push((
                figure.into(),
                value,
                target.into(),
                "(incl. other objects)".into(),
            ));
        }
    }

    fn print(&self) {
        let w0 = self
            .rows
            .iter()
            .filter(|r| !r.1.is_empty())
            .map(|r| r.0.len())
            .max()
            .unwrap_or(0);
        let w1 = self
            .rows
            .iter()
            .map(|r| r.1.len())
            .max()
            .unwrap_or(0)
            .max(5);
        let w2 = self
            .rows
            .iter()
            .map(|r| r.2.len())
            .max()
            .unwrap_or(0)
            .max(6);
        let line = "-".repeat(w0 + w1 + w2 + 12);
        println!();
        println!(
            "vaultsync bench: {TOTAL} VaultSecrets, {NAMESPACES} namespaces x {PER_NAMESPACE}, KV v2, Kubernetes auth per namespace"
        );
        println!("{line}");
        println!("{:<w0$}  {:>w1$}  {:<w2$}", "figure", "value", "target");
        println!("{line}");
        for (figure, value, target, verdict) in &self.rows {
            if value.is_empty() && target.is_empty() {
                println!("{figure}");
            } else {
                println!("{figure:<w0$}  {value:>w1$}  {target:<w2$}  {verdict}");
            }
        }
        println!("{line}");
        for note in &self.notes {
            println!("{note}");
        }
    }
}

// ---------------------------------------------------------------------------------------
/// VaultSecrets outside the bench namespaces: an all-namespaces operator reconciles
/// them too, so its own metrics include their work.
async fn foreign_objects(client: &Client) -> usize {
    Api::<VaultSecret>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .iter()
                .filter(|o| !is_bench_namespace(&o.namespace().unwrap_or_default()))
                .count()
        })
        .unwrap_or(0)
}

fn per_object(n: u64) -> String {
    format!("{n} ({:.2}/obj)", n as f64 / TOTAL as f64)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir)?;
    // VAULTSYNC_BENCH_SCOPE=namespaces lists the bench namespaces in watchNamespaces
    // instead of watching all, so that tests running at the same time are left alone.
    let scoped = std::env::var("VAULTSYNC_BENCH_SCOPE").is_ok_and(|v| v == "namespaces");
    let client = common::kube_client(MAKE).await?;
    let vault = common::root_vault(MAKE)?;
    let load = common::load_average();
    eprintln!("bench: load average before the run: {load}");

    install_crds(&client).await?;
    let t = Instant::now();
    let leftovers = delete_namespaces(&client, Duration::from_secs(180)).await?;
    if leftovers > 0 {
        eprintln!(
            "bench: deleted {leftovers} leftover bench namespaces in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    let foreign_start = foreign_objects(&client).await;

    // Tenants, sources and resources, all before the operator starts.
    let t = Instant::now();
    let uids: Vec<String> = stream::iter(0..NAMESPACES)
        .map(|n| create_tenant(&client, &vault, n))
        .buffer_unordered(16)
        .try_collect()
        .await?;
    let tenants_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    stream::iter(all_pairs())
        .map(|(n, i)| {
            let vault = &vault;
            async move {
                let value = json!({
                    "username": format!("app-{i}"),
                    "password": format!("pw-{n}-{i}-{:x}", rand::random::<u64>()),
                });
                vaultrs::kv2::set(vault, "secret", &kv_path(n, i), &value)
                    .await
                    .with_context(|| format!("kv put {}", kv_path(n, i)))
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    let kv_secs = t.elapsed().as_secs_f64();
    let (state, watch_tasks) = observe(&client);
    let t = Instant::now();
    stream::iter(all_pairs())
        .map(|(n, i)| {
            let client = client.clone();
            async move {
                Api::<VaultSecret>::namespaced(client, &ns_name(n))
                    .patch(
                        &format!("s{i}"),
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(&manifest(n, i)),
                    )
                    .await
                    .with_context(|| format!("apply VaultSecret {}/s{i}", ns_name(n)))
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    let apply_secs = t.elapsed().as_secs_f64();
    wait_for(Duration::from_secs(30), "the watch to see every CR", || {
        let n = lock(&state).objects.len();
        async move { (n >= TOTAL).then_some(()) }
    })
    .await?;
    eprintln!(
        "bench: setup: tenants {tenants_secs:.1} s, {TOTAL} KV puts {kv_secs:.1} s, {TOTAL} CRs applied in {apply_secs:.1} s"
    );

    // Cold start.
    let watch_namespaces = if scoped {
        format!(
            "[{}]",
            (0..NAMESPACES).map(ns_name).collect::<Vec<_>>().join(", ")
        )
    } else {
        "[]".to_string()
    };
    let writes_0 = apiserver_writes(&client).await?;
    let bench_0 = lock(&state).writes;
    let t0 = Instant::now();
    let t0_wall = Timestamp::now();
    let mut op = start_operator(&dir, &watch_namespaces)?;
    eprintln!(
        "bench: operator pid {} started, watching {} (log: {})",
        op.pid(),
        if scoped {
            "the bench namespaces"
        } else {
            "all namespaces"
        },
        op.log.display()
    );
    let mut ready_at = None;
    let mut died = false;
    while t0.elapsed() < COLD_START_TIMEOUT {
        let ready = lock(&state)
            .objects
            .values()
            .filter(|s| s.first_ready.is_some())
            .count();
        if ready >= TOTAL {
            ready_at = Some(t0.elapsed());
            break;
        }
        if !op.alive() {
            died = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cold = OpFigures::from(&op.metrics().await);
    let cold_proc = op.stats();
    let writes_1 = apiserver_writes(&client).await?;
    let bench_1 = lock(&state).writes;
    let (latencies, sync_latencies, not_ready) = {
        let state = lock(&state);
        let mut lat: Vec<f64> = state
            .objects
            .values()
            .filter_map(|s| s.first_ready.map(|r| (r - t0).as_secs_f64()))
            .collect();
        lat.sort_by(f64::total_cmp);
        let mut sync_lat: Vec<f64> = state
            .objects
            .values()
            .filter_map(|s| s.first_sync)
            .map(|ts| ts.duration_since(t0_wall).as_secs_f64())
            .collect();
        sync_lat.sort_by(f64::total_cmp);
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        for s in state.objects.values().filter(|s| s.first_ready.is_none()) {
            let reason = if s.reason.is_empty() {
                "no status yet".to_string()
            } else {
                s.reason.clone()
            };
            *reasons.entry(reason).or_default() += 1;
        }
        (lat, sync_lat, reasons)
    };
    match ready_at {
        Some(d) => eprintln!("bench: all {TOTAL} Ready after {:.2} s", d.as_secs_f64()),
        None => eprintln!(
            "bench: only {} of {TOTAL} Ready after {:.0} s{}",
            latencies.len(),
            t0.elapsed().as_secs_f64(),
            if died { ": the operator exited" } else { "" }
        ),
    }

    // Steady state: one refresh cycle of unchanged data.
    let mut steady = None;
    let mut t1_wall = None;
    if ready_at.is_some() {
        let before = OpFigures::from(&op.metrics().await);
        let writes_2 = apiserver_writes(&client).await?;
        let proc_2 = op.stats();
        let (bench_2, marks) = {
            let state = lock(&state);
            let marks: HashMap<String, Option<Timestamp>> = state
                .objects
                .iter()
                .map(|(k, s)| (k.clone(), s.last_sync))
                .collect();
            (state.writes, marks)
        };
        let t1 = Instant::now();
        t1_wall = Some(Timestamp::now());
        eprintln!("bench: waiting for one refresh cycle (refreshInterval {REFRESH}, ttl {TTL})");
        let mut done = None;
        let mut left = TOTAL;
        while t1.elapsed() < CYCLE_TIMEOUT && op.alive() {
            left = lock(&state)
                .objects
                .iter()
                .filter(|(k, s)| s.last_sync <= marks.get(*k).copied().flatten())
                .count();
            if left == 0 {
                done = Some(t1.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let after = OpFigures::from(&op.metrics().await);
        let writes_3 = apiserver_writes(&client).await?;
        let proc_3 = op.stats();
        let bench_3 = lock(&state).writes;
        steady = Some((
            done,
            left,
            after.minus(before),
            delta(&writes_3, &writes_2),
            proc_3.cpu_seconds - proc_2.cpu_seconds,
            bench_3.minus(bench_2),
        ));
    }
    let final_proc = op.stats();
    let final_samples = op.metrics().await;
    let total = OpFigures::from(&final_samples);
    op.stop();
    for task in &watch_tasks {
        task.abort();
    }
    let foreign_end = foreign_objects(&client).await;
    let logins = bench_logins(&uids, t0_wall, t1_wall).await;
    let log_problems = std::fs::read_to_string(&op.log)
        .map(|t| {
            t.lines()
                .filter(|l| l.contains("ERROR") || l.contains("WARN"))
                .count()
        })
        .unwrap_or(0);

    // Cleanup.
    let t = Instant::now();
    let deleted = delete_namespaces(&client, Duration::from_secs(120)).await;
    cleanup_vault(&vault).await;
    let cleanup_secs = t.elapsed().as_secs_f64();

    // Report.
    let mut report = Report {
        rows: Vec::new(),
        notes: Vec::new(),
    };
    let (cold_logins, steady_logins) = match &logins {
        Ok((a, b)) => (Some(*a), Some(*b)),
        Err(_) => (None, None),
    };
    let show = |n: Option<usize>| n.map_or("?".to_string(), |n| n.to_string());
    report.section(&format!(
        "cold start: CRs applied first, then the operator started (watching {}, concurrency {OPERATOR_CONCURRENCY})",
        if scoped { "the 50 bench namespaces" } else { "all namespaces" }
    ));
    let ready_secs = ready_at.map(|d| d.as_secs_f64());
    report.check(
        &format!("operator start -> all {TOTAL} Ready=True"),
        ready_secs.map_or_else(
            || format!("{} Ready", latencies.len()),
            |s| format!("{s:.2} s"),
        ),
        &format!("<= {TARGET_READY_SECS:.0} s"),
        ready_secs.is_some_and(|s| s <= TARGET_READY_SECS),
    );
    report.row(
        "first object Ready (startup cost)",
        format!("{:.2} s", percentile(&latencies, 0.0)),
    );
    report.row(
        "per-object latency p50 / p99 (start -> Ready seen)",
        format!(
            "{:.2} / {:.2} s",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99)
        ),
    );
    report.row(
        "  start -> status.lastSyncTime p50 / p99 (1 s res.)",
        format!(
            "{:.0} / {:.0} s",
            percentile(&sync_latencies, 0.5),
            percentile(&sync_latencies, 0.99)
        ),
    );
    let cold_bench = bench_1.minus(bench_0);
    report.row(
        "bench CR writes (status, resourceVersion moves)",
        per_object(cold_bench.cr),
    );
    report.row(
        "bench Secret writes create / data / metadata",
        format!(
            "{} / {} / {}",
            cold_bench.secret_created, cold_bench.secret_data, cold_bench.secret_metadata
        ),
    );
    report.check(
        "OpenBao logins of the bench identities",
        show(cold_logins),
        &format!("<= {NAMESPACES}"),
        cold_logins.is_some_and(|n| n <= NAMESPACES),
    );
    let cold_writes = delta(&writes_1, &writes_0);
    report.row(
        "apiserver writes, all clients",
        format!("{}", cold_writes.values().sum::<f64>()),
    );
    report.row(
        "operator: syncs ok / failed",
        format!("{} / {}", cold.synced, cold.failed),
    );
    report.row(
        "operator: OpenBao requests / logins",
        format!(
            "{} / {}",
            cold.backend_requests,
            cold.logins + cold.logins_failed
        ),
    );
    report.row(
        "operator: Secret writes data / metadata",
        format!("{} / {}", cold.data_writes, cold.metadata_writes),
    );
    report.row(
        "operator CPU (utime+stime)",
        format!("{:.2} s", cold_proc.cpu_seconds),
    );
    report.row(
        "operator RSS at all Ready",
        format!("{:.1} MiB", cold_proc.rss_kib as f64 / 1024.0),
    );

    if let Some((done, left, figures, writes, cpu, bench)) = &steady {
        report.section(&format!(
            "steady state: one refresh cycle of unchanged data (refreshInterval {REFRESH}, ttl {TTL})"
        ));
        report.row(
            "cycle (every lastSyncTime moved once)",
            done.map_or_else(
                || format!("incomplete: {left} left"),
                |d| format!("{:.1} s", d.as_secs_f64()),
            ),
        );
        report.check(
            "bench Secret writes data",
            format!("{}", bench.secret_data),
            "0",
            bench.secret_data == 0 && done.is_some(),
        );
        report.row(
            "bench Secret writes metadata / created / deleted",
            format!(
                "{} / {} / {}",
                bench.secret_metadata, bench.secret_created, bench.secret_deleted
            ),
        );
        report.row("bench CR writes (status)", per_object(bench.cr));
        report.row(
            "OpenBao logins of the bench identities",
            show(steady_logins),
        );
        report.row(
            "apiserver writes, all clients",
            format!("{}", writes.values().sum::<f64>()),
        );
        report.row(
            "operator: syncs ok / failed",
            format!("{} / {}", figures.synced, figures.failed),
        );
        report.check_if(
            "operator: Secret writes data",
            format!("{}", figures.data_writes),
            "0",
            figures.data_writes == 0.0,
            scoped || (foreign_start == 0 && foreign_end == 0),
        );
        report.row(
            "operator: Secret writes metadata",
            format!("{}", figures.metadata_writes),
        );
        report.row(
            "operator: OpenBao requests / logins",
            format!(
                "{} / {}",
                figures.backend_requests,
                figures.logins + figures.logins_failed
            ),
        );
        report.row("operator CPU in the cycle", format!("{cpu:.2} s"));
        report
            .notes
            .push(format!("steady apiserver writes: {}", fmt_top(writes, 8)));
    }
    report.section("whole run");
    let hwm = final_proc.hwm_kib.max(cold_proc.hwm_kib) as f64 / 1024.0;
    report.check(
        "operator peak RSS (VmHWM)",
        format!("{hwm:.1} MiB"),
        &format!("<= {TARGET_RSS_MIB:.0} MiB"),
        hwm > 0.0 && hwm <= TARGET_RSS_MIB,
    );
    report.row(
        "operator CPU total",
        format!("{:.2} s", final_proc.cpu_seconds),
    );
    let all_logins = cold_logins.zip(steady_logins).map(|(a, b)| a + b);
    report.check(
        "OpenBao logins of the bench identities",
        show(all_logins),
        &format!("<= {NAMESPACES}"),
        all_logins.is_some_and(|n| n <= NAMESPACES),
    );
    report.row(
        "operator: OpenBao logins (all objects)",
        format!("{}", total.logins + total.logins_failed),
    );

    report.notes.insert(
        0,
        format!("cold apiserver writes: {}", fmt_top(&cold_writes, 8)),
    );
    report.notes.push(format!(
        "operator OpenBao requests by operation/outcome: {}",
        fmt_top(
            &breakdown(
                &final_samples,
                "vaultsync_backend_requests_total",
                &["operation", "outcome"],
            ),
            8
        )
    ));
    if let Err(e) = &logins {
        report.notes.push(format!(
            "could not count logins in OpenBao's token store: {e}"
        ));
    }
    if !not_ready.is_empty() {
        report.notes.push(format!(
            "not Ready at the end of the cold start: {not_ready:?}"
        ));
    }
    if died {
        report.notes.push(format!(
            "the operator exited early: see {}",
            op.log.display()
        ));
    }
    if !scoped && (foreign_start > 0 || foreign_end > 0) {
        report.notes.push(format!(
            "{foreign_start} VaultSecret(s) outside the bench namespaces at the start, {foreign_end} at the end: \
             the operator watched all namespaces and reconciled them too, so the `operator:` rows include their work \
             (`bench` rows do not); VAULTSYNC_BENCH_SCOPE=namespaces leaves them alone"
        ));
    }
    report.notes.push(format!(
        "setup: tenants {tenants_secs:.1} s, {TOTAL} KV puts {kv_secs:.1} s, {TOTAL} CR applies {apply_secs:.1} s ({CONCURRENCY} at a time); load average before: {load}"
    ));
    report.notes.push(format!(
        "operator log: {} ({log_problems} WARN/ERROR lines); cleanup {cleanup_secs:.1} s{}; bench total {:.0} s",
        op.log.display(),
        match &deleted {
            Ok(_) => String::new(),
            Err(e) => format!(" ({e})"),
        },
        started.elapsed().as_secs_f64()
    ));
    report.print();
    Ok(())
}
