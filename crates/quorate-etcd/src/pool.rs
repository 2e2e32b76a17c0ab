//! Connections to the etcd endpoints, failover between them, and the mapping of etcd and gRPC
//! errors onto [`CoordError`].
//!
//! One `etcd_client::Client` per endpoint (each a single-endpoint channel, connected lazily),
//! not one balanced channel over all: tonic's balancer waits for a ready endpoint and cannot
//! say whether a failed request was sent, and the mapping below needs exactly that. A call
//! goes to the preferred endpoint; when it cannot reach it (the request was never sent) it
//! moves to the next one, and so may a call that is safe to repeat (reads, keep-alives,
//! status). A write whose request may have reached etcd is never repeated: it fails with
//! `Timeout` (unknown outcome).

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use etcd_client::{Client, ConnectOptions};
use quorate_coord_api::CoordError;

use crate::config::EtcdConfig;

/// The gRPC status codes etcd answers with (numbers from the gRPC spec; tonic's own enum is
/// not re-exported by etcd-client).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Code {
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Internal,
    Unavailable,
    Unauthenticated,
    Other(i32),
}

impl Code {
    fn from_i32(n: i32) -> Code {
        match n {
            1 => Code::Cancelled,
            2 => Code::Unknown,
            3 => Code::InvalidArgument,
            4 => Code::DeadlineExceeded,
            5 => Code::NotFound,
            7 => Code::PermissionDenied,
            8 => Code::ResourceExhausted,
            9 => Code::FailedPrecondition,
            10 => Code::Aborted,
            11 => Code::OutOfRange,
            13 => Code::Internal,
            14 => Code::Unavailable,
            16 => Code::Unauthenticated,
            n => Code::Other(n),
        }
    }
}

/// Whether a call may be repeated after an ambiguous failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Repeat {
    /// Reads, keep-alives, status: repeating changes nothing.
    Safe,
    /// Writes: repeat only if the request certainly did not reach etcd.
    IfNotSent,
}

/// How a failed attempt is handled.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Failed {
    /// The request did not reach etcd (connect failed) or was refused before it did anything
    /// ("no leader" under `require_leader`, "too many requests"): try another endpoint.
    NotSent(CoordError),
    /// The request may have been applied (the connection broke, etcd timed out, the leader
    /// changed): repeat only a `Repeat::Safe` call.
    Ambiguous(CoordError),
    /// A definite answer: return it.
    Final(CoordError),
}

/// etcd said "lease not found"; the caller, which knows the lease, replaces this with
/// `LeaseNotFound` or `LeaseExpired` for the right id (see `LeaseBook::missing`).
pub(crate) const LEASE_MISSING: CoordError = CoordError::LeaseNotFound {
    id: quorate_coord_api::LeaseId(0),
};

/// Maps an etcd-client error. `what` names the call for messages.
pub(crate) fn classify(what: &str, e: &etcd_client::Error) -> Failed {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(status) => classify_status(
            what,
            Code::from_i32(i32::from(status.code())),
            status.message(),
        ),
        E::TransportError(t) => Failed::NotSent(unavailable(what, &t.to_string())),
        E::InvalidArgs(_) | E::InvalidUri(_) => {
            Failed::Final(CoordError::invalid(format!("{what}: {e}")))
        }
        E::LeaseKeepAliveError(m) if m.contains("not found") => Failed::Final(LEASE_MISSING),
        E::IoError(_) | E::WatchError(_) | E::LeaseKeepAliveError(_) => {
            Failed::Ambiguous(timeout(what, &e.to_string()))
        }
        _ => Failed::Final(CoordError::Internal {
            reason: format!("{what}: etcd client error: {e}"),
        }),
    }
}

fn unavailable(what: &str, detail: &str) -> CoordError {
    CoordError::Unavailable {
        reason: format!(
            "{what}: cannot reach etcd ({detail}); check that etcd runs and the endpoints are right"
        ),
    }
}

fn timeout(what: &str, detail: &str) -> CoordError {
    CoordError::Timeout {
        what: format!("{what} ({detail})"),
    }
}

/// Whether a gRPC status message says the connection was never made.
fn is_connect_failure(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("tcp connect error")
        || m.contains("error trying to connect")
        || m.contains("connection refused")
        || m.contains("dns error")
        || m.contains("service was not ready")
}

