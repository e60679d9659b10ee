//! The lease lifecycle end to end, against OpenBao's database engine and the real
//! PostgreSQL: cleanup follows what was issued (a source switched away from `database`,
//! a deleted namespace); a re-issue interrupted by a crash after any of its steps is
//! completed or undone at the next start, leaving no lease that is not recorded; status
//! is not trusted blindly; a tampered copy gets new credentials; a write the apiserver
//! refuses shows in Ready; tenant lease policies are path-scoped; and deletion is bounded
//! when revocation cannot log in.

mod common;
mod e2e;

use std::os::unix::process::ExitStatusExt as _;
use std::time::{Duration, Instant};

use e2e::{
    Operator, OperatorOptions, apply, assert_no_leak, bao, creds, database_secret, database_setup,
    lease_lookup, pg_login, role_leases, root_vault, secret, seeded, value, vault_secrets,
    wait_ready, wait_secret, wait_state,
};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

const FINALIZER: &str = "vaultsync.dev/revoke-lease";

async fn finalizers(client: &kube::Client, ns: &str, name: &str) -> Vec<String> {
    vault_secrets(client, ns)
        .get(name)
        .await
        .expect("get the VaultSecret")
        .metadata
        .finalizers
        .unwrap_or_default()
}

fn lease_id(status: &Value) -> Option<String> {
    status["lease"]["id"].as_str().map(str::to_string)
}

fn pending_id(status: &Value) -> Option<String> {
    status["pendingLease"]["id"].as_str().map(str::to_string)
}

fn is_ready(status: &Value) -> bool {
    e2e::ready_condition(status).is_some_and(|c| c["status"] == "True")
}

// ---------------------------------------------------------------------------------------
// Cleanup follows what was issued

#[tokio::test]
async fn switching_from_database_to_kv_revokes_the_lease_and_deletion_completes_at_once() {
    let (client, ns, role, _deployments) = database_setup("e2e-switch", 3600, 7200).await;
    let kv_value = e2e::canary("switch");
    vaultrs::kv2::set(
        &root_vault(),
        "secret",
        &format!("{ns}/app"),
        &json!({"password": kv_value}),
    )
    .await
    .expect("seed");
    let op = Operator::start(&ns, "").await;
    apply(&client, &ns, &database_secret(&role, &ns, "")).await;
    let first = wait_secret(&client, &ns, "db", "database credentials", |s| {
        value(s, "username").is_some()
    })
    .await;
    let (user, password) = creds(&first);
    pg_login(&user, &password).expect("the synced credentials log in");
    let status = wait_ready(&client, &ns, "VaultSecret", "db", "True", "Synced").await;
    let lease = lease_id(&status).expect("status.lease.id");
    assert!(
        role_leases(&ns).await.contains(&lease),
        "OpenBao lists {lease}"
    );
    assert!(
        finalizers(&client, &ns, "db")
            .await
            .iter()
            .any(|f| f == FINALIZER),
        "a resource with a lease carries the revocation finalizer"
    );

    // The same resource now reads KV: what was issued under the old spec goes.
    apply(
        &client,
        &ns,
        &e2e::vault_secret(
            "db",
            &role,
            &format!("kv: {{mount: secret, path: {ns}/app}}"),
            "",
        ),
    )
    .await;
    wait_secret(&client, &ns, "db", "the KV copy", |s| {
        value(s, "password").as_deref() == Some(kv_value.as_str())
    })
    .await;
    wait_state(
        Duration::from_secs(30),
        "the old lease to be revoked, status.lease cleared and the finalizer removed",
        &op,
        || {
            let (client, ns, lease, user, password) = (&client, &ns, &lease, &user, &password);
            async move {
                let status = e2e::status(client, ns, "VaultSecret", "db").await;
                let finalizers = finalizers(client, ns, "db").await;
                let listed = role_leases(ns).await.contains(lease);
                let login = pg_login(user, password).is_ok();
                if !status["lease"].is_null()
                    || finalizers.iter().any(|f| f == FINALIZER)
                    || listed
                    || login
                    || !is_ready(&status)
                {
                    return Err(format!(
                        "status.lease {}, finalizers {finalizers:?}, lease listed {listed}, old user logs in {login}, ready {}",
                        status["lease"],
                        is_ready(&status)
                    ));
                }
                Ok(())
            }
        },
    )
    .await;

    // Nothing is left to revoke: deleting completes at once.
    let deleted = Instant::now();
    vault_secrets(&client, &ns)
        .delete("db", &DeleteParams::default())
        .await
        .expect("delete");
    wait_state(
        Duration::from_secs(10),
        "the resource to be gone",
        &op,
        || {
            let api = vault_secrets(&client, &ns);
            async move {
                match api.get_opt("db").await {
                    Ok(None) => Ok(()),
                    Ok(Some(o)) => Err(format!(
                        "still there, finalizers {:?}",
                        o.metadata.finalizers
                    )),
                    Err(e) => Err(e.to_string()),
                }
            }
        },
    )
    .await;
    println!("deleted in {:?}", deleted.elapsed());
    assert_no_leak(&client, &ns, &op, &[&password, &kv_value]).await;
}

