//! [`Semaphore`]: N permits, each held under its own [`Session`] (so each has its own lease,
//! fencing token and `lost()`). A permit is a slot key `<prefix><name>/slot/<i>` attached to
//! the permit's lease: a dead holder's slot disappears when its lease expires, and every waiter
//! (watching the slots) retries at once; no waiter stalls behind a dead one. Waiters are not
//! served in FIFO order.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use quorate_coord_api::{
    Compare, Consistency, Coord, EventKind, FencingToken, RangeRequest, Revision, Txn, TxnOp,
};

use quorate_clock::{SharedClock, SystemClock};

use crate::error::StateError;
use crate::session::{LostReason, Session, SessionConfig};

/// Prefix of every semaphore's slot keys.
pub const SEMAPHORE_PREFIX: &str = "quorate-state/semaphore/";

/// The most permits one semaphore may have.
pub const PERMITS_MAX: u32 = 1024;

/// A counting semaphore with `permits` permits. Every client of one semaphore must use the same
/// name and permit count.
///
/// ```no_run
/// # async fn demo(coord: std::sync::Arc<dyn quorate_coord_api::Coord>) -> Result<(), quorate_state::StateError> {
/// use std::num::NonZeroU32;
/// use std::time::Duration;
/// use quorate_state::{Semaphore, SessionConfig};
/// let three = NonZeroU32::new(3).unwrap_or(NonZeroU32::MIN);
/// let sem = Semaphore::new(coord, "exporters", three, SessionConfig::new(Duration::from_secs(3)))?;
/// let permit = sem.acquire().await?;
/// tokio::select! {
///     reason = permit.lost() => eprintln!("permit lost: {reason}"),
///     () = tokio::time::sleep(Duration::from_secs(1)) => {}
/// }
/// permit.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Semaphore {
    coord: Arc<dyn Coord>,
    name: String,
    permits: NonZeroU32,
    session: SessionConfig,
    clock: SharedClock,
}

impl std::fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Semaphore")
            .field("name", &self.name)
            .field("permits", &self.permits)
            .finish()
    }
}

impl Semaphore {
    /// The semaphore `name` with `permits` permits; each permit's session uses `session`.
    pub fn new(
        coord: Arc<dyn Coord>,
        name: impl Into<String>,
        permits: NonZeroU32,
        session: SessionConfig,
    ) -> Result<Semaphore, StateError> {
        let name = name.into();
        if name.is_empty() || name.contains('/') {
            return Err(StateError::Config {
                reason: format!("semaphore name {name:?} must be non-empty and contain no '/'"),
            });
        }
        if permits.get() > PERMITS_MAX {
            return Err(StateError::Config {
                reason: format!(
                    "semaphore {name:?}: {} permits exceed the maximum {PERMITS_MAX}",
                    permits.get()
                ),
            });
        }
        session.validate()?;
        Ok(Semaphore {
            coord,
            name,
            permits,
            session,
            clock: SystemClock::shared(),
        })
    }

    /// Runs every permit's session on `clock` (default: the system's monotonic clock).
    pub fn with_clock(mut self, clock: SharedClock) -> Semaphore {
        self.clock = clock;
        self
    }

    async fn session(&self) -> Result<Session, StateError> {
        Session::start_with_clock(
            Arc::clone(&self.coord),
            self.session.clone(),
            Arc::clone(&self.clock),
        )
        .await
    }

    fn slots_prefix(&self) -> String {
        format!("{SEMAPHORE_PREFIX}{}/slot/", self.name)
    }

    fn slot_key(&self, i: u32) -> String {
        format!("{}{i:05}", self.slots_prefix())
    }

    /// Waits for a permit. Fails with [`StateError::SessionLost`] if the permit's session ends
    /// while waiting.
    pub async fn acquire(&self) -> Result<Permit, StateError> {
        let session = self.session().await?;
        let r = self.acquire_with(&session, true).await;
        if r.is_err() {
            session.close().await;
        }
        r
    }

    /// Takes a permit if one is free, else fails with [`StateError::WouldBlock`].
    pub async fn try_acquire(&self) -> Result<Permit, StateError> {
        let session = self.session().await?;
        let r = self.acquire_with(&session, false).await;
        if r.is_err() {
            session.close().await;
        }
        r
    }

    /// Waits at most `timeout` for a permit, else fails with [`StateError::Timeout`].
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<Permit, StateError> {
        let session = self.session().await?;
        let r = match tokio::time::timeout(timeout, self.acquire_with(&session, true)).await {
            Ok(r) => r,
            Err(_) => Err(StateError::Timeout {
                what: format!("a permit of semaphore {:?}", self.name),
            }),
        };
        if r.is_err() {
            // Closing revokes the lease, so a slot taken just before the timeout is freed too.
            session.close().await;
        }
        r
    }

