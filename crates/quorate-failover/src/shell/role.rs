//! One role's task: owns the policy, holds the lease while primary, runs hooks, records history.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quorate_clock::{Clock, SharedClock};
use quorate_coord_api::{
    Coord, CoordError, ElectionLeader, LeaderKey, LeaseId, RangeRequest, Revision,
};
use quorate_health_api::HealthView;
use quorate_membership_api::Membership;
use quorate_types::{FencingToken, NodeId};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::hooks::{ChangeCause, HookContext, RoleChange, RoleHooks};
use super::{Command, ManagerConfig, ManualOp, PrimaryContext, RoleSpec, RoleStatus, observe};
use crate::error::FailoverError;
use crate::policy::lease::{HolderLease, LeaseConfig};
use crate::policy::{Action, Cause, Hold, Notice, Observations, RolePolicy};

pub(crate) struct RoleTaskParts {
    pub(crate) config: Arc<ManagerConfig>,
    pub(crate) spec: RoleSpec,
    pub(crate) coord: Arc<dyn Coord>,
    pub(crate) health: Arc<dyn HealthView>,
    pub(crate) membership: Arc<dyn Membership>,
    pub(crate) clock: SharedClock,
    pub(crate) cancel: CancellationToken,
    pub(crate) tracker: TaskTracker,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) primary: watch::Sender<Option<PrimaryContext>>,
    pub(crate) status: watch::Sender<RoleStatus>,
    pub(crate) history: Arc<Mutex<VecDeque<RoleChange>>>,
    pub(crate) renews: Arc<super::RenewStats>,
}

/// A term of office of this node.
struct Term {
    lease: LeaseId,
    leader: LeaderKey,
    cancel: CancellationToken,
    valid_until: watch::Receiver<Duration>,
    /// Set by the lease keeper when it ends the term itself.
    lost: Arc<Mutex<Option<ChangeCause>>>,
    /// `true` while the lease keeper has passed the holder deadline without a renew but keeps
    /// the lease (see [`ManagerConfig::lease_resume_window`]).
    suspended: watch::Receiver<bool>,
    /// The application's work of the current stretch of acting (a child of `cancel`): cancelled
    /// by the lease keeper itself at suspension, replaced at resumption (under the lock, so a
    /// resumption never publishes a token the keeper has already moved past).
    work: Arc<Mutex<CancellationToken>>,
    /// Whether a `PrimaryContext` of this term is published (acting, or about to).
    acting: bool,
    /// Whether `on_demote` already ran for a suspension (not run again at the term's end).
    demote_hook_ran: bool,
    /// Serialises this term's `on_promote`/`on_demote` between the role task and the keeper.
    gate: Arc<HookGate>,
    /// What every hook of this term is called with (role, node, token).
    ctx: HookContext,
}

/// Serialises a term's `on_promote` and `on_demote` between the role task and the lease keeper
/// and records whether the application was started (an `on_promote` began) and not yet
/// stopped, so `on_demote` runs exactly once per start, by whichever gets there first.
///
/// Why the keeper runs it: a shell-command application stops only through `on_demote`, and the
/// role task can be busy for a whole coordination timeout (the chaos run measured a cut-off
/// primary's application acting 964 ms after the partition against a 544 ms holder window).
/// The keeper runs `on_demote` at the holder deadline itself, as it cancels in-process work.
#[derive(Debug, Default)]
struct HookGate {
    lock: tokio::sync::Mutex<()>,
    started: AtomicBool,
}

/// Runs `on_demote` under the gate if the application was started and not yet stopped.
async fn demote_hook(
    gate: &HookGate,
    clock: &SharedClock,
    limit: Duration,
    hooks: &Arc<dyn RoleHooks>,
    ctx: &HookContext,
) {
    let _serial = gate.lock.lock().await;
    if gate.started.swap(false, Ordering::SeqCst) {
        let _ = within(clock, limit, hooks.on_demote(ctx)).await;
    }
}

/// Publishes that this node no longer acts: no primary context, status not acting.
fn publish_not_acting(p: &RoleTaskParts) {
    p.primary.send_replace(None);
    p.status.send_modify(|st| {
        st.acting = false;
        st.token = None;
    });
}

/// Runs `on_demote` for `term` through its gate (at most once per start).
async fn term_demote_hook(p: &RoleTaskParts, term: &Term) {
    demote_hook(
        &term.gate,
        &p.clock,
        p.config.hook_timeout,
        &p.spec.hooks,
        &term.ctx,
    )
    .await;
}

pub(crate) struct RoleTask {
    p: RoleTaskParts,
    node: NodeId,
    policy: RolePolicy<NodeId>,
    election: String,
    /// Prefix of this role's operation keys: `request` and `veto/<node>` under it.
    ops_prefix: String,
    term: Option<Term>,
    /// Mod revision of each operation key already seen (None before the first read: what
    /// exists then is history, not orders).
    ops_seen: Option<BTreeMap<String, Revision>>,
    /// The leader as last read.
    leader: Option<ElectionLeader>,
    last_obs: Option<Observations<NodeId>>,
    /// Promotion duration and token of this node's latest promotion, for the history entry.
    promoted: Option<(Duration, FencingToken)>,
}