#[tokio::test]
async fn deleting_a_namespace_with_a_database_resource_completes_and_revokes() {
    let (client, ns, role, _deployments) = database_setup("e2e-nsdel", 3600, 7200).await;
    let op = Operator::start(&ns, "").await;
    apply(&client, &ns, &database_secret(&role, &ns, "")).await;
    let copy = wait_secret(&client, &ns, "db", "database credentials", |s| {
        value(s, "username").is_some()
    })
    .await;
    let (user, password) = creds(&copy);
    let status = wait_ready(&client, &ns, "VaultSecret", "db", "True", "Synced").await;
    let lease = lease_id(&status).expect("status.lease.id");

    // The namespace goes with everything in it, the operator running.
    common::delete_namespace(&client, &ns).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    wait_state(
        Duration::from_secs(60),
        "the namespace to be gone",
        &op,
        || {
            let (namespaces, ns) = (namespaces.clone(), ns.to_string());
            async move {
                match namespaces.get_opt(&ns).await {
                    Ok(None) => Ok(()),
                    Ok(Some(n)) => Err(format!(
                        "still there: {:?}",
                        n.status.and_then(|s| s.conditions).unwrap_or_default()
                    )),
                    Err(e) => Err(e.to_string()),
                }
            }
        },
    )
    .await;
    assert!(
        lease_lookup(&lease).await.is_none(),
        "the lease {lease} was revoked before the resource went"
    );
    assert!(
        pg_login(&user, &password).is_err(),
        "the revoked user can no longer log in"
    );
}

// ---------------------------------------------------------------------------------------
// Record before you act: a crash after each step of a re-issue

