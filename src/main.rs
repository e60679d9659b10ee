#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

/// vaultsync: syncs short-lived Secrets from Vault/OpenBao and Azure Key Vault.
#[derive(Parser)]
#[command(name = "vaultsync", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print both CustomResourceDefinitions as YAML.
    Crds,
    /// Print the version.
    Version,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crds => print!("{}", vaultsync::api::crds_yaml()?),
        Command::Version => println!("vaultsync {}", env!("CARGO_PKG_VERSION")),
    }
    Ok(())
}
