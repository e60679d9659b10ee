//! AzureKeyVaultSecret end to end: a real operator process against the local apiserver
//! and the project's local Key Vault (tests/env/keyvault), reading through the official
//! Azure SDK crates with the challenge-resource check on. Identities are real: a
//! namespace's service account through the federated (workload identity) flow, or a
//! service principal's secret, exchanged at the local token endpoint. Objects are seeded
//! through the Key Vault REST API with the environment's admin token.

mod common;
mod e2e;

use std::time::Duration;

use base64::Engine as _;
use e2e::keyvault::KeyVaultEnv;
use e2e::{
    Operator, OperatorOptions, apply, assert_no_leak, canary, secret, setup, value, wait_ready,
    wait_secret,
};

const KIND: &str = "AzureKeyVaultSecret";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/azure");

fn kv() -> KeyVaultEnv {
    KeyVaultEnv::load().unwrap_or_else(|e| panic!("{e}"))
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn fixture_text(name: &str) -> String {
    String::from_utf8(fixture(name)).expect("PEM fixture")
}

/// An operator for `ns` with the local Key Vault as its `default` Azure connection.
async fn operator(ns: &str, kv: &KeyVaultEnv, port: u16, options: OperatorOptions) -> Operator {
    Operator::start_with(ns, options.extra(&kv.connection_yaml(port, ""))).await
}

/// An AzureKeyVaultSecret manifest; `object` and `output` are YAML flow mappings.
fn akvs(name: &str, vault: &str, auth: &str, object: &str, output: &str, extra: &str) -> String {
    format!(
        "apiVersion: vaultsync.dev/v1alpha1\nkind: AzureKeyVaultSecret\nmetadata:\n  name: {name}\n\
         spec:\n  vault:\n    name: {vault}\n{auth}    object: {object}\n  output: {output}\n{extra}"
    )
}

/// The PEM certificates of `text`, in order.
fn pem_blocks(text: &str, label: &str) -> Vec<String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    text.split(&begin)
        .skip(1)
        .filter_map(|rest| rest.split(&end).next())
        .map(|body| body.split_whitespace().collect::<String>())
        .collect()
}

