//! Membership configuration and its validation.

use std::collections::BTreeSet;
use std::num::{NonZeroU32, NonZeroUsize};

use quorate_membership_api::MemberMeta;
use quorate_types::NodeId;

use crate::error::MembershipError;
use crate::profile::Profile;

/// Everything one node needs to take part in membership. Start from
/// [`MembershipConfig::new`] (profile `lan`, default limits) and set fields.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// This node's id (unique in the cluster).
    pub node_id: NodeId,
    /// UDP address to bind (`host:port`), e.g. `0.0.0.0:7946`.
    pub bind_addr: String,
    /// Address to tell peers (`host:port`); resolved once at start. Default: the bound
    /// address, which must then not be unspecified (`0.0.0.0`).
    pub advertise_addr: Option<String>,
    /// Members to join through (`host:port`; host names are resolved again on every retry).
    pub seeds: Vec<String>,
    /// This node may start a cluster alone (exactly one node should, the first time).
    pub bootstrap: bool,
    /// The voters of the quorum view (empty: quorum is not evaluated).
    pub voters: BTreeSet<NodeId>,
    /// Timing profile.
    pub profile: Profile,
    /// Expected number of members (sets the suspicion timeout and retransmissions).
    pub cluster_size_hint: NonZeroU32,
    /// Initial metadata.
    pub meta: MemberMeta,
    /// Incarnation to start with; default: microseconds since the Unix epoch, so a restart
    /// always starts higher than the previous life.
    pub incarnation: Option<u64>,
    /// Seed of the protocol's randomness; default: drawn from the incarnation and node id.
    pub rng_seed: Option<u64>,
    /// Largest datagram sent or accepted, wire header included (oversize ones are dropped).
    pub packet_bytes_max: NonZeroUsize,
    /// Largest encoded metadata.
    pub meta_bytes_max: NonZeroUsize,
    /// Most members (and records per kind) kept; further ones are refused.
    pub members_max: NonZeroUsize,
    /// Most datagrams one push/pull sync may take.
    pub sync_chunks_max: NonZeroUsize,
    /// Capacity of the event broadcast channel.
    pub events_capacity: NonZeroUsize,
    /// Capacity of the command channel of the handle.
    pub commands_capacity: NonZeroUsize,
    /// Join attempts before giving up (`None`: retry until joined or shut down).
    pub join_attempts_max: Option<NonZeroU32>,
}

impl MembershipConfig {
    /// A config with the `lan` profile and default limits.
    pub fn new(node_id: NodeId, bind_addr: impl Into<String>) -> Self {
        Self {
            node_id,
            bind_addr: bind_addr.into(),
            advertise_addr: None,
            seeds: Vec::new(),
            bootstrap: false,
            voters: BTreeSet::new(),
            profile: Profile::lan(),
            cluster_size_hint: NonZeroU32::new(8).unwrap_or(NonZeroU32::MIN),
            meta: MemberMeta::default(),
            incarnation: None,
            rng_seed: None,
            packet_bytes_max: nz(1400),
            meta_bytes_max: nz(512),
            members_max: nz(4096),
            sync_chunks_max: nz(64),
            events_capacity: nz(1024),
            commands_capacity: nz(64),
            join_attempts_max: None,
        }
    }

    /// Checks every field; the error names the first bad one and the fix.
    pub fn validate(&self) -> Result<(), MembershipError> {
        if self.seeds.is_empty() && !self.bootstrap {
            return Err(MembershipError::NoSeeds);
        }
        let p = &self.profile;
        if p.probe_interval.is_zero() || p.probe_timeout.is_zero() {
            return Err(MembershipError::Config(
                "profile probe_interval and probe_timeout must be above zero".to_owned(),
            ));
        }
        if p.probe_timeout >= p.probe_interval {
            return Err(MembershipError::Config(format!(
                "profile probe_timeout = {:?} must be below probe_interval = {:?}",
                p.probe_timeout, p.probe_interval
            )));
        }
        if p.indirect_probes == 0 || p.suspicion_mult == 0 || p.gossip_fanout == 0 {
            return Err(MembershipError::Config(
                "profile indirect_probes, suspicion_mult and gossip_fanout must be at least 1"
                    .to_owned(),
            ));
        }
        if p.gossip_interval.is_zero()
            || p.push_pull_interval.is_zero()
            || p.reconnect_interval.is_zero()
            || p.join_backoff_initial.is_zero()
        {
            return Err(MembershipError::Config(
                "profile gossip_interval, push_pull_interval, reconnect_interval and join_backoff_initial must be above zero"
                    .to_owned(),
            ));
        }
        if p.local_health_max_multiplier == 0 {
            return Err(MembershipError::Config(
                "profile local_health_max_multiplier must be at least 1 (1 disables it)".to_owned(),
            ));
        }
        let min_packet = quorate_wire::HEADER_BYTES + quorate_wire::TAG_BYTES + 256;
        if self.packet_bytes_max.get() < min_packet || self.packet_bytes_max.get() > 65_000 {
            return Err(MembershipError::Config(format!(
                "packet_bytes_max = {} must be between {min_packet} and 65000",
                self.packet_bytes_max
            )));
        }
        if self.meta_bytes_max.get() + 64 > self.foca_packet_bytes() {
            return Err(MembershipError::Config(format!(
                "meta_bytes_max = {} must leave 64 bytes in a packet of {}: lower it or raise packet_bytes_max",
                self.meta_bytes_max,
                self.foca_packet_bytes()
            )));
        }
        self.meta.node.validate()?;
        Ok(())
    }

    /// The payload budget foca gets: the packet minus the wire frame overhead.
    pub fn foca_packet_bytes(&self) -> usize {
        self.packet_bytes_max
            .get()
            .saturating_sub(quorate_wire::HEADER_BYTES + quorate_wire::TAG_BYTES)
    }
}

fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field() {
        let id = NodeId::new("n1").unwrap();
        let c = MembershipConfig::new(id.clone(), "127.0.0.1:0");
        assert!(matches!(c.validate(), Err(MembershipError::NoSeeds)));
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("bootstrap = true")
        );
        let mut c = MembershipConfig::new(id.clone(), "127.0.0.1:0");
        c.bootstrap = true;
        c.validate().unwrap();
        c.profile.probe_timeout = c.profile.probe_interval;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("probe_timeout")
        );
        let mut c = MembershipConfig::new(id, "127.0.0.1:0");
        c.seeds.push("n2:7946".into());
        c.packet_bytes_max = NonZeroUsize::new(100).unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("packet_bytes_max")
        );
    }
}
