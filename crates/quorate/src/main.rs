//! The `quorate` command: `agent`, `demo`, `status`, `keygen`.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line program"
)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// quorate: high availability for a service.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run one node from a TOML config.
    Agent {
        /// The node's config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Start a 3-node cluster on loopback and show failovers as they happen.
    Demo {
        /// Kill the primary (SIGKILL) this many times, measure each failover, then exit.
        #[arg(long, default_value_t = 0)]
        chaos: u32,
        /// Keep the temporary directory.
        #[arg(long)]
        keep: bool,
        /// Seconds to wait for a primary or a failover.
        #[arg(long, default_value_t = 30)]
        wait_secs: u64,
    },
    /// Print the view a running agent last wrote (cluster, roles, health).
    Status {
        /// The node's config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a config file and report every problem.
    Check {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Make a new random cluster key (64 hex digits): written to `--out FILE` (mode 0600,
    /// never overwriting), or printed.
    Keygen {
        /// The key file to create (refused if it exists).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("quorate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let load = |p: &PathBuf| quorate::config::load(p).map_err(anyhow::Error::from);
    let r = rt.block_on(async {
        match cli.command {
            Cmd::Agent { config } => Box::pin(quorate::agent::run(load(&config)?)).await,
            Cmd::Demo {
                chaos,
                keep,
                wait_secs,
            } => {
                quorate::demo::run(quorate::demo::DemoOptions {
                    chaos,
                    keep,
                    wait: Duration::from_secs(wait_secs),
                })
                .await
            }
            Cmd::Status { config } => quorate::status::print(&load(&config)?),
            Cmd::Check { config } => {
                load(&config)?;
                println!("{}: ok", config.display());
                Ok(())
            }
            Cmd::Keygen { out: Some(path) } => {
                quorate::config::write_new_key_file(&path).map_err(anyhow::Error::msg)?;
                println!(
                    "wrote a new cluster key to {} (mode 0600); point cluster_key_file at it",
                    path.display()
                );
                Ok(())
            }
            Cmd::Keygen { out: None } => {
                println!("{}", quorate_wire::ClusterKey::generate()?.to_hex());
                Ok(())
            }
        }
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quorate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
