//! A Sentinel-compatible discovery listener: enough of the Sentinel protocol (RESP2) that
//! Sentinel-aware clients find the primary without code changes. It answers from this node's
//! view of the role (the lease holder in the coordination store):
//!
//! - `SENTINEL get-master-addr-by-name <name>` -> `[host, port]`, or nil while no primary
//!   is known;
//! - `SENTINEL masters`, `SENTINEL master <name>`, `SENTINEL replicas|slaves <name>`,
//!   `SENTINEL sentinels <name>` (empty: there are no other Sentinels to talk to);
//! - `PING`, `ROLE`, `AUTH`, `CLIENT ...`, `HELLO 2`, `QUIT`.
//!
//! Not served: Sentinel's pub/sub channels (`+switch-master`), failover commands
//! (`SENTINEL failover` and friends; use `quorate ctl switchover`), configuration commands.
//! Requests are bounded: a line or bulk string of at most [`ARG_BYTES_MAX`], at most
//! [`ARGS_MAX`] arguments; anything else gets an error and the connection is closed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use quorate_types::NodeId;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerAddr;

/// The longest argument (bulk string or inline line) accepted.
pub const ARG_BYTES_MAX: usize = 4096;
/// The most arguments in one command.
pub const ARGS_MAX: usize = 16;

/// A request that breaks the protocol or the limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

/// One parsed command: its arguments, and how many bytes of the buffer it took.
pub type Parsed = (Vec<Vec<u8>>, usize);

/// Parses one command from the front of `buf`: `Ok(Some((args, consumed)))`, `Ok(None)` when
/// more bytes are needed, `Err` when the bytes cannot be a valid request within the limits.
pub fn parse_command(buf: &[u8]) -> Result<Option<Parsed>, ProtocolError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first != b'*' {
        // Inline command: one line, words split by spaces.
        let Some(end) = find_crlf(buf, 0)? else {
            return Ok(None);
        };
        let line = &buf[..end];
        let args: Vec<Vec<u8>> = line
            .split(|b| *b == b' ')
            .filter(|w| !w.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        if args.len() > ARGS_MAX {
            return Err(ProtocolError(format!("more than {ARGS_MAX} arguments")));
        }
        return Ok(Some((args, end + 2)));
    }
    let Some(end) = find_crlf(buf, 1)? else {
        return Ok(None);
    };
    let count = parse_len(&buf[1..end])?;
    if count > ARGS_MAX {
        return Err(ProtocolError(format!("more than {ARGS_MAX} arguments")));
    }
    let mut pos = end + 2;
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        if pos >= buf.len() {
            return Ok(None);
        }
        if buf[pos] != b'$' {
            return Err(ProtocolError("expected '$' (a bulk string)".to_owned()));
        }
        let Some(end) = find_crlf(buf, pos + 1)? else {
            return Ok(None);
        };
        let len = parse_len(&buf[pos + 1..end])?;
        if len > ARG_BYTES_MAX {
            return Err(ProtocolError(format!(
                "argument above {ARG_BYTES_MAX} bytes"
            )));
        }
        let start = end + 2;
        let stop = start + len;
        if buf.len() < stop + 2 {
            return Ok(None);
        }
        if &buf[stop..stop + 2] != b"\r\n" {
            return Err(ProtocolError("bulk string not followed by CRLF".to_owned()));
        }
        args.push(buf[start..stop].to_vec());
        pos = stop + 2;
    }
    Ok(Some((args, pos)))
}

/// The index of the first `\r\n` at or after `from`, within [`ARG_BYTES_MAX`] + 32 bytes.
fn find_crlf(buf: &[u8], from: usize) -> Result<Option<usize>, ProtocolError> {
    let limit = from + ARG_BYTES_MAX + 32;
    let window = &buf[from.min(buf.len())..buf.len().min(limit)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some(from + i)),
        None if buf.len() >= limit => Err(ProtocolError("line too long".to_owned())),
        None => Ok(None),
    }
}