/// A call that did not finish within its timeout (measured on the manager's clock).
#[derive(Debug)]
struct Elapsed;

/// Runs `fut` for at most `limit` of `clock`'s time (a slow clock also times out late, as a
/// process under `libfaketime` does).
async fn within<T>(
    clock: &SharedClock,
    limit: Duration,
    fut: impl Future<Output = T>,
) -> Result<T, Elapsed> {
    tokio::select! {
        biased;
        v = fut => Ok(v),
        () = clock.sleep(limit) => Err(Elapsed),
    }
}

/// Outcome of a hook call raced against the end of the term.
enum HookOutcome<T> {
    Done(T),
    TimedOut,
    TermEnded,
}

impl RoleTask {
    pub(crate) fn new(p: RoleTaskParts) -> Self {
        let election = format!("{}election/{}", p.config.key_prefix, p.spec.name);
        let ops_prefix = format!("{}ops/{}/", p.config.key_prefix, p.spec.name);
        RoleTask {
            node: p.config.node.clone(),
            policy: RolePolicy::new(p.spec.config.policy),
            election,
            ops_prefix,
            term: None,
            ops_seen: None,
            leader: None,
            last_obs: None,
            promoted: None,
            p,
        }
    }

    fn now(&self) -> Duration {
        self.p.clock.now()
    }

    fn timing(&self) -> LeaseConfig {
        self.p.spec.config.lease
    }

    pub(crate) async fn run(mut self) {
        let mut next_tick = self.p.clock.now();
        loop {
            let term_end = self.term.as_ref().map(|t| t.cancel.clone());
            let term_ended = async move {
                match term_end {
                    Some(c) => c.cancelled_owned().await,
                    None => std::future::pending().await,
                }
            };
            let tenure = self.term.as_ref().map(|t| t.suspended.clone());
            let tenure_changed = async move {
                match tenure {
                    Some(mut rx) => {
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = self.p.cancel.cancelled() => break,
                () = term_ended => {
                    let cause = self
                        .term
                        .as_ref()
                        .and_then(|t| t.lost.lock().unwrap_or_else(|e| e.into_inner()).clone())
                        .unwrap_or(ChangeCause::LeaseExpired);
                    self.demote(cause).await;
                }
                () = tenure_changed => self.tenure_changed().await,
                cmd = self.p.commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd).await,
                    None => break,
                },
                () = self.p.clock.sleep_until(next_tick) => {
                    let wake = self.tick().await;
                    let regular = self.p.clock.now() + self.p.config.tick_interval;
                    next_tick = wake.map_or(regular, |w| regular.min(w));
                }
            }
        }
        self.demote(ChangeCause::Shutdown).await;
    }

