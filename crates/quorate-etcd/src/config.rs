//! How [`EtcdCoord`](crate::EtcdCoord) reaches etcd: endpoints (tried in order, with failover),
//! credentials, TLS, timeouts, retry and size limits, and the key layout of locks and elections.

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use crate::error::EtcdError;

/// User name and password for etcd's authentication (`etcdctl user add`, `auth enable`).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The etcd user.
    pub user: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// TLS to etcd's client port. Needs the crate feature `tls` (rustls through tonic) and
/// `https://` endpoints; without the feature a config carrying it is rejected by
/// [`EtcdConfig::validate`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM file of the CA that signed etcd's server certificate (`--trusted-ca-file` of the
    /// server side). `None` = the system roots are not loaded; give a CA.
    pub ca_cert_pem: Option<PathBuf>,
    /// PEM file of this client's certificate, for etcd's `--client-cert-auth`.
    pub client_cert_pem: Option<PathBuf>,
    /// PEM file of this client's private key (with `client_cert_pem`).
    pub client_key_pem: Option<PathBuf>,
    /// The name to verify in the server certificate, if not the endpoint's host.
    pub domain: Option<String>,
}

/// Configuration of an [`EtcdCoord`](crate::EtcdCoord).
///
/// Build it with [`EtcdConfig::etcd_defaults`] (limits matching an etcd 3.4 server started
/// with its defaults) and adjust fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs of etcd members (`http://127.0.0.1:2379`). The first is preferred; a call
    /// that cannot reach one moves on to the next, and the client stays on the one that
    /// answered.
    pub endpoints: Vec<String>,
    /// etcd user and password, if etcd has authentication enabled.
    pub credentials: Option<Credentials>,
    /// TLS settings (feature `tls`), if the endpoints are `https://`.
    pub tls: Option<TlsConfig>,
    /// How long one attempt of one call may take before it counts as timed out (for writes:
    /// unknown outcome).
    pub request_timeout: Duration,
    /// How long connecting to one endpoint may take.
    pub connect_timeout: Duration,
    /// The most attempts of one call over the endpoints (a call that could not reach an
    /// endpoint, or that is safe to repeat, moves to the next one).
    pub attempts_max: NonZeroU32,
    /// Pause between two rounds over all endpoints.
    pub retry_backoff: Duration,
    /// Send etcd's `hasleader` metadata: a member without a leader refuses at once ("no
    /// leader", mapped to `NoQuorum`) instead of queueing the request, and cancels watches.
    pub require_leader: bool,
    /// Keys of locks and elections are `<lock_prefix><name>/<lease in hex>` (etcd's own
    /// lock and election layout, so `etcdctl lock` on the same name queues in the same line).
    pub lock_prefix: String,
    /// Election keys are `<election_prefix><name>/<lease in hex>`.
    pub election_prefix: String,
    /// Keys under this prefix may only be written through lock/campaign (puts, deletes and
    /// transaction writes there are refused with `InvalidArgument`). Must contain
    /// `lock_prefix` and `election_prefix`.
    pub reserved_prefix: String,
    /// The most waiters of one lock or election this client reads at once.
    pub queue_keys_max: NonZeroU32,
    /// HTTP/2 keep-alive ping interval on connections with open streams (watches), to notice a
    /// dead member. Keep it at or above etcd's `--grpc-keepalive-min-time` (5 s by default), or
    /// etcd closes the connection for pinging too often.
    pub keep_alive_interval: Duration,
    /// How many times a watch re-opens on another endpoint after its stream broke, before it
    /// ends with an error.
    pub watch_reconnects_max: u32,
    /// The shortest lease TTL etcd grants: `ceil(1.5 x election timeout)` of the server
    /// (2 s with etcd's defaults of 100 ms heartbeat and 1000 ms election). Shorter requests
    /// are refused here rather than silently lengthened by etcd.
    pub lease_ttl_min: Duration,
    /// The longest lease TTL (etcd's `MaxLeaseTTL` is 9,000,000,000 s).
    pub lease_ttl_max: Duration,
    /// How long past its TTL an unrenewed lease may still exist: etcd's expiry loop runs every
    /// 500 ms and the revoke is one more commit.
    pub lease_expiry_slack: Duration,
    /// The largest value (etcd's `--max-request-bytes` is 1.5 MiB for the whole request).
    pub value_bytes_max: usize,
    /// The longest key.
    pub key_bytes_max: usize,
    /// The most compares plus operations in one transaction (etcd's `--max-txn-ops` is 128
    /// per list; this client bounds their sum).
    pub txn_ops_max: usize,
    /// The most keys one range read returns.
    pub range_keys_max: usize,
    /// The most leases whose end this client remembers, to answer `LeaseExpired` rather than
    /// `LeaseNotFound` for a lease it granted.
    pub leases_remembered: NonZeroUsize,
}

