//! Gossiped records beside foca's member updates: metadata, voter views and leave intents.
//!
//! They travel as foca custom broadcasts (deduplicated and retransmitted like member updates)
//! and inside push/pull syncs. Each record has a version; a node keeps the newest one per
//! (node, kind) in its [`Book`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

use foca::{BroadcastHandler, Invalidates};
use quorate_health_api::HealthStatus;
use quorate_membership_api::{HealthSummary, MemberMeta};
use quorate_types::{NodeId, NodeMeta};
use serde::{Deserialize, Serialize};

use crate::ident::Ident;

/// Orders records of one node: the process generation (its starting incarnation), then a
/// counter within that life.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Version {
    /// The incarnation the publishing process started with.
    pub generation: u64,
    /// Increases with every record of that kind the process publishes.
    pub seq: u64,
}

/// Metadata as it crosses the wire.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireMeta {
    /// API address, version, roles, tags.
    pub node: NodeMeta,
    /// Overall health status.
    pub health: HealthStatus,
    /// Passing checks.
    pub healthy: u16,
    /// Enabled checks.
    pub total: u16,
}

impl From<&MemberMeta> for WireMeta {
    fn from(m: &MemberMeta) -> Self {
        Self {
            node: m.node.clone(),
            health: m.health.status,
            healthy: m.health.healthy,
            total: m.health.total,
        }
    }
}

impl From<&WireMeta> for MemberMeta {
    fn from(m: &WireMeta) -> Self {
        Self {
            node: m.node.clone(),
            health: HealthSummary {
                status: m.health,
                healthy: m.healthy,
                total: m.total,
            },
        }
    }
}

/// One gossiped record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// What `node` says about itself.
    Meta {
        /// The publisher.
        node: NodeId,
        /// Its version.
        version: Version,
        /// The metadata.
        meta: WireMeta,
    },
    /// Which voters a voter sees, and whether that is a majority (for split-brain detection).
    View {
        /// The publisher (a voter).
        node: NodeId,
        /// Its version.
        version: Version,
        /// The voters it sees as reachable (itself included).
        reachable: BTreeSet<NodeId>,
        /// Whether that is a majority.
        has_majority: bool,
    },
    /// `node` is leaving on purpose: its identity of `incarnation` (and older) going down is a
    /// leave, not a failure.
    Leave {
        /// The leaver.
        node: NodeId,
        /// The incarnation that leaves.
        incarnation: u64,
    },
}

impl Record {
    /// The node the record is about.
    pub fn node(&self) -> &NodeId {
        match self {
            Record::Meta { node, .. } | Record::View { node, .. } | Record::Leave { node, .. } => {
                node
            }
        }
    }

    fn key(&self) -> RecordKey {
        let (kind, version) = match self {
            Record::Meta { version, .. } => (0, *version),
            Record::View { version, .. } => (1, *version),
            Record::Leave { incarnation, .. } => (
                2,
                Version {
                    generation: *incarnation,
                    seq: 0,
                },
            ),
        };
        RecordKey {
            node: self.node().clone(),
            kind,
            version,
        }
    }
}

/// Deduplication key of a record in foca's broadcast queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordKey {
    node: NodeId,
    kind: u8,
    version: Version,
}

impl Invalidates for RecordKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.node == other.node && self.kind == other.kind && self.version >= other.version
    }
}

/// A voter's published view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewEntry {
    /// Version of the record.
    pub version: Version,
    /// Voters it sees.
    pub reachable: BTreeSet<NodeId>,
    /// Whether it claims a majority.
    pub has_majority: bool,
}

