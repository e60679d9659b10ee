//! `make bench-dynamic`: dynamic database credentials under a release-built operator
//! against the local environment, for five minutes, printed as figures (no verdict).
//!
//! Scenario: 200 VaultSecrets with a `database` source over 10 namespaces
//! (`benchdyn-0` .. `benchdyn-9`, 20 each), each namespace its own tenant (service
//! account `app`, a Kubernetes auth role, a policy reading `database/creds/benchdyn` and
//! updating `sys/leases/renew/database/creds/benchdyn/*` and
//! `sys/leases/revoke/database/creds/benchdyn/*`, path-scoped to the role's leases).
//! They share one OpenBao database role `benchdyn` with the statements of the
//! environment's `database/roles/app`, `default_ttl` 60 s and `max_ttl` 180 s, so every
//! lease is renewed at 67% (about every 40 s) and re-issued as the 180 s maximum comes
//! near, several times in five minutes.
//!
//! 1. The operator starts (watching only the bench namespaces), the CRs are applied, and
//!    the bench waits until all are Ready=True.
//! 2. For five minutes, every ~5 s, a sampling round reads every bench Secret and asks
//!    PostgreSQL, in one admin query, whether the role each Secret holds still exists and
//!    is within its `VALID UNTIL`. A (Secret, moment) pair whose role is gone or past its
//!    validity is an *expired credential held* (target 0). A Secret whose content changed
//!    between its read and the query (a re-issue writes the new credentials, then revokes
//!    the old ones) is re-read and counted apart as a benign race, unless the old role had
//!    already passed its last known validity. Each round also logs in for real with one
//!    random Secret's credentials, reads `status.lease.expiresAt` of every resource, and
//!    counts the live OpenBao leases of the role.
//! 3. Renewals, issues, revocations and logins come from the operator's `/metrics`
//!    (`vaultsync_backend_requests_total`, `vaultsync_vault_logins_total`); OpenBao's own
//!    `/v1/sys/metrics` and the kube-apiserver's `/metrics` count every client.
//! 4. Cleanup: the CRs are deleted (the finalizer revokes each lease), leftovers are
//!    counted, then the namespaces, the tenants' roles and policies and the database role
//!    go, and the operator is stopped.
//!
//! Run with `make bench-dynamic` (or `cargo build --release && cargo run --release
//! --example bench_dynamic` after `source target/env/env.sh`).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use common::metrics::{Samples, apiserver_writes, delta, fmt_top};
use common::setup::{bench_namespaces, install_crds, wait_for};
use common::{Operator, OperatorConfig, percentile};
use futures::{StreamExt, TryStreamExt, stream};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use vaultrs::client::VaultClient;
use vaultsync::api::VaultSecret;

const MAKE: &str = "make bench-dynamic";
const NS_PREFIX: &str = "benchdyn-";
const NAMESPACES: usize = 10;
const PER_NAMESPACE: usize = 20;
const TOTAL: usize = NAMESPACES * PER_NAMESPACE;
const DB_ROLE: &str = "benchdyn";
const DEFAULT_TTL: u64 = 60;
const MAX_TTL: u64 = 180;
const RENEWAL_PERCENT: u32 = 67;
const WINDOW: Duration = Duration::from_secs(300);
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const DELETE_TIMEOUT: Duration = Duration::from_secs(90);
const OPERATOR_CONCURRENCY: usize = 32;
const CONCURRENCY: usize = 16;
const LABEL: &str = "vaultsync.dev/bench-dynamic";
const FIELD_MANAGER: &str = "vaultsync-bench-dynamic";
const FINALIZER: &str = "vaultsync.dev/revoke-lease";

fn ns_name(n: usize) -> String {
    format!("{NS_PREFIX}{n}")
}

fn is_bench_namespace(name: &str) -> bool {
    common::is_numbered(name, NS_PREFIX)
}

fn cr_name(i: usize) -> String {
    format!("db{i}")
}

fn env(name: &str) -> anyhow::Result<String> {
    common::env(name, MAKE)
}

