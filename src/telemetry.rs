//! Logging through `tracing`, as text or JSON.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Libraries that handle request bodies and tokens. They are capped at `info` whatever
/// level is asked for, so no secret can reach a log line through their debug output
/// (kube-client logs whole response bodies, a Secret's included, when one does not
/// deserialize).
const CAPPED: [&str; 16] = [
    "kube",
    "kube_client",
    "tower_http",
    "reqwest",
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
    "azure_core",
    "azure_identity",
    "azure_security_keyvault_secrets",
    "azure_security_keyvault_keys",
    "azure_security_keyvault_certificates",
    "typespec",
    "typespec_client_core",
    "tower",
];

pub fn init(format: LogFormat) {
    let mut filter = EnvFilter::try_from_env("VAULTSYNC_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    for target in CAPPED {
        if let Ok(directive) = format!("{target}=info").parse() {
            filter = filter.add_directive(directive);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
