//! `cargo run --release -p quorate-bench --bin bench_coord_vs_etcd -- [--tiny] [--trials N]
//! [--out PATH] [--phase-ms MS] [--rounds N] [--writes 1,16,64] [--reads 1,64] [--locks 1,16]
//! [--etcd-timing HB,ELECTION]`: the coordination benchmark through the `Coord` trait, side by side, on
//! loopback: a 3-member etcd cluster (Debian's `etcd`, or `QUORATE_ETCD_BIN`) and a 3-process
//! quorate cluster, interleaved phase by phase (see `quorate_bench::coord`). Prints the table
//! and writes it to `target/bench-coord-vs-etcd.txt`.
//!
//! The quorate agents are this executable re-run as `<exe> agent --config <file>`, which runs
//! exactly what `quorate agent` runs (`quorate::agent::run`), so the agents always match the
//! source being benchmarked. Set `QUORATE_BIN=/path/to/quorate` to run a built `quorate`
//! binary instead.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line program"
)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use quorate_bench::agents::{QUORATE_BIN_ENV, QuorateClusterConfig, QuorateTarget};
use quorate_bench::coord::{self as bench, BenchConfig, BenchTarget, EtcdTarget};

/// `<exe> agent --config <file>`: one quorate agent, as `quorate agent` runs it.
fn agent(config: &str) -> ExitCode {
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
            eprintln!("agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async { quorate::agent::run(std::path::Path::new(config)).await });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or_else(String::new, |kib| {
            format!(", {} GiB RAM", kib / 1024 / 1024)
        });
    let etcd = std::process::Command::new(
        std::env::var_os(quorate_testkit::etcd::ETCD_BIN_ENV).unwrap_or_else(|| "etcd".into()),
    )
    .arg("--version")
    .output()
    .ok()
    .and_then(|o| String::from_utf8(o.stdout).ok())
    .and_then(|s| s.lines().next().map(str::to_owned))
    .unwrap_or_else(|| "etcd version unknown".into());
    format!("{cpus} CPU(s) ({model}){mem}; {etcd}")
}

async fn bench(
    cfg: BenchConfig,
    out: PathBuf,
    args: String,
    etcd_timing: Option<(u64, u64)>,
) -> Result<(), String> {
    let started = Instant::now();
    let (program, agents_from) = match std::env::var_os(QUORATE_BIN_ENV) {
        Some(_) => {
            let p = quorate_testkit::process::locate_quorate_binary().map_err(|e| e.to_string())?;
            let from = format!("{} agent ({QUORATE_BIN_ENV})", p.display());
            (p, from)
        }
        None => {
            let p = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
            (
                p,
                "this example re-run as `agent` (quorate::agent::run, as `quorate agent`)"
                    .to_owned(),
            )
        }
    };
    let mut etcd_config = quorate_testkit::etcd::EtcdClusterConfig::members(3);
    let etcd_timing = match etcd_timing {
        Some((hb, el)) => {
            etcd_config.heartbeat = std::time::Duration::from_millis(hb);
            etcd_config.election = std::time::Duration::from_millis(el);
            format!("tuned: --heartbeat-interval {hb} --election-timeout {el}")
        }
        None => "defaults (heartbeat 100 ms, election 1000 ms)".to_owned(),
    };
    let etcd = EtcdTarget::start_with(etcd_config)
        .await
        .map_err(|e| format!("etcd: {e}"))?;
    let quorate = QuorateTarget::start(QuorateClusterConfig::new(program))
        .await
        .map_err(|e| format!("quorate: {e}"))?;
    // etcd first, quorate second: the ratio column reads quorate/etcd.
    let mut targets: Vec<Box<dyn BenchTarget>> = vec![Box::new(etcd), Box::new(quorate)];
    let report = bench::run(&mut targets, &cfg)
        .await
        .map_err(|e| e.to_string())?;
    drop(targets);
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown date".to_owned(), |s| s.trim().to_owned());
    let text = format!(
        "coord benchmark through the Coord trait, 3 nodes per system on loopback, interleaved\nmachine: {}\ndate: {date}\ncommand: cargo run --release -p quorate-bench --bin bench_coord_vs_etcd{args}\nquorate agents: {agents_from}, lan profile; client: quorate_raft::client::CoordClient\netcd timing: {etcd_timing}\nwall time: {:.0} s\n\n{}",
        machine(),
        started.elapsed().as_secs_f64(),
        report.table()
    );
    println!("{text}");
    if let Some(dir) = out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&out, &text) {
        Ok(()) => println!("written to {}", out.display()),
        Err(e) => eprintln!("could not write {}: {e}", out.display()),
    }
    Ok(())
}