/// The newest record of each kind per node, bounded by `entries_max` nodes.
#[derive(Debug, Default)]
pub struct Book {
    /// Metadata by node.
    pub meta: BTreeMap<NodeId, (Version, WireMeta)>,
    /// Voter views by node.
    pub views: BTreeMap<NodeId, ViewEntry>,
    /// Leave intents: node to the highest incarnation that left.
    pub left: BTreeMap<NodeId, u64>,
    /// Nodes whose metadata changed since the last drain.
    pub meta_changed: BTreeSet<NodeId>,
    /// Whether any view or leave record changed since the last drain.
    pub other_changed: bool,
    /// Records refused because the book was full.
    pub refused_full: u64,
    /// The highest generation (or leave incarnation) accepted; set by the core before each
    /// input from what a sender can legitimately have. Default: no bound.
    pub generation_max: u64,
    /// Records refused because their generation was above `generation_max`.
    pub refused_generation: u64,
    entries_max: usize,
}

impl Book {
    /// An empty book holding records of at most `entries_max` nodes per kind.
    pub fn new(entries_max: usize) -> Self {
        Self {
            entries_max,
            generation_max: u64::MAX,
            ..Self::default()
        }
    }

    /// Stores `r` if it is newer than what the book holds; returns whether it was. A record
    /// whose generation is above `generation_max` is refused and counted: no sender can have
    /// it, and once stored it would win over every real record of that node.
    pub fn accept(&mut self, r: &Record) -> bool {
        let generation = match r {
            Record::Meta { version, .. } | Record::View { version, .. } => version.generation,
            Record::Leave { incarnation, .. } => *incarnation,
        };
        if generation > self.generation_max {
            self.refused_generation += 1;
            return false;
        }
        match r {
            Record::Meta {
                node,
                version,
                meta,
            } => {
                if let Some((v, old)) = self.meta.get(node) {
                    if version <= v {
                        return false;
                    }
                    if old != meta {
                        self.meta_changed.insert(node.clone());
                    }
                } else if self.meta.len() >= self.entries_max {
                    self.refused_full += 1;
                    return false;
                } else {
                    self.meta_changed.insert(node.clone());
                }
                self.meta.insert(node.clone(), (*version, meta.clone()));
                true
            }
            Record::View {
                node,
                version,
                reachable,
                has_majority,
            } => {
                match self.views.get(node) {
                    Some(v) if *version <= v.version => return false,
                    None if self.views.len() >= self.entries_max => {
                        self.refused_full += 1;
                        return false;
                    }
                    _ => {}
                }
                self.views.insert(
                    node.clone(),
                    ViewEntry {
                        version: *version,
                        reachable: reachable.clone(),
                        has_majority: *has_majority,
                    },
                );
                self.other_changed = true;
                true
            }
            Record::Leave { node, incarnation } => {
                match self.left.get(node) {
                    Some(i) if incarnation <= i => return false,
                    None if self.left.len() >= self.entries_max => {
                        self.refused_full += 1;
                        return false;
                    }
                    _ => {}
                }
                self.left.insert(node.clone(), *incarnation);
                self.other_changed = true;
                true
            }
        }
    }

    /// Whether `ident` going down is a graceful leave.
    pub fn has_left(&self, ident: &Ident) -> bool {
        self.left
            .get(&ident.id)
            .is_some_and(|i| *i >= ident.incarnation)
    }

    /// The records published by `node` (for a join request or a reconnect).
    pub fn records_of(&self, node: &NodeId) -> Vec<Record> {
        let mut out = Vec::new();
        if let Some((version, meta)) = self.meta.get(node) {
            out.push(Record::Meta {
                node: node.clone(),
                version: *version,
                meta: meta.clone(),
            });
        }
        if let Some(v) = self.views.get(node) {
            out.push(Record::View {
                node: node.clone(),
                version: v.version,
                reachable: v.reachable.clone(),
                has_majority: v.has_majority,
            });
        }
        out
    }

    /// Every record, for a push/pull sync.
    pub fn records(&self) -> Vec<Record> {
        let mut out = Vec::with_capacity(self.meta.len() + self.views.len() + self.left.len());
        for (node, (version, meta)) in &self.meta {
            out.push(Record::Meta {
                node: node.clone(),
                version: *version,
                meta: meta.clone(),
            });
        }
        for (node, v) in &self.views {
            out.push(Record::View {
                node: node.clone(),
                version: v.version,
                reachable: v.reachable.clone(),
                has_majority: v.has_majority,
            });
        }
        for (node, incarnation) in &self.left {
            out.push(Record::Leave {
                node: node.clone(),
                incarnation: *incarnation,
            });
        }
        out
    }
}

