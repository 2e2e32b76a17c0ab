//! TTL management for operators (the HTTP API and Telegram adapters expose it): list and
//! inspect sessions and locks, and revoke them.
//!
//! Sessions started with a [`SessionConfig::label`](crate::SessionConfig::label) register
//! themselves under [`SESSIONS_PREFIX`] with a key attached to their own lease, so the record
//! vanishes with the session. Revoking is outside the holder-side timing guarantee: the holder
//! learns of it at its next renew, possibly after another holder was granted, so only fencing
//! protects a resource from a revoked holder.

use std::sync::Arc;
use std::time::Duration;

use quorate_coord_api::{
    Consistency, Coord, CoordError, LeaseId, LockGrant, RangeRequest, Revision,
};
use serde::{Deserialize, Serialize};

use crate::error::StateError;

/// Where labelled sessions register: `<prefix><lease as 16 hex digits>`.
pub const SESSIONS_PREFIX: &str = "quorate-state/sessions/";

/// The stored registration of a labelled session (postcard, in the coordination store).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionRecord {
    /// The label given by the owner.
    pub(crate) label: String,
}

/// The registry key of `lease`.
pub(crate) fn session_key(lease: LeaseId) -> String {
    format!("{SESSIONS_PREFIX}{:016x}", lease.0)
}

/// What an operator sees of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session's lease.
    pub lease: LeaseId,
    /// Its label, if it registered one.
    pub label: Option<String>,
    /// The TTL it was granted.
    pub granted_ttl: Duration,
    /// Time left by the backend's lease clock (an estimate for humans).
    pub remaining: Duration,
    /// Keys attached to it: its locks, waiter places, leaderships, permits, registration.
    pub keys: Vec<String>,
}

/// What an operator sees of a lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockInfo {
    /// The holder's grant.
    pub holder: LockGrant,
    /// The holder's session, if it still exists.
    pub session: Option<SessionInfo>,
}

/// Operator view of sessions and locks.
#[derive(Clone)]
pub struct Admin {
    coord: Arc<dyn Coord>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

impl Admin {
    /// Administration through `coord`.
    pub fn new(coord: Arc<dyn Coord>) -> Admin {
        Admin { coord }
    }

    /// One session, by lease; `None` if it no longer exists.
    pub async fn session(&self, lease: LeaseId) -> Result<Option<SessionInfo>, StateError> {
        let info = match self.coord.lease_time_to_live(lease).await {
            Ok(info) => info,
            Err(CoordError::LeaseNotFound { .. } | CoordError::LeaseExpired { .. }) => {
                return Ok(None);
            }
            Err(e) => return Err(StateError::coord("inspect session")(e)),
        };
        let label = self
            .coord
            .get(&session_key(lease), Consistency::Linearizable)
            .await
            .map_err(StateError::coord("read session registration"))?
            .kv
            .and_then(|kv| postcard::from_bytes::<SessionRecord>(&kv.value).ok())
            .map(|r| r.label);
        Ok(Some(SessionInfo {
            lease,
            label,
            granted_ttl: info.granted_ttl,
            remaining: info.remaining,
            keys: info.keys,
        }))
    }

    /// Every labelled session that is alive, up to `max`.
    pub async fn sessions(&self, max: u32) -> Result<Vec<SessionInfo>, StateError> {
        let mut req = RangeRequest::prefix(SESSIONS_PREFIX);
        req.limit = Some(max);
        let r = self
            .coord
            .range(req)
            .await
            .map_err(StateError::coord("list sessions"))?;
        let mut out = Vec::new();
        for kv in r.kvs {
            let Some(lease) = kv.lease else { continue };
            if let Some(info) = self.session(lease).await? {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Ends a session now: its locks, leaderships and permits are released. Its holder learns
    /// at its next renew (see the module docs: only fencing protects until then).
    pub async fn revoke_session(&self, lease: LeaseId) -> Result<Revision, StateError> {
        self.coord
            .lease_revoke(lease)
            .await
            .map_err(StateError::coord("revoke session"))
    }

    /// The holder of lock `name` and its session, if the lock is held.
    pub async fn lock(&self, name: &str) -> Result<Option<LockInfo>, StateError> {
        let holder = self
            .coord
            .lock_holder(name, Consistency::Linearizable)
            .await
            .map_err(StateError::coord("read lock holder"))?;
        let Some(holder) = holder else {
            return Ok(None);
        };
        let session = self.session(holder.lease).await?;
        Ok(Some(LockInfo { holder, session }))
    }

    /// Revokes the session holding lock `name` (the next waiter is granted). Returns the
    /// revoked grant, or `None` if the lock was free.
    pub async fn revoke_lock_holder(&self, name: &str) -> Result<Option<LockGrant>, StateError> {
        let Some(info) = self.lock(name).await? else {
            return Ok(None);
        };
        match self.coord.lease_revoke(info.holder.lease).await {
            Ok(_) | Err(CoordError::LeaseNotFound { .. } | CoordError::LeaseExpired { .. }) => {
                Ok(Some(info.holder))
            }
            Err(e) => Err(StateError::coord("revoke lock holder")(e)),
        }
    }
}
