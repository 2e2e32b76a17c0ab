//! `cargo xtask soak [--seeds N] [--scenario S] [--crate C] [--jobs J] [--state FILE] [--fresh]`: runs
//! every simulation scenario for N seeds (default 10,000) in release, in parallel.
//!
//! How it works:
//! - builds every `tests/sim.rs` target in release (`cargo test --release --no-run`) and lists
//!   the tests of each binary;
//! - runs each test for a chunk of seeds at a time (`QUORATE_SIM_SEED_START`,
//!   `QUORATE_SIM_SEEDS`) in soak mode (`QUORATE_SIM_REPORT`: the `quorate_sim::Runner` runs
//!   every seed even after a failure and appends one JSON line per seed); a test that reports no
//!   seed is not a seeded scenario and runs only once;
//! - keeps up to J chunks (default: the number of cores) running at once;
//! - appends every finished chunk to a state file (default `<target>/soak/state.jsonl`), so an
//!   interrupted soak resumes where it stopped (`--fresh` starts over);
//! - prints, per scenario, the seeds run, the failures and the wall time of its chunks, then
//!   every failing seed with the command that replays it.
//!
//! `--scenario S` keeps the tests whose name contains S; `--crate C` (repeatable) keeps those
//! crates' simulations. Debug assertions are off in release;
//! `--debug-assertions` turns them on (a separate, slower build of every dependency).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::phases::root;

/// Seeds per chunk: small enough that an interrupted soak loses little, large enough that
/// process start-up does not dominate.
const CHUNK_SEEDS: u64 = 20;

#[derive(Debug)]
struct Options {
    seeds: u64,
    scenario: Option<String>,
    crates: Vec<String>,
    jobs: usize,
    state: Option<PathBuf>,
    fresh: bool,
    debug_assertions: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        seeds: 10_000,
        scenario: None,
        crates: Vec::new(),
        jobs: std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
        state: None,
        fresh: false,
        debug_assertions: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .with_context(|| format!("soak: {name} needs a value"))
        };
        match a.as_str() {
            "--seeds" => {
                let v = value("--seeds")?;
                o.seeds = v
                    .parse()
                    .with_context(|| format!("soak: --seeds {v:?} is not a count"))?;
            }
            "--scenario" => o.scenario = Some(value("--scenario")?),
            "--crate" => o.crates.push(value("--crate")?),
            "--jobs" => {
                let v = value("--jobs")?;
                o.jobs = v
                    .parse::<usize>()
                    .ok()
                    .filter(|j| *j > 0)
                    .with_context(|| format!("soak: --jobs {v:?} is not a positive count"))?;
            }
            "--state" => o.state = Some(PathBuf::from(value("--state")?)),
            "--fresh" => o.fresh = true,
            "--debug-assertions" => o.debug_assertions = true,
            other => bail!(
                "soak: unknown argument {other:?}; usage: cargo xtask soak [--seeds N] \
                 [--scenario S] [--crate C]... [--jobs J] [--state FILE] [--fresh] \
                 [--debug-assertions]"
            ),
        }
    }
    Ok(o)
}

/// One test of one simulation binary.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct TestId {
    package: String,
    test: String,
}

impl TestId {
    fn key(&self) -> String {
        format!("{}::{}", self.package, self.test)
    }
}

/// A line of the state file.
#[derive(Clone, Debug, PartialEq)]
enum Record {
    /// One seed of one scenario ran.
    Seed {
        test: String,
        scenario: String,
        seed: u64,
        ok: bool,
        message: String,
        replay: String,
    },
    /// A chunk finished: its test, seed range, wall time, and whether the test is a scenario.
    Chunk {
        test: String,
        start: u64,
        count: u64,
        wall_ms: u64,
        scenario: bool,
    },
}

impl Record {
    fn to_json(&self) -> Value {
        match self {
            Record::Seed {
                test,
                scenario,
                seed,
                ok,
                message,
                replay,
            } => serde_json::json!({
                "kind": "seed", "test": test, "scenario": scenario, "seed": seed, "ok": ok,
                "message": message, "replay": replay,
            }),
            Record::Chunk {
                test,
                start,
                count,
                wall_ms,
                scenario,
            } => serde_json::json!({
                "kind": "chunk", "test": test, "start": start, "count": count,
                "wall_ms": wall_ms, "scenario": scenario,
            }),
        }
    }