impl EtcdConfig {
    /// Limits and timeouts matching an etcd 3.4 server with default flags: 2 s minimum TTL
    /// (from the 1000 ms election timeout), 1 MiB values (under the 1.5 MiB request limit),
    /// 128 transaction operations. Timeouts: 5 s per attempt (etcd's own request timeout is
    /// 5 s plus the election time), 3 s to connect, 6 attempts (two rounds over three members).
    pub fn etcd_defaults<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> EtcdConfig {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            credentials: None,
            tls: None,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            attempts_max: NonZeroU32::new(6).unwrap_or(NonZeroU32::MIN),
            retry_backoff: Duration::from_millis(100),
            require_leader: true,
            lock_prefix: "__quorate/lock/".into(),
            election_prefix: "__quorate/election/".into(),
            reserved_prefix: "__quorate/".into(),
            queue_keys_max: NonZeroU32::new(1024).unwrap_or(NonZeroU32::MIN),
            keep_alive_interval: Duration::from_secs(10),
            watch_reconnects_max: 8,
            lease_ttl_min: Duration::from_secs(2),
            lease_ttl_max: Duration::from_secs(9_000_000_000),
            lease_expiry_slack: Duration::from_secs(2),
            value_bytes_max: 1024 * 1024,
            key_bytes_max: 4096,
            txn_ops_max: 128,
            range_keys_max: 10_000,
            leases_remembered: NonZeroUsize::new(4096).unwrap_or(NonZeroUsize::MIN),
        }
    }

    /// The same endpoints in another order, `first` leading (so several clients of one
    /// cluster can prefer different members).
    pub fn rotated(&self, first: usize) -> EtcdConfig {
        let mut c = self.clone();
        if !c.endpoints.is_empty() {
            let n = first % c.endpoints.len();
            c.endpoints.rotate_left(n);
        }
        c
    }

    /// Checks every field and reports every problem at once.
    pub fn validate(&self) -> Result<(), EtcdError> {
        // (Insecure combinations are refused: tls with a plain http endpoint, and credentials
        // sent in clear to anything but loopback.)
        let mut problems = Vec::new();
        if self.endpoints.is_empty() {
            problems.push(
                "endpoints is empty: give at least one etcd client URL, e.g. http://127.0.0.1:2379"
                    .to_owned(),
            );
        }
        for e in &self.endpoints {
            let ok = e.starts_with("http://") || e.starts_with("https://");
            if !ok {
                problems.push(format!(
                    "endpoint {e:?} has no scheme: write http://host:port or https://host:port"
                ));
            }
            if e.starts_with("https://") && self.tls.is_none() {
                problems.push(format!(
                    "endpoint {e:?} is https but tls is not set: set tls"
                ));
            }
            if let Some(rest) = e.strip_prefix("http://") {
                if self.tls.is_some() {
                    problems.push(format!(
                        "endpoint {e:?} is plain http but tls is set: the connection would not be encrypted; write https://"
                    ));
                }
                if self.credentials.is_some() && !is_loopback_authority(rest) {
                    problems.push(format!(
                        "endpoint {e:?} is plain http and credentials are set: the password would cross the network in clear; use https:// with tls (plain http is allowed for credentials only on loopback)"
                    ));
                }
            }
        }
        if self.tls.is_some() && !cfg!(feature = "tls") {
            problems.push(
                "tls is set but quorate-etcd was built without the `tls` feature: enable it"
                    .to_owned(),
            );
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            problems.push("request_timeout and connect_timeout must be above zero".to_owned());
        }
        if self.keep_alive_interval < Duration::from_secs(5) {
            problems.push(format!(
                "keep_alive_interval = {:?} is below etcd's default --grpc-keepalive-min-time of 5 s: etcd would close the connection",
                self.keep_alive_interval
            ));
        }
        for (name, p) in [
            ("lock_prefix", &self.lock_prefix),
            ("election_prefix", &self.election_prefix),
        ] {
            if p.is_empty() || !p.ends_with('/') {
                problems.push(format!("{name} = {p:?} must be non-empty and end with '/'"));
            }
            if !p.starts_with(self.reserved_prefix.as_str()) {
                problems.push(format!(
                    "{name} = {p:?} must start with reserved_prefix = {:?}",
                    self.reserved_prefix
                ));
            }
        }
        if self.lock_prefix.starts_with(&self.election_prefix)
            || self.election_prefix.starts_with(&self.lock_prefix)
        {
            problems.push("lock_prefix and election_prefix must not contain each other".to_owned());
        }
        if self.lease_ttl_min < Duration::from_secs(1) || self.lease_ttl_min > self.lease_ttl_max {
            problems.push(format!(
                "lease_ttl_min = {:?} must be at least 1 s (etcd counts TTLs in seconds) and at most lease_ttl_max = {:?}",
                self.lease_ttl_min, self.lease_ttl_max
            ));
        }
        if self.value_bytes_max == 0
            || self.key_bytes_max == 0
            || self.txn_ops_max == 0
            || self.range_keys_max == 0
        {
            problems.push(
                "value_bytes_max, key_bytes_max, txn_ops_max and range_keys_max must be above zero"
                    .to_owned(),
            );
        }
        if let Some(tls) = &self.tls
            && tls.client_cert_pem.is_some() != tls.client_key_pem.is_some()
        {
            problems
                .push("tls: give both client_cert_pem and client_key_pem, or neither".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(EtcdError::Config { problems })
        }
    }
}