/// Maps a gRPC status from etcd (`rpctypes` in etcd's source name these messages).
pub(crate) fn classify_status(what: &str, code: Code, message: &str) -> Failed {
    let m = message;
    match code {
        Code::Unavailable => {
            if m.contains("no leader") {
                Failed::NotSent(CoordError::NoQuorum)
            } else if m.contains("too many requests")
                || m.contains("not capable")
                || m.contains("unhealthy cluster")
            {
                Failed::NotSent(CoordError::Unavailable {
                    reason: format!("{what}: etcd refused: {m}; retry later"),
                })
            } else if is_connect_failure(m) {
                Failed::NotSent(unavailable(what, m))
            } else {
                // "request timed out", "leader changed", "timed out ... leader failure",
                // a broken connection: the proposal may have been committed.
                Failed::Ambiguous(timeout(what, m))
            }
        }
        Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
            Failed::Ambiguous(timeout(what, m))
        }
        Code::Unknown | Code::Internal => {
            if is_connect_failure(m) {
                Failed::NotSent(unavailable(what, m))
            } else {
                Failed::Ambiguous(timeout(what, m))
            }
        }
        Code::NotFound if m.contains("lease not found") => Failed::Final(LEASE_MISSING),
        Code::NotFound if m.contains("member not found") => {
            Failed::Final(CoordError::UnknownNode {
                node: String::new(),
                reason: format!("{what}: {m}"),
            })
        }
        Code::OutOfRange if m.contains("compacted") => Failed::Final(CoordError::Compacted {
            requested: quorate_coord_api::Revision(0),
            compacted: quorate_coord_api::Revision(0),
        }),
        Code::ResourceExhausted => Failed::Final(CoordError::ResourceExhausted {
            what: format!("etcd ({m}); compact and defragment etcd or raise --quota-backend-bytes"),
            max: 0,
        }),
        Code::FailedPrecondition if m.contains("not a learner") => {
            Failed::Final(CoordError::UnknownNode {
                node: String::new(),
                reason: format!("{what}: {m} (only learners can be promoted)"),
            })
        }
        Code::FailedPrecondition if m.contains("in sync") || m.contains("not enough started") => {
            Failed::Final(CoordError::Unavailable {
                reason: format!("{what}: etcd refused for now ({m}); retry later"),
            })
        }
        Code::FailedPrecondition => Failed::Final(CoordError::InvalidArgument {
            reason: format!("{what}: etcd refused ({m})"),
        }),
        Code::Unauthenticated => Failed::Final(CoordError::Unavailable {
            reason: format!(
                "{what}: etcd authentication failed ({m}): check the user and password in the quorate-etcd config"
            ),
        }),
        Code::PermissionDenied => Failed::Final(CoordError::InvalidArgument {
            reason: format!(
                "{what}: etcd denied permission ({m}): grant the etcd user a role covering these keys"
            ),
        }),
        _ => Failed::Final(CoordError::InvalidArgument {
            reason: format!("{what}: etcd refused the request ({code:?}: {m})"),
        }),
    }
}

/// Of two errors of failed attempts, the one that says most about the cluster: a member
/// without a leader (`NoQuorum`) over a timeout over an unreachable endpoint.
fn most_telling(old: Option<CoordError>, new: CoordError) -> CoordError {
    let rank = |e: &CoordError| match e {
        CoordError::NoQuorum => 3,
        CoordError::Timeout { .. } => 2,
        _ => 1,
    };
    match old {
        Some(old) if rank(&old) > rank(&new) => old,
        _ => new,
    }
}

/// One endpoint and its lazily made clients: `strict` sends etcd's `hasleader` metadata (when
/// `require_leader` is set), `local` never does, so a serializable read still answers from a
/// member that lost its leader.
struct Slot {
    url: String,
    strict: Mutex<Option<Client>>,
    local: Mutex<Option<Client>>,
}

/// The endpoints of one cluster and which one is preferred now.
pub(crate) struct Pool {
    slots: Vec<Slot>,
    preferred: AtomicUsize,
    options: ConnectOptions,
    local_options: ConnectOptions,
    config: EtcdConfig,
}

