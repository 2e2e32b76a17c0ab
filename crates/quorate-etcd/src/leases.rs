//! What this client remembers about the leases it granted: their TTL (etcd's keep-alive
//! answer is not passed on by etcd-client) and whether it revoked them, so a lease etcd no
//! longer knows is reported as `LeaseExpired` (granted here, not revoked here) or
//! `LeaseNotFound` (anything else). Bounded by `leases_remembered`, oldest forgotten first.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use quorate_coord_api::{CoordError, LeaseId};

#[derive(Default)]
struct Book {
    /// TTL of each remembered lease, and whether it was revoked here.
    leases: BTreeMap<LeaseId, (Duration, bool)>,
    /// Grant order, for forgetting the oldest.
    order: VecDeque<LeaseId>,
}

/// The bounded lease memory of one client.
pub(crate) struct LeaseBook {
    book: Mutex<Book>,
    cap: usize,
}

impl LeaseBook {
    pub(crate) fn new(cap: usize) -> LeaseBook {
        LeaseBook {
            book: Mutex::new(Book::default()),
            cap: cap.max(1),
        }
    }

    pub(crate) fn granted(&self, id: LeaseId, ttl: Duration) {
        let Ok(mut b) = self.book.lock() else { return };
        if b.leases.insert(id, (ttl, false)).is_none() {
            b.order.push_back(id);
        }
        while b.order.len() > self.cap {
            if let Some(old) = b.order.pop_front() {
                b.leases.remove(&old);
            }
        }
    }

    pub(crate) fn revoked(&self, id: LeaseId) {
        if let Ok(mut b) = self.book.lock()
            && let Some(entry) = b.leases.get_mut(&id)
        {
            entry.1 = true;
        }
    }

    pub(crate) fn ttl(&self, id: LeaseId) -> Option<Duration> {
        self.book.lock().ok()?.leases.get(&id).map(|e| e.0)
    }

    /// The error for a lease etcd does not know.
    pub(crate) fn missing(&self, id: LeaseId) -> CoordError {
        let expired = self
            .book
            .lock()
            .ok()
            .and_then(|b| b.leases.get(&id).map(|e| !e.1))
            .unwrap_or(false);
        if expired {
            CoordError::LeaseExpired { id }
        } else {
            CoordError::LeaseNotFound { id }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn granted_then_gone_is_expired_revoked_or_unknown_is_not_found() {
        let book = LeaseBook::new(2);
        book.granted(LeaseId(1), Duration::from_secs(3));
        book.granted(LeaseId(2), Duration::from_secs(3));
        book.revoked(LeaseId(2));
        assert_eq!(
            book.missing(LeaseId(1)),
            CoordError::LeaseExpired { id: LeaseId(1) }
        );
        assert_eq!(
            book.missing(LeaseId(2)),
            CoordError::LeaseNotFound { id: LeaseId(2) }
        );
        assert_eq!(
            book.missing(LeaseId(9)),
            CoordError::LeaseNotFound { id: LeaseId(9) }
        );
        book.granted(LeaseId(3), Duration::from_secs(5));
        assert_eq!(
            book.ttl(LeaseId(1)),
            None,
            "the oldest is forgotten at the bound"
        );
        assert_eq!(book.ttl(LeaseId(3)), Some(Duration::from_secs(5)));
    }
}
