//! The `quorate` command: `agent`, `demo`, `status`, `check`, `keygen`, `ctl`.
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
    /// Operate a running cluster through a node's HTTP API (like patronictl).
    Ctl {
        /// A node's config file: the API address and token come from its [api] section.
        #[arg(long, conflicts_with = "url")]
        config: Option<PathBuf>,
        /// The API address (`host:port`), instead of --config.
        #[arg(long)]
        url: Option<String>,
        /// A file holding the API token (else QUORATE_API_TOKEN, else the config's token_file).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Print the API's JSON instead of tables.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        command: CtlCmd,
    },
    /// Make a new random cluster key (64 hex digits): written to `--out FILE` (mode 0600,
    /// never overwriting), or printed.
    Keygen {
        /// The key file to create (refused if it exists).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum CtlCmd {
    /// Members and roles: state, health, primary, token, lease, candidates.
    List,
    /// Role changes with their measured detection, promotion and total durations.
    History {
        /// Only this role.
        role: Option<String>,
    },
    /// Who could take the role, and why each other node could not.
    Explain {
        /// The role.
        role: String,
    },
    /// Planned hand-off from the primary to a candidate.
    Switchover {
        /// The role.
        role: String,
        /// The successor (default: the best candidate).
        #[arg(long)]
        candidate: Option<String>,
    },
    /// Promote a node while the role has no primary.
    Failover {
        /// The role.
        role: String,
        /// The node (default: the best candidate).
        #[arg(long)]
        candidate: Option<String>,
    },
    /// Switch over to the preferred (highest-priority) node. With `--candidate`, approve the
    /// failback to that node that the role waits for (`failback_approval`): refused if it no
    /// longer is the preferred node.
    Failback {
        /// The role.
        role: String,
        /// The node the failback must go to.
        #[arg(long)]
        candidate: Option<String>,
    },
    /// No automatic failback until `--ttl` runs out (a failback waiting for approval waits on).
    Postpone {
        /// The role.
        role: String,
        /// How long (e.g. 2h; default 1h).
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Cancel a hand-off (switchover, failback) under way: the holder keeps the role.
    Cancel {
        /// The role.
        role: String,
    },
    /// Maintenance mode: no automatic moves until `--ttl` runs out or `resume`.
    Pause {
        /// The role.
        role: String,
        /// How long (e.g. 30m; default 1h).
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Leave maintenance mode.
    Resume {
        /// The role.
        role: String,
    },
}

impl CtlCmd {
    fn into_ctl(self) -> quorate::api::ctl::CtlCommand {
        use quorate::api::ctl::CtlCommand as C;
        match self {
            CtlCmd::List => C::List,
            CtlCmd::History { role } => C::History { role },
            CtlCmd::Explain { role } => C::Explain { role },
            CtlCmd::Switchover { role, candidate } => C::Switchover { role, candidate },
            CtlCmd::Failover { role, candidate } => C::Failover { role, candidate },
            CtlCmd::Failback { role, candidate } => C::Failback { role, candidate },
            CtlCmd::Postpone { role, ttl } => C::Postpone { role, ttl },
            CtlCmd::Cancel { role } => C::Cancel { role },
            CtlCmd::Pause { role, ttl } => C::Pause { role, ttl },
            CtlCmd::Resume { role } => C::Resume { role },
        }
    }
}

/// The API client `quorate ctl` uses, from its flags.
fn ctl_client(
    config: Option<&PathBuf>,
    url: Option<String>,
    token_file: Option<&PathBuf>,
) -> anyhow::Result<quorate::api::client::Client> {
    use quorate::types::Secret;
    let read = |p: &PathBuf| -> anyhow::Result<Secret> {
        let t = std::fs::read_to_string(p)
            .map_err(|e| anyhow::anyhow!("cannot read the token file {}: {e}", p.display()))?;
        Ok(Secret::new(t.trim()))
    };
    let mut token = match token_file {
        Some(p) => Some(read(p)?),
        None => std::env::var("QUORATE_API_TOKEN").ok().map(Secret::new),
    };
    let addr = match (config, url) {
        (_, Some(u)) => u,
        (Some(c), None) => {
            let v = quorate::config::load(c)?;
            let Some(api) = v.api else {
                anyhow::bail!(
                    "{} has no [api] section: the agent serves no API",
                    c.display()
                );
            };
            if token.is_none() {
                token = api.token;
            }
            // A wildcard listen is reached on loopback.
            let listen = api.section.listen;
            match listen.rsplit_once(':') {
                Some(("0.0.0.0", port)) => format!("127.0.0.1:{port}"),
                Some(("[::]", port)) => format!("[::1]:{port}"),
                _ => listen,
            }
        }
        (None, None) => anyhow::bail!("give --config NODE.toml or --url HOST:PORT"),
    };
    Ok(quorate::api::client::Client::new(&addr, token))
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
            Cmd::Agent { config } => Box::pin(quorate::agent::run(&config)).await,
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
            Cmd::Ctl {
                config,
                url,
                token_file,
                json,
                command,
            } => {
                let client = ctl_client(config.as_ref(), url, token_file.as_ref())?;
                let out = quorate::api::ctl::run(&client, &command.into_ctl(), json).await?;
                print!("{out}");
                if json {
                    println!();
                }
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
