//! Real Redis servers (and Sentinels) for tests and benchmarks: [`RedisServer::start`] runs
//! `redis-server` (Debian package `redis-server`) on a loopback port in its own directory,
//! without persistence, and waits until it answers; [`RedisServer::kill`] is a `kill -9`,
//! [`RedisServer::restart`] starts it again on the same port. Dropping it kills it. A missing
//! binary is an error naming the package to install (the tests then fail; they never skip).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::TestkitError;

/// Environment variable naming the redis-server binary (default: `redis-server` in
/// `/usr/bin` or `/usr/local/bin`).
pub const REDIS_BIN_ENV: &str = "QUORATE_REDIS_BIN";

/// The `redis-server` binary, or an error naming the Debian package.
pub fn redis_server_binary() -> Result<PathBuf, TestkitError> {
    find(REDIS_BIN_ENV, "redis-server", "redis-server")
}

/// The `redis-sentinel` binary (Debian package `redis-sentinel`), or an error naming it.
pub fn redis_sentinel_binary() -> Result<PathBuf, TestkitError> {
    find(
        "QUORATE_REDIS_SENTINEL_BIN",
        "redis-sentinel",
        "redis-sentinel",
    )
}

fn find(env: &str, name: &str, package: &str) -> Result<PathBuf, TestkitError> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    ["/usr/bin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            TestkitError::io(
                format!("finding {name}"),
                &format!(
                    "not installed: install the Debian package `{package}` (`cargo xtask setup` as root, or `apt-get install -y {package}`), or set {env}"
                ),
            )
        })
}

