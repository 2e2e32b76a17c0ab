//! The agent's TOML config (`quorate agent --config node.toml`): parsed with serde, then
//! validated as a whole so that every problem is reported at once, each naming its field.
//!
//! ```toml
//! cluster_name = "demo"
//! cluster_key = "<64 hex digits>"        # or cluster_key_file = "/etc/quorate/key"
//! node_id = "n1"
//! data_dir = "/var/lib/quorate/n1"
//! profile = "lan"                       # lan | wan
//!
//! [raft]
//! listen = "127.0.0.1:7201"
//! voters = { n1 = "127.0.0.1:7201", n2 = "127.0.0.1:7202", n3 = "127.0.0.1:7203" }
//!
//! [gossip]
//! listen = "127.0.0.1:7101"
//! seeds = ["127.0.0.1:7102", "127.0.0.1:7103"]
//! bootstrap = true                      # exactly one node of a new cluster
//! tags = { failover-priority = "100" }
//!
//! [[check]]
//! id = "postgres"
//! kind = "postgres"                     # tcp | http | redis | postgres | command | disk | memory
//! target = "host=127.0.0.1 user=postgres"
//! interval = "2s"
//! timeout = "1s"
//! critical = true
//!
//! [[role]]
//! name = "telegram-poller"
//! on_promote = "systemctl start poller"  # run with sh -c; env QUORATE_ROLE, QUORATE_NODE,
//! on_demote = "systemctl stop poller"    # QUORATE_FENCING_TOKEN, QUORATE_EVENT
//! anti_flap_max_failovers = 3            # optional: automatic failovers per window
//! anti_flap_window = "30m"               # optional
//! unhealthy_grace = "1s"                 # optional: an unhealthy primary is replaced after it
//! failback = false                       # optional: move back to a higher-priority node
//! failback_hold_down = "5m"              # optional: ...once it has been fit this long
//! handover_timeout = "5s"                # optional: a switchover or failback gives up after
//! hook_timeout = "10s"                   # optional: one hook run; then its process group is killed
//! ```
//!
//! Omitted role knobs take the profile's value (`RoleConfig::lan`/`wan` in quorate-failover);
//! the role's lease and policy are checked with the failover crate's own rules.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use quorate_types::{NodeId, RoleName};
use serde::Deserialize;

/// The whole agent config, as written in the file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The cluster's name, bound into every frame.
    pub cluster_name: String,
    /// The cluster key as 64 hex digits (or give `cluster_key_file`).
    #[serde(default)]
    pub cluster_key: Option<String>,
    /// A file holding the cluster key as 64 hex digits.
    #[serde(default)]
    pub cluster_key_file: Option<PathBuf>,
    /// This node's id.
    pub node_id: String,
    /// Where Raft data (redb) and the status file live.
    pub data_dir: PathBuf,
    /// Timing profile: `lan` or `wan`.
    #[serde(default = "default_profile")]
    pub profile: String,
    /// Consensus settings.
    pub raft: RaftSection,
    /// Gossip settings.
    pub gossip: GossipSection,
    /// Health checks.
    #[serde(default, rename = "check")]
    pub checks: Vec<CheckSection>,
    /// Roles this node can take.
    #[serde(default, rename = "role")]
    pub roles: Vec<RoleSection>,
}

fn default_profile() -> String {
    "lan".to_owned()
}

/// `[raft]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftSection {
    /// Where the Raft listener binds.
    pub listen: String,
    /// The address peers use (default: `listen`).
    #[serde(default)]
    pub advertise: Option<String>,
    /// The initial voters, id -> Raft address (the same map on every node of a new cluster).
    pub voters: BTreeMap<String, String>,
}

