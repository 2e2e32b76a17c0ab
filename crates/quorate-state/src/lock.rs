//! Locks: [`Mutex`] over `Coord::lock` (FIFO waiters, fencing tokens) bound to a [`Session`],
//! and [`LockGuard`], whose `lost()` is the session's and fires before the lease can expire
//! anywhere else.

use std::time::Duration;

use quorate_coord_api::{
    Compare, Consistency, CoordError, FencingToken, LeaseId, LockGrant, Revision, Txn, TxnOp,
};

use crate::error::StateError;
use crate::session::{LostReason, Session};

/// Options of a [`Mutex`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockOptions {
    /// After the previous holder lost the lock involuntarily (its session ended without
    /// unlocking), wait this long after the grant before returning the guard. Default 0:
    /// fencing tokens make it unnecessary; set it to protect a resource that cannot check
    /// tokens (Consul's lock-delay).
    pub lock_delay: Duration,
    /// How long [`Mutex::try_lock`] waits when it raced another acquirer into the queue,
    /// before it leaves the queue and reports [`StateError::WouldBlock`].
    pub try_lock_wait: Duration,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            lock_delay: Duration::ZERO,
            try_lock_wait: Duration::from_millis(500),
        }
    }
}

/// A named distributed lock held under a [`Session`].
///
/// ```no_run
/// # async fn demo(session: quorate_state::Session) -> Result<(), quorate_state::StateError> {
/// use quorate_state::Mutex;
/// let m = Mutex::new(session, "daily-report");
/// let guard = m.lock().await?;
/// // Every write carries the holder check; a lost holder's write is rejected.
/// guard.put_if_owner("report/last", b"done".to_vec()).await?;
/// guard.unlock().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Mutex {
    session: Session,
    name: String,
    options: LockOptions,
}

impl Mutex {
    /// The lock `name` for `session`, default options.
    pub fn new(session: Session, name: impl Into<String>) -> Mutex {
        Mutex::with_options(session, name, LockOptions::default())
    }

    /// The lock `name` for `session` with `options`.
    pub fn with_options(session: Session, name: impl Into<String>, options: LockOptions) -> Mutex {
        Mutex {
            session,
            name: name.into(),
            options,
        }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The session it is held under.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Waits (FIFO) for the lock. Fails at once with [`StateError::SessionLost`] when the
    /// session ends while waiting.
    pub async fn lock(&self) -> Result<LockGuard, StateError> {
        self.session.check_alive()?;
        let before = self.previous_holder().await?;
        let lost = self.session.lost();
        let grant = tokio::select! {
            biased;
            reason = lost => return Err(self.session.lost_error(reason)),
            r = self.session.coord().lock(&self.name, self.session.lease()) => {
                r.map_err(|e| self.waiter_error(e))?
            }
        };
        self.granted(grant, before).await
    }

    /// Waits at most `timeout` for the lock; on timeout leaves the queue and fails with
    /// [`StateError::Timeout`].
    pub async fn lock_timeout(&self, timeout: Duration) -> Result<LockGuard, StateError> {
        match tokio::time::timeout(timeout, self.lock()).await {
            Ok(r) => r,
            Err(_) => {
                self.leave_queue().await?;
                Err(StateError::Timeout {
                    what: format!("lock {:?}", self.name),
                })
            }
        }
    }

    /// Takes the lock if it is free; fails with [`StateError::WouldBlock`] if it is held. If
    /// another acquirer wins the race into the queue, waits at most
    /// [`LockOptions::try_lock_wait`] before giving up.
    pub async fn try_lock(&self) -> Result<LockGuard, StateError> {
        self.session.check_alive()?;
        let holder = self
            .session
            .coord()
            .lock_holder(&self.name, Consistency::Linearizable)
            .await
            .map_err(StateError::coord("read lock holder"))?;
        if holder.is_some_and(|h| h.lease != self.session.lease()) {
            return Err(StateError::WouldBlock {
                what: format!("lock {:?}", self.name),
            });
        }
        match self.lock_timeout(self.options.try_lock_wait).await {
            Err(StateError::Timeout { .. }) => Err(StateError::WouldBlock {
                what: format!("lock {:?}", self.name),
            }),
            r => r,
        }
    }

    fn waiter_error(&self, e: CoordError) -> StateError {
        match e {
            CoordError::LeaseNotFound { .. } | CoordError::LeaseExpired { .. } => {
                self.session.lost_error(LostReason::Revoked)
            }
            e => StateError::Coord {
                what: "wait for lock",
                source: e,
            },
        }
    }

    async fn previous_holder(&self) -> Result<Option<LockGrant>, StateError> {
        if self.options.lock_delay.is_zero() {
            return Ok(None);
        }
        self.session
            .coord()
            .lock_holder(&self.name, Consistency::Linearizable)
            .await
            .map_err(StateError::coord("read lock holder"))
    }

    /// Applies the lock-delay if the holder seen when the wait began lost its session.
    async fn granted(
        &self,
        grant: LockGrant,
        before: Option<LockGrant>,
    ) -> Result<LockGuard, StateError> {
        let guard = LockGuard {
            grant,
            session: self.session.clone(),
            released: false,
        };
        if let Some(prev) = before.filter(|p| p.lease != self.session.lease()) {
            let gone = matches!(
                self.session.coord().lease_time_to_live(prev.lease).await,
                Err(CoordError::LeaseNotFound { .. } | CoordError::LeaseExpired { .. })
            );
            if gone {
                let lost = self.session.lost();
                tokio::select! {
                    biased;
                    reason = lost => return Err(self.session.lost_error(reason)),
                    () = tokio::time::sleep(self.options.lock_delay) => {}
                }
            }
        }
        Ok(guard)
    }

    /// Removes this session's waiter key from the lock's queue (after a timeout), or releases
    /// the lock if it was granted meanwhile.
    async fn leave_queue(&self) -> Result<(), StateError> {
        let coord = self.session.coord();
        let lease = self.session.lease();
        let holder = coord
            .lock_holder(&self.name, Consistency::Linearizable)
            .await
            .map_err(StateError::coord("read lock holder"))?;
        let Some(holder) = holder else {
            // Nobody holds it, so no waiter of ours is queued.
            return Ok(());
        };
        if holder.lease == lease {
            coord.unlock(&holder).await.map_err(StateError::coord(
                "release a lock granted after the timeout",
            ))?;
            return Ok(());
        }
        let Some(key) = self.own_waiter_key(&holder.key, lease).await? else {
            return Ok(());
        };
        let Some(kv) = coord
            .get(&key, Consistency::Linearizable)
            .await
            .map_err(StateError::coord("read own waiter key"))?
            .kv
        else {
            return Ok(());
        };
        let mine = LockGrant {
            name: self.name.clone(),
            key,
            lease,
            create_revision: kv.create_revision,
            token: FencingToken(0),
        };
        coord
            .unlock(&mine)
            .await
            .map_err(StateError::coord("leave the lock queue"))?;
        Ok(())
    }

    /// This lease's key in the queue that `holder_key` belongs to: both backends name a waiter
    /// `<queue prefix><lease in hex>`.
    async fn own_waiter_key(
        &self,
        holder_key: &str,
        lease: LeaseId,
    ) -> Result<Option<String>, StateError> {
        let Some((queue, _)) = holder_key.rsplit_once('/') else {
            return Ok(None);
        };
        let info = match self.session.coord().lease_time_to_live(lease).await {
            Ok(info) => info,
            Err(CoordError::LeaseNotFound { .. } | CoordError::LeaseExpired { .. }) => {
                return Ok(None);
            }
            Err(e) => return Err(StateError::coord("list own keys")(e)),
        };
        Ok(info.keys.into_iter().find(|k| {
            k.rsplit_once('/').is_some_and(|(q, hex)| {
                q == queue && u64::from_str_radix(hex, 16).is_ok_and(|id| id == lease.0)
            })
        }))
    }
}

/// A held lock. Check [`lost`](LockGuard::lost) (or [`is_held`](LockGuard::is_held)) before
/// acting, write through [`put_if_owner`](LockGuard::put_if_owner), and pass
/// [`fencing_token`](LockGuard::fencing_token) to resources that can check it.
///
/// Dropping a guard releases the lock in the background (through the session's keeper);
/// [`unlock`](LockGuard::unlock) releases it and reports errors.
#[derive(Debug)]
pub struct LockGuard {
    grant: LockGrant,
    session: Session,
    released: bool,
}

impl LockGuard {
    /// The fencing token of this grant: strictly greater than every earlier grant's.
    pub fn fencing_token(&self) -> FencingToken {
        self.grant.token
    }