fn parse_len(digits: &[u8]) -> Result<usize, ProtocolError> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .ok_or_else(|| ProtocolError("bad length".to_owned()))
}

/// A RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Simple(String),
    /// `-ERR ...`.
    Error(String),
    /// `:n`.
    Int(i64),
    /// `$n ...`.
    Bulk(String),
    /// `$-1`.
    Nil,
    /// `*n ...`.
    Array(Vec<Reply>),
}

impl Reply {
    /// The wire form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Simple(s) => out.extend_from_slice(format!("+{s}\r\n").as_bytes()),
            Reply::Error(s) => out.extend_from_slice(format!("-{s}\r\n").as_bytes()),
            Reply::Int(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
            Reply::Bulk(s) => {
                out.extend_from_slice(format!("${}\r\n", s.len()).as_bytes());
                out.extend_from_slice(s.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
            Reply::Array(items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                for i in items {
                    i.encode(out);
                }
            }
        }
    }
}

/// What the listener answers from.
#[derive(Clone, Debug)]
pub struct View {
    /// The master name clients ask for.
    pub master_name: String,
    /// Every node's server.
    pub servers: BTreeMap<NodeId, ServerAddr>,
    /// The primary as this node sees it.
    pub primary: Option<NodeId>,
    /// Servers that did not answer the last poll (listed with the flag `s_down`, so that
    /// clients do not pick them for reads).
    pub down: BTreeSet<NodeId>,
}

/// What the listener's answers change with: the primary, and the servers that are down.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovery {
    /// The primary as this node sees it.
    pub primary: Option<NodeId>,
    /// Servers that did not answer the last poll.
    pub down: BTreeSet<NodeId>,
}

fn bulk(s: impl Into<String>) -> Reply {
    Reply::Bulk(s.into())
}

fn server_fields(addr: &ServerAddr, name: String, flags: &str, extra: &[(&str, String)]) -> Reply {
    let mut v = vec![
        bulk("name"),
        bulk(name),
        bulk("ip"),
        bulk(addr.host.clone()),
        bulk("port"),
        bulk(addr.port.to_string()),
        bulk("flags"),
        bulk(flags),
    ];
    for (k, val) in extra {
        v.push(bulk(*k));
        v.push(bulk(val.clone()));
    }
    Reply::Array(v)
}

impl View {
    fn primary_addr(&self) -> Option<&ServerAddr> {
        self.primary.as_ref().and_then(|p| self.servers.get(p))
    }

    fn master_fields(&self) -> Reply {
        let replicas = self
            .servers
            .keys()
            .filter(|n| Some(*n) != self.primary.as_ref())
            .count();
        let extra = [
            ("num-slaves", replicas.to_string()),
            ("num-other-sentinels", "0".to_owned()),
            ("quorum", "1".to_owned()),
        ];
        match self.primary_addr() {
            Some(a) => server_fields(a, self.master_name.clone(), "master", &extra),
            None => Reply::Error(format!(
                "ERR no primary known for {} right now (quorate is electing one)",
                self.master_name
            )),
        }
    }

