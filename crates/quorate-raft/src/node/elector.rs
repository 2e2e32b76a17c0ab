//! Elections with a pre-vote: a voter raises its term only once a quorum of voters agrees that
//! no leader has been heard for the whole leader lease.
//!
//! Why: openraft 0.9 has no pre-vote. Its own election timer makes an isolated node campaign
//! again and again, each time at a higher term; when the partition heals, the leader sees that
//! term, steps down, and the cluster is without a leader for an election timeout, long enough
//! for a healthy primary's role lease to lapse (the "heals disturb a healthy primary" finding).
//! It also waits `leader_lease + election_timeout` (`election_max + U(min, max)`) after the
//! last heartbeat before campaigning, so a Raft leader crash took 0.9-1.1 s to repair, longer
//! than the role lease window: every crash of the Raft leader interrupted the primary.
//!
//! So openraft's own election timer is switched off (`Config::enable_elect = false`) and this
//! task decides when to call `trigger().elect()`:
//!
//! - every voter records when it last accepted AppendEntries or a snapshot chunk from a leader
//!   (`Core::touch_leader`; a leader counts as hearing itself);
//! - once it has heard nothing for `election_max` plus a jitter in `[0, election_max -
//!   election_min)`, it asks every voter [`PreVoteRequest`]; a voter grants when it is not the
//!   leader, has itself heard no leader for `election_max` (so openraft's leader-lease vote
//!   refusal at that voter has expired too), and the candidate's term and log are at least its
//!   own ([`grants`]);
//! - with grants from a quorum of every configuration (joint consensus included;
//!   [`is_quorum`]) it calls `elect()`; otherwise it waits `election_min` plus a fresh jitter
//!   and asks again. A node that cannot reach a quorum never raises its term;
//! - a node that granted a peer's pre-vote holds its own back for `election_min`, so that the
//!   first node to ask usually wins alone instead of splitting the vote with the second.
//!
//! Safety does not depend on any of this: openraft's vote rules decide who leads. The pre-vote
//! only decides when to try, so it affects availability alone. A node whose peers run an
//! older build (no `PreVote` variant) gets errors, counted as refusals, and does not campaign.
// The decision functions below are pure; the task at the end is the shell.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::ServerState;
use quorate_wire::net::Net;
use rand08::Rng;
use tokio::time::Instant;

use super::Core;
use crate::network::{PreVoteRequest, PreVoteResponse, Request, Response};
use crate::rt::QuorateRng;
use crate::types::LogId;

/// Counters of this node's elector (for metrics); all only grow.
#[derive(Debug, Default)]
pub struct ElectorStats {
    /// Pre-vote rounds this node started (it had heard no leader for its wait).
    pub rounds: AtomicU64,
    /// Of those, rounds a quorum granted.
    pub rounds_won: AtomicU64,
    /// Elections started after a won round (`trigger().elect()`).
    pub elections: AtomicU64,
    /// Peers' pre-votes this node granted.
    pub granted: AtomicU64,
    /// Peers' pre-votes this node refused (it hears a leader, leads, or the peer is behind).
    pub refused: AtomicU64,
}

impl ElectorStats {
    /// Every counter with a short name, in a fixed order.
    pub fn counts(&self) -> [(&'static str, u64); 5] {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("prevote_round", l(&self.rounds)),
            ("prevote_round_won", l(&self.rounds_won)),
            ("election_started", l(&self.elections)),
            ("prevote_granted", l(&self.granted)),
            ("prevote_refused", l(&self.refused)),
        ]
    }
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// What a voter knows when it answers a pre-vote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Voter {
    /// Whether it is the leader itself.
    pub is_leader: bool,
    /// Its current term.
    pub term: u64,
    /// Its last log id.
    pub last_log: Option<LogId>,
    /// How long since it last heard from a leader.
    pub silent: Duration,
    /// openraft's leader lease (`election_max`): how long it refuses votes after a heartbeat.
    pub lease: Duration,
}

/// Whether `me` would vote for the sender of `req` now.
pub(crate) fn grants(req: &PreVoteRequest, me: &Voter) -> bool {
    !me.is_leader && me.silent > me.lease && req.term >= me.term && req.last_log >= me.last_log
}

/// Whether `granted` holds a majority of every configuration in `configs` (one, or two during
/// joint consensus). An empty configuration list is never a quorum.
pub(crate) fn is_quorum(configs: &[BTreeSet<u64>], granted: &BTreeSet<u64>) -> bool {
    !configs.is_empty()
        && configs
            .iter()
            .all(|c| c.intersection(granted).count() * 2 > c.len())
}