/// Whether the host of `authority` (`host:port/...`) is loopback: `localhost`, 127.0.0.0/8
/// or `[::1]`.
fn is_loopback_authority(authority: &str) -> bool {
    let hostport = authority.split('/').next().unwrap_or("");
    let host = match hostport.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => hostport.rsplit_once(':').map_or(hostport, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_every_problem_is_reported() {
        let ok = EtcdConfig::etcd_defaults(["http://127.0.0.1:2379"]);
        assert_eq!(ok.validate(), Ok(()));
        let mut bad = EtcdConfig::etcd_defaults(Vec::<String>::new());
        bad.lock_prefix = "locks".into();
        bad.lease_ttl_min = Duration::from_millis(10);
        let Err(EtcdError::Config { problems }) = bad.validate() else {
            panic!("expected a config error");
        };
        assert_eq!(problems.len(), 4, "{problems:?}");
    }

    #[test]
    fn rotated_moves_the_preferred_endpoint_first() {
        let c = EtcdConfig::etcd_defaults(["http://a:1", "http://b:2", "http://c:3"]);
        assert_eq!(
            c.rotated(1).endpoints,
            ["http://b:2", "http://c:3", "http://a:1"]
        );
        assert_eq!(c.rotated(3).endpoints, c.endpoints);
    }

    #[test]
    fn insecure_combinations_are_refused() {
        let creds = Credentials {
            user: "root".into(),
            password: "hunter2".into(),
        };
        let mut c = EtcdConfig::etcd_defaults(["http://10.0.0.5:2379"]);
        c.credentials = Some(creds.clone());
        let err = c.validate().expect_err("refused").to_string();
        assert!(
            err.contains("password would cross the network in clear"),
            "{err}"
        );
        let mut c = EtcdConfig::etcd_defaults([
            "http://127.0.0.1:2379",
            "http://localhost:2379",
            "http://[::1]:2379",
        ]);
        c.credentials = Some(creds);
        assert!(c.validate().is_ok(), "loopback is allowed");
        let mut c = EtcdConfig::etcd_defaults(["http://127.0.0.1:2379"]);
        c.tls = Some(TlsConfig::default());
        let err = c.validate().expect_err("refused").to_string();
        assert!(err.contains("plain http but tls is set"), "{err}");
    }

    #[test]
    fn credentials_do_not_print_the_password() {
        let c = Credentials {
            user: "root".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
