//! The adapter's settings ([`RedisConfig`]), built in code or from the agent's `[redis]`
//! section ([`RedisConfig::from_agent`]).

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use quorate_startup::config::Validated;
use quorate_types::{NodeId, RoleName, Secret};

use crate::RedisError;

/// A Redis server's address as the other servers and clients reach it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerAddr {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl ServerAddr {
    /// Parses `host:port` (IPv6 hosts in brackets: `[::1]:6379`).
    pub fn parse(s: &str) -> Result<ServerAddr, String> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not host:port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{s:?} has no host"));
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{s:?}: the port must be 1 to 65535"))?;
        Ok(ServerAddr {
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Acknowledged-write mode: the master refuses writes (`NOREPLICAS`) unless `min_replicas`
/// replicas are connected and acknowledged within `max_lag` (`min-replicas-to-write`,
/// `min-replicas-max-lag`). Clients that also wait with `WAIT <min_replicas> <timeout>` after
/// each write know the write reached a replica before they count it as done, so it survives a
/// failover to that replica. The price: writes stop while fewer replicas are up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckMode {
    /// `min-replicas-to-write`.
    pub min_replicas: NonZeroU32,
    /// `min-replicas-max-lag` (whole seconds).
    pub max_lag: Duration,
}

/// The Sentinel-compatible listener: answers `SENTINEL get-master-addr-by-name <name>` (and
/// `masters`, `master`, `replicas`, `sentinels`, `PING`) from this node's view of the role, so
/// that Sentinel-aware clients find the primary without code changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentinelConfig {
    /// Where it binds (`host:port`, e.g. `0.0.0.0:26379`).
    pub listen: String,
    /// The master name clients ask for.
    pub master_name: String,
    /// Connections served at once (more wait in the accept queue).
    pub connections_max: usize,
}

/// How the adapter manages this node's Redis server for one role.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// The role whose primary runs the master.
    pub role: RoleName,
    /// This node.
    pub node: NodeId,
    /// Every node's Redis server (must include `node`).
    pub servers: BTreeMap<NodeId, ServerAddr>,
    /// The password of every server (`AUTH`), if they need one.
    pub password: Option<Secret>,
    /// Timeout of one command.
    pub command_timeout: Duration,
    /// How often every server's `INFO replication` is read, and this server made to follow
    /// the primary.
    pub poll_interval: Duration,
    /// How long a `CLIENT PAUSE WRITE` lasts; the adapter renews it at half this while the
    /// server is a master of a node that is not primary.
    pub pause: Duration,
    /// A server's last offset counts towards the high-water mark this long after it was read
    /// (the primary's offset when it died is what a replica is measured against).
    pub offset_memory: Duration,
    /// The key holding the fencing token of the master's term.
    pub fencing_key: String,
    /// A replica further behind than this many bytes is not a candidate (`None`: the role's
    /// `max_lag`).
    pub max_lag_bytes: Option<u64>,
    /// Acknowledged-write mode, if on.
    pub ack: Option<AckMode>,
    /// The Sentinel-compatible listener, if on.
    pub sentinel: Option<SentinelConfig>,
}

/// The default `max_lag_bytes`: 1 MiB.
pub const MAX_LAG_BYTES_DEFAULT: u64 = 1 << 20;

/// The default fencing-token key.
pub const FENCING_KEY_DEFAULT: &str = "quorate:fencing-token";

impl RedisConfig {
    /// LAN settings: 500 ms per command, poll every 100 ms, pauses of 10 s, offsets remembered
    /// 30 s, `max_lag_bytes` 1 MiB, no acknowledged-write mode, no Sentinel listener.
    pub fn lan(role: RoleName, node: NodeId, servers: BTreeMap<NodeId, ServerAddr>) -> Self {
        RedisConfig {
            role,
            node,
            servers,
            password: None,
            command_timeout: Duration::from_millis(500),
            poll_interval: Duration::from_millis(100),
            pause: Duration::from_secs(10),
            offset_memory: Duration::from_secs(30),
            fencing_key: FENCING_KEY_DEFAULT.to_owned(),
            max_lag_bytes: Some(MAX_LAG_BYTES_DEFAULT),
            ack: None,
            sentinel: None,
        }
    }