/// One redis-server process.
#[derive(Debug)]
pub struct RedisServer {
    /// Its loopback port.
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    binary: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts redis-server on `port` with its files in `dir` (created), no persistence, plus
    /// `extra` config arguments (`["--replicaof", "127.0.0.1", "7000"]`); waits until it
    /// answers `PING`.
    pub fn start(dir: &Path, port: u16, extra: &[&str]) -> Result<RedisServer, TestkitError> {
        let binary = redis_server_binary()?;
        std::fs::create_dir_all(dir)
            .map_err(|e| TestkitError::io(format!("creating {}", dir.display()), &e))?;
        let mut s = RedisServer {
            port,
            dir: dir.to_path_buf(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            binary,
            child: None,
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> Result<(), TestkitError> {
        let log = self.dir.join("redis.log");
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| TestkitError::io(format!("starting {}", self.binary.display()), &e))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if ping(self.port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(TestkitError::io(
            format!("redis-server on port {}", self.port),
            &format!(
                "did not answer PING within 10 s; its log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        ))
    }

    /// `host:port` of the server.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`, and reaped.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again (same port, same arguments); waits until it answers.
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.kill();
        self.spawn()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether something on `port` answers an inline `PING` with `+PONG`.
pub fn ping(port: u16) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// One redis-sentinel process monitoring `master_name` at `master_port`.
#[derive(Debug)]
pub struct Sentinel {
    /// Its loopback port.
    pub port: u16,
    child: Option<Child>,
}

impl Sentinel {
    /// Starts redis-sentinel on `port` in `dir`, monitoring `master_name` at
    /// 127.0.0.1:`master_port` with quorum 2 and `settings` (lines appended to its config,
    /// e.g. `sentinel down-after-milliseconds mymaster 1000`); waits until it answers.
    pub fn start(
        dir: &Path,
        port: u16,
        master_name: &str,
        master_port: u16,
        settings: &[String],
    ) -> Result<Sentinel, TestkitError> {
        let binary = redis_sentinel_binary()?;
        std::fs::create_dir_all(dir)
            .map_err(|e| TestkitError::io(format!("creating {}", dir.display()), &e))?;
        let conf = dir.join("sentinel.conf");
        let mut text = format!(
            "port {port}\nbind 127.0.0.1\ndir {}\nlogfile {}\nsentinel monitor {master_name} 127.0.0.1 {master_port} 2\n",
            dir.display(),
            dir.join("sentinel.log").display()
        );
        for s in settings {
            text.push_str(s);
            text.push('\n');
        }
        std::fs::write(&conf, text)
            .map_err(|e| TestkitError::io(format!("writing {}", conf.display()), &e))?;
        Sentinel::run(&binary, &conf, port)
    }

    /// Starts the Sentinel of `dir` again on `port` with the config file it rewrote (what it
    /// learnt about masters, replicas and other Sentinels).
    pub fn restart(dir: &Path, port: u16) -> Result<Sentinel, TestkitError> {
        Sentinel::run(&redis_sentinel_binary()?, &dir.join("sentinel.conf"), port)
    }

    fn run(binary: &Path, conf: &Path, port: u16) -> Result<Sentinel, TestkitError> {
        let child = Command::new(binary)
            .arg(conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| TestkitError::io(format!("starting {}", binary.display()), &e))?;
        let s = Sentinel {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if ping(port) {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(TestkitError::io(
            format!("redis-sentinel on port {port}"),
            &"did not answer PING within 10 s",
        ))
    }

    /// `kill -9`, and reaped.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three (or more) nodes on loopback, each a `quorate agent` with a `[redis]` section
/// managing its own redis-server (role `redis`, a critical Redis health check, a
/// Sentinel-compatible listener per node). The agents' stdout and stderr go to files in the
/// directory.
#[derive(Debug)]
pub struct ManagedRedis {
    /// The node names (`n1`..).
    pub names: Vec<String>,
    /// Each node's Redis server.
    pub servers: Vec<RedisServer>,
    /// Each node's Sentinel-compatible listener port.
    pub sentinel_ports: Vec<u16>,
    agent_exe: PathBuf,
    configs: Vec<PathBuf>,
    dir: PathBuf,
    agents: Vec<Option<Child>>,
}

/// The role the managed cluster's Redis follows.
pub const MANAGED_ROLE: &str = "redis";

impl ManagedRedis {
    /// Starts `n` redis-servers and `n` agents in `dir` (`customize` may change each agent's
    /// config, e.g. `max_lag_bytes`); returns once every agent runs (not yet elected).
    pub fn start(
        dir: &Path,
        n: usize,
        agent_exe: &Path,
        customize: impl Fn(usize, &mut crate::agents::AgentConfig),
    ) -> Result<ManagedRedis, TestkitError> {
        use quorate::config::{CheckSection, RedisSection, RoleSection};
        std::fs::create_dir_all(dir)
            .map_err(|e| TestkitError::io(format!("creating {}", dir.display()), &e))?;
        let plan = crate::agents::LoopbackPlan::new("quorate-redis", n, dir)
            .map_err(|e| TestkitError::io("planning the cluster", &e))?;
        let mut servers = Vec::new();
        for i in 0..n {
            let port = crate::process::free_port()?;
            servers.push(RedisServer::start(
                &dir.join(format!("redis-{}", plan.names[i])),
                port,
                &[],
            )?);
        }
        let sentinel_ports = (0..n)
            .map(|_| crate::process::free_port())
            .collect::<Result<Vec<_>, _>>()?;
        let map: std::collections::BTreeMap<String, String> = plan
            .names
            .iter()
            .cloned()
            .zip(servers.iter().map(RedisServer::addr))
            .collect();
        let mut configs = Vec::new();
        for i in 0..n {
            let (map, servers, sentinel_ports) = (&map, &servers, &sentinel_ports);
            let path = crate::agents::write_config(&plan, i, dir, |c| {
                c.roles.push(RoleSection::named(MANAGED_ROLE));
                c.checks.push(CheckSection {
                    id: "redis".to_owned(),
                    kind: "redis".to_owned(),
                    target: format!("redis://{}", servers[i].addr()),
                    interval: Duration::from_millis(500),
                    timeout: Duration::from_millis(400),
                    critical: true,
                });
                c.redis = Some(RedisSection {
                    role: MANAGED_ROLE.to_owned(),
                    servers: map.clone(),
                    password_file: None,
                    max_lag_bytes: None,
                    min_replicas_to_write: None,
                    min_replicas_max_lag: None,
                    sentinel_listen: Some(format!("127.0.0.1:{}", sentinel_ports[i])),
                    sentinel_master_name: Some("mymaster".to_owned()),
                    poll_interval: None,
                    command_timeout: None,
                });
                customize(i, c);
            })?;
            configs.push(path);
        }
        let mut m = ManagedRedis {
            names: plan.names.clone(),
            servers,
            sentinel_ports,
            agent_exe: agent_exe.to_path_buf(),
            configs,
            dir: dir.to_path_buf(),
            agents: (0..n).map(|_| None).collect(),
        };
        for i in 0..n {
            m.start_agent(i)?;
        }
        Ok(m)
    }

    /// Starts node `i`'s agent (again).
    pub fn start_agent(&mut self, i: usize) -> Result<(), TestkitError> {
        self.kill_agent(i);
        let log = |what: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(format!("{}.{what}", self.names[i])))
                .map_err(|e| TestkitError::io("opening an agent log", &e))
        };
        let child = Command::new(&self.agent_exe)
            .arg("agent")
            .arg("--config")
            .arg(&self.configs[i])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log("events")?)
            .stderr(log("log")?)
            .spawn()
            .map_err(|e| TestkitError::io(format!("starting {}", self.agent_exe.display()), &e))?;
        self.agents[i] = Some(child);
        Ok(())
    }

    /// `kill -9` of node `i`'s agent (its Redis keeps running).
    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut c) = self.agents[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `SIGTERM` of node `i`'s agent (a graceful stop: it hands the role over), reaped
    /// within `wait` (then killed).
    pub fn stop_agent(&mut self, i: usize, wait: Duration) {
        if let Some(mut c) = self.agents[i].take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + wait;
            while Instant::now() < deadline {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `kill -9` of node `i`: its agent and its Redis server.
    pub fn kill_node(&mut self, i: usize) {
        self.kill_agent(i);
        self.servers[i].kill();
    }

    /// Restarts node `i`'s Redis server (empty: no persistence) and agent.
    pub fn restart_node(&mut self, i: usize) -> Result<(), TestkitError> {
        self.servers[i].restart()?;
        self.start_agent(i)
    }

    /// The agent log of node `i` (stderr).
    pub fn agent_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.names[i]))).unwrap_or_default()
    }
}

impl Drop for ManagedRedis {
    fn drop(&mut self) {
        for i in 0..self.agents.len() {
            self.kill_agent(i);
        }
    }
}
