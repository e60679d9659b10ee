//! The Azure identity side of the local environment (tests/env/keyvault.sh): the local token
//! endpoint (tests/env/token-endpoint.py) as Entra ID, over HTTPS with the local CA in
//! AZURE_KEYVAULT_CA_FILE.
//!
//! Proves that the real Azure SDK credentials work against it the way the operator will use
//! them: a `ClientSecretCredential` and a `WorkloadIdentityCredential` fed a Kubernetes
//! TokenRequest token, whose authority host is the local token endpoint, over a reqwest
//! client that trusts only the local CA. They ask for a Key Vault token directly; reading
//! secrets with such tokens is tested in tests/azure.rs and tests/keyvault_sdk.rs.
//!
//! Needs the environment: `make env-up`, then `source target/env/env.sh`. A missing variable
//! fails the test; nothing is skipped.

use azure_core::{
    cloud::{CloudConfiguration, CustomConfiguration},
    credentials::{Secret, TokenCredential},
    error::ErrorKind,
    http::{ClientOptions, Transport},
};
use azure_identity::{
    ClientAssertionCredentialOptions, ClientSecretCredential, ClientSecretCredentialOptions,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use std::{io::Read, sync::Arc};

/// The audience Entra ID expects on federated service account tokens.
const FEDERATED_AUDIENCE: &str = "api://AzureADTokenExchange";

/// The scope the operator asks for: Key Vault.
const KEY_VAULT_SCOPE: &str = "https://vault.azure.net/.default";

fn env_var(component: &str, name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: the {component} component of the local environment is not up \
             (or its env is not loaded); run `make env-up` and `source target/env/env.sh`"
        ),
    }
}

struct AzureEnv {
    ca_file: String,
    authority_host: String,
    tenant_id: String,
    client_id: String,
    client_secret: String,
}

impl AzureEnv {
    fn load() -> Self {
        let c = "local Key Vault (tests/env/keyvault.sh)";
        Self {
            ca_file: env_var(c, "AZURE_KEYVAULT_CA_FILE"),
            authority_host: env_var(c, "AZURE_AUTHORITY_HOST"),
            tenant_id: env_var(c, "AZURE_TENANT_ID"),
            client_id: env_var(c, "AZURE_CLIENT_ID"),
            client_secret: env_var(c, "AZURE_CLIENT_SECRET"),
        }
    }

    /// A reqwest client (rustls) that trusts only the local CA.
    fn http_client(&self) -> reqwest::Client {
        let pem = std::fs::read(&self.ca_file)
            .unwrap_or_else(|e| panic!("reading AZURE_KEYVAULT_CA_FILE {}: {e}", self.ca_file));
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .unwrap_or_else(|e| panic!("parsing AZURE_KEYVAULT_CA_FILE {}: {e}", self.ca_file));
        reqwest::Client::builder()
            .tls_certs_only(certs)
            .build()
            .expect("building the reqwest client")
    }

    /// Client options for the credentials: our transport, and the
    /// local token endpoint as the authority host.
    fn client_options(&self) -> ClientOptions {
        let mut cloud = CustomConfiguration::default();
        cloud.authority_host = self.authority_host.clone();
        ClientOptions {
            transport: Some(Transport::new(Arc::new(self.http_client()))),
            cloud: Some(Arc::new(CloudConfiguration::from(cloud))),
            ..Default::default()
        }
    }

    fn secret_credential(&self, secret: &str) -> Arc<ClientSecretCredential> {
        ClientSecretCredential::new(
            &self.tenant_id,
            self.client_id.clone(),
            Secret::new(secret.to_string()),
            Some(ClientSecretCredentialOptions {
                client_options: self.client_options(),
            }),
        )
        .expect("building the ClientSecretCredential")
    }
}

