//! Byte-for-byte replay: run a scenario twice for one seed and compare what happened.
//!
//! A failing seed is only useful if it replays. [`check_replay`] runs a scenario twice with a
//! [`Trace`] recorder installed and compares the two traces line by line. A trace is every
//! `tracing` event of the run (turmoil logs every segment and datagram it sends and delivers,
//! with the payload in hex, at `trace` level; quorate's crates log their decisions at `debug`),
//! each with the simulated time and the span it ran in, plus the scenario's own verdict. Two
//! runs of a deterministic simulation produce identical traces.
//!
//! Between the two runs the checker disturbs the process-wide state a simulation must not
//! depend on: it advances tokio's global task-id counter by one (a crash drops a host's tasks in
//! an order that depended on it, see [`crate::net`]) and creates a fresh std `RandomState` (its
//! per-thread keys advance on every creation, so `HashMap` iteration order changes from run to
//! run). A simulation that depends on either diverges here instead of in a replay.

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer};

use crate::runner::ScenarioFailure;

/// What one run recorded: one line per `tracing` event, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    /// The events, formatted as `<spans> <LEVEL> <target>: <fields>`.
    pub lines: Vec<String>,
}

impl Trace {
    /// The first line where `self` and `other` differ (or where one ends), if any.
    pub fn first_difference(&self, other: &Self) -> Option<usize> {
        let common = self.lines.len().min(other.lines.len());
        (0..common)
            .find(|&i| self.lines[i] != other.lines[i])
            .or((self.lines.len() != other.lines.len()).then_some(common))
    }

    /// Lines `from..to` (clamped), numbered, for a report.
    fn excerpt(&self, from: usize, to: usize) -> String {
        let mut out = String::new();
        for (i, line) in self
            .lines
            .iter()
            .enumerate()
            .take(to.min(self.lines.len()))
            .skip(from)
        {
            let shown: String = line.chars().take(400).collect();
            let _ = writeln!(out, "  {i:>7} {shown}");
        }
        out
    }
}

/// The filter of a recorded run: every turmoil network event, quorate's crates at `debug`,
/// everything else at `warn`, openraft not at all: its log lines show instants as local wall
/// time (`@10:43:40.418561`, from the real clock), and its behaviour is in the network trace.
pub const TRACE_FILTER: &str = "warn,openraft=off,turmoil=trace,quorate=debug,quorate_raft=debug,\
quorate_failover=debug,quorate_membership=debug,quorate_state=debug,quorate_wire=debug,\
quorate_health=debug,quorate_sim=debug";

thread_local! {
    /// The trace being recorded on this thread, if any.
    static RECORDING: std::cell::RefCell<Option<Vec<String>>> =
        const { std::cell::RefCell::new(None) };
}

/// Installs the recording subscriber as the process's global default, once. A scoped
/// (`with_default`) subscriber is not enough: tracing caches each callsite's interest
/// process-wide, and a callsite first reached by another test thread while no recorder was
/// alive stayed disabled, so a trace lost events depending on what ran in parallel.
fn install() -> Result<(), String> {
    static INSTALLED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let subscriber = tracing_subscriber::registry()
                .with(EnvFilter::new(TRACE_FILTER))
                .with(Recorder);
            tracing::subscriber::set_global_default(subscriber).map_err(|e| {
                format!(
                    "the replay recorder must be the global tracing subscriber, but one is \
                     already installed ({e}); do not install one in simulation test binaries"
                )
            })
        })
        .clone()
}

/// Runs `f` recording this thread's `tracing` events and returns its result and the trace.
///
/// # Errors
/// When another global `tracing` subscriber was installed in this process first.
pub fn record<T>(f: impl FnOnce() -> T) -> Result<(T, Trace), ScenarioFailure> {
    install().map_err(ScenarioFailure::new)?;
    RECORDING.with(|r| *r.borrow_mut() = Some(Vec::new()));
    let out = f();
    let lines = RECORDING
        .with(|r| r.borrow_mut().take())
        .unwrap_or_default();
    Ok((out, Trace { lines }))
}

/// What two identical runs of a seed showed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replayed {
    /// The scenario's own verdict (the same in both runs).
    pub verdict: Result<(), ScenarioFailure>,
    /// Trace lines per run.
    pub lines: usize,
}

