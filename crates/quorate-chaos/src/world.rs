//! Real `quorate agent` processes on a private network, and the faults the chaos acceptance
//! test (`tests/chaos.rs`, `cargo xtask chaos`) and the failover benchmark
//! (`benches/failover.rs`, `cargo xtask bench failover`) inject.
//!
//! - [`World`]: a private network world. One holder process runs in a fresh network and mount
//!   namespace (`unshare --net --mount --propagation private`) with a tmpfs on `/run/netns`;
//!   inside it, a bridge and one named network namespace per node (`q1`, `q2`, ...) joined by a
//!   veth pair, node `i` at `10.77.0.i`. Every command enters it with `nsenter`, so nothing
//!   touches the host's network, and it all vanishes when the holder and the agents exit.
//!   A partition is an nftables table in the node's namespace that drops, at the input hook,
//!   every packet from the peers' addresses (as Jepsen does; dropping at the sender's output
//!   would make `sendto` fail at once, which a real partition does not).
//! - [`Cluster`]: the agents. Each runs in its own process group (agent, hooks and the role's
//!   application), so a crash (SIGKILL) and a pause (SIGSTOP) hit the whole node. A slow node
//!   runs with `LD_PRELOAD=libfaketime.so.1 FAKETIME="+0 x0.5"`: all its clocks, tokio timers
//!   included, run at half speed.
//! - The role's hooks (`role.sh`) write the hook log that [`crate::hooklog`] checks: `promote`,
//!   an `act` line every 50 ms from a small application loop while primary, and `demote` once
//!   the application has stopped. Every stamp comes from `date +%s%N` run with libfaketime
//!   removed from its environment, so all nodes' lines share the machine's wall clock even when a
//!   node's own clock is slowed.
//!
//! Every wait polls a file (hook log, `status.json`, agent stdout) until a deadline; nothing
//! sleeps for synchronisation and nothing asserts a timing.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use quorate::config::{
    AgentConfig, CheckSection, GossipSection, RaftSection, RoleSection, TelegramSection,
};
use quorate::demo::to_toml;
use quorate::report::{NodeEvent, RoleChangeEvent, StatusFile};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::hooklog::{self, Entry, Fault, FaultKind, Kind};

/// The role every chaos node can hold.
pub const ROLE: &str = "chaos-primary";
/// libfaketime, from the Debian package `faketime`.
pub const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
/// The clock of a slow node: runs at half speed, starting 1.9 s ahead of the real time.
///
/// libfaketime slows the wall clock too, and the wire's replay protection refuses frames
/// stamped more than `clock_skew_max` (2 s) in the future: a node whose wall clock runs at 0.5x
/// is cut off from every peer once it lags by 2 s. Starting 1.9 s ahead doubles the time it
/// can talk (ahead by < 2 s, then behind by < 2 s): about 7.8 s after its start.
pub const SLOW_CLOCK: &str = "+1.9 x0.5";
/// The nftables table a partition installs.
const NFT_TABLE: &str = "quorate_chaos";

/// Wall-clock nanoseconds since the Unix epoch: the clock the hook log is stamped with.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

fn effective_uid() -> Option<u32> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Checks that this process can build a [`World`]: root, and the tools. The error lists every
/// missing piece and how to get it.
pub fn preflight() -> Result<()> {
    let mut missing = Vec::new();
    if effective_uid() != Some(0) {
        missing.push(
            "root: network namespaces and nftables need uid 0 (CI runs as root; locally use sudo)"
                .to_owned(),
        );
    }
    for (tool, pkg) in [
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
        ("mount", "mount"),
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("date", "coreutils"),
    ] {
        if !on_path(tool) {
            missing.push(format!("`{tool}` (Debian package {pkg})"));
        }
    }
    if !Path::new(FAKETIME_LIB).is_file() {
        missing.push(format!("{FAKETIME_LIB} (Debian package faketime)"));
    }
    if !missing.is_empty() {
        bail!(
            "the chaos harness cannot run here; missing:\n  - {}",
            missing.join("\n  - ")
        );
    }
    Ok(())
}

/// Whether a chaos test runs, is skipped with a notice, or fails because it cannot run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Run it.
    Run,
    /// Skip it, printing why (a developer's machine without `QUORATE_CHAOS=1`).
    NotRun(String),
    /// Fail it: it was asked for (`QUORATE_CHAOS=1`) or CI is running it (`CI=true`), and it
    /// cannot run here. The message says what is missing.
    Fail(String),
}

/// Decides [`Gate`] from `QUORATE_CHAOS` and `CI` (pass the variables' values) and, when asked
/// to run, [`preflight`].
pub fn gate(quorate_chaos: Option<&str>, ci: Option<&str>) -> Gate {
    let wanted = quorate_chaos == Some("1");
    let in_ci = ci.is_some_and(|v| !v.is_empty() && v != "false" && v != "0");
    match (wanted, in_ci) {
        (true, _) => match preflight() {
            Ok(()) => Gate::Run,
            Err(e) => Gate::Fail(format!("QUORATE_CHAOS=1 but {e:#}")),
        },
        (false, true) => Gate::Fail(
            "CI is set but QUORATE_CHAOS is not 1: CI must run the real-process chaos tests \
             (as root, with QUORATE_CHAOS=1, as .ci/run does)"
                .to_owned(),
        ),
        (false, false) => Gate::NotRun(
            "The real-process chaos tests need root and QUORATE_CHAOS=1 (CI sets it: \
             `QUORATE_CHAOS=1 cargo test -p quorate --test chaos`, or `cargo xtask chaos`)."
                .to_owned(),
        ),
    }
}

/// `nsenter` flags after `-t PID`: the holder's network and mount namespaces, and its root
/// directory (see [`World::command`]).
const NSENTER_ARGS: [&str; 4] = ["-n", "-m", "-r", "--"];

/// A private network: a bridge and one network namespace per node, inside a holder process's
/// own network and mount namespaces.
pub struct World {
    holder: Child,
    /// Keeps the holder alive: it exits when this pipe closes (also if the harness dies).
    _holder_stdin: ChildStdin,
    holder_pid: u32,
    size: usize,
    dir: PathBuf,
}

impl World {
    /// Builds a world of `size` nodes; `dir` holds the partition rule files.
    pub async fn create(size: usize, dir: &Path) -> Result<World> {
        preflight()?;
        if !(1..=200).contains(&size) {
            bail!("a world has 1 to 200 nodes, not {size}");
        }
        let mut holder = Command::new("unshare")
            .args(["--net", "--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(
                "mkdir -p /run/netns && mount -t tmpfs quorate-chaos /run/netns && ip link set lo up \
                 && echo ready && exec cat >/dev/null",
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting `unshare --net --mount` (util-linux)")?;
        let holder_pid = holder.id().context("holder pid")?;
        let stdin = holder.stdin.take().context("holder stdin")?;
        let stdout = holder.stdout.take().context("holder stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
        if !matches!(&ready, Ok(Ok(Some(l))) if l == "ready") {
            let _ = holder.start_kill();
            let mut err = String::new();
            if let Some(mut e) = holder.stderr.take() {
                use tokio::io::AsyncReadExt as _;
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), e.read_to_string(&mut err)).await;
            }
            bail!(
                "the namespace holder did not start (needs root and unshare): {}",
                err.trim()
            );
        }
        let world = World {
            holder,
            _holder_stdin: stdin,
            holder_pid,
            size,
            dir: dir.to_path_buf(),
        };
        // The bridge has an address of its own (`World::BRIDGE_ADDR`): a service every node
        // reaches (a fake Telegram Bot API) listens there; a partition drops only the peers'
        // addresses, so it stays reachable, as an outside service would.
        let mut script = format!(
            "set -e\nip link add qbr0 type bridge\nip link set qbr0 up\nip addr add {}/24 dev qbr0\n",
            Self::BRIDGE_ADDR
        );
        for i in 1..=size {
            script.push_str(&format!(
                "ip netns add q{i}\n\
                 ip link add qv{i} type veth peer name eth0 netns q{i}\n\
                 ip link set qv{i} master qbr0 up\n\
                 ip -n q{i} addr add 10.77.0.{i}/24 dev eth0\n\
                 ip -n q{i} link set eth0 up\n\
                 ip -n q{i} link set lo up\n"
            ));
        }
        world
            .run(&["sh", "-c", &script])
            .await
            .context("building the bridge and namespaces")?;
        Ok(world)
    }

    /// The bridge's own address, outside every node's namespace.
    pub const BRIDGE_ADDR: &'static str = "10.77.0.254";

    /// A TCP listener on the bridge's address (`port` 0: any free port), in the world's network
    /// namespace: the calling process stays in its own; only this socket lives there (a
    /// short-lived thread enters the namespace with `setns`, binds, and ends).
    pub fn bind_on_bridge(&self, port: u16) -> Result<std::net::TcpListener> {
        let ns = self.netns_path();
        std::thread::spawn(move || -> Result<std::net::TcpListener> {
            let f =
                std::fs::File::open(&ns).with_context(|| format!("opening {}", ns.display()))?;
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&f),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .with_context(|| format!("setns({})", ns.display()))?;
            let l = std::net::TcpListener::bind((Self::BRIDGE_ADDR, port))
                .with_context(|| format!("binding {}:{port} in the world", Self::BRIDGE_ADDR))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
    }

    /// A connector whose TCP connections start from the bridge (in the world's network
    /// namespace, like a client outside every node): one thread enters the namespace and opens
    /// the connections the harness asks for.
    pub fn bridge_connector(&self) -> Result<BridgeConnector> {
        let ns = self.netns_path();
        let (tx, rx) = std::sync::mpsc::channel::<ConnectRequest>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        std::thread::Builder::new()
            .name("bridge-connector".into())
            .spawn(move || {
                let entered = std::fs::File::open(&ns)
                    .with_context(|| format!("opening {}", ns.display()))
                    .and_then(|f| {
                        rustix::thread::move_into_link_name_space(
                            std::os::fd::AsFd::as_fd(&f),
                            Some(rustix::thread::LinkNameSpaceType::Network),
                        )
                        .with_context(|| format!("setns({})", ns.display()))
                    });
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if !ok {
                    return;
                }
                while let Ok((addr, timeout, reply)) = rx.recv() {
                    let r = std::net::TcpStream::connect_timeout(&addr, timeout)
                        .and_then(|s| s.set_nonblocking(true).map(|()| s));
                    let _ = reply.send(r);
                }
            })?;
        ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("the connector thread ended"))??;
        Ok(BridgeConnector { tx })
    }

    /// The world's own network namespace (the bridge's), as a file a thread can `setns` into
    /// to reach every node from outside the nodes' namespaces.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.holder_pid))
    }