/// `[gossip]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GossipSection {
    /// Where the gossip UDP socket binds.
    pub listen: String,
    /// The address peers use (default: `listen`).
    #[serde(default)]
    pub advertise: Option<String>,
    /// Members to join through.
    #[serde(default)]
    pub seeds: Vec<String>,
    /// This node may start the cluster alone.
    #[serde(default)]
    pub bootstrap: bool,
    /// Tags gossiped with this node (`failover-priority`, `no-failover`, `maintenance`).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// One `[[check]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSection {
    /// Unique id of the check.
    pub id: String,
    /// `tcp`, `http`, `redis`, `postgres`, `command`, `disk` or `memory`.
    pub kind: String,
    /// What to check: an address, URL, connection string, command line, path, or (memory)
    /// the critical RSS in MiB.
    pub target: String,
    /// How often.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Timeout of one run.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// A failing critical check makes the node critical (not a failover candidate); a
    /// non-critical one only degrades it.
    #[serde(default = "default_true")]
    pub critical: bool,
}

fn default_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_timeout() -> Duration {
    Duration::from_millis(500)
}
fn default_true() -> bool {
    true
}

/// One `[[role]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSection {
    /// The role's name.
    pub name: String,
    /// Command run before promotion; a non-zero exit vetoes it.
    #[serde(default)]
    pub before_promote: Option<String>,
    /// Command run on promotion.
    #[serde(default)]
    pub on_promote: Option<String>,
    /// Command run on demotion.
    #[serde(default)]
    pub on_demote: Option<String>,
    /// Command run on every role change involving this node.
    #[serde(default)]
    pub on_role_change: Option<String>,
    /// Lease TTL override (default: the profile's).
    #[serde(default, with = "humantime_serde")]
    pub lease_ttl: Option<Duration>,
    /// Anti-flap budget: automatic failovers allowed per `anti_flap_window`, after which only
    /// manual operations move the role (default: the profile's, 3).
    #[serde(default)]
    pub anti_flap_max_failovers: Option<u32>,
    /// The anti-flap window (default: the profile's, 30 minutes).
    #[serde(default, with = "humantime_serde")]
    pub anti_flap_window: Option<Duration>,
    /// How long the primary may be unhealthy before it is replaced (default: the profile's,
    /// 1 s on `lan`, 5 s on `wan`).
    #[serde(default, with = "humantime_serde")]
    pub unhealthy_grace: Option<Duration>,
    /// Automatic failback to a higher-priority node (default: off).
    #[serde(default)]
    pub failback: Option<bool>,
    /// How long the preferred node must have been fit, and the primary in office, before a
    /// failback (default: 5 minutes).
    #[serde(default, with = "humantime_serde")]
    pub failback_hold_down: Option<Duration>,
    /// How long a switchover, failback or unhealthy-primary handover waits for its successor
    /// (default: the profile's, 5 s on `lan`, 30 s on `wan`).
    #[serde(default, with = "humantime_serde")]
    pub handover_timeout: Option<Duration>,
    /// How long one hook command may run before its whole process group is killed (default
    /// [`HOOK_TIMEOUT_DEFAULT`], at most [`HOOK_TIMEOUT_MAX`]). A `before_promote` that times
    /// out vetoes. The failover manager's own hook limit is derived from the largest of these
    /// (see [`manager_hook_timeout`]), so this is the limit that applies.
    #[serde(default, with = "humantime_serde")]
    pub hook_timeout: Option<Duration>,
}

/// A role's hook timeout when `hook_timeout` is not given.
pub const HOOK_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// The longest `hook_timeout` accepted: a hook is a step of a failover, not a batch job.
pub const HOOK_TIMEOUT_MAX: Duration = Duration::from_secs(600);

/// What the failover manager allows a hook call beyond the command's own timeout: the runner
/// kills the process group at the hook timeout and reaps it, then reports; the manager's limit
/// must not fire first, or the command's timeout would never apply (and its message be lost).
pub const HOOK_KILL_GRACE: Duration = Duration::from_secs(2);

/// The failover manager's hook limit (`ManagerConfig::hook_timeout`, one value for every role)
/// for these roles: the largest role `hook_timeout` plus [`HOOK_KILL_GRACE`], and never below
/// the manager profile's own value `profile_default`.
pub fn manager_hook_timeout(roles: &[RoleSection], profile_default: Duration) -> Duration {
    roles
        .iter()
        .map(|r| r.hook_timeout().saturating_add(HOOK_KILL_GRACE))
        .fold(profile_default, Duration::max)
}