/// Command line of the coordination benchmarks.
#[derive(clap::Parser, Debug)]
struct Args {
    /// A tiny run (seconds, for CI), not the full one.
    #[arg(long)]
    tiny: bool,
    /// Failover trials (default: the run's own number).
    #[arg(long)]
    trials: Option<usize>,
    /// Where to write the table.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Length of each measured phase in milliseconds (default: the run's own).
    #[arg(long)]
    phase_ms: Option<u64>,
    /// Rounds per phase and target (default: the run's own).
    #[arg(long)]
    rounds: Option<usize>,
    /// Client counts of the write phases, comma-separated (`--writes 0` runs none).
    #[arg(long, value_delimiter = ',')]
    writes: Option<Vec<usize>>,
    /// Client counts of the linearizable read phases, comma-separated.
    #[arg(long, value_delimiter = ',')]
    reads: Option<Vec<usize>>,
    /// Client counts of the lock phases, comma-separated.
    #[arg(long, value_delimiter = ',')]
    locks: Option<Vec<usize>>,
    /// etcd's heartbeat and election timeout in ms, `HB,ELECTION` (default: etcd's own, 100
    /// and 1000). `50,300` matches quorate's `lan` profile closely, for a like-with-like
    /// failover column.
    #[arg(long, value_delimiter = ',')]
    etcd_timing: Option<Vec<u64>>,
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("agent") {
        return match argv.get(1..) {
            Some([flag, path]) if flag == "--config" => agent(path),
            _ => {
                eprintln!("usage: bench_coord_vs_etcd agent --config FILE");
                ExitCode::from(2)
            }
        };
    }
    let parsed = match <Args as clap::Parser>::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    let mut cfg = if parsed.tiny {
        BenchConfig::tiny()
    } else {
        BenchConfig::full()
    };
    if let Some(t) = parsed.trials {
        cfg.failover_trials = t;
    }
    if let Some(ms) = parsed.phase_ms {
        cfg.phase = std::time::Duration::from_millis(ms);
    }
    if let Some(r) = parsed.rounds {
        cfg.rounds = r.max(1);
    }
    if let Some(w) = parsed.writes {
        cfg.write_clients = w.into_iter().filter(|&c| c > 0).collect();
    }
    if let Some(r) = parsed.reads {
        cfg.read_clients = r.into_iter().filter(|&c| c > 0).collect();
    }
    if let Some(l) = parsed.locks {
        cfg.lock_clients = l.into_iter().filter(|&c| c > 0).collect();
    }
    let out = parsed
        .out
        .unwrap_or_else(|| quorate_bench::default_out("bench-coord-vs-etcd.txt"));
    let args: String = argv.iter().map(|a| format!(" {a}")).collect();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench_coord_vs_etcd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let etcd_timing = match parsed.etcd_timing.as_deref() {
        None => None,
        Some([hb, el]) if *hb > 0 && hb < el => Some((*hb, *el)),
        Some(other) => {
            eprintln!(
                "bench_coord_vs_etcd: --etcd-timing wants HB,ELECTION in ms with 0 < HB < ELECTION, got {other:?}"
            );
            return ExitCode::from(2);
        }
    };
    match rt.block_on(bench(cfg, out, args, etcd_timing)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_coord_vs_etcd: {e}");
            ExitCode::FAILURE
        }
    }
}