/// Starts an operator that aborts after `step` of the first re-issue, then a normal one,
/// and checks that the interrupted re-issue was completed or undone: no lease of the role
/// is left that status does not record, and the Secret's credentials log in.
///
/// The leases live 40 s (default and max TTL), and the resource renews at 10 %: at 4 s
/// the renewal comes back shorter than asked (max TTL), so the operator re-issues. After
/// the crash the resource's renewalPercent goes to 90, so the restarted operator has
/// nothing to do but recover. Leases that nobody revokes would expire on their own 40 s
/// after their issue, so the recovery must be seen before the first of them would: a
/// lease that only expired would otherwise look revoked.
///
/// `issued` is the one documented window: Vault has issued the new credentials but
/// nothing records them, so no operator can know their lease. It dies with the tenant
/// token that created it, because Vault revokes a token's leases when the token expires.
/// For that step the tenant's tokens live 15 s, and the orphan is allowed to vanish when
/// its token does.
async fn crash_and_recover(step: &str) {
    let (client, ns, role, deployments) =
        database_setup(&format!("e2e-crash-{step}"), 40, 40).await;
    let documented_window = step == "issued";
    if documented_window {
        vaultrs::auth::kubernetes::role::create(
            &root_vault(),
            "kubernetes",
            &role,
            Some(
                &mut vaultrs::api::auth::kubernetes::requests::CreateKubernetesRoleRequest::builder()
                    .bound_service_account_names(vec!["app".to_string()])
                    .bound_service_account_namespaces(vec![ns.to_string()])
                    .audience("vault")
                    .token_policies(vec![role.clone()])
                    .token_ttl("15s")
                    .token_max_ttl("15s"),
            ),
        )
        .await
        .expect("short-lived tenant tokens");
    }
    let spec = |percent: u32| {
        database_secret(
            &role,
            &ns,
            &format!(
                "  renewalPercent: {percent}\n  rolloutRestartTargets: [{{kind: Deployment, name: api}}]\n"
            ),
        )
    };

    let mut crashing = Operator::start_with(&ns, OperatorOptions::failpoint(step)).await;
    apply(&client, &ns, &spec(10)).await;
    let first = wait_secret(&client, &ns, "db", "the first credentials", |s| {
        value(s, "username").is_some()
    })
    .await;
    let (user1, password1) = creds(&first);
    let lease1: String = wait_state(
        Duration::from_secs(15),
        "the first lease in status",
        &crashing,
        || {
            let (client, ns) = (&client, &ns);
            async move {
                lease_id(&e2e::status(client, ns, "VaultSecret", "db").await)
                    .ok_or_else(|| "no status.lease yet".to_string())
            }
        },
    )
    .await;

    let exit = crashing
        .wait_exit(Duration::from_secs(45))
        .await
        .unwrap_or_else(|| {
            panic!(
                "the operator did not abort at failpoint {step} within 45 s; its log {} ends with:\n{}",
                crashing.log.display(),
                e2e::tail(&crashing.logs(), 40)
            )
        });
    assert_eq!(
        exit.signal(),
        Some(6),
        "the operator aborted (SIGABRT) at {step}, not {exit:?}"
    );
    let crash_log = crashing.logs();
    assert!(
        crash_log
            .lines()
            .any(|l| l.contains("failpoint reached") && l.contains(step)),
        "the log names the failpoint {step}:\n{}",
        e2e::tail(&crash_log, 20)
    );

    // The state the crash left, step by step.
    let at_crash = e2e::status(&client, &ns, "VaultSecret", "db").await;
    let listed = role_leases(&ns).await;
    let copy = creds(&secret(&client, &ns, "db").await.expect("the copy"));
    let restarted = e2e::restarted_at(&deployments).await;
    let (current, pending) = (lease_id(&at_crash), pending_id(&at_crash));
    let context = format!(
        "at the crash after {step}: status.lease {current:?}, pendingLease {pending:?}, leases {listed:?}, Secret user {} (first {user1}), restarted {restarted:?}",
        copy.0
    );
    match step {
        "issued" => {
            assert_eq!(current.as_ref(), Some(&lease1), "{context}");
            assert_eq!(pending, None, "nothing recorded yet: {context}");
            assert_eq!(copy.0, user1, "{context}");
            assert!(
                listed.len() == 2 && listed.contains(&lease1),
                "the first lease and the new, unrecorded one: {context}"
            );
        }
        "recorded" | "written" | "restarted" | "revoked" => {
            assert_eq!(current.as_ref(), Some(&lease1), "{context}");
            let new = pending.clone().unwrap_or_else(|| panic!("{context}"));
            assert_ne!(new, lease1, "{context}");
            assert!(listed.contains(&new), "{context}");
            assert_eq!(
                copy.0 == user1,
                step == "recorded",
                "the Secret holds the new credentials from `written` on: {context}"
            );
            assert_eq!(
                restarted.is_some(),
                step == "restarted" || step == "revoked",
                "{context}"
            );
            let old_logs_in = pg_login(&user1, &password1).is_ok();
            assert_eq!(
                old_logs_in,
                step != "revoked",
                "the old lease is revoked at `revoked`, not before: {context}"
            );
            assert_eq!(listed.contains(&lease1), step != "revoked", "{context}");
        }
        "committed" => {
            assert_eq!(pending, None, "{context}");
            assert!(current.as_ref().is_some_and(|c| *c != lease1), "{context}");
            assert!(!listed.contains(&lease1), "{context}");
        }
        other => panic!("unknown step {other}"),
    }

    // When the first of these leases would expire on its own, revocation and expiry can
    // no longer be told apart: the recovery must be complete before then.
    let recover_within = if documented_window {
        Duration::from_secs(45)
    } else {
        let mut earliest: Option<Timestamp> = None;
        for id in &listed {
            let end = lease_lookup(id)
                .await
                .and_then(|l| l["expire_time"].as_str()?.parse::<Timestamp>().ok());
            if let Some(end) = end {
                earliest = Some(earliest.map_or(end, |e| e.min(end)));
            }
        }
        let earliest = earliest.unwrap_or_else(|| panic!("no lease to look up: {context}"));
        let left = Duration::try_from(earliest.duration_since(Timestamp::now()))
            .unwrap_or_default()
            .saturating_sub(Duration::from_secs(3));
        assert!(
            left >= Duration::from_secs(10),
            "the test itself was too slow: {left:?} left before the leases expire on their own"
        );
        left.min(Duration::from_secs(30))
    };

    // Nothing is due any more: the next operator only recovers.
    apply(&client, &ns, &spec(90)).await;
    drop(crashing);
    let op = Operator::start(&ns, "").await;
    let started = Instant::now();
    let (status, user) = wait_state(
        recover_within,
        &format!("the re-issue interrupted after {step} to be completed or undone"),
        &op,
        || {
            let (client, ns) = (&client, &ns);
            async move {
                let status = e2e::status(client, ns, "VaultSecret", "db").await;
                let listed = role_leases(ns).await;
                let lease = lease_id(&status);
                let pending = pending_id(&status);
                let unrecorded: Vec<&String> = listed
                    .iter()
                    .filter(|id| Some(*id) != lease.as_ref() && Some(*id) != pending.as_ref())
                    .collect();
                let (user, password) = creds(&secret(client, ns, "db").await.ok_or("no Secret")?);
                let login = pg_login(&user, &password);
                let lease_listed = lease.as_ref().is_some_and(|l| listed.contains(l));
                if !unrecorded.is_empty()
                    || pending.is_some()
                    || !lease_listed
                    || login.is_err()
                    || !is_ready(&status)
                {
                    return Err(format!(
                        "leases not recorded in status {unrecorded:?}, status.lease {lease:?} (listed {lease_listed}), pendingLease {pending:?}, Secret login {login:?}, Ready {}",
                        e2e::ready_condition(&status).cloned().unwrap_or_default()
                    ));
                }
                Ok((status, user))
            }
        },
    )
    .await;
    println!("recovered from {step} in {:?}", started.elapsed());

    let lease = lease_id(&status).expect("status.lease");
    match step {
        "issued" => {}
        "recorded" => {
            assert_eq!(lease, lease1, "undone: the first lease stays in use");
            assert_eq!(user, user1);
            let new = pending.expect("pending at the crash");
            assert!(lease_lookup(&new).await.is_none(), "{new} was revoked");
        }
        "written" | "restarted" | "revoked" => {
            assert_eq!(
                Some(&lease),
                pending.as_ref(),
                "completed: the pending lease is the one in use"
            );
            assert_eq!(user, copy.0);
            assert!(
                lease_lookup(&lease1).await.is_none(),
                "{lease1} was revoked"
            );
            assert!(pg_login(&user1, &password1).is_err());
            assert!(
                e2e::restarted_at(&deployments).await.is_some(),
                "the workloads were restarted onto the new credentials"
            );
        }
        "committed" => {
            assert_eq!(Some(&lease), current.as_ref());
        }
        _ => unreachable!(),
    }
    e2e::delete_resources_then_namespace(&client, &ns).await;
}