    /// The reply to one command.
    pub fn answer(&self, args: &[Vec<u8>]) -> Reply {
        let word = |i: usize| {
            args.get(i)
                .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
                .unwrap_or_default()
        };
        let name_ok = |i: usize| {
            args.get(i)
                .is_some_and(|a| a == self.master_name.as_bytes())
        };
        let unknown_master = || Reply::Error("ERR No such master with that name".to_owned());
        match word(0).as_str() {
            "ping" => Reply::Simple("PONG".to_owned()),
            "auth" | "client" | "select" => Reply::Simple("OK".to_owned()),
            "quit" => Reply::Simple("OK".to_owned()),
            "hello" if word(1) == "2" || args.len() == 1 => Reply::Array(vec![
                bulk("server"),
                bulk("redis"),
                bulk("version"),
                bulk("7.0.0"),
                bulk("proto"),
                Reply::Int(2),
                bulk("mode"),
                bulk("sentinel"),
            ]),
            "hello" => Reply::Error("NOPROTO this listener speaks RESP2 only".to_owned()),
            "role" => Reply::Array(vec![
                bulk("sentinel"),
                Reply::Array(vec![bulk(self.master_name.clone())]),
            ]),
            "sentinel" => match word(1).as_str() {
                "get-master-addr-by-name" if name_ok(2) => match self.primary_addr() {
                    Some(a) => Reply::Array(vec![bulk(a.host.clone()), bulk(a.port.to_string())]),
                    None => Reply::Nil,
                },
                "get-master-addr-by-name" => Reply::Nil,
                "masters" => match self.master_fields() {
                    r @ Reply::Array(_) => Reply::Array(vec![r]),
                    _ => Reply::Array(Vec::new()),
                },
                "master" if name_ok(2) => self.master_fields(),
                "replicas" | "slaves" if name_ok(2) => Reply::Array(
                    self.servers
                        .iter()
                        .filter(|(n, _)| Some(*n) != self.primary.as_ref())
                        .map(|(n, a)| {
                            let master = self.primary_addr();
                            let flags = if self.down.contains(n) {
                                "slave,s_down,disconnected"
                            } else {
                                "slave"
                            };
                            server_fields(
                                a,
                                a.to_string(),
                                flags,
                                &[
                                    (
                                        "master-host",
                                        master.map(|m| m.host.clone()).unwrap_or_default(),
                                    ),
                                    (
                                        "master-port",
                                        master.map(|m| m.port.to_string()).unwrap_or_default(),
                                    ),
                                ],
                            )
                        })
                        .collect(),
                ),
                "sentinels" if name_ok(2) => Reply::Array(Vec::new()),
                "master" | "replicas" | "slaves" | "sentinels" => unknown_master(),
                other => Reply::Error(format!(
                    "ERR SENTINEL {other} is not served by quorate's Sentinel-compatible listener \
                     (only get-master-addr-by-name, masters, master, replicas, slaves, sentinels)"
                )),
            },
            other => Reply::Error(format!("ERR unknown command '{other}'")),
        }
    }
}

/// Binds `listen` and serves Sentinel clients until `cancel`, answering from `view` (its
/// `primary` and `down` follow `discovery`). At most `connections_max` connections are served at once.
pub(crate) async fn serve(
    listener: TcpListener,
    base: View,
    discovery: watch::Receiver<Discovery>,
    connections_max: usize,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(connections_max.max(1)));
    loop {
        let permit = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else { continue };
        let (base, discovery, cancel) = (base.clone(), discovery.clone(), cancel.clone());
        tracker.spawn(async move {
            let _permit = permit;
            tokio::select! {
                biased;
                () = cancel.cancelled() => {}
                () = connection(stream, base, discovery) => {}
            }
        });
    }
}

