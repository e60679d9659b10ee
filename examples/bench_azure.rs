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
//!    minRefreshInterval is 5 s here). The cycle ends when every object's
//!    status.lastSyncTime has moved past its value at the start of the cycle; the Key Vault
//!    requests of the window are divided by the refreshes seen in it (lastSyncTime moves),
//!    and, as asked, by the 500 objects.
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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read as _, Seek as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use common::{
    OperatorConfig, Samples, apiserver_writes, bench_namespaces, delta, fmt_top, install_crds,
    percentile, wait_for,
};
use futures::{StreamExt, TryStreamExt, stream};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use keyvault::KeyVaultEnv;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
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

/// The bench namespace index of `ns`, if it is one.
fn ns_index(ns: &str) -> Option<usize> {
    ns.strip_prefix(NS_PREFIX)
        .filter(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|rest| rest.parse().ok())
}

fn object_name(n: usize, i: usize) -> String {
    format!("{}-s{i}", ns_name(n))
}

fn env(name: &str) -> anyhow::Result<String> {
    common::env(name, MAKE)
}

fn env_number<T: std::str::FromStr>(name: &str) -> anyhow::Result<Option<T>> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| anyhow!("{name}={v:?} is not a number")),
        _ => Ok(None),
    }
}

// ---------------------------------------------------------------------------------------
// Setup and cleanup

/// Deletes every `akvbench-<n>` namespace and waits up to `timeout` until they are gone.
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
            "the akvbench namespaces to be deleted",
        )
        .await?;
    }
    Ok(names.len())
}

