//! Dynamic credentials and certificates end to end: database leases from OpenBao's
//! database engine logging in to the real PostgreSQL, renewed, re-issued before max TTL,
//! surviving an operator restart, and revoked with the resource; PKI certificates issued
//! and rotated before expiry.

mod common;
mod e2e;

use std::time::Duration;

use e2e::{
    Operator, apply, assert_no_leak, creds, database_secret, database_setup, dynamic_tenant,
    pg_login, root_vault, secret, value, wait_ready, wait_secret,
};
use kube::api::{Api, DeleteParams};

const DB_ISSUED: &str = "vaultsync_backend_requests_total{backend=\"vault\",operation=\"database_creds\",outcome=\"ok\"}";

#[tokio::test]
async fn database_credentials_are_renewed_reissued_before_max_ttl_and_revoked_with_the_resource() {
    let (client, ns, role, deployments) = database_setup("e2e-db", 6, 20).await;
    let op = Operator::start(&ns, "").await;
    apply(
        &client,
        &ns,
        &database_secret(
            &role,
            &ns,
            "  renewalPercent: 50\n  rolloutRestartTargets: [{kind: Deployment, name: api}]\n",
        ),
    )
    .await;

    let first = wait_secret(&client, &ns, "db", "database credentials", |s| {
        value(s, "username").is_some()
    })
    .await;
    let (user, password) = creds(&first);
    pg_login(&user, &password).expect("the synced credentials log in to PostgreSQL");
    let status = wait_ready(&client, &ns, "VaultSecret", "db", "True", "Synced").await;
    assert_eq!(status["lease"]["renewable"], true);
    assert!(
        status["lease"]["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("database/creds/"))
    );

    // Past the 6 s default TTL the same user still works: the lease was renewed.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let renewed = secret(&client, &ns, "db").await.expect("copy");
    assert_eq!(
        creds(&renewed).0,
        user,
        "renewal keeps the same credentials"
    );
    pg_login(&user, &password).expect("still valid after the default TTL");
    assert!(
        e2e::restarted_at(&deployments).await.is_none(),
        "a renewal restarts nothing"
    );
    let renewals = op.present_metric("vaultsync_backend_requests_total{backend=\"vault\",operation=\"lease_renew\",outcome=\"ok\"}").await;
    assert!(renewals >= 1.0, "renewed {renewals} times");

    // Near the 20 s max TTL the operator issues new credentials, restarts the workload,
    // and only then revokes the old lease.
    let second = wait_secret(&client, &ns, "db", "re-issued credentials", |s| {
        creds(s).0 != user && !creds(s).0.is_empty()
    })
    .await;
    let (user2, password2) = creds(&second);
    pg_login(&user2, &password2).expect("the new credentials log in");
    common::wait_until(Duration::from_secs(15), "the workload restart", || {
        let deployments = deployments.clone();
        async move { e2e::restarted_at(&deployments).await }
    })
    .await;
    common::wait_until(
        Duration::from_secs(15),
        "the old lease to be revoked",
        || {
            let (user, password) = (user.clone(), password.clone());
            async move { pg_login(&user, &password).is_err().then_some(()) }
        },
    )
    .await;
    assert!(
        e2e::events(&client, &ns)
            .await
            .iter()
            .any(|e| e.starts_with("SecretRotated"))
    );

    // Deleting the resource revokes its lease; the finalizer then lets it go.
    let current = creds(&secret(&client, &ns, "db").await.expect("copy"));
    let resources: Api<kube::core::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
            "vaultsync.dev",
            "v1alpha1",
            "VaultSecret",
        )),
    );
    resources
        .delete("db", &DeleteParams::default())
        .await
        .expect("delete");
    common::wait_until(
        Duration::from_secs(30),
        "the resource to be gone after revocation",
        || {
            let resources = resources.clone();
            async move { matches!(resources.get_opt("db").await, Ok(None)).then_some(()) }
        },
    )
    .await;
    assert!(
        pg_login(&current.0, &current.1).is_err(),
        "the revoked user can no longer log in"
    );
    assert_no_leak(&client, &ns, &op, &[&password, &password2]).await;
}

