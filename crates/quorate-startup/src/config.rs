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
//! failback_approval = false              # optional: a due failback waits for an operator
//! handover_timeout = "5s"                # optional: a switchover or failback gives up after
//! ```
//!
//! Omitted role knobs take the profile's value (`RoleConfig::lan`/`wan` in quorate-failover);
//! the role's lease and policy are checked with the failover crate's own rules.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use quorate_types::{NodeId, RoleName, Secret};
use serde::{Deserialize, Serialize};

/// The whole agent config, as written in the file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The cluster's name, bound into every frame.
    pub cluster_name: String,
    /// The cluster key as 64 hex digits (or give `cluster_key_file`, which keeps the key out
    /// of the config file). Never shown in `Debug` output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_key: Option<Secret>,
    /// A file holding the cluster key as 64 hex digits (`quorate keygen --out FILE` writes
    /// one). It must not be readable by group or others (mode 0600 or 0400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_key_file: Option<PathBuf>,
    /// Files with further keys this node still accepts (each 64 hex digits, mode 0600), for a
    /// rotation without downtime: add the new key here on every node, then make it every
    /// node's `cluster_key_file`, then drop the old one (docs/security.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accepted_key_files: Vec<PathBuf>,
    /// Files with the keys applications use to call the coordination service as clients
    /// (each 64 hex digits, mode 0600; `quorate keygen --out FILE`; at most 8). A client key
    /// gets client requests only: no Raft or gossip message, no membership change, and no
    /// write to quorate's own keys (`quorate/`). Give applications a client key, never the
    /// cluster key (docs/security.md). Reloaded on SIGHUP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_key_files: Vec<PathBuf>,
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
    /// Startup and shutdown timing.
    #[serde(default)]
    pub startup: StartupSection,
    /// The Telegram bot (admin commands and alerts), if any (docs/telegram.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telegram: Option<TelegramSection>,
    /// A Redis server this node manages as a role (the `quorate-redis` adapter; docs/redis.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSection>,
    /// Replicated keyspaces (`crate::replication`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<crate::replication::ReplicationSection>,
    /// The HTTP API (probes, status, admin, metrics, dashboard); absent: no API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiSection>,
}

/// The role name the Telegram ingress uses unless `[telegram] role` says otherwise.
pub const TELEGRAM_ROLE_DEFAULT: &str = "telegram-ingress";

/// The anti-flap budget of the Telegram ingress role when the config does not list it: 100
/// automatic failovers per window, not the profile's 3. Moving the ingress loses nothing (its
/// offsets and outbox are fenced in the store), and with the budget spent the bot stops
/// answering, so the operators would lose the very tool they would use to fix it.
pub const TELEGRAM_INGRESS_FAILOVERS_MAX: u32 = 100;

/// `[telegram]`: a bot for admin commands and alerts whose update ingress is a failover role
/// (one poller cluster-wide). Every node that may poll lists the same section.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TelegramSection {
    /// A file holding the bot token from BotFather (mode 0600 or 0400).
    pub token_file: PathBuf,
    /// Chats allowed to run commands (they get the `operate` permission); alerts go to them
    /// too. Group chats have negative ids.
    pub admin_chats: Vec<i64>,
    /// `poll` (long polling by the ingress role's holder) or `webhook` (every node serves
    /// `webhook_listen`; the holder points the bot's webhook at its own `webhook_url` and
    /// answers the updates Telegram posts there; docs/telegram.md).
    #[serde(default = "default_telegram_mode")]
    pub mode: String,
    /// Webhook mode: the HTTPS URL at which Telegram reaches *this* node's `webhook_listen`
    /// (through a TLS proxy; Telegram posts only to ports 443, 80, 88 and 8443).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Webhook mode: where this node serves `POST` of updates (`host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_listen: Option<String>,
    /// Webhook mode: a file (mode 0600) holding the secret Telegram sends in
    /// `X-Telegram-Bot-Api-Secret-Token` (1 to 256 of `A-Z a-z 0-9 _ -`); a request without it
    /// is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret_file: Option<PathBuf>,
    /// The Bot API base URL (default `https://api.telegram.org`; a local Bot API server or a
    /// test double).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// The failover role whose holder polls (default `telegram-ingress`). It is added with the
    /// profile's timing and an anti-flap budget of [`TELEGRAM_INGRESS_FAILOVERS_MAX`] unless a
    /// `[[role]]` of that name sets its own (a longer `lease_ttl` allows longer polls: a poll
    /// never outlives the lease).
    #[serde(default = "default_telegram_role")]
    pub role: String,
    /// The longest long poll (default 10 s, at most 50 s); each poll is also cut to end before
    /// the holder's lease window can close.
    #[serde(default = "default_poll_timeout", with = "humantime_serde")]
    pub poll_timeout: Duration,
    /// The pause after an empty short poll (a poll of 0 s, when the lease is shorter than a
    /// second; default 300 ms).
    #[serde(default = "default_short_poll_interval", with = "humantime_serde")]
    pub short_poll_interval: Duration,
    /// Timeout of one Bot API call besides the poll's own wait (default 5 s).
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// What a new holder waits beyond the longest poll a previous holder may still have
    /// open at Telegram before its first call (default 250 ms).
    #[serde(default = "default_handoff_margin", with = "humantime_serde")]
    pub handoff_margin: Duration,
    /// Updates fetched per poll, 1 to 100 (default 100).
    #[serde(default = "default_batch_max")]
    pub batch_max: u8,
    /// The shortest gap between two messages to one chat (default 1 s, Telegram's limit).
    #[serde(default = "default_chat_interval", with = "humantime_serde")]
    pub chat_interval: Duration,
    /// Messages per minute to one group chat (default 20, Telegram's limit).
    #[serde(default = "default_group_per_minute")]
    pub group_per_minute: u32,
    /// Messages per second in all (default 30, Telegram's limit).
    #[serde(default = "default_global_per_second")]
    pub global_per_second: u32,
    /// Outbox entries the sender reads per round, oldest first (default 256).
    #[serde(default = "default_outbox_max")]
    pub outbox_max: u32,
    /// Whether to send alerts (role changes, quorum, critical health, split-brain
    /// suspicion) to the admin chats (default true).
    #[serde(default = "default_true")]
    pub alerts: bool,
}

