//! Quorum arithmetic and split-brain detection over the configured voter set.
//!
//! Given which members this node sees as reachable and the views other voters publish, decide
//! whether this node sees a majority, and whether the cluster is split: this node in a minority,
//! or two voters that both claim a majority while one of them counts the other as unreachable
//! (a partial partition). A conflict is reported only after it has lasted `conflict_grace`, so
//! the gossip delay between a change and the views that reflect it does not raise alarms.

// tidy:pure-core

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use quorate_membership_api::{MembershipEvent, QuorumStatus, SplitBrainStatus, majority};
use quorate_types::NodeId;
use tokio::time::Instant;

use crate::records::ViewEntry;

/// Tracks this node's quorum view and split-brain status.
#[derive(Debug, Clone)]
pub struct QuorumTracker {
    status: QuorumStatus,
    split: SplitBrainStatus,
    candidate: Option<(NodeId, NodeId, Instant)>,
    grace: Duration,
    own_view: BTreeSet<NodeId>,
}

impl QuorumTracker {
    /// A tracker for `voters`, starting with nothing reachable.
    pub fn new(voters: BTreeSet<NodeId>, conflict_grace: Duration, now: Instant) -> Self {
        let split = if voters.is_empty() {
            SplitBrainStatus::NotConfigured
        } else {
            SplitBrainStatus::InMinority {
                reachable: 0,
                needed: QuorumStatus::majority_of(voters.len()),
                since: now,
            }
        };
        Self {
            status: QuorumStatus {
                voters_known: voters.len(),
                voters,
                voters_reachable: 0,
                has_majority: false,
                since: now,
            },
            split,
            candidate: None,
            grace: conflict_grace,
            own_view: BTreeSet::new(),
        }
    }

    /// The current quorum status.
    pub fn status(&self) -> &QuorumStatus {
        &self.status
    }

    /// The current split-brain status.
    pub fn split_brain(&self) -> &SplitBrainStatus {
        &self.split
    }

    /// The voters this node sees (what it publishes as its view when it is a voter).
    pub fn own_view(&self) -> &BTreeSet<NodeId> {
        &self.own_view
    }

    /// Recomputes from `reachable` (every member this node counts as reachable, itself
    /// included) and the `views` voters published; returns the events to emit.
    pub fn update(
        &mut self,
        local: &NodeId,
        reachable: &BTreeSet<NodeId>,
        views: &BTreeMap<NodeId, ViewEntry>,
        now: Instant,
    ) -> Vec<MembershipEvent> {
        let mut events = Vec::new();
        let voters = &self.status.voters;
        let (n, has) = majority(voters, reachable.iter());
        self.own_view = reachable
            .iter()
            .filter(|r| voters.contains(*r))
            .cloned()
            .collect();
        if n != self.status.voters_reachable || has != self.status.has_majority {
            if has != self.status.has_majority {
                self.status.since = now;
            }
            self.status.voters_reachable = n;
            self.status.has_majority = has;
            events.push(MembershipEvent::QuorumChanged(self.status.clone()));
        }

        let conflict = if has {
            find_conflict(local, &self.own_view, reachable, views, voters)
        } else {
            None
        };
        let confirmed = match (conflict, &self.candidate) {
            (None, _) => {
                self.candidate = None;
                None
            }
            (Some((a, b)), Some((ca, cb, since))) if *ca == a && *cb == b => {
                (now.saturating_duration_since(*since) >= self.grace).then_some((a, b, *since))
            }
            (Some((a, b)), _) => {
                self.candidate = Some((a.clone(), b.clone(), now));
                self.grace.is_zero().then_some((a, b, now))
            }
        };

        let next = if voters.is_empty() {
            SplitBrainStatus::NotConfigured
        } else if !has {
            match &self.split {
                SplitBrainStatus::InMinority {
                    reachable, since, ..
                } if *reachable == n => SplitBrainStatus::InMinority {
                    reachable: n,
                    needed: QuorumStatus::majority_of(voters.len()),
                    since: *since,
                },
                _ => SplitBrainStatus::InMinority {
                    reachable: n,
                    needed: QuorumStatus::majority_of(voters.len()),
                    since: now,
                },
            }
        } else if let Some((a, b, since)) = confirmed {
            SplitBrainStatus::ConflictingViews { a, b, since }
        } else {
            SplitBrainStatus::Healthy
        };
        if next != self.split {
            self.split = next.clone();
            events.push(MembershipEvent::SplitBrainChanged(next));
        }
        events
    }

    /// Whether a pending conflict needs a re-evaluation at some later time (the shell calls
    /// [`QuorumTracker::update`] periodically anyway).
    pub fn has_pending_conflict(&self) -> bool {
        self.candidate.is_some() && !matches!(self.split, SplitBrainStatus::ConflictingViews { .. })
    }
}

