//! `make bench-azure`: AzureKeyVaultSecrets against the project's local Key Vault
//! (tests/env/keyvault), with a release-built operator, printed as a table of figures and
//! targets.
//!
//! Scenario 1: 500 AzureKeyVaultSecrets over 10 namespaces (`akvbench-0` ..
//! `akvbench-9`, 50 each), each reading its own secret of vault `bench` as its namespace's
//! `default` service account (workload identity, client `vaultsync-namespace-reader`, the
//! connection's `defaultAuth`): one federated token exchange per namespace is expected.
//!
//! 1. Cold start: every CR is applied *before* the operator starts; the clock starts when
//!    the operator process is spawned and stops when a watch has seen all 500 Ready=True.
//! 2. Steady state: the CRs ask for `refreshInterval: 10s` (the operator's
//!    minRefreshInterval is 5 s here). A refresh that finds nothing new writes neither the
//!    Secret nor the status, so the cycle ends when every object was due (its
//!    status.nextRefreshTime has passed) and the operator counts a sync per object. The
//!    vault's own log then says which objects it served in the window and how many
//!    requests that took; the apiserver's counters and the watch say how many status
//!    writes the cycle made (target 0).
//!
//! Scenario 2 (coalescing): 100 AzureKeyVaultSecrets in `akvbench-10`, same identity,
//! all reading ONE secret, applied before a second operator starts (watching only that
//! namespace): Key Vault requests of the cold start / 100. Reads are merged only while
//! one is in flight, so this measures how many of them overlap.
//!
//! Key Vault requests are the operator's `vaultsync_backend_requests_total{backend="azure"}`
//! (one per SDK call); the vault's own log (target/env/keyvault/keyvault.log) adds the
//! HTTP view, including the unauthenticated first request of each SDK client (401 with the
//! challenge), and the token endpoint's log counts the federated exchanges.
//!
//! The operators watch only the bench namespaces, so tests running at the same time are
//! left alone (and do not pollute the operator's metrics).
//!
//! Knobs: VAULTSYNC_BENCH_CONCURRENCY (operator concurrency, default 32),
//! VAULTSYNC_BENCH_AZURE_RPS (the connection's requestsPerSecond; default: unset, the
//! operator's default of 300), VAULTSYNC_BENCH_LOG (operator log level).
//!
//! Run with `make bench-azure` (or `cargo build --release && cargo run --release --example
//! bench_azure` after `source target/env/env.sh`).

mod common;
#[path = "../tests/e2e/keyvault.rs"]
mod keyvault;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use common::keyvault_log::{
    Exchanges, KeyVaultLogs, KvLine, Traffic, exchanges, objects_read, traffic,
};
use common::metrics::{OpFigures, apiserver_writes, breakdown, delta, fmt_top};
use common::report::{Report, opt};
use common::runs::{ColdStart, Cycle};
use common::setup::{apply_all, delete_leftovers, delete_namespaces, install_crds, wait_for};
use common::watch::Watch;
use common::{OperatorConfig, env_number, percentile};
use futures::{StreamExt, TryStreamExt, stream};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ServiceAccount;
use keyvault::KeyVaultEnv;
use kube::Client;
use kube::api::Api;
use serde_json::json;
use vaultsync::api::AzureKeyVaultSecret;

const MAKE: &str = "make bench-azure";
const NS_PREFIX: &str = "akvbench-";
const NAMESPACES: usize = 10;
const PER_NAMESPACE: usize = 50;
const TOTAL: usize = NAMESPACES * PER_NAMESPACE;
/// The coalescing namespace: `akvbench-10`.
const COALESCE_NS: usize = NAMESPACES;
const COALESCE_COUNT: usize = 100;
const VAULT: &str = "bench";
/// The operator's backend label for Key Vault requests.
const AZURE: Option<&str> = Some("azure");
/// The operator's kind label.
const KIND: &str = "AzureKeyVaultSecret";
const READER: &str = "vaultsync-namespace-reader";
const SHARED_OBJECT: &str = "akvbench-shared";
/// Setup requests at a time (Key Vault puts, CR applies).
const CONCURRENCY: usize = 32;
const DEFAULT_OPERATOR_CONCURRENCY: usize = 32;
const REFRESH: &str = "10s";
const TTL: &str = "1h";
const LABEL: &str = "vaultsync.dev/bench-azure";
const FIELD_MANAGER: &str = "vaultsync-bench-azure";
/// The operator's default `azure.<conn>.requestsPerSecond`.
const DEFAULT_CLIENT_RPS: u32 = 300;
/// The local vault's default limit, as the real service's: 4,000 per 10 s per vault.
const VAULT_LIMIT_PER_SEC: f64 = 400.0;
const COLD_START_TIMEOUT: Duration = Duration::from_secs(120);
const CYCLE_TIMEOUT: Duration = Duration::from_secs(60);
const COALESCE_TIMEOUT: Duration = Duration::from_secs(90);