fn default_telegram_mode() -> String {
    "poll".to_owned()
}
fn default_telegram_role() -> String {
    TELEGRAM_ROLE_DEFAULT.to_owned()
}
fn default_poll_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_short_poll_interval() -> Duration {
    Duration::from_millis(300)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_handoff_margin() -> Duration {
    Duration::from_millis(250)
}
fn default_batch_max() -> u8 {
    100
}
fn default_chat_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_group_per_minute() -> u32 {
    20
}
fn default_global_per_second() -> u32 {
    30
}
fn default_outbox_max() -> u32 {
    256
}

impl TelegramSection {
    /// A section for `token_file` and `admin_chats` with every other setting at its default.
    pub fn new(token_file: PathBuf, admin_chats: Vec<i64>) -> TelegramSection {
        TelegramSection {
            token_file,
            admin_chats,
            mode: default_telegram_mode(),
            webhook_url: None,
            webhook_listen: None,
            webhook_secret_file: None,
            api_url: None,
            role: default_telegram_role(),
            poll_timeout: default_poll_timeout(),
            short_poll_interval: default_short_poll_interval(),
            request_timeout: default_request_timeout(),
            handoff_margin: default_handoff_margin(),
            batch_max: default_batch_max(),
            chat_interval: default_chat_interval(),
            group_per_minute: default_group_per_minute(),
            global_per_second: default_global_per_second(),
            outbox_max: default_outbox_max(),
            alerts: true,
        }
    }
}

/// The `[telegram]` section, validated, with the token read from its file.
#[derive(Clone, Debug)]
pub struct TelegramSettings {
    /// The section as written.
    pub section: TelegramSection,
    /// The bot token. Never shown in `Debug` output.
    pub token: Secret,
    /// The ingress role.
    pub role: RoleName,
    /// Webhook mode: the secret Telegram must send. Never shown in `Debug` output.
    pub webhook_secret: Option<Secret>,
}

fn check_telegram(errs: &mut ConfigErrors, t: &TelegramSection) -> Option<TelegramSettings> {
    let token = read_key_file(errs, "telegram.token_file", &t.token_file);
    if let Some(tok) = &token {
        // BotFather tokens look like `123456789:AA...` (digits, a colon, 35 URL-safe chars).
        let ok = tok.split_once(':').is_some_and(|(id, rest)| {
            !id.is_empty()
                && id.bytes().all(|b| b.is_ascii_digit())
                && !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
        if !ok {
            errs.push(
                "telegram.token_file",
                format!(
                    "{} does not hold a bot token (BotFather's `123456789:AA...`, one line)",
                    t.token_file.display()
                ),
            );
        }
    }
    if t.admin_chats.is_empty() {
        errs.push(
            "telegram.admin_chats",
            "empty: list the chat ids allowed to run commands (docs/telegram.md tells how to find them)",
        );
    }
    let webhook_secret = match t.mode.as_str() {
        "poll" => {
            for (field, set) in [
                ("telegram.webhook_url", t.webhook_url.is_some()),
                ("telegram.webhook_listen", t.webhook_listen.is_some()),
                (
                    "telegram.webhook_secret_file",
                    t.webhook_secret_file.is_some(),
                ),
            ] {
                if set {
                    errs.push(field, "only used with mode = \"webhook\"");
                }
            }
            None
        }
        "webhook" => check_webhook(errs, t),
        other => {
            errs.push(
                "telegram.mode",
                format!("{other:?} is not a mode: use \"poll\" or \"webhook\""),
            );
            None
        }
    };
    if let Some(u) = &t.api_url
        && !(u.starts_with("http://") || u.starts_with("https://"))
    {
        errs.push(
            "telegram.api_url",
            format!("{u:?} must start with http:// or https://"),
        );
    }
    let role = RoleName::new(t.role.clone())
        .map_err(|e| errs.push("telegram.role", e.to_string()))
        .ok();
    let limits = [
        (
            "telegram.poll_timeout",
            t.poll_timeout,
            Duration::ZERO,
            Duration::from_secs(50),
        ),
        (
            "telegram.short_poll_interval",
            t.short_poll_interval,
            Duration::from_millis(1),
            Duration::from_secs(60),
        ),
        (
            "telegram.request_timeout",
            t.request_timeout,
            Duration::from_millis(100),
            Duration::from_secs(60),
        ),
        (
            "telegram.handoff_margin",
            t.handoff_margin,
            Duration::from_millis(1),
            Duration::from_secs(60),
        ),
        (
            "telegram.chat_interval",
            t.chat_interval,
            Duration::from_millis(1),
            Duration::from_secs(3600),
        ),
    ];
    for (field, d, min, max) in limits {
        if d < min || d > max {
            errs.push(field, format!("{d:?} must be {min:?} to {max:?}"));
        }
    }
    if !(1..=100).contains(&t.batch_max) {
        errs.push("telegram.batch_max", "must be 1 to 100 (Telegram's limit)");
    }
    for (field, v, max) in [
        ("telegram.group_per_minute", t.group_per_minute, 1_000),
        ("telegram.global_per_second", t.global_per_second, 1_000),
        ("telegram.outbox_max", t.outbox_max, 100_000),
    ] {
        if v == 0 || v > max {
            errs.push(field, format!("{v} must be 1 to {max}"));
        }
    }
    if t.mode == "webhook" && webhook_secret.is_none() {
        return None;
    }
    Some(TelegramSettings {
        section: t.clone(),
        token: Secret::new(token?),
        role: role?,
        webhook_secret,
    })
}

/// Checks the webhook settings; returns the secret.
fn check_webhook(errs: &mut ConfigErrors, t: &TelegramSection) -> Option<Secret> {
    match &t.webhook_url {
        None => errs.push(
            "telegram.webhook_url",
            "missing: the https:// URL at which Telegram reaches this node",
        ),
        Some(u) if !(u.starts_with("https://") || u.starts_with("http://")) => errs.push(
            "telegram.webhook_url",
            format!("{u:?} must be an https:// URL (Telegram posts only over HTTPS)"),
        ),
        Some(_) => {}
    }
    match &t.webhook_listen {
        None => errs.push(
            "telegram.webhook_listen",
            "missing: the host:port this node serves the webhook on",
        ),
        Some(a) => check_addr(errs, "telegram.webhook_listen", a),
    }
    let Some(file) = &t.webhook_secret_file else {
        errs.push(
            "telegram.webhook_secret_file",
            "missing: a 0600 file with the secret Telegram sends in X-Telegram-Bot-Api-Secret-Token",
        );
        return None;
    };
    let secret = read_key_file(errs, "telegram.webhook_secret_file", file)?;
    let ok = (1..=256).contains(&secret.len())
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        errs.push(
            "telegram.webhook_secret_file",
            format!(
                "{} must hold 1 to 256 characters of A-Z, a-z, 0-9, _ and - (Telegram's rule)",
                file.display()
            ),
        );
        return None;
    }
    Some(Secret::new(secret))
}

/// `[redis]`: this node's Redis server follows a role: the role's primary runs it as the
/// master (`REPLICAOF NO ONE`, the fencing token in a key), every other node as a replica of
/// the primary's server; a demoted master stops taking writes at once (`CLIENT PAUSE WRITE`).
/// The values are read by the `quorate-redis` adapter (docs/redis.md); this section only holds
/// and validates them.
///
/// ```toml
/// [redis]
/// role = "redis"                          # a [[role]] of this config
/// servers = { n1 = "10.0.0.1:6379", n2 = "10.0.0.2:6379", n3 = "10.0.0.3:6379" }
/// max_lag_bytes = 1048576                 # optional: a replica further behind is no candidate
/// min_replicas_to_write = 1               # optional: acknowledged-write mode
/// sentinel_listen = "0.0.0.0:26379"       # optional: answers Sentinel clients
/// ```
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    /// The `[[role]]` whose primary runs the Redis master.
    pub role: String,
    /// Every node's Redis server, node id -> `host:port` as the other servers and clients
    /// reach it (the same map on every node; it must list this node).
    pub servers: BTreeMap<String, String>,
    /// A file holding the Redis password (`requirepass`/`masterauth`), mode 0600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// A replica whose replication offset is more than this many bytes behind is not a
    /// failover candidate (default 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag_bytes: Option<u64>,
    /// Acknowledged-write mode: the master refuses writes unless this many replicas are
    /// connected and recent (`min-replicas-to-write`; default: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replicas_to_write: Option<u32>,
    /// With `min_replicas_to_write`: how stale a replica's last ack may be
    /// (`min-replicas-max-lag`, whole seconds, default 10 s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_replicas_max_lag: Option<Duration>,
    /// Where a Sentinel-compatible listener binds (`SENTINEL get-master-addr-by-name`);
    /// default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel_listen: Option<String>,
    /// The master name Sentinel clients ask for (default: the role's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel_master_name: Option<String>,
    /// How often every server's `INFO replication` is read (lag, following; default 100 ms).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub poll_interval: Option<Duration>,
    /// Timeout of one Redis command (default 500 ms).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub command_timeout: Option<Duration>,
}

/// `[api]`: the HTTP API of quorate-api (probes for load balancers, status and admin
/// endpoints, `/metrics`, the dashboard). It binds loopback by default; admin calls need a
/// bearer token unless `auth = false`, which is only accepted on a loopback address.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Where it listens (default `127.0.0.1:8008`, Patroni's port).
    #[serde(default = "default_api_listen")]
    pub listen: String,
    /// A file holding the operator token (at least 16 characters, mode 0600 like the cluster
    /// key; `quorate keygen --out FILE` makes one). Required unless `auth = false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// A file holding a read-only token (optional): it may read `/config` but not operate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_token_file: Option<PathBuf>,
    /// Whether admin calls need a token (default true). `false` is refused unless `listen` is
    /// a loopback address.
    #[serde(default = "default_true")]
    pub auth: bool,
    /// The largest request body accepted, in bytes (default 64 KiB); larger gets 413.
    #[serde(default = "default_api_body_bytes_max")]
    pub body_bytes_max: usize,
    /// Dashboards (server-sent event streams) open at once (default 32); more get 503.
    #[serde(default = "default_api_sse_clients_max")]
    pub sse_clients_max: usize,
}

fn default_api_listen() -> String {
    "127.0.0.1:8008".to_owned()
}
fn default_api_body_bytes_max() -> usize {
    64 * 1024
}
fn default_api_sse_clients_max() -> usize {
    32
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            listen: default_api_listen(),
            token_file: None,
            read_token_file: None,
            auth: true,
            body_bytes_max: default_api_body_bytes_max(),
            sse_clients_max: default_api_sse_clients_max(),
        }
    }
}

/// The `[api]` section, validated, with its tokens read.
#[derive(Clone, Debug)]
pub struct ApiValidated {
    /// The section as written.
    pub section: ApiSection,
    /// The operator token (`None` only with `auth = false` on loopback).
    pub token: Option<Secret>,
    /// The read-only token, if one is configured.
    pub read_token: Option<Secret>,
}

/// The shortest API token accepted, in characters.
pub const API_TOKEN_MIN_CHARS: usize = 16;

/// `[startup]`: how long each stage may take, and the graceful shutdown's budgets.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StartupSection {
    /// How long one startup stage may take before startup fails (default 60 s).
    #[serde(default = "default_stage_timeout", with = "humantime_serde")]
    pub stage_timeout: Duration,
    /// How long the coordination stage may wait for a quorum and catch up (default 5 min:
    /// the other voters may still be starting).
    #[serde(default = "default_coordination_timeout", with = "humantime_serde")]
    pub coordination_timeout: Duration,
    /// On shutdown, how long to wait for each role's successor to confirm (default 5 s).
    #[serde(default = "default_handover_wait", with = "humantime_serde")]
    pub handover_wait: Duration,
    /// The whole graceful shutdown's budget (default 30 s); a second signal cuts it short.
    #[serde(default = "default_stop_budget", with = "humantime_serde")]
    pub stop_budget: Duration,
    /// How many node events a slow subscriber may fall behind (default 1024).
    #[serde(default = "default_events_capacity")]
    pub events_capacity: usize,
}

fn default_stage_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_coordination_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_handover_wait() -> Duration {
    Duration::from_secs(5)
}
fn default_stop_budget() -> Duration {
    Duration::from_secs(30)
}
fn default_events_capacity() -> usize {
    1024
}

impl Default for StartupSection {
    fn default() -> Self {
        StartupSection {
            stage_timeout: default_stage_timeout(),
            coordination_timeout: default_coordination_timeout(),
            handover_wait: default_handover_wait(),
            stop_budget: default_stop_budget(),
            events_capacity: default_events_capacity(),
        }
    }
}

fn default_profile() -> String {
    "lan".to_owned()
}

/// `[raft]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RaftSection {
    /// Where the Raft listener binds.
    pub listen: String,
    /// The address peers use (default: `listen`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// The initial voters, id -> Raft address (the same map on every node of a new cluster).
    pub voters: BTreeMap<String, String>,
    /// This node's store quota, in bytes of stored keys and values (etcd's
    /// `--quota-backend-bytes`): while this node leads, a write that would grow the store past
    /// it is refused with NOSPACE (`ResourceExhausted`); reads, deletes, shrinking writes,
    /// locks and elections still work. At least 1 MiB and at most the built-in hard limit of
    /// 2 GiB, which every node applies alike (default: that limit). Give every node the same
    /// value, or the quota changes with the leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_bytes_max: Option<u64>,
}