    /// Reads the leader; `None` when the store cannot be read (nothing is decided then; the
    /// lease keeper alone guards safety).
    async fn read_leader(&mut self) -> Result<Option<NodeId>, CoordError> {
        let read = within(
            &self.p.clock,
            self.p.config.coord_timeout,
            self.p.coord.leader(&self.election),
        )
        .await;
        let leader = match read {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(CoordError::Timeout {
                    what: "election leader read".to_owned(),
                });
            }
        };
        let primary = leader
            .as_ref()
            .and_then(|l| std::str::from_utf8(&l.value).ok())
            .and_then(|s| NodeId::new(s).ok());
        self.leader = leader;
        Ok(primary)
    }

    async fn observe(&mut self) -> Result<Observations<NodeId>, CoordError> {
        // The coordination leader is a tiebreak, and a vacancy waits while there is none: read
        // beside the role's leader (so a slow status never delays a step); unknown (and then
        // ignored) when the read fails, as with a backend that has no status.
        let (clock, coord, timeout) = (
            self.p.clock.clone(),
            Arc::clone(&self.p.coord),
            self.p.config.coord_timeout,
        );
        let status = async move {
            match within(&clock, timeout, coord.status()).await {
                Ok(Ok(s)) => Some(s.leader),
                _ => None,
            }
        };
        let (primary, coord_leader) = tokio::join!(self.read_leader(), status);
        let primary = primary?;
        let health = self.p.health.snapshot().status;
        let snap = self.p.membership.snapshot();
        Ok(observe::observations(
            &self.p.spec.name,
            &self.node,
            health,
            &snap,
            primary,
            coord_leader.as_ref().map(Option::as_ref),
            self.p.spec.lag.as_deref(),
        ))
    }

    /// One policy step; returns the policy's next wake-up instant.
    async fn tick(&mut self) -> Option<Duration> {
        let obs = match self.observe().await {
            Ok(obs) => obs,
            Err(e) => {
                tracing::debug!(role = %self.p.spec.name, error = %e, "failover: cannot observe, skipping step");
                // Policy rule 1 (a minority primary goes at once) cannot run without an
                // observation, and the store is unreachable exactly when it matters. The lease
                // keeper has already stopped the application at its deadline, but it keeps
                // renewing for the resume window; when only this node's answers are lost (a
                // one-way partition) those renews still reach the store and keep the lease
                // alive, so the majority waits up to resume window + TTL. A holder whose own
                // membership says it is in a minority gives the lease up now instead (the
                // resign and revoke may get through the same way).
                let snap = self.p.membership.snapshot();
                if self.term.is_some()
                    && !snap.quorum.voters.is_empty()
                    && !snap.quorum.has_majority
                {
                    self.demote(ChangeCause::Policy(Cause::NotInMajority)).await;
                }
                return None;
            }
        };
        // The store says someone else leads (or nobody) while we hold a term: our lease or
        // leadership is gone, stop at once.
        if let Some(term) = &self.term
            && self
                .leader
                .as_ref()
                .is_none_or(|l| l.key.lease != term.lease)
        {
            self.demote(ChangeCause::LeadershipLost).await;
        }
        self.poll_ops(&obs).await;
        let now = self.now();
        let decision = self.policy.step(&obs, now);
        for n in &decision.notices {
            self.record_notice(n, &obs).await;
        }
        match &decision.action {
            Action::Promote { node, cause } if *node == self.node && self.term.is_none() => {
                let cause = *cause;
                self.promote(cause, &obs).await;
            }
            Action::Demote { node, cause, .. } if *node == self.node => {
                let cause = ChangeCause::Policy(*cause);
                if self.term.is_some() {
                    self.demote(cause).await;
                } else if let Some(l) = self.leader.clone() {
                    // A leadership of an earlier incarnation of this node: give it back.
                    let _ = within(
                        &self.p.clock,
                        self.p.config.coord_timeout,
                        self.p.coord.resign(&l.key),
                    )
                    .await;
                }
            }
            _ => {}
        }
        let steps = self.p.status.borrow().steps.wrapping_add(1);
        let mut ranked: Vec<_> = self
            .policy
            .explain(&obs, now)
            .nodes
            .into_iter()
            .filter_map(|r| r.rank.map(|rank| (rank, r.id)))
            .collect();
        ranked.sort();
        self.p.status.send_replace(RoleStatus {
            steps,
            candidates: ranked.into_iter().map(|(_, id)| id).collect(),
            primary: obs.primary.clone(),
            acting: self.p.primary.borrow().is_some(),
            token: self.p.primary.borrow().as_ref().map(PrimaryContext::token),
            awaiting_approval: match &decision.action {
                Action::Hold(Hold::FailbackAwaitingApproval { to }) => Some(to.clone()),
                _ => None,
            },
            last_action: decision.action.to_string(),
        });
        self.last_obs = Some(obs);
        decision.wake_at
    }

    async fn record_notice(&mut self, n: &Notice<NodeId>, obs: &Observations<NodeId>) {
        let change = match n {
            Notice::PrimaryChanged {
                old,
                new,
                cause,
                detected_at,
                at,
                ..
            } => {
                let mine = *new == self.node;
                let (promotion, token) = match self.promoted.take() {
                    Some((d, t)) if mine => (Some(d), Some(t)),
                    _ => (None, None),
                };
                let rpo = self
                    .last_obs
                    .as_ref()
                    .and_then(|o| o.nodes.iter().find(|v| v.id == *new))
                    .and_then(|v| v.lag)
                    .filter(|_| old.is_some());
                RoleChange {
                    role: self.p.spec.name.clone(),
                    at: *at,
                    old_primary: old.clone(),
                    new_primary: Some(new.clone()),
                    cause: ChangeCause::Policy(*cause),
                    token,
                    detection: detected_at.map(|d| at.saturating_sub(d)),
                    promotion,
                    rpo,
                }
            }
            Notice::PrimaryLost { old, cause, at } => RoleChange {
                role: self.p.spec.name.clone(),
                at: *at,
                old_primary: Some(old.clone()),
                new_primary: None,
                cause: ChangeCause::Policy(*cause),
                token: None,
                detection: None,
                promotion: None,
                rpo: None,
            },
            other => {
                tracing::info!(role = %self.p.spec.name, notice = ?other, "failover notice");
                return;
            }
        };
        let _ = obs;
        self.push_history(change).await;
    }

    async fn push_history(&mut self, change: RoleChange) {
        tracing::info!(role = %self.p.spec.name, change = %change, "role change");
        let involves_me = change.old_primary.as_ref() == Some(&self.node)
            || change.new_primary.as_ref() == Some(&self.node);
        {
            let mut h = self.p.history.lock().unwrap_or_else(|e| e.into_inner());
            h.push_back(change.clone());
            while h.len() > self.p.config.history_max.get() {
                h.pop_front();
            }
        }
        if involves_me {
            let hooks = self.p.spec.hooks.clone();
            let _ = within(
                &self.p.clock,
                self.p.config.hook_timeout,
                hooks.on_role_change(&change),
            )
            .await;
        }
    }

    /// Runs `fut` with the hook timeout, racing the end of the current term.
    async fn hook<T>(&self, fut: impl Future<Output = T>) -> HookOutcome<T> {
        let term_end = self.term.as_ref().map(|t| t.cancel.clone());
        let ended = async move {
            match term_end {
                Some(c) => c.cancelled_owned().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = ended => HookOutcome::TermEnded,
            r = within(&self.p.clock, self.p.config.hook_timeout, fut) => match r {
                Ok(v) => HookOutcome::Done(v),
                Err(_) => HookOutcome::TimedOut,
            },
        }
    }

    /// `on_promote` under the term's gate (so the keeper's `on_demote` cannot overtake it),
    /// marking the application started first.
    async fn promote_hook(&self, hooks: &Arc<dyn RoleHooks>, ctx: &HookContext) -> HookOutcome<()> {
        let Some(gate) = self.term.as_ref().map(|t| t.gate.clone()) else {
            return HookOutcome::TermEnded;
        };
        let _serial = gate.lock.lock().await;
        gate.started.store(true, Ordering::SeqCst);
        self.hook(hooks.on_promote(ctx)).await
    }

    async fn promote(&mut self, cause: crate::policy::Cause, obs: &Observations<NodeId>) {
        let started = self.now();
        let timing = self.timing();
        let ct = self.p.config.coord_timeout;
        // Validity counts from when the granting request was sent.
        let sent = self.now();
        let grant = match within(&self.p.clock, ct, self.p.coord.lease_grant(timing.ttl)).await {
            Ok(Ok(g)) => g,
            other => {
                tracing::warn!(role = %self.p.spec.name, result = ?other.map(|r| r.err()), "failover: lease grant failed");
                return;
            }
        };
        let campaign = within(
            &self.p.clock,
            ct,
            self.p.coord.campaign(
                &self.election,
                self.node.as_str().as_bytes().to_vec(),
                grant.id,
            ),
        )
        .await;
        let leader = match campaign {
            Ok(Ok(l)) => l,
            other => {
                tracing::warn!(role = %self.p.spec.name, result = ?other.map(|r| r.err()), "failover: campaign failed");
                let _ = within(&self.p.clock, ct, self.p.coord.lease_revoke(grant.id)).await;
                return;
            }
        };
        // The campaign's lease is acknowledged: the holder may act until the holder-side
        // deadline of the grant's send time (`HolderLease`, the policy's lease core).
        let mut holder = HolderLease::new(timing);
        holder.acknowledged(sent);
        let Some(valid_until) = holder.valid_until().filter(|_| holder.is_valid(self.now())) else {
            let _ = within(&self.p.clock, ct, self.p.coord.resign(&leader)).await;
            let _ = within(&self.p.clock, ct, self.p.coord.lease_revoke(grant.id)).await;
            return;
        };
        let cancel = self.p.cancel.child_token();
        let (valid_tx, valid_rx) = watch::channel(valid_until);
        let lost = Arc::new(Mutex::new(None));
        let (suspended_tx, suspended) = watch::channel(false);
        let work = Arc::new(Mutex::new(cancel.child_token()));
        let gate = Arc::new(HookGate::default());
        let ctx = HookContext {
            role: self.p.spec.name.clone(),
            node: self.node.clone(),
            token: leader.token,
        };
        self.p.tracker.spawn(Box::pin(keep_lease(Keeper {
            hooks: self.p.spec.hooks.clone(),
            hook_ctx: ctx.clone(),
            hook_timeout: self.p.config.hook_timeout,
            gate: gate.clone(),
            clock: self.p.clock.clone(),
            coord: self.p.coord.clone(),
            lease: grant.id,
            holder,
            resume_window: self.p.config.lease_resume_window,
            valid: valid_tx,
            suspended: suspended_tx,
            work: work.clone(),
            cancel: cancel.clone(),
            lost: lost.clone(),
            renews: self.p.renews.clone(),
        })));
        let token = leader.token;
        self.term = Some(Term {
            lease: grant.id,
            leader,
            cancel,
            valid_until: valid_rx,
            lost,
            suspended,
            work,
            acting: false,
            demote_hook_ran: false,
            gate,
            ctx: ctx.clone(),
        });
        let hooks = self.p.spec.hooks.clone();
        let veto = match self.hook(hooks.before_promote(&ctx)).await {
            HookOutcome::Done(Ok(())) => None,
            HookOutcome::Done(Err(reason)) => Some(reason),
            HookOutcome::TimedOut => Some(format!(
                "before_promote timed out after {} ms",
                self.p.config.hook_timeout.as_millis()
            )),
            HookOutcome::TermEnded => return,
        };
        if let Some(reason) = veto {
            let now = self.now();
            for n in self.policy.record_veto(&self.node, &reason, now) {
                self.record_notice(&n, obs).await;
            }
            self.give_back(false, None).await;
            if let Err(e) = self.publish_veto(&reason).await {
                tracing::warn!(role = %self.p.spec.name, error = %e, "failover: could not publish the veto");
            }
            self.push_history(RoleChange {
                role: self.p.spec.name.clone(),
                at: now,
                old_primary: None,
                new_primary: None,
                cause: ChangeCause::Vetoed(reason),
                token: Some(token),
                detection: None,
                promotion: None,
                rpo: None,
            })
            .await;
            return;
        }
        if let HookOutcome::TermEnded = self.promote_hook(&hooks, &ctx).await {
            return;
        }
        if !self.publish_context() {
            return;
        }
        if self.term.as_ref().is_some_and(|t| *t.suspended.borrow()) {
            // The holder deadline passed during the hooks.
            self.suspend().await;
        }
        self.promoted = Some((self.now().saturating_sub(started), token));
        tracing::info!(role = %self.p.spec.name, %token, %cause, "promoted");
    }

    /// Publishes the current term's `PrimaryContext` (with its current work token); `false`
    /// when there is no term.
    fn publish_context(&mut self) -> bool {
        let Some(term) = &mut self.term else {
            return false;
        };
        term.acting = true;
        let token = term.leader.token;
        self.p.primary.send_replace(Some(PrimaryContext {
            role: self.p.spec.name.clone(),
            node: self.node.clone(),
            token,
            cancel: term.work.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            valid_until: term.valid_until.clone(),
            clock: self.p.clock.clone(),
        }));
        self.p.status.send_modify(|st| {
            st.acting = true;
            st.token = Some(token);
        });
        true
    }

    /// The lease keeper suspended the term (holder deadline passed, lease kept) or resumed it
    /// (a renew succeeded while the lease was still alive): stop or restart acting under the
    /// same token. Nobody else can have held the role in between: the election key stays ours
    /// while the lease lives, and a renew succeeds only on a live lease.
    ///
    /// The role task may be busy while the keeper suspends and resumes (e.g. waiting on the
    /// store during a partition) and then see only the final "not suspended": the keeper has
    /// cancelled the application's work meanwhile, so the suspension is completed first (the
    /// application learns of it through `on_demote`), then the term resumes. Found by the
    /// failover simulation (`primary_clock_half_rate`, seed 10): the primary kept its lease but
    /// never acted again.
    async fn tenure_changed(&mut self) {
        let Some(term) = &mut self.term else { return };
        let suspended = *term.suspended.borrow_and_update();
        let work_stopped = term
            .work
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_cancelled();
        if suspended || work_stopped {
            self.suspend().await;
        }
        if !suspended {
            self.resume().await;
        }
    }

    /// Stops acting (if acting) while keeping the term.
    async fn suspend(&mut self) {
        let Some(term) = &mut self.term else { return };
        let (role, token) = (&term.ctx.role, term.ctx.token);
        if term.acting {
            term.acting = false;
            // The keeper has cancelled it already; this covers a suspension seen by `promote`.
            term.work.lock().unwrap_or_else(|e| e.into_inner()).cancel();
            term.demote_hook_ran = true;
            publish_not_acting(&self.p);
            tracing::warn!(%role, %token, "failover: no renew acknowledged before the holder deadline; stopped acting, keeping the lease in case the coordination store comes back");
            term_demote_hook(&self.p, term).await;
        }
    }

    /// Acts again under the same token after a suspension.
    async fn resume(&mut self) {
        let Some(term) = &mut self.term else { return };
        let ctx = term.ctx.clone();
        let (role, token) = (&ctx.role, ctx.token);
        let hooks = self.p.spec.hooks.clone();
        if !term.acting && term.demote_hook_ran {
            {
                let mut work = term.work.lock().unwrap_or_else(|e| e.into_inner());
                if *term.suspended.borrow() {
                    return; // suspended again meanwhile
                }
                *work = term.cancel.child_token();
            }
            term.demote_hook_ran = false;
            tracing::info!(%role, %token, "failover: lease renewed in time; acting again with the same token");
            if let HookOutcome::TermEnded = self.promote_hook(&hooks, &ctx).await {
                return;
            }
            let _ = self.publish_context();
        }
    }

    /// Ends the term: cancel the application's work first, then `on_demote` (if `hooks`),
    /// then record `cause` in the history, then resign and revoke.
    async fn give_back(&mut self, hooks: bool, cause: Option<ChangeCause>) -> Option<FencingToken> {
        let term = self.term.take()?;
        term.cancel.cancel();
        // A suspension already ran `on_demote`.
        let hooks = hooks && !term.demote_hook_ran;
        publish_not_acting(&self.p);
        let token = term.leader.token;
        if hooks {
            term_demote_hook(&self.p, &term).await;
        }
        if let Some(cause) = cause {
            let change = RoleChange {
                role: self.p.spec.name.clone(),
                at: self.now(),
                old_primary: Some(self.node.clone()),
                new_primary: None,
                cause,
                token: Some(token),
                detection: None,
                promotion: None,
                rpo: None,
            };
            self.push_history(change).await;
        }
        let ct = self.p.config.coord_timeout;
        let _ = within(&self.p.clock, ct, self.p.coord.resign(&term.leader)).await;
        let _ = within(&self.p.clock, ct, self.p.coord.lease_revoke(term.lease)).await;
        Some(token)
    }

    async fn demote(&mut self, cause: ChangeCause) {
        let _ = self.give_back(true, Some(cause)).await;
    }

    /// Applies manual requests and vetoes other nodes published since the last look.
    async fn poll_ops(&mut self, obs: &Observations<NodeId>) {
        let read = within(
            &self.p.clock,
            self.p.config.coord_timeout,
            self.p
                .coord
                .range(RangeRequest::prefix(self.ops_prefix.clone())),
        )
        .await;
        let Ok(Ok(resp)) = read else { return };
        let first = self.ops_seen.is_none();
        let seen = self.ops_seen.get_or_insert_with(BTreeMap::new);
        let mut fresh = Vec::new();
        for kv in resp.kvs {
            if seen.get(&kv.key) == Some(&kv.mod_revision) {
                continue;
            }
            seen.insert(kv.key.clone(), kv.mod_revision);
            // Requests found at the first read are history; vetoes live under a lease and
            // count while they exist.
            let is_veto = kv
                .key
                .strip_prefix(&self.ops_prefix)
                .is_some_and(|k| k.starts_with("veto/"));
            if !first || is_veto {
                fresh.push(kv);
            }
        }
        let now = self.now();
        for kv in fresh {
            let Some(name) = kv.key.strip_prefix(&self.ops_prefix) else {
                continue;
            };
            if let Some(node) = name.strip_prefix("veto/") {
                let Ok(node) = NodeId::new(node) else {
                    continue;
                };
                let reason = String::from_utf8_lossy(&kv.value).into_owned();
                for n in self.policy.record_veto(&node, &reason, now) {
                    self.record_notice(&n, obs).await;
                }
                continue;
            }
            if name != "request" {
                continue;
            }
            match decode_request(&kv.value) {
                Some((origin, _)) if origin == self.node => {}
                Some((origin, op)) => match follow(&mut self.policy, &op, obs, now) {
                    Ok(notices) => {
                        for n in notices {
                            self.record_notice(&n, obs).await;
                        }
                    }
                    Err(e) => {
                        tracing::info!(role = %self.p.spec.name, %origin, ?op, refusal = %e, "failover: manual request refused here");
                    }
                },
                None => {
                    tracing::warn!(role = %self.p.spec.name, "failover: unreadable manual request ignored");
                }
            }
        }
    }

    /// Publishes this node's veto under a lease that lasts the veto back-off (or the
    /// backend's shortest TTL), so that nodes that start later still see it while it lasts.
    async fn publish_veto(&mut self, reason: &str) -> Result<(), CoordError> {
        let ttl = self
            .p
            .spec
            .config
            .policy
            .veto_backoff
            .max(self.p.coord.capabilities().lease_ttl_min);
        let grant = match within(
            &self.p.clock,
            self.p.config.coord_timeout,
            self.p.coord.lease_grant(ttl),
        )
        .await
        {
            Ok(r) => r?,
            Err(_) => {
                return Err(CoordError::Timeout {
                    what: "veto lease grant".to_owned(),
                });
            }
        };
        let name = format!("veto/{}", self.node);
        self.publish(&name, reason.as_bytes().to_vec(), Some(grant.id))
            .await
    }

    /// Publishes an operation key and remembers its revision as seen.
    async fn publish(
        &mut self,
        name: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<(), CoordError> {
        let key = format!("{}{name}", self.ops_prefix);
        let put = within(
            &self.p.clock,
            self.p.config.coord_timeout,
            self.p.coord.put(&key, value, lease),
        )
        .await;
        let resp = match put {
            Ok(r) => r?,
            Err(_) => {
                return Err(CoordError::Timeout {
                    what: format!("put {key}"),
                });
            }
        };
        if let Some(seen) = &mut self.ops_seen {
            seen.insert(key, resp.revision);
        }
        Ok(())
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Explain { reply } => {
                let r = match self.observe().await {
                    Ok(obs) => Ok(self.policy.explain(&obs, self.now())),
                    Err(source) => Err(FailoverError::Coord {
                        role: self.p.spec.name.clone(),
                        what: "reading the election leader",
                        source,
                    }),
                };
                let _ = reply.send(r);
            }
            Command::Manual { op, reply } => {
                let r = self.manual(op).await;
                let _ = reply.send(r);
                // Act on it now rather than at the next tick.
                let _ = self.tick().await;
            }
        }
    }

    async fn manual(&mut self, op: ManualOp) -> Result<Option<NodeId>, FailoverError> {
        let role = self.p.spec.name.clone();
        let obs = self
            .observe()
            .await
            .map_err(|source| FailoverError::Coord {
                role: role.clone(),
                what: "reading the election leader",
                source,
            })?;
        let now = self.now();
        // Try on a copy: nothing changes unless the request is also published.
        let mut trial = self.policy.clone();
        let chosen =
            apply(&mut trial, &op, &obs, now).map_err(|refusal| FailoverError::Refused {
                role: role.clone(),
                refusal,
            })?;
        // Publish with the target resolved, so every node follows the same handover.
        let published = match (&op, &chosen) {
            (ManualOp::Switchover(_) | ManualOp::Failback(_), Some(to)) => {
                ManualOp::Switchover(Some(to.clone()))
            }
            (ManualOp::Failover(_), Some(to)) => ManualOp::Failover(Some(to.clone())),
            _ => op.clone(),
        };
        let value = encode_request(&self.node, &published).into_bytes();
        self.publish("request", value, None)
            .await
            .map_err(|source| FailoverError::Coord {
                role,
                what: "publishing the manual request",
                source,
            })?;
        self.policy = trial;
        Ok(chosen)
    }
}

