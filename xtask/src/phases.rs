//! The phases of `cargo xtask ci`, in the order the plan builds the system: setup (the Debian
//! packages and cargo tools the tests need), tidy, fmt, one
//! clippy and one build of the whole workspace, then tests layer by layer, then docs,
//! simulation and fuzzing.
//!
//! Build once: every cargo command here selects `--workspace`, so features unify the same way
//! in every phase and no dependency is compiled twice (selecting `-p a -p b` per layer would
//! unify features per selection and rebuild shared dependencies in each phase). Layers select
//! their crates with a nextest filter instead.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::setup;

/// One step of the CI.
struct Phase {
    name: &'static str,
    what: &'static str,
    kind: Kind,
}

enum Kind {
    /// `cargo xtask setup`: the Debian packages and cargo tools the tests need.
    Setup,
    /// `cargo test -p xtask`: the tidy tests.
    Tidy,
    /// `cargo fmt --check`.
    Fmt,
    /// Clippy on the whole workspace with `-D warnings`, then every test target compiled.
    Build,
    /// Every test of these crates but the `sim` targets (already built by [`Kind::Build`]).
    Layer(&'static [&'static str]),
    /// `cargo doc` with `-D warnings`, then the doctests.
    Doc,
    /// Every `sim` test target of the workspace (whole-cluster simulations across seeds).
    Sim,
    /// A time-boxed cargo-fuzz run of each fuzz target, when cargo-fuzz is installed.
    Fuzz,
}

/// Every crate some layer phase tests (the tidy test `every_crate_is_tested_by_a_phase` checks
/// that no crate is left out).
#[cfg(test)]
pub(crate) fn layer_crates() -> Vec<&'static str> {
    PHASES
        .iter()
        .filter_map(|p| match p.kind {
            Kind::Layer(c) => Some(c),
            _ => None,
        })
        .flatten()
        .copied()
        .collect()
}

/// The cargo-fuzz targets in `fuzz/fuzz_targets/`.
const FUZZ_TARGETS: &[&str] = &["frame_decode", "gossip_payload", "raft_request"];

const PHASES: &[Phase] = &[
    Phase {
        name: "setup",
        what: "install the Debian packages and cargo tools the tests need (root), or name them",
        kind: Kind::Setup,
    },
    Phase {
        name: "tidy",
        what: "workspace rules: lints inherited, folder = crate name, //! headers, pure cores",
        kind: Kind::Tidy,
    },
    Phase {
        name: "fmt",
        what: "cargo fmt --check",
        kind: Kind::Fmt,
    },
    Phase {
        name: "build",
        what: "clippy -D warnings on the whole workspace, then build every test once",
        kind: Kind::Build,
    },
    Phase {
        name: "traits",
        what: "vocabulary and trait crates",
        kind: Kind::Layer(&[
            "quorate-types",
            "quorate-health-api",
            "quorate-membership-api",
            "quorate-coord-api",
            "quorate-clock",
        ]),
    },
    Phase {
        name: "wire",
        what: "framing, codec, authentication, sockets seam",
        kind: Kind::Layer(&["quorate-wire"]),
    },
    Phase {
        name: "harness",
        what: "simulation harness and history checkers",
        kind: Kind::Layer(&["quorate-sim", "quorate-testkit", "quorate-testports"]),
    },
    Phase {
        name: "health",
        what: "health monitor and built-in checks (real Redis and PostgreSQL)",
        kind: Kind::Layer(&["quorate-health"]),
    },
    Phase {
        name: "membership",
        what: "SWIM gossip on foca, quorum and split-brain view",
        kind: Kind::Layer(&["quorate-membership"]),
    },
    Phase {
        name: "coord",
        what: "coordination: embedded on openraft and redb, and on a real etcd cluster",
        kind: Kind::Layer(&["quorate-raft", "quorate-etcd"]),
    },
    Phase {
        name: "failover",
        what: "per-role failover policy and manager",
        kind: Kind::Layer(&["quorate-failover"]),
    },
    Phase {
        name: "replication",
        what: "replication: CRDT laws, HLC, digests; multi-master and leader-mode keyspaces over loopback TCP and redb",
        kind: Kind::Layer(&["quorate-replication"]),
    },
    Phase {
        name: "startup",
        what: "the node assembly: stages, config, notification, shutdown",
        kind: Kind::Layer(&["quorate-startup"]),
    },
    Phase {
        name: "state",
        what: "distributed state: sessions, locks, elections, semaphores, typed maps (Raft and etcd)",
        kind: Kind::Layer(&["quorate-state"]),
    },
    Phase {
        name: "telegram",
        what: "the Telegram bot against a fake Bot API: commands, alerts, ingress hand-off",
        kind: Kind::Layer(&["quorate-telegram"]),
    },
    Phase {
        name: "redis",
        what: "the Redis adapter: INFO parsing, lag, the Sentinel-compatible protocol",
        kind: Kind::Layer(&["quorate-redis"]),
    },
    Phase {
        name: "api",
        what: "HTTP probes, admin, metrics (promtool), dashboard on in-process nodes",
        kind: Kind::Layer(&["quorate-api"]),
    },
    Phase {
        name: "binary",
        what: "the quorate binary: agent, demo, status, Redis adapter on real servers (real processes)",
        kind: Kind::Layer(&["quorate", "quorate-chaos"]),
    },
    Phase {
        name: "bench",
        what: "every benchmark, run tiny (figures are printed, never asserted)",
        kind: Kind::Layer(&["quorate-bench"]),
    },
    Phase {
        name: "doc",
        what: "rustdoc with -D warnings, doctests",
        kind: Kind::Doc,
    },
    Phase {
        name: "sim",
        what: "deterministic whole-cluster simulations across seeds",
        kind: Kind::Sim,
    },
    Phase {
        name: "fuzz",
        what: "time-boxed fuzzing of the wire decoder (when cargo-fuzz is installed)",
        kind: Kind::Fuzz,
    },
];