impl Pool {
    pub(crate) fn new(config: EtcdConfig) -> Result<Pool, crate::EtcdError> {
        config.validate()?;
        let mut options = ConnectOptions::new()
            .with_timeout(config.request_timeout)
            .with_connect_timeout(config.connect_timeout)
            .with_keep_alive(config.keep_alive_interval, config.request_timeout);
        if let Some(c) = &config.credentials {
            options = options
                .with_user(c.user.clone(), c.password.clone())
                .with_auto_token_refresh(true);
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = &config.tls {
            options = options.with_tls(crate::tls::options(tls)?);
        }
        let slots = config
            .endpoints
            .iter()
            .map(|url| Slot {
                url: url.clone(),
                strict: Mutex::new(None),
                local: Mutex::new(None),
            })
            .collect();
        Ok(Pool {
            slots,
            preferred: AtomicUsize::new(0),
            local_options: options.clone(),
            options: options.with_require_leader(config.require_leader),
            config,
        })
    }

    pub(crate) fn config(&self) -> &EtcdConfig {
        &self.config
    }

    /// The endpoint calls go to first now.
    pub(crate) fn preferred_url(&self) -> &str {
        let i = self.preferred.load(Ordering::Relaxed) % self.slots.len();
        &self.slots[i].url
    }

    async fn client(&self, i: usize, local: bool, what: &str) -> Result<Client, Failed> {
        let slot = &self.slots[i];
        let (cell, options) = if local {
            (&slot.local, &self.local_options)
        } else {
            (&slot.strict, &self.options)
        };
        if let Some(c) = cell.lock().map_or(None, |g| g.clone()) {
            return Ok(c);
        }
        let connect = Client::connect([slot.url.as_str()], Some(options.clone()));
        match tokio::time::timeout(self.config.connect_timeout, connect).await {
            Ok(Ok(c)) => {
                if let Ok(mut g) = cell.lock() {
                    *g = Some(c.clone());
                }
                Ok(c)
            }
            Ok(Err(e)) => Err(match classify(what, &e) {
                Failed::Final(e) => Failed::Final(e),
                Failed::NotSent(e) | Failed::Ambiguous(e) => Failed::NotSent(e),
            }),
            Err(_) => Err(Failed::NotSent(unavailable(what, "connect timed out"))),
        }
    }

    /// Runs `f` on a client, moving over the endpoints as described in the module docs.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        what: &str,
        repeat: Repeat,
        f: F,
    ) -> Result<T, CoordError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call_via(what, repeat, false, f).await
    }

    /// [`Pool::call`], on the client without `hasleader` metadata if `local` (for
    /// serializable reads).
    pub(crate) async fn call_via<T, F, Fut>(
        &self,
        what: &str,
        repeat: Repeat,
        local: bool,
        mut f: F,
    ) -> Result<T, CoordError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.slots.len();
        let start = self.preferred.load(Ordering::Relaxed);
        let attempts = self.config.attempts_max.get() as usize;
        let mut last = None;
        for attempt in 0..attempts {
            if attempt > 0 && attempt % n == 0 {
                tokio::time::sleep(self.config.retry_backoff).await;
            }
            let i = (start + attempt) % n;
            let failed = match self.client(i, local, what).await {
                Ok(client) => {
                    match tokio::time::timeout(self.config.request_timeout, f(client)).await {
                        Ok(Ok(v)) => {
                            self.preferred.store(i, Ordering::Relaxed);
                            return Ok(v);
                        }
                        Ok(Err(e)) => classify(what, &e),
                        Err(_) => Failed::Ambiguous(timeout(
                            what,
                            &format!(
                                "no answer from {} within {:?}",
                                self.slots[i].url, self.config.request_timeout
                            ),
                        )),
                    }
                }
                Err(failed) => failed,
            };
            tracing::debug!(what, endpoint = %self.slots[i].url, ?failed, "etcd call failed");
            match failed {
                Failed::Final(e) => return Err(e),
                Failed::NotSent(e) => last = Some(most_telling(last, e)),
                Failed::Ambiguous(e) if repeat == Repeat::Safe => {
                    last = Some(most_telling(last, e));
                }
                Failed::Ambiguous(e) => return Err(e),
            }
            // Move the preference on so concurrent callers stop trying a dead endpoint.
            let _ = self.preferred.compare_exchange(
                i,
                (i + 1) % n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        Err(last.unwrap_or_else(|| unavailable(what, "no endpoint answered")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(code: Code, message: &str, expect: &str) {
        let got = match classify_status("put", code, message) {
            Failed::NotSent(_) => "not-sent",
            Failed::Ambiguous(_) => "ambiguous",
            Failed::Final(_) => "final",
        };
        assert_eq!(got, expect, "{code:?} {message:?}");
    }

    #[test]
    fn etcd_statuses_map_to_retry_classes() {
        check(Code::Unavailable, "etcdserver: no leader", "not-sent");
        check(
            Code::Unavailable,
            "etcdserver: too many requests",
            "not-sent",
        );
        check(
            Code::Unavailable,
            "error trying to connect: tcp connect error: Connection refused (os error 111)",
            "not-sent",
        );
        check(
            Code::Unavailable,
            "etcdserver: request timed out",
            "ambiguous",
        );
        check(Code::Unavailable, "etcdserver: leader changed", "ambiguous");
        check(
            Code::Unknown,
            "h2 protocol error: connection reset",
            "ambiguous",
        );
        check(Code::DeadlineExceeded, "deadline", "ambiguous");
        check(
            Code::NotFound,
            "etcdserver: requested lease not found",
            "final",
        );
        check(
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
            "final",
        );
    }

    #[test]
    fn no_leader_is_no_quorum() {
        assert_eq!(
            classify_status("put", Code::Unavailable, "etcdserver: no leader"),
            Failed::NotSent(CoordError::NoQuorum)
        );
    }
}
