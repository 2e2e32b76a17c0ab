//! Real etcd clusters for tests, examples and `cargo xtask bench`: [`EtcdCluster::start`]
//! runs 1 or 3 (or more) `etcd` processes (Debian package `etcd-server`) on free loopback
//! ports in a temporary directory, waits until every member answers and a leader exists, and
//! kills and reaps them when dropped.
//!
//! ```no_run
//! use quorate_testkit::etcd::{EtcdCluster, EtcdClusterConfig};
//! # async fn demo() -> Result<(), quorate_testkit::TestkitError> {
//! let cluster = EtcdCluster::start(EtcdClusterConfig::members(3)).await?;
//! let coord = cluster.coord(0)?; // prefers member 0, fails over to the others
//! # drop(coord); Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

use crate::TestkitError;
use crate::process::free_port;
use quorate_etcd::{EtcdConfig, EtcdCoord, TlsConfig};

/// Environment variable naming the etcd binary (default: `etcd` on `PATH`).
pub const ETCD_BIN_ENV: &str = "QUORATE_ETCD_BIN";

/// How to start a test cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdClusterConfig {
    /// Number of members (1 or 3 usually).
    pub members: usize,
    /// etcd `--heartbeat-interval` (etcd default 100 ms).
    pub heartbeat: Duration,
    /// etcd `--election-timeout` (etcd default 1000 ms).
    pub election: Duration,
    /// The etcd binary.
    pub binary: PathBuf,
    /// How long to wait for the cluster to become healthy.
    pub start_timeout: Duration,
    /// Serve clients over TLS with client-certificate authentication (needs the `tls`
    /// feature; peers still talk plain HTTP on loopback). See [`make_test_certs`].
    pub tls: Option<TestTls>,
}

/// Certificates for a TLS test cluster: a CA, a server certificate for 127.0.0.1 and a client
/// certificate, all PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestTls {
    /// The CA that signed both certificates.
    pub ca_pem: PathBuf,
    /// The server certificate (SAN IP 127.0.0.1).
    pub server_cert_pem: PathBuf,
    /// Its key.
    pub server_key_pem: PathBuf,
    /// The client certificate.
    pub client_cert_pem: PathBuf,
    /// Its key.
    pub client_key_pem: PathBuf,
}

impl TestTls {
    /// The client side of these certificates.
    pub fn client_config(&self) -> TlsConfig {
        TlsConfig {
            ca_cert_pem: Some(self.ca_pem.clone()),
            client_cert_pem: Some(self.client_cert_pem.clone()),
            client_key_pem: Some(self.client_key_pem.clone()),
            domain: None,
        }
    }
}

/// Makes a throw-away CA, server and client certificate in `dir` with the `openssl` command
/// (Debian package `openssl`), valid for one day.
pub fn make_test_certs(dir: &Path) -> Result<TestTls, TestkitError> {
    let run = |args: &[&str]| -> Result<(), TestkitError> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|e| TestkitError::Io {
                what: "run openssl to make test certificates (install the Debian package openssl)"
                    .into(),
                reason: e.to_string(),
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(TestkitError::Io {
                what: format!("openssl {}", args.join(" ")),
                reason: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=quorate-test-ca",
    ]);
    run(&args)?;
    for (name, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
        let ext = format!("{name}.ext");
        std::fs::write(
            dir.join(&ext),
            format!("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\n"),
        )
        .map_err(|e| TestkitError::io("write an openssl extension file", &e))?;
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=127.0.0.1"]);
        run(&args)?;
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "1",
            "-extfile",
            &ext,
        ])?;
    }
    Ok(TestTls {
        ca_pem: dir.join("ca.pem"),
        server_cert_pem: dir.join("server.pem"),
        server_key_pem: dir.join("server.key"),
        client_cert_pem: dir.join("client.pem"),
        client_key_pem: dir.join("client.key"),
    })
}

