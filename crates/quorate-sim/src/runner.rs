//! The seed runner: runs a scenario over a range of seeds and, on failure, reports the scenario,
//! the seed, the schedule, where the history was written and the command that replays it.
//!
//! Environment:
//! - `QUORATE_SIM_SEED=<n>`: run only seed `n` (replay);
//! - `QUORATE_SIM_SEEDS=<count>`: run seeds `start..start+count` (default: the scenario's own);
//! - `QUORATE_SIM_SEED_START=<n>`: first seed of the range (default 0);
//! - `QUORATE_SIM_OUT=<dir>`: where failing histories go (default `$TMPDIR/quorate-sim`);
//! - `QUORATE_SIM_REPORT=<file>`: soak mode (`cargo xtask soak`): run every seed even after a
//!   failure, append one JSON line per seed to the file (`scenario`, `seed`, `ok`, `message`,
//!   `replay`), then fail with the first failure.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

use crate::SimError;

/// Why one seed of a scenario failed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScenarioFailure {
    /// What went wrong (a checker's report, an error).
    pub message: String,
    /// The printed nemesis schedule, if any.
    pub schedule: Option<String>,
    /// The history as JSON, written to a file by the runner.
    pub history_json: Option<String>,
}

impl ScenarioFailure {
    /// A failure with a message only.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            ..Self::default()
        }
    }

    /// Attaches the schedule.
    #[must_use]
    pub fn with_schedule(mut self, schedule: impl fmt::Display) -> Self {
        self.schedule = Some(schedule.to_string());
        self
    }

    /// Attaches the history (JSON).
    #[must_use]
    pub fn with_history_json(mut self, json: String) -> Self {
        self.history_json = Some(json);
        self
    }
}

impl From<SimError> for ScenarioFailure {
    fn from(e: SimError) -> Self {
        Self::new(e.to_string())
    }
}

/// The report of a failed run.
#[derive(Clone, Debug)]
pub struct RunFailure {
    /// Scenario name.
    pub scenario: String,
    /// The failing seed.
    pub seed: u64,
    /// Seeds that passed before it.
    pub passed: usize,
    /// What failed.
    pub failure: ScenarioFailure,
    /// Where the history was written, if it was.
    pub history_path: Option<PathBuf>,
    /// The command that replays this seed.
    pub replay: String,
}

impl fmt::Display for RunFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "simulation scenario `{}` FAILED at seed {} ({} seeds passed before it)",
            self.scenario, self.seed, self.passed
        )?;
        writeln!(f, "{}", self.failure.message.trim_end())?;
        if let Some(s) = &self.failure.schedule {
            writeln!(f, "{}", s.trim_end())?;
        }
        if let Some(p) = &self.history_path {
            writeln!(f, "history: {}", p.display())?;
        }
        write!(f, "replay: {}", self.replay)
    }
}

/// What a passing run covered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSummary {
    /// Seeds run.
    pub seeds: Vec<u64>,
}

/// Runs one named scenario over seeds.
#[derive(Clone, Debug)]
pub struct Runner {
    scenario: String,
    package: String,
    test: String,
    default_seeds: u64,
    seed_list: Option<Vec<u64>>,
}

impl Runner {
    /// A runner for `scenario` of package `package` (pass `env!("CARGO_PKG_NAME")`); the replay
    /// command filters on the scenario name, so name the `#[test]` fn like the scenario (or set
    /// [`Runner::test_name`]). Default: 100 seeds.
    pub fn new(package: &str, scenario: &str) -> Self {
        Self {
            scenario: scenario.to_owned(),
            package: package.to_owned(),
            test: scenario.to_owned(),
            default_seeds: 100,
            seed_list: None,
        }
    }

    /// The test name the replay command filters on.
    #[must_use]
    pub fn test_name(mut self, test: &str) -> Self {
        self.test = test.to_owned();
        self
    }

    /// Seeds to run when `QUORATE_SIM_SEEDS` is not set.
    #[must_use]
    pub fn default_seeds(mut self, n: u64) -> Self {
        self.default_seeds = n;
        self
    }