impl RoleSection {
    /// This role's hook timeout: `hook_timeout`, or [`HOOK_TIMEOUT_DEFAULT`].
    pub fn hook_timeout(&self) -> Duration {
        self.hook_timeout.unwrap_or(HOOK_TIMEOUT_DEFAULT)
    }

    /// The role's configuration: the profile's (`wan` or `lan`) with this section's overrides.
    /// An anti-flap budget of 0 is left at the profile's value here; config validation refuses it.
    pub fn role_config(&self, wan: bool) -> quorate_failover::policy::config::RoleConfig {
        use quorate_failover::policy::config::RoleConfig;
        let mut c = if wan {
            RoleConfig::wan()
        } else {
            RoleConfig::lan()
        };
        if let Some(ttl) = self.lease_ttl {
            c.lease.ttl = ttl;
        }
        if let Some(max) = self
            .anti_flap_max_failovers
            .and_then(std::num::NonZeroU32::new)
        {
            c.policy.anti_flap.max_failovers = max;
        }
        if let Some(window) = self.anti_flap_window {
            c.policy.anti_flap.window = window;
        }
        if let Some(grace) = self.unhealthy_grace {
            c.policy.unhealthy_grace = grace;
        }
        if let Some(on) = self.failback {
            c.policy.failback.enabled = on;
        }
        if let Some(hold) = self.failback_hold_down {
            c.policy.failback.hold_down = hold;
        }
        if let Some(t) = self.handover_timeout {
            c.policy.handover_timeout = t;
        }
        c
    }
}

/// One problem in a config: the field and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The field, as written in the file (`raft.voters`, `check[2].kind`).
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Every problem found in a config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<Problem>);

impl ConfigErrors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} problem(s) in the config:", self.0.len())?;
        for p in &self.0 {
            writeln!(f, "  - {}: {}", p.field, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The check kinds the agent knows.
pub const CHECK_KINDS: &[&str] = &[
    "tcp", "http", "redis", "postgres", "command", "disk", "memory",
];

/// A config that passed validation, with the parsed ids and the key.
#[derive(Clone, Debug)]
pub struct Validated {
    /// The file's content.
    pub raw: AgentConfig,
    /// This node.
    pub node_id: NodeId,
    /// The voters, parsed.
    pub voters: BTreeMap<NodeId, String>,
    /// The roles, parsed.
    pub roles: Vec<RoleName>,
    /// The cluster key, as hex.
    pub key_hex: String,
}

/// Reads and validates the config at `path`.
pub fn load(path: &Path) -> Result<Validated, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let mut errs = ConfigErrors::default();
        errs.push(path.display().to_string(), format!("cannot read: {e}"));
        errs
    })?;
    parse(&text)
}

/// Parses and validates config text, reporting every problem at once.
pub fn parse(text: &str) -> Result<Validated, ConfigErrors> {
    let raw: AgentConfig = toml::from_str(text).map_err(|e| {
        let mut errs = ConfigErrors::default();
        let span = e
            .span()
            .map(|s| format!("at byte {}", s.start))
            .unwrap_or_default();
        errs.push(format!("toml {span}"), e.message().to_owned());
        errs
    })?;
    validate(raw)
}