pub(crate) fn ci(args: &[String]) -> Result<()> {
    let keep_going = args.iter().any(|a| a == "--keep-going");
    if args.iter().any(|a| a == "--list") {
        for p in PHASES {
            println!("{:<11} {}", p.name, p.what);
        }
        return Ok(());
    }
    let wanted: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .map(String::as_str)
        .collect();
    for w in &wanted {
        if !PHASES.iter().any(|p| p.name == *w) {
            let names: Vec<_> = PHASES.iter().map(|p| p.name).collect();
            bail!("unknown phase {w:?}; phases are: {}", names.join(", "));
        }
    }
    let root = root()?;
    let start = Instant::now();
    let mut failed = Vec::new();
    let mut timings = Vec::new();
    for phase in PHASES
        .iter()
        .filter(|p| wanted.is_empty() || wanted.contains(&p.name))
    {
        println!("\n==> phase {}: {}", phase.name, phase.what);
        let t = Instant::now();
        let r = run_phase(&root, phase);
        let secs = t.elapsed().as_secs_f64();
        let verdict = match &r {
            Ok(Outcome::Ran) => "ok",
            Ok(Outcome::Skipped(why)) => {
                println!("    skipped: {why}");
                "skipped"
            }
            Err(_) => "FAILED",
        };
        println!("<== phase {} {verdict} in {secs:.1} s", phase.name);
        timings.push((phase.name, verdict, secs));
        if let Err(e) = r {
            eprintln!("phase {} failed: {e:#}", phase.name);
            failed.push(phase.name);
            if !keep_going {
                break;
            }
        }
    }
    println!("\nphase timings:");
    for (name, verdict, secs) in &timings {
        println!("  {name:<11} {verdict:<8} {secs:>7.1} s");
    }
    println!(
        "  total                {:>7.1} s",
        start.elapsed().as_secs_f64()
    );
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("failed phase(s): {}", failed.join(", "))
    }
}

enum Outcome {
    Ran,
    Skipped(String),
}