    /// Runs exactly these seeds when neither `QUORATE_SIM_SEED` nor `QUORATE_SIM_SEEDS` is set
    /// (a fixed sample, e.g. seeds that once failed).
    #[must_use]
    pub fn default_seed_list(mut self, seeds: &[u64]) -> Self {
        self.seed_list = Some(seeds.to_vec());
        self
    }

    /// The command that replays `seed`.
    pub fn replay_command(&self, seed: u64) -> String {
        format!(
            "QUORATE_SIM_SEED={seed} cargo test -p {} --test sim {} -- --nocapture",
            self.package, self.test
        )
    }

    /// The seeds chosen by the environment (see the module docs).
    ///
    /// # Errors
    /// [`SimError::Config`] when a variable is not a number.
    pub fn seeds(&self) -> Result<Vec<u64>, SimError> {
        let var = |name: &str| -> Result<Option<u64>, SimError> {
            match std::env::var(name) {
                Ok(v) => v.trim().parse().map(Some).map_err(|_| {
                    SimError::Config(format!("{name}={v:?} is not a non-negative integer"))
                }),
                Err(_) => Ok(None),
            }
        };
        if let Some(seed) = var("QUORATE_SIM_SEED")? {
            return Ok(vec![seed]);
        }
        let count = match (var("QUORATE_SIM_SEEDS")?, &self.seed_list) {
            (Some(n), _) => n,
            (None, Some(list)) => return Ok(list.clone()),
            (None, None) => self.default_seeds,
        };
        let start = var("QUORATE_SIM_SEED_START")?.unwrap_or(0);
        Ok((start..start.saturating_add(count)).collect())
    }

    /// Runs `scenario` for every seed, stopping at the first failure (a panic counts as one).
    ///
    /// # Errors
    /// [`RunFailure`] naming the seed, with the schedule, history file and replay command.
    pub fn try_run<F>(&self, mut scenario: F) -> Result<RunSummary, Box<RunFailure>>
    where
        F: FnMut(u64) -> Result<(), ScenarioFailure>,
    {
        let seeds = self.seeds().map_err(|e| self.failure(0, 0, e.into()))?;
        if let Some(report) = std::env::var_os("QUORATE_SIM_REPORT") {
            return self.run_reporting(&seeds, &mut scenario, &PathBuf::from(report));
        }
        self.try_run_seeds(&seeds, &mut scenario)?;
        Ok(RunSummary { seeds })
    }

    /// Soak mode (see the module docs): every seed runs, each outcome is appended to `report`.
    fn run_reporting<F>(
        &self,
        seeds: &[u64],
        scenario: &mut F,
        report: &std::path::Path,
    ) -> Result<RunSummary, Box<RunFailure>>
    where
        F: FnMut(u64) -> Result<(), ScenarioFailure>,
    {
        let mut first_failure = None;
        for (passed, &seed) in seeds.iter().enumerate() {
            let outcome = catch_unwind(AssertUnwindSafe(|| scenario(seed)))
                .unwrap_or_else(|p| Err(ScenarioFailure::new(panic_text(p.as_ref()))));
            let line = serde_json::json!({
                "scenario": self.scenario,
                "seed": seed,
                "ok": outcome.is_ok(),
                "message": outcome.as_ref().err().map(|f| f.message.clone()),
                "replay": self.replay_command(seed),
            });
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(report)
                .and_then(|mut f| {
                    use std::io::Write as _;
                    writeln!(f, "{line}")
                });
            if let Err(e) = written {
                return Err(self.failure(
                    seed,
                    passed,
                    ScenarioFailure::new(format!(
                        "cannot append to QUORATE_SIM_REPORT={}: {e}",
                        report.display()
                    )),
                ));
            }
            if let Err(f) = outcome
                && first_failure.is_none()
            {
                first_failure = Some(self.failure(seed, passed, f));
            }
        }
        match first_failure {
            Some(f) => Err(f),
            None => Ok(RunSummary {
                seeds: seeds.to_vec(),
            }),
        }
    }

