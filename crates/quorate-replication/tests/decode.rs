//! Decoding replicated states and digests from untrusted bytes: random input never panics
//! (neither the decode nor the merge or diff that follows), and every type round-trips through
//! postcard, the encoding the transport will use.
#![allow(clippy::unwrap_used, reason = "test")]

use std::num::NonZeroU64;

use proptest::prelude::*;
use quorate_replication::{
    Crdt, DigestConfig, Hlc, HlcConfig, HlcTimestamp, LwwMap, LwwRegister, MerkleDigest,
    MvRegister, OrMap, OrSet, PnCounter,
};
use quorate_types::NodeId;

fn decode_and_use<C: Crdt>(bytes: &[u8], sample: &C) {
    if let Ok(c) = postcard::from_bytes::<C>(bytes) {
        let mut x = sample.clone();
        x.merge(&c);
        let mut y = c.clone();
        y.merge(sample);
        let _ = (x.size(), y.size(), sample.conflict(&c));
    }
}

/// One reachable state of each merge type.
type Samples = (
    LwwRegister<u8>,
    MvRegister<u8>,
    PnCounter,
    OrSet<u8>,
    LwwMap<u8, u8>,
    OrMap<u8, PnCounter>,
);

fn samples() -> Samples {
    let n = NodeId::new("a").unwrap();
    let mut clock = Hlc::new(
        n.clone(),
        HlcConfig {
            max_offset_ms: NonZeroU64::new(1).unwrap(),
        },
    );
    let mut lww = LwwRegister::bottom();
    lww.set(1, clock.now(5));
    let mut mv = MvRegister::bottom();
    mv.set(&n, 2);
    let mut ctr = PnCounter::bottom();
    ctr.increment(&n, 3).unwrap();
    let mut set = OrSet::bottom();
    set.add(&n, 4, 8).unwrap();
    let mut lmap = LwwMap::bottom();
    lmap.set(5, 6, clock.now(6), 8).unwrap();
    let mut omap = OrMap::bottom();
    omap.update(&n, 7, 8, |c: &mut PnCounter| c.increment(&n, 1))
        .unwrap();
    (lww, mv, ctr, set, lmap, omap)
}

fn round_trip<C: Crdt>(c: &C) {
    let bytes = postcard::to_stdvec(c).unwrap();
    assert_eq!(&postcard::from_bytes::<C>(&bytes).unwrap(), c);
}

#[test]
fn every_type_round_trips_through_postcard() {
    let (a, b, c, d, e, f) = samples();
    round_trip(&a);
    round_trip(&b);
    round_trip(&c);
    round_trip(&d);
    round_trip(&e);
    round_trip(&f);
    let cfg = DigestConfig::new(16, 2).unwrap();
    let digest = MerkleDigest::build(cfg, [("k", [1; 32])]);
    let bytes = postcard::to_stdvec(&digest).unwrap();
    assert_eq!(
        postcard::from_bytes::<MerkleDigest>(&bytes).unwrap(),
        digest
    );
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let (a, b, c, d, e, f) = samples();
        decode_and_use(&bytes, &a);
        decode_and_use(&bytes, &b);
        decode_and_use(&bytes, &c);
        decode_and_use(&bytes, &d);
        decode_and_use(&bytes, &e);
        decode_and_use(&bytes, &f);
        let _ = postcard::from_bytes::<HlcTimestamp>(&bytes);
        let ours = MerkleDigest::build(DigestConfig::new(4, 2).unwrap(), [("k", [1; 32])]);
        if let Ok(theirs) = postcard::from_bytes::<MerkleDigest>(&bytes) {
            let _ = (ours.diff(&theirs), theirs.root());
        }
    }

    /// A digest from a peer with a valid shape header but arbitrary hashes is diffed without
    /// panicking, and names only buckets that exist.
    #[test]
    fn mutated_digests_diff_within_range(flips in proptest::collection::vec((0usize..400, any::<u8>()), 0..8)) {
        let cfg = DigestConfig::new(4, 2).unwrap();
        let ours = MerkleDigest::build(cfg, [("k", [1; 32]), ("j", [2; 32])]);
        let mut bytes = postcard::to_stdvec(&ours).unwrap();
        for (at, b) in flips {
            let len = bytes.len();
            bytes[at % len] = b;
        }
        if let Ok(theirs) = postcard::from_bytes::<MerkleDigest>(&bytes)
            && let Ok(buckets) = ours.diff(&theirs)
        {
            prop_assert!(buckets.iter().all(|&b| b < cfg.leaves()));
        }
    }
}
