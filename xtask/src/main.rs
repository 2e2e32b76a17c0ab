//! `cargo xtask`: the workspace's build-and-test driver.
//!
//! - `cargo xtask ci [PHASE ...] [--keep-going]` runs the phases in order (all of them when none
//!   is named) and stops at the first failure, naming it; `--keep-going` runs every phase and
//!   lists the failures at the end. `cargo xtask ci --list` prints the phases.
//! - `cargo xtask setup` installs the Debian packages and cargo tools the tests need (as root;
//!   otherwise it prints the `apt-get install` line and fails); it is also `ci`'s first phase.
//! - `cargo xtask fresh-root [--dir DIR] [--fresh] [-- COMMAND...]` runs a command (by default
//!   `bash .ci/run`) in a fresh Debian root with only the Rust toolchain mounted in: the proof
//!   that the test command sets everything up itself (see `docs/testing.md`).
//! - `cargo xtask bench NAME` runs a benchmark and prints its figures (see `bench.rs`).
//! - `cargo xtask chaos [--release] [--keep] [FILTER]` runs the real-process chaos test: three
//!   agents in network namespaces, SIGKILL, SIGSTOP, nftables partitions, a 0.5x clock (root).
//! - `cargo xtask soak [--seeds N] [--scenario S] [--jobs J]` runs every simulation scenario for
//!   N seeds (default 10,000) in release, in parallel and resumably (see `soak.rs`).

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "xtask is a command-line tool: its output is the point"
)]

mod bench;
mod chaos;
mod fresh_root;
mod phases;
mod setup;
mod soak;
#[cfg(test)]
mod tidy;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => phases::ci(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("chaos") => chaos::run(&args[1..]),
        Some("setup") => setup::run(&args[1..]),
        Some("soak") => soak::run(&args[1..]),
        Some("fresh-root") => fresh_root::run(&args[1..]),
        Some(fresh_root::INNER) => fresh_root::inner(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask ci [PHASE ...] [--keep-going] | cargo xtask ci --list | cargo xtask setup [--check | --list] | cargo xtask fresh-root [--dir DIR] [--fresh] [--new-snapshot] [--bare-toolchain] [--suite SUITE] [-- COMMAND...] | cargo xtask bench NAME | cargo xtask chaos [--release] [--keep] [FILTER] | cargo xtask soak [--seeds N] [--scenario S] [--jobs J] [--state FILE] [--fresh] [--debug-assertions]"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