    /// Runs `scenario` for the given seeds (ignoring the environment).
    ///
    /// # Errors
    /// As [`Runner::try_run`].
    pub fn try_run_seeds<F>(&self, seeds: &[u64], scenario: &mut F) -> Result<(), Box<RunFailure>>
    where
        F: FnMut(u64) -> Result<(), ScenarioFailure>,
    {
        for (passed, &seed) in seeds.iter().enumerate() {
            let outcome = catch_unwind(AssertUnwindSafe(|| scenario(seed)))
                .unwrap_or_else(|p| Err(ScenarioFailure::new(panic_text(p.as_ref()))));
            if let Err(f) = outcome {
                return Err(self.failure(seed, passed, f));
            }
        }
        Ok(())
    }

    /// Runs `scenario` over the seeds and panics with the full report on failure (for `#[test]`).
    #[track_caller]
    pub fn run<F>(&self, scenario: F) -> RunSummary
    where
        F: FnMut(u64) -> Result<(), ScenarioFailure>,
    {
        match self.try_run(scenario) {
            Ok(s) => s,
            Err(f) => panic!("{f}"),
        }
    }

    fn failure(&self, seed: u64, passed: usize, failure: ScenarioFailure) -> Box<RunFailure> {
        let history_path = failure
            .history_json
            .as_ref()
            .and_then(|json| self.write_history(seed, json));
        Box::new(RunFailure {
            scenario: self.scenario.clone(),
            seed,
            passed,
            failure,
            history_path,
            replay: self.replay_command(seed),
        })
    }

    fn write_history(&self, seed: u64, json: &str) -> Option<PathBuf> {
        let dir = std::env::var_os("QUORATE_SIM_OUT")
            .map_or_else(|| std::env::temp_dir().join("quorate-sim"), PathBuf::from);
        std::fs::create_dir_all(&dir).ok()?;
        let path = dir.join(format!("{}-seed{seed}.json", self.scenario));
        std::fs::write(&path, json).ok()?;
        Some(path)
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = p.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_seed_schedule_and_replay() {
        let r = Runner::new("quorate-sim", "toy").default_seeds(5);
        let mut n = 0;
        let res = r.try_run_seeds(&[0, 1, 2, 3], &mut |seed| {
            n += 1;
            if seed == 2 {
                Err(ScenarioFailure::new("stale read").with_schedule("@ 10ms crash n1"))
            } else {
                Ok(())
            }
        });
        let Err(f) = res else {
            panic!("expected a failure")
        };
        assert_eq!((f.seed, f.passed, n), (2, 2, 3));
        let text = f.to_string();
        assert!(text.contains("`toy` FAILED at seed 2"), "{text}");
        assert!(text.contains("@ 10ms crash n1"), "{text}");
        assert!(
            text.contains("replay: QUORATE_SIM_SEED=2 cargo test -p quorate-sim --test sim toy"),
            "{text}"
        );
    }

    #[test]
    #[allow(clippy::unwrap_used, reason = "test")]
    fn report_mode_runs_every_seed_and_records_each() {
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("report.jsonl");
        let r = Runner::new("quorate-sim", "toy");
        let mut ran = Vec::new();
        let res = r.run_reporting(
            &[4, 5, 6],
            &mut |seed| {
                ran.push(seed);
                if seed == 5 {
                    Err(ScenarioFailure::new("bad"))
                } else {
                    Ok(())
                }
            },
            &report,
        );
        assert_eq!(ran, [4, 5, 6], "runs on after a failure");
        assert_eq!(res.unwrap_err().seed, 5);
        let text = std::fs::read_to_string(&report).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1]["seed"], 5);
        assert_eq!(lines[1]["ok"], false);
        assert_eq!(lines[1]["message"], "bad");
        assert_eq!(lines[0]["ok"], true);
        assert!(
            lines[1]["replay"]
                .as_str()
                .unwrap()
                .starts_with("QUORATE_SIM_SEED=5 cargo test -p quorate-sim")
        );
    }

    #[test]
    fn panics_are_failures() {
        let r = Runner::new("quorate-sim", "boom");
        let res = r.try_run_seeds(&[7], &mut |_| -> Result<(), ScenarioFailure> {
            panic!("host exploded")
        });
        let Err(f) = res else {
            panic!("expected a failure")
        };
        assert_eq!(f.seed, 7);
        assert!(f.failure.message.contains("host exploded"));
    }
}