#[tokio::test]
async fn every_object_type_lands_in_its_secret() {
    let kv = kv();
    let (client, ns) = setup("e2e-akv-types").await;
    let (token, plain, json_pw, yaml_pw) = (
        canary("token"),
        canary("b64"),
        canary("json"),
        canary("yaml"),
    );
    let p = ns.to_string();
    kv.set_secret(
        "default",
        &format!("{p}-token"),
        &format!("  {token}\n"),
        None,
    )
    .await
    .unwrap();
    kv.set_secret(
        "default",
        &format!("{p}-encoded"),
        &base64::engine::general_purpose::STANDARD.encode(&plain),
        None,
    )
    .await
    .unwrap();
    kv.set_secret(
        "default",
        &format!("{p}-json"),
        &format!(r#"{{"user": "app", "password": "{json_pw}", "port": 5432}}"#),
        Some("application/x-json"),
    )
    .await
    .unwrap();
    kv.set_secret(
        "default",
        &format!("{p}-yaml"),
        &format!("user: app\npassword: {yaml_pw}\n"),
        Some("application/x-yaml"),
    )
    .await
    .unwrap();
    kv.set_secret(
        "default",
        &format!("{p}-nested"),
        r#"{"db": {"password": "x"}}"#,
        None,
    )
    .await
    .unwrap();
    for (name, file, pem, content_type) in [
        ("legacy", "rsa-legacy.pfx", false, "application/x-pkcs12"),
        ("aes", "rsa-aes.pfx", false, "application/x-pkcs12"),
        ("pem", "rsa-bundle.pem", true, "application/x-pem-file"),
        (
            "forged",
            "forged-bundle.pem",
            true,
            "application/x-pem-file",
        ),
    ] {
        kv.import_certificate(
            "default",
            &format!("{p}-{name}"),
            &fixture(file),
            pem,
            content_type,
        )
        .await
        .unwrap_or_else(|e| panic!("import {file}: {e}"));
    }
    let rsa = kv
        .create_key("default", &format!("{p}-rsa"), "RSA", None)
        .await
        .unwrap();
    let ec = kv
        .create_key("default", &format!("{p}-ec"), "EC", Some("P-256"))
        .await
        .unwrap();
    let op = operator(&ns, &kv, kv.port, OperatorOptions::default()).await;

    let manifests = [
        (
            "token",
            format!("{{name: {p}-token, type: secret}}"),
            "{transform: [trim], secret: {dataKey: token}}".to_string(),
        ),
        (
            "encoded",
            format!("{{name: {p}-encoded, type: secret}}"),
            "{transform: [base64decode], secret: {dataKey: plain}}".into(),
        ),
        (
            "json",
            format!(
                "{{name: {p}-json, type: multi-key-value-secret, contentType: application/x-json}}"
            ),
            "{}".into(),
        ),
        (
            "yaml",
            format!(
                "{{name: {p}-yaml, type: multi-key-value-secret, contentType: application/x-yaml}}"
            ),
            "{}".into(),
        ),
        (
            "nested",
            format!(
                "{{name: {p}-nested, type: multi-key-value-secret, contentType: application/x-json}}"
            ),
            "{}".into(),
        ),
        (
            "legacy",
            format!("{{name: {p}-legacy, type: certificate}}"),
            "{secret: {type: kubernetes.io/tls, chainOrder: ensureserverfirst}}".into(),
        ),
        (
            "aes",
            format!("{{name: {p}-aes, type: certificate}}"),
            "{secret: {chainOrder: ensureserverfirst}}".into(),
        ),
        (
            "pem",
            format!("{{name: {p}-pem, type: certificate}}"),
            "{secret: {dataKey: bundle.pem, chainOrder: ensureserverfirst}}".into(),
        ),
        (
            "forged",
            format!("{{name: {p}-forged, type: certificate}}"),
            "{secret: {type: kubernetes.io/tls}}".into(),
        ),
        (
            "rsa",
            format!("{{name: {p}-rsa, type: key}}"),
            "{secret: {dataKey: public.pem}}".into(),
        ),
        (
            "ec",
            format!("{{name: {p}-ec, type: key}}"),
            "{secret: {dataKey: public.pem}}".into(),
        ),
    ];
    for (name, object, output) in &manifests {
        apply(&client, &ns, &akvs(name, "default", "", object, output, "")).await;
    }

    let s = wait_secret(&client, &ns, "token", "the trimmed secret", |_| true).await;
    assert_eq!(
        value(&s, "token").as_deref(),
        Some(token.as_str()),
        "trimmed"
    );
    let s = wait_secret(&client, &ns, "encoded", "the decoded secret", |_| true).await;
    assert_eq!(value(&s, "plain").as_deref(), Some(plain.as_str()));
    let s = wait_secret(&client, &ns, "json", "the JSON entries", |_| true).await;
    assert_eq!(value(&s, "password").as_deref(), Some(json_pw.as_str()));
    assert_eq!(value(&s, "user").as_deref(), Some("app"));
    assert_eq!(value(&s, "port").as_deref(), Some("5432"));
    let s = wait_secret(&client, &ns, "yaml", "the YAML entries", |_| true).await;
    assert_eq!(value(&s, "password").as_deref(), Some(yaml_pw.as_str()));
    let st = wait_ready(&client, &ns, KIND, "nested", "False", "InvalidData").await;
    assert!(
        e2e::ready_condition(&st).unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("db"),
        "the refusal names the nested key: {st}"
    );
    assert!(secret(&client, &ns, "nested").await.is_none());

    // Certificates: the chain leaf first, verified by signature.
    let expected: Vec<String> = ["rsa-leaf.pem", "rsa-intermediate.pem", "rsa-root.pem"]
        .iter()
        .flat_map(|f| pem_blocks(&fixture_text(f), "CERTIFICATE"))
        .collect();
    for name in ["legacy", "aes"] {
        let s = wait_secret(&client, &ns, name, "the TLS Secret", |_| true).await;
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"), "{name}");
        let crt = value(&s, "tls.crt").unwrap();
        assert_eq!(
            pem_blocks(&crt, "CERTIFICATE"),
            expected,
            "{name}: leaf, intermediate, root"
        );
        let key = value(&s, "tls.key").unwrap();
        assert_eq!(
            pem_blocks(&key, "PRIVATE KEY"),
            pem_blocks(&fixture_text("rsa-leaf.key"), "PRIVATE KEY"),
            "{name}: the leaf's key as PKCS#8"
        );
    }
    let s = wait_secret(&client, &ns, "pem", "the PEM bundle", |_| true).await;
    assert_eq!(s.type_.as_deref(), Some("Opaque"));
    let bundle = value(&s, "bundle.pem").unwrap();
    assert_eq!(pem_blocks(&bundle, "CERTIFICATE"), expected);
    assert_eq!(pem_blocks(&bundle, "PRIVATE KEY").len(), 1);
    let st = wait_ready(&client, &ns, KIND, "forged", "False", "InvalidData").await;
    let message = e2e::ready_condition(&st).unwrap()["message"].to_string();
    assert!(
        message.contains("forged.example.test") || message.contains("signed"),
        "{message}"
    );
    assert!(
        secret(&client, &ns, "forged").await.is_none(),
        "a forged chain is never written"
    );

    // Keys: the public part as SubjectPublicKeyInfo PEM, never a private part.
    for (name, jwk) in [("rsa", &rsa), ("ec", &ec)] {
        let s = wait_secret(&client, &ns, name, "the public key", |_| true).await;
        let pem = value(&s, "public.pem").unwrap();
        let der = base64::engine::general_purpose::STANDARD
            .decode(
                pem_blocks(&pem, "PUBLIC KEY")
                    .first()
                    .expect("a PUBLIC KEY block"),
            )
            .unwrap();
        let (_, spki) = <x509_parser::x509::SubjectPublicKeyInfo as x509_parser::prelude::FromDer<_>>::from_der(&der).expect("SPKI");
        let raw = spki.subject_public_key.data.to_vec();
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        match name {
            "ec" => {
                let x = url.decode(jwk["x"].as_str().unwrap()).unwrap();
                assert_eq!(&raw[1..33], &x[..], "the EC point's x is the JWK's");
            }
            _ => {
                let n = url.decode(jwk["n"].as_str().unwrap()).unwrap();
                assert!(
                    raw.windows(n.len()).any(|w| w == &n[..]),
                    "the RSA modulus is the JWK's"
                );
            }
        }
        assert!(!pem.contains("PRIVATE"));
    }
    for name in ["token", "json", "legacy", "rsa"] {
        wait_ready(&client, &ns, KIND, name, "True", "Synced").await;
    }
    assert_no_leak(&client, &ns, &op, &[&token, &plain, &json_pw, &yaml_pw]).await;
}

#[tokio::test]
async fn version_pin_and_rotation_on_a_new_version() {
    let kv = kv();
    let (client, ns) = setup("e2e-akv-versions").await;
    let name = format!("{}-rotating", &*ns);
    let (v1_value, v2_value, v3_value) = (canary("v1"), canary("v2"), canary("v3"));
    let v1 = kv
        .set_secret("default", &name, &v1_value, None)
        .await
        .unwrap();
    kv.set_secret("default", &name, &v2_value, None)
        .await
        .unwrap();
    let op = operator(&ns, &kv, kv.port, OperatorOptions::default()).await;
    let refresh = "  refreshInterval: 1s\n  ttl: 1h\n";
    apply(
        &client,
        &ns,
        &akvs(
            "latest",
            "default",
            "",
            &format!("{{name: {name}, type: secret}}"),
            "{secret: {dataKey: v}}",
            refresh,
        ),
    )
    .await;
    apply(
        &client,
        &ns,
        &akvs(
            "pinned",
            "default",
            "",
            &format!("{{name: {name}, type: secret, version: {v1}}}"),
            "{secret: {dataKey: v}}",
            refresh,
        ),
    )
    .await;
    wait_secret(&client, &ns, "latest", "the latest version", |s| {
        value(s, "v").as_deref() == Some(v2_value.as_str())
    })
    .await;
    wait_secret(&client, &ns, "pinned", "the pinned version", |s| {
        value(s, "v").as_deref() == Some(v1_value.as_str())
    })
    .await;
    let v3 = kv
        .set_secret("default", &name, &v3_value, None)
        .await
        .unwrap();
    wait_secret(
        &client,
        &ns,
        "latest",
        "the copy rotated to the new version",
        |s| value(s, "v").as_deref() == Some(v3_value.as_str()),
    )
    .await;
    // Status follows the Secret write.
    common::wait_until(
        Duration::from_secs(10),
        "status to name the new version",
        || {
            let (client, ns, v3) = (client.clone(), ns.clone(), v3.clone());
            async move {
                let st = e2e::status(&client, &ns, KIND, "latest").await;
                (st["sourceVersion"] == v3.as_str()).then_some(())
            }
        },
    )
    .await;
    wait_ready(&client, &ns, KIND, "latest", "True", "Synced").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pinned = secret(&client, &ns, "pinned").await.unwrap();
    assert_eq!(
        value(&pinned, "v").as_deref(),
        Some(v1_value.as_str()),
        "a pin stays"
    );

    // A pin that is not a version is refused at admission.
    let bad = akvs(
        "bad-pin",
        "default",
        "",
        &format!("{{name: {name}, type: secret, version: \"../x\"}}"),
        "{secret: {dataKey: v}}",
        "",
    );
    let value_: serde_json::Value = serde_yaml::from_str(&bad).unwrap();
    let ar = kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
        "vaultsync.dev",
        "v1alpha1",
        KIND,
    ));
    let api: kube::Api<kube::core::DynamicObject> =
        kube::Api::namespaced_with(client.clone(), &ns, &ar);
    let refused = api
        .patch(
            "bad-pin",
            &kube::api::PatchParams::apply("e2e-test"),
            &kube::api::Patch::Apply(&value_),
        )
        .await
        .expect_err("a version that is not 32 hex characters is refused");
    assert!(refused.to_string().contains("32 hexadecimal"), "{refused}");

    // Unchanged data: refreshes read, but write nothing.
    let writes = op
        .present_metric("vaultsync_secret_writes_total{part=\"data\"}")
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        op.present_metric("vaultsync_secret_writes_total{part=\"data\"}")
            .await,
        writes,
        "no write when unchanged"
    );
    assert_no_leak(&client, &ns, &op, &[&v1_value, &v2_value, &v3_value]).await;
}