    /// The grant (name, holder key, lease, create revision, token).
    pub fn grant(&self) -> &LockGrant {
        &self.grant
    }

    /// Resolves when the lock is lost: the session ended. Fires at the holder-side deadline at
    /// the latest, before the backend can hand the lock to anyone else (within the drift
    /// bound; beyond it only the fencing token protects).
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        self.session.lost()
    }

    /// Whether the lock is still held as far as this holder can tell (its session is alive).
    pub fn is_held(&self) -> bool {
        self.session.is_alive()
    }

    /// Writes `value` under `key` only if this guard still holds the lock (a transaction
    /// guarded by the holder key's create revision, etcd's `IsOwner`). Refused locally once
    /// the session is lost; fails with [`StateError::NotHolder`] if the backend says the lock
    /// is gone.
    pub async fn put_if_owner(
        &self,
        key: impl Into<String>,
        value: Vec<u8>,
    ) -> Result<Revision, StateError> {
        self.txn_if_owner(vec![TxnOp::Put {
            key: key.into(),
            value,
            lease: None,
        }])
        .await
    }

    /// Runs `ops` atomically only if this guard still holds the lock; returns the revision.
    pub async fn txn_if_owner(&self, ops: Vec<TxnOp>) -> Result<Revision, StateError> {
        self.session.check_alive()?;
        let txn = Txn {
            compares: vec![Compare::create_revision_eq(
                &self.grant.key,
                self.grant.create_revision,
            )],
            success: ops,
            failure: vec![],
        };
        let r = self
            .session
            .coord()
            .txn(txn)
            .await
            .map_err(StateError::coord("guarded write"))?;
        if r.succeeded {
            Ok(r.revision)
        } else {
            Err(StateError::NotHolder {
                key: self.grant.key.clone(),
            })
        }
    }

    /// Releases the lock (the next waiter is granted).
    pub async fn unlock(mut self) -> Result<(), StateError> {
        self.released = true;
        self.session
            .coord()
            .unlock(&self.grant)
            .await
            .map_err(StateError::coord("unlock"))?;
        Ok(())
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if !self.released && self.session.lost_reason().is_none() {
            let _ = self.session.release_later(self.grant.clone());
        }
    }
}
