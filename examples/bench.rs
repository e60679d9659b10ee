//! `make bench`: a cold start and one steady-state refresh cycle of a release-built
//! operator against the local environment, printed as a table of figures and targets.
//!
//! Scenario: 1000 VaultSecrets over 50 namespaces (`bench-0` .. `bench-49`, 20 each),
//! each reading its own KV v2 secret as its namespace's tenant (Kubernetes auth, service
//! account `app`, one OpenBao role and policy per namespace). `make bench-10k`
//! (VAULTSYNC_BENCH_RESOURCES=10000) runs 10,000 over 500 namespaces.
//!
//! 1. Cold start: every CR is applied *before* the operator starts; the clock starts when
//!    the operator process is spawned and stops when a watch has seen all 1000 with
//!    Ready=True. Per-object latency is "operator start -> Ready observed by the watch"
//!    (and, at 1 s resolution, "operator start -> first status.lastSyncTime").
//! 2. Steady state: the CRs ask for `refreshInterval: 20s` with `ttl: 3h` (the default),
//!    so one refresh cycle of unchanged data takes about 20 s. A refresh that finds nothing
//!    new writes neither the Secret nor the status, so the cycle ends when every object
//!    was due (status.nextRefreshTime as written at the cold start has passed) and the
//!    operator's `vaultsync_syncs_total` counts a sync per object. OpenBao's own metrics
//!    count the reads of the window, and the apiserver's the status writes (target 0).
//!
//! 3. Probes: while the resources refresh, a new resource and a spec change, each timed
//!    from the apply until its generation is synced (target 2 s).
//! 4. Restart: the operator is stopped and a new process started over the synced
//!    resources; for 30 s, OpenBao reads, Secret writes, TokenRequests and workload
//!    patches are counted (target 0 each), and the time until it has scheduled every
//!    resource (a sync counted for each; target 30 s).
//!
//! Apiserver writes come from the kube-apiserver's own `/metrics`, so they include every
//! client (the operator, OpenBao's TokenReviews, kube-controller-manager, and any test
//! running at the same time); the breakdown by resource tells them apart.
//!
//! Run with `make bench` (or `cargo build --release && cargo run --release --example
//! bench` after `source target/env/env.sh`).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use common::metrics::{
    OpFigures, apiserver_writes, breakdown, delta, fmt_top, openbao, openbao_reads,
};
use common::probe::{apply_and_time, describe, worst};
use common::report::{Report, opt};
use common::runs::{ColdStart, Cycle, synced};
use common::setup::{apply_all, delete_leftovers, delete_namespaces, install_crds};
use common::watch::Watch;
use common::{OperatorConfig, percentile};
use futures::{StreamExt, TryStreamExt, stream};
use jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use vaultrs::client::VaultClient;
use vaultsync::api::VaultSecret;

const MAKE: &str = "make bench";
/// The operator's kind label.
const KIND: &str = "VaultSecret";
const NS_PREFIX: &str = "bench-";
const PER_NAMESPACE: usize = 20;
const CONCURRENCY: usize = 32;
const OPERATOR_CONCURRENCY: usize = 32;
/// The refresh interval: 20 s at 1,000 resources (50 reads a second in the steady
/// state), and as many reads a second at larger scales, within the default client-side
/// limit of 200 requests a second to OpenBao.
fn refresh_interval() -> String {
    format!("{}s", (total() / 50).max(20))
}
const TTL: &str = "3h";
const LABEL: &str = "vaultsync.dev/bench";
const FIELD_MANAGER: &str = "vaultsync-bench";
/// Cold start: the Secret, its status, and the identity's token amortised.
const TARGET_COLD_WRITES_PER_OBJECT: f64 = 2.1;
/// A new resource, or a changed spec, while the others refresh.
const TARGET_PROBE_SECS: f64 = 2.0;
const PROBES: usize = 3;
/// A restart: back to steady state (every resource scheduled, none read) within this.
const TARGET_RESTART_SECS: f64 = 30.0;

