//! Leader election: two operator processes against the real apiserver; exactly one
//! syncs, and when it is killed the other takes over within the lease duration without
//! rewriting or rotating anything.

mod common;
mod e2e;

use std::time::{Duration, Instant};

use e2e::{Operator, apply, assert_no_leak, canary, root_vault, tenant, value, wait_secret};
use serde_json::json;

const SYNCED: &str = "vaultsync_syncs_total{kind=\"VaultSecret\",result=\"Synced\"}";
const DATA_WRITES: &str = "vaultsync_secret_writes_total{part=\"data\"}";

fn manifest(name: &str, role: &str, ns: &str) -> String {
    format!(
        "apiVersion: vaultsync.dev/v1alpha1\nkind: VaultSecret\nmetadata: {{name: {name}}}\nspec:\n  vault:\n    auth: {{kubernetes: {{role: {role}, serviceAccountName: app}}}}\n    kv: {{mount: secret, path: {ns}/app}}\n  refreshInterval: 2s\n  ttl: 1h\n"
    )
}

#[tokio::test]
async fn one_leader_syncs_and_a_standby_takes_over_without_rewrites() {
    let client = common::client().await;
    common::install_crds(&client).await;
    let ns = common::create_namespace(&client, "e2e-leader").await;
    let role = tenant(&client, &ns, "app", &format!("{ns}/")).await;
    let value_ = canary("leader");
    vaultrs::kv2::set(
        &root_vault(),
        "secret",
        &format!("{ns}/app"),
        &json!({"password": value_}),
    )
    .await
    .expect("seed");

    let election = "leaderElection: {enabled: true, leaseName: e2e-leader, leaseDuration: 6s}\n";
    let first = Operator::start(&ns, election).await;
    let second = Operator::start(&ns, election).await;
    for i in 0..3 {
        apply(&client, &ns, &manifest(&format!("s{i}"), &role, &ns)).await;
    }
    for i in 0..3 {
        let copy = wait_secret(&client, &ns, &format!("s{i}"), "each copy", |_| true).await;
        assert_eq!(value(&copy, "password").as_deref(), Some(value_.as_str()));
    }
    // Several refresh cycles: only one process does any work.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (a, b) = (first.metric(SYNCED).await, second.metric(SYNCED).await);
    assert!(
        (a > 0.0) != (b > 0.0),
        "exactly one process syncs (first {a}, second {b})"
    );
    let (leader, standby) = if a > 0.0 {
        (first, second)
    } else {
        (second, first)
    };
    assert_no_leak(&client, &ns, &leader, &[&value_]).await;

    // Kill the leader without a chance to release its Lease.
    let killed_at = Instant::now();
    drop(leader);
    common::wait_until(Duration::from_secs(30), "the standby to take over", || {
        let standby = &standby;
        async move { (standby.metric(SYNCED).await > 0.0).then_some(()) }
    })
    .await;
    let takeover = killed_at.elapsed();
    assert!(
        takeover <= Duration::from_secs(6 + 4),
        "took over in {takeover:?}, lease is 6s"
    );

    // The new leader picks up the existing copies without rewriting or rotating them,
    // and keeps working for new resources.
    apply(&client, &ns, &manifest("after", &role, &ns)).await;
    wait_secret(
        &client,
        &ns,
        "after",
        "a copy made by the new leader",
        |_| true,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        standby.metric(DATA_WRITES).await,
        1.0,
        "only the new resource was written"
    );
    let events = e2e::events(&client, &ns).await;
    assert!(
        !events.iter().any(|e| e.starts_with("SecretRotated")),
        "{events:?}"
    );
    assert_no_leak(&client, &ns, &standby, &[&value_]).await;
    common::delete_namespace(&client, &ns).await;
}
