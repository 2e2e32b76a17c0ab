//! The hook log written by the chaos harness's role hooks, and the checker that judges it.
//!
//! Each line is `<ns> <node> <kind> <token>`: a wall-clock stamp in nanoseconds (taken by a
//! process that runs without libfaketime, so every node's lines share one clock), the node, one
//! of `promote` (the `on_promote` hook: the node presents its fencing token to the resource),
//! `act` (the role's application did one action while primary) or `demote` (the `on_demote`
//! hook ran and the application has stopped), and the fencing token of the term.
//!
//! [`check`] decides "at most one primary acted at a time" like this. A *term* is a token's
//! promote, its acts and its demote. The resource is modelled as a fencing store that has seen
//! the highest token promoted so far: an action (promote or act) of token `A` stamped at or after
//! the promote of a higher token `B` is *stale*. A stale action is
//! - **fenced** (counted, allowed) when the term's node was under a fault that a lease cannot
//!   cover during the term: paused (SIGSTOP) or running on a slowed clock (libfaketime, beyond
//!   the configured drift bound). A real resource rejects it, because its token is lower;
//! - a **violation** otherwise (crash, partition, healthy nodes): there the lease alone must keep
//!   the old primary's last action strictly before the new primary's promote.
//!
//! A term may be suspended and resumed under the same token (the lease keeper stops the
//! application at the holder deadline, then a renew succeeds): `demote` then `promote` again by
//! the same node. Further violations: a token promoted by two nodes or again while open, an
//! action of a term before its promote or between a demote and the next promote, or after
//! its demote, and a term that never ended (no `demote`) although its node was not killed during
//! it (a paused, partitioned or slow primary must step down by itself once it can).
// tidy:pure-core

use std::collections::BTreeMap;
use std::fmt;

/// What a hook-log line records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `on_promote` ran: the node presents its token.
    Promote,
    /// The application acted with the token.
    Act,
    /// `on_demote` ran and the application has stopped.
    Demote,
}

/// One hook-log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Wall-clock stamp, nanoseconds since the Unix epoch.
    pub at_ns: u64,
    /// The node that wrote it.
    pub node: String,
    /// What happened.
    pub kind: Kind,
    /// The fencing token of the term.
    pub token: u64,
}

/// Parses a hook log; a line that does not parse is an error naming the line.
pub fn parse(text: &str) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || {
            format!(
                "hook log line {}: {line:?} is not `<ns> <node> <kind> <token>`",
                i + 1
            )
        };
        let f: Vec<&str> = line.split_whitespace().collect();
        let [at, node, kind, token] = f.as_slice() else {
            return Err(bad());
        };
        let kind = match *kind {
            "promote" => Kind::Promote,
            "act" => Kind::Act,
            "demote" => Kind::Demote,
            _ => return Err(bad()),
        };
        out.push(Entry {
            at_ns: at.parse().map_err(|_| bad())?,
            node: (*node).to_owned(),
            kind,
            token: token.parse().map_err(|_| bad())?,
        });
    }
    Ok(out)
}

/// A fault the harness injected, with its wall-clock window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// SIGKILL of the node's process group (agent, hooks, application).
    Kill,
    /// SIGSTOP of the node's process group, until SIGCONT.
    Pause,
    /// nftables drop at the node's input of every peer's address, until healed.
    Partition,
    /// The agent ran under libfaketime at a slowed rate.
    SlowClock,
}

impl FaultKind {
    /// A fault that a lease cannot cover, so stale actions are expected and must be fenced.
    pub fn excuses(self) -> bool {
        matches!(self, FaultKind::Pause | FaultKind::SlowClock)
    }
}

/// One injected fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The node it hit.
    pub node: String,
    /// What it was.
    pub kind: FaultKind,
    /// When it began (ns).
    pub from_ns: u64,
    /// When it ended (ns); `None`: still on at the end of the run.
    pub to_ns: Option<u64>,
}