#[tokio::test]
async fn a_crash_after_issuing_leaves_only_a_lease_that_dies_with_its_token() {
    crash_and_recover("issued").await;
}

#[tokio::test]
async fn a_crash_after_recording_the_pending_lease_is_undone() {
    crash_and_recover("recorded").await;
}

#[tokio::test]
async fn a_crash_after_writing_the_secret_is_completed() {
    crash_and_recover("written").await;
}

#[tokio::test]
async fn a_crash_after_restarting_workloads_is_completed() {
    crash_and_recover("restarted").await;
}

#[tokio::test]
async fn a_crash_after_revoking_the_old_lease_is_completed() {
    crash_and_recover("revoked").await;
}

#[tokio::test]
async fn a_crash_after_committing_leaves_nothing_to_do() {
    crash_and_recover("committed").await;
}

// ---------------------------------------------------------------------------------------
// Status is not trusted blindly

#[tokio::test]
async fn a_forged_lease_of_another_role_is_neither_revoked_nor_renewed() {
    let (client, ns, role, _deployments) = database_setup("e2e-forged", 3600, 7200).await;
    let other = format!("{ns}-other");
    ns.revoke_on_drop(&format!("database/creds/{other}/"));
    e2e::database_role(&other, 3600, 7200).await;
    let (foreign, foreign_user, foreign_password) = e2e::root_database_creds(&other).await;

    let mut op = Operator::start(&ns, "").await;
    apply(&client, &ns, &database_secret(&role, &ns, "")).await;
    wait_secret(&client, &ns, "db", "database credentials", |s| {
        value(s, "username").is_some()
    })
    .await;
    let status = wait_ready(&client, &ns, "VaultSecret", "db", "True", "Synced").await;
    let original = lease_id(&status).expect("status.lease.id");

    // With the operator down, status.lease is made to name the other role's lease, due
    // for renewal (a 60 s period that ends in 5 s).
    op.kill();
    let expires = Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(5))
        .expect("time");
    vault_secrets(&client, &ns)
        .patch_status(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"lease": {
                "id": foreign, "durationSeconds": 60, "renewable": true, "expiresAt": expires.to_string(),
            }}})),
        )
        .await
        .expect("forge status.lease");
    let op = Operator::start(&ns, "").await;
    let prefix = format!("database/creds/{ns}/");
    let status = wait_state(
        Duration::from_secs(30),
        "the resource to be Ready with a fresh lease of its own role",
        &op,
        || {
            let (client, ns, prefix, foreign, original) =
                (&client, &ns, &prefix, &foreign, &original);
            async move {
                let status = e2e::status(client, ns, "VaultSecret", "db").await;
                let lease = lease_id(&status).unwrap_or_default();
                if lease.starts_with(prefix.as_str())
                    && lease != *foreign
                    && lease != *original
                    && pending_id(&status).is_none()
                    && is_ready(&status)
                {
                    Ok(status)
                } else {
                    Err(format!(
                        "status.lease {lease:?}, pendingLease {:?}, Ready {}",
                        pending_id(&status),
                        is_ready(&status)
                    ))
                }
            }
        },
    )
    .await;
    let lease = lease_id(&status).expect("lease");
    assert!(role_leases(&ns).await.contains(&lease), "{lease} is live");
    let (user, password) = creds(&secret(&client, &ns, "db").await.expect("copy"));
    pg_login(&user, &password).expect("the fresh credentials log in");

    tokio::time::sleep(Duration::from_secs(2)).await;
    let looked_up = lease_lookup(&foreign)
        .await
        .unwrap_or_else(|| panic!("the other role's lease {foreign} was revoked"));
    assert!(
        looked_up["last_renewal"].is_null(),
        "the other role's lease was renewed: {looked_up}"
    );
    pg_login(&foreign_user, &foreign_password).expect("the other role's user still logs in");
    e2e::delete_resources_then_namespace(&client, &ns).await;
}

