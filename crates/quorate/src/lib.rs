//! quorate: the binary's library part. `quorate agent` runs one node from a validated TOML
//! config ([`config`]), wiring health ([`quorate_health`]), membership
//! ([`quorate_membership`]), embedded coordination ([`quorate_raft`]) and failover
//! ([`quorate_failover`]) in that order ([`agent`]); role hooks can be shell commands
//! ([`hooks`]); `quorate demo` starts three agents on loopback ([`demo`]); `quorate status`
//! prints a node's view ([`status`]).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line program: printing is its interface"
)]

pub mod agent;
pub mod chaos;
pub mod config;
pub mod coord_bench;
pub mod demo;
pub mod hooklog;
pub mod hooks;
pub mod status;