/// Resources in the run: VAULTSYNC_BENCH_RESOURCES (default 1000; `make bench-10k` sets
/// 10000), 20 per namespace.
fn total() -> usize {
    static TOTAL: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *TOTAL.get_or_init(|| {
        let n = common::env_number::<usize>("VAULTSYNC_BENCH_RESOURCES")
            .ok()
            .flatten()
            .unwrap_or(1000);
        n.div_ceil(PER_NAMESPACE).max(1) * PER_NAMESPACE
    })
}

fn namespaces() -> usize {
    total() / PER_NAMESPACE
}

/// The targets of issue 14: 1,000 resources Ready in 20 s within 48 MiB; 10,000 in 60 s
/// within 150 MiB.
fn targets() -> (f64, f64) {
    if total() <= 1000 {
        (20.0, 48.0)
    } else {
        (60.0, 150.0)
    }
}

fn cold_start_timeout() -> Duration {
    Duration::from_secs((total() as u64 / 25).max(120))
}

fn cycle_timeout() -> Duration {
    Duration::from_secs((total() as u64 / 50 * 3).max(90))
}

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
            log_level: common::bench_log_level(),
            extra: String::new(),
        },
    )
}

// ---------------------------------------------------------------------------------------
// Setup and cleanup

/// One tenant per namespace: the namespace, service account `app`, a policy reading
/// `secret/data/bench/<ns>/*` and a Kubernetes auth role bound to the account.
async fn create_tenant(client: &Client, vault: &VaultClient, n: usize) -> anyhow::Result<String> {
    let ns = ns_name(n);
    let policy = format!("path \"secret/data/bench/{ns}/*\" {{ capabilities = [\"read\"] }}\n");
    common::setup::create_tenant(client, vault, &ns, LABEL, &policy).await
}

fn kv_path(n: usize, i: usize) -> String {
    format!("bench/{}/s{i}", ns_name(n))
}

fn manifest(n: usize, i: usize) -> serde_json::Value {
    common::kv_vault_secret(
        &ns_name(n),
        &format!("s{i}"),
        LABEL,
        &kv_path(n, i),
        &refresh_interval(),
        TTL,
    )
}

fn all_pairs() -> Vec<(usize, usize)> {
    common::all_pairs(namespaces(), PER_NAMESPACE)
}

async fn cleanup_vault(vault: &VaultClient) {
    stream::iter(all_pairs())
        .for_each_concurrent(CONCURRENCY, |(n, i)| async move {
            let _ = vaultrs::kv2::delete_metadata(vault, "secret", &kv_path(n, i)).await;
        })
        .await;
    stream::iter(0..namespaces())
        .for_each_concurrent(CONCURRENCY, |n| async move {
            common::setup::delete_tenant_vault(vault, &ns_name(n)).await;
        })
        .await;
}

// ---------------------------------------------------------------------------------------
// Logins in OpenBao

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
/// KV reads OpenBao counted so far (its own metrics, every client); `None` if unreadable.
async fn openbao_kv_reads() -> Option<f64> {
    let samples = openbao(&env("VAULT_ADDR").ok()?, &env("VAULT_TOKEN").ok()?).await?;
    Some(openbao_reads(&samples, "secret"))
}

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

/// What the probes measured: a new resource and a spec change each, `PROBES` times,
/// while the bench resources refresh.
struct Probes {
    created: Vec<Option<Duration>>,
    changed: Vec<Option<Duration>>,
}

fn probe_path(n: usize) -> String {
    format!("bench/{}/probe", ns_name(n))
}