/// Runs `scenario(seed)` twice (disturbing process-wide state in between, see the module docs)
/// and fails unless both runs recorded identical traces and reached the same verdict. Whether
/// the scenario itself passed is in [`Replayed::verdict`]: a scenario expected to fail (a
/// broken variant the checkers must catch) must replay too.
///
/// # Errors
/// A [`ScenarioFailure`] showing the first differing trace line of each run with context.
pub fn check_replay<F>(seed: u64, mut scenario: F) -> Result<Replayed, ScenarioFailure>
where
    F: FnMut(u64) -> Result<(), ScenarioFailure>,
{
    let (first_verdict, first) = record(|| scenario(seed))?;
    disturb_process_state();
    let (second_verdict, second) = record(|| scenario(seed))?;
    if first.lines.len() < 10 {
        return Err(ScenarioFailure::new(format!(
            "seed {seed}: the run recorded only {} trace lines; the replay check proves nothing",
            first.lines.len()
        )));
    }
    if let Some(at) = first.first_difference(&second) {
        let from = at.saturating_sub(5);
        return Err(ScenarioFailure::new(format!(
            "seed {seed} does not replay: the two runs' traces ({} and {} lines) first differ at \
             line {at}\nfirst run:\n{}second run:\n{}",
            first.lines.len(),
            second.lines.len(),
            first.excerpt(from, at + 3),
            second.excerpt(from, at + 3),
        )));
    }
    let verdict = |v: &Result<(), ScenarioFailure>| match v {
        Ok(()) => "passed".to_owned(),
        Err(e) => format!("failed: {}", e.message),
    };
    if first_verdict != second_verdict {
        return Err(ScenarioFailure::new(format!(
            "seed {seed} does not replay: identical traces but the first run {} and the second {}",
            verdict(&first_verdict),
            verdict(&second_verdict)
        )));
    }
    Ok(Replayed {
        verdict: first_verdict,
        lines: first.lines.len(),
    })
}

/// A seeded [`quorate_wire::RandomSource`] for a node's or client's `WireConfig::random`:
/// session ids and challenges become a function of `seed`, so the bytes on the wire replay.
/// Pass a different seed to every host (e.g. `NodeCtx::seed`, which also changes per
/// incarnation).
pub fn seeded_random(seed: u64) -> quorate_wire::RandomSource {
    use rand::{RngCore, SeedableRng};
    let rng = std::sync::Mutex::new(rand::rngs::StdRng::seed_from_u64(seed));
    std::sync::Arc::new(move |buf: &mut [u8]| {
        crate::lock(&rng).fill_bytes(buf);
        Ok(())
    })
}

/// Advances the process-wide state that a simulation must not depend on: tokio's task-id
/// counter (by one task) and std's per-thread `RandomState` keys.
pub fn disturb_process_state() {
    if let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() {
        drop(rt.spawn(async {}));
    }
    drop(std::hash::RandomState::new());
}

/// The layer that appends events to this thread's [`RECORDING`], when there is one.
struct Recorder;

/// The formatted fields of a span, kept in its extensions.
struct SpanFields(String);

struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, " {}={value}", field.name());
    }
}

impl<S> Layer<S> for Recorder
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn register_callsite(
        &self,
        _meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        // Decided per event by `enabled`: only threads that record want events.
        tracing::subscriber::Interest::sometimes()
    }

    fn enabled(&self, _meta: &tracing::Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        RECORDING.with(|r| r.borrow().is_some())
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        if let Some(span) = ctx.span(id) {
            let mut s = String::new();
            attrs.record(&mut Fields(&mut s));
            span.extensions_mut().insert(SpanFields(s));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        // No timestamp: turmoil's `step N` events mark simulated time, and
        // `turmoil::sim_elapsed` is not simulated time outside a host's runtime (during a crash
        // or a bounce it mixes in the real clock).
        let mut line = String::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                let _ = write!(line, "{}{{", span.name());
                if let Some(f) = span.extensions().get::<SpanFields>() {
                    line.push_str(f.0.trim_start());
                }
                line.push_str("} ");
            }
        }
        let meta = event.metadata();
        let _ = write!(line, "{} {}:", meta.level(), meta.target());
        event.record(&mut Fields(&mut line));
        let line = mask_instants(line);
        RECORDING.with(|r| {
            if let Some(lines) = r.borrow_mut().as_mut() {
                lines.push(line);
            }
        });
    }
}

