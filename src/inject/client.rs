//! The Vault side of `vaultsync env`: Kubernetes auth login with the pod's projected
//! token and reads, over the connection the webhook described in the `VAULTSYNC_`
//! variables, with bounded retries of transient failures. No token or value ever reaches
//! an error message.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use serde_json::{Value, json};

use super::reference::Group;
use super::{ENV_AUTH_MOUNT, ENV_ROLE, ENV_TOKEN_FILE, ENV_VAULT_ADDR};
use super::{ENV_CA_BUNDLE, ENV_VAULT_CACERT, ENV_VAULT_NAMESPACE};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Transient failures (connection refused, 5xx, 429) are retried within this much time.
const RETRY_BUDGET: Duration = Duration::from_secs(10);

/// A Vault token and its lifetime in seconds (0: no expiry).
pub(super) struct Login {
    pub(super) token: String,
    pub(super) ttl: u64,
}

/// The connection the webhook described in the `VAULTSYNC_` variables.
pub(super) struct Vault {
    pub(super) http: reqwest::Client,
    pub(super) addr: String,
    pub(super) namespace: Option<String>,
    pub(super) mount: String,
    pub(super) role: String,
    pub(super) token_file: PathBuf,
}

/// The wrapper's HTTP client. Trust: the connection's CA (the PEM in `cacert_var`), and
/// the operator image's CA bundle that the init container copied (the application's
/// image may have none). Only when neither is there, the platform's roots.
pub(super) fn http_client(cacert_var: &str, plain_http: bool) -> anyhow::Result<reqwest::Client> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT);
    let mut roots = Vec::new();
    if let Some(pem) = var(cacert_var) {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .ok()
            .filter(|certs| !certs.is_empty())
            .ok_or_else(|| anyhow!("{cacert_var} holds no PEM certificate"))?;
        roots.extend(certs);
    }
    if let Some(bundle) = var(ENV_CA_BUNDLE)
        && let Ok(pem) = std::fs::read(&bundle)
    {
        roots.extend(reqwest::Certificate::from_pem_bundle(&pem).unwrap_or_default());
    }
    if !roots.is_empty() || plain_http {
        builder = builder.tls_certs_only(roots);
    }
    Ok(builder.build()?)
}

impl Vault {
    pub(super) fn from_env() -> anyhow::Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let need = |name: &str| var(name).ok_or_else(|| anyhow!("{name} is not set"));
        let addr = need(ENV_VAULT_ADDR)?.trim_end_matches('/').to_string();
        if !addr.starts_with("https://") && !addr.starts_with("http://") {
            bail!("{ENV_VAULT_ADDR} {addr:?} is not an http(s) URL");
        }
        Ok(Vault {
            http: http_client(ENV_VAULT_CACERT, addr.starts_with("http://"))?,
            addr,
            namespace: var(ENV_VAULT_NAMESPACE),
            mount: var(ENV_AUTH_MOUNT).unwrap_or_else(|| "kubernetes".into()),
            role: need(ENV_ROLE)?,
            token_file: need(ENV_TOKEN_FILE)?.into(),
        })
    }

    /// Kubernetes auth login with the pod's projected service-account token.
    pub(super) async fn login(&self) -> anyhow::Result<Login> {
        let (mount, role) = (&self.mount, &self.role);
        let jwt = std::fs::read_to_string(&self.token_file).map_err(|e| {
            anyhow!(
                "cannot read the service-account token {}: {e}",
                self.token_file.display()
            )
        })?;
        let jwt = jwt.trim();
        let url = format!("{}/v1/auth/{mount}/login", self.addr);
        let body = json!({"role": role, "jwt": jwt});
        let what = format!("logging in as role {role} at auth/{mount}");
        let (status, answer) = self
            .send(|| self.http.post(&url).json(&body), &what)
            .await?;
        let token = answer["auth"]["client_token"].as_str().unwrap_or_default();
        if status != 200 || token.is_empty() {
            let errors = vault_errors(&answer, &[jwt, token]);
            bail!("{what} failed (HTTP {status}){errors}");
        }
        let ttl = answer["auth"]["lease_duration"].as_u64().unwrap_or(0);
        Ok(Login {
            token: token.to_string(),
            ttl,
        })
    }

    /// Reads one group's path with `token`.
    pub(super) async fn read(&self, token: &str, group: &Group) -> anyhow::Result<Value> {
        let url = format!("{}/v1/{}", self.addr, group.url_path());
        let what = format!("reading {}", group.describe());
        let request = || self.http.get(&url).header("X-Vault-Token", token);
        match self.send(request, &what).await? {
            (200, body) => Ok(body),
            (404, _) => bail!("{} not found", group.describe()),
            (403, _) => bail!(
                "permission denied: role {} (the pod's service account) may not read {}",
                self.role,
                group.path
            ),
            (status, body) => bail!(
                "{what} failed (HTTP {status}){}",
                vault_errors(&body, &[token])
            ),
        }
    }

    /// Sends a request (with the namespace header), retrying connection failures, 5xx and
    /// 429 with backoff within [`RETRY_BUDGET`]; never a 4xx. The status and JSON body.
    async fn send(
        &self,
        request: impl Fn() -> reqwest::RequestBuilder,
        what: &str,
    ) -> anyhow::Result<(u16, Value)> {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(200);
        loop {
            let mut builder = request();
            if let Some(ns) = &self.namespace {
                builder = builder.header("X-Vault-Namespace", ns);
            }
            let wait = match builder.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok()?.trim().parse().ok())
                        .map(Duration::from_secs);
                    let wait = retry_after.unwrap_or(backoff).max(backoff);
                    let transient = status == 429 || status >= 500;
                    if !transient || started.elapsed() + wait > RETRY_BUDGET {
                        // Parsed, never echoed: the body may hold secrets.
                        return Ok((status, response.json().await.unwrap_or(Value::Null)));
                    }
                    wait
                }
                Err(e)
                    if e.is_connect()
                        && !tls_failure(&e)
                        && started.elapsed() + backoff <= RETRY_BUDGET =>
                {
                    backoff
                }
                Err(e) => {
                    let why = match tls_failure(&e) {
                        true => "failed the TLS handshake (is VAULTSYNC_VAULT_CACERT its CA?)",
                        false => "is unreachable",
                    };
                    bail!("{what}: Vault at {} {why}: {:#}", self.addr, anyhow!(e));
                }
            };
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

/// Vault's `errors` of an answer as `: error; error`, with each of `secrets` blanked out.
fn vault_errors(body: &Value, secrets: &[&str]) -> String {
    let errors = body["errors"].as_array().into_iter().flatten();
    let mut text = errors
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join("; ");
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(secret, "<redacted>");
    }
    if text.is_empty() {
        text
    } else {
        format!(": {text}")
    }
}

/// Whether a connection failed in the TLS handshake (tokio-rustls reports those as
/// `InvalidData`, wrapped in another `io::Error`): a certificate problem no retry fixes.
fn tls_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(cause) = next {
        next = cause.source();
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::InvalidData {
                return true;
            }
            if let Some(inner) = io.get_ref() {
                next = Some(inner);
            }
        }
    }
    false
}