/// Creates service account `sa` in `ns` (if missing).
async fn service_account(client: &kube::Client, ns: &str, sa: &str) {
    let api: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
        kube::Api::namespaced(client.clone(), ns);
    let account = serde_json::from_value(serde_json::json!({"metadata": {"name": sa}})).unwrap();
    let _ = api.create(&Default::default(), &account).await;
}

/// An Entra app registration trusting service account `sa` of `ns`, with read access to
/// the secrets of `vault`.
fn federated_reader(kv: &KeyVaultEnv, client_id: &str, ns: &str, sa: &str, vault: &str) {
    kv.script(&[
        "register-client",
        client_id,
        "--federated",
        &format!("system:serviceaccount:{ns}:{sa}"),
    ])
    .unwrap();
    kv.script(&["grant", vault, client_id, "secrets=get"])
        .unwrap();
}

fn workload(sa: &str, client_id: &str) -> String {
    format!("    auth: {{workloadIdentity: {{serviceAccountName: {sa}, clientId: {client_id}}}}}\n")
}

#[tokio::test]
async fn workload_identity_client_secret_and_refused_identities() {
    let kv = kv();
    let (client, ns) = setup("e2e-akv-auth").await;
    let p = ns.to_string();
    let value_ = canary("auth");
    let object = format!("{p}-db");
    kv.set_secret("team-a", &object, &value_, None)
        .await
        .unwrap();
    service_account(&client, &ns, "app").await;
    service_account(&client, &ns, "other").await;
    let wi = format!("wi-{p}");
    federated_reader(&kv, &wi, &ns, "app", "team-a");
    let sp = format!("sp-{p}");
    let sp_secret = canary("sp");
    kv.script(&["register-client", &sp, "--secret", &sp_secret])
        .unwrap();
    kv.script(&["grant", "team-a", &sp, "secrets=get"]).unwrap();
    let creds: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "sp-creds"},
        "stringData": {"clientSecret": sp_secret, "wrong": "not-the-secret"}
    }))
    .unwrap();
    kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ns)
        .create(&Default::default(), &creds)
        .await
        .unwrap();
    let op = operator(&ns, &kv, kv.port, OperatorOptions::default()).await;
    let obj = format!("{{name: {object}, type: secret}}");
    let out = "{secret: {dataKey: password}}";
    let cases = [
        ("wi", workload("app", &wi)),
        (
            "sp",
            format!(
                "    auth: {{clientSecret: {{clientId: {sp}, secretRef: {{name: sp-creds, key: clientSecret}}}}}}\n"
            ),
        ),
        // The federated credential trusts `app`, not `other`.
        ("wrong-account", workload("other", &wi)),
        (
            "wrong-secret",
            format!(
                "    auth: {{clientSecret: {{clientId: {sp}, secretRef: {{name: sp-creds, key: wrong}}}}}}\n"
            ),
        ),
        // The namespace's default identity may read vault `default`, not team-a.
        ("default-identity", String::new()),
    ];
    for (name, auth) in &cases {
        apply(&client, &ns, &akvs(name, "team-a", auth, &obj, out, "")).await;
    }
    apply(
        &client,
        &ns,
        &akvs(
            "managed",
            "team-a",
            "    auth: {managedIdentity: {}}\n",
            &obj,
            out,
            "",
        ),
    )
    .await;
    for name in ["wi", "sp"] {
        let s = wait_secret(&client, &ns, name, "the copy", |_| true).await;
        assert_eq!(
            value(&s, "password").as_deref(),
            Some(value_.as_str()),
            "{name}"
        );
    }
    for name in ["wrong-account", "wrong-secret", "default-identity"] {
        let st = wait_ready(&client, &ns, KIND, name, "False", "AuthFailed").await;
        assert!(secret(&client, &ns, name).await.is_none(), "{name}: {st}");
    }
    let st = wait_ready(&client, &ns, KIND, "managed", "False", "InvalidSpec").await;
    assert!(st.to_string().contains("managedIdentityNamespaces"), "{st}");
    assert_no_leak(&client, &ns, &op, &[&value_, &sp_secret]).await;
}

