//! `cargo xtask setup [--check]`: installs what the tests need on a Debian machine, and is the
//! first phase of `cargo xtask ci`.
//!
//! [`PACKAGES`] is the one list of the Debian packages the tests use (a tidy test keeps other
//! scripts from carrying a second one). Missing packages are found with `dpkg-query`. As root,
//! they are installed with `apt-get install --no-install-recommends` (so every package a test
//! needs is named here, not pulled in as a Recommends); otherwise the exact `sudo apt-get
//! install` line is printed and the command fails. The packaged services that Debian starts on
//! install are stopped: the tests start their own servers on loopback ports. Then cargo-nextest
//! is installed when missing (the CI's test runner), and cargo-fuzz when missing on a CI
//! machine (root or `CI` set; optional: the fuzz phase skips without it).

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The Debian packages the tests need, each with the reason.
pub(crate) const PACKAGES: &[(&str, &str)] = &[
    (
        "redis-server",
        "real Redis for the health checks' and the Redis adapter's tests",
    ),
    (
        "python3-redis",
        "redis-py: an unchanged Sentinel-aware client against quorate's Sentinel-compatible listener",
    ),
    (
        "redis-sentinel",
        "Redis Sentinel, the peer of `cargo xtask bench redis`",
    ),
    (
        "postgresql",
        "real PostgreSQL (initdb, postgres) for the health checks' tests",
    ),
    (
        "etcd-server",
        "the etcd backend's conformance suite and the coord benchmark",
    ),
    ("etcd-client", "etcdctl, beside etcd-server"),
    (
        "protobuf-compiler",
        "protoc: etcd-client's build script (quorate-etcd)",
    ),
    (
        "libprotobuf-dev",
        "google/protobuf/*.proto that protoc needs (only a Recommends of protobuf-compiler)",
    ),
    ("openssl", "certificates for the etcd TLS test"),
    ("nftables", "partitions in the chaos tests"),
    ("faketime", "libfaketime: a 0.5x clock in the chaos tests"),
    (
        "iproute2",
        "ip: network namespaces and veth pairs in the chaos tests",
    ),
    ("procps", "kill and ps for the real-process tests"),
    (
        "util-linux",
        "unshare, nsenter, setpriv for the real-process tests",
    ),
    (
        "mount",
        "mount: the chaos world's tmpfs on /run/netns (Priority required, but not in a minimal root)",
    ),
    (
        "prometheus",
        "promtool: `check metrics` on a live /metrics scrape, `check rules` and `test rules` on docs/alerts.yml (quorate-api)",
    ),
    (
        "chromium",
        "headless Chromium: the dashboard shows a failover without a reload (quorate tests/browser.rs)",
    ),
    (
        "haproxy",
        "a real load balancer routing on /role/app/primary across failovers (quorate tests/haproxy.rs)",
    ),
    (
        "fonts-dejavu-core",
        "a font for headless Chromium's dashboard screenshot (only a Recommends of chromium)",
    ),
    (
        "python3-mockupdb",
        "a server speaking MongoDB's wire protocol for the MongoDB check",
    ),
    (
        "g++",
        "a C++ compiler: libfuzzer-sys builds libFuzzer for the fuzz phase (a bare Debian root has only gcc)",
    ),
    (
        "python3",
        "the tiny HTTP application behind HAProxy in the chaos tests (quorate_chaos::haproxy; also a dependency of python3-redis)",
    ),
];

/// The packaged services that Debian starts on install; the tests start their own.
const SERVICES: &[&str] = &[
    "redis-server",
    "redis-sentinel",
    "postgresql",
    "etcd",
    "prometheus",
    "haproxy",
];