/// One term: a token's promote, acts and demote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    /// The fencing token.
    pub token: u64,
    /// The node that held it.
    pub node: String,
    /// Its promote stamp.
    pub promote_ns: u64,
    /// Its last action (promote or act).
    pub last_action_ns: u64,
    /// Its last demote stamp, if its last segment ended cleanly.
    pub demote_ns: Option<u64>,
    /// Number of `act` lines.
    pub acts: usize,
    /// Its node was under a fault that excuses stale actions.
    pub excused: bool,
    /// Stale actions of this term (fenced if excused, violations otherwise).
    pub stale: usize,
    /// Promotes with this token: more than one when the lease keeper suspended the term (no
    /// renew acknowledged by the holder deadline) and resumed it under the same token.
    pub segments: usize,
}

/// What [`check`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Every term, in promote order.
    pub terms: Vec<Term>,
    /// Stale actions of excused terms: a fencing resource rejects them.
    pub fenced: usize,
    /// Every broken rule, one sentence each.
    pub violations: Vec<String>,
    /// Smallest `next promote - previous term's last action` over consecutive terms (ns,
    /// negative when they overlap).
    pub min_gap_ns: Option<i128>,
}

impl Report {
    /// Promotes, in order.
    pub fn promotions(&self) -> usize {
        self.terms.len()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} terms, {} stale actions fenced, {} violations, min handover gap {}",
            self.terms.len(),
            self.fenced,
            self.violations.len(),
            self.min_gap_ns
                .map_or("-".to_owned(), |g| format!("{:.1} ms", g as f64 / 1e6)),
        )?;
        let t0 = self.terms.first().map_or(0, |t| t.promote_ns);
        let ms = |ns: u64| (ns.saturating_sub(t0)) as f64 / 1e6;
        for t in &self.terms {
            writeln!(
                f,
                "  token {:>6} {:<4} promote {:>10.1} ms  last action {:>10.1} ms  demote {:>12}  acts {:>4}{}{}",
                t.token,
                t.node,
                ms(t.promote_ns),
                ms(t.last_action_ns),
                t.demote_ns
                    .map_or("-".to_owned(), |d| format!("{:.1} ms", ms(d))),
                t.acts,
                if t.excused { "  (excused fault)" } else { "" },
                if t.stale > 0 {
                    format!("  stale {}", t.stale)
                } else {
                    String::new()
                },
            )?;
        }
        for v in &self.violations {
            writeln!(f, "  VIOLATION: {v}")?;
        }
        Ok(())
    }
}

fn overlaps(f: &Fault, from: u64, to: u64) -> bool {
    f.from_ns <= to && f.to_ns.is_none_or(|e| e >= from)
}