impl EtcdClusterConfig {
    /// `members` members with etcd's default timings (heartbeat 100 ms, election 1000 ms),
    /// the binary from [`ETCD_BIN_ENV`] or `etcd`, 30 s to start.
    pub fn members(members: usize) -> EtcdClusterConfig {
        EtcdClusterConfig {
            members,
            heartbeat: Duration::from_millis(100),
            election: Duration::from_millis(1000),
            binary: std::env::var_os(ETCD_BIN_ENV)
                .map_or_else(|| PathBuf::from("etcd"), PathBuf::from),
            start_timeout: Duration::from_secs(30),
            tls: None,
        }
    }

    /// The shortest lease TTL etcd grants with these timings: `1.5 x election`, rounded up
    /// to whole seconds (etcd counts TTLs in seconds).
    pub fn lease_ttl_min(&self) -> Duration {
        let ms = self.election.as_millis().saturating_mul(3) / 2;
        let secs = u64::try_from(ms.div_ceil(1000)).unwrap_or(u64::MAX).max(1);
        Duration::from_secs(secs)
    }
}

/// One member process.
struct Member {
    name: String,
    client_url: String,
    peer_url: String,
    data_dir: PathBuf,
    log: PathBuf,
    /// The initial cluster it was started with.
    initial_cluster: String,
    state: &'static str,
    child: Option<Child>,
}

/// A member reserved by [`EtcdCluster::reserve_member`], to be added with `add_learner`
/// (its `peer_url`) and then started with [`EtcdCluster::start_reserved`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservedMember {
    /// The member name (`--name`).
    pub name: String,
    /// Its peer URL: give this to `add_learner`.
    pub peer_url: String,
    /// Its client URL.
    pub client_url: String,
}

/// A running etcd cluster; dropping it kills every member and deletes its files.
pub struct EtcdCluster {
    config: EtcdClusterConfig,
    members: Vec<Member>,
    token: String,
    // Dropped last: the members are killed before their directories go.
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for EtcdCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCluster")
            .field("dir", &self.dir.path())
            .field("client_urls", &self.client_urls())
            .finish_non_exhaustive()
    }
}

/// Fails with [`TestkitError::EtcdMissing`] unless `binary` can be run.
pub fn check_binary(binary: &Path) -> Result<(), TestkitError> {
    let found = if binary.components().count() > 1 {
        binary.is_file()
    } else {
        std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|p| p.join(binary).is_file()))
            .unwrap_or(false)
    };
    if found {
        Ok(())
    } else {
        Err(TestkitError::EtcdMissing {
            binary: binary.to_owned(),
            reason: "not an existing file, and not found on PATH".into(),
        })
    }
}

/// Whether the etcd binary of [`EtcdClusterConfig::members`] is installed.
pub fn etcd_available() -> bool {
    check_binary(&EtcdClusterConfig::members(1).binary).is_ok()
}

