//! `make bench-saturated` (part of `make bench`): new work while routine refreshes ask for
//! more than the operator may do.
//!
//! Scenario: 2,000 VaultSecrets over 40 namespaces, each refreshing every 5 s (the
//! bench's minimum): 400 reads a second asked for, twice the default client limit of 200
//! requests a second to OpenBao, so refreshes queue up for as long as the run lasts. Once
//! all are Ready and the backlog has built for 15 s, new resources and spec changes are
//! applied one at a time in different namespaces and timed from the apply until their
//! generation is synced. Target: 2 s each, as in `make bench`: first syncs and spec
//! changes go ahead of routine refreshes (`src/sync/lanes.rs`).
//!
//! Printed besides: the refreshes the operator served a second (to show it was saturated:
//! at the client limit, not at the 400 asked for) and the refresh interval that gives each
//! resource, so that putting new work first is seen not to starve the refreshes either.
//!
//! Runs against the local environment (`make env-up`) with the release build.

mod common;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use common::OperatorConfig;
use common::probe::{apply_and_time, describe, worst};
use common::runs::{ColdStart, synced};
use common::setup::{apply_all, delete_leftovers, delete_namespaces};
use common::watch::Watch;
use futures::{StreamExt, TryStreamExt, stream};
use serde_json::json;
use vaultrs::client::VaultClient;
use vaultsync::api::VaultSecret;

const MAKE: &str = "make bench-saturated";
const NS_PREFIX: &str = "bench-sat-";
const NAMESPACES: usize = 40;
const PER_NAMESPACE: usize = 50;
const TOTAL: usize = NAMESPACES * PER_NAMESPACE;
const REFRESH_SECS: usize = 5;
const LABEL: &str = "vaultsync.dev/bench-saturated";
const FIELD_MANAGER: &str = "vaultsync-bench";
const CONCURRENCY: usize = 32;
/// How long the backlog builds before the first probe.
const BACKLOG_SECS: u64 = 15;
const PROBES: usize = 5;
const TARGET_PROBE_SECS: f64 = 2.0;

fn ns_name(n: usize) -> String {
    format!("{NS_PREFIX}{n}")
}

fn kv_path(n: usize, i: usize) -> String {
    format!("bench-sat/{}/s{i}", ns_name(n))
}

fn manifest(ns: &str, name: &str, path: &str) -> serde_json::Value {
    common::kv_vault_secret(ns, name, LABEL, path, &format!("{REFRESH_SECS}s"), "3h")
}

fn all_pairs() -> Vec<(usize, usize)> {
    common::all_pairs(NAMESPACES, PER_NAMESPACE)
}