/// Creates namespace `n` and waits for its `default` service account (made by the
/// kube-controller-manager), the identity its resources read as.
async fn create_namespace(client: &Client, n: usize) -> anyhow::Result<()> {
    let ns = ns_name(n);
    let namespace: Namespace = serde_json::from_value(json!({
        "metadata": {"name": ns, "labels": {LABEL: "true"}}
    }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .with_context(|| format!("create namespace {ns}"))?;
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
    match kv.set_secret(VAULT, name, &value, None).await {
        Ok(_) => Ok(()),
        Err(first) => {
            let _ = kv
                .call(
                    VAULT,
                    reqwest::Method::DELETE,
                    &format!("/deletedsecrets/{name}"),
                    None,
                )
                .await;
            kv.set_secret(VAULT, name, &value, None)
                .await
                .map(|_| ())
                .map_err(|e| {
                    anyhow!("set secret {name} in vault {VAULT}: {e} (first try: {first})")
                })
        }
    }
}

/// Deletes and purges the bench secrets; how many could not be removed.
async fn delete_secrets(kv: &KeyVaultEnv, names: &[String]) -> usize {
    stream::iter(names.iter())
        .map(|name| async move {
            let deleted = kv
                .call(
                    VAULT,
                    reqwest::Method::DELETE,
                    &format!("/secrets/{name}"),
                    None,
                )
                .await;
            let purged = kv
                .call(
                    VAULT,
                    reqwest::Method::DELETE,
                    &format!("/deletedsecrets/{name}"),
                    None,
                )
                .await;
            usize::from(deleted.is_err() || purged.is_err())
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .sum()
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

/// (namespace, CR name, Key Vault object) of every bench resource.
fn all_resources() -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = common::all_pairs(NAMESPACES, PER_NAMESPACE)
        .into_iter()
        .map(|(n, i)| (ns_name(n), format!("s{i}"), object_name(n, i)))
        .collect();
    out.extend((0..COALESCE_COUNT).map(|i| {
        (
            ns_name(COALESCE_NS),
            format!("c{i}"),
            SHARED_OBJECT.to_string(),
        )
    }));
    out
}

// ---------------------------------------------------------------------------------------
// Observation of the bench objects

#[derive(Default)]
struct Seen {
    first_ready: Option<Instant>,
    last_sync: Option<Timestamp>,
    /// Times status.lastSyncTime moved after it was first set: refreshes.
    sync_moves: u64,
    reason: String,
    resource_version: String,
}

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
    /// By "namespace/name".
    objects: HashMap<String, Seen>,
    /// Per bench Secret: resourceVersion and a digest of type and data.
    secrets: HashMap<String, (String, u64)>,
    /// Writes to the resources and Secrets of scenario 1 only.
    writes: Writes,
}

type Observed = Arc<Mutex<State>>;

fn lock(state: &Observed) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether "namespace/name" belongs to scenario 1 (the 500), or else scenario 2.
fn is_main(key: &str) -> bool {
    key.split_once('/')
        .and_then(|(ns, _)| ns_index(ns))
        .is_some_and(|n| n < NAMESPACES)
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

/// Watches the bench AzureKeyVaultSecrets (by label) and the Secrets vaultsync manages in
/// the bench namespaces, recording readiness, sync times and writes.
fn observe(client: &Client) -> (Observed, Vec<tokio::task::JoinHandle<()>>) {
    let state: Observed = Arc::default();
    let crs = Api::<AzureKeyVaultSecret>::all(client.clone());
    let config = watcher::Config::default().labels(&format!("{LABEL}=true"));
    let st = state.clone();
    let cr_task = tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(crs, config).default_backoff().applied_objects());
        while let Some(event) = events.next().await {
            let Ok(obj) = event else { continue };
            let now = Instant::now();
            let key = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
            let main = is_main(&key);
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
            if let (Some(old), Some(new)) = (entry.last_sync, last_sync)
                && new > old
            {
                entry.sync_moves += 1;
            }
            entry.last_sync = last_sync.or(entry.last_sync);
            if ready && entry.first_ready.is_none() {
                entry.first_ready = Some(now);
            }
            if changed && main {
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
            if ns_index(&ns).is_none_or(|n| n >= NAMESPACES) {
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

fn count_ready(state: &Observed, main: bool) -> usize {
    lock(state)
        .objects
        .iter()
        .filter(|(k, s)| is_main(k) == main && s.first_ready.is_some())
        .count()
}

/// Latencies (s) from `t0` to Ready, sorted, and the reasons of those not Ready.
fn latencies(state: &Observed, main: bool, t0: Instant) -> (Vec<f64>, BTreeMap<String, usize>) {
    let state = lock(state);
    let mut lat: Vec<f64> = state
        .objects
        .iter()
        .filter(|(k, _)| is_main(k) == main)
        .filter_map(|(_, s)| {
            s.first_ready
                .map(|r| r.saturating_duration_since(t0).as_secs_f64())
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    let mut reasons = BTreeMap::new();
    for (_, s) in state
        .objects
        .iter()
        .filter(|(k, s)| is_main(k) == main && s.first_ready.is_none())
    {
        let reason = if s.reason.is_empty() {
            "no status yet".to_string()
        } else {
            s.reason.clone()
        };
        *reasons.entry(reason).or_default() += 1;
    }
    (lat, reasons)
}

// ---------------------------------------------------------------------------------------
// Operator metrics of interest

#[derive(Clone, Copy, Default)]
struct OpFigures {
    synced: f64,
    failed: f64,
    azure_requests: f64,
    azure_ok: f64,
    azure_throttled: f64,
    data_writes: f64,
    metadata_writes: f64,
}

impl OpFigures {
    fn from(samples: &Samples) -> Self {
        let get = |l: &BTreeMap<String, String>, k: &str| l.get(k).cloned().unwrap_or_default();
        let azure = |l: &BTreeMap<String, String>| get(l, "backend") == "azure";
        Self {
            synced: samples.sum("vaultsync_syncs_total", |l| get(l, "result") == "Synced"),
            failed: samples.sum("vaultsync_syncs_total", |l| get(l, "result") != "Synced"),
            azure_requests: samples.sum("vaultsync_backend_requests_total", azure),
            azure_ok: samples.sum("vaultsync_backend_requests_total", |l| {
                azure(l) && get(l, "outcome") == "ok"
            }),
            azure_throttled: samples.sum("vaultsync_backend_requests_total", |l| {
                azure(l) && get(l, "outcome") == "throttled"
            }),
            data_writes: samples.sum("vaultsync_secret_writes_total", |l| {
                get(l, "part") == "data"
            }),
            metadata_writes: samples.sum("vaultsync_secret_writes_total", |l| {
                get(l, "part") == "metadata"
            }),
        }
    }

    fn minus(self, before: Self) -> Self {
        Self {
            synced: self.synced - before.synced,
            failed: self.failed - before.failed,
            azure_requests: self.azure_requests - before.azure_requests,
            azure_ok: self.azure_ok - before.azure_ok,
            azure_throttled: self.azure_throttled - before.azure_throttled,
            data_writes: self.data_writes - before.data_writes,
            metadata_writes: self.metadata_writes - before.metadata_writes,
        }
    }
}

fn breakdown(samples: &Samples, name: &str, labels: &[&str]) -> BTreeMap<String, f64> {
    samples.group(
        name,
        |l| l.get("backend").is_none_or(|b| b == "azure"),
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
// The local Key Vault's and token endpoint's logs

/// The byte length of a log now: where this run's lines start.
fn log_offset(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The log's text after `offset` (all of it if the file was truncated since).
fn log_since(path: &Path, offset: u64) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(std::io::SeekFrom::Start(if len < offset {
        0
    } else {
        offset
    }))
    .ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// One request line of the local Key Vault's log:
/// `TIME CLIENT METHOD vault=V PATH STATUS identity=I request-id=R`.
struct KvLine {
    at: Timestamp,
    method: String,
    vault: String,
    path: String,
    status: u16,
}

fn parse_kv_log(text: &str) -> Vec<KvLine> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 6 {
                return None;
            }
            Some(KvLine {
                at: f[0].parse().ok()?,
                method: f[2].to_string(),
                vault: f[3].strip_prefix("vault=")?.to_string(),
                path: f[4].to_string(),
                status: f[5].parse().ok()?,
            })
        })
        .collect()
}

/// HTTP requests the vault saw in a window.
#[derive(Default)]
struct Traffic {
    ok: usize,
    challenged: usize,
    throttled: usize,
    other: usize,
    first: Option<Timestamp>,
    last: Option<Timestamp>,
    /// Most requests (any status) in any one-second sliding window.
    peak_per_sec: usize,
    /// The same without the 401 challenges: SDK calls, what the client-side limit spaces.
    peak_calls_per_sec: usize,
}

impl Traffic {
    fn total(&self) -> usize {
        self.ok + self.challenged + self.throttled + self.other
    }

    fn span_secs(&self) -> f64 {
        match (self.first, self.last) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
            _ => 0.0,
        }
    }
}

fn traffic(
    lines: &[KvLine],
    from: Timestamp,
    to: Timestamp,
    keep: impl Fn(&KvLine) -> bool,
) -> Traffic {
    let mut t = Traffic::default();
    let mut times = Vec::new();
    for l in lines
        .iter()
        .filter(|l| l.at >= from && l.at <= to && l.vault == VAULT && keep(l))
    {
        match l.status {
            200 => t.ok += 1,
            401 => t.challenged += 1,
            429 => t.throttled += 1,
            _ => t.other += 1,
        }
        times.push(l.at);
    }
    times.sort();
    t.first = times.first().copied();
    t.last = times.last().copied();
    t.peak_per_sec = peak_per_sec(&times);
    let mut calls: Vec<Timestamp> = lines
        .iter()
        .filter(|l| l.at >= from && l.at <= to && l.vault == VAULT && l.status != 401 && keep(l))
        .map(|l| l.at)
        .collect();
    calls.sort();
    t.peak_calls_per_sec = peak_per_sec(&calls);
    t
}

/// Most of the sorted `times` in any one-second sliding window.
fn peak_per_sec(times: &[Timestamp]) -> usize {
    let mut peak = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end].duration_since(times[start]).as_secs_f64() >= 1.0 {
            start += 1;
        }
        peak = peak.max(end - start + 1);
    }
    peak
}

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

/// Token endpoint exchanges in a window: issued per bench namespace, and refusals of the
/// reader client (not attributable to a namespace: a refusal names no subject).
#[derive(Default)]
struct Exchanges {
    issued: BTreeMap<String, usize>,
    refused: usize,
}

impl Exchanges {
    fn issued_total(&self) -> usize {
        self.issued.values().sum()
    }

    fn describe(&self) -> String {
        let max = self.issued.values().max().copied().unwrap_or(0);
        format!(
            "{} ({} ns, max {max}/ns{})",
            self.issued_total(),
            self.issued.len(),
            if self.refused > 0 {
                format!(", {} refused", self.refused)
            } else {
                String::new()
            }
        )
    }
}

/// `TIME CLIENT POST /TENANT/oauth2/v2.0/token STATUS key=value... [issued]`.
fn exchanges(
    text: &str,
    from: Timestamp,
    to: Timestamp,
    namespaces: &BTreeSet<String>,
) -> Exchanges {
    let mut out = Exchanges::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || f[2] != "POST" || !f[3].ends_with("/oauth2/v2.0/token") {
            continue;
        }
        let Ok(at) = f[0].parse::<Timestamp>() else {
            continue;
        };
        if at < from || at > to {
            continue;
        }
        let field = |k: &str| {
            f[5..]
                .iter()
                .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
        };
        if field("client_id") != Some(READER) {
            continue;
        }
        if f[4] != "200" {
            out.refused += 1;
            continue;
        }
        let ns = field("subject")
            .and_then(|s| s.strip_prefix("system:serviceaccount:"))
            .and_then(|s| s.split(':').next());
        if let Some(ns) = ns.filter(|ns| namespaces.contains(*ns)) {
            *out.issued.entry(ns.to_string()).or_default() += 1;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The report

#[derive(Default)]
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
            if ok { "ok" } else { "MISSED" }.into(),
        ));
    }

    fn print(&self, title: &str) {
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
        let line = "-".repeat(w0 + w1 + w2 + 14);
        println!();
        println!("{title}");
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
            println!("- {note}");
        }
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("?".to_string(), |v| v.to_string())
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
            watch_namespaces: &format!(
                "[{}]",
                namespaces
                    .iter()
                    .map(|n| ns_name(*n))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            concurrency,
            vault_addr: env("VAULT_ADDR")?,
            log_level: std::env::var("VAULTSYNC_BENCH_LOG").unwrap_or_else(|_| "info".into()),
            extra: azure_yaml.to_string(),
        },
    )
}

fn log_problems(op: &common::Operator) -> usize {
    op.logs()
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .count()
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
    let kv_log = kv_dir.join("keyvault.log");
    let token_log = kv_dir.join("token-endpoint.log");
    let load = common::load_average();
    eprintln!("bench-azure: load average before the run: {load}");

    install_crds(&client).await?;
    let t = Instant::now();
    let leftovers = delete_namespaces(&client, Duration::from_secs(180)).await?;
    if leftovers > 0 {
        eprintln!(
            "bench-azure: deleted {leftovers} leftover akvbench namespaces in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
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
    let (state, watch_tasks) = observe(&client);
    let t = Instant::now();
    stream::iter(all_resources())
        .map(|(ns, name, object)| {
            let client = client.clone();
            async move {
                Api::<AzureKeyVaultSecret>::namespaced(client, &ns)
                    .patch(
                        &name,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(&manifest(&ns, &name, &object)),
                    )
                    .await
                    .with_context(|| format!("apply AzureKeyVaultSecret {ns}/{name}"))
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    let apply_secs = t.elapsed().as_secs_f64();
    wait_for(Duration::from_secs(30), "the watch to see every CR", || {
        let n = lock(&state).objects.len();
        async move { (n >= TOTAL + COALESCE_COUNT).then_some(()) }
    })
    .await?;
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
    let kv_offset = log_offset(&kv_log);
    let token_offset = log_offset(&token_log);
    let writes_0 = apiserver_writes(&client).await?;
    let t0 = Instant::now();
    let t0_wall = Timestamp::now();
    let mut op = start_operator(&dir, &main_namespaces, concurrency, &azure_yaml)?;
    eprintln!(
        "bench-azure: operator pid {} started for {TOTAL} resources (log: {})",
        op.pid(),
        op.log.display()
    );
    let mut ready_at = None;
    let mut died = false;
    while t0.elapsed() < COLD_START_TIMEOUT {
        if count_ready(&state, true) >= TOTAL {
            ready_at = Some(t0.elapsed());
            break;
        }
        if !op.alive() {
            died = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t_ready_wall = Timestamp::now();
    let cold_samples = op.metrics().await;
    let cold = OpFigures::from(&cold_samples);
    let cold_proc = op.stats();
    let writes_1 = apiserver_writes(&client).await?;
    let (lat, not_ready) = latencies(&state, true, t0);
    match ready_at {
        Some(d) => eprintln!(
            "bench-azure: all {TOTAL} Ready after {:.2} s",
            d.as_secs_f64()
        ),
        None => eprintln!(
            "bench-azure: only {} of {TOTAL} Ready after {:.0} s{}",
            lat.len(),
            t0.elapsed().as_secs_f64(),
            if died { ": the operator exited" } else { "" }
        ),
    }

    // Steady state: one refresh cycle of unchanged data.
    struct Steady {
        done: Option<Duration>,
        left: usize,
        refreshes: u64,
        twice: usize,
        figures: OpFigures,
        bench: Writes,
        cpu: f64,
        from: Timestamp,
        to: Timestamp,
        token_requests: f64,
    }
    let mut steady = None;
    if ready_at.is_some() {
        let before = OpFigures::from(&op.metrics().await);
        let proc_before = op.stats();
        let writes_2 = apiserver_writes(&client).await?;
        let (bench_before, marks) = {
            let state = lock(&state);
            let marks: HashMap<String, (Option<Timestamp>, u64)> = state
                .objects
                .iter()
                .filter(|(k, _)| is_main(k))
                .map(|(k, s)| (k.clone(), (s.last_sync, s.sync_moves)))
                .collect();
            (state.writes, marks)
        };
        let t1 = Instant::now();
        let from = Timestamp::now();
        eprintln!("bench-azure: waiting for one refresh cycle (refreshInterval {REFRESH})");
        let mut done = None;
        let mut left = TOTAL;
        while t1.elapsed() < CYCLE_TIMEOUT && op.alive() {
            left = lock(&state)
                .objects
                .iter()
                .filter(|(k, s)| marks.get(*k).is_some_and(|(mark, _)| s.last_sync <= *mark))
                .count();
            if left == 0 {
                done = Some(t1.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let after = OpFigures::from(&op.metrics().await);
        let proc_after = op.stats();
        let writes_3 = apiserver_writes(&client).await?;
        let to = Timestamp::now();
        let (bench_after, refreshes, twice) = {
            let state = lock(&state);
            let mut refreshes = 0;
            let mut twice = 0;
            for (k, (_, moves)) in &marks {
                let n = state.objects.get(k).map_or(0, |s| s.sync_moves - moves);
                refreshes += n;
                if n > 1 {
                    twice += 1;
                }
            }
            (state.writes, refreshes, twice)
        };
        let token_requests = delta(&writes_3, &writes_2)
            .get("POST serviceaccounts/token")
            .copied()
            .unwrap_or(0.0);
        steady = Some(Steady {
            done,
            left,
            refreshes,
            twice,
            figures: after.minus(before),
            bench: bench_after.minus(bench_before),
            cpu: proc_after.cpu_seconds - proc_before.cpu_seconds,
            from,
            to,
            token_requests,
        });
    }
    let main_proc = op.stats();
    let main_samples = op.metrics().await;
    let main_total = OpFigures::from(&main_samples);
    op.stop();
    let main_log = op.log.clone();
    let main_log_problems = log_problems(&op);
    drop(op);

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
    let mut coalesce_ready = None;
    let mut died2 = false;
    while t2.elapsed() < COALESCE_TIMEOUT {
        if count_ready(&state, false) >= COALESCE_COUNT {
            coalesce_ready = Some(t2.elapsed());
            break;
        }
        if !op2.alive() {
            died2 = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t3_wall = Timestamp::now();
    let coalesce_samples = op2.metrics().await;
    let coalesce = OpFigures::from(&coalesce_samples);
    let coalesce_proc = op2.stats();
    let (coalesce_lat, coalesce_not_ready) = latencies(&state, false, t2);
    op2.stop();
    let coalesce_log = op2.log.clone();
    let coalesce_log_problems = log_problems(&op2);
    drop(op2);
    for task in &watch_tasks {
        task.abort();
    }

    // The vault's and the token endpoint's view.
    let kv_lines = log_since(&kv_log, kv_offset).map(|t| parse_kv_log(&t));
    let token_text = log_since(&token_log, token_offset);
    let cold_traffic = kv_lines
        .as_ref()
        .map(|l| traffic(l, t0_wall, t_ready_wall, is_main_read));
    let steady_traffic = steady
        .as_ref()
        .and_then(|s| Some(traffic(kv_lines.as_ref()?, s.from, s.to, is_main_read)));
    let coalesce_traffic = kv_lines
        .as_ref()
        .map(|l| traffic(l, t2_wall, t3_wall, is_shared_read));
    let coalesce_ns: BTreeSet<String> = [ns_name(COALESCE_NS)].into();
    let cold_exchanges = token_text
        .as_deref()
        .map(|t| exchanges(t, t0_wall, t_ready_wall, &main_ns_names));
    let steady_exchanges = steady.as_ref().and_then(|s| {
        Some(exchanges(
            token_text.as_deref()?,
            s.from,
            s.to,
            &main_ns_names,
        ))
    });
    let coalesce_exchanges = token_text
        .as_deref()
        .map(|t| exchanges(t, t2_wall, t3_wall, &coalesce_ns));
    let vault_throttle_now = std::fs::read_to_string(kv_dir.join("settings.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .map(|v| v["rateLimits"].clone());

    // Cleanup.
    let t = Instant::now();
    let deleted = delete_namespaces(&client, Duration::from_secs(180)).await;
    let undeleted_secrets = delete_secrets(&kv, &object_names).await;
    let cleanup_secs = t.elapsed().as_secs_f64();

    // ---- Report.
    let mut report = Report::default();
    report.section(&format!(
        "1. cold start: {TOTAL} AzureKeyVaultSecrets over {NAMESPACES} namespaces x {PER_NAMESPACE}, each its own secret; CRs applied first (operator concurrency {concurrency}, requestsPerSecond {client_rps}{})",
        if rps_override.is_some() { "" } else { " = default" }
    ));
    let ready_secs = ready_at.map(|d| d.as_secs_f64());
    report.check(
        &format!("operator start -> all {TOTAL} Ready=True"),
        ready_secs.map_or_else(|| format!("{} Ready", lat.len()), |s| format!("{s:.2} s")),
        &format!("<= {TARGET_READY_SECS:.0} s"),
        ready_secs.is_some_and(|s| s <= TARGET_READY_SECS),
    );
    report.row(
        "first object Ready (startup cost)",
        format!("{:.2} s", percentile(&lat, 0.0)),
    );
    report.row(
        "per-object latency p50 / p90 / p99",
        format!(
            "{:.2} / {:.2} / {:.2} s",
            percentile(&lat, 0.5),
            percentile(&lat, 0.9),
            percentile(&lat, 0.99)
        ),
    );
    report.row(
        "operator: syncs ok / failed",
        format!("{} / {}", cold.synced, cold.failed),
    );
    report.row(
        "operator: Key Vault requests (ok / throttled)",
        format!(
            "{} ({} / {})",
            cold.azure_requests, cold.azure_ok, cold.azure_throttled
        ),
    );
    report.row(
        "vault log: HTTP requests 200 / 401 challenge / 429 / other",
        cold_traffic.as_ref().map_or("?".into(), |t| {
            format!(
                "{} / {} / {} / {}",
                t.ok, t.challenged, t.throttled, t.other
            )
        }),
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
        format!(
            "{}",
            cold_writes
                .get("POST serviceaccounts/token")
                .copied()
                .unwrap_or(0.0)
        ),
    );
    report.row(
        "operator: Secret writes data / metadata",
        format!("{} / {}", cold.data_writes, cold.metadata_writes),
    );
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
        report.row(
            "cycle (every lastSyncTime moved once)",
            s.done.map_or_else(
                || format!("incomplete: {} left", s.left),
                |d| format!("{:.1} s", d.as_secs_f64()),
            ),
        );
        report.row(
            "refreshes seen (lastSyncTime moves) / objects twice",
            format!("{} / {}", s.refreshes, s.twice),
        );
        let per_refresh = s.figures.azure_requests / (s.refreshes.max(1) as f64);
        report.check(
            "Key Vault requests per object per refresh",
            format!(
                "{per_refresh:.3} ({} / {})",
                s.figures.azure_requests, s.refreshes
            ),
            &format!("<= {TARGET_REQUESTS_PER_REFRESH:.0}"),
            s.done.is_some() && per_refresh <= TARGET_REQUESTS_PER_REFRESH,
        );
        report.row(
            &format!("  Key Vault requests in the window / {TOTAL}"),
            format!(
                "{:.3} ({} / {TOTAL})",
                s.figures.azure_requests / TOTAL as f64,
                s.figures.azure_requests
            ),
        );
        report.row(
            "vault log: HTTP requests 200 / 401 / 429 / other",
            steady_traffic.as_ref().map_or("?".into(), |t| {
                format!(
                    "{} / {} / {} / {}",
                    t.ok, t.challenged, t.throttled, t.other
                )
            }),
        );
        report.check(
            "operator: Secret writes data",
            format!("{}", s.figures.data_writes),
            "0",
            s.figures.data_writes == 0.0 && s.done.is_some(),
        );
        report.row(
            "bench Secret writes data / metadata / created / deleted (watch)",
            format!(
                "{} / {} / {} / {}",
                s.bench.secret_data,
                s.bench.secret_metadata,
                s.bench.secret_created,
                s.bench.secret_deleted
            ),
        );
        report.row(
            "bench CR writes (status)",
            format!(
                "{} ({:.2}/refresh)",
                s.bench.cr,
                s.bench.cr as f64 / s.refreshes.max(1) as f64
            ),
        );
        report.row(
            "operator: syncs ok / failed",
            format!("{} / {}", s.figures.synced, s.figures.failed),
        );
        report.row(
            "token exchanges (token endpoint) / apiserver TokenRequests",
            format!(
                "{} / {}",
                opt(steady_exchanges.as_ref().map(Exchanges::describe)),
                s.token_requests
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
        format!("{}", main_total.azure_requests),
    );

    report.section(&format!(
        "3. coalescing: {COALESCE_COUNT} resources in {}, one identity, ONE secret; CRs applied first, new operator",
        ns_name(COALESCE_NS)
    ));
    let coalesce_secs = coalesce_ready.map(|d| d.as_secs_f64());
    report.row(
        &format!("operator start -> all {COALESCE_COUNT} Ready=True"),
        coalesce_secs.map_or_else(
            || format!("{} Ready", coalesce_lat.len()),
            |s| format!("{s:.2} s"),
        ),
    );
    let ratio = coalesce.azure_requests / COALESCE_COUNT as f64;
    report.check(
        &format!("Key Vault requests / {COALESCE_COUNT} resources"),
        format!(
            "{ratio:.2} ({} / {COALESCE_COUNT})",
            coalesce.azure_requests
        ),
        &format!("<= {TARGET_COALESCED}"),
        coalesce_ready.is_some() && ratio <= TARGET_COALESCED,
    );
    report.row(
        "vault log: HTTP requests 200 / 401 / 429 / other",
        coalesce_traffic.as_ref().map_or("?".into(), |t| {
            format!(
                "{} / {} / {} / {}",
                t.ok, t.challenged, t.throttled, t.other
            )
        }),
    );
    report.row(
        "token exchanges (token endpoint log)",
        opt(coalesce_exchanges.as_ref().map(Exchanges::describe)),
    );
    report.row(
        "operator: syncs ok / failed",
        format!("{} / {}", coalesce.synced, coalesce.failed),
    );
    report.row(
        "operator peak RSS / CPU",
        format!(
            "{:.1} MiB / {:.2} s",
            coalesce_proc.hwm_kib as f64 / 1024.0,
            coalesce_proc.cpu_seconds
        ),
    );

    // Notes.
    if let (Some(t), Some(secs)) = (&cold_traffic, ready_secs) {
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
    report.notes.push(format!(
        "operator Key Vault requests by operation/outcome (scenario 1): {}",
        fmt_top(
            &breakdown(
                &main_samples,
                "vaultsync_backend_requests_total",
                &["operation", "outcome"]
            ),
            8
        )
    ));
    report.notes.push(format!(
        "cold apiserver writes (all clients): {}",
        fmt_top(&cold_writes, 8)
    ));
    if !not_ready.is_empty() {
        report.notes.push(format!(
            "not Ready at the end of the cold start: {not_ready:?}"
        ));
    }
    if !coalesce_not_ready.is_empty() {
        report.notes.push(format!(
            "not Ready at the end of the coalescing run: {coalesce_not_ready:?}"
        ));
    }
    if died || died2 {
        report.notes.push(format!(
            "an operator exited early: see {} / {}",
            main_log.display(),
            coalesce_log.display()
        ));
    }
    if kv_lines.is_none() || token_text.is_none() {
        report.notes.push(format!(
            "could not read {} or {}: the log-based rows show ?",
            kv_log.display(),
            token_log.display()
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
        "operator logs: {} ({main_log_problems} WARN/ERROR lines), {} ({coalesce_log_problems}); cleanup {cleanup_secs:.1} s{}{}; bench total {:.0} s",
        main_log.display(),
        coalesce_log.display(),
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
    report.print(&format!(
        "vaultsync bench-azure: local Key Vault `{VAULT}`, workload identity ({READER}) per namespace"
    ));
    Ok(())
}