    fn from_json(v: &Value) -> Option<Record> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let n = |k: &str| v.get(k).and_then(Value::as_u64);
        let b = |k: &str| v.get(k).and_then(Value::as_bool);
        match v.get("kind")?.as_str()? {
            "seed" => Some(Record::Seed {
                test: s("test")?,
                scenario: s("scenario")?,
                seed: n("seed")?,
                ok: b("ok")?,
                message: s("message").unwrap_or_default(),
                replay: s("replay").unwrap_or_default(),
            }),
            "chunk" => Some(Record::Chunk {
                test: s("test")?,
                start: n("start")?,
                count: n("count")?,
                wall_ms: n("wall_ms")?,
                scenario: b("scenario")?,
            }),
            _ => None,
        }
    }
}

/// Reads the state file (a missing file is an empty state; a torn last line is skipped).
fn load_state(path: &Path) -> Result<Vec<Record>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Record::from_json(&v))
        .collect())
}

/// The seed chunks still to run for one test, given the chunks already done.
fn pending_chunks(done: &BTreeSet<u64>, seeds: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut start = None;
    let flush = |from: u64, to: u64, out: &mut Vec<(u64, u64)>| {
        let mut s = from;
        while s < to {
            let n = CHUNK_SEEDS.min(to - s);
            out.push((s, n));
            s += n;
        }
    };
    for seed in 0..seeds {
        match (done.contains(&seed), start) {
            (false, None) => start = Some(seed),
            (true, Some(s)) => {
                flush(s, seed, &mut out);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        flush(s, seeds, &mut out);
    }
    out
}

/// Builds the sim targets in release and returns (package, executable) pairs.
fn build(
    root: &Path,
    packages: &[String],
    debug_assertions: bool,
) -> Result<Vec<(String, PathBuf)>> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root).args([
        "test",
        "--release",
        "--locked",
        "--no-run",
        "--message-format=json",
        "--test",
        "sim",
    ]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    if debug_assertions {
        cmd.env("CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS", "true");
    }
    println!(
        "$ cargo test --release --no-run --test sim -p {}",
        packages.join(" -p ")
    );
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("could not start cargo")?;
    if !out.status.success() {
        bail!("building the simulation targets failed ({})", out.status);
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let is_sim = v["reason"] == "compiler-artifact" && v["target"]["name"] == "sim";
        if let (true, Some(exe)) = (is_sim, v["executable"].as_str()) {
            let id = v["package_id"].as_str().unwrap_or_default();
            let package = packages
                .iter()
                .find(|p| {
                    id.contains(&format!("/crates/{p}#")) || id.contains(&format!("/crates/{p})"))
                })
                .cloned()
                .unwrap_or_else(|| id.to_owned());
            bins.push((package, PathBuf::from(exe)));
        }
    }
    bins.sort();
    Ok(bins)
}

fn list_tests(exe: &Path) -> Result<Vec<String>> {
    let out = Command::new(exe)
        .args(["--list", "--format", "terse"])
        .output()
        .with_context(|| format!("listing the tests of {}", exe.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_owned)
        .collect())
}

struct Job {
    id: TestId,
    exe: PathBuf,
    start: u64,
    count: u64,
}

/// Whether a test process was stopped by the operator (Ctrl-C, `kill`, a hang-up) rather than
/// ending on its own: its unreported seeds are not failures, and its chunk stays pending for
/// the next run to resume.
fn interrupted(status: std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt as _;
    // SIGHUP, SIGINT, SIGTERM. (An abort, a crash or the OOM killer's SIGKILL is a failure.)
    matches!(status.signal(), Some(1 | 2 | 15))
}

/// Runs one chunk; returns its records (a seed the process never reported is a failure). A
/// chunk whose process was [`interrupted`] returns no records at all.
fn run_chunk(job: &Job, scratch: &Path, n: usize) -> Result<Vec<Record>> {
    let report = scratch.join(format!("chunk-{n}.jsonl"));
    let _ = std::fs::remove_file(&report);
    let t0 = Instant::now();
    let out = Command::new(&job.exe)
        .args([job.id.test.as_str(), "--exact", "--test-threads", "1"])
        .env("QUORATE_SIM_REPORT", &report)
        .env("QUORATE_SIM_SEED_START", job.start.to_string())
        .env("QUORATE_SIM_SEEDS", job.count.to_string())
        .env_remove("QUORATE_SIM_SEED")
        .output()
        .with_context(|| format!("running {}", job.exe.display()))?;
    let wall_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    let _ = std::fs::remove_file(&report);
    let test = job.id.key();
    let mut records = Vec::new();
    let mut seen: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for v in text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        let (Some(scenario), Some(seed)) = (v["scenario"].as_str(), v["seed"].as_u64()) else {
            continue;
        };
        seen.entry(scenario.to_owned()).or_default().insert(seed);
        records.push(Record::Seed {
            test: test.clone(),
            scenario: scenario.to_owned(),
            seed,
            ok: v["ok"].as_bool().unwrap_or(false),
            message: v["message"].as_str().unwrap_or_default().to_owned(),
            replay: v["replay"].as_str().unwrap_or_default().to_owned(),
        });
    }
    if interrupted(out.status) {
        eprintln!(
            "soak: {test} seeds {}..{} interrupted ({}); left pending for the next run",
            job.start,
            job.start + job.count,
            out.status
        );
        return Ok(Vec::new());
    }
    let is_scenario = !records.is_empty();
    if is_scenario && !out.status.success() {
        // The process died (abort, signal) before reporting some seeds of a scenario it had
        // started: those seeds count as failures, with the tail of its output.
        let tail: String = String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join(" | ");
        for (scenario, seeds) in &seen {
            for seed in job.start..job.start + job.count {
                if !seeds.contains(&seed) {
                    records.push(Record::Seed {
                        test: test.clone(),
                        scenario: scenario.clone(),
                        seed,
                        ok: false,
                        message: format!(
                            "the test process ended ({}) before reporting this seed: {tail}",
                            out.status
                        ),
                        replay: format!(
                            "QUORATE_SIM_SEED={seed} cargo test -p {} --test sim {} -- --nocapture",
                            job.id.package, job.id.test
                        ),
                    });
                }
            }
        }
    }
    if !is_scenario && !out.status.success() {
        bail!(
            "{test} is not a seeded scenario and failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
    }
    records.push(Record::Chunk {
        test,
        start: job.start,
        count: job.count,
        wall_ms,
        scenario: is_scenario,
    });
    Ok(records)
}

/// `cargo xtask soak ...`.
pub(crate) fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let root = root()?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let scratch = target.join("soak");
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let state_path = o
        .state
        .clone()
        .unwrap_or_else(|| scratch.join("state.jsonl"));
    if o.fresh {
        let _ = std::fs::remove_file(&state_path);
    }
    let mut packages = sim_packages(&root)?;
    if !o.crates.is_empty() {
        if let Some(c) = o.crates.iter().find(|c| !packages.contains(c)) {
            bail!("soak: --crate {c} has no tests/sim.rs; crates with one: {packages:?}");
        }
        packages.retain(|p| o.crates.contains(p));
    }
    let bins = build(&root, &packages, o.debug_assertions)?;
    let state = load_state(&state_path)?;

    let mut done: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut not_scenarios = BTreeSet::new();
    for r in &state {
        if let Record::Chunk {
            test,
            start,
            count,
            scenario,
            ..
        } = r
        {
            if *scenario {
                done.entry(test.clone())
                    .or_default()
                    .extend(*start..start + count);
            } else {
                not_scenarios.insert(test.clone());
            }
        }
    }
    let mut queue = VecDeque::new();
    for (package, exe) in &bins {
        for test in list_tests(exe)? {
            if o.scenario
                .as_ref()
                .is_some_and(|s| !test.contains(s.as_str()))
            {
                continue;
            }
            let id = TestId {
                package: package.clone(),
                test,
            };
            if not_scenarios.contains(&id.key()) {
                continue;
            }
            let empty = BTreeSet::new();
            for (start, count) in pending_chunks(done.get(&id.key()).unwrap_or(&empty), o.seeds) {
                queue.push_back(Job {
                    id: id.clone(),
                    exe: exe.clone(),
                    start,
                    count,
                });
            }
        }
    }
    // Round-robin over tests, so that an interrupted soak has covered every scenario evenly.
    let queue = interleave(queue);
    let total = queue.len();
    println!(
        "soak: {} seeds per scenario, {total} chunks of up to {CHUNK_SEEDS} seeds to run on {} \
         jobs; state in {}",
        o.seeds,
        o.jobs,
        state_path.display()
    );
    let queue = Mutex::new(queue);
    let state_file = Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&state_path)
            .with_context(|| format!("opening {}", state_path.display()))?,
    );
    let errors = Mutex::new(Vec::new());
    let finished = Mutex::new(0usize);
    // Tests found not to be seeded scenarios in this run: their later chunks are skipped.
    let plain = Mutex::new(BTreeSet::new());
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for worker in 0..o.jobs {
            let (queue, state_file, errors, finished, scratch, plain) =
                (&queue, &state_file, &errors, &finished, &scratch, &plain);
            s.spawn(move || {
                let mut n = 0;
                loop {
                    let Some(job) = lock(queue).pop_front() else {
                        break;
                    };
                    n += 1;
                    match run_chunk(&job, scratch, worker * 1_000_000 + n) {
                        Ok(records) => {
                            if records.iter().any(|r| {
                                matches!(
                                    r,
                                    Record::Chunk {
                                        scenario: false,
                                        ..
                                    }
                                )
                            }) {
                                lock(plain).insert(job.id.key());
                            }
                            let mut f = lock(state_file);
                            for r in &records {
                                let _ = writeln!(f, "{}", r.to_json());
                            }
                            let _ = f.flush();
                            let failed = records
                                .iter()
                                .filter(|r| matches!(r, Record::Seed { ok: false, .. }))
                                .count();
                            let mut done = lock(finished);
                            *done += 1;
                            println!(
                                "[{:>5}/{total}] {:>7.0?} {} seeds {}..{}{}",
                                *done,
                                t0.elapsed(),
                                job.id.key(),
                                job.start,
                                job.start + job.count,
                                if failed > 0 {
                                    format!(": {failed} FAILED")
                                } else {
                                    String::new()
                                }
                            );
                        }
                        Err(e) => lock(errors).push(format!("{e:#}")),
                    }
                }
            });
        }
    });
    let state = load_state(&state_path)?;
    let failures = summarize(&state, o.scenario.as_deref());
    let errors = errors
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    println!("soak wall time this run: {:.1?}", t0.elapsed());
    for e in &errors {
        println!("error: {e}");
    }
    if failures > 0 || !errors.is_empty() {
        bail!(
            "soak: {failures} failing seed(s), {} error(s)",
            errors.len()
        );
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reorders jobs so that consecutive jobs belong to different tests (round-robin).
fn interleave(jobs: VecDeque<Job>) -> VecDeque<Job> {
    let mut by_test: BTreeMap<TestId, VecDeque<Job>> = BTreeMap::new();
    for j in jobs {
        by_test.entry(j.id.clone()).or_default().push_back(j);
    }
    let mut out = VecDeque::new();
    while !by_test.is_empty() {
        by_test.retain(|_, q| {
            if let Some(j) = q.pop_front() {
                out.push_back(j);
            }
            !q.is_empty()
        });
    }
    out
}

/// Prints per-scenario totals and every failing seed; returns the number of failing seeds.
fn summarize(state: &[Record], filter: Option<&str>) -> usize {
    #[derive(Default)]
    struct Totals {
        seeds: BTreeSet<u64>,
        failed: BTreeMap<u64, (String, String)>,
    }
    let mut per: BTreeMap<(String, String), Totals> = BTreeMap::new();
    let mut wall: BTreeMap<String, Duration> = BTreeMap::new();
    for r in state {
        match r {
            Record::Seed {
                test,
                scenario,
                seed,
                ok,
                message,
                replay,
            } => {
                if filter.is_some_and(|f| !test.contains(f)) {
                    continue;
                }
                let t = per.entry((test.clone(), scenario.clone())).or_default();
                t.seeds.insert(*seed);
                if *ok {
                    t.failed.remove(seed);
                } else {
                    t.failed.insert(*seed, (message.clone(), replay.clone()));
                }
            }
            Record::Chunk {
                test,
                wall_ms,
                scenario: true,
                ..
            } => {
                *wall.entry(test.clone()).or_default() += Duration::from_millis(*wall_ms);
            }
            Record::Chunk { .. } => {}
        }
    }
    println!(
        "\n{:<70} {:>8} {:>8} {:>10}",
        "scenario (test)", "seeds", "failed", "wall"
    );
    let mut failing = Vec::new();
    for ((test, scenario), t) in &per {
        let w = wall.get(test).copied().unwrap_or_default();
        println!(
            "{:<70} {:>8} {:>8} {:>9.0}s",
            format!("{scenario} ({test})"),
            t.seeds.len(),
            t.failed.len(),
            w.as_secs_f64()
        );
        for (seed, (message, replay)) in &t.failed {
            failing.push(format!(
                "{scenario} seed {seed}: {}\n    replay: {replay}",
                message.lines().next().unwrap_or_default()
            ));
        }
    }
    let total: usize = per.values().map(|t| t.seeds.len()).sum();
    println!("total: {total} scenario seeds, {} failing", failing.len());
    if !failing.is_empty() {
        println!("\nfailing seeds (the wall time of a test covers all its scenarios):");
        for f in &failing {
            println!("{f}");
        }
    }
    failing.len()
}

/// Packages with a `tests/sim.rs`.
fn sim_packages(root: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root.join("crates")).context("reading crates/")? {
        let dir = entry?.path();
        if dir.join("tests").join("sim.rs").exists()
            && let Some(name) = dir.file_name().and_then(|n| n.to_str())
        {
            out.push(name.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operator_s_signal_is_an_interruption_and_a_crash_is_not() {
        use std::os::unix::process::ExitStatusExt as _;
        use std::process::ExitStatus;
        // Raw wait statuses: the low 7 bits are the terminating signal.
        for sig in [1, 2, 15] {
            assert!(interrupted(ExitStatus::from_raw(sig)), "signal {sig}");
        }
        for crash in [6, 9, 11] {
            assert!(!interrupted(ExitStatus::from_raw(crash)), "signal {crash}");
        }
        assert!(!interrupted(ExitStatus::from_raw(101 << 8)), "exit 101");
        assert!(!interrupted(ExitStatus::from_raw(0)), "success");
    }

    #[test]
    fn pending_chunks_skip_done_seeds_and_split_the_rest() {
        let done: BTreeSet<u64> = (0..20).chain(40..45).collect();
        assert_eq!(pending_chunks(&done, 70), vec![(20, 20), (45, 20), (65, 5)]);
        assert_eq!(pending_chunks(&BTreeSet::new(), 3), vec![(0, 3)]);
        assert!(pending_chunks(&(0..10).collect(), 10).is_empty());
    }

    #[test]
    fn records_round_trip_through_json() {
        let records = [
            Record::Seed {
                test: "p::t".into(),
                scenario: "s".into(),
                seed: 7,
                ok: false,
                message: "two primaries".into(),
                replay: "QUORATE_SIM_SEED=7 cargo test".into(),
            },
            Record::Chunk {
                test: "p::t".into(),
                start: 0,
                count: 20,
                wall_ms: 1234,
                scenario: true,
            },
        ];
        for r in records {
            assert_eq!(Record::from_json(&r.to_json()), Some(r));
        }
    }

    #[test]
    fn a_later_pass_clears_an_earlier_failure_and_failures_are_counted() {
        let seed = |seed, ok| Record::Seed {
            test: "p::t".into(),
            scenario: "s".into(),
            seed,
            ok,
            message: String::new(),
            replay: String::new(),
        };
        assert_eq!(summarize(&[seed(1, false), seed(2, true)], None), 1);
        assert_eq!(summarize(&[seed(1, false), seed(1, true)], None), 0);
        assert_eq!(summarize(&[seed(1, false)], Some("other")), 0);
    }

    #[test]
    fn arguments_parse_and_bad_ones_are_named() {
        let args = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let o = parse(&args(&[
            "--seeds",
            "50",
            "--scenario",
            "raft",
            "--jobs",
            "3",
        ]))
        .expect("valid");
        assert_eq!(
            (o.seeds, o.scenario.as_deref(), o.jobs),
            (50, Some("raft"), 3)
        );
        let e = parse(&args(&["--seeds", "many"])).expect_err("not a count");
        assert!(e.to_string().contains("--seeds"), "{e}");
        let e = parse(&args(&["--frobnicate"])).expect_err("unknown");
        assert!(e.to_string().contains("usage"), "{e}");
    }
}