async fn setup(client: &kube::Client, vault: &VaultClient) -> anyhow::Result<()> {
    stream::iter(0..NAMESPACES)
        .map(|n| async move {
            let ns = ns_name(n);
            let policy =
                format!("path \"secret/data/bench-sat/{ns}/*\" {{ capabilities = [\"read\"] }}\n");
            common::setup::create_tenant(client, vault, &ns, LABEL, &policy).await
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    stream::iter(all_pairs())
        .map(|(n, i)| async move {
            vaultrs::kv2::set(vault, "secret", &kv_path(n, i), &json!({"password": "p"}))
                .await
                .with_context(|| format!("kv put {}", kv_path(n, i)))
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

async fn cleanup(client: &kube::Client, vault: &VaultClient) -> anyhow::Result<()> {
    delete_namespaces(client, NS_PREFIX, Duration::from_secs(180)).await?;
    stream::iter(all_pairs())
        .for_each_concurrent(CONCURRENCY, |(n, i)| async move {
            let _ = vaultrs::kv2::delete_metadata(vault, "secret", &kv_path(n, i)).await;
        })
        .await;
    for n in 0..NAMESPACES {
        common::setup::delete_tenant_vault(vault, &ns_name(n)).await;
        let _ = vaultrs::kv2::delete_metadata(vault, "secret", &probe_path(n)).await;
    }
    Ok(())
}

fn probe_path(n: usize) -> String {
    format!("bench-sat/{}/probe", ns_name(n))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let client = common::kube_client(MAKE).await?;
    let vault = common::root_vault(MAKE)?;
    common::setup::install_crds(&client).await?;
    delete_leftovers(&client, NS_PREFIX, "bench-saturated").await?;
    setup(&client, &vault).await?;
    let watch =
        Watch::start::<VaultSecret>(&client, LABEL, |ns| common::is_numbered(ns, NS_PREFIX));
    let resources = all_pairs()
        .into_iter()
        .map(|(n, i)| {
            (
                ns_name(n),
                format!("s{i}"),
                manifest(&ns_name(n), &format!("s{i}"), &kv_path(n, i)),
            )
        })
        .collect();
    apply_all::<VaultSecret>(&client, FIELD_MANAGER, resources, CONCURRENCY).await?;
    watch.wait_seen(TOTAL).await?;

    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-saturated");
    std::fs::create_dir_all(&dir)?;
    let t0 = Instant::now();
    let mut op = common::start_operator(
        &dir,
        OperatorConfig {
            watch_namespaces: &common::yaml_list((0..NAMESPACES).map(ns_name)),
            concurrency: CONCURRENCY,
            vault_addr: common::env("VAULT_ADDR", MAKE)?,
            log_level: common::bench_log_level(),
            extra: String::new(),
        },
    )?;
    let all = |_: &str| true;
    let cold = ColdStart::wait(&watch, &mut op, t0, all, TOTAL, Duration::from_secs(180)).await;
    cold.say("bench-saturated", TOTAL, t0);
    anyhow::ensure!(
        cold.ready_at.is_some(),
        "not every resource became Ready: {}",
        cold.describe()
    );

    tokio::time::sleep(Duration::from_secs(BACKLOG_SECS)).await;
    let syncs_0 = synced(&op.metrics().await, "VaultSecret");
    let t_window = Instant::now();
    let (mut created, mut changed) = (Vec::new(), Vec::new());
    let timeout = Duration::from_secs(60);
    for n in 0..PROBES {
        let ns = ns_name(n * (NAMESPACES / PROBES));
        let path = probe_path(n * (NAMESPACES / PROBES));
        vaultrs::kv2::set(&vault, "secret", &path, &json!({"probe": "v1"})).await?;
        let new = manifest(&ns, "probe", &path);
        created.push(
            apply_and_time::<VaultSecret>(&client, &ns, "probe", &new, FIELD_MANAGER, timeout)
                .await?,
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let spec = manifest(&ns, "s1", &path);
        changed.push(
            apply_and_time::<VaultSecret>(&client, &ns, "s1", &spec, FIELD_MANAGER, timeout)
                .await?,
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let window = t_window.elapsed().as_secs_f64();
    let served = (synced(&op.metrics().await, "VaultSecret") - syncs_0) / window;
    let proc = op.stats();
    op.stop();
    watch.stop();
    let problems = op.log_problems();
    cleanup(&client, &vault).await?;

    let line = |figure: &str, value: String, target: &str, ok: Option<bool>| {
        let verdict = match ok {
            Some(true) => "ok",
            Some(false) => "MISSED",
            None => "",
        };
        println!("{figure:<62}{value:>20}  {target:<10}{verdict}");
    };
    println!();
    println!(
        "vaultsync bench: {TOTAL} VaultSecrets over {NAMESPACES} namespaces refreshing every {REFRESH_SECS} s (saturated)"
    );
    println!("{:-<100}", "");
    line(
        "all Ready after the operator's start",
        format!("{:.1} s", cold.ready_at.unwrap_or_default().as_secs_f64()),
        "",
        None,
    );
    line(
        "refreshes asked for / served a second (probe window)",
        format!("{} / {served:.0}", TOTAL / REFRESH_SECS),
        "",
        None,
    );
    line(
        "each resource refreshed every (resources / served a second)",
        format!("{:.1} s", TOTAL as f64 / served.max(1.0)),
        "",
        None,
    );
    let worst_created = worst(&created);
    line(
        "new resource: apply -> synced",
        describe(&created),
        "<= 2 s",
        Some(worst_created.is_some_and(|w| w <= TARGET_PROBE_SECS)),
    );
    let worst_changed = worst(&changed);
    line(
        "changed spec: apply -> new generation synced",
        describe(&changed),
        "<= 2 s",
        Some(worst_changed.is_some_and(|w| w <= TARGET_PROBE_SECS)),
    );
    line(
        "operator CPU / peak RSS",
        format!(
            "{:.1} s / {:.1} MiB",
            proc.cpu_seconds,
            proc.hwm_kib as f64 / 1024.0
        ),
        "",
        None,
    );
    println!("{:-<100}", "");
    println!(
        "- operator log: {} ({problems} WARN/ERROR lines)",
        op.log.display()
    );
    Ok(())
}
