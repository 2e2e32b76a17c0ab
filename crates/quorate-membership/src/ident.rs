//! The foca identity of a node: its `NodeId`, gossip address and incarnation.

use std::net::SocketAddr;

use foca::Identity;
use quorate_types::{NAME_BYTES_MAX, NodeId};
use serde::{Deserialize, Serialize};

/// foca's notion of a node's "address": the node id, copied inline so that foca's many
/// comparisons never allocate (a `NodeId` is at most [`NAME_BYTES_MAX`] bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IdKey {
    len: u8,
    bytes: [u8; NAME_BYTES_MAX],
}

impl IdKey {
    /// The key of `id`.
    pub fn of(id: &NodeId) -> Self {
        let mut bytes = [0u8; NAME_BYTES_MAX];
        let src = id.as_str().as_bytes();
        let n = src.len().min(NAME_BYTES_MAX);
        if let (Some(dst), Some(src)) = (bytes.get_mut(..n), src.get(..n)) {
            dst.copy_from_slice(src);
        }
        Self {
            len: u8::try_from(n).unwrap_or(u8::MAX),
            bytes,
        }
    }
}

/// Who a node is on the gossip network. Two identities with the same `id` are the same node in
/// different lives: the one with the higher `incarnation` wins (a restart starts from a fresh,
/// larger incarnation; a node declared down renews by adding one).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ident {
    /// The stable node id (foca's "address": one live identity per id).
    pub id: NodeId,
    /// Where to send its datagrams.
    pub addr: SocketAddr,
    /// The incarnation of this identity.
    pub incarnation: u64,
}

impl Identity for Ident {
    type Addr = IdKey;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            id: self.id.clone(),
            addr: self.addr,
            incarnation: self.incarnation.saturating_add(1),
        })
    }

    fn addr(&self) -> IdKey {
        IdKey::of(&self.id)
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.incarnation, self.addr) > (adversary.incarnation, adversary.addr)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    #[test]
    fn renewed_identity_wins() {
        let a = Ident {
            id: NodeId::new("n1").unwrap(),
            addr: "10.0.0.1:7946".parse().unwrap(),
            incarnation: 5,
        };
        let b = a.renew().unwrap();
        assert_eq!(b.incarnation, 6);
        assert!(b.win_addr_conflict(&a));
        assert!(!a.win_addr_conflict(&b));
        assert_eq!(Identity::addr(&a), Identity::addr(&b));
        let other = Ident {
            id: NodeId::new("n10").unwrap(),
            ..a.clone()
        };
        assert_ne!(Identity::addr(&a), Identity::addr(&other));
    }
}
