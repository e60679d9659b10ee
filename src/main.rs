#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use vaultsync::config::Config;

/// jemalloc gives freed memory back to the system after a burst (dirty pages decay in
/// about ten seconds), where glibc's allocator keeps and fragments it (`make
/// bench-tenants`: RSS after creating and deleting resources).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc gives freed pages back only when it is next called, unless a background thread
/// does it on time: without one, an operator that went quiet after a burst kept the memory
/// it had already freed (`make bench-tenants`: RSS +15% to +53% after 5,000 resources came
/// and went; +2% to +5% with one thread).
fn purge_freed_memory_in_background() {
    let result = tikv_jemalloc_ctl::max_background_threads::write(1)
        .and_then(|()| tikv_jemalloc_ctl::background_thread::write(true));
    if let Err(e) = result {
        tracing::warn!(error = %e, "freed memory is returned to the system only on allocation");
    }
}

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
    /// Resolve the `vault:` references in the environment as the pod's service account,
    /// then exec COMMAND with their values (pod injection's wrapper).
    Env {
        /// Write each value to a file in this directory (mode 0400) and set the variable
        /// to the file's path instead of the value.
        #[arg(long)]
        files: Option<PathBuf>,
        /// With --files and no command: rewrite the files this often, forever (sidecar).
        #[arg(long, value_parser = vaultsync::config::parse_duration, requires = "files")]
        refresh: Option<std::time::Duration>,
        /// The command to exec, after `--`.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Copy this binary, its shared libraries and the dynamic loader into DIR: the
    /// injection init container's job, in an image without a shell.
    InstallSelf {
        /// Destination directory (an in-memory volume shared with the pod's containers).
        dir: PathBuf,
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
            purge_freed_memory_in_background();
            vaultsync::controller::run(config).await
        }
        Command::Check {
            file,
            config,
            namespace,
        } => vaultsync::check::run(&file, &config, namespace).await,
        Command::Env {
            files,
            refresh,
            command,
        } => {
            // One line that starts with "vaultsync env:", as the pod's log shows it.
            let options = vaultsync::inject::env::EnvOptions {
                files,
                refresh,
                command,
            };
            if let Err(e) = vaultsync::inject::env::run(options).await {
                eprintln!("{e}");
                std::process::exit(1);
            }
            Ok(())
        }
        Command::InstallSelf { dir } => vaultsync::inject::install_self(&dir),
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