/// The package names of [`PACKAGES`].
pub(crate) fn package_names() -> Vec<&'static str> {
    PACKAGES.iter().map(|(p, _)| *p).collect()
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let mut check_only = false;
    for a in args {
        match a.as_str() {
            "--check" => check_only = true,
            "--list" => {
                for (p, why) in PACKAGES {
                    println!("{p:<18} {why}");
                }
                return Ok(());
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    match ensure(check_only)? {
        Done::Ready => Ok(()),
        Done::NotDebian(why) => bail!("{why}"),
    }
}

const USAGE: &str = "usage: cargo xtask setup [--check | --list]";

/// What [`ensure`] found.
pub(crate) enum Done {
    /// Every package and cargo tool is present.
    Ready,
    /// No `dpkg-query`: not a Debian system; the message lists what to install instead.
    NotDebian(String),
}

/// Installs what is missing (as root), or fails naming the command that does. With
/// `check_only`, installs nothing and fails when something is missing.
pub(crate) fn ensure(check_only: bool) -> Result<Done> {
    if !has_dpkg() {
        return Ok(Done::NotDebian(format!(
            "no dpkg-query: this is not a Debian system, so `cargo xtask setup` cannot install \
             the test dependencies; install your system's equivalents of the Debian packages {} \
             and cargo-nextest (`cargo install cargo-nextest --locked`)",
            package_names().join(" ")
        )));
    }
    let missing = missing_packages();
    if missing.is_empty() {
        println!(
            "setup: all {} Debian packages are installed",
            PACKAGES.len()
        );
    } else {
        let line = format!(
            "apt-get install -y --no-install-recommends {}",
            missing.join(" ")
        );
        if check_only {
            bail!(
                "missing Debian packages: {}; install them with `sudo {line}` (or run `cargo xtask setup` as root)",
                missing.join(" ")
            );
        }
        if !is_root() {
            println!("setup: missing Debian packages: {}", missing.join(" "));
            println!("setup: run this, then `cargo xtask ci` again:");
            println!();
            println!("    sudo apt-get update && sudo {line}");
            println!();
            bail!(
                "missing Debian packages ({}) and not root, so not installing them: run the line above",
                missing.join(" ")
            );
        }
        println!("setup: installing {}", missing.join(" "));
        apt(&["update", "-q"])?;
        let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
        install.extend(missing.iter().map(String::as_str));
        apt(&install)?;
        let still = missing_packages();
        if !still.is_empty() {
            bail!(
                "apt-get install succeeded but these are still not installed: {}",
                still.join(" ")
            );
        }
        stop_services();
    }
    cargo_tools(check_only)?;
    Ok(Done::Ready)
}

/// Installs `packages` on the host when missing (as root; otherwise fails naming the command).
/// For tools xtask itself uses, such as mmdebstrap.
pub(crate) fn ensure_host_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !is_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let line = format!(
        "apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    if !is_root() {
        bail!(
            "missing Debian packages {}: run `sudo {line}`",
            missing.join(" ")
        );
    }
    apt(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(missing.iter().copied());
    apt(&install)
}

fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn has_dpkg() -> bool {
    Command::new("dpkg-query")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The packages of [`PACKAGES`] that dpkg does not report as installed.
fn missing_packages() -> Vec<String> {
    package_names()
        .into_iter()
        .filter(|p| !is_installed(p))
        .map(str::to_owned)
        .collect()
}

/// Whether this process runs with effective uid 0 (read from `/proc/self/status`, else `id -u`).
pub(crate) fn is_root() -> bool {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(line) = status.lines().find(|l| l.starts_with("Uid:"))
    {
        // Uid: real effective saved fs
        return line.split_whitespace().nth(2) == Some("0");
    }
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn apt(args: &[&str]) -> Result<()> {
    let shown = format!("apt-get {}", args.join(" "));
    println!("$ {shown}");
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` exited with {status}");
    }
    Ok(())
}

/// Stops the services the packages started: the tests run their own instances, and a packaged
/// one would hold the default ports. Best effort: a service that is not running is fine.
fn stop_services() {
    let has_service = Command::new("sh")
        .args(["-c", "command -v service"])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !has_service {
        return;
    }
    for svc in SERVICES {
        let _ = Command::new("service")
            .args([*svc, "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn has_cargo_tool(sub: &str) -> bool {
    Command::new(cargo_bin())
        .args([sub, "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// cargo-nextest (required: the CI's test runner) and cargo-fuzz (optional: the fuzz phase).
fn cargo_tools(check_only: bool) -> Result<()> {
    if !has_cargo_tool("nextest") {
        if check_only {
            bail!("cargo-nextest is not installed: `cargo install cargo-nextest --locked`");
        }
        println!("setup: installing cargo-nextest");
        let status = Command::new(cargo_bin())
            .args(["install", "cargo-nextest", "--locked"])
            .status()
            .context("could not start `cargo install cargo-nextest`")?;
        if !status.success() {
            bail!("`cargo install cargo-nextest --locked` exited with {status}");
        }
    }
    if has_cargo_tool("fuzz") || check_only {
        return Ok(());
    }
    // Building cargo-fuzz takes a minute or more: done on CI machines (root or CI set), where
    // the fuzz phase should run, and not on every developer's `cargo xtask ci`.
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
    if !ci && !is_root() {
        println!(
            "setup: cargo-fuzz is not installed, so the fuzz phase will skip \
             (`cargo install cargo-fuzz --locked` to run it)"
        );
        return Ok(());
    }
    println!("setup: installing cargo-fuzz (for the time-boxed fuzz phase)");
    let ok = Command::new(cargo_bin())
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        println!("setup: cargo-fuzz could not be installed: the fuzz phase will say so and skip");
    }
    Ok(())
}
