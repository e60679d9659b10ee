#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use vaultsync::api::VaultSecret;
use vaultsync::config::Config;

/// vaultsync: syncs short-lived Secrets from Vault/OpenBao and Azure Key Vault.
#[derive(Parser)]
#[command(name = "vaultsync", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller.
    Run {
        /// Operator configuration file (YAML, admin-owned).
        #[arg(long, env = "VAULTSYNC_CONFIG")]
        config: PathBuf,
    },
    /// Resolve, fetch and render one resource without writing; prints key names and sizes.
    Check {
        /// The resource manifest (YAML).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Operator configuration file.
        #[arg(long, env = "VAULTSYNC_CONFIG")]
        config: PathBuf,
        /// Namespace, when the manifest sets none (default: the kubeconfig's).
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Print both CustomResourceDefinitions as YAML.
    Crds,
    /// Print the version.
    Version,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run { config } => {
            let config = Config::load(&config)?;
            vaultsync::telemetry::init(config.log_format);
            vaultsync::controller::run(config).await
        }
        Command::Check {
            file,
            config,
            namespace,
        } => check(&file, &config, namespace).await,
        Command::Crds => {
            print!("{}", vaultsync::api::crds_yaml()?);
            Ok(())
        }
        Command::Version => {
            println!("vaultsync {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}

async fn check(
    file: &std::path::Path,
    config: &std::path::Path,
    namespace: Option<String>,
) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let manifest: serde_json::Value =
        serde_yaml::from_str(&text).with_context(|| format!("{} is not YAML", file.display()))?;
    let client = kube::Client::try_default()
        .await
        .context("cannot reach Kubernetes (KUBECONFIG)")?;
    let kind = manifest["kind"].as_str().unwrap_or_default().to_string();
    anyhow::ensure!(
        kind == "VaultSecret",
        "vaultsync check supports kind VaultSecret in this version; {} has kind {kind:?}",
        file.display()
    );
    let mut obj: VaultSecret = serde_json::from_value(manifest)
        .map_err(|e| anyhow::anyhow!("{} is not a valid VaultSecret: {e}", file.display()))?;
    if obj.metadata.namespace.is_none() {
        obj.metadata.namespace =
            Some(namespace.unwrap_or_else(|| client.default_namespace().to_string()));
    }
    let ctx = vaultsync::controller::Context::new(client, config, Arc::default(), Vec::new())?;
    match vaultsync::sync::check(&obj, &ctx).await {
        Ok((desired, version)) => {
            println!(
                "{} {}/{}: Secret {} of type {} from source version {}",
                kind,
                obj.metadata.namespace.as_deref().unwrap_or_default(),
                obj.metadata.name.as_deref().unwrap_or_default(),
                desired.name,
                desired.type_,
                if version.is_empty() { "-" } else { &version }
            );
            for (key, value) in &desired.data {
                println!("  {key}\t{} bytes", value.len());
            }
            Ok(())
        }
        Err(e) => anyhow::bail!("{}: {e}", e.reason()),
    }
}