const TARGET_READY_SECS: f64 = 15.0;
const TARGET_REQUESTS_PER_REFRESH: f64 = 1.0;
const TARGET_COALESCED: f64 = 0.5;

fn ns_name(n: usize) -> String {
    format!("{NS_PREFIX}{n}")
}

fn object_name(n: usize, i: usize) -> String {
    format!("{}-s{i}", ns_name(n))
}

fn env(name: &str) -> anyhow::Result<String> {
    common::env(name, MAKE)
}

// ---------------------------------------------------------------------------------------
// Setup and cleanup

/// Creates namespace `n` and waits for its `default` service account (made by the
/// kube-controller-manager), the identity its resources read as.
async fn create_namespace(client: &Client, n: usize) -> anyhow::Result<()> {
    let ns = ns_name(n);
    common::setup::create_namespace(client, &ns, LABEL).await?;
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), &ns);
    wait_for(
        Duration::from_secs(60),
        &format!("service account {ns}/default (is kube-controller-manager running?)"),
        || {
            let accounts = accounts.clone();
            async move { accounts.get_opt("default").await.ok().flatten().map(|_| ()) }
        },
    )
    .await
}

/// Sets a Key Vault secret; a name left soft-deleted by an interrupted run is purged
/// first.
async fn put_secret(kv: &KeyVaultEnv, name: &str) -> anyhow::Result<()> {
    let value = format!("akvbench-{:016x}", rand::random::<u64>());
    if let Err(first) = kv.set_secret(VAULT, name, &value, None).await {
        let _ = delete(kv, &format!("/deletedsecrets/{name}")).await;
        kv.set_secret(VAULT, name, &value, None)
            .await
            .map_err(|e| anyhow!("set secret {name} in vault {VAULT}: {e} (first try: {first})"))?;
    }
    Ok(())
}

