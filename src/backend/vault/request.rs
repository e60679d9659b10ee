//! The one way the Vault backend talks to Vault: every call, logins included, goes
//! through [`Connection::call`], which applies the rate limit, records the metric, maps
//! errors to reasons without echoing a body, and surfaces a 429's `Retry-After`.
//!
//! TLS settings come only from the operator config: this is a plain reqwest client with
//! the connection's CA, and no `VAULT_*` environment variable changes it.

use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

use crate::backend::RateLimiter;
use crate::config::VaultConnection;
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// Characters kept as they are in a path segment; everything else is percent-encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

/// A named Vault server from the operator config.
pub(super) struct Connection {
    pub name: String,
    pub config: VaultConnection,
    limiter: RateLimiter,
    http: reqwest::Client,
}

/// One request to Vault.
pub(super) struct Call<'a> {
    pub method: reqwest::Method,
    /// Path below `/v1/`, built with [`path`] so every segment is validated and encoded.
    pub path: &'a str,
    pub body: Option<Value>,
    /// The Vault token, or `None` for a login.
    pub token: Option<&'a str>,
    /// The metric's `operation` label, such as `kv_read`.
    pub operation: &'static str,
    /// What the request is about, for error messages (a path, never a value).
    pub what: &'a str,
}

impl Connection {
    pub fn new(name: &str, config: &VaultConnection) -> anyhow::Result<Self> {
        let http = crate::backend::http_client(
            &format!("vault.{name}.caFile"),
            config.ca_file.as_deref(),
            Duration::from_secs(10),
        )?;
        Ok(Self {
            name: name.to_string(),
            config: config.clone(),
            limiter: RateLimiter::new(config.requests_per_second),
            http,
        })
    }

    /// Sends one request and returns Vault's JSON answer (`Null` for 204).
    pub async fn call(&self, metrics: &Metrics, call: Call<'_>) -> Result<Value> {
        let started = std::time::Instant::now();
        let result = self
            .send(call.method, call.path, call.body, call.token, call.what)
            .await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        tracing::debug!(
            connection = %self.name,
            operation = call.operation,
            what = call.what,
            outcome,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "vault request"
        );
        metrics.backend_request("vault", call.operation, outcome);
        if call.operation == "login" {
            metrics.vault_login(&self.name, outcome);
        }
        result
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
        what: &str,
    ) -> Result<Value> {
        let url = format!("{}/v1/{path}", self.config.address.trim_end_matches('/'));
        let mut request = self.http.request(method, url);
        if let Some(token) = token {
            request = request.header("X-Vault-Token", token);
        }
        if let Some(ns) = &self.config.namespace {
            request = request.header("X-Vault-Namespace", ns);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.limiter.acquire().await;
        let response = request.send().await.map_err(|e| {
            Error::unavailable(format!(
                "Vault ({}) is unreachable while handling {what}: {}",
                self.name,
                transport_error(&e)
            ))
        })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // The body may hold credentials: it is parsed, never echoed.
        let body: Value = if status == 204 {
            Value::Null
        } else {
            response.json().await.unwrap_or(Value::Null)
        };
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let errors: Vec<String> = body["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Err(match status_error(what, status, &errors) {
            Error::BackendUnavailable { message, .. } if status == 429 => {
                Error::BackendUnavailable {
                    message,
                    retry_after,
                }
            }
            other => other,
        })
    }
}

/// A Vault API path from parts such as a mount (`secret` or `team/kv`), a fixed word
/// (`data`) and a user path. Each `/`-separated segment must be non-empty and neither
/// `.` nor `..`, and is percent-encoded, so no spec can change which endpoint is called.
pub(super) fn path(parts: &[&str]) -> Result<String> {
    let mut out = Vec::new();
    for part in parts {
        for segment in part.split('/') {
            if segment.is_empty() || segment == "." || segment == ".." {
                return Err(Error::InvalidSpec(format!(
                    "{part:?} is not a valid Vault path: segments must not be empty, '.' or '..'"
                )));
            }
            out.push(utf8_percent_encode(segment, SEGMENT).to_string());
        }
    }
    Ok(out.join("/"))
}

/// Maps a Vault status to a reason; the message keeps only the status and Vault's words.
pub(super) fn status_error(what: &str, code: u16, errors: &[String]) -> Error {
    let words = vault_words(errors);
    match code {
        403 => Error::AuthFailed(format!(
            "permission denied for {what}: the Vault policy of this identity does not allow it{words}"
        )),
        404 => Error::NotFound(format!("{what} does not exist in Vault")),
        400 => Error::InvalidSpec(format!("Vault refused the request for {what}{words}")),
        _ => Error::unavailable(format!("Vault answered {code} for {what}{words}")),
    }
}

/// Vault's own error strings, bounded in length.
fn vault_words(errors: &[String]) -> String {
    if errors.is_empty() {
        return String::new();
    }
    let joined = errors.join("; ");
    let short: String = joined.chars().take(200).collect();
    format!(": {short}")
}

/// A transport error in words, without the URL or any body. A TLS failure is named as
/// one, so a missing `caFile` is not mistaken for a server that is down.
fn transport_error(e: &reqwest::Error) -> String {
    let mut chain = Vec::new();
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = source {
        chain.push(err.to_string().to_lowercase());
        source = err.source();
    }
    let any = |words: &[&str]| chain.iter().any(|c| words.iter().any(|w| c.contains(w)));
    if any(&[
        "certificate",
        "tls",
        "handshake",
        "unknownissuer",
        "invalidcertificate",
    ]) {
        "the TLS handshake failed (is the server's CA in the connection's caFile?)".into()
    } else if e.is_timeout() {
        "timed out".into()
    } else if any(&["connection refused"]) {
        "connection refused".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else {
        "request failed".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_validated_and_encoded() {
        assert_eq!(
            path(&["secret", "data", "a/b"]).ok(),
            Some("secret/data/a/b".into())
        );
        assert_eq!(
            path(&["secret", "data", "a b?x#y"]).ok(),
            Some("secret/data/a%20b%3Fx%23y".into())
        );
        for bad in ["../sys", "a//b", "", "a/./b", "a/"] {
            let err = path(&["secret", bad]).expect_err(bad);
            assert_eq!(err.reason(), "InvalidSpec", "{bad}");
        }
    }

    #[test]
    fn statuses_map_to_reasons() {
        assert_eq!(status_error("x", 403, &[]).reason(), "AuthFailed");
        assert_eq!(status_error("x", 404, &[]).reason(), "NotFound");
        assert_eq!(status_error("x", 400, &[]).reason(), "InvalidSpec");
        assert_eq!(status_error("x", 503, &[]).reason(), "BackendUnavailable");
    }
}