// ---------------------------------------------------------------------------------------
// Tampered copies are repaired

#[tokio::test]
async fn an_edited_password_gets_new_credentials_and_the_old_lease_revoked() {
    let (client, ns, role, _deployments) = database_setup("e2e-tamper", 3600, 7200).await;
    let op = Operator::start(&ns, "").await;
    apply(&client, &ns, &database_secret(&role, &ns, "")).await;
    let first = wait_secret(&client, &ns, "db", "database credentials", |s| {
        value(s, "username").is_some()
    })
    .await;
    let (user1, password1) = creds(&first);
    let status1 = wait_ready(&client, &ns, "VaultSecret", "db", "True", "Synced").await;
    let lease1 = lease_id(&status1).expect("status.lease.id");
    let hmac1 = status1["dataHmac"].as_str().expect("dataHmac").to_string();

    let planted = e2e::canary("planted");
    Api::<Secret>::namespaced(client.clone(), &ns)
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"password": planted}})),
        )
        .await
        .expect("edit the password");

    let (status, (user2, password2)) = wait_state(
        Duration::from_secs(30),
        "new credentials, a new lease and a new dataHmac",
        &op,
        || {
            let (client, ns, user1, planted, lease1, hmac1) =
                (&client, &ns, &user1, &planted, &lease1, &hmac1);
            async move {
                let status = e2e::status(client, ns, "VaultSecret", "db").await;
                let copy = creds(&secret(client, ns, "db").await.ok_or("no Secret")?);
                let lease = lease_id(&status);
                let hmac = status["dataHmac"].as_str().unwrap_or_default();
                if copy.0 != *user1
                    && !copy.0.is_empty()
                    && copy.1 != *planted
                    && lease.as_ref().is_some_and(|l| l != lease1)
                    && hmac != hmac1
                    && pending_id(&status).is_none()
                    && is_ready(&status)
                {
                    Ok((status, copy))
                } else {
                    Err(format!(
                        "Secret user {} (first {user1}), planted password kept {}, status.lease {lease:?}, dataHmac changed {}, Ready {}",
                        copy.0,
                        copy.1 == *planted,
                        hmac != hmac1,
                        is_ready(&status)
                    ))
                }
            }
        },
    )
    .await;
    pg_login(&user2, &password2).expect("the new credentials log in");
    wait_state(
        Duration::from_secs(15),
        "the old lease to be revoked",
        &op,
        || {
            let (user1, password1, lease1) = (&user1, &password1, &lease1);
            async move {
                let login = pg_login(user1, password1).is_ok();
                let live = lease_lookup(lease1).await.is_some();
                if login || live {
                    Err(format!("old user logs in {login}, old lease live {live}"))
                } else {
                    Ok(())
                }
            }
        },
    )
    .await;
    assert!(
        status["dataHmac"]
            .as_str()
            .is_some_and(|h| h.starts_with("hmac-sha256:"))
    );
    assert_no_leak(&client, &ns, &op, &[&password1, &password2, &planted]).await;
    e2e::delete_resources_then_namespace(&client, &ns).await;
}