fn validate(raw: AgentConfig) -> Result<Validated, ConfigErrors> {
    let mut errs = ConfigErrors::default();
    if raw.cluster_name.is_empty() || raw.cluster_name.len() > 128 {
        errs.push("cluster_name", "must be 1 to 128 bytes");
    }
    let node_id = NodeId::new(raw.node_id.clone())
        .map_err(|e| errs.push("node_id", e.to_string()))
        .ok();
    let key_hex = match (&raw.cluster_key, &raw.cluster_key_file) {
        (Some(k), None) => Some(k.trim().to_owned()),
        (None, Some(p)) => std::fs::read_to_string(p)
            .map(|s| s.trim().to_owned())
            .map_err(|e| {
                errs.push(
                    "cluster_key_file",
                    format!("cannot read {}: {e}", p.display()),
                )
            })
            .ok(),
        (Some(_), Some(_)) => {
            errs.push(
                "cluster_key",
                "give cluster_key or cluster_key_file, not both",
            );
            None
        }
        (None, None) => {
            errs.push(
                "cluster_key",
                "missing: give 64 hex digits (`quorate keygen` prints a new key) or cluster_key_file",
            );
            None
        }
    };
    if let Some(k) = &key_hex
        && let Err(e) = quorate_wire::ClusterKey::from_hex(k)
    {
        errs.push("cluster_key", e.to_string());
    }
    if !matches!(raw.profile.as_str(), "lan" | "wan") {
        errs.push(
            "profile",
            format!("{:?} is not a profile: use \"lan\" or \"wan\"", raw.profile),
        );
    }
    let mut voters = BTreeMap::new();
    if raw.raft.voters.is_empty() {
        errs.push(
            "raft.voters",
            "empty: list every initial voter, id = \"host:port\"",
        );
    }
    for (id, addr) in &raw.raft.voters {
        match NodeId::new(id.clone()) {
            Ok(n) => {
                voters.insert(n, addr.clone());
            }
            Err(e) => errs.push(format!("raft.voters.{id}"), e.to_string()),
        }
        check_addr(&mut errs, &format!("raft.voters.{id}"), addr);
    }
    check_addr(&mut errs, "raft.listen", &raw.raft.listen);
    check_addr(&mut errs, "gossip.listen", &raw.gossip.listen);
    if let Some(n) = &node_id
        && !voters.is_empty()
        && !voters.contains_key(n)
    {
        errs.push(
            "raft.voters",
            format!("does not list this node ({n}); every agent of this version is a voter"),
        );
    }
    if raw.gossip.seeds.is_empty() && !raw.gossip.bootstrap {
        errs.push(
            "gossip.seeds",
            "empty and gossip.bootstrap is false: give seeds, or set bootstrap = true on the first node",
        );
    }
    for (i, s) in raw.gossip.seeds.iter().enumerate() {
        check_addr(&mut errs, &format!("gossip.seeds[{i}]"), s);
    }
    let mut ids = std::collections::BTreeSet::new();
    for (i, c) in raw.checks.iter().enumerate() {
        let f = format!("check[{i}]");
        if !ids.insert(c.id.clone()) {
            errs.push(format!("{f}.id"), format!("{:?} is used twice", c.id));
        }
        if !CHECK_KINDS.contains(&c.kind.as_str()) {
            errs.push(
                format!("{f}.kind"),
                format!(
                    "{:?} is not a check kind: use one of {}",
                    c.kind,
                    CHECK_KINDS.join(", ")
                ),
            );
        }
        if c.interval.is_zero() {
            errs.push(format!("{f}.interval"), "must be positive");
        }
        if c.timeout.is_zero() || c.timeout > c.interval {
            errs.push(
                format!("{f}.timeout"),
                format!(
                    "{:?} must be positive and at most the interval {:?}",
                    c.timeout, c.interval
                ),
            );
        }
        if c.kind == "memory" && c.target.parse::<u64>().is_err() {
            errs.push(
                format!("{f}.target"),
                "for kind memory: the critical RSS in MiB, e.g. \"512\"",
            );
        }
    }
    let mut roles = Vec::new();
    for (i, r) in raw.roles.iter().enumerate() {
        match RoleName::new(r.name.clone()) {
            Ok(n) if roles.contains(&n) => {
                errs.push(format!("role[{i}].name"), format!("{n} is listed twice"))
            }
            Ok(n) => roles.push(n),
            Err(e) => errs.push(format!("role[{i}].name"), e.to_string()),
        }
        if r.anti_flap_max_failovers == Some(0) {
            errs.push(
                format!("role[{i}].anti_flap_max_failovers"),
                "must be at least 1 (to stop automatic failovers, use maintenance mode)",
            );
        }
        if r.anti_flap_window.is_some_and(|w| w.is_zero()) {
            errs.push(format!("role[{i}].anti_flap_window"), "must be positive");
        }
        if let Some(t) = r.hook_timeout
            && (t.is_zero() || t > HOOK_TIMEOUT_MAX)
        {
            errs.push(
                format!("role[{i}].hook_timeout"),
                format!(
                    "{t:?} must be positive and at most {HOOK_TIMEOUT_MAX:?} (a longer job \
                     belongs in a service the hook starts, not in the hook)"
                ),
            );
        }
        // The failover crate's own checks (lease arithmetic, hold-down against grace, handover
        // against the lease), reported against the key that sets the value.
        if let Err(quorate_failover::FailoverError::Config(e)) =
            r.role_config(raw.profile == "wan").validate()
        {
            for p in e.problems {
                let key = match p.field.as_str() {
                    f if f.starts_with("lease.") => "lease_ttl",
                    "policy.anti_flap.window" => "anti_flap_window",
                    "policy.failback.hold_down" => "failback_hold_down",
                    "policy.handover_timeout" => "handover_timeout",
                    "policy.unhealthy_grace" => "unhealthy_grace",
                    _ => "name",
                };
                let field = format!("role[{i}].{key}");
                if !errs.0.iter().any(|x| x.field == field) {
                    errs.push(field, p.message);
                }
            }
        }
    }
    match (errs.0.is_empty(), node_id, key_hex) {
        (true, Some(node_id), Some(key_hex)) => Ok(Validated {
            raw,
            node_id,
            voters,
            roles,
            key_hex,
        }),
        _ => Err(errs),
    }
}