/// The first pair of majority claimants (in id order) where one does not count the other as
/// reachable. Claimants: this node (when it is a voter with a majority) and every voter this
/// node sees as reachable whose published view claims a majority.
fn find_conflict(
    local: &NodeId,
    own_view: &BTreeSet<NodeId>,
    reachable: &BTreeSet<NodeId>,
    views: &BTreeMap<NodeId, ViewEntry>,
    voters: &BTreeSet<NodeId>,
) -> Option<(NodeId, NodeId)> {
    let mut claimants: Vec<(&NodeId, &BTreeSet<NodeId>)> = Vec::new();
    for v in voters {
        if v == local {
            claimants.push((local, own_view));
        } else if reachable.contains(v)
            && let Some(view) = views.get(v)
            && view.has_majority
        {
            claimants.push((v, &view.reachable));
        }
    }
    for (i, (a, va)) in claimants.iter().enumerate() {
        for (b, vb) in claimants.iter().skip(i + 1) {
            if !va.contains(*b) || !vb.contains(*a) {
                return Some(((*a).clone(), (*b).clone()));
            }
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;
    use crate::records::Version;

    fn ids(s: &[&str]) -> BTreeSet<NodeId> {
        s.iter().map(|x| NodeId::new(*x).unwrap()).collect()
    }

    fn view(s: &[&str], has: bool) -> ViewEntry {
        ViewEntry {
            version: Version::default(),
            reachable: ids(s),
            has_majority: has,
        }
    }

    #[track_caller]
    fn check(local: &str, reachable: &[&str], views: &[(&str, &[&str])], want: &str) {
        let t0 = tokio::time::Instant::now();
        let mut q = QuorumTracker::new(ids(&["1", "2", "3", "4", "5"]), Duration::ZERO, t0);
        let views: BTreeMap<NodeId, ViewEntry> = views
            .iter()
            .map(|(n, r)| (NodeId::new(*n).unwrap(), view(r, r.len() >= 3)))
            .collect();
        q.update(&NodeId::new(local).unwrap(), &ids(reachable), &views, t0);
        let got = match q.split_brain() {
            SplitBrainStatus::NotConfigured => "not-configured".to_owned(),
            SplitBrainStatus::Healthy => "healthy".to_owned(),
            SplitBrainStatus::InMinority {
                reachable, needed, ..
            } => format!("minority {reachable}/{needed}"),
            SplitBrainStatus::ConflictingViews { a, b, .. } => format!("conflict {a} {b}"),
        };
        assert_eq!(got, want);
    }

    #[test]
    fn partition_sides() {
        check("1", &["1", "2"], &[], "minority 2/3");
        check("3", &["3", "4", "5"], &[("4", &["3", "4", "5"])], "healthy");
        check("3", &["3", "4", "5", "x"], &[], "healthy");
    }

    #[test]
    fn partial_partition_is_a_conflict() {
        // 1 and 5 cannot talk, both see 2, 3, 4: both claim a majority.
        check(
            "3",
            &["1", "2", "3", "4", "5"],
            &[("1", &["1", "2", "3", "4"]), ("5", &["2", "3", "4", "5"])],
            "conflict 1 5",
        );
        // The local node itself can be one side.
        check(
            "1",
            &["1", "2", "3", "4"],
            &[("4", &["2", "3", "4", "5"]), ("2", &["1", "2", "3", "4"])],
            "conflict 1 4",
        );
    }

    #[test]
    fn conflict_needs_grace_and_events_fire_on_change() {
        let t0 = tokio::time::Instant::now();
        let voters = ids(&["1", "2", "3"]);
        let mut q = QuorumTracker::new(voters, Duration::from_secs(2), t0);
        let me = NodeId::new("1").unwrap();
        let views: BTreeMap<NodeId, ViewEntry> =
            [(NodeId::new("2").unwrap(), view(&["2", "3"], true))].into();
        let ev = q.update(&me, &ids(&["1", "2", "3"]), &views, t0);
        assert!(matches!(ev[0], MembershipEvent::QuorumChanged(ref s) if s.has_majority));
        assert_eq!(q.split_brain(), &SplitBrainStatus::Healthy);
        assert!(q.has_pending_conflict());
        let ev = q.update(
            &me,
            &ids(&["1", "2", "3"]),
            &views,
            t0 + Duration::from_secs(2),
        );
        assert!(matches!(
            ev.as_slice(),
            [MembershipEvent::SplitBrainChanged(
                SplitBrainStatus::ConflictingViews { .. }
            )]
        ));
        // The view catches up: healthy again.
        let views: BTreeMap<NodeId, ViewEntry> =
            [(NodeId::new("2").unwrap(), view(&["1", "2", "3"], true))].into();
        q.update(
            &me,
            &ids(&["1", "2", "3"]),
            &views,
            t0 + Duration::from_secs(3),
        );
        assert_eq!(q.split_brain(), &SplitBrainStatus::Healthy);
    }

    #[test]
    fn no_voters_is_not_configured() {
        let t0 = tokio::time::Instant::now();
        let mut q = QuorumTracker::new(BTreeSet::new(), Duration::ZERO, t0);
        let ev = q.update(
            &NodeId::new("1").unwrap(),
            &ids(&["1"]),
            &BTreeMap::new(),
            t0,
        );
        assert!(ev.is_empty());
        assert_eq!(q.split_brain(), &SplitBrainStatus::NotConfigured);
        assert!(!q.status().has_majority);
    }
}