/// Applies a manual operation to a policy; returns the chosen node, if any.
fn apply(
    policy: &mut RolePolicy<NodeId>,
    op: &ManualOp,
    obs: &Observations<NodeId>,
    now: Duration,
) -> Result<Option<NodeId>, crate::policy::Refusal<NodeId>> {
    let chosen = |a: Action<NodeId>| a.new_primary().cloned();
    match op {
        ManualOp::Switchover(t) => policy.switchover(obs, t.as_ref(), now).map(chosen),
        ManualOp::Failover(t) => policy.failover(obs, t.as_ref(), now).map(chosen),
        ManualOp::Failback(expected) => policy.failback(obs, expected.as_ref(), now).map(chosen),
        ManualOp::PostponeFailback(d) => policy
            .postpone_failback(now.saturating_add(*d), now)
            .map(|_| None),
        ManualOp::Pause(d) => policy.pause(now.saturating_add(*d), now).map(|_| None),
        ManualOp::Resume => {
            policy.resume();
            Ok(None)
        }
        ManualOp::Cancel => {
            policy.cancel_handover();
            Ok(None)
        }
    }
}

/// Applies a manual request published by another node.
fn follow(
    policy: &mut RolePolicy<NodeId>,
    op: &ManualOp,
    obs: &Observations<NodeId>,
    now: Duration,
) -> Result<Vec<Notice<NodeId>>, crate::policy::Refusal<NodeId>> {
    use crate::policy::Cause;
    match op {
        ManualOp::Switchover(Some(to)) => policy.accept_handover(obs, to, Cause::Switchover, now),
        ManualOp::Failover(Some(to)) => policy.accept_handover(obs, to, Cause::ManualFailover, now),
        ManualOp::Cancel => Ok(policy.cancel_handover().into_iter().collect()),
        other => apply(policy, other, obs, now).map(|_| Vec::new()),
    }
}

