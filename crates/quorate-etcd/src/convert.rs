//! Conversions between etcd's types and the coordination contract's, and key-range helpers.

use quorate_coord_api::{CoordError, EventKind, KeyValue, LeaseId, Revision, WatchEvent};

/// A revision from etcd (never negative in practice).
pub(crate) fn rev(r: i64) -> Revision {
    Revision(u64::try_from(r).unwrap_or(0))
}

/// The revision in a response header (0 if etcd sent none).
pub(crate) fn header_rev(h: Option<&etcd_client::ResponseHeader>) -> Revision {
    rev(h.map_or(0, etcd_client::ResponseHeader::revision))
}

/// A revision as etcd wants it.
pub(crate) fn rev_i64(r: Revision) -> i64 {
    i64::try_from(r.0).unwrap_or(i64::MAX)
}

/// A lease id as etcd wants it; ids above `i64::MAX` cannot exist in etcd.
pub(crate) fn lease_i64(id: LeaseId) -> Result<i64, CoordError> {
    i64::try_from(id.0).map_err(|_| CoordError::LeaseNotFound { id })
}

/// A lease id from etcd (0 = none).
pub(crate) fn lease_of(l: i64) -> Option<LeaseId> {
    u64::try_from(l).ok().filter(|l| *l != 0).map(LeaseId)
}

/// A key from etcd. Keys written by quorate are UTF-8; another writer's binary key is refused
/// rather than shown altered.
pub(crate) fn key_string(key: &[u8]) -> Result<String, CoordError> {
    String::from_utf8(key.to_vec()).map_err(|_| CoordError::Internal {
        reason: format!(
            "etcd holds a key that is not UTF-8 ({:?}); quorate keys are strings: keep binary keys out of the key range quorate uses",
            String::from_utf8_lossy(key)
        ),
    })
}

/// An etcd key-value as the contract's.
pub(crate) fn kv(k: &etcd_client::KeyValue) -> Result<KeyValue, CoordError> {
    Ok(KeyValue {
        key: key_string(k.key())?,
        value: k.value().to_vec(),
        create_revision: rev(k.create_revision()),
        mod_revision: rev(k.mod_revision()),
        version: u64::try_from(k.version()).unwrap_or(0),
        lease: lease_of(k.lease()),
    })
}

/// An optional etcd key-value.
pub(crate) fn kv_opt(k: Option<&etcd_client::KeyValue>) -> Result<Option<KeyValue>, CoordError> {
    k.map(kv).transpose()
}

/// An etcd watch event as the contract's. A delete carries only the key and its revision.
pub(crate) fn event(e: &etcd_client::Event) -> Result<WatchEvent, CoordError> {
    let Some(k) = e.kv() else {
        return Err(CoordError::Internal {
            reason: "etcd sent a watch event without a key".into(),
        });
    };
    let kind = match e.event_type() {
        etcd_client::EventType::Put => EventKind::Put,
        etcd_client::EventType::Delete => EventKind::Delete,
    };
    let mut kv = kv(k)?;
    if kind == EventKind::Delete {
        kv.value.clear();
        kv.create_revision = Revision(0);
        kv.version = 0;
        kv.lease = None;
    }
    Ok(WatchEvent { kind, kv })
}

/// The end of the key range of every key starting with `prefix` (etcd's `GetPrefix`):
/// the prefix with its last byte below 0xff increased and the rest cut; `[0]` (= to the end
/// of the key space) for an empty or all-0xff prefix.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The first key of the range of `prefix` (etcd refuses an empty key: use `\0`).
pub(crate) fn prefix_start(prefix: &str) -> Vec<u8> {
    if prefix.is_empty() {
        vec![0]
    } else {
        prefix.as_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_follows_etcd() {
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b""), vec![0]);
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_start(""), vec![0]);
    }

    #[test]
    fn lease_ids_round_trip_and_zero_is_none() {
        assert_eq!(lease_of(0), None);
        assert_eq!(lease_of(7), Some(LeaseId(7)));
        assert_eq!(lease_i64(LeaseId(7)), Ok(7));
        assert!(lease_i64(LeaseId(u64::MAX)).is_err());
        assert_eq!(rev(-1), Revision(0));
    }
}