/// `[gossip]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GossipSection {
    /// Where the gossip UDP socket binds.
    pub listen: String,
    /// The address peers use (default: `listen`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
#[derive(Clone, Debug, Deserialize, Serialize)]
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
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSection {
    /// The role's name.
    pub name: String,
    /// Command run before promotion; a non-zero exit vetoes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_promote: Option<String>,
    /// Command run on promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_promote: Option<String>,
    /// Command run on demotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_demote: Option<String>,
    /// Command run on every role change involving this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_role_change: Option<String>,
    /// Lease TTL override (default: the profile's).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub lease_ttl: Option<Duration>,
    /// Anti-flap budget: automatic failovers allowed per `anti_flap_window`, after which only
    /// manual operations move the role (default: the profile's, 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anti_flap_max_failovers: Option<u32>,
    /// The anti-flap window (default: the profile's, 30 minutes).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub anti_flap_window: Option<Duration>,
    /// How long the primary may be unhealthy before it is replaced (default: the profile's,
    /// 1 s on `lan`, 5 s on `wan`).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub unhealthy_grace: Option<Duration>,
    /// Automatic failback to a higher-priority node (default: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failback: Option<bool>,
    /// How long the preferred node must have been fit, and the primary in office, before a
    /// failback (default: 5 minutes).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub failback_hold_down: Option<Duration>,
    /// A failback that is due waits for an operator's approval (a manual failback: the
    /// Telegram bot's Approve button, `quorate ctl failback`, `POST /role/{role}/failback`)
    /// instead of happening by itself; it can be postponed (default: off; needs `failback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failback_approval: Option<bool>,
    /// How long a switchover, failback or unhealthy-primary handover waits for its successor
    /// (default: the profile's, 5 s on `lan`, 30 s on `wan`).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub handover_timeout: Option<Duration>,
    /// How long one hook command may run before its whole process group is killed (default
    /// [`HOOK_TIMEOUT_DEFAULT`], at most [`HOOK_TIMEOUT_MAX`]). A `before_promote` that times
    /// out vetoes. The failover manager's own hook limit is derived from the largest of these
    /// (see [`manager_hook_timeout`]), so this is the limit that applies.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
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

    /// A role named `name` with no hooks and the profile's settings.
    pub fn named(name: &str) -> RoleSection {
        RoleSection {
            name: name.to_owned(),
            before_promote: None,
            on_promote: None,
            on_demote: None,
            on_role_change: None,
            lease_ttl: None,
            anti_flap_max_failovers: None,
            anti_flap_window: None,
            unhealthy_grace: None,
            failback: None,
            failback_hold_down: None,
            failback_approval: None,
            handover_timeout: None,
            hook_timeout: None,
        }
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
        if let Some(on) = self.failback_approval {
            c.policy.failback.approval = on;
        }
        if let Some(t) = self.handover_timeout {
            c.policy.handover_timeout = t;
        }
        c
    }
}

/// One problem in a config: the field, where it was set, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The field, as written in the file (`raft.voters`, `check[2].kind`).
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
    /// Where the value came from: `FILE:LINE` (or `FILE:LINE:COLUMN` for a syntax error), or
    /// `env QUORATE_...`; `None` for a key that is missing.
    pub source: Option<String>,
}

/// Every problem found in a config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<Problem>);

impl ConfigErrors {
    pub(crate) fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            message: message.into(),
            source: None,
        });
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} problem(s) in the config:", self.0.len())?;
        for p in &self.0 {
            match &p.source {
                Some(src) => writeln!(f, "  - {} ({src}): {}", p.field, p.message)?,
                None => writeln!(f, "  - {}: {}", p.field, p.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The check kinds the agent knows.
pub const CHECK_KINDS: &[&str] = &[
    "tcp", "http", "redis", "postgres", "command", "disk", "memory",
];

/// The timing profile, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileName {
    /// Low latency links: sub-second failover.
    Lan,
    /// Slower links: longer timeouts.
    Wan,
}

impl ProfileName {
    /// Parses `lan` or `wan`.
    pub fn parse(s: &str) -> Option<ProfileName> {
        match s {
            "lan" => Some(ProfileName::Lan),
            "wan" => Some(ProfileName::Wan),
            _ => None,
        }
    }

    /// Whether this is the `wan` profile.
    pub fn is_wan(self) -> bool {
        self == ProfileName::Wan
    }
}

/// A check kind, validated (with the parsed target where it has one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// TCP connect.
    Tcp,
    /// HTTP GET.
    Http,
    /// Redis PING.
    Redis,
    /// PostgreSQL `SELECT 1`.
    Postgres,
    /// A command run with `sh -c` (exit 0 passing, 1 warning, else critical).
    Command,
    /// Free disk space of a path.
    Disk,
    /// The agent's RSS against a critical limit.
    Memory {
        /// The critical RSS in MiB.
        critical_mib: u64,
    },
}

impl CheckKind {
    /// Parses a kind and, for `memory`, its target (an error message names what is wrong).
    fn parse(kind: &str, target: &str) -> Result<CheckKind, String> {
        Ok(match kind {
            "tcp" => CheckKind::Tcp,
            "http" => CheckKind::Http,
            "redis" => CheckKind::Redis,
            "postgres" => CheckKind::Postgres,
            "command" => CheckKind::Command,
            "disk" => CheckKind::Disk,
            "memory" => CheckKind::Memory {
                critical_mib: target
                    .parse::<u64>()
                    .ok()
                    .filter(|m| (1..=MEMORY_MIB_MAX).contains(m))
                    .ok_or_else(|| {
                        format!(
                            "for kind memory: the critical RSS in MiB, 1 to {MEMORY_MIB_MAX}, e.g. \"512\""
                        )
                    })?,
            },
            other => {
                return Err(format!(
                    "{other:?} is not a check kind: use one of {}",
                    CHECK_KINDS.join(", ")
                ));
            }
        })
    }
}

/// The largest memory limit a `memory` check takes, in MiB (16 TiB; larger would overflow the
/// byte arithmetic).
pub const MEMORY_MIB_MAX: u64 = 16 * 1024 * 1024;

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
    pub key_hex: Secret,
    /// Further accepted keys, as hex (rotation).
    pub accepted_keys_hex: Vec<Secret>,
    /// Client keys, as hex.
    pub client_keys_hex: Vec<Secret>,
    /// The timing profile.
    pub profile: ProfileName,
    /// The kind of each `[[check]]`, in the order of `raw.checks`.
    pub check_kinds: Vec<CheckKind>,
    /// Startup and shutdown timing.
    pub startup: StartupSection,
    /// The Telegram bot, if configured.
    pub telegram: Option<TelegramSettings>,
    /// The Redis password read from `[redis] password_file`, if given.
    pub redis_password: Option<Secret>,
    /// The HTTP API, when configured.
    pub api: Option<ApiValidated>,
}

/// Reads and validates the config at `path`, with `QUORATE_...` environment overrides.
pub fn load(path: &Path) -> Result<Validated, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let mut errs = ConfigErrors::default();
        errs.push(path.display().to_string(), format!("cannot read: {e}"));
        errs
    })?;
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    parse_with(&text, &path.display().to_string(), &env)
}

/// Parses and validates config text (no environment), reporting every problem at once.
pub fn parse(text: &str) -> Result<Validated, ConfigErrors> {
    parse_with(text, "config", &[])
}

/// The smallest `raft.store_bytes_max`.
const STORE_QUOTA_MIN: u64 = 1 << 20;

/// The prefix of environment overrides: `QUORATE_NODE_ID`, `QUORATE_RAFT__LISTEN` (a double
/// underscore separates a section from its key), `QUORATE_CLUSTER_KEY`.
pub const ENV_PREFIX: &str = "QUORATE_";

/// Top-level keys and sections an environment variable may set.
const TOP_KEYS: &[&str] = &[
    "cluster_name",
    "cluster_key",
    "cluster_key_file",
    "accepted_key_files",
    "client_key_files",
    "node_id",
    "data_dir",
    "profile",
];
const SECTIONS: &[(&str, &[&str])] = &[
    ("raft", &["listen", "advertise", "store_bytes_max"]),
    (
        "telegram",
        &[
            "token_file",
            "mode",
            "api_url",
            "webhook_url",
            "webhook_listen",
            "webhook_secret_file",
        ],
    ),
    ("gossip", &["listen", "advertise", "seeds", "bootstrap"]),
    (
        "startup",
        &[
            "stage_timeout",
            "coordination_timeout",
            "handover_wait",
            "stop_budget",
            "events_capacity",
        ],
    ),
    (
        "api",
        &[
            "listen",
            "token_file",
            "read_token_file",
            "auth",
            "body_bytes_max",
            "sse_clients_max",
        ],
    ),
];
const LIST_KEYS: &[&str] = &["accepted_key_files", "client_key_files", "gossip.seeds"];