/// Deletes and purges the bench secrets; how many could not be removed.
async fn delete_secrets(kv: &KeyVaultEnv, names: &[String]) -> usize {
    stream::iter(names.iter())
        .map(|name| async move {
            let deleted = delete(kv, &format!("/secrets/{name}")).await;
            let purged = delete(kv, &format!("/deletedsecrets/{name}")).await;
            usize::from(deleted.is_err() || purged.is_err())
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .sum()
}

async fn delete(kv: &KeyVaultEnv, path: &str) -> Result<(), String> {
    kv.call(VAULT, reqwest::Method::DELETE, path, None)
        .await
        .map(|_| ())
}

fn manifest(ns: &str, name: &str, object: &str) -> serde_json::Value {
    json!({
        "apiVersion": "vaultsync.dev/v1alpha1",
        "kind": "AzureKeyVaultSecret",
        "metadata": {"name": name, "namespace": ns, "labels": {LABEL: "true"}},
        "spec": {
            "vault": {"name": VAULT, "object": {"name": object, "type": "secret"}},
            "output": {"secret": {"dataKey": "value"}},
            "refreshInterval": REFRESH,
            "ttl": TTL,
        }
    })
}

/// (namespace, name, manifest) of every bench resource.
fn all_resources() -> Vec<(String, String, serde_json::Value)> {
    let main = common::all_pairs(NAMESPACES, PER_NAMESPACE)
        .into_iter()
        .map(|(n, i)| (ns_name(n), format!("s{i}"), object_name(n, i)));
    let coalesce =
        (0..COALESCE_COUNT).map(|i| (ns_name(COALESCE_NS), format!("c{i}"), SHARED_OBJECT.into()));
    main.chain(coalesce)
        .map(|(ns, name, object)| {
            let manifest = manifest(&ns, &name, &object);
            (ns, name, manifest)
        })
        .collect()
}

/// Whether namespace `ns` is one of scenario 1's (the 500), not scenario 2's.
fn is_main_ns(ns: &str) -> bool {
    common::is_numbered(ns, NS_PREFIX)
        && ns[NS_PREFIX.len()..]
            .parse()
            .is_ok_and(|n: usize| n < NAMESPACES)
}

/// Whether "namespace/name" belongs to scenario 1.
fn is_main(key: &str) -> bool {
    key.split_once('/').is_some_and(|(ns, _)| is_main_ns(ns))
}

// ---------------------------------------------------------------------------------------
// What the local Key Vault's log tells of the two scenarios

/// Reads of scenario 1's own secrets (`/secrets/akvbench-<n>-s<i>...`).
fn is_main_read(l: &KvLine) -> bool {
    l.method == "GET"
        && l.path
            .strip_prefix("/secrets/")
            .is_some_and(|p| p.starts_with(NS_PREFIX) && !p.starts_with(SHARED_OBJECT))
}

fn is_shared_read(l: &KvLine) -> bool {
    l.method == "GET"
        && l.path.strip_prefix("/secrets/").is_some_and(|p| {
            p.trim_end_matches('/') == SHARED_OBJECT || p.starts_with(&format!("{SHARED_OBJECT}/"))
        })
}

/// Apiserver TokenRequests among `writes`.
fn token_requests(writes: &BTreeMap<String, f64>) -> f64 {
    writes
        .get("POST serviceaccounts/token")
        .copied()
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------

fn start_operator(
    dir: &Path,
    namespaces: &[usize],
    concurrency: usize,
    azure_yaml: &str,
) -> anyhow::Result<common::Operator> {
    common::start_operator(
        dir,
        OperatorConfig {
            watch_namespaces: &common::yaml_list(namespaces.iter().map(|n| ns_name(*n))),
            concurrency,
            vault_addr: env("VAULT_ADDR")?,
            log_level: common::bench_log_level(),
            extra: azure_yaml.to_string(),
        },
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-azure");
    std::fs::create_dir_all(&dir)?;
    let kv = KeyVaultEnv::load().map_err(|e| anyhow!(e))?;
    let client = common::kube_client(MAKE).await?;
    env("VAULT_ADDR")?;
    let concurrency =
        env_number::<usize>("VAULTSYNC_BENCH_CONCURRENCY")?.unwrap_or(DEFAULT_OPERATOR_CONCURRENCY);
    let rps_override = env_number::<u32>("VAULTSYNC_BENCH_AZURE_RPS")?;
    let client_rps = rps_override.unwrap_or(DEFAULT_CLIENT_RPS);
    let azure_yaml = kv.connection_yaml(
        kv.port,
        &rps_override
            .map(|n| format!("    requestsPerSecond: {n}\n"))
            .unwrap_or_default(),
    );
    let kv_dir = Path::new(&kv.ca_file)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let load = common::load_average();
    eprintln!("bench-azure: load average before the run: {load}");

    install_crds(&client).await?;
    delete_leftovers(&client, NS_PREFIX, "bench-azure").await?;
    // A test may have left a throttle on the vault; the reader identity needs `get`.
    kv.script(&["throttle", VAULT, "off"])
        .map_err(|e| anyhow!(e))?;
    kv.script(&["grant", VAULT, READER, "secrets=get"])
        .map_err(|e| anyhow!(e))?;

    // Namespaces, Key Vault secrets and resources, all before the operator starts.
    let t = Instant::now();
    stream::iter(0..=COALESCE_NS)
        .map(|n| create_namespace(&client, n))
        .buffer_unordered(11)
        .try_collect::<Vec<_>>()
        .await?;
    let ns_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut object_names: Vec<String> = common::all_pairs(NAMESPACES, PER_NAMESPACE)
        .into_iter()
        .map(|(n, i)| object_name(n, i))
        .collect();
    object_names.push(SHARED_OBJECT.to_string());
    stream::iter(object_names.iter())
        .map(|name| put_secret(&kv, name))
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    let kv_secs = t.elapsed().as_secs_f64();
    let watch = Watch::start::<AzureKeyVaultSecret>(&client, LABEL, is_main_ns);
    let t = Instant::now();
    apply_all::<AzureKeyVaultSecret>(&client, FIELD_MANAGER, all_resources(), CONCURRENCY).await?;
    let apply_secs = t.elapsed().as_secs_f64();
    watch.wait_seen(TOTAL + COALESCE_COUNT).await?;
    eprintln!(
        "bench-azure: setup: {} namespaces {ns_secs:.1} s, {} Key Vault puts {kv_secs:.1} s, {} CRs applied {apply_secs:.1} s",
        COALESCE_NS + 1,
        object_names.len(),
        TOTAL + COALESCE_COUNT
    );
    // The puts above count toward the vault's 4,000 per 10 s: let the window pass.
    tokio::time::sleep(Duration::from_secs(10)).await;

    // ---- Scenario 1: cold start of 500.
    let main_namespaces: Vec<usize> = (0..NAMESPACES).collect();
    let main_ns_names: BTreeSet<String> = main_namespaces.iter().map(|n| ns_name(*n)).collect();
    let kv_logs = KeyVaultLogs::mark(&kv_dir);
    let writes_0 = apiserver_writes(&client).await?;
    let t0 = Instant::now();
    let t0_wall = Timestamp::now();
    let mut op = start_operator(&dir, &main_namespaces, concurrency, &azure_yaml)?;
    eprintln!(
        "bench-azure: operator pid {} started for {TOTAL} resources (log: {})",
        op.pid(),
        op.log.display()
    );
    let cold_start = ColdStart::wait(&watch, &mut op, t0, is_main, TOTAL, COLD_START_TIMEOUT).await;
    let cold = OpFigures::from(&cold_start.samples, AZURE);
    let writes_1 = apiserver_writes(&client).await?;
    cold_start.say("bench-azure", TOTAL, t0);

    // Steady state: one refresh cycle of unchanged data.
    let mut steady = None;
    if cold_start.ready_at.is_some() {
        eprintln!("bench-azure: waiting for one refresh cycle (refreshInterval {REFRESH})");
        steady = Some(
            Cycle::wait(
                &client,
                &mut op,
                &watch,
                is_main,
                KIND,
                AZURE,
                CYCLE_TIMEOUT,
            )
            .await?,
        );
    }
    let main_proc = op.stats();
    let main_samples = op.metrics().await;
    let main_total = OpFigures::from(&main_samples, AZURE);
    op.stop();

    // ---- Scenario 2: 100 resources, one secret, one identity.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let coalesce_dir = dir.join("coalesce");
    let t2 = Instant::now();
    let t2_wall = Timestamp::now();
    let mut op2 = start_operator(&coalesce_dir, &[COALESCE_NS], concurrency, &azure_yaml)?;
    eprintln!(
        "bench-azure: operator pid {} started for the {COALESCE_COUNT} resources of {} (log: {})",
        op2.pid(),
        ns_name(COALESCE_NS),
        op2.log.display()
    );
    let not_main = |key: &str| !is_main(key);
    let coalesce_run = ColdStart::wait(
        &watch,
        &mut op2,
        t2,
        not_main,
        COALESCE_COUNT,
        COALESCE_TIMEOUT,
    )
    .await;
    let coalesce = OpFigures::from(&coalesce_run.samples, AZURE);
    op2.stop();
    watch.stop();

    // The vault's and the token endpoint's view.
    let kv_lines = kv_logs.requests();
    let token_text = kv_logs.tokens();
    let traffic_in = |from, to, keep: fn(&KvLine) -> bool| {
        Some(traffic(kv_lines.as_ref()?, VAULT, from, to, keep))
    };
    let exchanges_in = |from, to, namespaces: &BTreeSet<String>| {
        Some(exchanges(
            token_text.as_deref()?,
            READER,
            from,
            to,
            namespaces,
        ))
    };
    let cold_traffic = traffic_in(t0_wall, cold_start.end, is_main_read);
    let cold_exchanges = exchanges_in(t0_wall, cold_start.end, &main_ns_names);
    let steady_traffic = steady
        .as_ref()
        .and_then(|s| traffic_in(s.from, s.to, is_main_read));
    let steady_objects = steady.as_ref().and_then(|s| {
        Some(objects_read(
            kv_lines.as_ref()?,
            VAULT,
            s.from,
            s.to,
            is_main_read,
        ))
    });
    let steady_exchanges = steady
        .as_ref()
        .and_then(|s| exchanges_in(s.from, s.to, &main_ns_names));
    let coalesce_ns: BTreeSet<String> = [ns_name(COALESCE_NS)].into();
    let coalesce_traffic = traffic_in(t2_wall, coalesce_run.end, is_shared_read);
    let coalesce_exchanges = exchanges_in(t2_wall, coalesce_run.end, &coalesce_ns);
    let vault_throttle_now = std::fs::read_to_string(kv_dir.join("settings.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .map(|v| v["rateLimits"].clone());

    // Cleanup.
    let t = Instant::now();
    let deleted = delete_namespaces(&client, NS_PREFIX, Duration::from_secs(180)).await;
    let undeleted_secrets = delete_secrets(&kv, &object_names).await;
    let cleanup_secs = t.elapsed().as_secs_f64();

    // ---- Report.
    let mut report = Report::new(format!(
        "vaultsync bench-azure: local Key Vault `{VAULT}`, workload identity ({READER}) per namespace"
    ));
    report.section(&format!(
        "1. cold start: {TOTAL} AzureKeyVaultSecrets over {NAMESPACES} namespaces x {PER_NAMESPACE}, each its own secret; CRs applied first (operator concurrency {concurrency}, requestsPerSecond {client_rps}{})",
        if rps_override.is_some() { "" } else { " = default" }
    ));
    let lat = &cold_start.latencies;
    report.ready_rows(TOTAL, &cold_start, TARGET_READY_SECS);
    report.row(
        "per-object latency p50 / p90 / p99",
        format!(
            "{:.2} / {:.2} / {:.2} s",
            percentile(lat, 0.5),
            percentile(lat, 0.9),
            percentile(lat, 0.99)
        ),
    );
    report.row("operator: syncs ok / failed", cold.syncs());
    report.row(
        "operator: Key Vault requests (ok / throttled)",
        format!(
            "{} ({} / {})",
            cold.requests, cold.requests_ok, cold.requests_throttled
        ),
    );
    report.row(
        "vault log: HTTP requests 200 / 401 challenge / 429 / other",
        opt(cold_traffic.as_ref().map(Traffic::statuses)),
    );
    if let Some(t) = &cold_traffic {
        report.row(
            "vault log: reads first -> last, mean rate",
            format!(
                "{:.2} s, {:.0}/s",
                t.span_secs(),
                t.total() as f64 / t.span_secs().max(0.001)
            ),
        );
        report.row(
            &format!("vault log: peak in any 1 s, all / without 401 (limit {client_rps}/s)"),
            format!("{} / {}", t.peak_per_sec, t.peak_calls_per_sec),
        );
    }
    report.row(
        &format!("floor set by requestsPerSecond: {TOTAL} reads / {client_rps}/s"),
        format!("{:.2} s", TOTAL as f64 / client_rps as f64),
    );
    report.check(
        "token exchanges of the bench identities (token endpoint log)",
        opt(cold_exchanges.as_ref().map(Exchanges::describe)),
        &format!("<= {NAMESPACES}"),
        cold_exchanges
            .as_ref()
            .is_some_and(|e| e.issued_total() <= NAMESPACES && e.refused == 0),
    );
    let cold_writes = delta(&writes_1, &writes_0);
    report.row(
        "apiserver TokenRequests (all clients)",
        format!("{}", token_requests(&cold_writes)),
    );
    report.row(
        "operator: Secret writes data / metadata",
        format!("{} / {}", cold.data_writes, cold.metadata_writes),
    );
    let cold_proc = cold_start.proc;
    report.row(
        "operator CPU at all Ready (utime+stime)",
        format!("{:.2} s", cold_proc.cpu_seconds),
    );
    report.row(
        "operator RSS at all Ready",
        format!("{:.1} MiB", cold_proc.rss_kib as f64 / 1024.0),
    );

    if let Some(s) = &steady {
        report.section(&format!(
            "2. steady state: one refresh cycle of unchanged data (refreshInterval {REFRESH}, minRefreshInterval 5s)"
        ));
        report.row("cycle (all due, a sync each counted)", s.describe());
        report.row(
            "operator: refreshes (syncs of the kind) / objects",
            format!("{} / {}", s.refreshes, s.objects),
        );
        report.check(
            "objects the vault served in the cycle (its log)",
            opt(steady_objects),
            &format!("= {TOTAL}"),
            steady_objects == Some(TOTAL),
        );
        // The vault's count of requests for the objects it served: one read each is the floor.
        let served = steady_traffic
            .as_ref()
            .map(Traffic::total)
            .zip(steady_objects)
            .map(|(n, objects)| (n, objects, n as f64 / objects.max(1) as f64));
        report.check(
            "Key Vault requests per object per refresh (vault log)",
            opt(served.map(|(n, objects, r)| format!("{r:.3} ({n} / {objects})"))),
            &format!("<= {TARGET_REQUESTS_PER_REFRESH:.0}"),
            s.done.is_some() && served.is_some_and(|(_, _, r)| r <= TARGET_REQUESTS_PER_REFRESH),
        );
        let requests = s.figures.requests;
        report.row(
            "  operator: Key Vault requests / refreshes",
            format!(
                "{:.3} ({requests} / {})",
                requests / s.refreshes.max(1.0),
                s.refreshes
            ),
        );
        report.row(
            &format!("  Key Vault requests in the window / {TOTAL}"),
            format!("{:.3} ({requests} / {TOTAL})", requests / TOTAL as f64),
        );
        report.row(
            "vault log: HTTP requests 200 / 401 / 429 / other",
            opt(steady_traffic.as_ref().map(Traffic::statuses)),
        );
        report.check(
            "operator: Secret writes data",
            format!("{}", s.figures.data_writes),
            "0",
            s.figures.data_writes == 0.0 && s.done.is_some(),
        );
        let bench = &s.bench;
        report.row(
            "bench Secret writes data / metadata / created / deleted (watch)",
            format!(
                "{} / {} / {} / {}",
                bench.secret_data,
                bench.secret_metadata,
                bench.secret_created,
                bench.secret_deleted
            ),
        );
        report.check(
            "status writes in the steady cycle (watch: CR resourceVersion moves)",
            format!("{}", bench.cr),
            "0",
            bench.cr == 0 && s.done.is_some(),
        );
        report.row(
            "  apiserver: azurekeyvaultsecrets/status writes (all clients)",
            format!("{}", s.status_writes("azurekeyvaultsecrets")),
        );
        report.row("operator: syncs ok / failed", s.figures.syncs());
        report.row(
            "token exchanges (token endpoint) / apiserver TokenRequests",
            format!(
                "{} / {}",
                opt(steady_exchanges.as_ref().map(Exchanges::describe)),
                token_requests(&s.apiserver_writes)
            ),
        );
        report.row("operator CPU in the cycle", format!("{:.2} s", s.cpu));
    }
    report.section("scenario 1, whole run (cold start + cycle)");
    let hwm = main_proc.hwm_kib.max(cold_proc.hwm_kib) as f64 / 1024.0;
    report.row("operator peak RSS (VmHWM)", format!("{hwm:.1} MiB"));
    report.row(
        "operator CPU total",
        format!("{:.2} s", main_proc.cpu_seconds),
    );
    report.row(
        "operator: Key Vault requests total",
        format!("{}", main_total.requests),
    );

    report.section(&format!(
        "3. coalescing: {COALESCE_COUNT} resources in {}, one identity, ONE secret; CRs applied first, new operator",
        ns_name(COALESCE_NS)
    ));
    report.row(
        &format!("operator start -> all {COALESCE_COUNT} Ready=True"),
        coalesce_run.describe(),
    );
    let ratio = coalesce.requests / COALESCE_COUNT as f64;
    report.check(
        &format!("Key Vault requests / {COALESCE_COUNT} resources"),
        format!("{ratio:.2} ({} / {COALESCE_COUNT})", coalesce.requests),
        &format!("<= {TARGET_COALESCED}"),
        coalesce_run.ready_at.is_some() && ratio <= TARGET_COALESCED,
    );
    report.row(
        "vault log: HTTP requests 200 / 401 / 429 / other",
        opt(coalesce_traffic.as_ref().map(Traffic::statuses)),
    );
    report.row(
        "token exchanges (token endpoint log)",
        opt(coalesce_exchanges.as_ref().map(Exchanges::describe)),
    );
    report.row("operator: syncs ok / failed", coalesce.syncs());
    report.row(
        "operator peak RSS / CPU",
        format!(
            "{:.1} MiB / {:.2} s",
            coalesce_run.proc.hwm_kib as f64 / 1024.0,
            coalesce_run.proc.cpu_seconds
        ),
    );

    // Notes.
    if let (Some(t), Some(d)) = (&cold_traffic, cold_start.ready_at) {
        let secs = d.as_secs_f64();
        let floor = TOTAL as f64 / client_rps as f64;
        let calls = (t.total() - t.challenged) as f64;
        let mean = calls / t.span_secs().max(0.001);
        let limit = client_rps as f64;
        let verdict = if mean >= 0.8 * limit {
            "BOUND by it (reads ran at the limit throughout)"
        } else if t.peak_calls_per_sec as f64 >= 0.9 * limit {
            "not bound by it overall, though bursts reach it"
        } else {
            "not bound by it"
        };
        report.notes.push(format!(
            "requestsPerSecond {client_rps}: {TOTAL} reads need >= {floor:.2} s; the cold start took {secs:.2} s, its reads spanned {:.2} s at a mean of {mean:.0}/s (peak {}/s in any 1 s, {}/s with the 401 challenges): {verdict}. \
             At {client_rps}/s one operator may use {:.0}% of a vault's {VAULT_LIMIT_PER_SEC:.0}/s (4,000 per 10 s): a cold start of N objects on one vault takes >= N/{client_rps} s (e.g. {:.0} s for 4,500), and another client of the same vault can push both into 429s. \
             Rerun with VAULTSYNC_BENCH_AZURE_RPS=<higher> to see what the limit costs.",
            t.span_secs(),
            t.peak_calls_per_sec,
            t.peak_per_sec,
            100.0 * limit / VAULT_LIMIT_PER_SEC,
            4500.0 / limit,
        ));
        if let Some(e) = &cold_exchanges {
            report.notes.push(format!(
                "challenges: {} unauthenticated first requests (401) for {} identities: every request an SDK client sends before its first challenge is answered goes without a token, so concurrent first reads of one identity are each challenged; they count toward the vault's limit",
                t.challenged,
                e.issued.len()
            ));
        }
    }
    let requests = breakdown(
        &main_samples,
        "vaultsync_backend_requests_total",
        &["operation", "outcome"],
        AZURE,
    );
    report.notes.push(format!(
        "operator Key Vault requests by operation/outcome (scenario 1): {}",
        fmt_top(&requests, 8)
    ));
    report.notes.push(format!(
        "cold apiserver writes (all clients): {}",
        fmt_top(&cold_writes, 8)
    ));
    report.not_ready(&cold_start, "the cold start");
    report.not_ready(&coalesce_run, "the coalescing run");
    if cold_start.died || coalesce_run.died {
        report.notes.push(format!(
            "an operator exited early: see {} / {}",
            op.log.display(),
            op2.log.display()
        ));
    }
    if kv_lines.is_none() || token_text.is_none() {
        report.notes.push(format!(
            "could not read {} or {}: the log-based rows show ?",
            kv_logs.requests.display(),
            kv_logs.tokens.display()
        ));
    }
    if let Some(limits) =
        vault_throttle_now.filter(|v| v.as_object().is_some_and(|o| !o.is_empty()))
    {
        report.notes.push(format!(
            "the vault's rate limits were changed during the run (by a test?): {limits}"
        ));
    }
    report.notes.push(format!(
        "setup: {} namespaces {ns_secs:.1} s, {} Key Vault puts {kv_secs:.1} s, {} CR applies {apply_secs:.1} s; load average before: {load}",
        COALESCE_NS + 1,
        object_names.len(),
        TOTAL + COALESCE_COUNT
    ));
    report.notes.push(format!(
        "operator logs: {} ({} WARN/ERROR lines), {} ({}); cleanup {cleanup_secs:.1} s{}{}; bench total {:.0} s",
        op.log.display(),
        op.log_problems(),
        op2.log.display(),
        op2.log_problems(),
        match &deleted {
            Ok(_) => String::new(),
            Err(e) => format!(" ({e})"),
        },
        if undeleted_secrets > 0 {
            format!(", {undeleted_secrets} Key Vault secrets not removed")
        } else {
            String::new()
        },
        started.elapsed().as_secs_f64()
    ));
    report.print();
    Ok(())
}