/// Shared handle on the book (foca owns the broadcast handler; the core reads the same book).
pub type SharedBook = Arc<Mutex<Book>>;

/// Locks the book (a poisoned lock still holds consistent data: every update is one insert).
pub fn lock(book: &SharedBook) -> std::sync::MutexGuard<'_, Book> {
    book.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A custom broadcast could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("gossiped record does not decode: {0}")]
pub struct RecordDecodeError(postcard::Error);

/// foca's broadcast handler: decodes records and keeps the newest in the book.
pub struct Handler {
    book: SharedBook,
}

impl Handler {
    /// A handler writing to `book`.
    pub fn new(book: SharedBook) -> Self {
        Self { book }
    }
}

impl BroadcastHandler<Ident> for Handler {
    type Key = RecordKey;
    type Error = RecordDecodeError;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&Ident>,
    ) -> Result<Option<RecordKey>, RecordDecodeError> {
        let record: Record = postcard::from_bytes(data).map_err(RecordDecodeError)?;
        if lock(&self.book).accept(&record) {
            Ok(Some(record.key()))
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn newest_record_wins_and_book_is_bounded() {
        let mut book = Book::new(1);
        let meta = |g, s, v: &str| Record::Meta {
            node: id("a"),
            version: Version {
                generation: g,
                seq: s,
            },
            meta: WireMeta {
                node: NodeMeta {
                    version: v.to_owned(),
                    ..NodeMeta::default()
                },
                ..WireMeta::default()
            },
        };
        assert!(book.accept(&meta(1, 1, "x")));
        assert!(!book.accept(&meta(1, 1, "y")));
        assert!(!book.accept(&meta(0, 9, "y")));
        assert!(book.accept(&meta(2, 0, "y")));
        assert_eq!(book.meta[&id("a")].1.node.version, "y");
        let other = Record::Leave {
            node: id("b"),
            incarnation: 1,
        };
        assert!(book.accept(&other));
        let third = Record::Meta {
            node: id("c"),
            version: Version::default(),
            meta: WireMeta::default(),
        };
        assert!(!book.accept(&third));
        assert_eq!(book.refused_full, 1);
        let ident = Ident {
            id: id("b"),
            addr: "127.0.0.1:1".parse().unwrap(),
            incarnation: 1,
        };
        assert!(book.has_left(&ident));
        assert!(!book.has_left(&ident.clone().renew_for_test()));
    }

    trait RenewForTest {
        fn renew_for_test(self) -> Ident;
    }
    impl RenewForTest for Ident {
        fn renew_for_test(self) -> Ident {
            foca::Identity::renew(&self).unwrap()
        }
    }

    #[test]
    fn keys_invalidate_older_versions_of_same_kind() {
        let a = Record::Leave {
            node: id("a"),
            incarnation: 3,
        }
        .key();
        let b = Record::Leave {
            node: id("a"),
            incarnation: 2,
        }
        .key();
        assert!(a.invalidates(&b));
        assert!(!b.invalidates(&a));
        let c = Record::View {
            node: id("a"),
            version: Version::default(),
            reachable: BTreeSet::new(),
            has_majority: false,
        }
        .key();
        assert!(!a.invalidates(&c));
    }

    #[test]
    fn handler_rejects_garbage_without_panicking() {
        let mut h = Handler::new(Arc::new(Mutex::new(Book::new(8))));
        assert!(h.receive_item(&[0xff, 0xff, 0xff], None).is_err());
        let rec = Record::Leave {
            node: id("z"),
            incarnation: 1,
        };
        let bytes = postcard::to_allocvec(&rec).unwrap();
        assert!(h.receive_item(&bytes, None).unwrap().is_some());
        assert!(h.receive_item(&bytes, None).unwrap().is_none());
    }
}
