//! Admission of inbound TCP connections, shared by every quorate listener that speaks this wire
//! (the Raft transport, the replication transport): a cap per source address, a cap on
//! connections that have not yet proven the key, and a total cap.
//!
//! Why: a listener on a cluster port faces anyone who can reach it. Without a per-address cap
//! one host takes every slot; without preferring authenticated connections, a flood of
//! connections that never send an authentic frame locks the real peers out until each one's
//! pre-authentication deadline passes. So when the table is full (or holds
//! `unauthenticated_max` connections that have not authenticated), the oldest
//! unauthenticated connection is closed to make room; a new connection is refused only when
//! every slot holds an authenticated one.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// The caps of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InboundLimits {
    /// Connections served at once.
    pub connections_max: usize,
    /// Connections served at once from one source address.
    pub per_ip_max: usize,
    /// Connections served at once that have not delivered an authentic frame yet.
    pub unauthenticated_max: usize,
}

/// The inbound connections a listener serves, in accept order. Cheap to clone (shared).
#[derive(Clone, Debug, Default)]
pub struct Inbound {
    table: Arc<Mutex<Table>>,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    conns: BTreeMap<u64, Entry>,
    per_ip: BTreeMap<IpAddr, usize>,
}

#[derive(Debug)]
struct Entry {
    ip: IpAddr,
    authenticated: bool,
    evict: CancellationToken,
}

/// The outcome of [`Inbound::admit`].
#[derive(Debug)]
pub enum Admission {
    /// Serve it. Drop the slot when the connection ends; stop serving when `evict` fires (the
    /// connection was closed to make room for a newer one before it authenticated).
    Admitted {
        /// The connection's entry.
        slot: InboundSlot,
        /// Fires when the connection is evicted.
        evict: CancellationToken,
        /// Whether an older unauthenticated connection was evicted to make room.
        evicted: bool,
    },
    /// The source address already has `per_ip_max` connections.
    PerIpFull,
    /// Every slot holds an authenticated connection.
    Full,
}

impl Inbound {
    /// Admits (or refuses) a new connection from `ip` under `limits`.
    pub fn admit(&self, ip: IpAddr, limits: &InboundLimits) -> Admission {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if t.per_ip.get(&ip).copied().unwrap_or(0) >= limits.per_ip_max {
            return Admission::PerIpFull;
        }
        let unauthenticated = t.conns.values().filter(|c| !c.authenticated).count();
        let mut evicted = false;
        if unauthenticated >= limits.unauthenticated_max || t.conns.len() >= limits.connections_max
        {
            // Close the oldest connection that has not proven the key.
            let oldest = t
                .conns
                .iter()
                .find(|(_, c)| !c.authenticated)
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                t.remove(id);
                evicted = true;
            }
        }
        if t.conns.len() >= limits.connections_max {
            return Admission::Full;
        }
        let id = t.next_id;
        t.next_id += 1;
        let evict = CancellationToken::new();
        t.conns.insert(
            id,
            Entry {
                ip,
                authenticated: false,
                evict: evict.clone(),
            },
        );
        *t.per_ip.entry(ip).or_default() += 1;
        Admission::Admitted {
            slot: InboundSlot {
                table: Arc::clone(&self.table),
                id,
            },
            evict,
            evicted,
        }
    }

    /// Connections served now.
    pub fn len(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .conns
            .len()
    }

    /// Whether no connection is served.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Table {
    fn remove(&mut self, id: u64) {
        if let Some(c) = self.conns.remove(&id) {
            c.evict.cancel();
            if let Some(n) = self.per_ip.get_mut(&c.ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_ip.remove(&c.ip);
                }
            }
        }
    }
}

/// A served connection's entry in its [`Inbound`] table; removed when dropped.
#[derive(Debug)]
pub struct InboundSlot {
    table: Arc<Mutex<Table>>,
    id: u64,
}

impl InboundSlot {
    /// The connection delivered an authentic frame: it is no longer evicted to make room.
    pub fn authenticated(&self) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = t.conns.get_mut(&self.id) {
            c.authenticated = true;
        }
    }
}

impl Drop for InboundSlot {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: InboundLimits = InboundLimits {
        connections_max: 3,
        per_ip_max: 2,
        unauthenticated_max: 2,
    };

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn admitted(a: Admission) -> (InboundSlot, CancellationToken, bool) {
        match a {
            Admission::Admitted {
                slot,
                evict,
                evicted,
            } => (slot, evict, evicted),
            other => panic!("expected admitted, got {other:?}"),
        }
    }

    #[test]
    fn one_address_gets_at_most_its_share() {
        let t = Inbound::default();
        let (a, _, _) = admitted(t.admit(ip(1), &LIMITS));
        let (b, _, _) = admitted(t.admit(ip(1), &LIMITS));
        assert!(matches!(t.admit(ip(1), &LIMITS), Admission::PerIpFull));
        a.authenticated();
        b.authenticated();
        let (c, _, _) = admitted(t.admit(ip(2), &LIMITS));
        drop(c);
        assert_eq!(t.len(), 2, "a dropped slot frees its place");
    }

    #[test]
    fn the_oldest_unauthenticated_connection_makes_room() {
        let t = Inbound::default();
        let (old, old_evict, _) = admitted(t.admit(ip(1), &LIMITS));
        let (_mid, mid_evict, _) = admitted(t.admit(ip(2), &LIMITS));
        // Two unauthenticated: the third evicts the oldest.
        let (_new, _, evicted) = admitted(t.admit(ip(3), &LIMITS));
        assert!(evicted && old_evict.is_cancelled() && !mid_evict.is_cancelled());
        drop(old);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn authenticated_connections_are_never_evicted() {
        let t = Inbound::default();
        let mut slots = Vec::new();
        for i in 1..=3 {
            let (s, e, _) = admitted(t.admit(ip(i), &LIMITS));
            s.authenticated();
            slots.push((s, e));
        }
        assert!(matches!(t.admit(ip(9), &LIMITS), Admission::Full));
        assert!(slots.iter().all(|(_, e)| !e.is_cancelled()));
    }
}
