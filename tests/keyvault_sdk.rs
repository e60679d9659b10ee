//! The official Rust Key Vault crates (`azure_security_keyvault_secrets`, `_certificates`,
//! `_keys` 1.x) against the project's local Azure Key Vault (tests/env/keyvault.sh), the way the
//! operator uses them: an `azure_identity::ClientSecretCredential` whose authority host is the
//! local token endpoint, over a reqwest client that trusts only the local CA, and
//! `verify_challenge_resource` left at its default (on): the vault host
//! (`default.vault.azure.net`) must end in the challenged resource's host (`vault.azure.net`).
//!
//! The wire-level conformance of the local vault (schemas, recordings, documented behaviour)
//! is held by tests/keyvault/conformance (`make keyvault-conformance`).
//!
//! Needs the environment: `make env-up`, then `source target/env/env.sh`. A missing variable
//! fails the test; nothing is skipped. Certificates are made at test time with the `openssl`
//! command line.

use azure_core::{
    cloud::{CloudConfiguration, CustomConfiguration},
    credentials::Secret,
    http::{ClientOptions, Transport},
};
use azure_identity::{ClientSecretCredential, ClientSecretCredentialOptions};
use azure_security_keyvault_certificates::{
    CertificateClient, CertificateClientOptions,
    models::{
        CertificatePolicy, ImportCertificateParameters, KeyProperties as CertKeyProperties,
        SecretProperties as CertSecretProperties,
    },
};
use azure_security_keyvault_keys::{
    KeyClient, KeyClientOptions,
    models::{CreateKeyParameters, CurveName, KeyClientGetKeyOptions, KeyType},
};
use azure_security_keyvault_secrets::{
    ResourceExt, SecretClient, SecretClientOptions,
    models::{SecretClientGetSecretOptions, SetSecretParameters},
};
use base64::Engine as _;
use futures::TryStreamExt;
use std::{io::Read, path::Path, process::Command, sync::Arc};

const API_VERSION: &str = "2025-07-01";

fn env_var(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: the local Azure Key Vault (tests/env/keyvault.sh) is not up or its \
             env is not loaded; run `make env-up` and `source target/env/env.sh`"
        ),
    }
}

struct Env {
    vault_url: String,
    ca_file: String,
    authority_host: String,
    tenant_id: String,
    client_id: String,
    client_secret: String,
}

impl Env {
    fn load() -> Self {
        Self {
            vault_url: env_var("AZURE_KEYVAULT_URL"),
            ca_file: env_var("AZURE_KEYVAULT_CA_FILE"),
            authority_host: env_var("AZURE_AUTHORITY_HOST"),
            tenant_id: env_var("AZURE_TENANT_ID"),
            client_id: env_var("AZURE_CLIENT_ID"),
            client_secret: env_var("AZURE_CLIENT_SECRET"),
        }
    }

    /// A reqwest client (rustls) that trusts only the local CA.
    fn http_client(&self) -> reqwest::Client {
        let pem = std::fs::read(&self.ca_file).unwrap_or_else(|e| {
            panic!(
                "reading AZURE_KEYVAULT_CA_FILE {} ({e}); run `make env-up`",
                self.ca_file
            )
        });
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .unwrap_or_else(|e| panic!("parsing AZURE_KEYVAULT_CA_FILE {}: {e}", self.ca_file));
        reqwest::Client::builder()
            .tls_certs_only(certs)
            .build()
            .expect("building the reqwest client")
    }

    /// Our transport and the local token endpoint as the authority host.
    fn client_options(&self) -> ClientOptions {
        let mut cloud = CustomConfiguration::default();
        cloud.authority_host = self.authority_host.clone();
        ClientOptions {
            transport: Some(Transport::new(Arc::new(self.http_client()))),
            cloud: Some(Arc::new(CloudConfiguration::from(cloud))),
            ..Default::default()
        }
    }

    fn credential(&self) -> Arc<ClientSecretCredential> {
        ClientSecretCredential::new(
            &self.tenant_id,
            self.client_id.clone(),
            Secret::new(self.client_secret.clone()),
            Some(ClientSecretCredentialOptions {
                client_options: self.client_options(),
            }),
        )
        .expect("building the ClientSecretCredential")
    }

    fn secret_client(&self) -> SecretClient {
        let options = SecretClientOptions {
            api_version: API_VERSION.to_string(),
            client_options: self.client_options(),
            ..Default::default()
        };
        assert_eq!(
            options.verify_challenge_resource,
            Some(true),
            "challenge verification stays on"
        );
        SecretClient::new(&self.vault_url, self.credential(), Some(options))
            .expect("building the SecretClient")
    }

