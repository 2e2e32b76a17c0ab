//! `StateMap` edge cases on the in-memory backend under paused time: a watch that cannot resume
//! without a gap says so, bytes of another type are reported and skipped, oversized values and
//! bad prefixes are refused with errors that name the fix.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

mod common;

use std::num::NonZeroU64;

use futures::StreamExt;
use quorate_coord_api::Revision;
use quorate_state::{StateError, StateMap, StateMapConfig};

fn cfg(n: u64) -> StateMapConfig {
    StateMapConfig::new(NonZeroU64::new(n).unwrap())
}

#[tokio::test(start_paused = true)]
async fn a_watch_that_cannot_resume_without_a_gap_says_so() {
    let coord = common::local_with_history(20);
    let map: StateMap<u32, u32> = StateMap::new(coord, "m/", cfg(100)).unwrap();
    let first = map.put(&0, &0).await.unwrap();
    for i in 1..60 {
        map.put(&(i % 5), &i).await.unwrap();
    }
    let mut w = map.watch(Some(first)).await.unwrap();
    let item = w.next().await.expect("an item");
    assert!(
        matches!(item, Err(StateError::WatchGap { from, .. }) if from == first),
        "{item:?}"
    );
    assert!(w.next().await.is_none(), "the stream goes on after a gap");
}

#[tokio::test(start_paused = true)]
async fn bytes_of_another_type_are_reported_and_skipped() {
    let coord = common::local();
    let map: StateMap<u32, String> = StateMap::new(coord.clone(), "t/", cfg(10)).unwrap();
    let mut w = map.watch(None).await.unwrap();
    // A u32 key 1 is the postcard byte 0x01 (hex "01"); an invalid UTF-8 value follows.
    coord
        .put("t/e/01", vec![0x02, 0xff, 0xfe], None)
        .await
        .unwrap();
    map.put(&2, &"ok".to_owned()).await.unwrap();
    let bad = w.next().await.unwrap();
    assert!(matches!(bad, Err(StateError::Codec { .. })), "{bad:?}");
    let good = w.next().await.unwrap().unwrap();
    assert_eq!((good.key, good.value), (2, Some("ok".to_owned())));
    let read = map.get(&1).await;
    assert!(matches!(read, Err(StateError::Codec { .. })), "{read:?}");
}

#[tokio::test(start_paused = true)]
async fn oversized_values_and_bad_prefixes_are_refused() {
    let coord = common::local();
    let max = coord.capabilities().value_bytes_max;
    let map: StateMap<u8, Vec<u8>> = StateMap::new(coord.clone(), "big/", cfg(10)).unwrap();
    let e = map.put(&1, &vec![7; max + 1]).await.unwrap_err();
    assert!(e.to_string().contains("value_bytes_max"), "{e}");
    assert_eq!(map.len().await.unwrap(), 0);
    for bad in ["", "no-slash"] {
        let e = StateMap::<u8, u8>::new(coord.clone(), bad, cfg(1)).unwrap_err();
        assert!(e.to_string().contains("end with '/'"), "{e}");
    }
    assert_eq!(map.get(&9).await.unwrap(), None);
    assert_eq!(
        map.compare_and_set(&9, Some(Revision(1)), &vec![])
            .await
            .unwrap(),
        None
    );
}