/// The wait before the first try, drawn per silence: `election_max + U(0, max - min)`.
fn first_wait(timing: &crate::config::Timing) -> Duration {
    timing.election_max + jitter(timing)
}

/// The wait between two tries: `election_min + U(0, max - min)`.
fn retry_wait(timing: &crate::config::Timing) -> Duration {
    timing.election_min + jitter(timing)
}

fn jitter(timing: &crate::config::Timing) -> Duration {
    let span = timing.election_max.saturating_sub(timing.election_min);
    let micros = u64::try_from(span.as_micros()).unwrap_or(u64::MAX);
    if micros == 0 {
        return Duration::ZERO;
    }
    Duration::from_micros(QuorateRng.gen_range(0..micros))
}

impl<N: Net> Core<N> {
    /// Records that a leader was heard from now.
    pub(super) fn touch_leader(&self) {
        *self.leader_heard.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn heard_at(&self) -> Instant {
        *self.leader_heard.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn silent(&self) -> Duration {
        self.heard_at().elapsed()
    }

    /// When this node last granted a peer's pre-vote.
    fn granted_at(&self) -> Option<Instant> {
        *self
            .pre_vote_granted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn voter_state(&self) -> Voter {
        let (is_leader, term) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.state == ServerState::Leader, m.current_term)
        };
        let last_log = self.raft.data_metrics().borrow().last_log;
        Voter {
            is_leader,
            term,
            last_log,
            silent: self.silent(),
            lease: self.timing.election_max,
        }
    }

    /// Answers a peer's pre-vote.
    pub(super) fn pre_vote(&self, req: &PreVoteRequest) -> PreVoteResponse {
        let me = self.voter_state();
        let granted = grants(req, &me);
        tracing::debug!(?req, ?me, granted, "pre-vote");
        bump(if granted {
            &self.elector_stats.granted
        } else {
            &self.elector_stats.refused
        });
        if granted {
            *self
                .pre_vote_granted
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        PreVoteResponse {
            granted,
            term: me.term,
        }
    }

    /// Asks every other voter; returns whether a quorum (this node included) grants.
    async fn pre_vote_round(&self) -> bool {
        let (configs, peers) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            let configs: Vec<BTreeSet<u64>> = membership.get_joint_config().clone();
            if !configs.iter().any(|c| c.contains(&self.id)) {
                return false;
            }
            let peers: Vec<(u64, String)> = membership
                .voter_ids()
                .filter(|id| *id != self.id)
                .filter_map(|id| membership.get_node(&id).map(|n| (id, n.addr.clone())))
                .collect();
            (configs, peers)
        };
        let me = self.voter_state();
        let req = Request::PreVote(PreVoteRequest {
            term: me.term,
            last_log: me.last_log,
        });
        let mut granted = BTreeSet::from([self.id]);
        if is_quorum(&configs, &granted) {
            return true;
        }
        // Answers are counted as they come: a crashed peer's call must not hold up the round.
        let timeout = self.timing.election_min;
        let mut calls: futures::stream::FuturesUnordered<_> = peers
            .iter()
            .map(|(id, addr)| {
                let req = &req;
                async move {
                    let r = self.transport.call(addr, req, Some(timeout)).await;
                    let ok = matches!(
                        r,
                        Ok(Response::PreVote(PreVoteResponse { granted: true, .. }))
                    );
                    (*id, ok)
                }
            })
            .collect();
        while let Some((id, ok)) = futures::StreamExt::next(&mut calls).await {
            if ok {
                granted.insert(id);
                if is_quorum(&configs, &granted) {
                    break;
                }
            }
        }
        drop(calls);
        let won = is_quorum(&configs, &granted);
        tracing::debug!(term = me.term, ?granted, won, "pre-vote round");
        won
    }
}

/// The election loop of one node (see the module docs).
pub(super) async fn elector_task<N: Net>(core: Arc<Core<N>>) {
    let timing = core.timing;
    // Re-checks at least this often (membership and server state have no wake-up here).
    let tick = timing.heartbeat;
    let mut wait = first_wait(&timing);
    // No try before this instant: the retry pacing after an unsuccessful try, and the hold-off
    // after granting a peer's pre-vote (let that peer win instead of splitting the vote).
    let mut not_before = Instant::now();
    loop {
        let (state, is_voter) = {
            let m = core.raft.metrics();
            let m = m.borrow();
            (
                m.state,
                m.membership_config
                    .membership()
                    .voter_ids()
                    .any(|id| id == core.id),
            )
        };
        if state == ServerState::Shutdown {
            return;
        }
        let now = Instant::now();
        let heard = core.heard_at();
        let due = if state == ServerState::Leader || !is_voter {
            if state == ServerState::Leader {
                core.touch_leader();
            }
            wait = first_wait(&timing);
            None
        } else {
            if now.saturating_duration_since(heard) < timing.heartbeat {
                // A leader is being heard: the next silence gets a fresh draw.
                wait = first_wait(&timing);
            }
            let granted = core.granted_at().map(|g| g + timing.election_min);
            Some((heard + wait).max(not_before).max(granted.unwrap_or(now)))
        };
        match due {
            Some(at) if at <= now => {}
            Some(at) => {
                tokio::select! {
                    biased;
                    () = core.cancel.cancelled() => return,
                    () = tokio::time::sleep_until(at.min(now + tick)) => {}
                }
                continue;
            }
            None => {
                tokio::select! {
                    biased;
                    () = core.cancel.cancelled() => return,
                    () = tokio::time::sleep(tick) => {}
                }
                continue;
            }
        }
        let silent = now.saturating_duration_since(heard);
        bump(&core.elector_stats.rounds);
        let won = core.pre_vote_round().await;
        not_before = Instant::now() + retry_wait(&timing);
        if won {
            bump(&core.elector_stats.rounds_won);
        }
        if won && core.heard_at() == heard {
            bump(&core.elector_stats.elections);
            tracing::info!(
                silent_ms = u64::try_from(silent.as_millis()).unwrap_or(u64::MAX),
                "pre-vote won; starting an election"
            );
            if let Err(e) = core.raft.trigger().elect().await {
                tracing::warn!(error = %e, "could not start an election");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    use super::*;
    use openraft::CommittedLeaderId;

    fn log(term: u64, index: u64) -> Option<LogId> {
        Some(LogId::new(CommittedLeaderId::new(term, 0), index))
    }

    fn voter() -> Voter {
        Voter {
            is_leader: false,
            term: 5,
            last_log: log(5, 10),
            silent: Duration::from_millis(600),
            lease: Duration::from_millis(500),
        }
    }

    fn req(term: u64, last_log: Option<LogId>) -> PreVoteRequest {
        PreVoteRequest { term, last_log }
    }

    #[test]
    fn a_silent_voter_grants_an_up_to_date_candidate() {
        assert!(grants(&req(5, log(5, 10)), &voter()));
        assert!(grants(&req(6, log(5, 12)), &voter()));
    }

    #[test]
    fn a_voter_that_hears_a_leader_refuses() {
        let me = Voter {
            silent: Duration::from_millis(500),
            ..voter()
        };
        assert!(!grants(&req(5, log(5, 10)), &me));
        let leader = Voter {
            is_leader: true,
            ..voter()
        };
        assert!(!grants(&req(9, log(9, 99)), &leader));
    }

    #[test]
    fn a_stale_candidate_is_refused() {
        assert!(!grants(&req(4, log(5, 10)), &voter()), "lower term");
        assert!(!grants(&req(5, log(5, 9)), &voter()), "shorter log");
        assert!(!grants(&req(5, log(4, 11)), &voter()), "older last term");
        assert!(!grants(&req(5, None), &voter()), "empty log");
    }

    #[test]
    fn quorum_needs_a_majority_of_every_configuration() {
        let set = |ids: &[u64]| ids.iter().copied().collect::<BTreeSet<u64>>();
        let one = vec![set(&[1, 2, 3])];
        assert!(!is_quorum(&one, &set(&[1])));
        assert!(is_quorum(&one, &set(&[1, 3])));
        assert!(is_quorum(&[set(&[1])], &set(&[1])), "a single voter");
        let joint = vec![set(&[1, 2, 3]), set(&[3, 4, 5])];
        assert!(!is_quorum(&joint, &set(&[1, 2, 3])), "old config only");
        assert!(is_quorum(&joint, &set(&[1, 3, 4])));
        assert!(!is_quorum(&[], &set(&[1])));
        let even = vec![set(&[1, 2, 3, 4])];
        assert!(!is_quorum(&even, &set(&[1, 2])), "half is not a majority");
    }

    #[test]
    fn waits_stay_within_the_profile() {
        let t = crate::config::Timing::lan();
        for _ in 0..200 {
            let w = first_wait(&t);
            assert!(w >= t.election_max && w < t.election_max * 2 - t.election_min);
            let r = retry_wait(&t);
            assert!(r >= t.election_min && r < t.election_max);
        }
    }
}
