//! Elections for application tasks: [`Election`] (campaign, current leader, observe) and
//! [`Leadership`] (token, lost, proclaim, resign, `run_while_leader`).

use futures::StreamExt;
use futures::stream::BoxStream;
use quorate_coord_api::{CoordError, ElectionLeader, FencingToken, LeaderKey, Revision};

use crate::error::StateError;
use crate::session::{LostReason, Session};

/// A named election that a [`Session`] takes part in.
///
/// ```no_run
/// # async fn demo(session: quorate_state::Session) -> Result<(), quorate_state::StateError> {
/// use quorate_state::Election;
/// let election = Election::new(session, "report-writer");
/// let leadership = election.campaign(b"node-a".to_vec()).await?;
/// // The work is cancelled before the lease can lapse; Err(SessionLost) says it was.
/// let out = leadership.run_while_leader(async { /* lead */ 42 }).await;
/// # let _ = out; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Election {
    session: Session,
    name: String,
}

impl Election {
    /// Election `name` for `session`.
    pub fn new(session: Session, name: impl Into<String>) -> Election {
        Election {
            session,
            name: name.into(),
        }
    }

    /// The election's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits (FIFO) until this session leads, with `value` as the leader's value. Fails at once
    /// with [`StateError::SessionLost`] if the session ends while waiting.
    pub async fn campaign(&self, value: Vec<u8>) -> Result<Leadership, StateError> {
        self.session.check_alive()?;
        let lost = self.session.lost();
        let key = tokio::select! {
            biased;
            reason = lost => return Err(self.session.lost_error(reason)),
            r = self.session.coord().campaign(&self.name, value, self.session.lease()) => match r {
                Ok(key) => key,
                Err(CoordError::LeaseNotFound { .. } | CoordError::LeaseExpired { .. }) => {
                    return Err(self.session.lost_error(LostReason::Revoked));
                }
                Err(e) => return Err(StateError::coord("campaign")(e)),
            },
        };
        Ok(Leadership {
            key,
            session: self.session.clone(),
        })
    }

    /// The current leader (linearizable read).
    pub async fn leader(&self) -> Result<Option<ElectionLeader>, StateError> {
        self.session
            .coord()
            .leader(&self.name)
            .await
            .map_err(StateError::coord("read election leader"))
    }

    /// Whether this session is the current leader, by a linearizable read and a live session.
    pub async fn is_leader(&self) -> Result<bool, StateError> {
        let leader = self.leader().await?;
        Ok(self.session.is_alive() && leader.is_some_and(|l| l.key.lease == self.session.lease()))
    }

    /// The leadership as it changes: the current state first, then every change.
    pub async fn observe(
        &self,
    ) -> Result<BoxStream<'static, Result<Option<ElectionLeader>, StateError>>, StateError> {
        let s = self
            .session
            .coord()
            .observe(&self.name)
            .await
            .map_err(StateError::coord("observe election"))?;
        Ok(s.map(|r| r.map_err(StateError::coord("observe election")))
            .boxed())
    }
}

/// Leadership won by [`Election::campaign`]. Dropping it does not resign: leadership then
/// lasts until [`resign`](Leadership::resign) or the end of the session.
#[derive(Debug)]
pub struct Leadership {
    key: LeaderKey,
    session: Session,
}

impl Leadership {
    /// The fencing token of this leadership.
    pub fn token(&self) -> FencingToken {
        self.key.token
    }

    /// The leader key.
    pub fn key(&self) -> &LeaderKey {
        &self.key
    }

    /// Whether this process may still act as leader (its session is alive).
    pub fn is_leader(&self) -> bool {
        self.session.is_alive()
    }

    /// Resolves when leadership is lost (the session ended), before the lease can lapse on the
    /// backend within the drift bound.
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        self.session.lost()
    }

    /// Runs `work` while leading: it is dropped (cancelled) as soon as the session is lost,
    /// which happens before the lease can lapse anywhere else. Returns its output, or
    /// [`StateError::SessionLost`] if it was cancelled.
    pub async fn run_while_leader<F: Future>(&self, work: F) -> Result<F::Output, StateError> {
        self.session.check_alive()?;
        let lost = self.session.lost();
        tokio::select! {
            biased;
            reason = lost => Err(self.session.lost_error(reason)),
            out = work => Ok(out),
        }
    }

    /// Changes the leader's value without re-election.
    pub async fn proclaim(&self, value: Vec<u8>) -> Result<Revision, StateError> {
        self.session.check_alive()?;
        self.session
            .coord()
            .proclaim(&self.key, value)
            .await
            .map_err(|e| match e {
                CoordError::NotHolder { key, .. } => StateError::NotHolder { key },
                e => StateError::coord("proclaim")(e),
            })
    }

    /// Gives up leadership; the next candidate leads.
    pub async fn resign(self) -> Result<Revision, StateError> {
        self.session
            .coord()
            .resign(&self.key)
            .await
            .map_err(StateError::coord("resign"))
    }
}