/// The stored form of a manual request: `"<origin> <op> [<arg>]"`, where op is one of
/// `switchover`, `failover`, `failback` (arg: node id or `*`), `postpone` and `pause` (arg:
/// milliseconds), `resume`, `cancel`. (A failback is published as the switchover it resolved
/// to; its form is kept for completeness.)
fn encode_request(origin: &NodeId, op: &ManualOp) -> String {
    let target = |t: &Option<NodeId>| t.as_ref().map_or("*".to_owned(), |n| n.to_string());
    match op {
        ManualOp::Switchover(t) => format!("{origin} switchover {}", target(t)),
        ManualOp::Failover(t) => format!("{origin} failover {}", target(t)),
        ManualOp::Failback(t) => format!("{origin} failback {}", target(t)),
        ManualOp::PostponeFailback(d) => format!("{origin} postpone {}", d.as_millis()),
        ManualOp::Pause(d) => format!("{origin} pause {}", d.as_millis()),
        ManualOp::Resume => format!("{origin} resume"),
        ManualOp::Cancel => format!("{origin} cancel"),
    }
}

fn decode_request(bytes: &[u8]) -> Option<(NodeId, ManualOp)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut parts = text.split(' ');
    let origin = NodeId::new(parts.next()?).ok()?;
    let op = parts.next()?;
    let arg = parts.next();
    let target = |a: Option<&str>| -> Option<Option<NodeId>> {
        match a? {
            "*" => Some(None),
            s => NodeId::new(s).ok().map(Some),
        }
    };
    let op = match op {
        "switchover" => ManualOp::Switchover(target(arg)?),
        "failover" => ManualOp::Failover(target(arg)?),
        "failback" => ManualOp::Failback(match arg {
            None => None,
            a => target(a)?,
        }),
        "postpone" => ManualOp::PostponeFailback(Duration::from_millis(arg?.parse().ok()?)),
        "pause" => ManualOp::Pause(Duration::from_millis(arg?.parse().ok()?)),
        "resume" if arg.is_none() => ManualOp::Resume,
        "cancel" if arg.is_none() => ManualOp::Cancel,
        _ => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some((origin, op))
}