fn check_addr(errs: &mut ConfigErrors, field: &str, addr: &str) {
    let ok = addr
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    if !ok {
        errs.push(field, format!("{addr:?} is not host:port"));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    const GOOD: &str = r#"
cluster_name = "demo"
cluster_key = "1111111111111111111111111111111111111111111111111111111111111111"
node_id = "n1"
data_dir = "/tmp/q/n1"

[raft]
listen = "127.0.0.1:7201"
voters = { n1 = "127.0.0.1:7201", n2 = "127.0.0.1:7202", n3 = "127.0.0.1:7203" }

[gossip]
listen = "127.0.0.1:7101"
seeds = ["127.0.0.1:7102"]

[[check]]
id = "disk"
kind = "disk"
target = "/"

[[role]]
name = "demo"
on_promote = "echo promoted"
"#;

    #[test]
    fn good_config_parses() {
        let v = parse(GOOD).unwrap();
        assert_eq!(v.node_id.as_str(), "n1");
        assert_eq!(v.voters.len(), 3);
        assert_eq!(v.roles.len(), 1);
        assert_eq!(v.raw.checks[0].interval, Duration::from_secs(1));
    }

    #[test]
    fn every_problem_reported_at_once() {
        let bad = GOOD
            .replace("node_id = \"n1\"", "node_id = \"N1\"")
            .replace("kind = \"disk\"", "kind = \"dsk\"")
            .replace("listen = \"127.0.0.1:7101\"", "listen = \"nowhere\"")
            .replace("name = \"demo\"", "name = \"\"");
        let errs = parse(&bad).unwrap_err();
        let fields: Vec<&str> = errs.0.iter().map(|p| p.field.as_str()).collect();
        for f in ["node_id", "check[0].kind", "gossip.listen", "role[0].name"] {
            assert!(fields.contains(&f), "{f} missing from {errs}");
        }
    }

    #[test]
    fn unknown_field_and_missing_key_are_clear() {
        let e = parse(
            &GOOD
                .replace("profile", "profil")
                .replace("data_dir", "data_dri"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("data_dri"), "{e}");
        let e = parse(&GOOD.replace(
            "cluster_key = \"1111111111111111111111111111111111111111111111111111111111111111\"",
            "",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("keygen"), "{e}");
    }

    #[test]
    fn anti_flap_budget_is_configurable_and_checked() {
        let v = parse(&GOOD.replace(
            "on_promote = \"echo promoted\"",
            "on_promote = \"echo promoted\"\nanti_flap_max_failovers = 50\nanti_flap_window = \"10m\"",
        ))
        .unwrap();
        assert_eq!(v.raw.roles[0].anti_flap_max_failovers, Some(50));
        assert_eq!(
            v.raw.roles[0].anti_flap_window,
            Some(Duration::from_secs(600))
        );
        let e = parse(&GOOD.replace(
            "on_promote = \"echo promoted\"",
            "anti_flap_max_failovers = 0\nanti_flap_window = \"0s\"",
        ))
        .unwrap_err();
        let fields: Vec<&str> = e.0.iter().map(|p| p.field.as_str()).collect();
        assert!(fields.contains(&"role[0].anti_flap_max_failovers"), "{e}");
        assert!(fields.contains(&"role[0].anti_flap_window"), "{e}");
    }

    #[test]
    fn role_policy_knobs_are_configurable_and_checked_by_the_failover_rules() {
        let v = parse(&GOOD.replace(
            "on_promote = \"echo promoted\"",
            "on_promote = \"echo promoted\"\nfailback = true\nfailback_hold_down = \"2m\"\n\
             unhealthy_grace = \"3s\"\nhandover_timeout = \"8s\"\nlease_ttl = \"900ms\"",
        ))
        .unwrap();
        let c = v.raw.roles[0].role_config(false);
        assert!(c.policy.failback.enabled);
        assert_eq!(c.policy.failback.hold_down, Duration::from_secs(120));
        assert_eq!(c.policy.unhealthy_grace, Duration::from_secs(3));
        assert_eq!(c.policy.handover_timeout, Duration::from_secs(8));
        assert_eq!(c.lease.ttl, Duration::from_millis(900));
        // Omitted knobs keep the profile's values.
        let d = parse(GOOD).unwrap().raw.roles[0].role_config(true);
        assert_eq!(d, quorate_failover::policy::config::RoleConfig::wan());
        // A hold-down below the grace, a handover shorter than the lease, a lease too short
        // for its renew schedule: each reported against the key that sets it.
        let e = parse(&GOOD.replace(
            "on_promote = \"echo promoted\"",
            "failback = true\nfailback_hold_down = \"500ms\"\nhandover_timeout = \"100ms\"",
        ))
        .unwrap_err();
        let fields: Vec<&str> = e.0.iter().map(|p| p.field.as_str()).collect();
        assert!(fields.contains(&"role[0].failback_hold_down"), "{e}");
        assert!(fields.contains(&"role[0].handover_timeout"), "{e}");
        let e = parse(&GOOD.replace("on_promote = \"echo promoted\"", "lease_ttl = \"100ms\""))
            .unwrap_err();
        assert!(e.0.iter().any(|p| p.field == "role[0].lease_ttl"), "{e}");
        // Turned off, a short hold-down is not checked.
        parse(&GOOD.replace(
            "on_promote = \"echo promoted\"",
            "failback = false\nfailback_hold_down = \"500ms\"",
        ))
        .unwrap();
    }

    #[test]
    fn hook_timeout_is_configurable_checked_and_sets_the_manager_limit() {
        let v = parse(&GOOD.replace(
            "on_promote = \"echo promoted\"",
            "on_promote = \"echo promoted\"\nhook_timeout = \"8s\"",
        ))
        .unwrap();
        assert_eq!(v.raw.roles[0].hook_timeout(), Duration::from_secs(8));
        let lan = Duration::from_secs(5);
        // The manager's limit covers the longest hook and the kill after it.
        assert_eq!(
            manager_hook_timeout(&v.raw.roles, lan),
            Duration::from_secs(8) + HOOK_KILL_GRACE
        );
        let d = parse(GOOD).unwrap();
        assert_eq!(d.raw.roles[0].hook_timeout(), HOOK_TIMEOUT_DEFAULT);
        assert!(manager_hook_timeout(&d.raw.roles, lan) > HOOK_TIMEOUT_DEFAULT);
        // No roles: the profile's value.
        assert_eq!(manager_hook_timeout(&[], lan), lan);
        for bad in ["0s", "11m"] {
            let e = parse(&GOOD.replace(
                "on_promote = \"echo promoted\"",
                &format!("hook_timeout = \"{bad}\""),
            ))
            .unwrap_err();
            assert!(
                e.0.iter().any(|p| p.field == "role[0].hook_timeout"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn node_must_be_a_voter_and_seeds_or_bootstrap() {
        let e = parse(&GOOD.replace("node_id = \"n1\"", "node_id = \"n9\"")).unwrap_err();
        assert!(e.to_string().contains("does not list this node"), "{e}");
        let e = parse(&GOOD.replace("seeds = [\"127.0.0.1:7102\"]", "")).unwrap_err();
        assert!(e.to_string().contains("bootstrap"), "{e}");
    }
}