/// A random lowercase hex string from the kernel's CSPRNG.
fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("reading /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// The whole error chain as text, to look for the Entra error code.
fn error_chain(err: &azure_core::Error) -> String {
    let mut text = format!("{err}");
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        text.push_str(" | ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The HTTP status and Entra error code of the token endpoint's answer inside `err`.
fn entra_response(err: &azure_core::Error) -> Option<(u16, Option<String>)> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(azure) = e.downcast_ref::<azure_core::Error>()
            && let ErrorKind::HttpResponse {
                status, error_code, ..
            } = azure.kind()
        {
            return Some((u16::from(*status), error_code.clone()));
        }
        current = e.source();
    }
    None
}

/// A Key Vault token from `credential`, as the operator's clients ask for one.
async fn key_vault_token(credential: &dyn TokenCredential) -> azure_core::Result<String> {
    let token = credential.get_token(&[KEY_VAULT_SCOPE], None).await?;
    Ok(token.token.secret().to_string())
}

/// Asserts that asking for a token failed because the token endpoint refused the credential
/// with HTTP `status` and Entra error `code`, without echoing the presented credential.
fn assert_credential_error(err: &azure_core::Error, status: u16, code: &str, must_not_leak: &str) {
    let chain = error_chain(err);
    assert!(
        matches!(err.kind(), ErrorKind::Credential),
        "expected a credential error, got {:?}: {chain}",
        err.kind()
    );
    assert_eq!(
        entra_response(err),
        Some((status, Some(code.to_string()))),
        "expected the token endpoint's HTTP {status} with error code {code}: {chain}"
    );
    assert!(
        chain.contains(&format!("AADSTS{code}")),
        "expected AADSTS{code} in: {chain}"
    );
    assert!(
        !chain.contains(must_not_leak),
        "the error text leaks the presented credential: {chain}"
    );
}

#[tokio::test]
async fn client_secret_credential_gets_a_key_vault_token() {
    let env = AzureEnv::load();
    let token = key_vault_token(env.secret_credential(&env.client_secret).as_ref())
        .await
        .unwrap_or_else(|e| panic!("get_token: {}", error_chain(&e)));
    assert!(!token.is_empty(), "a token was issued");
    assert!(
        !token.contains(&env.client_secret),
        "the secret is not echoed"
    );
}

#[tokio::test]
async fn wrong_client_secret_is_refused_by_the_token_endpoint() {
    let env = AzureEnv::load();
    let wrong = format!("wrong-{}", random_hex(8));
    let err = key_vault_token(env.secret_credential(&wrong).as_ref())
        .await
        .expect_err("a wrong client secret must not get a token");
    assert_credential_error(&err, 401, "7000215", &wrong);
}

#[tokio::test]
async fn unknown_client_is_refused_by_the_token_endpoint() {
    let mut env = AzureEnv::load();
    env.client_id = format!("unregistered-{}", random_hex(4));
    let err = key_vault_token(env.secret_credential("whatever-secret").as_ref())
        .await
        .expect_err("an unregistered client must not get a token");
    assert_credential_error(&err, 400, "700016", "whatever-secret");
}

// ---------------------------------------------------------------------------------------------
// Workload identity: a service account token from the local apiserver, exchanged at the local
// token endpoint (which checks it with a TokenReview) for a Key Vault token.

mod workload_identity {
    use super::*;
    use k8s_openapi::api::{
        authentication::v1::{TokenRequest, TokenRequestSpec},
        core::v1::ServiceAccount,
    };
    use kube::api::{Api, DeleteParams, PostParams};

    const NAMESPACE: &str = "default";

    fn kube_env() {
        let c = "k8s (tests/env/k8s.sh)";
        env_var(c, "KUBECONFIG");
    }

    async fn kube_client() -> kube::Client {
        kube_env();
        let config = kube::Config::from_kubeconfig(&kube::config::KubeConfigOptions::default())
            .await
            .expect("loading KUBECONFIG");
        kube::Client::try_from(config).expect("building the kube client")
    }

    /// Creates a service account and returns (its name, a token for it with `audience`).
    async fn service_account_token(client: &kube::Client, audience: &str) -> (String, String) {
        let name = format!("azure-wi-{}", random_hex(4));
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), NAMESPACE);
        let mut sa = ServiceAccount::default();
        sa.metadata.name = Some(name.clone());
        sas.create(&PostParams::default(), &sa)
            .await
            .unwrap_or_else(|e| panic!("creating service account {NAMESPACE}/{name}: {e}"));
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(vec![audience.to_string()]),
                expiration_seconds: Some(600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let issued = sas
            .create_token_request(&name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest for {NAMESPACE}/{name}: {e}"));
        let token = issued
            .status
            .and_then(|s| s.token)
            .expect("TokenRequest returned no token");
        (name, token)
    }

    async fn delete_service_account(client: &kube::Client, name: &str) {
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), NAMESPACE);
        let _ = sas.delete(name, &DeleteParams::default()).await;
    }

    /// The `iss` claim of a JWT (not verified here: the token endpoint verifies it).
    fn issuer_of(jwt: &str) -> String {
        let payload = jwt.split('.').nth(1).expect("a JWT");
        let bytes = base64url_decode(payload);
        let claims: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON JWT payload");
        claims["iss"].as_str().expect("iss claim").to_string()
    }

    fn base64url_decode(text: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len() * 3 / 4);
        let (mut acc, mut bits) = (0u32, 0u32);
        for c in text.trim_end_matches('=').bytes() {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'-' | b'+' => 62,
                b'_' | b'/' => 63,
                _ => panic!("not base64url: {c:?}"),
            };
            acc = (acc << 6) | u32::from(v);
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        out
    }

    /// Registers a client whose only credential is a federated service account identity,
    /// with the environment's own command (which serializes edits of the clients file).
    fn register_federated_client(client_id: &str, _tenant: &str, _issuer: &str, subject: &str) {
        let script = env_var(
            "local Key Vault (tests/env/keyvault.sh)",
            "AZURE_KEYVAULT_SH",
        );
        let out = std::process::Command::new("bash")
            .args([
                script.as_str(),
                "register-client",
                client_id,
                "--federated",
                subject,
            ])
            .output()
            .expect("running keyvault.sh register-client");
        assert!(
            out.status.success(),
            "keyvault.sh register-client: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Client ids are random per test; a registration left behind names no one.
    fn unregister_client(_client_id: &str) {}

    fn workload_credential(
        env: &AzureEnv,
        client_id: &str,
        token: &str,
    ) -> (Arc<WorkloadIdentityCredential>, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!("vaultsync-azure-wi-{}.jwt", random_hex(6)));
        std::fs::write(&path, token).expect("writing the federated token file");
        let credential = WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
            credential_options: ClientAssertionCredentialOptions {
                client_options: env.client_options(),
            },
            client_id: Some(client_id.to_string()),
            tenant_id: Some(env.tenant_id.clone()),
            token_file_path: Some(path.clone()),
        }))
        .expect("building the WorkloadIdentityCredential");
        (credential, path)
    }

    #[tokio::test]
    async fn workload_identity_credential_gets_a_key_vault_token() {
        let env = AzureEnv::load();
        let kube = kube_client().await;
        let (sa, token) = service_account_token(&kube, FEDERATED_AUDIENCE).await;
        let subject = format!("system:serviceaccount:{NAMESPACE}:{sa}");
        let client_id = format!("wi-{}", random_hex(4));
        register_federated_client(&client_id, &env.tenant_id, &issuer_of(&token), &subject);

        let (credential, token_file) = workload_credential(&env, &client_id, &token);
        let result = key_vault_token(credential.as_ref()).await;
        let _ = std::fs::remove_file(token_file);
        unregister_client(&client_id);
        delete_service_account(&kube, &sa).await;
        let issued =
            result.unwrap_or_else(|e| panic!("get_token as {subject}: {}", error_chain(&e)));
        assert!(!issued.is_empty(), "a token was issued");
        assert_ne!(issued, token, "exchanged, not echoed");
    }

    #[tokio::test]
    async fn workload_identity_of_another_service_account_is_refused() {
        let env = AzureEnv::load();
        let kube = kube_client().await;
        let (sa, token) = service_account_token(&kube, FEDERATED_AUDIENCE).await;
        // Registered for a different service account than the token's.
        let client_id = format!("wi-{}", random_hex(4));
        let other = format!("system:serviceaccount:{NAMESPACE}:{sa}-other");
        register_federated_client(&client_id, &env.tenant_id, &issuer_of(&token), &other);

        let (credential, token_file) = workload_credential(&env, &client_id, &token);
        let result = key_vault_token(credential.as_ref()).await;
        let _ = std::fs::remove_file(token_file);
        unregister_client(&client_id);
        delete_service_account(&kube, &sa).await;
        let err = result.expect_err("a token of another service account must be refused");
        assert_credential_error(&err, 400, "70021", &token);
    }

    #[tokio::test]
    async fn workload_identity_token_with_wrong_audience_is_refused() {
        let env = AzureEnv::load();
        let kube = kube_client().await;
        let (sa, token) = service_account_token(&kube, "https://kubernetes.default.svc").await;
        let subject = format!("system:serviceaccount:{NAMESPACE}:{sa}");
        let client_id = format!("wi-{}", random_hex(4));
        register_federated_client(&client_id, &env.tenant_id, &issuer_of(&token), &subject);

        let (credential, token_file) = workload_credential(&env, &client_id, &token);
        let result = key_vault_token(credential.as_ref()).await;
        let _ = std::fs::remove_file(token_file);
        unregister_client(&client_id);
        delete_service_account(&kube, &sa).await;
        let err = result.expect_err("a token for another audience must be refused");
        assert_credential_error(&err, 400, "70021", &token);
    }
}