#[tokio::test]
async fn a_tenant_cannot_read_another_tenants_secret() {
    let kv = kv();
    let client = common::client().await;
    common::install_crds(&client).await;
    let a = common::create_namespace(&client, "e2e-akv-a").await;
    let b = common::create_namespace(&client, "e2e-akv-b").await;
    let value_ = canary("tenant-a");
    let object = format!("{}-private", &*a);
    kv.set_secret("team-b", &object, &value_, None)
        .await
        .unwrap();
    let (id_a, id_b) = (format!("wi-{}", &*a), format!("wi-{}", &*b));
    service_account(&client, &a, "app").await;
    service_account(&client, &b, "app").await;
    federated_reader(&kv, &id_a, &a, "app", "team-b");
    kv.script(&[
        "register-client",
        &id_b,
        "--federated",
        &format!("system:serviceaccount:{}:app", &*b),
    ])
    .unwrap();
    let op = Operator::start_with(
        &a,
        OperatorOptions {
            watch_namespaces: Some(format!("[{}, {}]", &*a, &*b)),
            ..Default::default()
        }
        .extra(&kv.connection_yaml(kv.port, "")),
    )
    .await;
    let obj = format!("{{name: {object}, type: secret}}");
    let out = "{secret: {dataKey: v}}";
    apply(
        &client,
        &a,
        &akvs("mine", "team-b", &workload("app", &id_a), &obj, out, ""),
    )
    .await;
    wait_secret(&client, &a, "mine", "A's copy", |s| {
        value(s, "v").as_deref() == Some(value_.as_str())
    })
    .await;
    // Only now, with A's credential, client and read cached, does B try: with its own
    // identity, claiming A's app registration, and through the default identity.
    apply(
        &client,
        &b,
        &akvs("own", "team-b", &workload("app", &id_b), &obj, out, ""),
    )
    .await;
    apply(
        &client,
        &b,
        &akvs("claimed", "team-b", &workload("app", &id_a), &obj, out, ""),
    )
    .await;
    apply(&client, &b, &akvs("default", "team-b", "", &obj, out, "")).await;
    for name in ["own", "claimed", "default"] {
        wait_ready(&client, &b, KIND, name, "False", "AuthFailed").await;
    }
    // Retries (the error backoff starts at a second) are refused too.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for name in ["own", "claimed", "default"] {
        wait_ready(&client, &b, KIND, name, "False", "AuthFailed").await;
        assert!(secret(&client, &b, name).await.is_none(), "{name}");
    }
    assert_no_leak(&client, &b, &op, &[&value_]).await;
    assert_no_leak(&client, &a, &op, &[&value_]).await;
}

