//! Leader election: two operator processes against the real apiserver; exactly one
//! syncs, and when it is killed the other takes over within the lease duration without
//! rewriting or rotating anything.

mod common;
mod e2e;

use std::time::{Duration, Instant};

use e2e::{Operator, apply, assert_no_leak, value, wait_secret};

const SYNCED: &str = "vaultsync_syncs_total{kind=\"VaultSecret\",result=\"Synced\"}";
const DATA_WRITES: &str = "vaultsync_secret_writes_total{part=\"data\"}";

fn synced(count: Option<f64>) -> bool {
    count.is_some_and(|v| v > 0.0)
}

fn manifest(name: &str, role: &str, ns: &str) -> String {
    format!(
        "apiVersion: vaultsync.dev/v1alpha1\nkind: VaultSecret\nmetadata: {{name: {name}}}\nspec:\n  vault:\n    auth: {{kubernetes: {{role: {role}, serviceAccountName: app}}}}\n    kv: {{mount: secret, path: {ns}/app}}\n  refreshInterval: 2s\n  ttl: 1h\n"
    )
}

#[tokio::test]
async fn one_leader_syncs_and_a_standby_takes_over_without_rewrites() {
    let (client, ns, role, value_) = e2e::seeded("e2e-leader", "leader").await;

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
    // A renamed series is None in both, which fails here too.
    assert!(
        synced(a) != synced(b),
        "exactly one process syncs (first {a:?}, second {b:?})"
    );
    let (leader, standby) = if synced(a) {
        (first, second)
    } else {
        (second, first)
    };
    assert_no_leak(&client, &ns, &leader, &[&value_]).await;

    // Kill the leader without a chance to release its Lease.
    let mut leader = leader;
    let killed_at = Instant::now();
    leader.kill();
    common::wait_until(Duration::from_secs(30), "the standby to take over", || {
        let standby = &standby;
        async move { synced(standby.metric(SYNCED).await).then_some(()) }
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
        Some(1.0),
        "only the new resource was written"
    );
    let events = e2e::events(&client, &ns).await;
    assert!(
        !events.iter().any(|e| e.starts_with("SecretRotated")),
        "{events:?}"
    );
    assert_no_leak(&client, &ns, &standby, &[&value_]).await;
}

#[tokio::test]
async fn sigterm_stops_the_leader_cleanly_and_hands_over_with_json_logs() {
    let (client, ns, role, value_) = e2e::seeded("e2e-sigterm", "sigterm").await;
    let election = "logFormat: json\nleaderElection: {enabled: true, leaseName: e2e-sigterm, leaseDuration: 6s}\n";
    let first = Operator::start(&ns, election).await;
    let second = Operator::start(&ns, election).await;
    apply(&client, &ns, &manifest("s0", &role, &ns)).await;
    wait_secret(&client, &ns, "s0", "the copy", |_| true).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (a, b) = (first.metric(SYNCED).await, second.metric(SYNCED).await);
    assert!(
        synced(a) != synced(b),
        "exactly one process syncs (first {a:?}, second {b:?})"
    );
    let (mut leader, standby) = if synced(a) {
        (first, second)
    } else {
        (second, first)
    };

    assert!(
        leader.terminate(Duration::from_secs(10)),
        "SIGTERM ends the leader with exit status 0"
    );
    // A clean shutdown releases the Lease rather than leaving it to expire.
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(client.clone(), &ns);
    let lease = leases.get("e2e-sigterm").await.expect("the Lease exists");
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    let identity = leader
        .logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "became the leader")
        .and_then(|v| v["fields"]["identity"].as_str().map(str::to_string))
        .expect("the leader logged its identity");
    assert_ne!(
        holder, identity,
        "the Lease is released on SIGTERM, not left to expire"
    );
    common::wait_until(Duration::from_secs(15), "the standby to take over", || {
        let standby = &standby;
        async move { synced(standby.metric(SYNCED).await).then_some(()) }
    })
    .await;

    // Logs are JSON, one object per line.
    for op in [&leader, &standby] {
        let logs = op.logs();
        let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(!lines.is_empty());
        for line in lines {
            let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
            assert!(
                parsed.is_ok_and(|v| v.is_object()),
                "a log line is not JSON: {line}"
            );
        }
    }
    assert_no_leak(&client, &ns, &standby, &[&value_]).await;
}
