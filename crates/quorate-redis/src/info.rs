//! Pure parts: reading `INFO replication`, and the replication lag of each server measured
//! against the highest offset seen (no clock, no I/O: times come in as arguments).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use quorate_types::NodeId;

/// What `INFO replication` says about one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replication {
    /// `role:master`.
    pub master: bool,
    /// The replication offset this server has (a master's `master_repl_offset`, a replica's
    /// `slave_repl_offset`).
    pub offset: u64,
    /// A replica's master (`master_host`, `master_port`).
    pub following: Option<(String, u16)>,
    /// A replica's `master_link_status:up`.
    pub link_up: bool,
    /// A master's `connected_slaves`.
    pub connected_replicas: u32,
}

/// Parses the text of `INFO replication`; `Err` names what is missing.
pub fn parse_replication(text: &str) -> Result<Replication, String> {
    let mut fields = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            fields.insert(k, v);
        }
    }
    let master = match fields.get("role") {
        Some(&"master") => true,
        Some(&"slave") => false,
        Some(other) => return Err(format!("unknown role {other:?}")),
        None => return Err("no role field".to_owned()),
    };
    let num = |k: &str| fields.get(k).and_then(|v| v.parse::<u64>().ok());
    let offset = if master {
        num("master_repl_offset")
    } else {
        num("slave_repl_offset").or_else(|| num("master_repl_offset"))
    }
    .ok_or_else(|| "no replication offset".to_owned())?;
    let following = if master {
        None
    } else {
        match (fields.get("master_host"), num("master_port")) {
            (Some(h), Some(p)) => Some(((*h).to_owned(), u16::try_from(p).unwrap_or(0))),
            _ => None,
        }
    };
    Ok(Replication {
        master,
        offset,
        following,
        link_up: fields.get("master_link_status") == Some(&"up"),
        connected_replicas: num("connected_slaves")
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0),
    })
}

/// One server's last reading.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Reading {
    offset: u64,
    at: Instant,
    /// Whether the latest poll of this server succeeded.
    reachable: bool,
}

/// The replication offsets of every server, and each one's lag behind the highest offset
/// seen (within `memory`: the offset a primary had when it died is what its replicas are
/// measured against, for that long).
#[derive(Clone, Debug)]
pub struct Offsets {
    memory: Duration,
    readings: BTreeMap<NodeId, Reading>,
}

impl Offsets {
    /// No readings yet; readings older than `memory` no longer count.
    pub fn new(memory: Duration) -> Self {
        Offsets {
            memory,
            readings: BTreeMap::new(),
        }
    }

    /// Records a successful reading of `node`'s offset at `now`.
    pub fn record(&mut self, node: &NodeId, offset: u64, now: Instant) {
        self.readings.insert(
            node.clone(),
            Reading {
                offset,
                at: now,
                reachable: true,
            },
        );
    }

    /// Records that `node` could not be read: it has no lag figure (not a candidate) until it
    /// answers again; its last offset still counts towards the high-water mark.
    pub fn unreachable(&mut self, node: &NodeId) {
        if let Some(r) = self.readings.get_mut(node) {
            r.reachable = false;
        }
    }

    /// The highest offset read within `memory` before `now`.
    pub fn high_water(&self, now: Instant) -> Option<u64> {
        self.readings
            .values()
            .filter(|r| now.saturating_duration_since(r.at) <= self.memory)
            .map(|r| r.offset)
            .max()
    }

    /// `node`'s lag in bytes behind the high-water mark; `None` when it is not reachable or
    /// was never read.
    pub fn lag(&self, node: &NodeId, now: Instant) -> Option<u64> {
        let r = self.readings.get(node).filter(|r| r.reachable)?;
        let high = self.high_water(now).unwrap_or(r.offset);
        Some(high.saturating_sub(r.offset))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    use super::*;

    const MASTER: &str = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\nslave0:ip=127.0.0.1,port=7001,state=online,offset=140,lag=0\r\nmaster_failover_state:no-failover\r\nmaster_replid:8f1c\r\nmaster_repl_offset:140\r\n";
    const REPLICA: &str = "# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\nmaster_port:7000\r\nmaster_link_status:up\r\nslave_repl_offset:126\r\nmaster_repl_offset:126\r\n";

    #[test]
    fn info_replication_is_read() {
        let m = parse_replication(MASTER).unwrap();
        assert!(m.master);
        assert_eq!(
            (m.offset, m.connected_replicas, m.following),
            (140, 2, None)
        );
        let r = parse_replication(REPLICA).unwrap();
        assert!(!r.master && r.link_up);
        assert_eq!(r.offset, 126);
        assert_eq!(r.following, Some(("127.0.0.1".to_owned(), 7000)));
        assert!(parse_replication("").is_err());
        assert!(parse_replication("role:sentinel\r\n").is_err());
        assert!(parse_replication("role:master\r\n").is_err());
    }

    #[test]
    fn lag_is_measured_against_the_highest_recent_offset() {
        let t0 = Instant::now();
        let n = |s: &str| NodeId::new(s).unwrap();
        let mut o = Offsets::new(Duration::from_secs(30));
        assert_eq!(o.lag(&n("a"), t0), None, "never read");
        o.record(&n("a"), 1000, t0);
        o.record(&n("b"), 900, t0);
        o.record(&n("c"), 0, t0);
        assert_eq!(o.lag(&n("a"), t0), Some(0));
        assert_eq!(o.lag(&n("b"), t0), Some(100));
        assert_eq!(o.lag(&n("c"), t0), Some(1000));
        // The primary dies: it has no lag figure, but its offset still counts.
        o.unreachable(&n("a"));
        let t1 = t0 + Duration::from_secs(1);
        o.record(&n("b"), 950, t1);
        assert_eq!(o.lag(&n("a"), t1), None);
        assert_eq!(o.lag(&n("b"), t1), Some(50));
        // Until it is forgotten.
        let t2 = t0 + Duration::from_secs(31);
        o.record(&n("b"), 950, t2);
        o.record(&n("c"), 0, t2);
        assert_eq!(o.lag(&n("b"), t2), Some(0));
        assert_eq!(o.lag(&n("c"), t2), Some(950));
    }
}