/// A TCP forwarder in front of the local Key Vault that a test can stop and restart, as
/// if the vault went down.
struct Outage {
    port: u16,
    target: u16,
    tasks: Option<tokio::task::JoinSet<()>>,
}

impl Outage {
    async fn new(target: u16) -> Self {
        let port = e2e::operator::free_port().unwrap();
        let mut outage = Self {
            port,
            target,
            tasks: None,
        };
        outage.up().await;
        outage
    }

    async fn up(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        let target = self.target;
        let mut tasks = tokio::task::JoinSet::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<tokio::net::TcpStream>();
        tasks.spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let _ = tx.send(inbound);
            }
        });
        tasks.spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Some(mut inbound) = rx.recv().await {
                conns.spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        self.tasks = Some(tasks);
    }

    /// Closes the listener and every open connection.
    async fn down(&mut self) {
        if let Some(mut tasks) = self.tasks.take() {
            tasks.shutdown().await;
        }
    }
}

#[tokio::test]
async fn vault_down_keeps_the_copy_until_expiry_then_collects_and_restores() {
    let kv = kv();
    let (client, ns) = setup("e2e-akv-down").await;
    let value_ = canary("down");
    let object = format!("{}-kept", &*ns);
    kv.set_secret("default", &object, &value_, None)
        .await
        .unwrap();
    let mut outage = Outage::new(kv.port).await;
    let op = operator(&ns, &kv, outage.port, OperatorOptions::default()).await;
    apply(
        &client,
        &ns,
        &akvs(
            "kept",
            "default",
            "",
            &format!("{{name: {object}, type: secret}}"),
            "{secret: {dataKey: v}}",
            "  refreshInterval: 1s\n  ttl: 6s\n",
        ),
    )
    .await;
    let before = wait_secret(&client, &ns, "kept", "the copy", |_| true).await;
    outage.down().await;
    wait_ready(&client, &ns, KIND, "kept", "False", "BackendUnavailable").await;
    let during = secret(&client, &ns, "kept")
        .await
        .expect("the copy is kept while valid");
    assert_eq!(
        during.data, before.data,
        "byte-identical while the vault is down"
    );
    common::wait_until(
        Duration::from_secs(20),
        "the expired copy to be collected",
        || {
            let client = client.clone();
            let ns = ns.clone();
            async move { secret(&client, &ns, "kept").await.is_none().then_some(()) }
        },
    )
    .await;
    outage.up().await;
    let restored = wait_secret(&client, &ns, "kept", "the restored copy", |_| true).await;
    assert_eq!(restored.data, before.data);
    assert_no_leak(&client, &ns, &op, &[&value_]).await;
}