    /// The adapter's config from the agent's `[redis]` section (`None` when there is none).
    /// The section was validated with the rest of the config; what is checked again here is
    /// only what the types need.
    pub fn from_agent(v: &Validated) -> Result<Option<RedisConfig>, RedisError> {
        let Some(r) = &v.raw.redis else {
            return Ok(None);
        };
        let bad = |field: &str, message: String| RedisError::Config {
            field: field.to_owned(),
            message,
        };
        let role = RoleName::new(r.role.clone()).map_err(|e| bad("redis.role", e.to_string()))?;
        let mut servers = BTreeMap::new();
        for (id, addr) in &r.servers {
            let field = format!("redis.servers.{id}");
            let n = NodeId::new(id.clone()).map_err(|e| bad(&field, e.to_string()))?;
            servers.insert(n, ServerAddr::parse(addr).map_err(|e| bad(&field, e))?);
        }
        let mut c = RedisConfig::lan(role.clone(), v.node_id.clone(), servers);
        c.password = v.redis_password.clone();
        if let Some(d) = r.poll_interval {
            c.poll_interval = d;
        }
        if let Some(d) = r.command_timeout {
            c.command_timeout = d;
        }
        if let Some(m) = r.max_lag_bytes {
            c.max_lag_bytes = Some(m);
        }
        if let Some(n) = r.min_replicas_to_write.and_then(NonZeroU32::new) {
            c.ack = Some(AckMode {
                min_replicas: n,
                max_lag: r.min_replicas_max_lag.unwrap_or(Duration::from_secs(10)),
            });
        }
        if let Some(listen) = &r.sentinel_listen {
            c.sentinel = Some(SentinelConfig {
                listen: listen.clone(),
                master_name: r
                    .sentinel_master_name
                    .clone()
                    .unwrap_or_else(|| role.to_string()),
                connections_max: 256,
            });
        }
        c.validate()?;
        Ok(Some(c))
    }

    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<(), RedisError> {
        let bad = |field: &str, message: String| {
            Err(RedisError::Config {
                field: field.to_owned(),
                message,
            })
        };
        if !self.servers.contains_key(&self.node) {
            return bad(
                "servers",
                format!(
                    "does not list this node ({}): add its Redis server",
                    self.node
                ),
            );
        }
        for (name, d) in [
            ("command_timeout", self.command_timeout),
            ("poll_interval", self.poll_interval),
        ] {
            if d.is_zero() {
                return bad(name, "must be positive".to_owned());
            }
        }
        if self.pause < Duration::from_secs(1) {
            return bad(
                "pause",
                format!(
                    "{:?} is below 1 s: the pause is renewed at half its length",
                    self.pause
                ),
            );
        }
        if self.fencing_key.is_empty() {
            return bad("fencing_key", "is empty".to_owned());
        }
        if let Some(a) = &self.ack
            && a.max_lag < Duration::from_secs(1)
        {
            return bad(
                "ack.max_lag",
                "must be at least 1 s (Redis counts it in whole seconds)".to_owned(),
            );
        }
        Ok(())
    }

    /// This node's server.
    pub fn local(&self) -> &ServerAddr {
        // validate() makes sure it is there; fall back to the first for a config built by hand.
        self.servers
            .get(&self.node)
            .or_else(|| self.servers.values().next())
            .unwrap_or(&LOOPBACK)
    }
}

static LOOPBACK: ServerAddr = ServerAddr {
    host: String::new(),
    port: 6379,
};

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    use super::*;

    #[test]
    fn server_addresses_parse_and_print() {
        let a = ServerAddr::parse("10.0.0.1:6379").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("10.0.0.1", 6379));
        assert_eq!(a.to_string(), "10.0.0.1:6379");
        let b = ServerAddr::parse("[::1]:7000").unwrap();
        assert_eq!((b.host.as_str(), b.port), ("::1", 7000));
        assert_eq!(b.to_string(), "[::1]:7000");
        for bad in ["", "6379", ":6379", "h:0", "h:70000", "h:x"] {
            assert!(ServerAddr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_config_without_this_node_is_refused() {
        let n = |s: &str| NodeId::new(s).unwrap();
        let servers = [(n("n2"), ServerAddr::parse("h:1").unwrap())].into();
        let c = RedisConfig::lan(RoleName::new("redis").unwrap(), n("n1"), servers);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("does not list this node (n1)"), "{e}");
    }
}
