#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use vaultsync::config::Config;

/// jemalloc gives freed memory back to the system after a burst (dirty pages decay in
/// about ten seconds), where glibc's allocator keeps and fragments it (`make
/// bench-tenants`: RSS after creating and deleting resources).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
        } => vaultsync::check::run(&file, &config, namespace).await,
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