#[tokio::test]
async fn akv2k8s_manifests_sync_unchanged() {
    let kv = kv();
    let (client, ns) = setup("e2e-akv2k8s").await;
    // The manifests name vault `akv2k8s-test`; the namespace's default identity reads it.
    kv.script(&[
        "grant",
        "akv2k8s-test",
        "vaultsync-namespace-reader",
        "secrets=get",
        "keys=get",
        "certificates=get",
    ])
    .unwrap();
    let yaml_value = canary("akv2k8s");
    let encoded = base64::engine::general_purpose::STANDARD
        .encode(format!("  username: app\n  password: {yaml_value}\n"));
    kv.set_secret(
        "akv2k8s-test",
        "my-secret",
        &format!("  {encoded}  "),
        Some("application/x-yaml"),
    )
    .await
    .unwrap();
    kv.import_certificate(
        "akv2k8s-test",
        "my-certificate",
        &fixture("rsa-legacy.pfx"),
        false,
        "application/x-pkcs12",
    )
    .await
    .unwrap();
    let op = operator(&ns, &kv, kv.port, OperatorOptions::default()).await;
    for file in ["akv2k8s-v1.yaml", "akv2k8s-v2beta1.yaml"] {
        let text = std::fs::read_to_string(format!(
            "{}/tests/fixtures/{file}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        for doc in text.split("\n---") {
            if doc.contains("kind:") {
                apply(&client, &ns, doc).await;
            }
        }
    }
    let tls = wait_secret(
        &client,
        &ns,
        "my-certificate-from-akv",
        "the certificate",
        |_| true,
    )
    .await;
    assert_eq!(tls.type_.as_deref(), Some("kubernetes.io/tls"));
    let s = wait_secret(
        &client,
        &ns,
        "my-secret-from-akv",
        "the multi-key-value secret",
        |_| true,
    )
    .await;
    assert_eq!(value(&s, "password").as_deref(), Some(yaml_value.as_str()));
    assert_eq!(value(&s, "username").as_deref(), Some("app"));
    assert_no_leak(&client, &ns, &op, &[&yaml_value]).await;
}

#[tokio::test]
async fn a_throttling_vault_is_left_alone_until_it_recovers() {
    let kv = kv();
    let (client, ns) = setup("e2e-akv-429").await;
    let p = ns.to_string();
    let count = 8;
    let mut values = Vec::new();
    for i in 0..count {
        let v = canary(&format!("t{i}"));
        kv.set_secret("bench", &format!("{p}-s{i}"), &v, None)
            .await
            .unwrap();
        values.push(v);
    }
    kv.script(&[
        "grant",
        "bench",
        "vaultsync-namespace-reader",
        "secrets=get",
    ])
    .unwrap();
    // Three requests per four seconds, fewer than the resources ask at once.
    kv.script(&["throttle", "bench", "3", "4"]).unwrap();
    let op = operator(&ns, &kv, kv.port, OperatorOptions::default()).await;
    for i in 0..count {
        apply(
            &client,
            &ns,
            &akvs(
                &format!("s{i}"),
                "bench",
                "",
                &format!("{{name: {p}-s{i}, type: secret}}"),
                "{secret: {dataKey: v}}",
                "",
            ),
        )
        .await;
    }
    let started = std::time::Instant::now();
    common::wait_until(
        Duration::from_secs(90),
        "every resource despite the 429s",
        || {
            let client = client.clone();
            let ns = ns.clone();
            async move {
                for i in 0..count {
                    secret(&client, &ns, &format!("s{i}")).await?;
                }
                Some(())
            }
        },
    )
    .await;
    let elapsed = started.elapsed();
    kv.script(&["throttle", "bench", "off"]).unwrap();
    let ok = op.present_metric("vaultsync_backend_requests_total{backend=\"azure\",operation=\"secret_read\",outcome=\"ok\"}").await;
    let throttled = op
        .metric("vaultsync_backend_requests_total{backend=\"azure\",operation=\"secret_read\",outcome=\"throttled\"}")
        .await
        .unwrap_or(0.0);
    println!(
        "{count} resources through a 3-per-4s vault: {elapsed:?}, {ok} reads, {throttled} throttled"
    );
    assert!(throttled >= 1.0, "the vault did throttle");
    assert_eq!(ok, count as f64, "one successful read per resource");
    // Honoured: after a 429 the whole vault is paused, so the refused requests stay a
    // small multiple of the resources, however long the vault throttles.
    assert!(
        throttled <= 2.0 * count as f64,
        "{throttled} requests were refused with 429: the operator kept asking"
    );
    let refs: Vec<&str> = values.iter().map(String::as_str).collect();
    assert_no_leak(&client, &ns, &op, &refs).await;
}

#[tokio::test]
async fn the_default_identity_can_come_from_the_service_accounts_annotation() {
    let kv = kv();
    let (client, ns) = setup("e2e-akv-annotated").await;
    let value_ = canary("annotated");
    let object = format!("{}-annotated", &*ns);
    kv.set_secret("team-a", &object, &value_, None)
        .await
        .unwrap();
    let id = format!("wi-annotated-{}", &*ns);
    federated_reader(&kv, &id, &ns, "default", "team-a");
    // The connection's default auth names no client id: each service account's
    // azure.workload.identity/client-id annotation does.
    let connection = kv
        .connection_yaml(kv.port, "")
        .replace("        clientId: vaultsync-namespace-reader\n", "");
    assert!(!connection.contains("clientId"), "{connection}");
    let op = Operator::start_with(&ns, OperatorOptions::default().extra(&connection)).await;
    let obj = format!("{{name: {object}, type: secret}}");
    apply(
        &client,
        &ns,
        &akvs(
            "unannotated",
            "team-a",
            "",
            &obj,
            "{secret: {dataKey: v}}",
            "",
        ),
    )
    .await;
    let st = wait_ready(&client, &ns, KIND, "unannotated", "False", "AuthFailed").await;
    assert!(
        st.to_string().contains("azure.workload.identity/client-id"),
        "{st}"
    );
    let accounts: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
        kube::Api::namespaced(client.clone(), &ns);
    common::wait_until(
        Duration::from_secs(10),
        "the default service account",
        || {
            let accounts = accounts.clone();
            async move { accounts.get_opt("default").await.ok().flatten() }
        },
    )
    .await;
    let patch =
        serde_json::json!({"metadata": {"annotations": {"azure.workload.identity/client-id": id}}});
    accounts
        .patch(
            "default",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
    apply(
        &client,
        &ns,
        &akvs(
            "annotated",
            "team-a",
            "",
            &obj,
            "{secret: {dataKey: v}}",
            "",
        ),
    )
    .await;
    let s = wait_secret(
        &client,
        &ns,
        "annotated",
        "the copy read as the annotated identity",
        |_| true,
    )
    .await;
    assert_eq!(value(&s, "v").as_deref(), Some(value_.as_str()));
    assert_no_leak(&client, &ns, &op, &[&value_]).await;
}

/// akv2k8s' `output.configMap`: a certificate's chain and a key's public key land in
/// owner-referenced ConfigMaps, never a private key; a new version rewrites the ConfigMap;
/// a ConfigMap someone else made is never taken over; secrets are refused at admission.
#[tokio::test]
async fn public_material_lands_in_a_config_map_and_nothing_private_does() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let kv = kv();
    let (client, ns) = setup("e2e-akv-cm").await;
    let p = ns.to_string();
    kv.import_certificate(
        "default",
        &format!("{p}-cert"),
        &fixture("rsa-bundle.pem"),
        true,
        "application/x-pem-file",
    )
    .await
    .unwrap();
    kv.create_key("default", &format!("{p}-rsa"), "RSA", None)
        .await
        .unwrap();
    let foreign: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "taken"}, "data": {"ca.crt": "theirs"}}))
    .unwrap();
    let config_maps: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), &ns);
    config_maps
        .create(&Default::default(), &foreign)
        .await
        .expect("a foreign ConfigMap");
    let _op = operator(&ns, &kv, kv.port, OperatorOptions::default()).await;
    for (name, object, cm) in [
        (
            "cert",
            format!("{{name: {p}-cert, type: certificate}}"),
            "{configMap: {name: ca-bundle, dataKey: ca.crt}}",
        ),
        (
            "rsa",
            format!("{{name: {p}-rsa, type: key}}"),
            "{configMap: {name: signing-key, dataKey: key.pub}}",
        ),
        (
            "thief",
            format!("{{name: {p}-cert, type: certificate}}"),
            "{configMap: {name: taken, dataKey: ca.crt}}",
        ),
    ] {
        e2e::apply(&client, &ns, &akvs(name, "default", "", &object, cm, "")).await;
    }
    e2e::wait_ready(&client, &ns, KIND, "cert", "True", "Synced").await;
    let bundle = config_maps
        .get("ca-bundle")
        .await
        .expect("ConfigMap ca-bundle");
    let pem = bundle
        .data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .expect("ca.crt")
        .clone();
    assert_eq!(
        pem_blocks(&pem, "CERTIFICATE").len(),
        pem_blocks(&fixture_text("rsa-bundle.pem"), "CERTIFICATE").len()
    );
    assert!(
        !pem.contains("PRIVATE KEY"),
        "no private key in a ConfigMap"
    );
    let owner = &bundle.metadata.owner_references.as_ref().expect("owned")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        (KIND, "cert", Some(true))
    );
    e2e::wait_ready(&client, &ns, KIND, "rsa", "True", "Synced").await;
    let key = config_maps
        .get("signing-key")
        .await
        .expect("ConfigMap signing-key");
    let public = key
        .data
        .as_ref()
        .and_then(|d| d.get("key.pub"))
        .expect("key.pub")
        .clone();
    assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"), "{public}");

    // Someone else's ConfigMap stays theirs.
    let status = e2e::wait_ready(&client, &ns, KIND, "thief", "False", "Conflict").await;
    assert!(
        status
            .to_string()
            .contains("ConfigMap taken already exists"),
        "{status}"
    );
    let taken = config_maps.get("taken").await.expect("taken");
    assert_eq!(
        taken.data.and_then(|d| d.get("ca.crt").cloned()).as_deref(),
        Some("theirs")
    );
    assert!(taken.metadata.owner_references.is_none(), "not taken over");

    // A new version of the key rewrites the ConfigMap.
    kv.create_key("default", &format!("{p}-rsa"), "RSA", None)
        .await
        .unwrap();
    e2e::apply(
        &client,
        &ns,
        &akvs(
            "rsa",
            "default",
            "",
            &format!("{{name: {p}-rsa, type: key}}"),
            "{configMap: {name: signing-key, dataKey: key.pub}}",
            "  refreshInterval: 1s\n  ttl: 10s\n",
        ),
    )
    .await;
    common::wait_until(Duration::from_secs(30), "the new public key", || async {
        let now = config_maps.get("signing-key").await.ok()?;
        let now = now.data?.get("key.pub")?.clone();
        (now != public).then_some(())
    })
    .await;
}