/// Replaces every `Instant { tv_sec: .., tv_nsec: .. }` (the `Debug` of a std or tokio
/// instant) by `Instant {..}`: a paused tokio clock starts at the real monotonic time when the
/// host's runtime is built, so absolute instants differ between runs while every duration
/// between them is simulated and replays.
fn mask_instants(line: String) -> String {
    const OPEN: &str = "Instant { tv_sec: ";
    if !line.contains(OPEN) {
        return line;
    }
    let mut out = String::with_capacity(line.len());
    let mut rest = line.as_str();
    while let Some(at) = rest.find(OPEN) {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        match after.find('}') {
            Some(end) => {
                out.push_str("Instant {..}");
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(after);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_events_in_order_with_spans() {
        let ((), trace) = record(|| {
            let span = tracing::info_span!("node", name = "n1");
            let _g = span.enter();
            tracing::info!(target: "quorate_sim", x = 1, "hello");
            tracing::debug!(target: "quorate_sim", "second");
            tracing::trace!(target: "quorate_sim", "filtered out");
        })
        .expect("recorder installs");
        assert_eq!(
            trace.lines,
            vec![
                "node{name=n1} INFO quorate_sim: message=hello x=1".to_owned(),
                "node{name=n1} DEBUG quorate_sim: message=second".to_owned(),
            ]
        );
    }

    #[test]
    fn instants_are_masked() {
        assert_eq!(
            mask_instants(
                "a utime: Some(Instant { tv_sec: 12061, tv_nsec: 990184238 }) b Instant { tv_sec: 1, tv_nsec: 2 }".into()
            ),
            "a utime: Some(Instant {..}) b Instant {..}"
        );
        assert_eq!(mask_instants("no instant".into()), "no instant");
    }

    fn lines(v: &[&str]) -> Trace {
        Trace {
            lines: v.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn first_difference_finds_changes_and_truncation() {
        let a = lines(&["a", "b", "c"]);
        assert_eq!(a.first_difference(&a), None);
        assert_eq!(a.first_difference(&lines(&["a", "x", "c"])), Some(1));
        assert_eq!(a.first_difference(&lines(&["a", "b"])), Some(2));
        assert_eq!(lines(&["a"]).first_difference(&a), Some(1));
    }

    /// A scenario whose trace depends on process-wide state (here: `HashMap` iteration order,
    /// which changes with every `RandomState`) is caught; a deterministic one passes.
    #[test]
    fn check_replay_catches_a_process_state_dependency() {
        let deterministic = |seed: u64| {
            for i in 0..20u64 {
                tracing::info!(target: "quorate_sim", v = seed * 100 + i, "step");
            }
            Ok(())
        };
        assert_eq!(
            check_replay(4, deterministic),
            Ok(Replayed {
                verdict: Ok(()),
                lines: 20
            })
        );
        let failing = |_seed: u64| {
            for i in 0..20u64 {
                tracing::info!(target: "quorate_sim", i, "step");
            }
            Err(ScenarioFailure::new("checker says no"))
        };
        let replayed = check_replay(4, failing).expect("a failing scenario can replay");
        assert_eq!(
            replayed.verdict,
            Err(ScenarioFailure::new("checker says no"))
        );

        let hash_ordered = |_seed: u64| {
            let m: std::collections::HashMap<u64, ()> = (0..64).map(|i| (i, ())).collect();
            for k in m.keys() {
                tracing::info!(target: "quorate_sim", k, "key");
            }
            Ok(())
        };
        let err = check_replay(4, hash_ordered).expect_err("hash order must be caught");
        assert!(err.message.contains("does not replay"), "{}", err.message);
        assert!(
            err.message.contains("first differ at line"),
            "{}",
            err.message
        );

        let verdict_flips = {
            let mut n = 0u64;
            move |_seed: u64| {
                n += 1;
                for i in 0..20u64 {
                    tracing::info!(target: "quorate_sim", i, "step");
                }
                if n.is_multiple_of(2) {
                    Err(ScenarioFailure::new("second run failed"))
                } else {
                    Ok(())
                }
            }
        };
        let err = check_replay(4, verdict_flips).expect_err("verdicts differ");
        assert!(err.message.contains("identical traces"), "{}", err.message);
    }
}