/// A request to OpenBao as root, for what vaultrs has no call for.
async fn bao(
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let addr = env("VAULT_ADDR")?;
    let token = env("VAULT_TOKEN")?;
    let mut request = reqwest::Client::new()
        .request(method, format!("{addr}/v1/{path}"))
        .header("X-Vault-Token", token)
        .timeout(Duration::from_secs(10));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("OpenBao {path}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if status.as_u16() == 404 {
        return Ok(serde_json::Value::Null);
    }
    if !status.is_success() {
        bail!("OpenBao {path}: {status}");
    }
    Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

// ---------------------------------------------------------------------------------------
// Figures from Prometheus metrics

/// The operator's counters of interest.
#[derive(Clone, Copy, Default, Debug)]
struct OpFigures {
    renew_ok: f64,
    renew_err: f64,
    issue_ok: f64,
    issue_err: f64,
    revoke_ok: f64,
    revoke_err: f64,
    token_renew: f64,
    backend_requests: f64,
    logins: f64,
    logins_failed: f64,
    synced: f64,
    failed: f64,
    data_writes: f64,
    metadata_writes: f64,
}

impl OpFigures {
    fn from(s: &Samples) -> Self {
        let get = |l: &BTreeMap<String, String>, k: &str| l.get(k).cloned().unwrap_or_default();
        let req = |op: &str, ok: bool| {
            s.sum_finite("vaultsync_backend_requests_total", |l| {
                get(l, "backend") == "vault"
                    && get(l, "operation") == op
                    && (get(l, "outcome") == "ok") == ok
            })
        };
        Self {
            renew_ok: req("lease_renew", true),
            renew_err: req("lease_renew", false),
            issue_ok: req("database_creds", true),
            issue_err: req("database_creds", false),
            revoke_ok: req("revoke", true),
            revoke_err: req("revoke", false),
            token_renew: req("renew_token", true) + req("renew_token", false),
            backend_requests: s.sum_finite("vaultsync_backend_requests_total", |l| {
                get(l, "backend") == "vault"
            }),
            logins: s.sum_finite("vaultsync_vault_logins_total", |l| {
                get(l, "outcome") == "ok"
            }),
            logins_failed: s.sum_finite("vaultsync_vault_logins_total", |l| {
                get(l, "outcome") != "ok"
            }),
            synced: s.sum_finite("vaultsync_syncs_total", |l| get(l, "result") == "Synced"),
            failed: s.sum_finite("vaultsync_syncs_total", |l| get(l, "result") != "Synced"),
            data_writes: s.sum_finite("vaultsync_secret_writes_total", |l| {
                get(l, "part") == "data"
            }),
            metadata_writes: s.sum_finite("vaultsync_secret_writes_total", |l| {
                get(l, "part") == "metadata"
            }),
        }
    }

    fn minus(self, b: Self) -> Self {
        Self {
            renew_ok: self.renew_ok - b.renew_ok,
            renew_err: self.renew_err - b.renew_err,
            issue_ok: self.issue_ok - b.issue_ok,
            issue_err: self.issue_err - b.issue_err,
            revoke_ok: self.revoke_ok - b.revoke_ok,
            revoke_err: self.revoke_err - b.revoke_err,
            token_renew: self.token_renew - b.token_renew,
            backend_requests: self.backend_requests - b.backend_requests,
            logins: self.logins - b.logins,
            logins_failed: self.logins_failed - b.logins_failed,
            synced: self.synced - b.synced,
            failed: self.failed - b.failed,
            data_writes: self.data_writes - b.data_writes,
            metadata_writes: self.metadata_writes - b.metadata_writes,
        }
    }
}

/// OpenBao's own counters (every client of the server, not only this bench).
#[derive(Clone, Copy, Default, Debug)]
struct BaoFigures {
    requests: f64,
    logins: f64,
    creds_reads: f64,
    lease_renewals: f64,
    revocations: f64,
    lease_expirations: f64,
}

impl BaoFigures {
    async fn read() -> Option<Self> {
        let addr = env("VAULT_ADDR").ok()?;
        let token = env("VAULT_TOKEN").ok()?;
        let text = reqwest::Client::new()
            .get(format!("{addr}/v1/sys/metrics?format=prometheus"))
            .header("X-Vault-Token", token)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let s = Samples::parse(&text);
        let requests = s.sum_finite("vault_core_handle_request_count", |_| true);
        (requests > 0.0).then(|| Self {
            requests,
            logins: s.sum_finite("vault_core_handle_login_request_count", |_| true),
            creds_reads: s.sum_finite("vault_route_read_database__count", |_| true),
            lease_renewals: s.sum_finite("vault_expire_renew_count", |_| true),
            revocations: s.sum_finite("vault_expire_revoke_count", |_| true),
            lease_expirations: s.sum_finite("vault_expire_lease_expiration", |_| true),
        })
    }

    fn minus(self, b: Self) -> Self {
        Self {
            requests: self.requests - b.requests,
            logins: self.logins - b.logins,
            creds_reads: self.creds_reads - b.creds_reads,
            lease_renewals: self.lease_renewals - b.lease_renewals,
            revocations: self.revocations - b.revocations,
            lease_expirations: self.lease_expirations - b.lease_expirations,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The operator process

fn start_operator(dir: &std::path::Path) -> anyhow::Result<Operator> {
    let watch = (0..NAMESPACES).map(ns_name).collect::<Vec<_>>().join(", ");
    common::start_operator(
        dir,
        OperatorConfig {
            watch_namespaces: &format!("[{watch}]"),
            concurrency: OPERATOR_CONCURRENCY,
            vault_addr: env("VAULT_ADDR")?,
            log_level: "info".into(),
            extra: String::new(),
        },
    )
}

/// Other `vaultsync run` processes whose configuration watches every namespace: they
/// would reconcile the bench's resources too (and issue credentials of their own).
fn competing_operators(own: u32) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == own {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.first().is_some_and(|a| a.ends_with("vaultsync"))
            || args.get(1).map(String::as_str) != Some("run")
        {
            continue;
        }
        let config = args
            .iter()
            .position(|a| a == "--config")
            .and_then(|i| args.get(i + 1))
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| serde_yaml::from_str::<serde_json::Value>(&t).ok());
        let why = match config {
            None => Some("config unreadable"),
            Some(c) => match c["watchNamespaces"].as_array() {
                None => Some("watches all namespaces"),
                Some(a) if a.is_empty() => Some("watches all namespaces"),
                Some(a) if a.iter().any(|n| n.as_str().is_some_and(is_bench_namespace)) => {
                    Some("lists bench namespaces")
                }
                Some(_) => None,
            },
        };
        if let Some(why) = why {
            found.push(format!("pid {pid}: {why}"));
        }
    }
    found
}

// ---------------------------------------------------------------------------------------
// Setup and cleanup

/// The database role shared by every bench resource, with the statements of the
/// environment's `database/roles/app`.
async fn create_database_role() -> anyhow::Result<()> {
    let app = bao(reqwest::Method::GET, "database/roles/app", None).await?;
    let data = &app["data"];
    if !data.is_object() {
        bail!("the database role `app` is missing from OpenBao: run `make env-up`");
    }
    bao(
        reqwest::Method::POST,
        &format!("database/roles/{DB_ROLE}"),
        Some(json!({
            "db_name": data["db_name"],
            "creation_statements": data["creation_statements"],
            "revocation_statements": data["revocation_statements"],
            "renew_statements": data["renew_statements"],
            "default_ttl": DEFAULT_TTL,
            "max_ttl": MAX_TTL,
        })),
    )
    .await
    .context("create the database role")?;
    Ok(())
}

/// One tenant per namespace: the namespace, service account `app`, a policy for the
/// credentials and their lease, and a Kubernetes auth role bound to the account.
async fn create_tenant(client: &Client, vault: &VaultClient, n: usize) -> anyhow::Result<()> {
    let policy = format!(
        "path \"database/creds/{DB_ROLE}\" {{ capabilities = [\"read\"] }}\n\
         path \"sys/leases/renew/database/creds/{DB_ROLE}/*\" {{ capabilities = [\"update\"] }}\n\
         path \"sys/leases/revoke/database/creds/{DB_ROLE}/*\" {{ capabilities = [\"update\"] }}\n"
    );
    common::setup::create_tenant(client, vault, &ns_name(n), LABEL, &policy).await?;
    Ok(())
}

fn manifest(n: usize, i: usize) -> serde_json::Value {
    let ns = ns_name(n);
    json!({
        "apiVersion": "vaultsync.dev/v1alpha1",
        "kind": "VaultSecret",
        "metadata": {"name": cr_name(i), "namespace": ns, "labels": {LABEL: "true"}},
        "spec": {
            "vault": {
                "auth": {"kubernetes": {"role": format!("{ns}-app"), "serviceAccountName": "app"}},
                "database": {"mount": "database", "role": DB_ROLE},
            },
            "renewalPercent": RENEWAL_PERCENT,
        }
    })
}

fn all_pairs() -> Vec<(usize, usize)> {
    common::all_pairs(NAMESPACES, PER_NAMESPACE)
}

/// Live OpenBao leases of the bench role.
async fn live_leases() -> Option<usize> {
    let list = bao(
        reqwest::Method::from_bytes(b"LIST").ok()?,
        &format!("sys/leases/lookup/database/creds/{DB_ROLE}/"),
        None,
    )
    .await
    .ok()?;
    Some(list["data"]["keys"].as_array().map_or(0, Vec::len))
}

/// Bench VaultSecrets left, in all bench namespaces.
async fn bench_resources(client: &Client) -> usize {
    let lists = futures::future::join_all((0..NAMESPACES).map(|n| {
        let api = Api::<VaultSecret>::namespaced(client.clone(), &ns_name(n));
        async move { api.list_metadata(&ListParams::default()).await }
    }))
    .await;
    lists
        .into_iter()
        .map(|l| l.map(|l| l.items.len()).unwrap_or(0))
        .sum()
}

/// Tears down everything the bench creates. Without an operator running (leftovers of an
/// earlier run), leases are revoked by prefix and finalizers removed so that the
/// namespaces can go.
async fn teardown(client: &Client, vault: &VaultClient) -> anyhow::Result<usize> {
    let _ = bao(
        reqwest::Method::PUT,
        &format!("sys/leases/revoke-prefix/database/creds/{DB_ROLE}"),
        None,
    )
    .await;
    let names = bench_namespaces(client, NS_PREFIX).await?;
    for ns in &names {
        let api = Api::<VaultSecret>::namespaced(client.clone(), ns);
        if let Ok(list) = api.list_metadata(&ListParams::default()).await {
            for obj in list.items {
                if obj.finalizers().iter().any(|f| f == FINALIZER) {
                    let _ = api
                        .patch(
                            &obj.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                        )
                        .await;
                }
            }
        }
        let _ = Api::<Namespace>::all(client.clone())
            .delete(ns, &DeleteParams::default())
            .await;
    }
    if !names.is_empty() {
        common::setup::wait_namespaces_gone(
            client,
            NS_PREFIX,
            Duration::from_secs(120),
            "the bench namespaces to go",
        )
        .await?;
    }
    for n in 0..NAMESPACES {
        common::setup::delete_tenant_vault(vault, &ns_name(n)).await;
    }
    let _ = bao(
        reqwest::Method::DELETE,
        &format!("database/roles/{DB_ROLE}"),
        None,
    )
    .await;
    Ok(names.len())
}

// ---------------------------------------------------------------------------------------
// PostgreSQL, through psql with the admin DATABASE_URL (password via PGPASSWORD only)

struct Pg {
    /// `postgres://user@host:port/db`, without the password.
    url: String,
    password: String,
    /// `host:port/db...`, for logins as other users.
    rest: String,
}

impl Pg {
    fn from_env() -> anyhow::Result<Self> {
        let admin = env("DATABASE_URL")?;
        let (scheme, after) = admin
            .split_once("://")
            .context("DATABASE_URL is not a postgres:// URL")?;
        let (userinfo, rest) = after
            .rsplit_once('@')
            .context("DATABASE_URL has no user@host part")?;
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        Ok(Self {
            url: format!("{scheme}://{user}@{rest}"),
            password: password.to_string(),
            rest: rest.to_string(),
        })
    }

    /// Runs `sql` (on stdin, so psql variables work) as the admin; rows as `|`-split fields.
    fn query(&self, sql: &str, vars: &[(&str, &str)]) -> anyhow::Result<Vec<Vec<String>>> {
        let mut command = Command::new("psql");
        command
            .arg(&self.url)
            .args(["-X", "-q", "-tA", "-F", "|", "-v", "ON_ERROR_STOP=1"])
            .env("PGPASSWORD", &self.password)
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in vars {
            command.arg("-v").arg(format!("{k}={v}"));
        }
        let mut child = command
            .spawn()
            .context("psql is not on PATH (run `make env-up` and source target/env/env.sh)")?;
        child
            .stdin
            .take()
            .context("psql stdin")?
            .write_all(sql.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "psql: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .next()
                    .unwrap_or("failed")
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('|').map(str::to_string).collect())
            .collect())
    }

    /// The server's clock, and for each of `users` that exists its `VALID UNTIL` (unix
    /// seconds, infinity when unset).
    fn validity(&self, users: &[String]) -> anyhow::Result<(f64, HashMap<String, f64>)> {
        let array = format!("{{{}}}", users.join(","));
        let rows = self.query(
            "SELECT '#now', extract(epoch FROM now())::float8;\n\
             SELECT rolname, COALESCE(extract(epoch FROM rolvaliduntil)::float8, 'Infinity'::float8)\n\
             FROM pg_roles WHERE rolname = ANY(:'users'::text[]);\n",
            &[("users", &array)],
        )?;
        let mut now = f64::NAN;
        let mut roles = HashMap::new();
        for row in rows {
            let (Some(name), Some(value)) = (row.first(), row.get(1)) else {
                continue;
            };
            let value = match value.as_str() {
                "Infinity" => f64::INFINITY,
                v => v.parse().unwrap_or(f64::NAN),
            };
            if name == "#now" {
                now = value;
            } else {
                roles.insert(name.clone(), value);
            }
        }
        if !now.is_finite() {
            bail!("psql returned no clock");
        }
        Ok((now, roles))
    }

    /// Roles the bench's database role created (`v-<display>-benchdyn-...`).
    fn bench_roles(&self) -> anyhow::Result<usize> {
        let rows = self.query(
            &format!("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v-%-{DB_ROLE}-%';\n"),
            &[],
        )?;
        Ok(rows
            .first()
            .and_then(|r| r.first())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// A real login with credentials from a Secret; the password goes through PGPASSWORD.
    fn login(&self, user: &str, password: &str) -> bool {
        Command::new("psql")
            .arg(format!("postgres://{user}@{}", self.rest))
            .args(["-X", "-q", "-tA", "-c", "select 1"])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "5")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

fn plain_name(user: &str) -> bool {
    !user.is_empty()
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

// ---------------------------------------------------------------------------------------
// Sampling

#[derive(Clone, Default)]
struct Held {
    user: String,
    password: String,
}

fn held(secret: &Secret) -> Option<Held> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| {
        data.get(k)
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
    };
    Some(Held {
        user: text("username")?,
        password: text("password").unwrap_or_default(),
    })
}

/// Per resource: the Secret's credentials and the lease recorded in status.
struct Snapshot {
    creds: HashMap<String, Held>,
    lease_end: HashMap<String, Option<Timestamp>>,
    ready: HashMap<String, bool>,
    reasons: BTreeMap<String, usize>,
    /// status.nextRefreshTime - status.lastSyncTime of each resource: the delay the
    /// operator scheduled at its last status write. Status is written only with news: here
    /// the last renewal or re-issue that changed the lease.
    scheduled: Vec<f64>,
}

async fn snapshot(client: &Client) -> anyhow::Result<Snapshot> {
    let lp = ListParams::default().labels("app.kubernetes.io/managed-by=vaultsync");
    let results = futures::future::join_all((0..NAMESPACES).map(|n| {
        let ns = ns_name(n);
        let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
        let crs = Api::<VaultSecret>::namespaced(client.clone(), &ns);
        let lp = lp.clone();
        async move {
            let all = ListParams::default();
            let (s, c) = futures::join!(secrets.list(&lp), crs.list(&all));
            Ok::<_, kube::Error>((ns, s?, c?))
        }
    }))
    .await;
    let mut snap = Snapshot {
        creds: HashMap::new(),
        lease_end: HashMap::new(),
        ready: HashMap::new(),
        reasons: BTreeMap::new(),
        scheduled: Vec::new(),
    };
    for result in results {
        let (ns, secrets, crs) = result?;
        for s in secrets.items {
            if let Some(h) = held(&s) {
                snap.creds.insert(format!("{ns}/{}", s.name_any()), h);
            }
        }
        for cr in crs.items {
            let key = format!("{ns}/{}", cr.name_any());
            let status = cr.status.as_ref();
            let ready = status
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                .map(|c| (c.status == "True", c.reason.clone()));
            if let Some((false, reason)) = &ready {
                *snap.reasons.entry(reason.clone()).or_default() += 1;
            }
            snap.ready
                .insert(key.clone(), ready.is_some_and(|(ok, _)| ok));
            if let Some((last, next)) = status.and_then(|s| {
                Some((
                    s.last_sync_time.as_ref()?.0,
                    s.next_refresh_time.as_ref()?.0,
                ))
            }) {
                snap.scheduled.push(next.duration_since(last).as_secs_f64());
            }
            snap.lease_end.insert(
                key,
                status
                    .and_then(|s| s.lease.as_ref())
                    .and_then(|l| l.expires_at.as_ref())
                    .map(|t| t.0),
            );
        }
    }
    Ok(snap)
}

async fn reread(client: &Client, key: &str) -> Option<Held> {
    let (ns, name) = key.split_once('/')?;
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .ok()??;
    held(&secret)
}

#[derive(Default)]
struct Tally {
    rounds: usize,
    pairs_checked: usize,
    /// (Secret, moment) pairs whose role was gone or past VALID UNTIL.
    expired: usize,
    expired_examples: Vec<String>,
    /// Pairs where the Secret was missing or held no username.
    missing: usize,
    /// Pairs whose Secret changed between read and check (re-issue in between).
    races: usize,
    /// Pairs whose status.lease.expiresAt had passed.
    status_expired: usize,
    /// Pairs with Ready != True.
    not_ready: usize,
    not_ready_reasons: BTreeMap<String, usize>,
    /// Smallest VALID UNTIL - now seen on a held credential.
    min_pg_margin: f64,
    /// Smallest status.lease.expiresAt - now seen.
    min_status_margin: f64,
    logins: usize,
    login_failures: usize,
    login_races: usize,
    leases_min: Option<usize>,
    leases_max: Option<usize>,
    /// Distinct usernames seen per Secret.
    users: HashMap<String, Vec<String>>,
    /// Last known VALID UNTIL of each username seen.
    valid_until: HashMap<String, f64>,
    round_errors: usize,
    slow_rounds: usize,
    scheduled: Vec<f64>,
}

async fn sample(client: &Client, pg: &Pg, tally: &mut Tally) -> anyhow::Result<String> {
    let snap = snapshot(client).await?;
    let now = Timestamp::now();
    let users: Vec<String> = snap
        .creds
        .values()
        .map(|h| h.user.clone())
        .filter(|u| plain_name(u))
        .collect();
    let (pg_now, roles) = pg.validity(&users)?;
    tally.rounds += 1;
    let mut expired_now = 0;
    let keys: Vec<String> = all_pairs()
        .into_iter()
        .map(|(n, i)| format!("{}/{}", ns_name(n), cr_name(i)))
        .collect();
    for key in &keys {
        tally.pairs_checked += 1;
        match snap.ready.get(key) {
            Some(true) => {}
            _ => tally.not_ready += 1,
        }
        if let Some(Some(end)) = snap.lease_end.get(key) {
            let margin = end.duration_since(now).as_secs_f64();
            tally.min_status_margin = tally.min_status_margin.min(margin);
            if margin <= 0.0 {
                tally.status_expired += 1;
            }
        }
        let Some(h) = snap.creds.get(key) else {
            tally.missing += 1;
            continue;
        };
        let seen = tally.users.entry(key.clone()).or_default();
        if seen.last() != Some(&h.user) {
            seen.push(h.user.clone());
        }
        let valid = roles.get(&h.user).copied();
        if let Some(until) = valid {
            tally.valid_until.insert(h.user.clone(), until);
        }
        match valid {
            Some(until) if until > pg_now => {
                tally.min_pg_margin = tally.min_pg_margin.min(until - pg_now);
            }
            _ => {
                // Gone or past validity at the query. If the Secret moved on in the
                // meantime and the old role was still within its last known validity,
                // it was revoked after the new credentials were written: a race of this
                // sampler, not an expired credential held.
                let now_held = reread(client, key).await;
                let moved = now_held.as_ref().is_some_and(|n| n.user != h.user);
                let last_known = tally.valid_until.get(&h.user).copied();
                if moved && last_known.is_some_and(|u| u > pg_now) {
                    tally.races += 1;
                } else {
                    tally.expired += 1;
                    expired_now += 1;
                    if tally.expired_examples.len() < 8 {
                        tally.expired_examples.push(format!(
                            "{key} at round {}: {}",
                            tally.rounds,
                            match valid {
                                None => "role gone".to_string(),
                                Some(u) => format!("VALID UNTIL passed {:.1} s ago", pg_now - u),
                            }
                        ));
                    }
                }
            }
        }
    }
    tally.scheduled.extend(snap.scheduled.iter().copied());
    for (reason, n) in &snap.reasons {
        *tally.not_ready_reasons.entry(reason.clone()).or_default() += n;
    }
    // One real login per round, with a random Secret's credentials.
    if !snap.creds.is_empty() {
        let pick = rand::random::<u64>() as usize % snap.creds.len();
        if let Some((key, h)) = snap.creds.iter().nth(pick) {
            tally.logins += 1;
            if !pg.login(&h.user, &h.password) {
                let moved = reread(client, key).await.is_some_and(|n| n.user != h.user);
                if moved {
                    tally.login_races += 1;
                } else {
                    tally.login_failures += 1;
                }
            }
        }
    }
    let leases = live_leases().await;
    if let Some(l) = leases {
        tally.leases_min = Some(tally.leases_min.map_or(l, |m| m.min(l)));
        tally.leases_max = Some(tally.leases_max.map_or(l, |m| m.max(l)));
    }
    Ok(format!(
        "held {}, expired {expired_now}, not Ready {}, live leases {}",
        snap.creds.len(),
        snap.ready.values().filter(|r| !**r).count(),
        leases.map_or("?".into(), |l| l.to_string())
    ))
}

// ---------------------------------------------------------------------------------------
// The run

struct Run {
    ready_secs: Option<f64>,
    not_ready_at_start: BTreeMap<String, usize>,
    tally: Tally,
    window_secs: f64,
    cold: OpFigures,
    window: OpFigures,
    at_window_end: OpFigures,
    bao_window: Option<BaoFigures>,
    api_window: BTreeMap<String, f64>,
    cpu_window: f64,
    died: bool,
}

async fn run(client: &Client, op: &mut Operator) -> anyhow::Result<Run> {
    let t0 = Instant::now();
    stream::iter(all_pairs())
        .map(|(n, i)| {
            let client = client.clone();
            async move {
                Api::<VaultSecret>::namespaced(client, &ns_name(n))
                    .patch(
                        &cr_name(i),
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(&manifest(n, i)),
                    )
                    .await
                    .with_context(|| format!("apply VaultSecret {}/{}", ns_name(n), cr_name(i)))
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    eprintln!(
        "bench-dynamic: {TOTAL} VaultSecrets applied in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let mut ready_secs = None;
    let mut not_ready_at_start = BTreeMap::new();
    let mut died = false;
    while t0.elapsed() < READY_TIMEOUT {
        if !op.alive() {
            died = true;
            break;
        }
        if let Ok(snap) = snapshot(client).await {
            let ready = snap.ready.values().filter(|r| **r).count();
            if ready >= TOTAL && snap.creds.len() >= TOTAL {
                ready_secs = Some(t0.elapsed().as_secs_f64());
                break;
            }
            not_ready_at_start = snap.reasons;
            let missing = TOTAL - ready.min(TOTAL);
            if missing > 0 {
                *not_ready_at_start
                    .entry("no status yet / not Ready".into())
                    .or_default() = missing;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cold = OpFigures::from(&op.metrics().await);
    match ready_secs {
        Some(s) => eprintln!("bench-dynamic: all {TOTAL} Ready after {s:.1} s"),
        None => eprintln!("bench-dynamic: not all Ready: {not_ready_at_start:?}"),
    }

    // The window: sample every SAMPLE_EVERY for WINDOW.
    let before = cold;
    let bao_before = BaoFigures::read().await;
    let api_before = apiserver_writes(client).await.unwrap_or_default();
    let cpu_before = op.cpu_seconds();
    let mut tally = Tally {
        min_pg_margin: f64::INFINITY,
        min_status_margin: f64::INFINITY,
        ..Tally::default()
    };
    let pg = Pg::from_env()?;
    let w0 = Instant::now();
    eprintln!(
        "bench-dynamic: sampling every {} s for {} s (lease {DEFAULT_TTL} s, max {MAX_TTL} s, renew at {RENEWAL_PERCENT}%)",
        SAMPLE_EVERY.as_secs(),
        WINDOW.as_secs()
    );
    let mut next = w0;
    while w0.elapsed() < WINDOW {
        if !op.alive() {
            died = true;
            break;
        }
        let started = Instant::now();
        match sample(client, &pg, &mut tally).await {
            Ok(line) => {
                let m = OpFigures::from(&op.metrics().await).minus(before);
                eprintln!(
                    "  t={:>5.1}s {line}; since start: renewals {}, issues {}, revokes {}, logins {}, syncs {}",
                    w0.elapsed().as_secs_f64(),
                    m.renew_ok,
                    m.issue_ok,
                    m.revoke_ok,
                    m.logins,
                    m.synced + m.failed
                );
            }
            Err(e) => {
                tally.round_errors += 1;
                eprintln!(
                    "  t={:>5.1}s sampling failed: {e:#}",
                    w0.elapsed().as_secs_f64()
                );
            }
        }
        if started.elapsed() > SAMPLE_EVERY {
            tally.slow_rounds += 1;
        }
        next += SAMPLE_EVERY;
        let now = Instant::now();
        if next > now {
            tokio::time::sleep(next - now).await;
        } else {
            next = now;
        }
    }
    let window_secs = w0.elapsed().as_secs_f64();
    let at_window_end = OpFigures::from(&op.metrics().await);
    let bao_after = BaoFigures::read().await;
    let api_after = apiserver_writes(client).await.unwrap_or_default();
    let cpu_window = op.cpu_seconds() - cpu_before;
    Ok(Run {
        ready_secs,
        not_ready_at_start,
        tally,
        window_secs,
        cold,
        window: at_window_end.minus(before),
        at_window_end,
        bao_window: bao_before.zip(bao_after).map(|(b, a)| a.minus(b)),
        api_window: delta(&api_after, &api_before),
        cpu_window,
        died,
    })
}

struct Deletion {
    secs: Option<f64>,
    left: usize,
    revoked: OpFigures,
    leases_left: Option<usize>,
    roles_left: Option<usize>,
}

async fn delete_all(client: &Client, op: &Operator, pg: &Pg) -> Deletion {
    let before = OpFigures::from(&op.metrics().await);
    let t = Instant::now();
    for n in 0..NAMESPACES {
        let _ = Api::<VaultSecret>::namespaced(client.clone(), &ns_name(n))
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await;
    }
    let gone = wait_for(DELETE_TIMEOUT, "the VaultSecrets to go", || async {
        (bench_resources(client).await == 0).then_some(())
    })
    .await;
    let secs = gone.is_ok().then(|| t.elapsed().as_secs_f64());
    let left = bench_resources(client).await;
    let revoked = OpFigures::from(&op.metrics().await).minus(before);
    // Revocation drops the PostgreSQL role through OpenBao; give it a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Deletion {
        secs,
        left,
        revoked,
        leases_left: live_leases().await,
        roles_left: pg.bench_roles().ok(),
    }
}

fn log_summary(path: &std::path::Path) -> (usize, usize, BTreeMap<String, f64>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut warn_error = 0;
    let mut failed = 0;
    let mut reasons = BTreeMap::new();
    for line in text.lines() {
        if line.contains("WARN") || line.contains("ERROR") {
            warn_error += 1;
        }
        if line.contains("sync failed") {
            failed += 1;
            let reason = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("reason="))
                .unwrap_or("?")
                .trim_matches('"')
                .to_string();
            *reasons.entry(reason).or_insert(0.0) += 1.0;
        }
    }
    (warn_error, failed, reasons)
}

fn print_rows(rows: &[(String, String)]) {
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    for (figure, value) in rows {
        if value.is_empty() {
            println!("{figure}");
        } else {
            println!("{figure:<w0$}  {value:>w1$}");
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-dynamic");
    std::fs::create_dir_all(&dir)?;
    let client = common::kube_client(MAKE).await?;
    let vault = common::root_vault(MAKE)?;
    let pg = Pg::from_env()?;
    pg.query("SELECT 1;\n", &[])
        .context("PostgreSQL (DATABASE_URL) does not answer: run `make env-up`")?;
    let load = common::load_average();
    eprintln!("bench-dynamic: load average before the run: {load}");

    install_crds(&client).await?;
    let leftovers = teardown(&client, &vault).await?;
    if leftovers > 0 {
        eprintln!("bench-dynamic: removed {leftovers} leftover bench namespaces");
    }
    let roles_before = pg.bench_roles().unwrap_or(0);

    // Setup.
    let t = Instant::now();
    create_database_role().await?;
    stream::iter(0..NAMESPACES)
        .map(|n| create_tenant(&client, &vault, n))
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    let setup_secs = t.elapsed().as_secs_f64();

    let mut op = start_operator(&dir)?;
    let ready_url = op.ready_url.clone();
    let up = wait_for(Duration::from_secs(30), "the operator to be ready", || {
        let url = ready_url.clone();
        async move {
            reqwest::get(&url)
                .await
                .ok()?
                .status()
                .is_success()
                .then_some(())
        }
    })
    .await;
    let competitors = competing_operators(op.pid());
    eprintln!(
        "bench-dynamic: operator pid {} (log: {}){}",
        op.pid(),
        op.log.display(),
        if competitors.is_empty() {
            String::new()
        } else {
            format!("; other operators that may watch the bench namespaces: {competitors:?}")
        }
    );

    let result = match up {
        Ok(()) => run(&client, &mut op).await,
        Err(e) => Err(e),
    };
    let deletion = if op.alive() {
        Some(delete_all(&client, &op, &pg).await)
    } else {
        None
    };
    let final_samples = op.metrics().await;
    op.stop();
    let (warn_error, failed_lines, fail_reasons) = log_summary(&op.log);
    let t = Instant::now();
    let cleaned = teardown(&client, &vault).await;
    let cleanup_secs = t.elapsed().as_secs_f64();
    let roles_after = pg.bench_roles().ok();
    let run = result?;

    // Report.
    let t = &run.tally;
    let w = &run.window;
    let secs = run.window_secs.max(1.0);
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |k: &str, v: String| rows.push((k.to_string(), v));
    row(
        &format!(
            "[{TOTAL} database VaultSecrets, {NAMESPACES} namespaces x {PER_NAMESPACE}; lease {DEFAULT_TTL} s, max TTL {MAX_TTL} s, renewalPercent {RENEWAL_PERCENT}]"
        ),
        String::new(),
    );
    row(
        "apply -> all Ready=True with credentials",
        run.ready_secs
            .map_or_else(|| "not reached".into(), |s| format!("{s:.1} s")),
    );
    row(
        "operator: OpenBao requests until all Ready",
        format!(
            "{} ({} issues, {} logins)",
            run.cold.backend_requests,
            run.cold.issue_ok,
            run.cold.logins + run.cold.logins_failed
        ),
    );
    row(
        &format!("[window: {secs:.0} s, {} sampling rounds]", t.rounds),
        String::new(),
    );
    row(
        "expired credential held (secret x moment)",
        format!("{} of {} checked (target 0)", t.expired, t.pairs_checked),
    );
    row("Secret missing / no username", format!("{}", t.missing));
    row(
        "status.lease.expiresAt passed",
        format!("{}", t.status_expired),
    );
    row("not Ready=True", format!("{}", t.not_ready));
    row(
        "Secret changed between read and check (race)",
        format!("{}", t.races),
    );
    row(
        "real logins failed / tried (races apart)",
        format!(
            "{} / {} ({} races)",
            t.login_failures, t.logins, t.login_races
        ),
    );
    row(
        "least VALID UNTIL margin of a held credential",
        if t.min_pg_margin.is_finite() {
            format!("{:.1} s", t.min_pg_margin)
        } else {
            "-".into()
        },
    );
    row(
        "least status.lease.expiresAt margin",
        if t.min_status_margin.is_finite() {
            format!("{:.1} s", t.min_status_margin)
        } else {
            "-".into()
        },
    );
    row(
        "live OpenBao leases of the role min / max",
        format!(
            "{} / {}",
            t.leases_min.map_or("?".into(), |v| v.to_string()),
            t.leases_max.map_or("?".into(), |v| v.to_string())
        ),
    );
    let mut scheduled = t.scheduled.clone();
    scheduled.sort_by(f64::total_cmp);
    row(
        "scheduled refresh delay (nextRefreshTime - lastSyncTime) p10/p50/p90",
        format!(
            "{:.0} / {:.0} / {:.0} s",
            percentile(&scheduled, 0.1),
            percentile(&scheduled, 0.5),
            percentile(&scheduled, 0.9)
        ),
    );
    let changes: usize = t.users.values().map(|u| u.len().saturating_sub(1)).sum();
    row(
        "credential changes seen in the Secrets",
        format!("{changes} ({:.2}/Secret)", changes as f64 / TOTAL as f64),
    );
    row(
        "lease renewals ok / failed",
        format!(
            "{} / {} ({:.2}/s, {:.2}/Secret)",
            w.renew_ok,
            w.renew_err,
            w.renew_ok / secs,
            w.renew_ok / TOTAL as f64
        ),
    );
    row(
        "re-issues (database_creds) ok / failed",
        format!(
            "{} / {} ({:.2}/Secret)",
            w.issue_ok,
            w.issue_err,
            w.issue_ok / TOTAL as f64
        ),
    );
    row(
        "revocations ok / failed",
        format!("{} / {}", w.revoke_ok, w.revoke_err),
    );
    row(
        "logins ok / failed; token renewals",
        format!("{} / {}; {}", w.logins, w.logins_failed, w.token_renew),
    );
    row(
        "operator OpenBao requests (backend_requests_total)",
        format!(
            "{} ({:.2}/s)",
            w.backend_requests,
            w.backend_requests / secs
        ),
    );
    row(
        "  + logins",
        format!(
            "{:.2}/s with logins",
            (w.backend_requests + w.logins + w.logins_failed) / secs
        ),
    );
    row(
        "operator reconciles ok / failed",
        format!(
            "{} / {} ({:.1}/s, {:.1}/Secret/min)",
            w.synced,
            w.failed,
            (w.synced + w.failed) / secs,
            (w.synced + w.failed) / TOTAL as f64 / (secs / 60.0)
        ),
    );
    row(
        "operator Secret writes data / metadata",
        format!("{} / {}", w.data_writes, w.metadata_writes),
    );
    row(
        "operator CPU in the window",
        format!(
            "{:.1} s ({:.0}%)",
            run.cpu_window,
            100.0 * run.cpu_window / secs
        ),
    );
    if let Some(b) = &run.bao_window {
        row(
            "OpenBao handled requests (all clients)",
            format!("{} ({:.2}/s)", b.requests, b.requests / secs),
        );
        row(
            "  logins / creds reads / renewals / revocations",
            format!(
                "{} / {} / {} / {}",
                b.logins, b.creds_reads, b.lease_renewals, b.revocations
            ),
        );
        row(
            "  leases that expired in OpenBao (all clients)",
            format!("{}", b.lease_expirations),
        );
    }
    let api_total: f64 = run.api_window.values().sum();
    row(
        "apiserver writes (all clients)",
        format!("{api_total} ({:.1}/s)", api_total / secs),
    );
    let total = run.at_window_end;
    row(
        "[whole run, from operator start to window end]",
        String::new(),
    );
    row(
        "issues / re-issues (issues - 200)",
        format!(
            "{} / {}",
            total.issue_ok,
            (total.issue_ok - TOTAL as f64).max(0.0)
        ),
    );
    row("renewals", format!("{}", total.renew_ok));
    if let Some(d) = &deletion {
        row("[deletion of the CRs]", String::new());
        row(
            "all VaultSecrets gone after",
            d.secs.map_or_else(
                || format!("not within {} s: {} left", DELETE_TIMEOUT.as_secs(), d.left),
                |s| format!("{s:.1} s"),
            ),
        );
        row(
            "revocations ok / failed",
            format!("{} / {}", d.revoked.revoke_ok, d.revoked.revoke_err),
        );
        row(
            "leases / PostgreSQL roles left after",
            format!(
                "{} / {}",
                d.leases_left.map_or("?".into(), |v| v.to_string()),
                d.roles_left.map_or("?".into(), |v| v.to_string())
            ),
        );
    }

    println!();
    println!("vaultsync bench-dynamic (figures only, no verdict)");
    println!("{}", "-".repeat(78));
    print_rows(&rows);
    println!("{}", "-".repeat(78));
    for e in &t.expired_examples {
        println!("expired: {e}");
    }
    if !run.not_ready_at_start.is_empty() && run.ready_secs.is_none() {
        println!("not Ready at the start: {:?}", run.not_ready_at_start);
    }
    if !t.not_ready_reasons.is_empty() {
        println!(
            "not Ready during the window, by reason: {:?}",
            t.not_ready_reasons
        );
    }
    println!("window apiserver writes: {}", fmt_top(&run.api_window, 8));
    println!(
        "operator OpenBao requests by operation/outcome (whole run incl. deletion): {}",
        fmt_top(
            &final_samples.group(
                "vaultsync_backend_requests_total",
                |_| true,
                |l| format!(
                    "{}/{}",
                    l.get("operation").map_or("", String::as_str),
                    l.get("outcome").map_or("", String::as_str)
                ),
            ),
            10
        )
    );
    if run.died {
        println!("the operator exited early: see {}", op.log.display());
    }
    if t.round_errors > 0 || t.slow_rounds > 0 {
        println!(
            "sampling: {} rounds failed, {} took longer than {} s",
            t.round_errors,
            t.slow_rounds,
            SAMPLE_EVERY.as_secs()
        );
    }
    if !competitors.is_empty() {
        println!(
            "other vaultsync processes that may watch the bench namespaces: {competitors:?} (their work would show here as extra issues and leases)"
        );
    }
    println!(
        "operator log: {} ({warn_error} WARN/ERROR lines, {failed_lines} 'sync failed' lines{})",
        op.log.display(),
        if fail_reasons.is_empty() {
            String::new()
        } else {
            format!(": {}", fmt_top(&fail_reasons, 6))
        }
    );
    println!(
        "setup {setup_secs:.1} s; cleanup {cleanup_secs:.1} s{}; bench PostgreSQL roles before {roles_before}, after cleanup {}; load average before: {load}; total {:.0} s",
        match &cleaned {
            Ok(_) => String::new(),
            Err(e) => format!(" ({e})"),
        },
        roles_after.map_or("?".into(), |v| v.to_string()),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