/// What the lease keeper of one term needs.
struct Keeper {
    clock: SharedClock,
    coord: Arc<dyn Coord>,
    lease: LeaseId,
    /// The holder-side lease core: validity from the send time of each acknowledged renew.
    holder: HolderLease,
    resume_window: Duration,
    valid: watch::Sender<Duration>,
    suspended: watch::Sender<bool>,
    work: Arc<Mutex<CancellationToken>>,
    cancel: CancellationToken,
    lost: Arc<Mutex<Option<ChangeCause>>>,
    hooks: Arc<dyn RoleHooks>,
    hook_ctx: HookContext,
    hook_timeout: Duration,
    gate: Arc<HookGate>,
    renews: Arc<super::RenewStats>,
}

/// Keeps the lease alive. At the holder deadline `sent + ttl * (1 - drift) - margin` of the last
/// acknowledged renew (whatever the main task is doing) the application must stop: the keeper
/// cancels the application's work and suspends the term, and keeps renewing for
/// `resume_window`; a renew acknowledged in that time resumes the term with the same token (a
/// coordination leader election is survived without a handover), otherwise the term ends. The
/// term ends at once when the store says the lease is gone.
async fn keep_lease(k: Keeper) {
    let Keeper {
        clock,
        coord,
        lease,
        mut holder,
        resume_window,
        valid,
        suspended,
        work,
        cancel,
        lost,
        hooks,
        hook_ctx,
        hook_timeout,
        gate,
        renews,
    } = k;
    let end = |cause: ChangeCause| {
        *lost.lock().unwrap_or_else(|e| e.into_inner()) = Some(cause);
        cancel.cancel();
    };
    // Renew at once: the campaign may have taken part of the first window.
    let mut next_renew = clock.now();
    // When the holder deadline passed without a renew (the term is suspended).
    let mut suspended_at: Option<Duration> = None;
    let timing = *holder.timing();
    loop {
        let give_up = match suspended_at {
            None => *valid.borrow(),
            Some(at) => at.saturating_add(resume_window),
        };
        let renew = async {
            clock.sleep_until(next_renew).await;
            let sent = clock.now();
            (
                sent,
                within(&clock, timing.renew_timeout, coord.lease_keep_alive(lease)).await,
            )
        };
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            () = clock.sleep_until(give_up) => {
                if suspended_at.is_none() {
                    // Stop the application now, whatever the role task is doing: in-process
                    // work by cancellation, a shell-command application by `on_demote`.
                    work.lock().unwrap_or_else(|e| e.into_inner()).cancel();
                    if !resume_window.is_zero() {
                        suspended_at = Some(give_up);
                        suspended.send_replace(true);
                    }
                    demote_hook(&gate, &clock, hook_timeout, &hooks, &hook_ctx).await;
                    if !resume_window.is_zero() {
                        continue;
                    }
                }
                end(ChangeCause::LeaseExpired);
                return;
            }
            (sent, result) = renew => {
                next_renew = sent
                    + if matches!(result, Ok(Ok(_))) {
                        timing.renew_interval
                    } else {
                        timing.retry_interval()
                    };
                match &result {
                    Ok(Ok(_)) => renews.record(clock.now().saturating_sub(sent)),
                    _ => renews.record_failure(),
                }
                match result {
                    Ok(Ok(_)) => {
                        holder.acknowledged(sent);
                        if let Some(until) = holder.valid_until() {
                            valid.send_if_modified(|v| {
                                let grow = until > *v;
                                if grow {
                                    *v = until;
                                }
                                grow
                            });
                        }
                        if suspended_at.is_some() && holder.is_valid(clock.now()) {
                            suspended_at = None;
                            let _guard = work.lock().unwrap_or_else(|e| e.into_inner());
                            suspended.send_replace(false);
                        }
                    }
                    Ok(Err(CoordError::LeaseNotFound { .. } | CoordError::LeaseExpired { .. })) => {
                        end(ChangeCause::LeadershipLost);
                        return;
                    }
                    Ok(Err(e)) => tracing::debug!(%lease, error = %e, "lease renew failed"),
                    Err(_) => tracing::debug!(%lease, "lease renew timed out"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    use super::*;

    #[test]
    fn manual_requests_round_trip_and_garbage_is_ignored() {
        let n = NodeId::new("n1").unwrap();
        let b = NodeId::new("b").unwrap();
        for op in [
            ManualOp::Switchover(None),
            ManualOp::Switchover(Some(b.clone())),
            ManualOp::Failover(Some(b)),
            ManualOp::Failover(None),
            ManualOp::Failback(None),
            ManualOp::Failback(Some(NodeId::new("a").unwrap())),
            ManualOp::PostponeFailback(Duration::from_millis(90_000)),
            ManualOp::Pause(Duration::from_millis(1500)),
            ManualOp::Resume,
            ManualOp::Cancel,
        ] {
            let text = encode_request(&n, &op);
            assert_eq!(
                decode_request(text.as_bytes()),
                Some((n.clone(), op)),
                "{text}"
            );
        }
        for bad in [
            &b""[..],
            b"n1",
            b"n1 explode",
            b"n1 switchover",
            b"n1 switchover B!",
            b"n1 pause x",
            b"n1 postpone",
            b"n1 failback B!",
            b"n1 resume extra",
            b"\xff\xfe",
            b"-bad resume",
        ] {
            assert_eq!(decode_request(bad), None);
        }
    }
}