    fn certificate_client(&self) -> CertificateClient {
        let options = CertificateClientOptions {
            api_version: API_VERSION.to_string(),
            client_options: self.client_options(),
            ..Default::default()
        };
        assert_eq!(options.verify_challenge_resource, Some(true));
        CertificateClient::new(&self.vault_url, self.credential(), Some(options))
            .expect("building the CertificateClient")
    }

    fn key_client(&self) -> KeyClient {
        let options = KeyClientOptions {
            api_version: API_VERSION.to_string(),
            client_options: self.client_options(),
            ..Default::default()
        };
        assert_eq!(options.verify_challenge_resource, Some(true));
        KeyClient::new(&self.vault_url, self.credential(), Some(options))
            .expect("building the KeyClient")
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("reading /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_version(v: &str) -> bool {
    v.len() == 32
        && v.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The whole error chain as text.
fn chain(err: &azure_core::Error) -> String {
    let mut text = format!("{err}");
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        text.push_str(" | ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A self-signed RSA certificate and its key as a PFX without password (openssl), with the DER
/// of the certificate and its SHA-1 thumbprint.
fn make_pfx(cn: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let dir = std::env::temp_dir().join(format!("vaultsync-kv-sdk-{}", random_hex(6)));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let subject = format!("/CN={cn}");
    openssl(
        &dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out",
            "cert.pem", "-days", "30", "-subj", &subject,
        ],
    );
    openssl(
        &dir,
        &[
            "pkcs12", "-export", "-inkey", "key.pem", "-in", "cert.pem", "-out", "cert.pfx",
            "-passout", "pass:",
        ],
    );
    let der = openssl(&dir, &["x509", "-in", "cert.pem", "-outform", "DER"]);
    let fingerprint = String::from_utf8(openssl(
        &dir,
        &["x509", "-in", "cert.pem", "-noout", "-fingerprint", "-sha1"],
    ))
    .expect("utf-8");
    let hex: String = fingerprint
        .split('=')
        .nth(1)
        .expect("fingerprint")
        .trim()
        .replace(':', "");
    let thumbprint = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    let pfx = std::fs::read(dir.join("cert.pfx")).expect("reading the PFX");
    let _ = std::fs::remove_dir_all(&dir);
    (pfx, der, thumbprint)
}

#[tokio::test]
async fn secrets_set_get_list() {
    let env = Env::load();
    let client = env.secret_client();
    let name = format!("rs-sdk-{}", random_hex(5));
    let mut versions = Vec::new();
    for value in ["first", "second"] {
        let params = SetSecretParameters {
            value: Some(value.into()),
            ..Default::default()
        };
        let secret = client
            .set_secret(&name, params.try_into().expect("request body"), None)
            .await
            .unwrap_or_else(|e| panic!("set_secret {name}: {}", chain(&e)))
            .into_model()
            .expect("Secret");
        let id = secret.resource_id().expect("resource id");
        assert_eq!(id.name, name);
        let version = id.version.expect("a version in the id");
        assert!(
            is_version(&version),
            "version {version} is 32 lowercase hex"
        );
        versions.push(version);
    }
    let latest = client
        .get_secret(&name, None)
        .await
        .unwrap_or_else(|e| panic!("get_secret {name}: {}", chain(&e)))
        .into_model()
        .expect("Secret");
    assert_eq!(latest.value.as_deref(), Some("second"));
    let first = client
        .get_secret(
            &name,
            Some(SecretClientGetSecretOptions {
                secret_version: Some(versions[0].clone()),
                ..Default::default()
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("get_secret {name}/{}: {}", versions[0], chain(&e)))
        .into_model()
        .expect("Secret");
    assert_eq!(first.value.as_deref(), Some("first"));

    let mut pager = client
        .list_secret_properties(None)
        .expect("list_secret_properties");
    let mut found = false;
    let mut count = 0usize;
    while let Some(props) = pager
        .try_next()
        .await
        .unwrap_or_else(|e| panic!("listing secrets: {}", chain(&e)))
    {
        count += 1;
        let id = props.resource_id().expect("resource id of a list item");
        assert_eq!(id.version, None, "list items carry the base id");
        found |= id.name == name;
    }
    assert!(found, "{name} is listed among {count} secrets");
}

#[tokio::test]
async fn certificate_import_pfx_and_read_its_secret() {
    let env = Env::load();
    let name = format!("rs-sdk-cert-{}", random_hex(5));
    let cn = format!("{name}.vaultsync.test");
    let (pfx, der, thumbprint) = make_pfx(&cn);
    let certificates = env.certificate_client();

    let policy = CertificatePolicy {
        secret_properties: Some(CertSecretProperties {
            content_type: Some("application/x-pkcs12".into()),
        }),
        key_properties: Some(CertKeyProperties {
            exportable: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    let params = ImportCertificateParameters {
        base64_encoded_certificate: Some(base64::engine::general_purpose::STANDARD.encode(&pfx)),
        certificate_policy: Some(policy),
        ..Default::default()
    };
    let cert = certificates
        .import_certificate(&name, params.try_into().expect("request body"), None)
        .await
        .unwrap_or_else(|e| panic!("import_certificate {name}: {}", chain(&e)))
        .into_model()
        .expect("Certificate");
    assert_eq!(
        cert.cer.as_deref(),
        Some(der.as_slice()),
        "cer is the certificate's DER"
    );
    assert_eq!(
        cert.x509_thumbprint.as_deref(),
        Some(thumbprint.as_slice()),
        "x5t is the SHA-1 thumbprint"
    );
    let version = cert
        .id
        .as_deref()
        .and_then(|id| id.rsplit('/').next())
        .expect("a versioned certificate id")
        .to_string();
    assert!(is_version(&version), "{version}");
    for (field, value) in [("kid", &cert.kid), ("sid", &cert.sid)] {
        let v = value
            .as_deref()
            .unwrap_or_else(|| panic!("{field} missing"));
        assert!(
            v.ends_with(&format!("/{name}/{version}")),
            "{field} {v} shares the version"
        );
    }

    let secrets = env.secret_client();
    let secret = secrets
        .get_secret(
            &name,
            Some(SecretClientGetSecretOptions {
                secret_version: Some(version.clone()),
                ..Default::default()
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("get_secret of certificate {name}: {}", chain(&e)))
        .into_model()
        .expect("Secret");
    assert_eq!(secret.content_type.as_deref(), Some("application/x-pkcs12"));
    assert_eq!(
        secret.managed,
        Some(true),
        "a certificate's secret is managed"
    );
    assert_eq!(secret.kid, cert.kid);
    let value = secret.value.expect("the PFX");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.as_bytes())
        .expect("the secret of a PFX certificate is standard base64");
    assert!(bytes.len() > 1000, "a PFX with the key and the certificate");

    let pem = secrets
        .get_secret(
            &name,
            Some(SecretClientGetSecretOptions {
                out_content_type: Some(azure_security_keyvault_secrets::models::ContentType::Pem),
                ..Default::default()
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("get_secret {name} as PEM: {}", chain(&e)))
        .into_model()
        .expect("Secret");
    let text = pem.value.expect("PEM text");
    assert!(
        text.contains("-----BEGIN PRIVATE KEY-----"),
        "PKCS#8 key in the PEM"
    );
    assert!(
        text.contains("-----BEGIN CERTIFICATE-----"),
        "certificate in the PEM"
    );
}

#[tokio::test]
async fn keys_create_and_get_ec() {
    let env = Env::load();
    let client = env.key_client();
    let name = format!("rs-sdk-key-{}", random_hex(5));
    let params = CreateKeyParameters {
        kty: Some(KeyType::Ec),
        curve: Some(CurveName::P256),
        ..Default::default()
    };
    let created = client
        .create_key(&name, params.try_into().expect("request body"), None)
        .await
        .unwrap_or_else(|e| panic!("create_key {name}: {}", chain(&e)))
        .into_model()
        .expect("Key");
    let jwk = created.key.as_ref().expect("a JWK");
    assert_eq!(jwk.kty, Some(KeyType::Ec));
    assert_eq!(jwk.crv, Some(CurveName::P256));
    assert_eq!(jwk.x.as_ref().map(Vec::len), Some(32));
    assert_eq!(jwk.y.as_ref().map(Vec::len), Some(32));
    assert!(jwk.d.is_none(), "no private key in the JWK");
    let id = azure_security_keyvault_keys::ResourceExt::resource_id(&created).expect("resource id");
    assert_eq!(id.name, name);
    let version = id.version.clone().expect("a version");
    assert!(is_version(&version), "{version}");

    for key_version in [None, Some(version.clone())] {
        let got = client
            .get_key(
                &name,
                Some(KeyClientGetKeyOptions {
                    key_version,
                    ..Default::default()
                }),
            )
            .await
            .unwrap_or_else(|e| panic!("get_key {name}: {}", chain(&e)))
            .into_model()
            .expect("Key");
        let got_jwk = got.key.expect("a JWK");
        assert_eq!(got_jwk.kid, jwk.kid);
        assert_eq!(got_jwk.x, jwk.x);
        assert_eq!(got_jwk.y, jwk.y);
    }
}