/// Checks a hook log against the rules in the module documentation. `end_ns` is the end of the
/// run (terms still open then are judged against the faults).
pub fn check(entries: &[Entry], faults: &[Fault], end_ns: u64) -> Report {
    let mut report = Report::default();
    let mut entries: Vec<&Entry> = entries.iter().collect();
    entries.sort_by_key(|e| (e.at_ns, e.kind));

    // Terms from their first promotes.
    let mut terms: BTreeMap<u64, Term> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.kind == Kind::Promote) {
        terms.entry(e.token).or_insert_with(|| Term {
            token: e.token,
            node: e.node.clone(),
            promote_ns: e.at_ns,
            last_action_ns: e.at_ns,
            demote_ns: None,
            acts: 0,
            excused: false,
            stale: 0,
            segments: 0,
        });
    }
    // Walk every line in time order; a term may be suspended (demote) and resumed (promote
    // with the same token, same node) when its lease survived a coordination election.
    let mut open: BTreeMap<u64, bool> = BTreeMap::new();
    for e in &entries {
        let Some(t) = terms.get_mut(&e.token) else {
            report.violations.push(format!(
                "{} wrote {:?} with token {} that was never promoted",
                e.node, e.kind, e.token
            ));
            continue;
        };
        if e.node != t.node {
            report.violations.push(format!(
                "{} wrote {:?} with token {} held by {}",
                e.node, e.kind, e.token, t.node
            ));
            continue;
        }
        let is_open = open.entry(e.token).or_insert(false);
        match e.kind {
            Kind::Promote => {
                if *is_open {
                    report.violations.push(format!(
                        "{} promoted token {} again while acting with it",
                        e.node, e.token
                    ));
                }
                *is_open = true;
                t.segments += 1;
                t.demote_ns = None;
                t.last_action_ns = t.last_action_ns.max(e.at_ns);
            }
            Kind::Act => {
                if !*is_open {
                    report.violations.push(if t.segments == 0 {
                        format!("{} acted with token {} before its promote", e.node, e.token)
                    } else {
                        format!("{} acted with token {} after its demote", e.node, e.token)
                    });
                }
                t.acts += 1;
                t.last_action_ns = t.last_action_ns.max(e.at_ns);
            }
            Kind::Demote => {
                if !*is_open {
                    report
                        .violations
                        .push(format!("{} demoted token {} twice", e.node, e.token));
                }
                *is_open = false;
                t.demote_ns = Some(e.at_ns);
            }
        }
    }
    // Excuses and unended terms.
    for t in terms.values_mut() {
        let end = t.demote_ns.unwrap_or(end_ns).max(t.last_action_ns);
        let mine = |k: FaultKind| {
            faults
                .iter()
                .any(|f| f.node == t.node && f.kind == k && overlaps(f, t.promote_ns, end))
        };
        t.excused = faults
            .iter()
            .any(|f| f.node == t.node && f.kind.excuses() && overlaps(f, t.promote_ns, end));
        if t.demote_ns.is_none() && !mine(FaultKind::Kill) {
            report.violations.push(format!(
                "{}'s term with token {} never ended (no on_demote) although the node was not killed",
                t.node, t.token
            ));
        }
    }
    // Staleness: the highest token promoted at or before each instant.
    let mut by_promote: Vec<(u64, u64)> = terms.values().map(|t| (t.promote_ns, t.token)).collect();
    by_promote.sort_unstable();
    let mut prefix_max = Vec::with_capacity(by_promote.len());
    let mut hi = 0;
    for (at, tok) in &by_promote {
        hi = hi.max(*tok);
        prefix_max.push((*at, hi));
    }
    let newest_at = |at: u64| -> Option<u64> {
        let n = prefix_max.partition_point(|(p, _)| *p <= at);
        n.checked_sub(1).map(|i| prefix_max[i].1)
    };
    for e in entries.iter().filter(|e| e.kind != Kind::Demote) {
        let Some(t) = terms.get_mut(&e.token) else {
            continue;
        };
        if e.node != t.node || newest_at(e.at_ns).is_none_or(|hi| hi <= e.token) {
            continue;
        }
        t.stale += 1;
        if t.excused {
            report.fenced += 1;
        } else if t.stale == 1 {
            let newer = by_promote
                .iter()
                .find(|(at, tok)| *at <= e.at_ns && *tok > e.token)
                .map_or(0, |x| x.1);
            let holder = terms.get(&newer).map_or("?".to_owned(), |n| n.node.clone());
            report.violations.push(format!(
                "{} acted ({:?}) with token {} at {} ns, after {holder} was promoted with the \
                 higher token {newer}: two primaries acted at once and no fault excuses it",
                e.node, e.kind, e.token, e.at_ns
            ));
        }
    }
    let mut list: Vec<Term> = terms.into_values().collect();
    list.sort_by_key(|t| t.promote_ns);
    report.min_gap_ns = list
        .windows(2)
        .map(|w| i128::from(w[1].promote_ns) - i128::from(w[0].last_action_ns))
        .min();
    report.terms = list;
    report
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    fn log(lines: &[&str]) -> Vec<Entry> {
        parse(&lines.join("\n")).unwrap()
    }

    fn fault(node: &str, kind: FaultKind, from: u64, to: Option<u64>) -> Fault {
        Fault {
            node: node.into(),
            kind,
            from_ns: from,
            to_ns: to,
        }
    }

    #[test]
    fn parse_rejects_bad_lines() {
        assert!(parse("1 n1 promote 5\n2 n1 act 5\n").is_ok());
        for bad in ["1 n1 promote", "x n1 act 5", "1 n1 jump 5", "1 n1 act 5 6"] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("line 1"), "{e}");
        }
    }

    #[test]
    fn clean_handover_passes() {
        let r = check(
            &log(&[
                "100 n1 promote 5",
                "110 n1 act 5",
                "120 n1 demote 5",
                "200 n2 promote 9",
                "210 n2 act 9",
                "220 n2 demote 9",
            ]),
            &[],
            1000,
        );
        assert!(r.violations.is_empty(), "{r}");
        assert_eq!(r.promotions(), 2);
        assert_eq!(r.fenced, 0);
        assert_eq!(r.min_gap_ns, Some(90));
    }

    #[test]
    fn overlap_without_excuse_is_a_violation() {
        let entries = log(&[
            "100 n1 promote 5",
            "210 n1 act 5",
            "200 n2 promote 9",
            "300 n1 demote 5",
            "400 n2 demote 9",
        ]);
        // Partitioned: the lease must have stopped n1 before n2's promote.
        let r = check(
            &entries,
            &[fault("n1", FaultKind::Partition, 150, Some(250))],
            1000,
        );
        assert_eq!(r.violations.len(), 1, "{r}");
        assert!(r.violations[0].contains("two primaries"), "{r}");
        assert!(r.min_gap_ns.is_some_and(|g| g < 0));
        // Paused: the stale act is fenced, not a violation.
        let r = check(
            &entries,
            &[fault("n1", FaultKind::Pause, 150, Some(205))],
            1000,
        );
        assert!(r.violations.is_empty(), "{r}");
        assert_eq!(r.fenced, 1);
    }

    #[test]
    fn lower_token_promoted_later_is_stale() {
        let entries = log(&[
            "100 n2 promote 9",
            "150 n1 promote 5",
            "160 n1 demote 5",
            "300 n2 demote 9",
        ]);
        let r = check(&entries, &[], 1000);
        assert_eq!(r.violations.len(), 1, "{r}");
        let r = check(
            &entries,
            &[fault("n1", FaultKind::SlowClock, 0, None)],
            1000,
        );
        assert!(r.violations.is_empty(), "{r}");
        assert_eq!(r.fenced, 1);
    }

    #[test]
    fn suspended_and_resumed_term_keeps_its_token() {
        let r = check(
            &log(&[
                "100 n1 promote 5",
                "110 n1 act 5",
                "150 n1 demote 5",
                "160 n1 promote 5",
                "170 n1 act 5",
                "200 n1 demote 5",
            ]),
            &[],
            1000,
        );
        assert!(r.violations.is_empty(), "{r}");
        assert_eq!(r.terms[0].segments, 2);
        let r = check(
            &log(&[
                "100 n1 promote 5",
                "150 n1 demote 5",
                "155 n1 act 5",
                "160 n1 promote 5",
            ]),
            &[],
            1000,
        );
        assert!(
            r.violations.iter().any(|v| v.contains("after its demote")),
            "{r}"
        );
    }

    #[test]
    fn unended_terms_need_a_kill() {
        let entries = log(&["100 n1 promote 5", "110 n1 act 5", "200 n2 promote 9"]);
        let r = check(
            &entries,
            &[fault("n1", FaultKind::Kill, 150, Some(150))],
            1000,
        );
        assert_eq!(r.violations.len(), 1, "n2's open term: {r}");
        assert!(r.violations[0].contains("n2"), "{r}");
        let r = check(
            &entries,
            &[
                fault("n1", FaultKind::Kill, 150, Some(150)),
                fault("n2", FaultKind::Kill, 900, Some(900)),
            ],
            1000,
        );
        assert!(r.violations.is_empty(), "{r}");
    }

    #[test]
    fn structural_errors_are_reported() {
        let r = check(
            &log(&[
                "100 n1 promote 5",
                "90 n1 act 5",
                "120 n1 demote 5",
                "130 n1 act 5",
                "140 n2 promote 5",
                "145 n1 demote 5",
                "150 n3 act 7",
            ]),
            &[],
            1000,
        );
        let all = r.violations.join("\n");
        for needle in [
            "before its promote",
            "after its demote",
            "held by n1",
            "never promoted",
            "demoted token 5 twice",
        ] {
            assert!(all.contains(needle), "{needle} missing:\n{all}");
        }
    }
}