/// Parses `text` (named `file` in messages) with the environment overrides `env`, and
/// validates the whole: syntax errors by line and column; then every unknown key, wrong type
/// and invalid value, each with its key path and where it was set (`FILE:LINE` or the
/// environment variable), in one report.
pub fn parse_with(
    text: &str,
    file: &str,
    env: &[(String, String)],
) -> Result<Validated, ConfigErrors> {
    let mut errs = ConfigErrors::default();
    let mut table: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            let (line, col) = e.span().map_or((0, 0), |s| line_col(text, s.start));
            errs.0.push(Problem {
                field: "(syntax)".to_owned(),
                message: e.message().to_owned(),
                source: Some(format!("{file}:{line}:{col}")),
            });
            return Err(errs);
        }
    };
    // An inline key in the file is refused: the key comes from a file or the environment.
    let key_in_file = table.contains_key("cluster_key");
    let mut from_env: Vec<(String, String)> = Vec::new();
    apply_env(&mut table, env, &mut errs, &mut from_env);
    if key_in_file {
        errs.0.push(Problem {
            field: "cluster_key".to_owned(),
            message: "the key must not be written in the config file: put it in a file (`quorate keygen --out FILE`, then cluster_key_file = \"FILE\") or in QUORATE_CLUSTER_KEY".to_owned(),
            source: locate(text, file, "cluster_key"),
        });
        table.remove("cluster_key");
    }
    // Deserialise, collecting every unknown key and wrong type: each offending key is reported
    // and removed, and deserialisation tried again (bounded).
    let mut raw = None;
    for _ in 0..64 {
        match toml::Value::Table(table.clone()).try_into::<AgentConfig>() {
            Ok(r) => {
                raw = Some(r);
                break;
            }
            Err(e) => {
                let shown = e.to_string();
                let path = shown
                    .rsplit_once("in `")
                    .and_then(|(_, p)| p.split('`').next())
                    .unwrap_or("")
                    .to_owned();
                let message = e.message().to_owned();
                let field_name = message
                    .strip_prefix("unknown field `")
                    .and_then(|r| r.split('`').next())
                    .map(str::to_owned);
                let missing = message.starts_with("missing field");
                let full = match (&field_name, path.is_empty()) {
                    (Some(f), true) => f.clone(),
                    (Some(f), false) => format!("{path}.{f}"),
                    (None, _) => path.clone(),
                };
                let removed = if missing || full.is_empty() {
                    None
                } else {
                    remove_path(&mut table, &full)
                };
                let full = removed.clone().unwrap_or(full);
                let source = from_env
                    .iter()
                    .find(|(p, _)| *p == full)
                    .map(|(_, var)| format!("env {var}"))
                    .or_else(|| locate(text, file, &full));
                let message = match &field_name {
                    Some(_) => format!("unknown key: {message}"),
                    None => message,
                };
                errs.0.push(Problem {
                    field: if full.is_empty() {
                        "(config)".to_owned()
                    } else {
                        full.clone()
                    },
                    message,
                    source,
                });
                if removed.is_none() {
                    break;
                }
            }
        }
    }
    let Some(raw) = raw else {
        return Err(errs);
    };
    match validate(raw) {
        Ok(v) if errs.0.is_empty() => Ok(v),
        Ok(_) => Err(errs),
        Err(more) => {
            for mut p in more.0 {
                if p.source.is_none() {
                    p.source = from_env
                        .iter()
                        .find(|(f, _)| *f == p.field || p.field.starts_with(&format!("{f}.")))
                        .map(|(_, var)| format!("env {var}"))
                        .or_else(|| locate(text, file, &p.field));
                }
                errs.0.push(p);
            }
            Err(errs)
        }
    }
}

/// Applies `QUORATE_...` overrides to `table`. A variable naming no config key is ignored
/// (other tools use the prefix too) unless it names a known section with an unknown key, which
/// is a typo and reported. Values are TOML (`true`, `3`, `["a", "b"]`) or else strings; list
/// keys also take comma-separated strings.
fn apply_env(
    table: &mut toml::Table,
    env: &[(String, String)],
    errs: &mut ConfigErrors,
    from_env: &mut Vec<(String, String)>,
) {
    for (var, value) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let lower = rest.to_ascii_lowercase();
        let (section, key) = match lower.split_once("__") {
            Some((s, k)) => (Some(s.to_owned()), k.to_owned()),
            None => (None, lower.clone()),
        };
        let path = match &section {
            None if TOP_KEYS.contains(&key.as_str()) => key.clone(),
            None => continue,
            Some(s) => match SECTIONS.iter().find(|(name, _)| name == s) {
                Some((_, keys)) if keys.contains(&key.as_str()) => format!("{s}.{key}"),
                Some((_, keys)) => {
                    errs.0.push(Problem {
                        field: format!("{s}.{key}"),
                        message: format!(
                            "unknown key; [{s}] takes {} from the environment",
                            keys.join(", ")
                        ),
                        source: Some(format!("env {var}")),
                    });
                    continue;
                }
                None => continue,
            },
        };
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"));
        let v = match parsed {
            Some(v) => v,
            None if LIST_KEYS.contains(&path.as_str()) => toml::Value::Array(
                value
                    .split(',')
                    .map(|x| toml::Value::String(x.trim().to_owned()))
                    .filter(|x| x.as_str().is_some_and(|s| !s.is_empty()))
                    .collect(),
            ),
            None => toml::Value::String(value.clone()),
        };
        let target = match &section {
            None => &mut *table,
            Some(s) => {
                match table
                    .entry(s.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                {
                    toml::Value::Table(t) => t,
                    _ => {
                        errs.0.push(Problem {
                        field: s.clone(),
                        message: "is not a table in the file, so the environment cannot set a key in it".to_owned(),
                        source: Some(format!("env {var}")),
                    });
                        continue;
                    }
                }
            }
        };
        target.insert(key, v);
        from_env.push((path, var.clone()));
    }
}

/// Removes `path` (`a.b`, `check[2].kind`; an array segment without an index means its first
/// element holding the rest) from `table`; returns the precise path removed (with indices), or
/// `None` when it is not there.
fn remove_path(table: &mut toml::Table, path: &str) -> Option<String> {
    let (head, rest) = match path.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (path, None),
    };
    let (name, idx) = match head.split_once('[') {
        Some((n, i)) => (n, i.trim_end_matches(']').parse::<usize>().ok()),
        None => (head, None),
    };
    let Some(rest) = rest else {
        return match idx {
            None => table.remove(name).map(|_| name.to_owned()),
            Some(i) => match table.get_mut(name) {
                Some(toml::Value::Array(a)) if i < a.len() => {
                    a.remove(i);
                    Some(format!("{name}[{i}]"))
                }
                _ => None,
            },
        };
    };
    match (table.get_mut(name), idx) {
        (Some(toml::Value::Table(inner)), None) => {
            remove_path(inner, rest).map(|p| format!("{name}.{p}"))
        }
        (Some(toml::Value::Array(a)), Some(i)) => match a.get_mut(i) {
            Some(toml::Value::Table(inner)) => {
                remove_path(inner, rest).map(|p| format!("{name}[{i}].{p}"))
            }
            _ => None,
        },
        (Some(toml::Value::Array(a)), None) => {
            a.iter_mut().enumerate().find_map(|(i, v)| match v {
                toml::Value::Table(inner) => {
                    remove_path(inner, rest).map(|p| format!("{name}[{i}].{p}"))
                }
                _ => None,
            })
        }
        _ => None,
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// `FILE:LINE` of the key `path` (`raft.listen`, `check[2].kind`, `gossip.tags.x`) in `text`:
/// the line that sets it, else the line of the nearest enclosing key or table found.
fn locate(text: &str, file: &str, path: &str) -> Option<String> {
    let mut section = String::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut best: Option<(usize, usize)> = None; // (matched length, line)
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        let here = if let Some(name) = l.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
            let name = name.trim().to_owned();
            let n = counts.entry(name.clone()).or_insert(0);
            section = format!("{name}[{n}]");
            *n += 1;
            section.clone()
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            section = name.trim().to_owned();
            section.clone()
        } else if let Some((k, _)) = l.split_once('=') {
            let k = k.trim().trim_matches('"');
            if k.is_empty() || k.starts_with('#') {
                continue;
            }
            if section.is_empty() {
                k.to_owned()
            } else {
                format!("{section}.{k}")
            }
        } else {
            continue;
        };
        let matches = path == here || path.starts_with(&format!("{here}."));
        if matches && best.is_none_or(|(len, _)| here.len() > len) {
            best = Some((here.len(), i + 1));
        }
    }
    best.map(|(_, line)| format!("{file}:{line}"))
}