// ---------------------------------------------------------------------------------------
// Refused writes are visible

#[tokio::test]
async fn a_secret_write_the_apiserver_refuses_turns_ready_false_for_this_generation() {
    let (client, ns, role, value_) = seeded("e2e-refused", "refused").await;
    let op = Operator::start(&ns, "").await;
    let kv = format!("kv: {{mount: secret, path: {ns}/app}}");
    // Admission refuses invalid label keys and values (CEL), so the refusal comes from
    // what only the Secret's own validation sees: 64 annotations of 4096 characters are
    // each allowed, but together pass the apiserver's 256 KiB limit on annotations.
    let output =
        |annotations: &str| format!("  output:\n    secret:\n      annotations: {annotations}\n");
    let too_many: String = (0..64)
        .map(|i| format!("a{i}.example.com/x: {}", "v".repeat(4096)))
        .collect::<Vec<_>>()
        .join(", ");
    let too_many = format!("{{{too_many}}}");
    apply(
        &client,
        &ns,
        &e2e::vault_secret("app", &role, &kv, &output("{team: a}")),
    )
    .await;
    let before = wait_secret(&client, &ns, "app", "the copy", |_| true).await;
    wait_ready(&client, &ns, "VaultSecret", "app", "True", "Synced").await;

    // An update and a new resource, both asking for annotations Kubernetes refuses.
    apply(
        &client,
        &ns,
        &e2e::vault_secret("app", &role, &kv, &output(&too_many)),
    )
    .await;
    apply(
        &client,
        &ns,
        &e2e::vault_secret("fresh", &role, &kv, &output(&too_many)),
    )
    .await;
    for name in ["app", "fresh"] {
        let generation = vault_secrets(&client, &ns)
            .get(name)
            .await
            .expect("get")
            .metadata
            .generation
            .expect("generation");
        let status = wait_ready(&client, &ns, "VaultSecret", name, "False", "InvalidSpec").await;
        let condition = e2e::ready_condition(&status).expect("Ready").clone();
        let message = condition["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("apiserver")
                && message.contains("refused")
                && message.contains("Secret"),
            "{name}: the message says the apiserver refused the Secret: {message}"
        );
        assert_eq!(
            status["observedGeneration"],
            json!(generation),
            "{name}: status.observedGeneration is this generation: {status}"
        );
        assert_eq!(
            condition["observedGeneration"],
            json!(generation),
            "{name}: the condition's observedGeneration is this generation: {condition}"
        );
    }
    assert!(
        secret(&client, &ns, "fresh").await.is_none(),
        "no Secret was created"
    );
    let after = secret(&client, &ns, "app").await.expect("the copy stays");
    assert_eq!(after.data, before.data, "the copy keeps its data");
    assert!(
        e2e::events(&client, &ns)
            .await
            .iter()
            .any(|e| e.starts_with("SyncFailed")),
        "a Warning Event says so"
    );
    assert_no_leak(&client, &ns, &op, &[&value_]).await;
}