    /// Node `i`'s address (0-based index).
    pub fn addr(i: usize) -> String {
        format!("10.77.0.{}", i + 1)
    }

    /// Node `i`'s namespace name.
    pub fn ns(i: usize) -> String {
        format!("q{}", i + 1)
    }

    /// A command that runs `program` in the world (the bridge's namespace).
    ///
    /// `-r` keeps the holder's root directory: entering a mount namespace otherwise moves the
    /// process to that namespace's root mount, which inside a chroot (a fresh-root CI run) is
    /// the host's `/`, so `ip netns` would use the host's `/run/netns` (shared by every world:
    /// "File exists") and the agent's path would not resolve (exit 127).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.holder_pid.to_string())
            .args(NSENTER_ARGS)
            .arg(program);
        c
    }

    /// Every process in node `i`'s network namespace (`ip netns pids`).
    pub async fn node_pids(&self, i: usize) -> Result<Vec<String>> {
        let out = self
            .command("ip")
            .args(["netns", "pids", &Self::ns(i)])
            .stdin(Stdio::null())
            .output()
            .await?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect())
    }

    /// Every process in node `i`'s network namespace, synchronously (for `Drop`).
    fn node_pids_sync(&self, i: usize) -> Vec<String> {
        std::process::Command::new("nsenter")
            .arg("-t")
            .arg(self.holder_pid.to_string())
            .args(NSENTER_ARGS)
            .args(["ip", "netns", "pids", &Self::ns(i)])
            .stdin(Stdio::null())
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A command that runs `program` in node `i`'s namespace. No process in the chain forks, so
    /// the child's pid is `program`'s.
    pub fn node_command(&self, i: usize, program: &str) -> Command {
        let mut c = self.command("ip");
        c.args(["netns", "exec", &Self::ns(i), program]);
        c
    }

    async fn run(&self, argv: &[&str]) -> Result<()> {
        let mut c = self.command(argv[0]);
        c.args(&argv[1..]).stdin(Stdio::null()).kill_on_drop(true);
        Self::output(c, argv.join(" ")).await
    }

    async fn output(mut c: Command, what: String) -> Result<()> {
        let out = tokio::time::timeout(Duration::from_secs(30), c.output())
            .await
            .with_context(|| format!("{what}: timed out after 30 s"))?
            .with_context(|| format!("{what}: cannot start"))?;
        if !out.status.success() {
            bail!(
                "{what}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Partitions node `i` from every peer (`on`) or heals it: an nftables input-hook drop of
    /// the peers' source addresses in node `i`'s namespace. Dropping inbound only still breaks
    /// TCP both ways (the SYN-ACK is lost).
    pub async fn partition(&self, i: usize, on: bool) -> Result<()> {
        if on {
            let peers: Vec<String> = (0..self.size).filter(|j| *j != i).map(Self::addr).collect();
            let rules = format!(
                "table inet {NFT_TABLE} {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    ip saddr {{ {} }} drop\n  }}\n}}\n",
                peers.join(", ")
            );
            let file = self.dir.join(format!("partition-{}.nft", Self::ns(i)));
            std::fs::write(&file, rules).context("writing the nftables rules")?;
            let mut c = self.node_command(i, "nft");
            c.arg("-f")
                .arg(&file)
                .stdin(Stdio::null())
                .kill_on_drop(true);
            Self::output(c, format!("nft -f {} in {}", file.display(), Self::ns(i))).await
        } else {
            let mut c = self.node_command(i, "nft");
            c.args(["delete", "table", "inet", NFT_TABLE])
                .stdin(Stdio::null())
                .kill_on_drop(true);
            Self::output(c, format!("nft delete table in {}", Self::ns(i))).await
        }
    }
}

impl World {
    /// Cuts node `i` off symmetrically (`on`) or heals it: node `i` drops every peer's packets
    /// at its input hook and every peer drops node `i`'s, so neither side hears the other (the
    /// one-way [`World::partition`] still lets node `i`'s UDP gossip out).
    pub async fn partition_symmetric(&self, i: usize, on: bool) -> Result<()> {
        for k in 0..self.size {
            if on {
                let blocked: Vec<String> = if k == i {
                    (0..self.size).filter(|j| *j != i).map(Self::addr).collect()
                } else {
                    vec![Self::addr(i)]
                };
                let rules = format!(
                    "table inet {NFT_TABLE} {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    ip saddr {{ {} }} drop\n  }}\n}}\n",
                    blocked.join(", ")
                );
                let file =
                    self.dir
                        .join(format!("sym-partition-{}-{}.nft", Self::ns(i), Self::ns(k)));
                std::fs::write(&file, rules).context("writing the nftables rules")?;
                let mut c = self.node_command(k, "nft");
                c.arg("-f")
                    .arg(&file)
                    .stdin(Stdio::null())
                    .kill_on_drop(true);
                Self::output(c, format!("nft -f {} in {}", file.display(), Self::ns(k))).await?;
            } else {
                let mut c = self.node_command(k, "nft");
                c.args(["delete", "table", "inet", NFT_TABLE])
                    .stdin(Stdio::null())
                    .kill_on_drop(true);
                Self::output(c, format!("nft delete table in {}", Self::ns(k))).await?;
            }
        }
        Ok(())
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.holder.start_kill();
    }
}

type ConnectRequest = (
    std::net::SocketAddr,
    Duration,
    tokio::sync::oneshot::Sender<std::io::Result<std::net::TcpStream>>,
);

/// Opens TCP connections from the world's bridge ([`World::bridge_connector`]).
#[derive(Clone)]
pub struct BridgeConnector {
    tx: std::sync::mpsc::Sender<ConnectRequest>,
}

impl BridgeConnector {
    /// A connection to `addr`, from the bridge, within `timeout`.
    pub async fn connect(
        &self,
        addr: std::net::SocketAddr,
        timeout: Duration,
    ) -> std::io::Result<tokio::net::TcpStream> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send((addr, timeout, reply))
            .map_err(|_| std::io::Error::other("the connector thread ended"))?;
        let s = rx
            .await
            .map_err(|_| std::io::Error::other("the connector thread ended"))??;
        tokio::net::TcpStream::from_std(s)
    }
}

/// What a chaos cluster runs.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// The `quorate` executable.
    pub agent_exe: PathBuf,
    /// Number of agents (3 for the acceptance test and the benchmark).
    pub size: usize,
    /// Give every node a flapping non-critical check (fails for `2 + i` s, passes for `2 + i` s).
    pub flapping: bool,
    /// Every node gets failover priority 100, as in most deployments, so the policy's own
    /// tiebreaks (not the Raft leader, then id) pick the primary. Otherwise node `i` gets
    /// `100 - i`, which makes the acceptance steps' choice of primary predictable.
    pub equal_priority: bool,
    /// Print progress lines.
    pub verbose: bool,
    /// How often the role's application acts while primary, in milliseconds (the hook log's
    /// resolution for measuring unavailability).
    pub act_interval_ms: u32,
    /// A `[telegram]` section for every agent (the bot's ingress as a role), or none.
    pub telegram: Option<TelegramSpec>,
    /// Every node also runs the HTTP API on port [`API_PORT`] (a token in `api.token`) and a
    /// tiny HTTP application on port [`APP_PORT`] that answers `<node> <token>` with 200 while
    /// the role's hooks say it is primary (the run file holds the token), 503 otherwise: the
    /// service a load balancer puts in front of the nodes.
    pub http_app: bool,
}

/// The HTTP API's port on every node (with [`ClusterSpec::http_app`]).
pub const API_PORT: u16 = 8008;
/// The tiny application's port on every node (with [`ClusterSpec::http_app`]).
pub const APP_PORT: u16 = 5000;

/// The tiny application: Python's standard HTTP server (Debian's python3), reading the run
/// file the role hooks write (`promote` puts the fencing token there, `demote` removes it).
const APP_PY: &str = r#"import http.server, sys
node, run, addr, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_GET(self):
        try:
            token = open(run).read().strip()
        except OSError:
            token = ""
        body = (f"{node} {token}" if token else f"{node} not primary").encode()
        self.send_response(200 if token else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((addr, port), H).serve_forever()
"#;

/// The Telegram bot every agent of a [`Cluster`] runs (see `crate::telegram`).
#[derive(Clone, Debug)]
pub struct TelegramSpec {
    /// The Bot API's base URL (a fake on [`World::BRIDGE_ADDR`]).
    pub api_url: String,
    /// The admin chats.
    pub admin_chats: Vec<i64>,
}

struct Node {
    name: String,
    child: Option<Child>,
    /// The tiny HTTP application (with [`ClusterSpec::http_app`]).
    app: Option<Child>,
    pid: Option<u32>,
    started_ns: u64,
    slow: bool,
}

/// A node's last `status.json`, the fields the harness reads.
#[derive(Clone, Debug, Default)]
pub struct NodeStatus {
    /// The agent's pid.
    pub pid: u64,
    /// The Raft leader it sees.
    pub raft_leader: Option<String>,
    /// It is the Raft leader.
    pub raft_is_leader: bool,
    /// The role's primary it sees.
    pub primary: Option<String>,
    /// It acts as the role's primary.
    pub acting: bool,
    /// Members it sees as `Alive`.
    pub alive: usize,
    /// Its own health.
    pub health: String,
    /// The nodes its policy could promote now, best first.
    pub candidates: Vec<String>,
}

/// Agents in a [`World`], their hook log and the faults injected so far.
pub struct Cluster {
    spec: ClusterSpec,
    /// Removed on drop unless [`Cluster::keep`] took it.
    tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
    nodes: Vec<Node>,
    /// Every fault injected, for [`hooklog::check`].
    pub faults: Vec<Fault>,
    world: World,
}

impl Cluster {
    /// Builds the world and starts every agent (one after another, each once its failover
    /// manager is up, so they do not campaign in the same millisecond).
    pub async fn start(spec: ClusterSpec) -> Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("quorate-chaos-")
            .tempdir()?;
        let world = World::create(spec.size, dir.path()).await?;
        quorate::config::write_new_key_file(&dir.path().join("cluster.key"))
            .map_err(anyhow::Error::msg)?;
        std::fs::write(
            dir.path().join("role.sh"),
            role_script(dir.path(), spec.act_interval_ms),
        )?;
        std::fs::write(dir.path().join("actions.log"), "")?;
        if spec.http_app {
            quorate::config::write_new_key_file(&dir.path().join("api.token"))
                .map_err(anyhow::Error::msg)?;
            std::fs::write(dir.path().join("app.py"), APP_PY)?;
        }
        if spec.telegram.is_some() {
            use std::os::unix::fs::PermissionsExt as _;
            let token = dir.path().join("bot.token");
            std::fs::write(&token, "123456:CHAOS_token-abcdefghijklmnopqrstuvwxyz")?;
            std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600))?;
        }
        let nodes = (0..spec.size)
            .map(|i| Node {
                name: format!("n{}", i + 1),
                child: None,
                app: None,
                pid: None,
                started_ns: 0,
                slow: false,
            })
            .collect();
        let mut c = Cluster {
            spec,
            dir: dir.path().to_path_buf(),
            tmp: Some(dir),
            nodes,
            faults: Vec::new(),
            world,
        };
        // One after another, each once its process is up and its storage open (so they do not
        // campaign in the same millisecond); a node's failover manager starts only once Raft
        // has a quorum, so wait for every one after all are started.
        let mut seen = Vec::new();
        for i in 0..c.spec.size {
            let out = c.dir.join(format!("{}.out", c.nodes[i].name));
            seen.push(count_started(&out));
            c.spawn_until(i, false, c.priority(i), Until::StorageOpen)
                .await?;
        }
        for (i, before) in seen.into_iter().enumerate() {
            c.wait_event(i, Until::FailoverStarted, before).await?;
        }
        Ok(c)
    }

    /// The file whose presence fails node `i`'s critical `operator` check.
    fn sick_flag(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.sick", self.nodes[i].name))
    }

    /// Makes node `i` critical (its `operator` check fails) or healthy again.
    pub fn set_sick(&self, i: usize, sick: bool) -> Result<()> {
        let flag = self.sick_flag(i);
        if sick {
            std::fs::write(&flag, "")?;
        } else if flag.exists() {
            std::fs::remove_file(&flag)?;
        }
        Ok(())
    }

    /// Node `i`'s usual failover priority (see [`ClusterSpec::equal_priority`]).
    pub fn priority(&self, i: usize) -> u32 {
        if self.spec.equal_priority {
            100
        } else {
            100 - i as u32
        }
    }

    /// The network world the agents run in.
    pub fn world(&self) -> &World {
        &self.world
    }

    /// The run's directory (configs, data, hook log, agent output).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps the directory after the cluster is dropped; returns its path.
    pub fn keep(mut self) -> PathBuf {
        self.tmp
            .take()
            .map_or_else(|| self.dir.clone(), tempfile::TempDir::keep)
    }

    /// Node `i`'s name.
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The index of the node called `name`.
    pub fn index(&self, name: &str) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .with_context(|| format!("{name} is not a node of this cluster"))
    }

    pub(crate) fn say(&self, msg: &str) {
        if self.spec.verbose {
            println!("[chaos {:>8.3}] {msg}", now_ns() as f64 / 1e9 % 1000.0);
        }
    }

    fn config(&self, i: usize, priority: u32) -> Result<String> {
        let dir = self.dir.as_path();
        let name = &self.nodes[i].name;
        let check = |id: &str, target: String, interval_ms: u64, critical: bool| CheckSection {
            id: id.to_owned(),
            kind: "command".to_owned(),
            target,
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(500),
            critical,
        };
        let mut checks = vec![
            check("alive", "true".to_owned(), 1000, true),
            check(
                "operator",
                format!("test ! -e {} || exit 2", self.sick_flag(i).display()),
                500,
                true,
            ),
        ];
        if self.spec.flapping {
            let period = 2 + i;
            checks.push(check(
                "flapping",
                format!("test $(( $(date +%s) / {period} % 2 )) -eq 0"),
                1000,
                false,
            ));
        }
        let script = dir.join("role.sh");
        let config = AgentConfig {
            cluster_name: "quorate-chaos".to_owned(),
            cluster_key: None,
            accepted_key_files: Vec::new(),
            client_key_files: Vec::new(),
            cluster_key_file: Some(dir.join("cluster.key")),
            node_id: name.clone(),
            data_dir: dir.join(name),
            profile: "lan".to_owned(),
            raft: RaftSection {
                listen: format!("{}:7201", World::addr(i)),
                advertise: None,
                store_bytes_max: None,
                voters: (0..self.spec.size)
                    .map(|j| (format!("n{}", j + 1), format!("{}:7201", World::addr(j))))
                    .collect(),
            },
            gossip: GossipSection {
                listen: format!("{}:7101", World::addr(i)),
                advertise: None,
                seeds: (0..self.spec.size)
                    .filter(|j| *j != i)
                    .map(|j| format!("{}:7101", World::addr(j)))
                    .collect(),
                bootstrap: i == 0,
                tags: [("failover-priority".to_owned(), priority.to_string())]
                    .into_iter()
                    .collect(),
            },
            checks,
            roles: vec![RoleSection {
                on_promote: Some(format!("sh {} promote", script.display())),
                on_demote: Some(format!("sh {} demote", script.display())),
                anti_flap_max_failovers: Some(100_000),
                ..RoleSection::named(ROLE)
            }],
            startup: Default::default(),
            telegram: self.spec.telegram.as_ref().map(|t| {
                let mut s = TelegramSection::new(dir.join("bot.token"), t.admin_chats.clone());
                s.api_url = Some(t.api_url.clone());
                // Fast sends: the fake Bot API has no flood control to honour.
                s.chat_interval = Duration::from_millis(1);
                s.global_per_second = 1000;
                s.request_timeout = Duration::from_secs(1);
                s.short_poll_interval = Duration::from_millis(50);
                s
            }),
            redis: None,
            replication: None,
            api: self.spec.http_app.then(|| quorate::config::ApiSection {
                listen: format!("{}:{API_PORT}", World::addr(i)),
                token_file: Some(dir.join("api.token")),
                ..quorate::config::ApiSection::default()
            }),
        };
        to_toml(&config)
    }

    /// Starts node `i` (again), on a slowed clock when `slow`, with this failover priority;
    /// returns once its failover manager is up.
    pub async fn spawn(&mut self, i: usize, slow: bool, priority: u32) -> Result<()> {
        self.spawn_until(i, slow, priority, Until::FailoverStarted)
            .await
    }

    async fn spawn_until(
        &mut self,
        i: usize,
        slow: bool,
        priority: u32,
        until: Until,
    ) -> Result<()> {
        let dir = self.dir.as_path().to_path_buf();
        let name = self.nodes[i].name.clone();
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, self.config(i, priority)?)?;
        // A crashed node's application died with it; drop its stale marker files.
        let _ = std::fs::remove_file(dir.join(format!("{name}.run")));
        let _ = std::fs::remove_file(dir.join(format!("{name}.done")));
        if self.spec.http_app {
            self.start_app(i)?;
        }
        let out_path = dir.join(format!("{name}.out"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out_path)?;
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{name}.err")))?;
        let seen_before = until.count(&out_path);
        let mut c = self.world.node_command(i, "env");
        if slow {
            c.arg(format!("LD_PRELOAD={FAKETIME_LIB}"))
                .arg(format!("FAKETIME={SLOW_CLOCK}"));
        }
        c.arg(&self.spec.agent_exe)
            .arg("agent")
            .arg("--config")
            .arg(&config)
            .env(
                "RUST_LOG",
                std::env::var("QUORATE_CHAOS_LOG").unwrap_or_else(|_| "warn,openraft=off".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true);
        let child = c
            .spawn()
            .with_context(|| format!("starting agent {name}"))?;
        let n = &mut self.nodes[i];
        n.pid = child.id();
        n.child = Some(child);
        n.started_ns = now_ns();
        n.slow = slow;
        if slow {
            self.faults.push(Fault {
                node: name.clone(),
                kind: FaultKind::SlowClock,
                from_ns: now_ns(),
                to_ns: None,
            });
        }
        self.say(&format!(
            "started {name} (pid {:?}{}, priority {priority})",
            self.nodes[i].pid,
            if slow { ", clock x0.5" } else { "" }
        ));
        self.wait_event(i, until, seen_before).await
    }

    /// Waits until node `i`'s output shows one more `until` event than `before`.
    async fn wait_event(&mut self, i: usize, until: Until, before: usize) -> Result<()> {
        let dir = self.dir.as_path().to_path_buf();
        let name = self.nodes[i].name.clone();
        let out_path = dir.join(format!("{name}.out"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if until.count(&out_path) > before {
                return Ok(());
            }
            if let Some(c) = self.nodes[i].child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!(
                    "agent {name} exited with {status} while starting; see {}",
                    dir.join(format!("{name}.err")).display()
                );
            }
            if tokio::time::Instant::now() > deadline {
                bail!("agent {name}: {} not seen within 60 s", until.what());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts node `i`'s tiny HTTP application unless it runs (a node's crash kills it).
    fn start_app(&mut self, i: usize) -> Result<()> {
        if let Some(a) = self.nodes[i].app.as_mut()
            && matches!(a.try_wait(), Ok(None))
        {
            return Ok(());
        }
        let dir = self.dir.as_path().to_path_buf();
        let name = self.nodes[i].name.clone();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{name}.app.err")))?;
        let mut c = self.world.node_command(i, "python3");
        c.arg(dir.join("app.py"))
            .arg(&name)
            .arg(dir.join(format!("{name}.run")))
            .arg(World::addr(i))
            .arg(APP_PORT.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        let child = c
            .spawn()
            .with_context(|| format!("starting the application of {name} (python3)"))?;
        self.nodes[i].app = Some(child);
        Ok(())
    }

    /// Is node `i` running?
    pub fn running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// Node `i` runs on a slowed clock.
    pub fn slow(&self, i: usize) -> bool {
        self.nodes[i].slow
    }

    /// Sends `sig` to node `i`: its agent's process group, then every process in its network
    /// namespace. A node is the whole machine: the process runner gives each hook a process
    /// group of its own, so an application a hook started lives outside the agent's group, and
    /// a crash (SIGKILL) or pause (SIGSTOP) of the node must reach it too.
    async fn signal_group(&self, i: usize, sig: &str) -> Result<()> {
        let pid = self.nodes[i].pid.context("node has no pid")?;
        let st = Command::new("kill")
            .args(["-s", sig, "--", &format!("-{pid}")])
            .status()
            .await?;
        if !st.success() {
            bail!("kill -s {sig} -{pid} failed: {st}");
        }
        let pids = self.world.node_pids(i).await?;
        if !pids.is_empty() {
            // A process may exit between the listing and the signal: not an error.
            let _ = Command::new("kill")
                .args(["-s", sig, "--"])
                .args(&pids)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
        }
        Ok(())
    }

    fn end_slow(&mut self, i: usize) {
        let name = self.nodes[i].name.clone();
        let now = now_ns();
        for f in &mut self.faults {
            if f.node == name && f.kind == FaultKind::SlowClock && f.to_ns.is_none() {
                f.to_ns = Some(now);
            }
        }
        self.nodes[i].slow = false;
    }

    /// SIGKILL of node `i`'s process group (agent, hooks, application); returns the stamp.
    pub async fn kill(&mut self, i: usize) -> Result<u64> {
        let at = now_ns();
        self.signal_group(i, "KILL").await?;
        self.faults.push(Fault {
            node: self.nodes[i].name.clone(),
            kind: FaultKind::Kill,
            from_ns: at,
            to_ns: Some(now_ns()),
        });
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
        }
        // The node's application died with it (every process in its namespace).
        if let Some(mut a) = self.nodes[i].app.take() {
            let _ = a.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), a.wait()).await;
        }
        self.end_slow(i);
        self.say(&format!("SIGKILL {}", self.nodes[i].name));
        Ok(at)
    }

    /// SIGSTOP of node `i`'s process group; returns the stamp. [`Cluster::resume`] ends it.
    pub async fn pause(&mut self, i: usize) -> Result<u64> {
        let at = now_ns();
        self.signal_group(i, "STOP").await?;
        self.faults.push(Fault {
            node: self.nodes[i].name.clone(),
            kind: FaultKind::Pause,
            from_ns: at,
            to_ns: None,
        });
        self.say(&format!("SIGSTOP {}", self.nodes[i].name));
        Ok(at)
    }

    /// SIGCONT of node `i`'s process group.
    pub async fn resume(&mut self, i: usize) -> Result<()> {
        self.signal_group(i, "CONT").await?;
        self.close_fault(i, FaultKind::Pause);
        self.say(&format!("SIGCONT {}", self.nodes[i].name));
        Ok(())
    }

    fn close_fault(&mut self, i: usize, kind: FaultKind) {
        let now = now_ns();
        let name = &self.nodes[i].name;
        for f in &mut self.faults {
            if &f.node == name && f.kind == kind && f.to_ns.is_none() {
                f.to_ns = Some(now);
            }
        }
    }

    /// Partitions node `i` from its peers; returns the stamp taken once the rule is in place.
    pub async fn isolate(&mut self, i: usize) -> Result<u64> {
        let from = now_ns();
        self.world.partition(i, true).await?;
        let at = now_ns();
        self.faults.push(Fault {
            node: self.nodes[i].name.clone(),
            kind: FaultKind::Partition,
            from_ns: from,
            to_ns: None,
        });
        self.say(&format!("partitioned {}", self.nodes[i].name));
        Ok(at)
    }

    /// Cuts node `i` off symmetrically ([`World::partition_symmetric`]); returns the stamp
    /// taken once every rule is in place.
    pub async fn isolate_symmetric(&mut self, i: usize) -> Result<u64> {
        let from = now_ns();
        self.world.partition_symmetric(i, true).await?;
        let at = now_ns();
        self.faults.push(Fault {
            node: self.nodes[i].name.clone(),
            kind: FaultKind::Partition,
            from_ns: from,
            to_ns: None,
        });
        self.say(&format!("partitioned {} symmetrically", self.nodes[i].name));
        Ok(at)
    }

    /// Heals node `i`'s symmetric partition; returns the stamp taken once every rule is gone.
    pub async fn heal_symmetric(&mut self, i: usize) -> Result<u64> {
        self.world.partition_symmetric(i, false).await?;
        let at = now_ns();
        self.close_fault(i, FaultKind::Partition);
        self.say(&format!("healed {} (symmetric)", self.nodes[i].name));
        Ok(at)
    }

    /// How node `node`'s application under `token` fared in `[from_ns, to_ns]` of the hook
    /// log: whether its term was interrupted (an `on_demote` of that token in the window), and
    /// the longest time without an action (from `from_ns` to the first action, between
    /// actions, and from the last action to `to_ns`; the application acts every
    /// `act_interval_ms`, so an uninterrupted primary shows about that).
    pub fn application_gap(
        &self,
        node: &str,
        token: u64,
        from_ns: u64,
        to_ns: u64,
    ) -> Result<(bool, f64)> {
        let log = self.log()?;
        let mine = log.iter().filter(|e| {
            e.node == node && e.token == token && e.at_ns >= from_ns && e.at_ns <= to_ns
        });
        let mut interrupted = false;
        let mut last = from_ns;
        let mut gap = 0u64;
        for e in mine {
            match e.kind {
                Kind::Demote => interrupted = true,
                Kind::Act => {
                    gap = gap.max(e.at_ns.saturating_sub(last));
                    last = e.at_ns;
                }
                Kind::Promote => {}
            }
        }
        gap = gap.max(to_ns.saturating_sub(last));
        Ok((interrupted, gap as f64 / 1e6))
    }

    /// Heals node `i`'s partition.
    pub async fn heal(&mut self, i: usize) -> Result<()> {
        self.world.partition(i, false).await?;
        self.close_fault(i, FaultKind::Partition);
        self.say(&format!("healed {}", self.nodes[i].name));
        Ok(())
    }

    /// SIGTERM of node `i`'s agent (it demotes, leaves and stops); waits for it to exit.
    pub async fn terminate(&mut self, i: usize) -> Result<()> {
        let pid = self.nodes[i].pid.context("node has no pid")?;
        let _ = Command::new("kill")
            .args(["-s", "TERM", &pid.to_string()])
            .status()
            .await;
        if let Some(mut c) = self.nodes[i].child.take()
            && tokio::time::timeout(Duration::from_secs(30), c.wait())
                .await
                .is_err()
        {
            {
                let _ = self.signal_group(i, "KILL").await;
                let _ = c.wait().await;
                bail!(
                    "agent {} did not stop within 30 s of SIGTERM",
                    self.nodes[i].name
                );
            }
        }
        self.end_slow(i);
        self.say(&format!("stopped {}", self.nodes[i].name));
        Ok(())
    }

    /// SIGTERM to every running agent at once; waits for all.
    pub async fn shutdown(&mut self) -> Result<()> {
        for n in &self.nodes {
            if let (Some(pid), Some(_)) = (n.pid, &n.child) {
                let _ = Command::new("kill")
                    .args(["-s", "TERM", &pid.to_string()])
                    .status()
                    .await;
            }
        }
        let mut stuck = Vec::new();
        for i in 0..self.nodes.len() {
            if let Some(mut c) = self.nodes[i].child.take() {
                if tokio::time::timeout(Duration::from_secs(30), c.wait())
                    .await
                    .is_err()
                {
                    let _ = self.signal_group(i, "KILL").await;
                    let _ = c.wait().await;
                    stuck.push(self.nodes[i].name.clone());
                }
                self.end_slow(i);
            }
        }
        if !stuck.is_empty() {
            bail!("agents {stuck:?} did not stop within 30 s of SIGTERM");
        }
        Ok(())
    }

    /// The hook log so far.
    pub fn log(&self) -> Result<Vec<Entry>> {
        let text = std::fs::read_to_string(self.dir.as_path().join("actions.log"))?;
        // A line being appended may be cut; only whole lines count.
        let whole = match text.rfind('\n') {
            Some(n) => &text[..=n],
            None => "",
        };
        hooklog::parse(whole).map_err(anyhow::Error::msg)
    }

    /// The highest fencing token promoted so far (0: none).
    pub fn max_token(&self) -> Result<u64> {
        Ok(self
            .log()?
            .iter()
            .filter(|e| e.kind == Kind::Promote)
            .map(|e| e.token)
            .max()
            .unwrap_or(0))
    }

    /// Whether node `i` acts as primary of `role`, per its last `status.json` (`None`: no
    /// status from its current process, or it does not have the role).
    pub fn acting_in(&self, i: usize, role: &str) -> Option<bool> {
        let n = &self.nodes[i];
        let text =
            std::fs::read_to_string(self.dir.as_path().join(&n.name).join("status.json")).ok()?;
        let v: StatusFile = serde_json::from_str(&text).ok()?;
        if Some(u64::from(v.pid)) != n.pid.map(u64::from) {
            return None;
        }
        Some(v.role(role)?.acting_here)
    }

    /// Node `i`'s last `status.json`, if it is from its current process.
    pub fn status(&self, i: usize) -> Option<NodeStatus> {
        let n = &self.nodes[i];
        let text =
            std::fs::read_to_string(self.dir.as_path().join(&n.name).join("status.json")).ok()?;
        let v: StatusFile = serde_json::from_str(&text).ok()?;
        let pid = u64::from(v.pid);
        if Some(pid) != n.pid.map(u64::from) {
            return None;
        }
        let alive = v.alive();
        let role = v.role(ROLE)?.clone();
        Some(NodeStatus {
            pid,
            raft_leader: v.raft.leader,
            raft_is_leader: v.raft.is_leader,
            primary: role.primary,
            acting: role.acting_here,
            alive,
            health: v.health.status,
            candidates: role.candidates,
        })
    }

    /// Waits until primary `p` sees every other node as a candidate for the role (each has
    /// finished starting and is eligible): the gate of a rolling restart before it stops the
    /// next node.
    pub async fn wait_successors(&self, p: usize, within: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let s = self.status(p);
            if s.as_ref()
                .is_some_and(|s| s.candidates.len() + 1 == self.nodes.len())
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "primary {} did not see every other node as a candidate within {within:?}; last view: {s:?}",
                    self.nodes[p].name
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (up to `within`) until every node's `status.json` says it sees every member
    /// `Alive`; returns when (ns since the epoch; `status.json` is rewritten every 500 ms, so up
    /// to that late).
    pub async fn wait_all_alive(&self, within: Duration) -> Option<u64> {
        let size = self.nodes.len();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if (0..size).all(|i| self.status(i).is_some_and(|s| s.alive == size)) {
                return Some(now_ns());
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every node runs and agrees: one Raft leader, every member alive, one primary
    /// acting, no node critical, and the primary's last promote in the hook log is its own and
    /// not demoted. Returns the primary's index.
    pub async fn wait_stable(&self, within: Duration) -> Result<usize> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let statuses: Vec<Option<NodeStatus>> =
                (0..self.nodes.len()).map(|i| self.status(i)).collect();
            if let Some(p) = self.stable(&statuses)? {
                return Ok(p);
            }
            if tokio::time::Instant::now() > deadline {
                let mut why = String::new();
                for (i, s) in statuses.iter().enumerate() {
                    why.push_str(&format!("\n  {}: {s:?}", self.nodes[i].name));
                }
                bail!("the cluster did not settle within {within:?}; last views:{why}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stable(&self, statuses: &[Option<NodeStatus>]) -> Result<Option<usize>> {
        let size = self.nodes.len();
        let mut leader = None;
        let mut primary = None;
        for (i, s) in statuses.iter().enumerate() {
            let Some(s) = s else { return Ok(None) };
            if !self.running(i) || s.alive != size || s.health == "critical" {
                return Ok(None);
            }
            let (Some(l), Some(p)) = (&s.raft_leader, &s.primary) else {
                return Ok(None);
            };
            if leader.get_or_insert(l) != &l || primary.get_or_insert(p) != &p {
                return Ok(None);
            }
        }
        let Some(primary) = primary else {
            return Ok(None);
        };
        let p = self.index(primary)?;
        if !statuses[p].as_ref().is_some_and(|s| s.acting) {
            return Ok(None);
        }
        let log = self.log()?;
        // The newest token's last line must be a promote by the primary (a term can be
        // suspended and resumed under the same token).
        let top = log
            .iter()
            .filter(|e| e.kind == Kind::Promote)
            .map(|e| e.token)
            .max();
        let last = log
            .iter()
            .filter(|e| Some(e.token) == top && e.kind != Kind::Act)
            .max_by_key(|e| (e.at_ns, e.kind));
        match last {
            Some(e) if e.node == *primary && e.kind == Kind::Promote => Ok(Some(p)),
            _ => Ok(None),
        }
    }

    /// Waits for a promote with a token above `above` by a node other than `not`.
    pub async fn wait_promote(
        &self,
        above: u64,
        not: Option<usize>,
        within: Duration,
    ) -> Result<Entry> {
        let not = not.map(|i| self.nodes[i].name.clone());
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(e) = self.log()?.into_iter().find(|e| {
                e.kind == Kind::Promote && e.token > above && Some(&e.node) != not.as_ref()
            }) {
                self.say(&format!("{} promoted with token {}", e.node, e.token));
                return Ok(e);
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "no node other than {not:?} was promoted with a token above {above} within {within:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for the demote of `token` in the hook log.
    pub async fn wait_demote(&self, token: u64, within: Duration) -> Result<Entry> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(e) = self
                .log()?
                .into_iter()
                .find(|e| e.kind == Kind::Demote && e.token == token)
            {
                self.say(&format!("{} demoted token {}", e.node, e.token));
                return Ok(e);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the term with token {token} did not end (no on_demote) within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The token of the term node `i` holds now (its last promote), if any.
    pub fn term_of(&self, i: usize) -> Result<Option<u64>> {
        let name = &self.nodes[i].name;
        Ok(self
            .log()?
            .iter()
            .filter(|e| e.kind == Kind::Promote && &e.node == name)
            .map(|e| e.token)
            .max())
    }

    /// The `role_change` events the agents printed for `token` (detection and promotion
    /// durations as the new primary measured them).
    /// The event printed by `node` itself is preferred (the others print what they observed).
    pub fn role_change(&self, token: u64, node: &str) -> Option<RoleChangeEvent> {
        let mut order: Vec<&Node> = self.nodes.iter().filter(|n| n.name == node).collect();
        order.extend(self.nodes.iter().filter(|n| n.name != node));
        for n in order {
            let Ok(text) =
                std::fs::read_to_string(self.dir.as_path().join(format!("{}.out", n.name)))
            else {
                continue;
            };
            for line in text.lines() {
                if let Some(NodeEvent::RoleChange(rc)) = NodeEvent::parse(line)
                    && rc.token == Some(token)
                {
                    return Some(rc);
                }
            }
        }
        None
    }

    /// Judges the whole hook log against the faults injected (call after [`Cluster::shutdown`]).
    pub fn check(&self) -> Result<hooklog::Report> {
        Ok(hooklog::check(&self.log()?, &self.faults, now_ns()))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Kill every node whole (agent group, and everything in its namespace: applications
        // its hooks started live in groups of their own), synchronously.
        for i in 0..self.nodes.len() {
            let mut targets = self.world.node_pids_sync(i);
            if let Some(pid) = self.nodes[i].pid {
                targets.push(format!("-{pid}"));
            }
            if !targets.is_empty() {
                let _ = std::process::Command::new("kill")
                    .args(["-s", "KILL", "--"])
                    .args(&targets)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            if let Some(c) = self.nodes[i].child.as_mut() {
                let _ = c.start_kill();
            }
        }
    }
}

/// What a start waits for.
#[derive(Clone, Copy, Debug)]
enum Until {
    /// The storage stage is ready (the process runs; its data dir is open).
    StorageOpen,
    /// The failover manager started (every stage up to the roles).
    FailoverStarted,
}

impl Until {
    fn count(self, out: &Path) -> usize {
        match self {
            Until::FailoverStarted => count_started(out),
            Until::StorageOpen => std::fs::read_to_string(out).map_or(0, |t| {
                t.lines()
                    .filter(|l| {
                        matches!(NodeEvent::parse(l), Some(NodeEvent::Stage(s)) if s.stage == "storage")
                    })
                    .count()
            }),
        }
    }

    fn what(self) -> &'static str {
        match self {
            Until::StorageOpen => "its storage stage",
            Until::FailoverStarted => "its failover manager start",
        }
    }
}

fn count_started(out: &Path) -> usize {
    std::fs::read_to_string(out).map_or(0, |t| {
        t.lines()
            .filter(|l| {
                matches!(NodeEvent::parse(l), Some(NodeEvent::Started { component, .. }) if component == "failover")
            })
            .count()
    })
}

/// The role's hooks and its application: see the module documentation.
fn role_script(dir: &Path, act_interval_ms: u32) -> String {
    format!(
        r#"#!/bin/sh
# quorate chaos harness: role hooks. $1 = promote | demote; env QUORATE_NODE, QUORATE_FENCING_TOKEN.
# Stamps come from `date` run without libfaketime, so every node shares the wall clock.
dir={dir}
log="$dir/actions.log"
run="$dir/$QUORATE_NODE.run"
done_="$dir/$QUORATE_NODE.done"
stamp() {{ env -u LD_PRELOAD -u FAKETIME date +%s%N; }}
case "$1" in
promote)
  rm -f "$done_"
  echo "$QUORATE_FENCING_TOKEN" > "$run.tmp" && mv "$run.tmp" "$run"
  echo "$(stamp) $QUORATE_NODE promote $QUORATE_FENCING_TOKEN" >> "$log"
  (
    # The application: one action every {act_ms} ms while the run file exists. The stamp is taken
    # before the check, so an action is never stamped after the demote removed the file.
    while :; do
      s=$(stamp)
      [ -e "$run" ] || break
      echo "$s $QUORATE_NODE act $QUORATE_FENCING_TOKEN" >> "$log"
      sleep {act_s}
    done
    : > "$done_"
  ) </dev/null >/dev/null 2>&1 &
  ;;
demote)
  rm -f "$run"
  i=0
  while [ ! -e "$done_" ] && [ $i -lt 300 ]; do sleep 0.01; i=$((i+1)); done
  echo "$(stamp) $QUORATE_NODE demote $QUORATE_FENCING_TOKEN" >> "$log"
  ;;
esac
"#,
        dir = dir.display(),
        act_ms = act_interval_ms,
        act_s = format_args!("{:.3}", f64::from(act_interval_ms.max(1)) / 1000.0),
    )
}

/// Bound on a cluster settling after a fault is healed or a node restarted.
pub(crate) const SETTLE: Duration = Duration::from_secs(90);
/// Bound on a failover or a demotion.
pub(crate) const FAILOVER: Duration = Duration::from_secs(30);
/// Most attempts a `kill-both` trial makes to move the role onto the Raft leader.
const ROLE_MOVES_MAX: usize = 5;

/// The acceptance scenario of issue 8 on three agents, one fault at a time, each followed by a
/// check that another node was promoted:
/// 1. SIGKILL of the primary's group, then restart it;
/// 2. SIGSTOP of the primary's group until another node is promoted, then SIGCONT; the paused
///    node must end its term by itself;
/// 3. nftables input drop at the primary of every peer; it must demote by itself while cut
///    off, and another node must be promoted; then heal;
/// 4. clock at 0.5x: the primary is stopped (SIGTERM) and restarted under libfaketime with the
///    highest priority; the next primary is killed so the slow node is promoted; then the slow
///    primary is partitioned (its slow clock keeps it acting past its lease: those stale
///    actions must be fenced); heal, restart it on a normal clock.
///
/// Then every agent is stopped and the hook log is judged by [`hooklog::check`]. Returns the
/// report and the run directory (kept when `keep`).
pub async fn acceptance(
    agent_exe: &Path,
    verbose: bool,
    keep: bool,
) -> Result<(hooklog::Report, Option<PathBuf>)> {
    let mut c = Cluster::start(ClusterSpec {
        agent_exe: agent_exe.to_path_buf(),
        size: 3,
        flapping: false,
        equal_priority: false,
        verbose,
        telegram: None,
        http_app: false,
        act_interval_ms: 50,
    })
    .await?;
    let r = acceptance_steps(&mut c).await;
    let stopped = c.shutdown().await;
    let report = c.check()?;
    if verbose {
        println!("{report}");
    }
    let kept =
        (keep || r.is_err() || stopped.is_err() || !report.violations.is_empty()).then(|| c.keep());
    let at = kept
        .as_ref()
        .map_or(String::new(), |d| format!(" (files in {})", d.display()));
    r.with_context(|| format!("chaos scenario failed{at}"))?;
    stopped.with_context(|| format!("stopping the agents{at}"))?;
    Ok((report, kept))
}

async fn acceptance_steps(c: &mut Cluster) -> Result<()> {
    // 1. Crash.
    let p = c.wait_stable(SETTLE).await?;
    let t = c.max_token()?;
    c.say(&format!("--- fault 1: SIGKILL of primary {}", c.name(p)));
    c.kill(p).await?;
    c.wait_promote(t, Some(p), FAILOVER)
        .await
        .context("after SIGKILL")?;
    c.spawn(p, false, c.priority(p)).await?;

    // 2. Pause.
    let p = c.wait_stable(SETTLE).await?;
    let t = c.max_token()?;
    c.say(&format!("--- fault 2: SIGSTOP of primary {}", c.name(p)));
    c.pause(p).await?;
    let promoted = c
        .wait_promote(t, Some(p), FAILOVER)
        .await
        .context("after SIGSTOP");
    c.resume(p).await?;
    promoted?;
    c.wait_demote(t, FAILOVER)
        .await
        .context("the resumed primary must end its stale term")?;

    // 3. Partition.
    let p = c.wait_stable(SETTLE).await?;
    let t = c.max_token()?;
    c.say(&format!("--- fault 3: partition of primary {}", c.name(p)));
    c.isolate(p).await?;
    let promoted = c
        .wait_promote(t, Some(p), FAILOVER)
        .await
        .context("after the partition");
    let demoted = c
        .wait_demote(t, FAILOVER)
        .await
        .context("the cut-off primary must demote by itself");
    c.heal(p).await?;
    promoted?;
    demoted?;

    // 4. Slow clock.
    let p = c.wait_stable(SETTLE).await?;
    let t = c.max_token()?;
    c.say(&format!(
        "--- fault 4: {} restarted with its clock at 0.5x",
        c.name(p)
    ));
    c.terminate(p).await?;
    let q = c
        .wait_promote(t, Some(p), FAILOVER)
        .await
        .context("after SIGTERM")?;
    c.spawn(p, true, 1000).await?;
    let q = c.index(&q.node)?;
    let primary = c.wait_stable(SETTLE).await?;
    let q = if primary == q { q } else { primary };
    let t = c.max_token()?;
    c.say(&format!(
        "kill {} so that the slow {} (priority 1000) is promoted",
        c.name(q),
        c.name(p)
    ));
    c.kill(q).await?;
    let e = c
        .wait_promote(t, Some(q), FAILOVER)
        .await
        .context("after SIGKILL, slow clock")?;
    if e.node != c.name(p) {
        bail!(
            "{} was promoted instead of the slow {} (failover-priority 1000): the slow-primary \
             case was not exercised (did the slow node's wall clock drift past the wire's \
             clock_skew_max before it was promoted?)",
            e.node,
            c.name(p)
        );
    }
    c.spawn(q, false, c.priority(q)).await?;
    let t = c.max_token()?;
    // The slow primary's wall clock drifts; the wire cuts it off after about 7.8 s (see
    // SLOW_CLOCK). Partition it as soon as the restarted node is a member again.
    let p2 = c.wait_stable(SETTLE).await;
    match p2 {
        Ok(p2) if p2 == p => {
            c.say(&format!(
                "--- fault 4b: partition of the slow primary {}",
                c.name(p)
            ));
            c.isolate(p).await?;
            let promoted = c
                .wait_promote(t, Some(p), FAILOVER)
                .await
                .context("after partitioning the slow primary");
            let demoted = c
                .wait_demote(t, FAILOVER)
                .await
                .context("the slow cut-off primary must demote by itself");
            c.heal(p).await?;
            promoted?;
            demoted?;
        }
        _ => {
            // The wire's clock-skew check cut the slow primary off before the partition: the
            // same hazard (a slow primary cut off from its peers), so the checks still apply.
            c.say(&format!(
                "the slow {} was cut off by the wire's clock-skew check before the partition",
                c.name(p)
            ));
            c.wait_promote(t, Some(p), FAILOVER)
                .await
                .context("after the slow primary was cut off")?;
            c.wait_demote(t, FAILOVER)
                .await
                .context("the slow cut-off primary must demote by itself")?;
        }
    }
    // Back to a normal clock (a slow node cannot rejoin: the wire refuses its stale stamps).
    c.terminate(p).await?;
    c.spawn(p, false, c.priority(p)).await?;
    c.wait_stable(SETTLE).await?;
    Ok(())
}

/// Options of the failover benchmark.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// The `quorate` executable.
    pub agent_exe: PathBuf,
    /// SIGKILL trials.
    pub kill_trials: u32,
    /// Partition trials (the primary's input drops its peers: one-way for UDP).
    pub partition_trials: u32,
    /// Symmetric partition trials (the primary and its peers drop each other).
    pub sym_partition_trials: u32,
    /// SIGKILL trials of a primary that is also the Raft leader (the worst case: a Raft
    /// election, then the role lease the new leader extended). The policy keeps the role off
    /// the Raft leader, so each trial first moves the role there: every other node is made
    /// critical (a harness-controlled check) until the primary hands over to the Raft leader.
    pub kill_both_trials: u32,
    /// SIGKILLs of the Raft leader while it is not the primary; each counts whether the role
    /// moved (it must not: the primary never failed) and how long the primary's application
    /// went without acting.
    pub raft_leader_kills: u32,
    /// Symmetric partitions of a node that is not the primary, each healed after 2 s: counts
    /// interruptions of the healthy primary's application from the cut through the heal.
    pub secondary_partitions: u32,
    /// Length of the run with flapping non-critical checks and no faults.
    pub flap: Duration,
    /// Print progress lines.
    pub verbose: bool,
}

/// One failover trial.
#[derive(Clone, Debug)]
pub struct Trial {
    /// `kill`, `partition`, `sym-partition` or `kill-both` (the primary was also the Raft
    /// leader on purpose).
    pub fault: &'static str,
    /// The old primary was also the Raft leader.
    pub primary_was_raft_leader: bool,
    /// Fault to the new primary's `on_promote`, in milliseconds.
    pub to_promote_ms: f64,
    /// Detection and promotion as the new primary measured them (ms), from its role-change event.
    pub detection_ms: Option<u64>,
    /// See `detection_ms`.
    pub promotion_ms: Option<u64>,
    /// Fault to the old primary's last action (partition: how long the cut-off primary's
    /// application went on; its lease window is 544 ms in the `lan` profile).
    pub old_last_action_ms: Option<f64>,
}

/// What the failover benchmark measured.
#[derive(Clone, Debug, Default)]
pub struct BenchReport {
    /// Every trial.
    pub trials: Vec<Trial>,
    /// New primaries (new tokens) during the flapping run (all false: nothing failed).
    pub false_failovers: usize,
    /// Times the primary stopped and resumed under the same token during the flapping run
    /// (no renew acknowledged by its holder deadline, then a renew succeeded).
    pub suspensions: usize,
    /// How long the flapping run lasted.
    pub flap: Duration,
    /// SIGKILLs of a Raft leader that was not the primary.
    pub leader_kills: usize,
    /// Of those, how many moved the role (new token): each is a false failover.
    pub leader_kill_role_moves: usize,
    /// Of those, how many interrupted the primary's application (an `on_demote` of its token).
    pub leader_kill_interrupted: usize,
    /// Per Raft-leader kill: the longest time the primary's application did not act, from the
    /// kill until the cluster was stable again (ms).
    pub leader_kill_gaps_ms: Vec<f64>,
    /// Symmetric partitions (and heals) of a secondary.
    pub secondary_partitions: usize,
    /// Of those, how many interrupted the primary's application (cut through heal + settle).
    pub secondary_partition_interrupted: usize,
    /// Of the secondary partitions, how many cut off the Raft leader (a Raft election follows
    /// the cut, not only the heal).
    pub secondary_partition_leader_cuts: usize,
    /// Interruptions when the cut secondary was a Raft follower: only the heal could disturb.
    pub secondary_partition_follower_interrupted: usize,
    /// Per secondary partition: the longest time the primary's application did not act (ms).
    pub secondary_partition_gaps_ms: Vec<f64>,
    /// Per secondary partition: from the heal until every node's `status.json` showed every
    /// member `Alive` (ms; infinite when not within 30 s; up to 500 ms late).
    pub heal_all_alive_ms: Vec<f64>,
    /// The hook-log checker's report over the whole run.
    pub check: hooklog::Report,
}

/// Nearest-rank percentile of `v` (`q` in 0..=1).
pub fn percentile(v: &[f64], q: f64) -> Option<f64> {
    quorate_bench::stats::quantile_ms(v, q)
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for fault in ["kill", "partition", "sym-partition", "kill-both"] {
            let t: Vec<&Trial> = self.trials.iter().filter(|t| t.fault == fault).collect();
            if t.is_empty() {
                continue;
            }
            let ms: Vec<f64> = t.iter().map(|t| t.to_promote_ms).collect();
            let lead: Vec<f64> = t
                .iter()
                .filter(|t| t.primary_was_raft_leader)
                .map(|t| t.to_promote_ms)
                .collect();
            let follow: Vec<f64> = t
                .iter()
                .filter(|t| !t.primary_was_raft_leader)
                .map(|t| t.to_promote_ms)
                .collect();
            let p =
                |v: &[f64], q| percentile(v, q).map_or("-".to_owned(), |x| format!("{x:.0} ms"));
            writeln!(
                f,
                "{fault:<9} trials {:>3}  to on_promote: median {}  p99 {}  min {}  max {}",
                ms.len(),
                p(&ms, 0.5),
                p(&ms, 0.99),
                p(&ms, 0.0),
                p(&ms, 1.0)
            )?;
            writeln!(
                f,
                "          primary was Raft leader: {} trials, median {}; was not: {} trials, median {}",
                lead.len(),
                p(&lead, 0.5),
                follow.len(),
                p(&follow, 0.5)
            )?;
            let det: Vec<f64> = t
                .iter()
                .filter_map(|t| t.detection_ms)
                .map(|x| x as f64)
                .collect();
            let pro: Vec<f64> = t
                .iter()
                .filter_map(|t| t.promotion_ms)
                .map(|x| x as f64)
                .collect();
            writeln!(
                f,
                "          new primary's own measure: detection median {}, promotion median {}",
                p(&det, 0.5),
                p(&pro, 0.5)
            )?;
            let stop: Vec<f64> = t.iter().filter_map(|t| t.old_last_action_ms).collect();
            if fault == "partition" || fault == "sym-partition" {
                writeln!(
                    f,
                    "          cut-off primary's last action after the partition: median {}, max {} (lease window 544 ms)",
                    p(&stop, 0.5),
                    p(&stop, 1.0)
                )?;
            }
            let all: Vec<String> = ms.iter().map(|m| format!("{m:.0}")).collect();
            writeln!(f, "          all (ms): {}", all.join(" "))?;
        }
        let p = |v: &[f64], q| percentile(v, q).map_or("-".to_owned(), |x| format!("{x:.0} ms"));
        if self.leader_kills > 0 {
            writeln!(
                f,
                "Raft leader (not the primary) SIGKILLed {} times: the role moved {} times, the \
                 primary's application was interrupted {} times; its longest pause without an \
                 action: median {}, max {}",
                self.leader_kills,
                self.leader_kill_role_moves,
                self.leader_kill_interrupted,
                p(&self.leader_kill_gaps_ms, 0.5),
                p(&self.leader_kill_gaps_ms, 1.0)
            )?;
        }
        if self.secondary_partitions > 0 {
            writeln!(
                f,
                "secondary cut off symmetrically for 2 s and healed {} times ({} of them the Raft \
                 leader): the primary's application was interrupted {} times ({} when the cut \
                 node was a Raft follower); its longest pause without an action: median {}, max {}",
                self.secondary_partitions,
                self.secondary_partition_leader_cuts,
                self.secondary_partition_interrupted,
                self.secondary_partition_follower_interrupted,
                p(&self.secondary_partition_gaps_ms, 0.5),
                p(&self.secondary_partition_gaps_ms, 1.0)
            )?;
            writeln!(
                f,
                "          after each heal, every member's view all Alive (status.json, written every 500 ms): median {}, max {}",
                p(&self.heal_all_alive_ms, 0.5),
                p(&self.heal_all_alive_ms, 1.0)
            )?;
        }
        writeln!(
            f,
            "flapping non-critical checks, no faults, {:.0} s: {} false failovers (new primary), \
             {} suspensions (primary stopped and resumed under the same token)",
            self.flap.as_secs_f64(),
            self.false_failovers,
            self.suspensions
        )?;
        write!(f, "hook-log check over the whole run: {}", self.check)
    }
}

/// The failover benchmark: `kill_trials` SIGKILLs and `partition_trials` partitions of the
/// primary of three agents (with flapping non-critical checks on every node), each measured
/// from the fault to the new primary's `on_promote` stamp, then a run of `flap` with no faults
/// that counts promotions (false failovers). Timings are reported, never asserted.
pub async fn bench(opts: &BenchOptions) -> Result<BenchReport> {
    let mut c = Cluster::start(ClusterSpec {
        agent_exe: opts.agent_exe.clone(),
        size: 3,
        flapping: true,
        equal_priority: true,
        verbose: opts.verbose,
        telegram: None,
        http_app: false,
        act_interval_ms: 50,
    })
    .await?;
    let mut report = BenchReport::default();
    let r = bench_steps(&mut c, opts, &mut report).await;
    let stopped = c.shutdown().await;
    report.check = c.check()?;
    if r.is_err() || stopped.is_err() {
        let kept = c.keep();
        r.with_context(|| format!("failover bench failed (files in {})", kept.display()))?;
        stopped.with_context(|| format!("stopping the agents (files in {})", kept.display()))?;
    }
    Ok(report)
}

/// Moves the role onto the Raft leader (the policy keeps it off when it can): every other
/// node is made critical until the Raft leader is promoted, then made healthy again. Returns
/// the primary once it also leads Raft.
async fn role_onto_leader(c: &mut Cluster, mut p: usize) -> Result<usize> {
    for _ in 0..ROLE_MOVES_MAX {
        let Some(leader) = c.status(p).and_then(|s| s.raft_leader) else {
            bail!(
                "{} names no Raft leader although the cluster is stable",
                c.name(p)
            );
        };
        let l = c.index(&leader)?;
        if l == p && c.status(p).is_some_and(|s| s.raft_is_leader) {
            return Ok(p);
        }
        if l != p {
            let t = c.max_token()?;
            c.say(&format!(
                "setting up a kill-both trial: every node but Raft leader {leader} made critical"
            ));
            for i in (0..c.nodes.len()).filter(|i| *i != l) {
                c.set_sick(i, true)?;
            }
            let moved = c.wait_promote(t, Some(p), FAILOVER).await;
            for i in 0..c.nodes.len() {
                c.set_sick(i, false)?;
            }
            moved.context("the role did not move to the only healthy node")?;
        }
        p = c.wait_stable(SETTLE).await?;
    }
    bail!("the role and Raft leadership did not meet in {ROLE_MOVES_MAX} attempts")
}

/// SIGKILLs the Raft leader, which is not the primary, restarts it once another node leads
/// Raft, and counts whether the role moved.
async fn kill_raft_leader(c: &mut Cluster, report: &mut BenchReport) -> Result<()> {
    let p = c.wait_stable(SETTLE).await?;
    let Some(leader) = c.status(p).and_then(|s| s.raft_leader) else {
        bail!(
            "{} names no Raft leader although the cluster is stable",
            c.name(p)
        );
    };
    let mut l = c.index(&leader)?;
    let mut p = p;
    if l == p {
        // The policy keeps them apart; it happens after a Raft election landed on the primary.
        // Move the role off the Raft leader (the primary made critical until another node is
        // promoted), then measure with the new primary.
        c.say("Raft leader is the primary: moving the role off it first");
        let t = c.max_token()?;
        c.set_sick(p, true)?;
        let moved = c.wait_promote(t, Some(p), FAILOVER).await;
        c.set_sick(p, false)?;
        moved.context("the role did not move off the Raft leader")?;
        p = c.wait_stable(SETTLE).await?;
        let Some(leader) = c.status(p).and_then(|s| s.raft_leader) else {
            bail!(
                "{} names no Raft leader although the cluster is stable",
                c.name(p)
            );
        };
        l = c.index(&leader)?;
        if l == p {
            c.say("Raft leadership followed the role: no Raft-leader-only kill this time");
            return Ok(());
        }
    }
    let leader = c.name(l).to_owned();
    let t = c.max_token()?;
    c.say(&format!(
        "SIGKILL of Raft leader {leader} (not the primary)"
    ));
    let at = c.kill(l).await?;
    // Restart it only once the others elected another Raft leader (a quick restart would find
    // the old term still in place, and the views would still name it).
    let deadline = tokio::time::Instant::now() + FAILOVER;
    while !c
        .status(p)
        .is_some_and(|s| s.raft_is_leader || s.raft_leader.as_deref().is_some_and(|x| x != leader))
    {
        if tokio::time::Instant::now() > deadline {
            bail!("no new Raft leader within {FAILOVER:?} after SIGKILL of {leader}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The primary's application from the kill until the new Raft leader has been in place
    // for a few renews (before the restart, whose own election is another disturbance).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (interrupted, gap) = c.application_gap(c.name(p), t, at, now_ns())?;
    c.spawn(l, false, c.priority(l)).await?;
    c.wait_stable(SETTLE).await?;
    report.leader_kills += 1;
    if c.max_token()? != t {
        report.leader_kill_role_moves += 1;
    }
    report.leader_kill_interrupted += usize::from(interrupted);
    report.leader_kill_gaps_ms.push(gap);
    c.say(&format!(
        "Raft leader kill: primary interrupted: {interrupted}, longest pause {gap:.0} ms"
    ));
    Ok(())
}

/// Cuts a node that is not the primary off symmetrically for 2 s, heals it, waits until the
/// cluster is stable, and records whether the primary's application was interrupted.
async fn partition_secondary(c: &mut Cluster, report: &mut BenchReport) -> Result<()> {
    let p = c.wait_stable(SETTLE).await?;
    let t = c.max_token()?;
    let s = (p + 1 + report.secondary_partitions % 2) % c.nodes.len();
    let s_led = c
        .status(p)
        .and_then(|st| st.raft_leader)
        .is_some_and(|l| l == c.name(s));
    let at = c.isolate_symmetric(s).await?;
    // Not a synchronisation sleep: the partition's length is the fault.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let healed = c.heal_symmetric(s).await?;
    let all_alive = c.wait_all_alive(Duration::from_secs(30)).await;
    report
        .heal_all_alive_ms
        .push(all_alive.map_or(f64::INFINITY, |t| t.saturating_sub(healed) as f64 / 1e6));
    // The heal's disturbance (a returning node with a higher term) shows within a few
    // election timeouts.
    let since = Duration::from_nanos(now_ns().saturating_sub(healed));
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(since)).await;
    let (interrupted, gap) = c.application_gap(c.name(p), t, at, now_ns())?;
    c.wait_stable(SETTLE).await?;
    let moved = c.max_token()? != t;
    report.secondary_partitions += 1;
    report.secondary_partition_interrupted += usize::from(interrupted || moved);
    report.secondary_partition_leader_cuts += usize::from(s_led);
    if !s_led {
        report.secondary_partition_follower_interrupted += usize::from(interrupted || moved);
    }
    report.secondary_partition_gaps_ms.push(gap);
    c.say(&format!(
        "secondary {} (Raft leader: {s_led}) cut 2 s, healed {:.0} ms later: primary interrupted: {interrupted}, role moved: {moved}, longest pause {gap:.0} ms",
        c.name(s),
        (healed.saturating_sub(at)) as f64 / 1e6
    ));
    Ok(())
}

async fn bench_steps(c: &mut Cluster, opts: &BenchOptions, report: &mut BenchReport) -> Result<()> {
    let plan = std::iter::repeat_n("kill", opts.kill_trials as usize)
        .chain(std::iter::repeat_n(
            "partition",
            opts.partition_trials as usize,
        ))
        .chain(std::iter::repeat_n(
            "sym-partition",
            opts.sym_partition_trials as usize,
        ))
        .chain(std::iter::repeat_n(
            "kill-both",
            opts.kill_both_trials as usize,
        ));
    for (n, fault) in plan.enumerate() {
        let mut p = c.wait_stable(SETTLE).await?;
        if fault == "kill-both" {
            p = role_onto_leader(c, p).await?;
        }
        let was_leader = c.status(p).is_some_and(|s| s.raft_is_leader);
        let t = c.max_token()?;
        let at = match fault {
            "partition" => c.isolate(p).await?,
            "sym-partition" => c.isolate_symmetric(p).await?,
            _ => c.kill(p).await?,
        };
        let e = c
            .wait_promote(t, Some(p), FAILOVER)
            .await
            .with_context(|| format!("trial {} ({fault})", n + 1))?;
        let mut trial = Trial {
            fault,
            primary_was_raft_leader: was_leader,
            to_promote_ms: e.at_ns.saturating_sub(at) as f64 / 1e6,
            detection_ms: None,
            promotion_ms: None,
            old_last_action_ms: None,
        };
        match fault {
            "partition" => {
                c.wait_demote(t, FAILOVER).await?;
                c.heal(p).await?;
            }
            "sym-partition" => {
                c.wait_demote(t, FAILOVER).await?;
                c.heal_symmetric(p).await?;
            }
            _ => c.spawn(p, false, c.priority(p)).await?,
        }
        // The new primary prints its role change after `on_promote`: read it once the old
        // primary is back (or the next settle, below, has waited for it).
        c.wait_stable(SETTLE).await?;
        let rc = c.role_change(e.token, &e.node);
        trial.detection_ms = rc.as_ref().and_then(|v| v.detection_ms);
        trial.promotion_ms = rc.as_ref().and_then(|v| v.promotion_ms);
        trial.old_last_action_ms = c
            .log()?
            .iter()
            .filter(|x| x.token == t && x.kind != Kind::Demote)
            .map(|x| x.at_ns)
            .max()
            .map(|last| (i128::from(last) - i128::from(at)) as f64 / 1e6);
        if opts.verbose {
            println!(
                "trial {:>2} {fault:<9} {} -> {}: {:.0} ms (old primary raft leader: {was_leader}; \
                 its last action {:.0} ms after the fault; new primary's detection {:?} ms, \
                 promotion {:?} ms)",
                n + 1,
                c.name(p),
                e.node,
                trial.to_promote_ms,
                trial.old_last_action_ms.unwrap_or(f64::NAN),
                trial.detection_ms,
                trial.promotion_ms
            );
        }
        report.trials.push(trial);
    }
    // After the trials: a Raft leader kill lands Raft leadership on the primary one time in
    // two, which would make the plain kill trials after it worst cases.
    // A kill that finds Raft leadership on the primary even after moving the role is not
    // counted; try again, at most twice as many times as asked.
    for _ in 0..opts.raft_leader_kills.saturating_mul(2) {
        if report.leader_kills >= opts.raft_leader_kills as usize {
            break;
        }
        kill_raft_leader(c, report).await?;
    }
    for _ in 0..opts.secondary_partitions {
        partition_secondary(c, report).await?;
    }
    let p = c.wait_stable(SETTLE).await?;
    let before = c.log()?;
    let top = before
        .iter()
        .filter(|e| e.kind == Kind::Promote)
        .map(|e| e.token)
        .max()
        .unwrap_or(0);
    let promotes_before = before.iter().filter(|e| e.kind == Kind::Promote).count();
    c.say(&format!(
        "flapping run of {:?} with {} primary",
        opts.flap,
        c.name(p)
    ));
    let start = tokio::time::Instant::now();
    // Not a synchronisation sleep: the run's length is what is measured over.
    tokio::time::sleep(opts.flap).await;
    report.flap = start.elapsed();
    let after = c.log()?;
    let promotes: Vec<&Entry> = after.iter().filter(|e| e.kind == Kind::Promote).collect();
    let mut new_tokens: Vec<u64> = promotes
        .iter()
        .filter(|e| e.token > top)
        .map(|e| e.token)
        .collect();
    new_tokens.dedup();
    report.false_failovers = new_tokens.len();
    report.suspensions =
        promotes.len() - promotes_before - promotes.iter().filter(|e| e.token > top).count();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_never_passes_a_chaos_test_it_did_not_run() {
        assert!(matches!(gate(None, Some("true")), Gate::Fail(_)));
        assert!(matches!(gate(Some("0"), Some("1")), Gate::Fail(_)));
        assert!(matches!(gate(None, None), Gate::NotRun(_)));
        assert!(matches!(gate(None, Some("false")), Gate::NotRun(_)));
        // Asked for explicitly: it runs, or fails naming what is missing; never a quiet skip.
        assert!(!matches!(gate(Some("1"), None), Gate::NotRun(_)));
    }
}