async fn connection(mut stream: TcpStream, base: View, discovery: watch::Receiver<Discovery>) {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        // Answer every complete command in the buffer.
        loop {
            match parse_command(&buf) {
                Ok(Some((args, used))) => {
                    buf.drain(..used);
                    if args.is_empty() {
                        continue;
                    }
                    let d = discovery.borrow().clone();
                    let view = View {
                        primary: d.primary,
                        down: d.down,
                        ..base.clone()
                    };
                    let reply = view.answer(&args);
                    let mut out = Vec::new();
                    reply.encode(&mut out);
                    if stream.write_all(&out).await.is_err() {
                        return;
                    }
                    if args[0].eq_ignore_ascii_case(b"quit") {
                        return;
                    }
                }
                Ok(None) => break,
                Err(ProtocolError(why)) => {
                    let mut out = Vec::new();
                    Reply::Error(format!("ERR Protocol error: {why}")).encode(&mut out);
                    let _ = stream.write_all(&out).await;
                    return;
                }
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    use super::*;
    use proptest::prelude::*;

    fn view(primary: Option<&str>) -> View {
        let n = |s: &str| NodeId::new(s).unwrap();
        View {
            master_name: "mymaster".to_owned(),
            servers: [
                (n("n1"), ServerAddr::parse("127.0.0.1:7001").unwrap()),
                (n("n2"), ServerAddr::parse("127.0.0.1:7002").unwrap()),
            ]
            .into(),
            primary: primary.map(n),
            down: BTreeSet::new(),
        }
    }

    fn ask(v: &View, line: &str) -> Reply {
        let mut raw = line.as_bytes().to_vec();
        raw.extend_from_slice(b"\r\n");
        let (args, used) = parse_command(&raw).unwrap().unwrap();
        assert_eq!(used, raw.len());
        v.answer(&args)
    }

    #[test]
    fn resp_arrays_and_inline_commands_parse() {
        let raw =
            b"*3\r\n$8\r\nSENTINEL\r\n$23\r\nget-master-addr-by-name\r\n$8\r\nmymaster\r\nPING\r\n";
        let (args, used) = parse_command(raw).unwrap().unwrap();
        assert_eq!(args.len(), 3);
        assert_eq!(args[2], b"mymaster");
        let (args, rest) = parse_command(&raw[used..]).unwrap().unwrap();
        assert_eq!((args, rest), (vec![b"PING".to_vec()], 6));
        // Every strict prefix needs more bytes.
        for i in 0..used {
            assert_eq!(parse_command(&raw[..i]).unwrap(), None, "prefix {i}");
        }
        assert!(parse_command(b"*99\r\n").is_err());
        assert!(parse_command(b"*1\r\n$99999\r\n").is_err());
        assert!(parse_command(b"*1\r\n+x\r\n").is_err());
        assert!(parse_command(b"*1\r\n$1\r\nab\r\n").is_err());
        assert!(parse_command(&vec![b'a'; ARG_BYTES_MAX + 64]).is_err());
    }

    #[test]
    fn the_master_address_follows_the_primary() {
        let got = ask(
            &view(Some("n2")),
            "SENTINEL get-master-addr-by-name mymaster",
        );
        assert_eq!(got, Reply::Array(vec![bulk("127.0.0.1"), bulk("7002")]));
        assert_eq!(
            ask(&view(None), "SENTINEL get-master-addr-by-name mymaster"),
            Reply::Nil
        );
        assert_eq!(
            ask(&view(Some("n2")), "sentinel get-master-addr-by-name other"),
            Reply::Nil
        );
        let Reply::Array(masters) = ask(&view(Some("n1")), "SENTINEL masters") else {
            panic!("not an array")
        };
        assert_eq!(masters.len(), 1);
        let Reply::Array(replicas) = ask(&view(Some("n1")), "SENTINEL replicas mymaster") else {
            panic!("not an array")
        };
        assert_eq!(replicas.len(), 1);
        let mut v = view(Some("n1"));
        v.down.insert(NodeId::new("n2").unwrap());
        let Reply::Array(replicas) = ask(&v, "SENTINEL slaves mymaster") else {
            panic!("not an array")
        };
        let Reply::Array(fields) = &replicas[0] else {
            panic!("not an array")
        };
        assert_eq!(fields[7], bulk("slave,s_down,disconnected"));
        assert_eq!(ask(&view(None), "PING"), Reply::Simple("PONG".to_owned()));
        assert!(matches!(
            ask(&view(None), "SENTINEL failover mymaster"),
            Reply::Error(_)
        ));
        assert!(matches!(
            ask(&view(None), "SENTINEL master nope"),
            Reply::Error(_)
        ));
        let mut out = Vec::new();
        Reply::Array(vec![bulk("a"), Reply::Nil, Reply::Int(3)]).encode(&mut out);
        assert_eq!(out, b"*3\r\n$1\r\na\r\n$-1\r\n:3\r\n");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, rng_seed: proptest::test_runner::RngSeed::Fixed(7), ..ProptestConfig::default() })]
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(Some((args, used))) = parse_command(&bytes) {
                prop_assert!(used <= bytes.len());
                prop_assert!(args.len() <= ARGS_MAX);
                let _ = view(Some("n1")).answer(&args);
            }
        }
    }
}