// ---------------------------------------------------------------------------------------
// Tenant policies are path-scoped

#[tokio::test]
async fn a_tenant_token_renews_and_revokes_its_own_leases_only() {
    let (client, ns_a) = e2e::setup("e2e-scope-a").await;
    let ns_b = common::create_namespace(&client, "e2e-scope-b").await;
    let role_a = e2e::dynamic_tenant(&client, &ns_a).await;
    let role_b = e2e::dynamic_tenant(&client, &ns_b).await;
    e2e::database_role(&ns_a, 3600, 7200).await;
    e2e::database_role(&ns_b, 3600, 7200).await;
    // Logged in as the operator logs in: a TokenRequest token of the tenant's service
    // account, audience `vault`, through Kubernetes auth.
    let token_a = e2e::tenant_login(&client, &ns_a, "app", &role_a).await;
    let token_b = e2e::tenant_login(&client, &ns_b, "app", &role_b).await;
    let issue = |token: String, role: String| async move {
        let (status, body) = bao(&token, "GET", &format!("database/creds/{role}"), None).await;
        assert_eq!(status, 200, "issue database/creds/{role}: {body}");
        body["lease_id"].as_str().expect("lease_id").to_string()
    };
    let lease_a = issue(token_a.clone(), ns_a.to_string()).await;
    let lease_b = issue(token_b.clone(), ns_b.to_string()).await;

    let renew = json!({"increment": 600});
    let (status, body) = bao(
        &token_a,
        "PUT",
        &format!("sys/leases/renew/{lease_a}"),
        Some(renew.clone()),
    )
    .await;
    assert_eq!(status, 200, "tenant A renews its own lease: {body}");
    assert_eq!(body["lease_id"], json!(lease_a));

    for (what, method, path, body) in [
        (
            "renew B's lease by URL",
            "PUT",
            format!("sys/leases/renew/{lease_b}"),
            renew.clone(),
        ),
        (
            "revoke B's lease by URL",
            "PUT",
            format!("sys/leases/revoke/{lease_b}"),
            json!({}),
        ),
        (
            "renew B's lease by body",
            "PUT",
            "sys/leases/renew".to_string(),
            json!({"lease_id": lease_b, "increment": 600}),
        ),
        (
            "revoke B's lease by body",
            "PUT",
            "sys/leases/revoke".to_string(),
            json!({"lease_id": lease_b}),
        ),
    ] {
        let (status, answer) = bao(&token_a, method, &path, Some(body)).await;
        assert_eq!(status, 403, "tenant A may not {what}: {status} {answer}");
    }
    let looked_up = lease_lookup(&lease_b)
        .await
        .unwrap_or_else(|| panic!("tenant B's lease {lease_b} is gone"));
    assert!(
        looked_up["last_renewal"].is_null(),
        "tenant B's lease was renewed by A: {looked_up}"
    );

    for (token, lease, who) in [(&token_a, &lease_a, "A"), (&token_b, &lease_b, "B")] {
        let (status, body) = bao(
            token,
            "PUT",
            &format!("sys/leases/revoke/{lease}"),
            Some(json!({})),
        )
        .await;
        assert!(
            (200..300).contains(&status),
            "tenant {who} revokes its own lease: {status} {body}"
        );
        assert!(lease_lookup(lease).await.is_none(), "{lease} is revoked");
    }
}