    async fn acquire_with(&self, session: &Session, wait: bool) -> Result<Permit, StateError> {
        loop {
            session.check_alive()?;
            let seen = match self.try_take(session).await? {
                Ok(permit) => return Ok(permit),
                Err(seen) => seen,
            };
            if !wait {
                return Err(StateError::WouldBlock {
                    what: format!("semaphore {:?}", self.name),
                });
            }
            let lost = session.lost();
            tokio::select! {
                biased;
                reason = lost => return Err(session.lost_error(reason)),
                r = self.slot_freed(seen) => r?,
            }
        }
    }

    /// One attempt: takes the first free slot. `Err(revision)` when every slot was taken at
    /// that revision.
    async fn try_take(&self, session: &Session) -> Result<Result<Permit, Revision>, StateError> {
        let mut req = RangeRequest::prefix(self.slots_prefix());
        req.consistency = Consistency::Linearizable;
        req.limit = Some(self.permits.get().saturating_add(1));
        let r = self
            .coord
            .range(req)
            .await
            .map_err(StateError::coord("read semaphore slots"))?;
        let taken: std::collections::BTreeSet<u32> = r
            .kvs
            .iter()
            .filter_map(|kv| kv.key.strip_prefix(&self.slots_prefix())?.parse().ok())
            .collect();
        let Some(slot) = (0..self.permits.get()).find(|i| !taken.contains(i)) else {
            return Ok(Err(r.revision));
        };
        let key = self.slot_key(slot);
        let txn = Txn {
            compares: vec![Compare::absent(&key)],
            success: vec![TxnOp::Put {
                key: key.clone(),
                value: session.lease().0.to_be_bytes().to_vec(),
                lease: Some(session.lease()),
            }],
            failure: vec![],
        };
        let t = self.coord.txn(txn).await.map_err(|e| match e {
            quorate_coord_api::CoordError::LeaseNotFound { .. }
            | quorate_coord_api::CoordError::LeaseExpired { .. } => {
                session.lost_error(LostReason::Revoked)
            }
            e => StateError::coord("take a semaphore slot")(e),
        })?;
        if !t.succeeded {
            // Someone took that slot between the read and the write: the next read shows it.
            return Ok(Err(Revision(0)));
        }
        Ok(Ok(Permit {
            session: session.clone(),
            slot,
            key,
            create_revision: t.revision,
            token: FencingToken(t.revision.0),
        }))
    }

    /// Returns when a slot may have been freed after revision `seen` (a delete under the
    /// slots prefix, or a broken watch: the caller re-reads either way).
    async fn slot_freed(&self, seen: Revision) -> Result<(), StateError> {
        if seen == Revision(0) {
            return Ok(());
        }
        let mut w = self
            .coord
            .watch(&self.slots_prefix(), Some(seen.next()))
            .await
            .map_err(StateError::coord("watch semaphore slots"))?;
        while let Some(ev) = w.next().await {
            match ev {
                Ok(ev) if ev.kind == EventKind::Delete => return Ok(()),
                Ok(_) => {}
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }
}

/// One permit of a [`Semaphore`], held under its own session.
#[derive(Debug)]
pub struct Permit {
    session: Session,
    slot: u32,
    key: String,
    create_revision: Revision,
    token: FencingToken,
}

impl Permit {
    /// The fencing token of this grant (strictly greater than every earlier permit grant of
    /// this semaphore).
    pub fn token(&self) -> FencingToken {
        self.token
    }

    /// Which slot (0..permits) this permit occupies.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// The permit's own session.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Resolves when the permit is lost (its session ended), before the lease can expire on
    /// the backend within the drift bound.
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        self.session.lost()
    }

    /// Whether the permit is still held as far as this holder can tell.
    pub fn is_held(&self) -> bool {
        self.session.is_alive()
    }

    /// Gives the permit back and ends its session.
    pub async fn release(self) -> Result<(), StateError> {
        let txn = Txn {
            compares: vec![Compare::create_revision_eq(&self.key, self.create_revision)],
            success: vec![TxnOp::Delete {
                key: self.key.clone(),
            }],
            failure: vec![],
        };
        let r = self
            .session
            .coord()
            .txn(txn)
            .await
            .map_err(StateError::coord("release permit"));
        self.session.close().await;
        r.map(|_| ())
    }
}