fn validate(mut raw: AgentConfig) -> Result<Validated, ConfigErrors> {
    let mut errs = ConfigErrors::default();
    if raw.cluster_name.is_empty() || raw.cluster_name.len() > 128 {
        errs.push("cluster_name", "must be 1 to 128 bytes");
    }
    let node_id = NodeId::new(raw.node_id.clone())
        .map_err(|e| errs.push("node_id", e.to_string()))
        .ok();
    let key_hex = match (&raw.cluster_key, &raw.cluster_key_file) {
        (Some(k), None) => Some(k.expose().trim().to_owned()),
        (None, Some(p)) => read_key_file(&mut errs, "cluster_key_file", p),
        (Some(_), Some(_)) => {
            errs.push(
                "cluster_key",
                "give QUORATE_CLUSTER_KEY or cluster_key_file, not both",
            );
            None
        }
        (None, None) => {
            errs.push(
                "cluster_key",
                "missing: set cluster_key_file (`quorate keygen --out FILE` makes one) or the environment variable QUORATE_CLUSTER_KEY (64 hex digits)",
            );
            None
        }
    };
    if let Some(k) = &key_hex
        && let Err(e) = quorate_wire::ClusterKey::from_hex(k)
    {
        errs.push("cluster_key", e.to_string());
    }
    let mut accepted_keys_hex = Vec::new();
    for (i, p) in raw.accepted_key_files.iter().enumerate() {
        let field = format!("accepted_key_files[{i}]");
        if let Some(k) = read_key_file(&mut errs, &field, p) {
            match quorate_wire::ClusterKey::from_hex(&k) {
                Ok(_) => accepted_keys_hex.push(Secret::new(k)),
                Err(e) => errs.push(field, e.to_string()),
            }
        }
    }
    let mut client_keys_hex: Vec<Secret> = Vec::new();
    if raw.client_key_files.len() > quorate_wire::KEYS_MAX {
        errs.push(
            "client_key_files",
            format!(
                "{} files; at most {}: drop retired client keys",
                raw.client_key_files.len(),
                quorate_wire::KEYS_MAX
            ),
        );
    }
    for (i, p) in raw.client_key_files.iter().enumerate() {
        let field = format!("client_key_files[{i}]");
        let Some(k) = read_key_file(&mut errs, &field, p) else {
            continue;
        };
        let parse = |h: &str| quorate_wire::ClusterKey::from_hex(h).ok();
        let Some(client) = parse(&k) else {
            if let Err(e) = quorate_wire::ClusterKey::from_hex(&k) {
                errs.push(field, e.to_string());
            }
            continue;
        };
        if key_hex.as_deref().and_then(parse).as_ref() == Some(&client)
            || accepted_keys_hex
                .iter()
                .any(|a| parse(a.expose()).as_ref() == Some(&client))
        {
            errs.push(
                field,
                format!(
                    "{} holds a cluster key: a client key must be a key of its own (`quorate keygen --out FILE`), or the client could speak for a node",
                    p.display()
                ),
            );
        } else {
            client_keys_hex.push(Secret::new(k));
        }
    }
    let profile = ProfileName::parse(&raw.profile);
    if profile.is_none() {
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
    if let Some(q) = raw.raft.store_bytes_max {
        let hard = quorate_raft::machine::MachineLimits::lan().store_bytes_max;
        if !(STORE_QUOTA_MIN..=hard).contains(&q) {
            errs.push(
                "raft.store_bytes_max",
                format!(
                    "{q} bytes: give {STORE_QUOTA_MIN} (1 MiB) to {hard} (the built-in hard limit every node applies)"
                ),
            );
        }
    }
    check_addr(&mut errs, "gossip.listen", &raw.gossip.listen);
    if let Some(a) = &raw.raft.advertise {
        check_advertise(&mut errs, "raft.advertise", a);
    }
    if let Some(a) = &raw.gossip.advertise {
        check_advertise(&mut errs, "gossip.advertise", a);
    }
    check_tags(&mut errs, &raw.gossip.tags);
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
    let mut check_kinds = Vec::new();
    for (i, c) in raw.checks.iter().enumerate() {
        let f = format!("check[{i}]");
        if !ids.insert(c.id.clone()) {
            errs.push(format!("{f}.id"), format!("{:?} is used twice", c.id));
        }
        match CheckKind::parse(&c.kind, &c.target) {
            Ok(k) => {
                // The agent's own constructor: a target it would refuse is refused here.
                if let Err(e) = crate::node::build_check(c, k) {
                    errs.push(format!("{f}.target"), e);
                }
                check_kinds.push(k);
            }
            Err(m) if CHECK_KINDS.contains(&c.kind.as_str()) => errs.push(format!("{f}.target"), m),
            Err(m) => errs.push(format!("{f}.kind"), m),
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
    }
    let st = &raw.startup;
    for (field, d) in [
        ("startup.stage_timeout", st.stage_timeout),
        ("startup.coordination_timeout", st.coordination_timeout),
        ("startup.handover_wait", st.handover_wait),
        ("startup.stop_budget", st.stop_budget),
    ] {
        if d.is_zero() || d > Duration::from_secs(24 * 3600) {
            errs.push(field, format!("{d:?} must be above zero and at most 24 h"));
        }
    }
    if !(16..=1 << 20).contains(&st.events_capacity) {
        errs.push("startup.events_capacity", "must be 16 to 1048576");
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
                    "policy.failback.approval" => "failback_approval",
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
    // The Telegram ingress role comes with the [telegram] section: added with the profile's
    // timing unless listed; listed without the section, nobody would poll while holding it.
    let telegram = raw
        .telegram
        .as_ref()
        .and_then(|t| check_telegram(&mut errs, t));
    match &telegram {
        Some(t) if !roles.contains(&t.role) => {
            roles.push(t.role.clone());
            raw.roles.push(RoleSection {
                anti_flap_max_failovers: Some(TELEGRAM_INGRESS_FAILOVERS_MAX),
                ..RoleSection::named(t.role.as_str())
            });
        }
        Some(_) => {}
        None if raw.telegram.is_none() => {
            if let Some(i) = raw
                .roles
                .iter()
                .position(|r| r.name == TELEGRAM_ROLE_DEFAULT)
            {
                errs.push(
                    format!("role[{i}].name"),
                    format!(
                        "{TELEGRAM_ROLE_DEFAULT} is the Telegram ingress role: add a [telegram] section (docs/telegram.md) or give the role another name"
                    ),
                );
            }
        }
        None => {}
    }
    let mut redis_password = None;
    if let Some(r) = &raw.redis {
        check_redis(&mut errs, r, node_id.as_ref(), &roles);
        if let Some(p) = &r.password_file {
            redis_password = read_key_file(&mut errs, "redis.password_file", p).map(Secret::new);
        }
    }
    if let Some(r) = &raw.replication {
        crate::replication::validate(r, &raw.node_id, &roles, &mut errs);
    }
    let api = raw.api.as_ref().map(|a| validate_api(&mut errs, a));
    let startup = raw.startup.clone();
    match (errs.0.is_empty(), node_id, key_hex, profile) {
        (true, Some(node_id), Some(key_hex), Some(profile)) => Ok(Validated {
            raw,
            node_id,
            voters,
            roles,
            key_hex: Secret::new(key_hex),
            accepted_keys_hex,
            client_keys_hex,
            profile,
            check_kinds,
            startup,
            telegram,
            redis_password,
            api,
        }),
        _ => Err(errs),
    }
}

/// Whether `listen` (`host:port`) is a loopback address (`127.0.0.0/8`, `::1`, `localhost`).
pub fn is_loopback(listen: &str) -> bool {
    let host = listen.rsplit_once(':').map_or(listen, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn validate_api(errs: &mut ConfigErrors, a: &ApiSection) -> ApiValidated {
    check_addr(errs, "api.listen", &a.listen);
    let mut read_token = |field: &str, p: &Path| {
        let t = read_key_file(errs, field, p)?;
        if t.chars().count() < API_TOKEN_MIN_CHARS {
            errs.push(
                field,
                format!(
                    "{} holds {} characters: a token needs at least {API_TOKEN_MIN_CHARS} \
                     (`quorate keygen --out FILE` writes 64)",
                    p.display(),
                    t.chars().count()
                ),
            );
            return None;
        }
        Some(Secret::new(t))
    };
    let token = a
        .token_file
        .as_ref()
        .and_then(|p| read_token("api.token_file", p));
    let read = a
        .read_token_file
        .as_ref()
        .and_then(|p| read_token("api.read_token_file", p));
    if a.auth && a.token_file.is_none() {
        errs.push(
            "api.token_file",
            "missing: admin calls need a bearer token; make one with `quorate keygen --out FILE` \
             and set token_file = \"FILE\" (or auth = false, accepted only on a loopback listen)",
        );
    }
    if !a.auth && !is_loopback(&a.listen) {
        errs.push(
            "api.auth",
            format!(
                "auth = false with listen = {:?}: an API without a token may only listen on \
                 loopback (127.0.0.1 or ::1); set token_file instead",
                a.listen
            ),
        );
    }
    if let (Some(t), Some(r)) = (&token, &read)
        && t.expose() == r.expose()
    {
        errs.push(
            "api.read_token_file",
            "holds the same token as token_file: a read-only token must differ",
        );
    }
    if !(1024..=16 * 1024 * 1024).contains(&a.body_bytes_max) {
        errs.push("api.body_bytes_max", "must be 1024 to 16777216 bytes");
    }
    if !(1..=4096).contains(&a.sse_clients_max) {
        errs.push("api.sse_clients_max", "must be 1 to 4096");
    }
    ApiValidated {
        section: a.clone(),
        token: if a.auth { token } else { None },
        read_token: if a.auth { read } else { None },
    }
}

/// Reads a key file, refusing one that group or others can read (the key is the cluster's
/// whole authority). Problems go to `errs` under `field`.
fn read_key_file(errs: &mut ConfigErrors, field: &str, p: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = match std::fs::metadata(p) {
        Ok(m) => m,
        Err(e) => {
            errs.push(field, format!("cannot read {}: {e}", p.display()));
            return None;
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        errs.push(
            field,
            format!(
                "{} has mode {mode:04o}: a key file must not be readable by group or others; fix it with `chmod 600 {}`",
                p.display(),
                p.display()
            ),
        );
        return None;
    }
    match std::fs::read_to_string(p) {
        Ok(s) => Some(s.trim().to_owned()),
        Err(e) => {
            errs.push(field, format!("cannot read {}: {e}", p.display()));
            None
        }
    }
}

/// Writes a new random cluster key to `path` (mode 0600, created exclusively: an existing file
/// is never overwritten). Returns the error message to show otherwise.
pub fn write_new_key_file(path: &Path) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let key = quorate_wire::ClusterKey::generate().map_err(|e| e.to_string())?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => format!(
                "{} exists: keygen never overwrites a key (remove it first if you mean to)",
                path.display()
            ),
            _ => format!("cannot create {}: {e}", path.display()),
        })?;
    writeln!(f, "{}", key.to_hex())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// An address peers dial: `host:port` with a non-zero port and a host that is an IP address or
/// a DNS name (letters, digits, `-`, `.`), not a wildcard.
fn check_advertise(errs: &mut ConfigErrors, field: &str, addr: &str) {
    let Some((host, port)) = addr.rsplit_once(':') else {
        errs.push(field, format!("{addr:?} is not host:port"));
        return;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let ip = host.parse::<std::net::IpAddr>().ok();
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && !host.starts_with('-');
    if !port_ok {
        errs.push(field, format!("{addr:?}: the port must be 1 to 65535"));
    } else if ip.is_some_and(|ip| ip.is_unspecified()) {
        errs.push(
            field,
            format!(
                "{addr:?} is a wildcard address: peers cannot dial it; give this node's own address"
            ),
        );
    } else if ip.is_none() && !name_ok {
        errs.push(
            field,
            format!("{addr:?}: the host is neither an IP address nor a DNS name"),
        );
    }
}

/// The gossip tags the failover policy reads must parse: a typo must not silently make a node
/// ineligible (`failover-priority = "high"` used to mean priority 0, never a candidate) or
/// leave maintenance off (`maintenance = "yes"` was ignored).
fn check_tags(errs: &mut ConfigErrors, tags: &BTreeMap<String, String>) {
    if let Some(p) = tags.get("failover-priority")
        && p.trim().parse::<u32>().is_err()
    {
        errs.push(
            "gossip.tags.failover-priority",
            format!("{p:?} is not a priority: a whole number, higher preferred, 0 = never primary"),
        );
    }
    for flag in ["no-failover", "maintenance"] {
        if let Some(v) = tags.get(flag)
            && v != "true"
            && v != "false"
        {
            errs.push(
                format!("gossip.tags.{flag}"),
                format!("{v:?} is not a flag: use \"true\" or \"false\""),
            );
        }
    }
}

/// Checks `[redis]`: the role exists, the servers are `host:port` under valid node ids and
/// list this node, the limits are sane.
fn check_redis(
    errs: &mut ConfigErrors,
    r: &RedisSection,
    node: Option<&NodeId>,
    roles: &[RoleName],
) {
    if !roles.iter().any(|n| n.as_str() == r.role) {
        errs.push(
            "redis.role",
            format!(
                "{:?} is not a [[role]] of this config; add [[role]] name = {:?}",
                r.role, r.role
            ),
        );
    }
    if r.servers.is_empty() {
        errs.push(
            "redis.servers",
            "empty: list every node's Redis, id = \"host:port\"",
        );
    }
    for (id, addr) in &r.servers {
        if let Err(e) = NodeId::new(id.clone()) {
            errs.push(format!("redis.servers.{id}"), e.to_string());
        }
        check_addr(errs, &format!("redis.servers.{id}"), addr);
    }
    if let Some(n) = node
        && !r.servers.is_empty()
        && !r.servers.contains_key(n.as_str())
    {
        errs.push(
            "redis.servers",
            format!("does not list this node ({n}): add {n} = \"host:port\" of its Redis"),
        );
    }
    if let Some(a) = &r.sentinel_listen {
        check_addr(errs, "redis.sentinel_listen", a);
    }
    if let Some(name) = &r.sentinel_master_name
        && (name.is_empty() || name.len() > 128 || name.chars().any(char::is_whitespace))
    {
        errs.push(
            "redis.sentinel_master_name",
            "must be 1 to 128 bytes without spaces",
        );
    }
    if r.min_replicas_to_write.is_some_and(|n| n == 0 || n > 64) {
        errs.push(
            "redis.min_replicas_to_write",
            "must be 1 to 64 (leave it out to turn acknowledged-write mode off)",
        );
    }
    if let Some(l) = r.min_replicas_max_lag
        && (l < Duration::from_secs(1) || l > Duration::from_secs(3600))
    {
        errs.push(
            "redis.min_replicas_max_lag",
            format!("{l:?} must be 1 s to 1 h (Redis counts it in whole seconds)"),
        );
    }
    for (field, v, min, max) in [
        (
            "redis.poll_interval",
            r.poll_interval,
            Duration::from_millis(10),
            Duration::from_secs(60),
        ),
        (
            "redis.command_timeout",
            r.command_timeout,
            Duration::from_millis(10),
            Duration::from_secs(60),
        ),
    ] {
        if let Some(v) = v
            && (v < min || v > max)
        {
            errs.push(field, format!("{v:?} must be {min:?} to {max:?}"));
        }
    }
}

pub(crate) fn check_addr(errs: &mut ConfigErrors, field: &str, addr: &str) {
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

    const KEY: &str = "1111111111111111111111111111111111111111111111111111111111111111";

    /// Parses with the key from the environment (the file may not hold it).
    fn parse(text: &str) -> Result<Validated, ConfigErrors> {
        parse_with(
            text,
            "node.toml",
            &[("QUORATE_CLUSTER_KEY".to_owned(), KEY.to_owned())],
        )
    }

    const GOOD: &str = r#"
cluster_name = "demo"
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
    fn redis_section_is_validated_with_every_problem_at_once() {
        let good = format!(
            "{GOOD}\n[redis]\nrole = \"demo\"\nservers = {{ n1 = \"127.0.0.1:6379\", n2 = \"127.0.0.1:6380\" }}\nsentinel_listen = \"127.0.0.1:26379\"\nmin_replicas_to_write = 1\n"
        );
        let v = parse(&good).unwrap();
        let r = v.raw.redis.as_ref().unwrap();
        assert_eq!(r.servers.len(), 2);
        assert_eq!(r.min_replicas_to_write, Some(1));
        let bad = format!(
            "{GOOD}\n[redis]\nrole = \"cache\"\nservers = {{ n2 = \"nohost\", \"Bad!\" = \"h:1\" }}\nmin_replicas_to_write = 0\nmin_replicas_max_lag = \"100ms\"\npoll_interval = \"1ms\"\nsentinel_listen = \"x\"\n"
        );
        let errs = parse(&bad).unwrap_err();
        let fields: Vec<&str> = errs.0.iter().map(|p| p.field.as_str()).collect();
        for f in [
            "redis.role",
            "redis.servers.n2",
            "redis.servers.Bad!",
            "redis.servers",
            "redis.min_replicas_to_write",
            "redis.min_replicas_max_lag",
            "redis.poll_interval",
            "redis.sentinel_listen",
        ] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
        let role = errs.0.iter().find(|p| p.field == "redis.role").unwrap();
        assert!(
            role.message.contains("[[role]] name = \"cache\""),
            "{}",
            role.message
        );
    }

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
        let e = super::parse(GOOD).unwrap_err();
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
             failback_approval = true\nunhealthy_grace = \"3s\"\nhandover_timeout = \"8s\"\nlease_ttl = \"900ms\"",
        ))
        .unwrap();
        let c = v.raw.roles[0].role_config(false);
        assert!(c.policy.failback.enabled);
        assert!(c.policy.failback.approval);
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
        let e = parse(&GOOD.replace("on_promote = \"echo promoted\"", "failback_approval = true"))
            .unwrap_err();
        assert!(
            e.0.iter().any(|p| p.field == "role[0].failback_approval"),
            "{e}"
        );
        // Turned off, a short hold-down is not checked.
        parse(&GOOD.replace(
            "on_promote = \"echo promoted\"",
            "failback = false\nfailback_hold_down = \"500ms\"",
        ))
        .unwrap();
    }

    #[test]
    fn node_must_be_a_voter_and_seeds_or_bootstrap() {
        let e = parse(&GOOD.replace("node_id = \"n1\"", "node_id = \"n9\"")).unwrap_err();
        assert!(e.to_string().contains("does not list this node"), "{e}");
        let e = parse(&GOOD.replace("seeds = [\"127.0.0.1:7102\"]", "")).unwrap_err();
        assert!(e.to_string().contains("bootstrap"), "{e}");
    }

    /// `GOOD` with `line` added to the section `section` (or at the top for `""`).
    fn with(section: &str, line: &str) -> String {
        if section.is_empty() {
            return format!("{line}\n{GOOD}");
        }
        GOOD.replacen(section, &format!("{section}\n{line}"), 1)
    }

    /// Each bad setting is reported against its key with a message that says what to do.
    #[test]
    fn bad_settings_table() {
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "[gossip]",
                r#"tags = { failover-priority = "high" }"#,
                "gossip.tags.failover-priority",
                "\"high\" is not a priority: a whole number, higher preferred, 0 = never primary",
            ),
            (
                "[gossip]",
                r#"tags = { maintenance = "yes" }"#,
                "gossip.tags.maintenance",
                "\"yes\" is not a flag: use \"true\" or \"false\"",
            ),
            (
                "[gossip]",
                r#"tags = { no-failover = "1" }"#,
                "gossip.tags.no-failover",
                "\"1\" is not a flag",
            ),
            (
                "[raft]",
                r#"advertise = "not an address""#,
                "raft.advertise",
                "is not host:port",
            ),
            (
                "[gossip]",
                r#"advertise = "0.0.0.0:7101""#,
                "gossip.advertise",
                "is a wildcard address",
            ),
            (
                "[raft]",
                r#"advertise = "bad_host!:7201""#,
                "raft.advertise",
                "neither an IP address nor a DNS name",
            ),
        ];
        for (section, line, field, message) in cases {
            let errs = parse(&with(section, line)).unwrap_err();
            assert!(
                errs.0
                    .iter()
                    .any(|p| p.field == *field && p.message.contains(message)),
                "{line}: expected {field}: {message}; got {errs}"
            );
        }
        let check = |kind: &str, target: &str| {
            GOOD.replacen(
                "[[role]]",
                &format!(
                    "[[check]]\nid = \"x\"\nkind = \"{kind}\"\ntarget = \"{target}\"\n\n[[role]]"
                ),
                1,
            )
        };
        for (kind, target, message) in [
            ("http", "ftp://example.org/", "must start with http://"),
            (
                "memory",
                "18446744073709551615",
                "for kind memory: the critical RSS in MiB",
            ),
            ("memory", "0", "for kind memory: the critical RSS in MiB"),
            ("teapot", "x", "is not a check kind"),
        ] {
            let errs = parse(&check(kind, target)).unwrap_err();
            assert!(
                errs.0.iter().any(|p| p.message.contains(message)),
                "{kind} {target}: expected {message}; got {errs}"
            );
        }
    }

    /// One `quorate check` run reports every mistake the review found, not one per run.
    #[test]
    fn one_run_reports_every_mistake() {
        let text = GOOD
            .replacen(
                "[gossip]",
                "[gossip]\nadvertise = \"garbage\"\ntags = { failover-priority = \"high\", maintenance = \"yes\" }",
                1,
            )
            .replacen(
                "[[role]]",
                "[[check]]\nid = \"web\"\nkind = \"http\"\ntarget = \"ftp://x/\"\n\n[[check]]\nid = \"mem\"\nkind = \"memory\"\ntarget = \"18446744073709551615\"\n\n[[role]]",
                1,
            );
        let errs = parse(&text).unwrap_err();
        for field in [
            "gossip.advertise",
            "gossip.tags.failover-priority",
            "gossip.tags.maintenance",
            "check[1].target",
            "check[2].target",
        ] {
            assert!(
                errs.0.iter().any(|p| p.field == field),
                "{field} missing: {errs}"
            );
        }
        assert_eq!(errs.0.len(), 5, "{errs}");
    }

    fn key_file(dir: &Path, name: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let p = dir.join(name);
        write_new_key_file(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn with_key_files(main: &Path, accepted: &[&Path]) -> String {
        let list: Vec<String> = accepted
            .iter()
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect();
        format!(
            "cluster_key_file = {:?}\naccepted_key_files = [{}]\n{GOOD}",
            main.display().to_string(),
            list.join(", ")
        )
    }

    #[test]
    fn a_key_file_readable_by_others_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let open = key_file(dir.path(), "open.key", 0o644);
        let errs = super::parse(&with_key_files(&open, &[])).unwrap_err();
        let p = errs
            .0
            .iter()
            .find(|p| p.field == "cluster_key_file")
            .unwrap();
        assert!(p.message.contains("mode 0644"), "{errs}");
        assert!(p.message.contains("chmod 600"), "{errs}");
        let group = key_file(dir.path(), "group.key", 0o640);
        let good = key_file(dir.path(), "good.key", 0o600);
        let errs = super::parse(&with_key_files(&good, &[&group])).unwrap_err();
        assert!(
            errs.0.iter().any(|p| p.field == "accepted_key_files[0]"),
            "{errs}"
        );
        let next = key_file(dir.path(), "next.key", 0o400);
        let v = super::parse(&with_key_files(&good, &[&next])).unwrap();
        assert_eq!(v.accepted_keys_hex.len(), 1);
    }

    #[test]
    fn client_key_files_are_checked_like_key_files_and_must_not_be_cluster_keys() {
        let dir = tempfile::tempdir().unwrap();
        let main = key_file(dir.path(), "main.key", 0o600);
        let next = key_file(dir.path(), "next.key", 0o600);
        let app = key_file(dir.path(), "app.key", 0o600);
        let open = key_file(dir.path(), "open.key", 0o644);
        let with_clients = |clients: &[&Path]| {
            let list: Vec<String> = clients
                .iter()
                .map(|p| format!("{:?}", p.display().to_string()))
                .collect();
            format!(
                "client_key_files = [{}]\n{}",
                list.join(", "),
                with_key_files(&main, &[&next])
            )
        };
        let v = super::parse(&with_clients(&[&app])).unwrap();
        assert_eq!(v.client_keys_hex.len(), 1);
        assert!(!format!("{v:?}").contains(v.client_keys_hex[0].expose()));
        let errs = super::parse(&with_clients(&[&open, &main, &next])).unwrap_err();
        let msg = |field: &str| {
            errs.0
                .iter()
                .find(|p| p.field == field)
                .map(|p| p.message.clone())
                .unwrap_or_else(|| panic!("{field} not reported: {errs}"))
        };
        assert!(msg("client_key_files[0]").contains("chmod 600"), "{errs}");
        assert!(msg("client_key_files[1]").contains("cluster key"), "{errs}");
        assert!(msg("client_key_files[2]").contains("cluster key"), "{errs}");
    }

    #[test]
    fn keygen_writes_0600_and_never_overwrites() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cluster.key");
        write_new_key_file(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let first = std::fs::read_to_string(&p).unwrap();
        assert!(quorate_wire::ClusterKey::from_hex(first.trim()).is_ok());
        let err = write_new_key_file(&p).unwrap_err();
        assert!(err.contains("never overwrites"), "{err}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), first);
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        let v = parse(GOOD).unwrap();
        assert!(!format!("{v:?}").contains(KEY));
        assert!(!format!("{:?}", v.raw).contains(KEY));
        assert_eq!(v.key_hex.expose(), KEY);
    }

    /// A config with several mistakes of different kinds: every one is reported in one run,
    /// each with its key path and its source (file:line or the environment variable).
    #[test]
    fn several_mistakes_are_all_reported_with_their_sources() {
        let text = GOOD
            .replace("node_id = \"n1\"", "node_id = \"N 1\"\nprofil = \"lan\"")
            .replacen("[raft]\n", "[raft]\nlistne = \"x\"\n", 1)
            .replace("\nname = \"demo\"", "\nname = \"demo\"\nlease_ttl = 5");
        let env = [
            ("QUORATE_CLUSTER_KEY".to_owned(), KEY.to_owned()),
            ("QUORATE_GOSSIP__LISTEN".to_owned(), "nowhere".to_owned()),
            ("QUORATE_GOSSIP__LISTN".to_owned(), "x".to_owned()),
            ("QUORATE_CHAOS".to_owned(), "1".to_owned()),
        ];
        let errs = parse_with(&text, "node.toml", &env).unwrap_err();
        let find = |field: &str| {
            errs.0
                .iter()
                .find(|p| p.field == field)
                .unwrap_or_else(|| panic!("{field} not reported: {errs}"))
        };
        assert!(find("profil").message.contains("unknown key"), "{errs}");
        assert_eq!(
            find("profil").source.as_deref(),
            Some("node.toml:4"),
            "{errs}"
        );
        assert!(
            find("raft.listne").message.contains("unknown key"),
            "{errs}"
        );
        assert!(
            find("role[0].lease_ttl").message.contains("invalid type"),
            "{errs}"
        );
        assert_eq!(
            find("gossip.listn").source.as_deref(),
            Some("env QUORATE_GOSSIP__LISTN")
        );
        // The file parsed, so the values are validated too, in the same run.
        assert_eq!(
            find("node_id").source.as_deref(),
            Some("node.toml:3"),
            "{errs}"
        );
        assert_eq!(
            find("gossip.listen").source.as_deref(),
            Some("env QUORATE_GOSSIP__LISTEN"),
            "{errs}"
        );
        let shown = errs.to_string();
        assert!(shown.contains("node_id (node.toml:3)"), "{shown}");
    }

    #[test]
    fn syntax_errors_give_line_and_column() {
        let errs = parse("cluster_name = \"x\"\nnode_id = [1,\nx = 2\n").unwrap_err();
        assert_eq!(errs.0.len(), 1);
        assert_eq!(errs.0[0].source.as_deref(), Some("node.toml:3:3"), "{errs}");
    }

    #[test]
    fn the_key_is_refused_inline_and_taken_from_the_environment() {
        let inline = format!("cluster_key = \"{KEY}\"\n{GOOD}");
        let errs = super::parse(&inline).unwrap_err();
        let p = errs.0.iter().find(|p| p.field == "cluster_key").unwrap();
        assert!(
            p.message.contains("must not be written in the config file"),
            "{errs}"
        );
        assert_eq!(p.source.as_deref(), Some("config:1"));
        let v = parse(GOOD).unwrap();
        assert_eq!(v.key_hex.expose(), KEY);
    }

    #[test]
    fn environment_overrides_apply() {
        let env = [
            ("QUORATE_CLUSTER_KEY".to_owned(), KEY.to_owned()),
            ("QUORATE_NODE_ID".to_owned(), "n2".to_owned()),
            (
                "QUORATE_GOSSIP__SEEDS".to_owned(),
                "127.0.0.1:7103, 127.0.0.1:7104".to_owned(),
            ),
            ("QUORATE_STARTUP__STOP_BUDGET".to_owned(), "7s".to_owned()),
            ("QUORATE_GOSSIP__BOOTSTRAP".to_owned(), "true".to_owned()),
        ];
        let v = parse_with(GOOD, "node.toml", &env).unwrap();
        assert_eq!(v.node_id.to_string(), "n2");
        assert_eq!(v.raw.gossip.seeds, vec!["127.0.0.1:7103", "127.0.0.1:7104"]);
        assert_eq!(v.startup.stop_budget, Duration::from_secs(7));
        assert!(v.raw.gossip.bootstrap);
    }

    #[test]
    fn the_store_quota_is_a_checked_raft_setting_and_takes_the_environment() {
        let with = |q: &str| GOOD.replace("[raft]\n", &format!("[raft]\nstore_bytes_max = {q}\n"));
        let v = parse(&with("104857600")).unwrap();
        assert_eq!(v.raw.raft.store_bytes_max, Some(100 << 20));
        for bad in ["1000", "4294967296"] {
            let errs = parse(&with(bad)).unwrap_err();
            let p = errs
                .0
                .iter()
                .find(|p| p.field == "raft.store_bytes_max")
                .unwrap_or_else(|| panic!("{bad}: {errs}"));
            assert!(p.message.contains("hard limit"), "{errs}");
        }
        let env = [
            ("QUORATE_CLUSTER_KEY".to_owned(), KEY.to_owned()),
            (
                "QUORATE_RAFT__STORE_BYTES_MAX".to_owned(),
                "2097152".to_owned(),
            ),
        ];
        let v = parse_with(GOOD, "node.toml", &env).unwrap();
        assert_eq!(v.raw.raft.store_bytes_max, Some(2 << 20));
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
        // Never below the manager profile's own limit.
        let short = parse(&GOOD.replace(
            "on_promote = \"echo promoted\"",
            "on_promote = \"echo promoted\"\nhook_timeout = \"1s\"",
        ))
        .unwrap();
        assert_eq!(manager_hook_timeout(&short.raw.roles, lan), lan);
        for bad in ["0s", "11m"] {
            let e = parse(&GOOD.replace(
                "on_promote = \"echo promoted\"",
                &format!("on_promote = \"echo promoted\"\nhook_timeout = \"{bad}\""),
            ))
            .unwrap_err();
            assert!(
                e.0.iter().any(|p| p.field == "role[0].hook_timeout"),
                "{bad}: {e}"
            );
        }
    }

    fn token_file(dir: &Path, mode: u32, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let p = dir.join(format!("token-{mode:o}"));
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn a_telegram_section_brings_its_role_and_is_checked_as_a_whole() {
        let dir = tempfile::tempdir().unwrap();
        let good = token_file(dir.path(), 0o600, "123456:AAbb_cc-dd\n");
        let v = parse(&format!(
            "{GOOD}\n[telegram]\ntoken_file = {:?}\nadmin_chats = [42, -1001]\n",
            good.display()
        ))
        .unwrap();
        let t = v.telegram.as_ref().unwrap();
        assert_eq!(t.token.expose(), "123456:AAbb_cc-dd");
        assert_eq!(t.role.as_str(), TELEGRAM_ROLE_DEFAULT);
        assert_eq!(t.section.chat_interval, Duration::from_secs(1));
        // The ingress role was added with the profile's timing, and a budget of automatic
        // failovers that keeps the bot answering through a bad half hour.
        assert!(v.roles.iter().any(|r| r.as_str() == TELEGRAM_ROLE_DEFAULT));
        let ingress = v
            .raw
            .roles
            .iter()
            .find(|r| r.name == TELEGRAM_ROLE_DEFAULT)
            .unwrap()
            .role_config(false);
        assert_eq!(
            ingress.policy.anti_flap.max_failovers.get(),
            TELEGRAM_INGRESS_FAILOVERS_MAX
        );
        assert_eq!(
            ingress.lease,
            quorate_failover::policy::config::RoleConfig::lan().lease
        );
        assert_eq!(v.raw.roles.len(), v.roles.len());
        assert!(
            !format!("{v:?}").contains("AAbb"),
            "the token is never in Debug output"
        );

        let open = token_file(dir.path(), 0o644, "123456:AAbb");
        let junk = token_file(dir.path(), 0o400, "not a token");
        let e = parse(&format!(
            "{GOOD}\n[telegram]\ntoken_file = {:?}\nadmin_chats = []\nmode = \"push\"\napi_url = \"ftp://x\"\nbatch_max = 0\nchat_interval = \"0s\"\nwebhook_url = \"https://x\"\n",
            open.display()
        ))
        .unwrap_err();
        for field in [
            "telegram.token_file",
            "telegram.admin_chats",
            "telegram.mode",
            "telegram.api_url",
            "telegram.batch_max",
            "telegram.chat_interval",
        ] {
            assert!(e.0.iter().any(|p| p.field == field), "{field}: {e}");
        }
        assert!(e.to_string().contains("chmod 600"), "{e}");
        // Webhook mode: its three settings, each checked; none of them in poll mode.
        let good = token_file(dir.path(), 0o600, "123456:AAbb");
        let e = parse(&format!(
            "{GOOD}\n[telegram]\ntoken_file = {:?}\nadmin_chats = [1]\nmode = \"webhook\"\nwebhook_url = \"ftp://x\"\nwebhook_listen = \"nowhere\"\n",
            good.display()
        ))
        .unwrap_err();
        for field in [
            "telegram.webhook_url",
            "telegram.webhook_listen",
            "telegram.webhook_secret_file",
        ] {
            assert!(e.0.iter().any(|p| p.field == field), "{field}: {e}");
        }
        use std::os::unix::fs::PermissionsExt as _;
        let bad_secret = dir.path().join("bad.secret");
        std::fs::write(&bad_secret, "has spaces in it").unwrap();
        std::fs::set_permissions(&bad_secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = parse(&format!(
            "{GOOD}\n[telegram]\ntoken_file = {:?}\nadmin_chats = [1]\nmode = \"webhook\"\nwebhook_url = \"https://bot.example.com/tg\"\nwebhook_listen = \"127.0.0.1:8443\"\nwebhook_secret_file = {:?}\n",
            good.display(),
            bad_secret.display()
        ))
        .unwrap_err();
        assert!(
            e.0.iter()
                .any(|p| p.field == "telegram.webhook_secret_file"),
            "{e}"
        );
        std::fs::write(&bad_secret, "Good_secret-1").unwrap();
        let v = parse(&format!(
            "{GOOD}\n[telegram]\ntoken_file = {:?}\nadmin_chats = [1]\nmode = \"webhook\"\nwebhook_url = \"https://bot.example.com/tg\"\nwebhook_listen = \"127.0.0.1:8443\"\nwebhook_secret_file = {:?}\n",
            good.display(),
            bad_secret.display()
        ))
        .unwrap();
        let t = v.telegram.unwrap();
        assert_eq!(t.webhook_secret.unwrap().expose(), "Good_secret-1");
        let e = parse(&format!(
            "{GOOD}\n[telegram]\ntoken_file = {:?}\nadmin_chats = [1]\nwebhook_listen = \"127.0.0.1:8443\"\n",
            good.display()
        ))
        .unwrap_err();
        assert!(
            e.0.iter().any(|p| p.field == "telegram.webhook_listen"),
            "{e}"
        );
        let e = parse(&format!(
            "{GOOD}\n[telegram]\ntoken_file = {:?}\nadmin_chats = [1]\n",
            junk.display()
        ))
        .unwrap_err();
        assert!(e.to_string().contains("does not hold a bot token"), "{e}");
        // The ingress role without the section: nobody would poll while holding it.
        let e = parse(&format!("{GOOD}\n[[role]]\nname = \"telegram-ingress\"\n")).unwrap_err();
        assert!(e.to_string().contains("add a [telegram] section"), "{e}");
    }

    fn with_api(api: &str) -> String {
        format!("{GOOD}\n[api]\n{api}\n")
    }

    #[test]
    fn api_needs_a_token_unless_off_on_loopback() {
        let dir = tempfile::tempdir().unwrap();
        // No [api]: no API.
        assert!(parse(GOOD).unwrap().api.is_none());
        // Defaults: loopback 8008, a token required.
        let errs = parse(&with_api("")).unwrap_err();
        assert!(
            errs.0
                .iter()
                .any(|p| p.field == "api.token_file" && p.message.contains("keygen")),
            "{errs}"
        );
        // A token file (0600) makes it valid; the token is read.
        let tok = key_file(dir.path(), "api.token", 0o600);
        let v = parse(&with_api(&format!(
            "token_file = {:?}",
            tok.display().to_string()
        )))
        .unwrap();
        let api = v.api.unwrap();
        assert_eq!(api.section.listen, "127.0.0.1:8008");
        assert_eq!(api.token.unwrap().expose().len(), 64);
        assert!(api.read_token.is_none());
        // auth = false is accepted on loopback only.
        let v = parse(&with_api("auth = false")).unwrap();
        assert!(v.api.unwrap().token.is_none());
        for listen in ["0.0.0.0:8008", "10.1.2.3:8008"] {
            let errs = parse(&with_api(&format!("auth = false\nlisten = {listen:?}"))).unwrap_err();
            assert!(
                errs.0
                    .iter()
                    .any(|p| p.field == "api.auth" && p.message.contains("loopback")),
                "{listen}: {errs}"
            );
        }
        assert!(parse(&with_api("auth = false\nlisten = \"[::1]:8008\"")).is_ok());
        assert!(parse(&with_api("auth = false\nlisten = \"localhost:8008\"")).is_ok());
    }

    #[test]
    fn api_tokens_are_checked_like_keys() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let open = key_file(dir.path(), "open.token", 0o644);
        let short = dir.path().join("short.token");
        std::fs::write(&short, "abc\n").unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        let good = key_file(dir.path(), "good.token", 0o600);
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        let cases = [
            (
                format!("token_file = {}", q(&open)),
                "api.token_file",
                "chmod 600",
            ),
            (
                format!("token_file = {}", q(&short)),
                "api.token_file",
                "at least 16",
            ),
            (
                format!("token_file = {}\nread_token_file = {}", q(&good), q(&good)),
                "api.read_token_file",
                "must differ",
            ),
            (
                format!("token_file = {}\nbody_bytes_max = 10", q(&good)),
                "api.body_bytes_max",
                "1024",
            ),
            (
                format!("token_file = {}\nsse_clients_max = 0", q(&good)),
                "api.sse_clients_max",
                "1 to",
            ),
            (
                format!("token_file = {}\nlisten = \"nowhere\"", q(&good)),
                "api.listen",
                "host:port",
            ),
            (
                format!("token_file = {}\ntls = true", q(&good)),
                "api.tls",
                "unknown",
            ),
        ];
        for (text, field, needle) in cases {
            let errs = parse(&with_api(&text)).unwrap_err();
            assert!(
                errs.0
                    .iter()
                    .any(|p| p.field == field && p.message.contains(needle)),
                "{text}: wanted {field} with {needle:?}, got {errs}"
            );
        }
    }
}