// ---------------------------------------------------------------------------------------
// Deletion is bounded

#[tokio::test]
async fn deletion_gives_up_revoking_after_the_revocation_timeout_and_says_so() {
    let (client, ns, role, _deployments) = database_setup("e2e-bounded", 3600, 7200).await;
    let options = OperatorOptions::default().default_value("revocationTimeout", "5s");
    let mut op = Operator::start_with(&ns, options.clone()).await;
    apply(&client, &ns, &database_secret(&role, &ns, "")).await;
    wait_secret(&client, &ns, "db", "database credentials", |s| {
        value(s, "username").is_some()
    })
    .await;
    let status = wait_ready(&client, &ns, "VaultSecret", "db", "True", "Synced").await;
    let lease = lease_id(&status).expect("status.lease.id");

    // A new operator has no cached token, and the tenant's service account is gone: the
    // revocation cannot log in.
    op.kill();
    drop(op);
    Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .delete("app", &DeleteParams::default())
        .await
        .expect("delete the service account");
    let op = Operator::start_with(&ns, options).await;
    let resources = vault_secrets(&client, &ns);
    resources
        .delete("db", &DeleteParams::default())
        .await
        .expect("delete");
    let deleted = Instant::now();

    let failed = wait_state(
        Duration::from_secs(20),
        "a SyncFailed Event about the revocation",
        &op,
        || {
            let (client, ns) = (&client, &ns);
            async move {
                let events = e2e::events(client, ns).await;
                events
                    .iter()
                    .find(|e| {
                        e.starts_with("SyncFailed: could not revoke the lease before deletion")
                    })
                    .cloned()
                    .ok_or_else(|| format!("{events:?}"))
            }
        },
    )
    .await;
    assert!(
        resources.get_opt("db").await.expect("get").is_some()
            || deleted.elapsed() >= Duration::from_secs(5),
        "the finalizer holds while revocation is retried"
    );
    wait_state(
        Duration::from_secs(30),
        "the resource to be gone after the revocation timeout",
        &op,
        || {
            let resources = resources.clone();
            async move {
                match resources.get_opt("db").await {
                    Ok(None) => Ok(()),
                    Ok(Some(o)) => Err(format!("finalizers {:?}", o.metadata.finalizers)),
                    Err(e) => Err(e.to_string()),
                }
            }
        },
    )
    .await;
    let took = deleted.elapsed();
    assert!(
        took >= Duration::from_secs(4),
        "the finalizer was removed after {took:?}, before the 5 s revocationTimeout"
    );
    let events = e2e::events(&client, &ns).await;
    let abandoned = events
        .iter()
        .find(|e| e.starts_with("RevocationAbandoned:"))
        .unwrap_or_else(|| panic!("a RevocationAbandoned Event: {events:?}"));
    println!("{failed}\n{abandoned}\ngone after {took:?}");
    assert!(
        lease_lookup(&lease).await.is_some(),
        "the lease was not revoked (it could not be); it ends on its own"
    );
}
