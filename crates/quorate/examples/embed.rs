//! A small service that embeds a quorate node: `cargo run -p quorate --example embed -- NODE.toml
//! RESOURCE_FILE`. Run it on each machine with that machine's config (the same key file and
//! voters as `quorate agent` would use). While this node is primary of the role `worker`, it
//! appends a line to `RESOURCE_FILE` every 100 ms, each carrying its fencing token; the
//! resource ([`FencedFile`]) refuses a token lower than the highest it has seen, so a stale
//! primary (paused, partitioned) can never overwrite a newer one's work. Ctrl-C hands the role
//! over before exiting.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "an example program"
)]

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use quorate::Node;
use quorate::types::{FenceGuard, FencingToken, RoleName};

/// A file that only accepts writes carrying a token at least as high as any it has seen.
struct FencedFile {
    path: PathBuf,
    guard: FenceGuard,
}

impl FencedFile {
    fn append(&mut self, token: FencingToken, line: &str) -> Result<(), String> {
        self.guard.admit(token).map_err(|e| e.to_string())?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| e.to_string())?;
        writeln!(f, "{} {line}", token.0).map_err(|e| e.to_string())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(config), Some(resource)) = (args.next(), args.next()) else {
        eprintln!("usage: embed NODE.toml RESOURCE_FILE");
        std::process::exit(2);
    };
    let config = quorate::config::load(std::path::Path::new(&config))?;
    let budget = config.startup.stop_budget;
    let node = Node::builder(config).start().await?;
    print!("started:\n{}", node.startup_report());
    let role = RoleName::new("worker")?;
    let mut resource = FencedFile {
        path: PathBuf::from(resource),
        guard: FenceGuard::default(),
    };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            term = node.run_while_primary(&role, |ctx| {
                let resource = &mut resource;
                async move {
                    let token = ctx.token();
                    println!("primary with token {}", token.0);
                    loop {
                        if let Err(e) = resource.append(token, "work done") {
                            eprintln!("refused: {e}");
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }) => {
                // The term ended (lease lost or handed over): wait to be primary again.
                if let Err(e) = term {
                    eprintln!("{e}");
                    break;
                }
            }
        }
    }
    let report = node.shutdown(budget).await;
    println!("stopped: {report:?}");
    Ok(())
}