#[tokio::test]
async fn an_operator_restart_issues_nothing_and_restarts_nothing() {
    let (client, ns, role, deployments) = database_setup("e2e-db-restart", 3600, 7200).await;
    let op = Operator::start(&ns, "").await;
    apply(
        &client,
        &ns,
        &database_secret(
            &role,
            &ns,
            "  rolloutRestartTargets: [{kind: Deployment, name: api}]\n",
        ),
    )
    .await;
    let before = wait_secret(&client, &ns, "db", "database credentials", |s| {
        value(s, "username").is_some()
    })
    .await;
    wait_ready(&client, &ns, "VaultSecret", "db", "True", "Synced").await;
    let lease_before = e2e::status(&client, &ns, "VaultSecret", "db").await["lease"]["id"].clone();
    // The first process exports the issue counter under exactly this name, so its absence
    // from the second process below means "never issued", not "renamed".
    assert!(
        op.present_metric(DB_ISSUED).await >= 1.0,
        "credentials were issued"
    );

    // Kill the operator mid-lease and start a new one.
    drop(op);
    let op = Operator::start(&ns, "").await;
    common::wait_until(
        Duration::from_secs(30),
        "the new operator to reconcile",
        || {
            let op = &op;
            async move {
                op.metric("vaultsync_syncs_total{kind=\"VaultSecret\",result=\"Synced\"}")
                    .await
                    .is_some_and(|v| v > 0.0)
                    .then_some(())
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = secret(&client, &ns, "db").await.expect("copy");
    assert_eq!(after.data, before.data, "the same credentials");
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "no write at all"
    );
    assert_eq!(
        e2e::status(&client, &ns, "VaultSecret", "db").await["lease"]["id"],
        lease_before
    );
    let issued = op.metric(DB_ISSUED).await;
    assert!(
        matches!(issued, None | Some(0.0)),
        "the restarted operator issued credentials ({issued:?})"
    );
    assert!(
        e2e::restarted_at(&deployments).await.is_none(),
        "no workload restart"
    );
    let (user, password) = creds(&after);
    pg_login(&user, &password).expect("still logs in");
    assert_no_leak(&client, &ns, &op, &[&password]).await;
    e2e::delete_resources_then_namespace(&client, &ns).await;
}

#[tokio::test]
async fn pki_certificates_are_valid_match_their_key_and_rotate_before_expiry() {
    let (client, ns) = e2e::setup("e2e-pki").await;
    let role = dynamic_tenant(&client, &ns).await;
    let op = Operator::start(&ns, "").await;
    apply(
        &client,
        &ns,
        &format!(
            "apiVersion: vaultsync.dev/v1alpha1\nkind: VaultSecret\nmetadata: {{name: web}}\nspec:\n  vault:\n    auth: {{kubernetes: {{role: {role}, serviceAccountName: app}}}}\n    pki: {{mount: pki, role: web, commonName: app.example.com, altNames: [api.example.com], ipSans: [127.0.0.1], ttl: 12s, revokeOnRotate: true}}\n  renewalPercent: 50\n"
        ),
    )
    .await;
    let first = wait_secret(&client, &ns, "web", "the certificate", |_| true).await;
    assert_eq!(first.type_.as_deref(), Some("kubernetes.io/tls"));
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("e2e")
        .join(&ns);
    std::fs::create_dir_all(&dir).expect("dir");
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        std::fs::write(
            dir.join(key),
            value(&first, key).unwrap_or_else(|| panic!("{key} present")),
        )
        .expect("write");
    }
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let sans = openssl(&["x509", "-in", "tls.crt", "-noout", "-ext", "subjectAltName"]);
    assert!(
        sans.contains("DNS:app.example.com")
            && sans.contains("DNS:api.example.com")
            && sans.contains("IP Address:127.0.0.1"),
        "{sans}"
    );
    assert!(openssl(&["verify", "-CAfile", "ca.crt", "tls.crt"]).contains("OK"));
    assert_eq!(
        openssl(&["x509", "-in", "tls.crt", "-noout", "-pubkey"]),
        openssl(&["pkey", "-in", "tls.key", "-pubout"]),
        "the key matches the certificate"
    );
    let status = wait_ready(&client, &ns, "VaultSecret", "web", "True", "Synced").await;
    let serial = status["sourceVersion"]
        .as_str()
        .expect("serial")
        .to_string();
    let expiry = first
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("vaultsync.dev/expires-at"))
        .cloned()
        .expect("mark");

    // At half of its 12 s lifetime the certificate is re-issued, before it expires.
    let second = wait_secret(&client, &ns, "web", "the rotated certificate", |s| {
        value(s, "tls.crt") != value(&first, "tls.crt")
    })
    .await;
    let rotated_mark = second
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("vaultsync.dev/expires-at"))
        .cloned()
        .expect("mark");
    assert!(rotated_mark > expiry, "the new certificate lives longer");
    // Status follows the Secret write: wait for the new serial there too.
    common::wait_until(Duration::from_secs(15), "the new serial in status", || {
        let (client, ns, serial) = (client.clone(), ns.clone(), serial.clone());
        async move {
            let status = e2e::status(&client, &ns, "VaultSecret", "web").await;
            (status["sourceVersion"]
                .as_str()
                .is_some_and(|s| s != serial))
            .then_some(())
        }
    })
    .await;
    assert_no_leak(
        &client,
        &ns,
        &op,
        &[value(&first, "tls.key")
            .expect("key")
            .lines()
            .nth(1)
            .expect("key line")],
    )
    .await;
}