impl EtcdCluster {
    /// Starts the cluster and waits until it is healthy. Fails with
    /// [`TestkitError::EtcdMissing`] if `etcd` is not installed.
    pub async fn start(config: EtcdClusterConfig) -> Result<EtcdCluster, TestkitError> {
        check_binary(&config.binary)?;
        if config.members == 0 {
            return Err(TestkitError::Config {
                problems: vec!["a test cluster needs at least one member".into()],
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("quorate-etcd-")
            .tempdir()
            .map_err(|e| TestkitError::io("create a temporary directory", &e))?;
        let token = format!(
            "quorate-test-{}-{}",
            std::process::id(),
            dir.path()
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        );
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut members = Vec::with_capacity(config.members);
        for i in 0..config.members {
            let name = format!("etcd-{i}");
            members.push(Member {
                client_url: format!("{scheme}://127.0.0.1:{}", free_port()?),
                peer_url: format!("http://127.0.0.1:{}", free_port()?),
                data_dir: dir.path().join(&name),
                log: dir.path().join(format!("{name}.log")),
                name,
                initial_cluster: String::new(),
                state: "new",
                child: None,
            });
        }
        let initial = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.initial_cluster = initial.clone();
        }
        let mut cluster = EtcdCluster {
            config,
            members,
            token,
            dir,
        };
        for i in 0..cluster.members.len() {
            cluster.spawn(i)?;
        }
        cluster.wait_healthy().await?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> Result<(), TestkitError> {
        let heartbeat = self.config.heartbeat.as_millis().to_string();
        let election = self.config.election.as_millis().to_string();
        let binary = self.config.binary.clone();
        let token = self.token.clone();
        let tls_args: Vec<std::ffi::OsString> = match &self.config.tls {
            Some(t) => vec![
                "--cert-file".into(),
                t.server_cert_pem.clone().into_os_string(),
                "--key-file".into(),
                t.server_key_pem.clone().into_os_string(),
                "--trusted-ca-file".into(),
                t.ca_pem.clone().into_os_string(),
                "--client-cert-auth".into(),
            ],
            None => Vec::new(),
        };
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .map_err(|e| TestkitError::io(format!("open {:?}", m.log), &e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| TestkitError::io(format!("open {:?}", m.log), &e))?;
        let child = Command::new(&binary)
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .arg("--listen-client-urls")
            .arg(&m.client_url)
            .arg("--advertise-client-urls")
            .arg(&m.client_url)
            .arg("--listen-peer-urls")
            .arg(&m.peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&m.peer_url)
            .arg("--initial-cluster")
            .arg(&m.initial_cluster)
            .arg("--initial-cluster-state")
            .arg(m.state)
            .arg("--initial-cluster-token")
            .arg(&token)
            .arg("--heartbeat-interval")
            .arg(&heartbeat)
            .arg("--election-timeout")
            .arg(&election)
            .args(tls_args.iter())
            .arg("--logger")
            .arg("zap")
            .arg("--log-outputs")
            .arg("stderr")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => TestkitError::EtcdMissing {
                    binary: binary.clone(),
                    reason: e.to_string(),
                },
                _ => TestkitError::io(format!("start {binary:?}"), &e),
            })?;
        m.child = Some(child);
        Ok(())
    }

    /// Waits until every running member answers a status call and reports a leader.
    pub async fn wait_healthy(&mut self) -> Result<(), TestkitError> {
        let deadline = tokio::time::Instant::now() + self.config.start_timeout;
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                continue;
            }
            loop {
                if let Some(child) = self.members[i].child.as_mut()
                    && let Ok(Some(exit)) = child.try_wait()
                {
                    return Err(self.not_healthy(i, format!("the process exited ({exit})")));
                }
                let options = self.connect_options()?;
                let m = &self.members[i];
                let last = match member_status(m, options).await {
                    Ok(leader) if leader != 0 => break,
                    Ok(_) => "no leader yet".to_owned(),
                    Err(e) => e,
                };
                if tokio::time::Instant::now() >= deadline {
                    return Err(self.not_healthy(i, last));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    fn not_healthy(&self, i: usize, last: String) -> TestkitError {
        let m = &self.members[i];
        let tail = std::fs::read_to_string(&m.log)
            .map(|s| {
                let lines: Vec<&str> = s.lines().collect();
                lines[lines.len().saturating_sub(5)..].join("\n")
            })
            .unwrap_or_default();
        TestkitError::NotHealthy {
            member: m.name.clone(),
            waited: self.config.start_timeout,
            last: format!("{last}; log tail:\n{tail}"),
            log: m.log.clone(),
        }
    }

    /// The number of members (running or killed).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no members (never: `start` refuses zero).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The start configuration.
    pub fn cluster_config(&self) -> &EtcdClusterConfig {
        &self.config
    }

    /// Client URLs of all members, in member order.
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Member names, in member order.
    pub fn names(&self) -> Vec<String> {
        self.members.iter().map(|m| m.name.clone()).collect()
    }

    /// An [`EtcdConfig`] for this cluster preferring member `first`, with the minimum lease
    /// TTL that matches the cluster's election timeout.
    pub fn etcd_config(&self, first: usize) -> EtcdConfig {
        let mut c = EtcdConfig::etcd_defaults(self.client_urls()).rotated(first);
        c.lease_ttl_min = self.config.lease_ttl_min();
        c.tls = self.config.tls.as_ref().map(TestTls::client_config);
        c
    }

    /// Options for a raw etcd-client connection to this cluster (TLS if it serves TLS).
    pub fn connect_options(&self) -> Result<Option<ConnectOptions>, TestkitError> {
        match &self.config.tls {
            None => Ok(None),
            Some(t) => Ok(Some(
                ConnectOptions::new().with_tls(quorate_etcd::tls_options(&t.client_config())?),
            )),
        }
    }

    /// A client preferring member `first`.
    pub fn coord(&self, first: usize) -> Result<EtcdCoord, TestkitError> {
        Ok(EtcdCoord::new(self.etcd_config(first))?)
    }

    /// One client per member (client `i` prefers member `i`), sharing their lease memory.
    pub fn coords(&self) -> Result<Vec<EtcdCoord>, TestkitError> {
        let first = self.coord(0)?;
        let mut all = vec![first.clone()];
        for i in 1..self.members.len() {
            all.push(first.sibling(self.etcd_config(i))?);
        }
        Ok(all)
    }

    /// The process id of member `i`, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members.get(i)?.child.as_ref().map(Child::id)
    }

    /// Peak resident memory of member `i` in KiB (`VmHWM` of `/proc/PID/status`).
    pub fn peak_rss_kib(&self, i: usize) -> Option<u64> {
        peak_rss_kib(self.pid(i)?)
    }

    /// The index of the member the running members agree leads, if any.
    pub async fn leader(&self) -> Option<usize> {
        let options = self.connect_options().ok()?;
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let connect = Client::connect([m.client_url.as_str()], options.clone());
            let Ok(Ok(mut client)) = tokio::time::timeout(Duration::from_secs(2), connect).await
            else {
                continue;
            };
            let Ok(Ok(status)) =
                tokio::time::timeout(Duration::from_secs(2), client.status()).await
            else {
                continue;
            };
            let Ok(Ok(list)) =
                tokio::time::timeout(Duration::from_secs(2), client.member_list()).await
            else {
                continue;
            };
            let name = list
                .members()
                .iter()
                .find(|x| x.id() == status.leader())
                .map(|x| x.name().to_owned())?;
            return self.members.iter().position(|x| x.name == name);
        }
        None
    }

    /// Kills member `i` with SIGKILL and reaps it. Its data stays for [`EtcdCluster::restart`].
    pub fn kill(&mut self, i: usize) -> Result<(), TestkitError> {
        if let Some(mut child) = self.members.get_mut(i).and_then(|m| m.child.take()) {
            child
                .kill()
                .map_err(|e| TestkitError::io("kill an etcd member", &e))?;
            child
                .wait()
                .map_err(|e| TestkitError::io("reap an etcd member", &e))?;
        }
        Ok(())
    }

    /// Restarts a killed member `i` on its data directory and waits until it is healthy.
    pub async fn restart(&mut self, i: usize) -> Result<(), TestkitError> {
        if self.members.get(i).is_some_and(|m| m.child.is_none()) {
            self.spawn(i)?;
        }
        self.wait_healthy().await
    }

    /// Reserves ports and a name for a member to add: call `add_learner(name, peer_url)`,
    /// then [`EtcdCluster::start_reserved`].
    pub fn reserve_member(&self) -> Result<ReservedMember, TestkitError> {
        let name = format!("etcd-{}", self.members.len());
        Ok(ReservedMember {
            name,
            peer_url: format!("http://127.0.0.1:{}", free_port()?),
            client_url: format!(
                "{}://127.0.0.1:{}",
                if self.config.tls.is_some() {
                    "https"
                } else {
                    "http"
                },
                free_port()?
            ),
        })
    }

    /// Starts a reserved member that was added to the cluster, joining the existing cluster,
    /// and waits until it answers. Returns its member index.
    pub async fn start_reserved(&mut self, r: ReservedMember) -> Result<usize, TestkitError> {
        let mut initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect();
        initial.push(format!("{}={}", r.name, r.peer_url));
        self.members.push(Member {
            data_dir: self.dir.path().join(&r.name),
            log: self.dir.path().join(format!("{}.log", r.name)),
            name: r.name,
            client_url: r.client_url,
            peer_url: r.peer_url,
            initial_cluster: initial.join(","),
            state: "existing",
            child: None,
        });
        let i = self.members.len() - 1;
        self.spawn(i)?;
        self.wait_healthy().await?;
        Ok(i)
    }

    /// Kills member `i` and forgets it (after `remove_node`).
    pub fn forget(&mut self, i: usize) -> Result<(), TestkitError> {
        self.kill(i)?;
        if i < self.members.len() {
            self.members.remove(i);
        }
        Ok(())
    }

    /// The log file of member `i`.
    pub fn log_path(&self, i: usize) -> Option<PathBuf> {
        self.members.get(i).map(|m| m.log.clone())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Asks the member at `url` for its status; returns the leader it knows (0 = none). Fails
/// unless the member answering there is `m` itself (its name and peer URL): a port taken by
/// another test's etcd must not pass for ours (ours would then have died on "address in use").
async fn member_status(m: &Member, options: Option<ConnectOptions>) -> Result<u64, String> {
    let url = m.client_url.as_str();
    let connect = Client::connect([url], options);
    let mut client = match tokio::time::timeout(Duration::from_secs(2), connect).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("connect timed out".into()),
    };
    let status = match tokio::time::timeout(Duration::from_secs(2), client.status()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("status timed out".into()),
    };
    let list = match tokio::time::timeout(Duration::from_secs(2), client.member_list()).await {
        Ok(Ok(l)) => l,
        // A learner serves no member list; it answers at all only once it joined the
        // cluster it was added to (ours, on our reserved peer port).
        Ok(Err(e)) if e.to_string().contains("not supported for learner") => {
            return Ok(status.leader());
        }
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("member list timed out".into()),
    };
    let me = status.header().map(|h| h.member_id());
    let answering = list
        .members()
        .iter()
        .find(|x| Some(x.id()) == me)
        .map(|x| (x.name().to_owned(), x.peer_urls().to_vec()));
    match answering {
        Some((n, peers)) if n == m.name && peers.contains(&m.peer_url) => Ok(status.leader()),
        Some((n, _)) if n.is_empty() => Err("the member has not published its name yet".into()),
        other => Err(format!(
            "{url} is answered by {other:?}, a member of another cluster, not by {} ({})",
            m.name, m.peer_url
        )),
    }
}

pub use crate::process::peak_rss_kib;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_is_a_clear_error() {
        let err = check_binary(Path::new("/nonexistent/etcd")).expect_err("missing");
        assert!(matches!(err, TestkitError::EtcdMissing { .. }));
        assert!(
            err.to_string().contains("apt-get install etcd-server"),
            "{err}"
        );
        let err = check_binary(Path::new("no-such-etcd-binary-here")).expect_err("missing");
        assert!(matches!(err, TestkitError::EtcdMissing { .. }));
    }

    #[test]
    fn lease_ttl_min_follows_the_election_timeout() {
        let mut c = EtcdClusterConfig::members(1);
        assert_eq!(c.lease_ttl_min(), Duration::from_secs(2));
        c.election = Duration::from_millis(500);
        assert_eq!(c.lease_ttl_min(), Duration::from_secs(1));
    }
}