fn run_phase(root: &Path, phase: &Phase) -> Result<Outcome> {
    match phase.kind {
        Kind::Setup => {
            if let setup::Done::NotDebian(why) = setup::ensure(false)? {
                return Ok(Outcome::Skipped(why));
            }
        }
        Kind::Tidy => {
            cargo(
                root,
                &["test", "--quiet", "-p", "xtask", "--", "--test-threads=2"],
            )?;
        }
        Kind::Fmt => cargo(root, &["fmt", "--all", "--", "--check"])?,
        Kind::Build => {
            cargo(
                root,
                &[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--locked",
                    "--",
                    "-D",
                    "warnings",
                ],
            )?;
            cargo(root, &["test", "--workspace", "--no-run", "--locked"])?;
        }
        Kind::Layer(crates) => {
            let present: Vec<&str> = crates
                .iter()
                .copied()
                .filter(|c| root.join("crates").join(c).join("Cargo.toml").exists())
                .collect();
            if present.is_empty() {
                return Ok(Outcome::Skipped(format!("none of {crates:?} exists yet")));
            }
            let filter = layer_filter(&present, false);
            let mut args = nextest_run();
            args.extend(["--workspace", "-E", filter.as_str()]);
            cargo(root, &args)?;
        }
        Kind::Doc => {
            run(Command::new(cargo_bin())
                .current_dir(root)
                .args([
                    "doc",
                    "--workspace",
                    "--no-deps",
                    "--locked",
                    "--exclude",
                    "xtask",
                ])
                .env("RUSTDOCFLAGS", "-D warnings --cfg tokio_unstable"))?;
            cargo(
                root,
                &[
                    "test",
                    "--workspace",
                    "--doc",
                    "--locked",
                    "--exclude",
                    "xtask",
                ],
            )?;
        }
        Kind::Sim => {
            let sims = sim_targets(root)?;
            if sims.is_empty() {
                return Ok(Outcome::Skipped("no crate has a tests/sim.rs yet".into()));
            }
            let names: Vec<&str> = sims.iter().map(String::as_str).collect();
            let filter = layer_filter(&names, true);
            let mut args = nextest_run();
            args.extend(["--workspace", "-E", filter.as_str()]);
            cargo(root, &args)?;
        }
        Kind::Fuzz => {
            let fuzz = root.join("fuzz");
            if !fuzz.join("Cargo.toml").exists() {
                return Ok(Outcome::Skipped("no fuzz/ crate".into()));
            }
            let has_fuzz = Command::new(cargo_bin())
                .args(["fuzz", "--version"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if !has_fuzz {
                return Ok(Outcome::Skipped(
                    "cargo-fuzz is not installed (`cargo xtask setup` tries to install it)".into(),
                ));
            }
            let secs = std::env::var("QUORATE_FUZZ_SECONDS").unwrap_or_else(|_| "30".into());
            for target in FUZZ_TARGETS {
                run(Command::new(cargo_bin()).current_dir(&fuzz).args([
                    "fuzz",
                    "run",
                    "--sanitizer",
                    "none",
                    *target,
                    "--",
                    &format!("-max_total_time={secs}"),
                    "-rss_limit_mb=2048",
                ]))?;
            }
        }
    }
    Ok(Outcome::Ran)
}

/// The nextest filter for the tests of `crates`: their `sim` targets only, or all but those.
fn layer_filter(crates: &[&str], sim: bool) -> String {
    let packages: Vec<String> = crates.iter().map(|c| format!("package({c})")).collect();
    let sim = if sim {
        "binary(sim)"
    } else {
        "not binary(sim)"
    };
    format!("({}) & {sim}", packages.join(" | "))
}

/// `nextest run` with the CI profile when cargo-nextest is installed, else `cargo test`.
fn nextest_run() -> Vec<&'static str> {
    let has_nextest = Command::new(cargo_bin())
        .args(["nextest", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if has_nextest {
        vec![
            "nextest",
            "run",
            "--locked",
            "--profile",
            "ci",
            "--no-tests",
            "warn",
        ]
    } else {
        // Plain cargo test cannot take nextest's filter; callers add `-E`, which it would
        // reject, so fail early with the fix.
        vec!["nextest-missing"]
    }
}

fn sim_targets(root: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root.join("crates")).context("reading crates/")? {
        let dir = entry?.path();
        let name = dir.file_name().and_then(|n| n.to_str());
        if let Some(name) = name.filter(|_| {
            dir.join("tests").join("sim.rs").exists() && dir.join("Cargo.toml").exists()
        }) {
            out.push(name.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    if args.first() == Some(&"nextest-missing") {
        bail!(
            "cargo-nextest is not installed: `cargo install cargo-nextest --locked` (`cargo xtask setup` does)"
        );
    }
    run(Command::new(cargo_bin()).current_dir(root).args(args))
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("$ {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` exited with {status}");
    }
    Ok(())
}

/// The workspace root (the parent of xtask's manifest directory).
pub(crate) fn root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent directory")
}