#[tokio::test]
async fn a_short_tenant_token_does_not_revoke_the_credentials_in_use() {
    let (client, ns) = e2e::setup("e2e-db-token").await;
    let role = dynamic_tenant(&client, &ns).await;
    // The tenant's Vault token lives 10 s (14 s at most); the database lease would live 1 h.
    vaultrs::auth::kubernetes::role::create(
        &root_vault(),
        "kubernetes",
        &role,
        Some(
            &mut vaultrs::api::auth::kubernetes::requests::CreateKubernetesRoleRequest::builder()
                .bound_service_account_names(vec!["app".to_string()])
                .bound_service_account_namespaces(vec![ns.clone()])
                .audience("vault")
                .token_policies(vec![role.clone()])
                .token_ttl("10s")
                .token_max_ttl("14s"),
        ),
    )
    .await
    .expect("short-lived role");
    e2e::database_role(&ns, 3600, 7200).await;
    let op = Operator::start(&ns, "").await;
    apply(
        &client,
        &ns,
        &database_secret(&role, &ns, "  renewalPercent: 50\n"),
    )
    .await;
    let first = wait_secret(&client, &ns, "db", "database credentials", |s| {
        value(s, "username").is_some()
    })
    .await;

    // For 30 s, well past the token's end, whatever the Secret holds logs in.
    let mut users = std::collections::BTreeSet::new();
    let mut secrets = vec![creds(&first).1];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let current = secret(&client, &ns, "db").await.expect("the copy stays");
        let (user, password) = creds(&current);
        if let Err(e) = pg_login(&user, &password) {
            // The old lease is revoked right after the new credentials are written, so a
            // read just before that switch may fail; the Secret must have moved on then.
            let now = secret(&client, &ns, "db").await.expect("the copy stays");
            assert_ne!(
                creds(&now).0,
                user,
                "the Secret held credentials that no longer log in: {e}"
            );
        }
        users.insert(user);
        secrets.push(password);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        users.len() >= 2,
        "credentials were re-issued before the token ended ({} users)",
        users.len()
    );
    let canaries: Vec<&str> = secrets.iter().map(String::as_str).collect();
    assert_no_leak(&client, &ns, &op, &canaries).await;
    e2e::delete_resources_then_namespace(&client, &ns).await;
}
