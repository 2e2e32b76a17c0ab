//! `cargo xtask chaos [--release] [--keep] [TEST-FILTER]`: issue 8's real-process acceptance.
//! Runs `crates/quorate/tests/chaos.rs` with `QUORATE_CHAOS=1`: three `quorate agent`
//! processes in private network namespaces face SIGKILL, SIGSTOP, an nftables partition and a
//! clock at 0.5x (libfaketime), and the hook log is checked for one primary at a time. Needs
//! root and the Debian packages `nftables` and `faketime` (iproute2 and util-linux too); a
//! missing one fails the run with a message naming it. `--keep` keeps the run directory
//! (configs, agent output, hook log) and prints its path.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::phases::root;

pub(crate) fn run(args: &[String]) -> Result<()> {
    let mut release = false;
    let mut keep = false;
    let mut filter = Vec::new();
    for a in args {
        match a.as_str() {
            "--release" => release = true,
            "--keep" => keep = true,
            "-h" | "--help" => {
                println!("usage: cargo xtask chaos [--release] [--keep] [TEST-FILTER]");
                return Ok(());
            }
            other if other.starts_with('-') => {
                bail!(
                    "unknown option {other:?}; usage: cargo xtask chaos [--release] [--keep] [TEST-FILTER]"
                )
            }
            other => filter.push(other.to_owned()),
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut c = Command::new(cargo);
    c.current_dir(root()?)
        .args(["test", "-p", "quorate", "--test", "chaos"])
        .env("QUORATE_CHAOS", "1");
    if release {
        c.arg("--release");
    }
    if keep {
        c.env("QUORATE_CHAOS_KEEP", "1");
    }
    c.arg("--").arg("--nocapture").args(&filter);
    let status = c.status().context("starting cargo test")?;
    if !status.success() {
        bail!("the chaos tests failed ({status})");
    }
    Ok(())
}