/// Applies a new resource, then changes an existing resource's spec, in `PROBES`
/// namespaces, one at a time, and times each until its generation is synced.
async fn run_probes(client: &Client, vault: &VaultClient) -> anyhow::Result<Probes> {
    let timeout = Duration::from_secs(30);
    let mut probes = Probes {
        created: Vec::new(),
        changed: Vec::new(),
    };
    for n in 0..PROBES.min(namespaces()) {
        let ns = ns_name(n);
        vaultrs::kv2::set(vault, "secret", &probe_path(n), &json!({"probe": "v1"})).await?;
        let mut created = manifest(n, 0);
        created["metadata"]["name"] = json!("probe");
        created["spec"]["vault"]["kv"]["path"] = json!(probe_path(n));
        let t =
            apply_and_time::<VaultSecret>(client, &ns, "probe", &created, FIELD_MANAGER, timeout)
                .await?;
        probes.created.push(t);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut changed = manifest(n, 1);
        changed["spec"]["vault"]["kv"]["path"] = json!(probe_path(n));
        let t = apply_and_time::<VaultSecret>(client, &ns, "s1", &changed, FIELD_MANAGER, timeout)
            .await?;
        probes.changed.push(t);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(probes)
}

/// What a restart of the operator cost, from its start until `TARGET_RESTART_SECS` later.
struct Restart {
    /// Until the new process had scheduled every resource (a sync counted for each).
    back: Option<Duration>,
    kv_reads: Option<f64>,
    apiserver_writes: std::collections::BTreeMap<String, f64>,
    bench: common::watch::Writes,
    hwm_kib: u64,
    cpu_seconds: f64,
}

impl Restart {
    fn writes_of(&self, matches: impl Fn(&str) -> bool) -> f64 {
        self.apiserver_writes
            .iter()
            .filter(|(k, _)| matches(k))
            .map(|(_, v)| v)
            .sum::<f64>()
            + 0.0
    }
}

/// Starts a second operator over the synced resources (the first one stopped) and
/// watches it for `TARGET_RESTART_SECS`.
async fn run_restart(
    client: &Client,
    dir: &std::path::Path,
    watch_namespaces: &str,
    watch: &Watch,
) -> anyhow::Result<Restart> {
    let dir = dir.join("restart");
    std::fs::create_dir_all(&dir)?;
    let objects = watch.state().objects.len() as f64;
    let writes_0 = apiserver_writes(client).await?;
    let bench_0 = watch.state().writes;
    let reads_0 = openbao_kv_reads().await;
    let t = Instant::now();
    let mut op = start_operator(&dir, watch_namespaces)?;
    let window = Duration::from_secs_f64(TARGET_RESTART_SECS);
    let mut back = None;
    while t.elapsed() < window.max(Duration::from_secs(90)) && op.alive() {
        if synced(&op.metrics().await, KIND) >= objects {
            back = Some(t.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Some(rest) = window.checked_sub(t.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let kv_reads = reads_0.zip(openbao_kv_reads().await).map(|(a, b)| b - a);
    let writes = delta(&apiserver_writes(client).await?, &writes_0);
    let proc = op.stats();
    op.stop();
    Ok(Restart {
        back,
        kv_reads,
        apiserver_writes: writes,
        bench: watch.state().writes.minus(bench_0),
        hwm_kib: proc.hwm_kib,
        cpu_seconds: proc.cpu_seconds,
    })
}

fn per_object(n: u64) -> String {
    format!("{n} ({:.2}/obj)", n as f64 / total() as f64)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let (total, namespaces) = (total(), namespaces());
    let (target_ready_secs, target_rss_mib) = targets();
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
    delete_leftovers(&client, NS_PREFIX, "bench").await?;
    let foreign_start = foreign_objects(&client).await;

    // Tenants, sources and resources, all before the operator starts.
    let t = Instant::now();
    let uids: Vec<String> = stream::iter(0..namespaces)
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
    let watch = Watch::start::<VaultSecret>(&client, LABEL, is_bench_namespace);
    let t = Instant::now();
    let resources = all_pairs()
        .into_iter()
        .map(|(n, i)| (ns_name(n), format!("s{i}"), manifest(n, i)))
        .collect();
    apply_all::<VaultSecret>(&client, FIELD_MANAGER, resources, CONCURRENCY).await?;
    let apply_secs = t.elapsed().as_secs_f64();
    watch.wait_seen(total).await?;
    eprintln!(
        "bench: setup: tenants {tenants_secs:.1} s, {total} KV puts {kv_secs:.1} s, {total} CRs applied in {apply_secs:.1} s"
    );

    // Cold start.
    let watch_namespaces = if scoped {
        common::yaml_list((0..namespaces).map(ns_name))
    } else {
        "[]".to_string()
    };
    let all = |_: &str| true;
    let writes_0 = apiserver_writes(&client).await?;
    let bench_0 = watch.state().writes;
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
    let cold_start = ColdStart::wait(&watch, &mut op, t0, all, total, cold_start_timeout()).await;
    let cold = OpFigures::from(&cold_start.samples, None);
    let writes_1 = apiserver_writes(&client).await?;
    let bench_1 = watch.state().writes;
    let mut sync_latencies: Vec<f64> = watch
        .state()
        .objects
        .values()
        .filter_map(|s| s.first_sync)
        .map(|ts| ts.duration_since(t0_wall).as_secs_f64())
        .collect();
    sync_latencies.sort_by(f64::total_cmp);
    cold_start.say("bench", total, t0);

    // Steady state: one refresh cycle of unchanged data.
    let mut steady = None;
    let mut steady_bao_reads = None;
    if cold_start.ready_at.is_some() {
        eprintln!(
            "bench: waiting for one refresh cycle (refreshInterval {}, ttl {TTL})",
            refresh_interval()
        );
        let reads_before = openbao_kv_reads().await;
        let cycle = Cycle::wait(&client, &mut op, &watch, all, KIND, None, cycle_timeout()).await?;
        steady_bao_reads = reads_before
            .zip(openbao_kv_reads().await)
            .map(|(a, b)| b - a);
        steady = Some(cycle);
    }
    // New resources and spec changes while the others keep refreshing.
    let probes = if cold_start.ready_at.is_some() {
        Some(run_probes(&client, &vault).await?)
    } else {
        None
    };
    let final_proc = op.stats();
    let final_samples = op.metrics().await;
    let op_total = OpFigures::from(&final_samples, None);
    // A restart with every resource synced.
    let restart = if cold_start.ready_at.is_some() {
        // A resource synced in the last second before a start is read again (status
        // times are whole seconds): the probes' last sync is left two seconds behind.
        tokio::time::sleep(Duration::from_secs(2)).await;
        op.stop();
        Some(run_restart(&client, &dir, &watch_namespaces, &watch).await?)
    } else {
        None
    };
    op.stop();
    watch.stop();
    let foreign_end = foreign_objects(&client).await;
    let logins = bench_logins(&uids, t0_wall, steady.as_ref().map(|s| s.from)).await;
    let log_problems = op.log_problems();

    // Cleanup.
    let t = Instant::now();
    let deleted = delete_namespaces(&client, NS_PREFIX, Duration::from_secs(120)).await;
    cleanup_vault(&vault).await;
    let cleanup_secs = t.elapsed().as_secs_f64();

    // Report.
    let mut report = Report::new(format!(
        "vaultsync bench: {total} VaultSecrets, {namespaces} namespaces x {PER_NAMESPACE}, KV v2, Kubernetes auth per namespace"
    ));
    let (cold_logins, steady_logins) = match &logins {
        Ok((a, b)) => (Some(*a), Some(*b)),
        Err(_) => (None, None),
    };
    report.section(&format!(
        "cold start: CRs applied first, then the operator started (watching {}, concurrency {OPERATOR_CONCURRENCY})",
        if scoped { format!("the {namespaces} bench namespaces") } else { "all namespaces".to_string() }
    ));
    let latencies = &cold_start.latencies;
    report.ready_rows(total, &cold_start, target_ready_secs);
    report.row(
        "per-object latency p50 / p99 (start -> Ready seen)",
        format!(
            "{:.2} / {:.2} s",
            percentile(latencies, 0.5),
            percentile(latencies, 0.99)
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
        opt(cold_logins),
        &format!("<= {namespaces}"),
        cold_logins.is_some_and(|n| n <= namespaces),
    );
    let cold_writes = delta(&writes_1, &writes_0);
    report.row(
        "apiserver writes, all clients",
        format!("{}", cold_writes.values().sum::<f64>()),
    );
    // Other components' heartbeats (Leases, the node's status) tick with time, not with
    // the resources; everything else any client wrote counts.
    let heartbeat = |k: &str| k.ends_with(" leases") || k.ends_with(" nodes/status");
    let cold_total: f64 = cold_writes
        .iter()
        .filter(|(k, _)| !heartbeat(k))
        .map(|(_, v)| v)
        .sum();
    let cold_per_object = cold_total / total as f64;
    report.check_if(
        "  without other components' heartbeats",
        format!("{cold_total} ({cold_per_object:.3}/obj)"),
        &format!("<= {TARGET_COLD_WRITES_PER_OBJECT}/obj"),
        cold_per_object <= TARGET_COLD_WRITES_PER_OBJECT,
        foreign_start == 0,
    );
    report.row("operator: syncs ok / failed", cold.syncs());
    report.row(
        "operator: OpenBao requests / logins",
        format!("{} / {}", cold.requests, cold.logins + cold.logins_failed),
    );
    report.row(
        "operator: Secret writes data / metadata",
        format!("{} / {}", cold.data_writes, cold.metadata_writes),
    );
    let cold_proc = cold_start.proc;
    report.row(
        "operator CPU (utime+stime)",
        format!("{:.2} s", cold_proc.cpu_seconds),
    );
    report.row(
        "operator CPU per resource",
        format!("{:.2} ms", cold_proc.cpu_seconds * 1000.0 / total as f64),
    );
    report.row(
        "operator RSS at all Ready: anonymous + file (code)",
        format!(
            "{:.1} = {:.1} + {:.1} MiB",
            cold_proc.rss_kib as f64 / 1024.0,
            cold_proc.rss_anon_kib as f64 / 1024.0,
            cold_proc.rss_file_kib as f64 / 1024.0
        ),
    );
    let heap = |name: &str| cold_start.samples.sum(name, |_| true) / (1024.0 * 1024.0);
    report.row(
        "  heap in use / allocator resident",
        format!(
            "{:.1} / {:.1} MiB",
            heap("vaultsync_heap_allocated_bytes"),
            heap("vaultsync_heap_resident_bytes")
        ),
    );

    if let Some(cycle) = &steady {
        let (figures, bench) = (&cycle.figures, &cycle.bench);
        report.section(&format!(
            "steady state: one refresh cycle of unchanged data (refreshInterval {}, ttl {TTL})",
            refresh_interval()
        ));
        report.row("cycle (all due, a sync each counted)", cycle.describe());
        report.row(
            "operator: refreshes (syncs of the kind) / objects",
            format!("{} / {}", cycle.refreshes, cycle.objects),
        );
        report.row(
            "OpenBao reads of secret/ (its own metrics, all clients)",
            opt(steady_bao_reads),
        );
        report.check(
            "bench Secret writes data",
            format!("{}", bench.secret_data),
            "0",
            bench.secret_data == 0 && cycle.done.is_some(),
        );
        report.row(
            "bench Secret writes metadata / created / deleted",
            format!(
                "{} / {} / {}",
                bench.secret_metadata, bench.secret_created, bench.secret_deleted
            ),
        );
        report.check(
            "bench CR writes (watch: resourceVersion moves)",
            format!("{}", bench.cr),
            "0",
            bench.cr == 0 && cycle.done.is_some(),
        );
        let status_writes = cycle.status_writes("vaultsecrets");
        report.check_if(
            "status writes in the steady cycle (apiserver)",
            format!("{status_writes}"),
            "0",
            status_writes == 0.0 && cycle.done.is_some(),
            foreign_start == 0 && foreign_end == 0,
        );
        report.row("OpenBao logins of the bench identities", opt(steady_logins));
        report.row(
            "apiserver writes, all clients",
            format!("{}", cycle.apiserver_writes.values().sum::<f64>()),
        );
        report.row("operator: syncs ok / failed", figures.syncs());
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
                figures.requests,
                figures.logins + figures.logins_failed
            ),
        );
        report.row("operator CPU in the cycle", format!("{:.2} s", cycle.cpu));
        report.notes.push(format!(
            "steady apiserver writes: {}",
            fmt_top(&cycle.apiserver_writes, 8)
        ));
    }
    if let Some(probes) = &probes {
        report.section(&format!(
            "while the others refresh: {PROBES} new resources, then {PROBES} spec changes, one at a time"
        ));
        for (what, times) in [
            ("new resource: apply -> synced", &probes.created),
            (
                "changed spec: apply -> new generation synced",
                &probes.changed,
            ),
        ] {
            let worst = worst(times);
            report.check(
                what,
                describe(times),
                &format!("<= {TARGET_PROBE_SECS} s"),
                worst.is_some_and(|w| w <= TARGET_PROBE_SECS),
            );
        }
    }
    if let Some(restart) = &restart {
        report.section(&format!(
            "restart: a new operator process over the synced resources, its first {TARGET_RESTART_SECS:.0} s"
        ));
        report.check(
            "every resource scheduled (a sync counted for each)",
            restart.back.map_or("not within 90 s".to_string(), |d| {
                format!("{:.1} s", d.as_secs_f64())
            }),
            &format!("<= {TARGET_RESTART_SECS:.0} s"),
            restart
                .back
                .is_some_and(|d| d.as_secs_f64() <= TARGET_RESTART_SECS),
        );
        report.check(
            "OpenBao reads of secret/ (none before its time)",
            opt(restart.kv_reads),
            "0",
            restart.kv_reads == Some(0.0),
        );
        let secret_writes = restart.bench.secret_created
            + restart.bench.secret_data
            + restart.bench.secret_metadata
            + restart.bench.secret_deleted;
        report.check(
            "bench Secret writes",
            format!("{secret_writes}"),
            "0",
            secret_writes == 0,
        );
        let tokens = restart.writes_of(|k| k.ends_with(" serviceaccounts/token"));
        report.check(
            "TokenRequests (credentials issued)",
            format!("{tokens}"),
            "0",
            tokens == 0.0,
        );
        let restarts = restart.writes_of(|k| {
            ["deployments", "statefulsets", "daemonsets"]
                .iter()
                .any(|w| k.ends_with(&format!(" {w}")))
        });
        report.check(
            "workload patches (restarts)",
            format!("{restarts}"),
            "0",
            restarts == 0.0,
        );
        report.row(
            "apiserver writes, all clients",
            format!("{}", restart.writes_of(|_| true)),
        );
        report.row(
            "restarted operator: CPU / peak RSS",
            format!(
                "{:.2} s / {:.1} MiB",
                restart.cpu_seconds,
                restart.hwm_kib as f64 / 1024.0
            ),
        );
        report.notes.push(format!(
            "restart apiserver writes: {}",
            fmt_top(&restart.apiserver_writes, 8)
        ));
    }
    report.section("whole run");
    // Both processes: the first, and the one started over the synced resources.
    let hwm = final_proc
        .hwm_kib
        .max(cold_proc.hwm_kib)
        .max(restart.as_ref().map_or(0, |r| r.hwm_kib)) as f64
        / 1024.0;
    report.check(
        "operator peak RSS (VmHWM, both processes)",
        format!("{hwm:.1} MiB"),
        &format!("<= {target_rss_mib:.0} MiB"),
        hwm > 0.0 && hwm <= target_rss_mib,
    );
    report.row(
        "operator CPU total",
        format!("{:.2} s", final_proc.cpu_seconds),
    );
    let all_logins = cold_logins.zip(steady_logins).map(|(a, b)| a + b);
    report.check(
        "OpenBao logins of the bench identities",
        opt(all_logins),
        &format!("<= {namespaces}"),
        all_logins.is_some_and(|n| n <= namespaces),
    );
    report.row(
        "operator: OpenBao logins (all objects)",
        format!("{}", op_total.logins + op_total.logins_failed),
    );

    report.notes.insert(
        0,
        format!("cold apiserver writes: {}", fmt_top(&cold_writes, 8)),
    );
    let requests = breakdown(
        &final_samples,
        "vaultsync_backend_requests_total",
        &["operation", "outcome"],
        None,
    );
    report.notes.push(format!(
        "operator OpenBao requests by operation/outcome: {}",
        fmt_top(&requests, 8)
    ));
    if let Err(e) = &logins {
        report.notes.push(format!(
            "could not count logins in OpenBao's token store: {e}"
        ));
    }
    report.not_ready(&cold_start, "the cold start");
    if cold_start.died {
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
        "setup: tenants {tenants_secs:.1} s, {total} KV puts {kv_secs:.1} s, {total} CR applies {apply_secs:.1} s ({CONCURRENCY} at a time); load average before: {load}"
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
