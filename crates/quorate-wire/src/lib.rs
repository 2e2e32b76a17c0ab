//! quorate's one framing, codec and authentication layer for all cluster traffic.
//!
//! Every message between quorate nodes (gossip datagrams, Raft RPCs, client calls) is one
//! **frame**: a fixed header, then the message encoded with [postcard] and sealed with
//! XChaCha20-Poly1305 under the cluster key. The header and the cluster name are the AEAD's
//! associated data, so a frame of another cluster, or one changed in any byte, is rejected
//! before its payload is decoded.
//!
//! A **datagram** is also bound to its recipient: [`Sealer::seal_datagram`] adds the
//! recipient's identity (for gossip, its node id) to the associated data, and
//! [`Opener::open_datagram`] checks it against the receiver's own, so a datagram sealed for
//! node A fails authentication at node B. Only a first-contact datagram (a join request to a
//! seed address, whose node id the sender cannot know yet) is sealed for [`RECIPIENT_ANYONE`].
//!
//! ```text
//! offset size field
//!  0     4    magic "QRTW"
//!  4     1    protocol version (2)
//!  5     2    message kind (big endian), see MessageKind
//!  7     1    key hint: which key of the ring sealed the frame
//!  8     4    cluster tag: FNV-1a of the cluster name, for a clear "wrong cluster" error
//! 12     8    sender session (random per Sealer)
//! 20     8    sequence number within the session (starts at 1)
//! 28     8    sender wall-clock time, ms since the Unix epoch
//! 36     4    ciphertext length (big endian), including the 16-byte tag
//! 40     ..   ciphertext
//! ```
//!
//! # Replay protection
//! The nonce is `session || seq || timestamp`, unique per frame. An [`Opener`] (one per
//! receiving process, shared by all its connections and its UDP socket) rejects a frame
//! - whose timestamp is more than `replay_window` old or `clock_skew_max` in the future;
//! - whose `(session, seq)` it has already accepted: it keeps, per sender session, the highest
//!   sequence number and a 1024-frame bitmap below it (as IPsec and WireGuard do), for at most
//!   `sessions_max` sessions, forgetting sessions idle longer than the window;
//! - from a session it does not know whose timestamp is not newer than its *floor*: the floor
//!   starts at the opener's creation time minus `clock_skew_max` and rises to the newest
//!   timestamp of any session it forgets, so neither a restart of the receiver nor eviction
//!   opens a replay window wider than `clock_skew_max`.
//!
//! An opener also rejects, with [`WireError::OwnSession`], an authentic frame of a session
//! registered with [`Opener::add_own_session`]: a node registers its own sealers, so a copy of
//! one of its own datagrams sent back to it (which its replay guard has never seen) is dropped.
//!
//! On a stream, a [`StreamOpener`] additionally requires one session per connection and strictly
//! increasing sequence numbers.
//!
//! # Stream binding (server challenge)
//! A TCP server first sends a [`Challenge`] (`"QRTC"` and 16 random bytes, unauthenticated) on
//! every connection it accepts. Both sides then seal and open every frame of that connection
//! with the challenge appended to the associated data ([`Sealer::bound`],
//! [`StreamOpener::bound`]). A frame therefore authenticates only on the one connection it was
//! sealed for: a frame captured on another connection, or sent to another node, fails
//! authentication instead of being accepted once as "new". Datagrams carry no challenge.
//!
//! # Client keys
//! A ring may also hold **client keys** ([`KeyRing::set_client_keys`]): keys given to
//! applications that call the cluster, not to its nodes. A frame sealed under a client key
//! opens only where the receiver asks for it ([`StreamOpener::accepting_clients`]); every
//! other open (datagrams, streams that did not opt in) fails it with
//! [`WireError::ClientKeyRefused`]. An accepted client frame says so
//! ([`OpenedFrame::client`]), and the receiver seals its answers under that same client key
//! ([`Sealer::reply_under`]), so a client never needs, and never learns, the cluster key.
//! What a client may ask for is the receiver's business (quorate-raft admits only client
//! requests, and not all of those).
//!
//! What is left: right after a receiver restarts, a datagram sealed in the last
//! `clock_skew_max` before that restart can be replayed once. The protocols above (Raft with
//! terms, SWIM with incarnations) treat such a stale message as stale.
//!
//! # Example
//! ```
//! use quorate_wire::{ClusterKey, KeyRing, MessageKind, Opener, Sealer, WireConfig};
//!
//! let key = ClusterKey::from_hex(&"11".repeat(32)).unwrap();
//! let config = WireConfig::new("prod", KeyRing::new(key, vec![])).unwrap();
//! let sealer = Sealer::new(&config);
//! let opener = Opener::new(&config);
//!
//! let frame = sealer.seal(MessageKind(0x0101), &("ping", 7u32)).unwrap();
//! let (kind, msg): (MessageKind, (String, u32)) = opener.open(&frame).unwrap();
//! assert_eq!((kind, msg), (MessageKind(0x0101), ("ping".to_owned(), 7)));
//! // The same frame again is a replay.
//! assert!(opener.open::<(String, u32)>(&frame).is_err());
//! ```

pub mod inbound;
pub mod net;
mod replay;

use std::fmt;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use replay::ReplayGuard;

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"QRTW";
/// The protocol version this build writes and reads. Version 2 binds a datagram's recipient
/// into its associated data ([`Sealer::seal_datagram`]); version 1 did not.
pub const PROTOCOL_VERSION: u8 = 2;
/// The recipient of a datagram sealed for whoever receives it (first contact only).
pub const RECIPIENT_ANYONE: &[u8] = b"";
/// The longest recipient identity a datagram can be bound to, in bytes.
pub const RECIPIENT_BYTES_MAX: usize = 1024;
/// How many own sender sessions an [`Opener`] remembers ([`Opener::add_own_session`]).
pub const OWN_SESSIONS_MAX: usize = 64;
/// Size of the fixed frame header, in bytes.
pub const HEADER_BYTES: usize = 40;
/// Size of the AEAD tag at the end of the ciphertext, in bytes.
pub const TAG_BYTES: usize = 16;
/// The smallest `frame_bytes_max` accepted.
pub const FRAME_BYTES_MIN: u32 = 512;
/// The largest `frame_bytes_max` accepted (64 MiB): a frame is held in memory whole.
pub const FRAME_BYTES_LIMIT: u32 = 64 << 20;
/// The most keys a [`KeyRing`] holds (one to send plus those also accepted).
pub const KEYS_MAX: usize = 8;
/// The four bytes a server's [`Challenge`] starts with.
pub const CHALLENGE_MAGIC: [u8; 4] = *b"QRTC";
/// Size of a challenge message on the wire: magic and 16 random bytes.
pub const CHALLENGE_BYTES: usize = 20;

/// A frame could not be sealed or opened, or a config was invalid. Nothing was delivered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Fewer bytes than a header, or than the header's length field promised.
    #[error("truncated frame: {got} bytes, {needed} needed")]
    Truncated {
        /// Bytes available.
        got: usize,
        /// Bytes needed.
        needed: usize,
    },
    /// The frame (or the message to seal) is larger than `frame_bytes_max`; nothing was
    /// allocated for it.
    #[error("frame of {len} bytes exceeds frame_bytes_max = {max}")]
    Oversize {
        /// Length claimed or needed.
        len: u64,
        /// The configured limit.
        max: u32,
    },
    /// The frame does not start with the quorate magic: not quorate traffic.
    #[error("not a quorate frame (bad magic {0:02x?})")]
    BadMagic([u8; 4]),
    /// The peer speaks another protocol version.
    #[error(
        "frame has protocol version {got}, this node speaks version {supported}: upgrade the older node"
    )]
    UnsupportedVersion {
        /// Version in the frame.
        got: u8,
        /// Version this build speaks.
        supported: u8,
    },
    /// The frame names another cluster (its cluster tag differs from ours).
    #[error(
        "frame is from another cluster (tag {got:08x}, ours {ours:08x}): check cluster_name on both nodes"
    )]
    WrongCluster {
        /// Tag in the frame.
        got: u32,
        /// Our tag.
        ours: u32,
    },
    /// Authentication failed: wrong key, another cluster's name, a datagram sealed for
    /// another recipient, or a changed byte.
    #[error(
        "frame failed authentication: wrong cluster key or cluster name, sealed for another node, or tampered with"
    )]
    AuthFailed,
    /// The frame was authentic but was already accepted, or is too old.
    #[error("replayed or stale frame rejected: {0}")]
    Replay(&'static str),
    /// The frame is authentic but carries one of this node's own sender sessions: a copy of a
    /// frame this node sent, sent back to it (a reflection or replay). Nothing was delivered.
    #[error(
        "frame carries this node's own sender session {0:016x}: a copy of our own frame sent back to us, dropped"
    )]
    OwnSession(u64),
    /// The authenticated payload did not decode as the expected message type.
    #[error("authentic frame with undecodable payload: {0}")]
    Decode(postcard::Error),
    /// The message could not be encoded.
    #[error("message could not be encoded: {0}")]
    Encode(postcard::Error),
    /// Reading or writing the stream failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The configuration is invalid; the message names the field and the fix.
    #[error("wire config: {0}")]
    Config(String),
    /// The frame is authentic under a client key, where only the cluster's own (peer) keys
    /// are accepted.
    #[error(
        "frame sealed with a client key where only cluster (peer) keys are accepted: client keys call the coordination service, they do not speak for a node"
    )]
    ClientKeyRefused,
}

/// A 256-bit cluster key. Its `Debug` form does not show the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; 32]);

impl ClusterKey {
    /// A key from 32 raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A key from 64 hex digits (as written in a config file).
    pub fn from_hex(hex: &str) -> Result<Self, WireError> {
        let hex = hex.trim();
        if hex.len() != 64 {
            return Err(WireError::Config(format!(
                "cluster key must be 64 hex digits (32 bytes), got {} characters",
                hex.len()
            )));
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            let pair = hex.get(2 * i..2 * i + 2).ok_or_else(|| {
                WireError::Config("cluster key must be ASCII hex digits".to_owned())
            })?;
            *b = u8::from_str_radix(pair, 16).map_err(|_| {
                WireError::Config(format!("cluster key has a non-hex digit pair {pair:?}"))
            })?;
        }
        Ok(Self(out))
    }

    /// A fresh random key from the operating system.
    pub fn generate() -> Result<Self, WireError> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k)
            .map_err(|e| WireError::Config(format!("no OS randomness for a key: {e}")))?;
        Ok(Self(k))
    }

    /// The key as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.0.into())
    }

    /// A one-byte hint of which key sealed a frame, derived from the key itself so that every
    /// node computes the same hint whatever the order of its ring.
    fn hint(&self) -> u8 {
        let tag = self
            .cipher()
            .encrypt(&XNonce::default(), b"quorate key hint".as_slice())
            .unwrap_or_default();
        tag.first().copied().unwrap_or(0)
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey(hint {:02x}, redacted)", self.hint())
    }
}

/// The keys of a cluster: one to seal with, and others still accepted while a rotation is under
/// way. Rotation: add the new key to every node's `accept_also`, then make it every node's send
/// key, then drop the old one.
///
/// A ring is a shared handle: its clones, and every [`Sealer`] and [`Opener`] made from a
/// config holding it, see [`KeyRing::replace`] at their next frame. That is how a running
/// agent takes new keys (SIGHUP) without dropping a connection or a session.
#[derive(Clone)]
pub struct KeyRing {
    current: Arc<std::sync::RwLock<Arc<KeySet>>>,
}

/// One generation of a ring, with its ciphers made once.
struct KeySet {
    send: ClusterKey,
    accept_also: Vec<ClusterKey>,
    send_cipher: XChaCha20Poly1305,
    send_hint: u8,
    /// Every accepted key (send key first) as (hint, cipher).
    open: Vec<(u8, XChaCha20Poly1305)>,
    /// The client keys, as (hint, cipher, key).
    clients: Vec<(u8, XChaCha20Poly1305, ClientKey)>,
}

impl KeySet {
    /// Checks a set before it replaces a ring's keys.
    fn check(
        send: &ClusterKey,
        accept_also: &[ClusterKey],
        clients: &[ClientKey],
    ) -> Result<(), WireError> {
        check_key_count(1 + accept_also.len())?;
        if clients.len() > KEYS_MAX {
            return Err(WireError::Config(format!(
                "{} client keys; at most {KEYS_MAX}: drop retired ones",
                clients.len()
            )));
        }
        if clients
            .iter()
            .any(|c| c.0 == *send || accept_also.contains(&c.0))
        {
            return Err(WireError::Config(
                "a client key is also a cluster key: a client key must be a key of its own (`quorate keygen --out FILE`), or it would speak for a node".to_owned(),
            ));
        }
        Ok(())
    }

    fn new(send: ClusterKey, accept_also: Vec<ClusterKey>, clients: Vec<ClientKey>) -> Self {
        let open = std::iter::once(&send)
            .chain(accept_also.iter())
            .map(|k| (k.hint(), k.cipher()))
            .collect();
        let clients = clients
            .into_iter()
            .map(|c| (c.0.hint(), c.0.cipher(), c))
            .collect();
        Self {
            send_cipher: send.cipher(),
            send_hint: send.hint(),
            send,
            accept_also,
            open,
            clients,
        }
    }

    fn client_keys(&self) -> Vec<ClientKey> {
        self.clients.iter().map(|(_, _, k)| k.clone()).collect()
    }
}

/// A key an application holds to call the cluster as a client (see the crate docs, "Client
/// keys"). Its `Debug` form does not show the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientKey(ClusterKey);

impl ClientKey {
    /// A client key from a key's bytes (from a key file, like a cluster key).
    pub fn new(key: ClusterKey) -> Self {
        Self(key)
    }

    /// The one-byte hint of this key (which reveals nothing of it).
    pub fn hint(&self) -> u8 {
        self.0.hint()
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientKey(hint {:02x}, redacted)", self.hint())
    }
}

impl KeyRing {
    /// A ring that seals with `send` and opens frames sealed with `send` or any of `accept_also`.
    /// A ring that seals with `send` and opens frames sealed with `send` or any of `accept_also`
    /// (the count is checked by [`WireConfig::validate`]).
    pub fn new(send: ClusterKey, accept_also: Vec<ClusterKey>) -> Self {
        Self {
            current: Arc::new(std::sync::RwLock::new(Arc::new(KeySet::new(
                send,
                accept_also,
                Vec::new(),
            )))),
        }
    }

    /// Replaces the keys of this ring and of every clone of it: frames sealed from now on use
    /// `send`, and frames are accepted under `send` or `accept_also`. Sessions, sequence
    /// numbers and the replay guard carry on; the client keys stay. Refuses more than
    /// [`KEYS_MAX`] keys, or a key that is also a client key, and leaves the ring as it was.
    pub fn replace(&self, send: ClusterKey, accept_also: Vec<ClusterKey>) -> Result<(), WireError> {
        let clients = self.keys().client_keys();
        self.replace_all(send, accept_also, clients)
    }

    /// Like [`KeyRing::replace`], and sets the client keys too (in one step, so a key moved
    /// between the two sets is never in both).
    pub fn replace_all(
        &self,
        send: ClusterKey,
        accept_also: Vec<ClusterKey>,
        clients: Vec<ClientKey>,
    ) -> Result<(), WireError> {
        KeySet::check(&send, &accept_also, &clients)?;
        let set = Arc::new(KeySet::new(send, accept_also, clients));
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = set;
        Ok(())
    }

    /// Sets the client keys this ring accepts (see the crate docs, "Client keys"); the
    /// cluster keys stay. Refuses more than [`KEYS_MAX`], or one that is also a cluster key.
    pub fn set_client_keys(&self, clients: Vec<ClientKey>) -> Result<(), WireError> {
        let k = self.keys();
        self.replace_all(k.send.clone(), k.accept_also.clone(), clients)
    }

    /// How many client keys the ring accepts.
    pub fn client_key_count(&self) -> usize {
        self.keys().clients.len()
    }

    /// How many keys the ring accepts (the send key included).
    pub fn len(&self) -> usize {
        1 + self.keys().accept_also.len()
    }

    /// Always false: a ring has a send key.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The one-byte hints of the send key and of the others accepted (what `Debug` shows; a
    /// hint says which key sealed a frame, and reveals nothing of the key).
    pub fn hints(&self) -> (u8, Vec<u8>) {
        let k = self.keys();
        (
            k.send_hint,
            k.open.iter().skip(1).map(|(h, _)| *h).collect(),
        )
    }

    fn keys(&self) -> Arc<KeySet> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = self.keys();
        f.debug_struct("KeyRing")
            .field("send", &k.send)
            .field("accept_also", &k.accept_also)
            .field("clients", &k.client_keys())
            .finish()
    }
}

fn check_key_count(n: usize) -> Result<(), WireError> {
    if n > KEYS_MAX {
        return Err(WireError::Config(format!(
            "{n} keys in the ring; at most {KEYS_MAX}: drop retired keys"
        )));
    }
    Ok(())
}

/// A function returning wall-clock milliseconds since the Unix epoch; injected in simulation.
pub type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system's wall clock.
pub fn system_wall_clock() -> WallClock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    })
}

/// A source of unpredictable bytes for session ids and connection challenges: fills the buffer
/// or says why it cannot. Production uses [`os_random`]; a deterministic simulation injects a
/// seeded generator so that a run's bytes on the wire replay. Never inject a predictable
/// source outside a simulation: challenges are what bind a stream to its connection.
pub type RandomSource = Arc<dyn Fn(&mut [u8]) -> Result<(), String> + Send + Sync>;

/// The operating system's randomness (`getrandom`).
pub fn os_random() -> RandomSource {
    Arc::new(|buf: &mut [u8]| getrandom::fill(buf).map_err(|e| e.to_string()))
}

/// Wire settings shared by a node's sealers and openers.
#[derive(Clone)]
pub struct WireConfig {
    /// The cluster's name, bound into every frame's authenticated data.
    pub cluster_name: String,
    /// The cluster keys.
    pub keys: KeyRing,
    /// The largest frame sent or accepted, header included (default 1 MiB).
    pub frame_bytes_max: NonZeroU32,
    /// How old a frame may be and still be accepted (default 30 s).
    pub replay_window: Duration,
    /// How far a sender's clock may run ahead of ours (default 2 s).
    pub clock_skew_max: Duration,
    /// How many sender sessions the replay guard remembers (default 4096).
    pub sessions_max: NonZeroUsize,
    /// Where wall-clock time comes from (default: the system clock).
    pub wall_clock: WallClock,
    /// Where session ids and challenges come from (default: [`os_random`]).
    pub random: RandomSource,
}

impl fmt::Debug for WireConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WireConfig")
            .field("cluster_name", &self.cluster_name)
            .field("keys", &self.keys)
            .field("frame_bytes_max", &self.frame_bytes_max)
            .field("replay_window", &self.replay_window)
            .field("clock_skew_max", &self.clock_skew_max)
            .field("sessions_max", &self.sessions_max)
            .finish_non_exhaustive()
    }
}

/// Default `frame_bytes_max`: 1 MiB.
pub const FRAME_BYTES_MAX_DEFAULT: NonZeroU32 = NonZeroU32::new(1 << 20).unwrap();
const SESSIONS_MAX_DEFAULT: NonZeroUsize = NonZeroUsize::new(4096).unwrap();

impl WireConfig {
    /// A config with default limits; validates the cluster name.
    pub fn new(cluster_name: impl Into<String>, keys: KeyRing) -> Result<Self, WireError> {
        let c = Self {
            cluster_name: cluster_name.into(),
            keys,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            replay_window: Duration::from_secs(30),
            clock_skew_max: Duration::from_secs(2),
            sessions_max: SESSIONS_MAX_DEFAULT,
            wall_clock: system_wall_clock(),
            random: os_random(),
        };
        c.validate()?;
        Ok(c)
    }

    /// Checks every field and names the first bad one with its fix.
    pub fn validate(&self) -> Result<(), WireError> {
        if self.cluster_name.is_empty() || self.cluster_name.len() > 128 {
            return Err(WireError::Config(format!(
                "cluster_name must be 1 to 128 bytes, got {}",
                self.cluster_name.len()
            )));
        }
        let max = self.frame_bytes_max.get();
        if !(FRAME_BYTES_MIN..=FRAME_BYTES_LIMIT).contains(&max) {
            return Err(WireError::Config(format!(
                "frame_bytes_max = {max} is outside {FRAME_BYTES_MIN}..={FRAME_BYTES_LIMIT}"
            )));
        }
        check_key_count(self.keys.len())?;
        if self.replay_window < Duration::from_secs(1) {
            return Err(WireError::Config(format!(
                "replay_window = {:?} is below the minimum 1s",
                self.replay_window
            )));
        }
        if self.clock_skew_max > self.replay_window {
            return Err(WireError::Config(format!(
                "clock_skew_max = {:?} exceeds replay_window = {:?}",
                self.clock_skew_max, self.replay_window
            )));
        }
        Ok(())
    }

    fn cluster_tag(&self) -> u32 {
        fnv1a32(self.cluster_name.as_bytes())
    }
}

fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The kind of a message, owned by the protocol that sends it. Ranges: `0x01xx` membership
/// (gossip), `0x02xx` Raft, `0x03xx` client and coordination RPC, `0x04xx` admin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageKind(pub u16);

/// The parsed fixed header of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    version: u8,
    kind: MessageKind,
    key_hint: u8,
    cluster_tag: u32,
    session: u64,
    seq: u64,
    timestamp_ms: u64,
    len: u32,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut h = [0u8; HEADER_BYTES];
        h[0..4].copy_from_slice(&MAGIC);
        h[4] = self.version;
        h[5..7].copy_from_slice(&self.kind.0.to_be_bytes());
        h[7] = self.key_hint;
        h[8..12].copy_from_slice(&self.cluster_tag.to_be_bytes());
        h[12..20].copy_from_slice(&self.session.to_be_bytes());
        h[20..28].copy_from_slice(&self.seq.to_be_bytes());
        h[28..36].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        h[36..40].copy_from_slice(&self.len.to_be_bytes());
        h
    }

    /// Parses and checks magic, version and length against `max` (before any allocation).
    fn decode(h: &[u8; HEADER_BYTES], max: NonZeroU32) -> Result<Self, WireError> {
        let magic = [h[0], h[1], h[2], h[3]];
        if magic != MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        if h[4] != PROTOCOL_VERSION {
            return Err(WireError::UnsupportedVersion {
                got: h[4],
                supported: PROTOCOL_VERSION,
            });
        }
        let be64 = |r: std::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[r]);
            u64::from_be_bytes(b)
        };
        let len = u32::from_be_bytes([h[36], h[37], h[38], h[39]]);
        let total = HEADER_BYTES as u64 + u64::from(len);
        if total > u64::from(max.get()) {
            return Err(WireError::Oversize {
                len: total,
                max: max.get(),
            });
        }
        if (len as usize) < TAG_BYTES {
            return Err(WireError::Truncated {
                got: len as usize,
                needed: TAG_BYTES,
            });
        }
        Ok(Self {
            version: h[4],
            kind: MessageKind(u16::from_be_bytes([h[5], h[6]])),
            key_hint: h[7],
            cluster_tag: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
            session: be64(12..20),
            seq: be64(20..28),
            timestamp_ms: be64(28..36),
            len,
        })
    }

    fn nonce(&self) -> XNonce {
        let mut n = [0u8; 24];
        n[0..8].copy_from_slice(&self.session.to_be_bytes());
        n[8..16].copy_from_slice(&self.seq.to_be_bytes());
        n[16..24].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        n.into()
    }
}

fn aad(header: &[u8; HEADER_BYTES], cluster_name: &str, binding: Option<&Challenge>) -> Vec<u8> {
    let mut a = Vec::with_capacity(HEADER_BYTES + cluster_name.len() + 16);
    a.extend_from_slice(header);
    a.extend_from_slice(cluster_name.as_bytes());
    if let Some(c) = binding {
        a.extend_from_slice(&c.0);
    }
    a
}

/// The associated data of a datagram: header, then the cluster name and the recipient, each
/// with a 2-byte length, so that no (name, recipient) pair can be read as another. It can never
/// equal a stream frame's (header, name): it is longer by at least four bytes.
fn datagram_aad(
    header: &[u8; HEADER_BYTES],
    cluster_name: &str,
    recipient: &[u8],
) -> Result<Vec<u8>, WireError> {
    if recipient.len() > RECIPIENT_BYTES_MAX {
        return Err(WireError::Config(format!(
            "datagram recipient of {} bytes exceeds {RECIPIENT_BYTES_MAX}: use a node id",
            recipient.len()
        )));
    }
    let mut a = Vec::with_capacity(HEADER_BYTES + 4 + cluster_name.len() + recipient.len());
    a.extend_from_slice(header);
    for part in [cluster_name.as_bytes(), recipient] {
        a.extend_from_slice(&(part.len() as u16).to_be_bytes());
        a.extend_from_slice(part);
    }
    Ok(a)
}

/// The message kind in a datagram's header, read **before** authentication (so that the
/// receiver can pick the recipient to open it as; the kind is authenticated when it is opened).
/// `None` if the bytes are too short to hold a header.
pub fn peek_kind(frame: &[u8]) -> Option<MessageKind> {
    match frame {
        [_, _, _, _, _, hi, lo, ..] if frame.len() >= HEADER_BYTES => {
            Some(MessageKind(u16::from_be_bytes([*hi, *lo])))
        }
        _ => None,
    }
}

/// A server's random challenge for one stream connection; frames sealed for that connection
/// carry it in their associated data (see the crate docs, "Stream binding").
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Challenge([u8; 16]);

impl fmt::Debug for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Challenge(")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

impl Challenge {
    /// A fresh challenge from the operating system's randomness.
    pub fn generate() -> Result<Self, WireError> {
        Self::generate_from(&os_random())
    }

    /// A fresh challenge from `random` (the [`WireConfig::random`] of the node).
    pub fn generate_from(random: &RandomSource) -> Result<Self, WireError> {
        let mut c = [0u8; 16];
        random(&mut c)
            .map_err(|e| WireError::Config(format!("no randomness for a challenge: {e}")))?;
        Ok(Self(c))
    }

    /// A challenge with given bytes (tests and simulation).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The challenge as sent on the wire ([`CHALLENGE_BYTES`] bytes).
    pub fn encode(&self) -> [u8; CHALLENGE_BYTES] {
        let mut out = [0u8; CHALLENGE_BYTES];
        out[..4].copy_from_slice(&CHALLENGE_MAGIC);
        out[4..].copy_from_slice(&self.0);
        out
    }

    /// Parses a challenge as received; anything not starting with [`CHALLENGE_MAGIC`] is
    /// [`WireError::BadMagic`] (not a quorate server, or an older one without challenges).
    pub fn decode(bytes: &[u8; CHALLENGE_BYTES]) -> Result<Self, WireError> {
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != CHALLENGE_MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        let mut c = [0u8; 16];
        c.copy_from_slice(&bytes[4..]);
        Ok(Self(c))
    }

    /// Reads a server's challenge from a fresh connection (the client side).
    pub async fn read_from<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Self, WireError> {
        let mut b = [0u8; CHALLENGE_BYTES];
        reader.read_exact(&mut b).await?;
        Self::decode(&b)
    }

    /// Writes this challenge to a fresh connection and flushes (the server side).
    pub async fn write_to<W: AsyncWrite + Unpin>(&self, writer: &mut W) -> Result<(), WireError> {
        writer.write_all(&self.encode()).await?;
        writer.flush().await?;
        Ok(())
    }
}

/// The sending side: seals messages into frames under the ring's send key. One sealer is one
/// sender session (a random id) with its own sequence counter; it may be shared between tasks.
pub struct Sealer {
    cluster_name: String,
    cluster_tag: u32,
    keys: KeyRing,
    session: u64,
    seq: AtomicU64,
    frame_bytes_max: NonZeroU32,
    wall_clock: WallClock,
    binding: Option<Challenge>,
    /// A client key to seal under instead of the ring's send key (a server answering a
    /// client), with its hint.
    reply: Option<(u8, XChaCha20Poly1305)>,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("cluster_name", &self.cluster_name)
            .field("session", &format_args!("{:016x}", self.session))
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// A sealer with a fresh random session id (from [`WireConfig::random`]).
    pub fn new(config: &WireConfig) -> Self {
        let mut s = [0u8; 8];
        // Without OS randomness, fall back to the clock: the session id only has to differ
        // between the sealers of one key, and the timestamp is in the nonce as well.
        if (config.random)(&mut s).is_err() {
            s = (config.wall_clock)().to_be_bytes();
        }
        Self::with_session(config, u64::from_be_bytes(s))
    }

    /// A sealer for one stream connection whose server sent `challenge`: a fresh session, and
    /// every frame bound to that connection (see the crate docs, "Stream binding").
    pub fn bound(config: &WireConfig, challenge: &Challenge) -> Self {
        let mut s = Self::new(config);
        s.binding = Some(*challenge);
        s
    }

    /// A sealer with a given session id: for deterministic simulation. Two sealers under one
    /// key must never share a session id.
    pub fn with_session(config: &WireConfig, session: u64) -> Self {
        Self {
            cluster_name: config.cluster_name.clone(),
            cluster_tag: config.cluster_tag(),
            keys: config.keys.clone(),
            session,
            seq: AtomicU64::new(1),
            frame_bytes_max: config.frame_bytes_max,
            wall_clock: config.wall_clock.clone(),
            binding: None,
            reply: None,
        }
    }

    /// Seals from now on under `key` (a server answering the client that sealed its request
    /// under it, [`OpenedFrame::client`]), or under the ring's send key again (`None`).
    pub fn reply_under(&mut self, key: Option<&ClientKey>) {
        self.reply = key.map(|k| (k.hint(), k.0.cipher()));
    }

    /// This sealer's session id (register it with [`Opener::add_own_session`] on the same
    /// node, so that copies of its frames sent back to the node are dropped).
    pub fn session(&self) -> u64 {
        self.session
    }

    /// Encodes `msg` with postcard and seals it into one datagram for `recipient` (the
    /// receiver's identity, e.g. its node id; [`RECIPIENT_ANYONE`] for first contact).
    pub fn seal_datagram<T: Serialize + ?Sized>(
        &self,
        kind: MessageKind,
        msg: &T,
        recipient: &[u8],
    ) -> Result<Vec<u8>, WireError> {
        let plain = postcard::to_allocvec(msg).map_err(WireError::Encode)?;
        self.seal_datagram_bytes(kind, &plain, recipient)
    }

    /// Seals already-encoded bytes into one datagram for `recipient`.
    pub fn seal_datagram_bytes(
        &self,
        kind: MessageKind,
        plain: &[u8],
        recipient: &[u8],
    ) -> Result<Vec<u8>, WireError> {
        self.seal_with(kind, plain, |h| {
            datagram_aad(h, &self.cluster_name, recipient)
        })
    }

    /// The largest encoded message this sealer can send.
    pub fn payload_bytes_max(&self) -> usize {
        self.frame_bytes_max.get() as usize - HEADER_BYTES - TAG_BYTES
    }

    /// Encodes `msg` with postcard and seals it into one frame.
    pub fn seal<T: Serialize + ?Sized>(
        &self,
        kind: MessageKind,
        msg: &T,
    ) -> Result<Vec<u8>, WireError> {
        let plain = postcard::to_allocvec(msg).map_err(WireError::Encode)?;
        self.seal_bytes(kind, &plain)
    }

    /// Seals already-encoded bytes into one frame.
    pub fn seal_bytes(&self, kind: MessageKind, plain: &[u8]) -> Result<Vec<u8>, WireError> {
        self.seal_with(kind, plain, |h| {
            Ok(aad(h, &self.cluster_name, self.binding.as_ref()))
        })
    }

    fn seal_with(
        &self,
        kind: MessageKind,
        plain: &[u8],
        make_aad: impl FnOnce(&[u8; HEADER_BYTES]) -> Result<Vec<u8>, WireError>,
    ) -> Result<Vec<u8>, WireError> {
        let len = plain.len() + TAG_BYTES;
        let total = (HEADER_BYTES + len) as u64;
        if total > u64::from(self.frame_bytes_max.get()) {
            return Err(WireError::Oversize {
                len: total,
                max: self.frame_bytes_max.get(),
            });
        }
        let keys = self.keys.keys();
        let (key_hint, cipher) = match &self.reply {
            Some((hint, cipher)) => (*hint, cipher),
            None => (keys.send_hint, &keys.send_cipher),
        };
        let header = Header {
            version: PROTOCOL_VERSION,
            kind,
            key_hint,
            cluster_tag: self.cluster_tag,
            session: self.session,
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            timestamp_ms: (self.wall_clock)(),
            len: len as u32,
        };
        let hbytes = header.encode();
        let aad = make_aad(&hbytes)?;
        let ct = cipher
            .encrypt(
                &header.nonce(),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .map_err(|_| WireError::AuthFailed)?;
        let mut out = Vec::with_capacity(HEADER_BYTES + ct.len());
        out.extend_from_slice(&hbytes);
        out.extend_from_slice(&ct);
        Ok(out)
    }
}

struct OpenerInner {
    cluster_name: String,
    cluster_tag: u32,
    keys: KeyRing,
    frame_bytes_max: NonZeroU32,
    wall_clock: WallClock,
    guard: Mutex<ReplayGuard>,
    own_sessions: Mutex<std::collections::VecDeque<u64>>,
}

/// The receiving side: authenticates frames, rejects replays, decodes payloads. Cheap to clone;
/// clones share one replay guard, so a node should use one opener for all it receives.
#[derive(Clone)]
pub struct Opener {
    inner: Arc<OpenerInner>,
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener")
            .field("cluster_name", &self.inner.cluster_name)
            .finish_non_exhaustive()
    }
}

/// What an authentic frame carried, before decoding the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedFrame {
    /// The message kind.
    pub kind: MessageKind,
    /// The sender session.
    pub session: u64,
    /// The sequence number within that session.
    pub seq: u64,
    /// The decrypted payload (postcard bytes).
    pub payload: Vec<u8>,
    /// The client key that sealed the frame, if it was one (only where client keys are
    /// accepted: [`StreamOpener::accepting_clients`]); `None` for a cluster key.
    pub client: Option<ClientKey>,
}

impl Opener {
    /// An opener for `config`'s cluster name and key ring.
    pub fn new(config: &WireConfig) -> Self {
        let now = (config.wall_clock)();
        Self {
            inner: Arc::new(OpenerInner {
                cluster_name: config.cluster_name.clone(),
                cluster_tag: config.cluster_tag(),
                keys: config.keys.clone(),
                frame_bytes_max: config.frame_bytes_max,
                wall_clock: config.wall_clock.clone(),
                guard: Mutex::new(ReplayGuard::new(
                    now,
                    config.replay_window,
                    config.clock_skew_max,
                    config.sessions_max,
                )),
                own_sessions: Mutex::new(std::collections::VecDeque::new()),
            }),
        }
    }

    /// The largest frame accepted.
    pub fn frame_bytes_max(&self) -> NonZeroU32 {
        self.inner.frame_bytes_max
    }

    /// Opens one whole frame (a datagram) and decodes its payload as `T`.
    pub fn open<T: DeserializeOwned>(&self, frame: &[u8]) -> Result<(MessageKind, T), WireError> {
        let f = self.open_raw(frame)?;
        let msg = postcard::from_bytes(&f.payload).map_err(WireError::Decode)?;
        Ok((f.kind, msg))
    }

    /// Registers a sender session of this node (see [`Sealer::session`]): authentic frames
    /// carrying it are rejected with [`WireError::OwnSession`]. At most [`OWN_SESSIONS_MAX`]
    /// are kept; registering more forgets the oldest.
    pub fn add_own_session(&self, session: u64) {
        let mut own = self
            .inner
            .own_sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !own.contains(&session) {
            if own.len() >= OWN_SESSIONS_MAX {
                own.pop_front();
            }
            own.push_back(session);
        }
    }

    /// Opens one whole datagram sealed for `recipient` (this node's identity, or
    /// [`RECIPIENT_ANYONE`]) without decoding the payload. A datagram sealed for another
    /// recipient fails with [`WireError::AuthFailed`].
    pub fn open_datagram(&self, frame: &[u8], recipient: &[u8]) -> Result<OpenedFrame, WireError> {
        let (h, hbytes) = self.parse_whole(frame)?;
        let aad = datagram_aad(&hbytes, &self.inner.cluster_name, recipient)?;
        self.authenticate_with(&h, &aad, &frame[HEADER_BYTES..], false)
    }

    /// Opens one whole frame without decoding the payload.
    pub fn open_raw(&self, frame: &[u8]) -> Result<OpenedFrame, WireError> {
        let (h, hbytes) = self.parse_whole(frame)?;
        self.authenticate(&h, &hbytes, &frame[HEADER_BYTES..], None, false)
    }

    /// Parses the header of a whole frame and checks that the frame is exactly as long as
    /// the header says.
    fn parse_whole(&self, frame: &[u8]) -> Result<(Header, [u8; HEADER_BYTES]), WireError> {
        let (h, hbytes) = self.parse_header(frame)?;
        let needed = HEADER_BYTES + h.len as usize;
        if frame.len() < needed {
            return Err(WireError::Truncated {
                got: frame.len(),
                needed,
            });
        }
        if frame.len() > needed {
            return Err(WireError::Decode(postcard::Error::DeserializeBadEncoding));
        }
        Ok((h, hbytes))
    }

    fn parse_header(&self, frame: &[u8]) -> Result<(Header, [u8; HEADER_BYTES]), WireError> {
        let hbytes: [u8; HEADER_BYTES] = frame
            .get(..HEADER_BYTES)
            .and_then(|s| s.try_into().ok())
            .ok_or(WireError::Truncated {
                got: frame.len(),
                needed: HEADER_BYTES,
            })?;
        let h = Header::decode(&hbytes, self.inner.frame_bytes_max)?;
        Ok((h, hbytes))
    }

    fn authenticate(
        &self,
        h: &Header,
        hbytes: &[u8; HEADER_BYTES],
        ct: &[u8],
        binding: Option<&Challenge>,
        accept_clients: bool,
    ) -> Result<OpenedFrame, WireError> {
        let aad = aad(hbytes, &self.inner.cluster_name, binding);
        self.authenticate_with(h, &aad, ct, accept_clients)
    }

    fn authenticate_with(
        &self,
        h: &Header,
        aad: &[u8],
        ct: &[u8],
        accept_clients: bool,
    ) -> Result<OpenedFrame, WireError> {
        let inner = &self.inner;
        if h.cluster_tag != inner.cluster_tag {
            return Err(WireError::WrongCluster {
                got: h.cluster_tag,
                ours: inner.cluster_tag,
            });
        }
        let nonce = h.nonce();
        let keys = inner.keys.keys();
        let peer = keys
            .open
            .iter()
            .filter(|(hint, _)| *hint == h.key_hint)
            .find_map(|(_, c)| c.decrypt(&nonce, Payload { msg: ct, aad }).ok());
        let (payload, client) = match peer {
            Some(p) => (p, None),
            None => {
                let (p, k) = keys
                    .clients
                    .iter()
                    .filter(|(hint, _, _)| *hint == h.key_hint)
                    .find_map(|(_, c, k)| {
                        c.decrypt(&nonce, Payload { msg: ct, aad })
                            .ok()
                            .map(|p| (p, k))
                    })
                    .ok_or(WireError::AuthFailed)?;
                if !accept_clients {
                    return Err(WireError::ClientKeyRefused);
                }
                (p, Some(k.clone()))
            }
        };
        // Authentic: checked after the AEAD so that the error (and its counter) means a real
        // copy of our own frame, not any bytes with our session id in them.
        if inner
            .own_sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&h.session)
        {
            return Err(WireError::OwnSession(h.session));
        }
        let now = (inner.wall_clock)();
        inner
            .guard
            .lock()
            .map_err(|_| WireError::Replay("replay guard poisoned"))?
            .check_and_record(h.session, h.seq, h.timestamp_ms, now)
            .map_err(WireError::Replay)?;
        Ok(OpenedFrame {
            kind: h.kind,
            session: h.session,
            seq: h.seq,
            payload,
            client,
        })
    }
}

/// The receiving side of one stream connection: one sender session per connection, strictly
/// increasing sequence numbers, on top of the shared [`Opener`]'s checks.
#[derive(Debug)]
pub struct StreamOpener {
    opener: Opener,
    last: Option<(u64, u64)>,
    binding: Option<Challenge>,
    accept_clients: bool,
}

impl StreamOpener {
    /// A stream opener for one new connection whose frames are not bound to it (no
    /// challenge was exchanged).
    pub fn new(opener: &Opener) -> Self {
        Self {
            opener: opener.clone(),
            last: None,
            binding: None,
            accept_clients: false,
        }
    }

    /// A stream opener for one connection with the given challenge (the server's, sent on
    /// accept): it accepts only frames sealed with [`Sealer::bound`] for this challenge.
    pub fn bound(opener: &Opener, challenge: &Challenge) -> Self {
        Self {
            opener: opener.clone(),
            last: None,
            binding: Some(*challenge),
            accept_clients: false,
        }
    }

    /// This opener also accepts frames sealed under the ring's client keys, and says which
    /// ([`OpenedFrame::client`]); without it they fail with [`WireError::ClientKeyRefused`].
    pub fn accepting_clients(mut self) -> Self {
        self.accept_clients = true;
        self
    }

    /// Reads one frame from `reader` without decoding the payload. Reads the header first and
    /// checks the length against `frame_bytes_max` before allocating for the body.
    pub async fn read_raw<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
    ) -> Result<OpenedFrame, WireError> {
        let mut hbytes = [0u8; HEADER_BYTES];
        reader.read_exact(&mut hbytes).await?;
        let h = Header::decode(&hbytes, self.opener.inner.frame_bytes_max)?;
        let mut body = vec![0u8; h.len as usize];
        reader.read_exact(&mut body).await?;
        let f = self.opener.authenticate(
            &h,
            &hbytes,
            &body,
            self.binding.as_ref(),
            self.accept_clients,
        )?;
        match self.last {
            Some((session, _)) if session != f.session => {
                return Err(WireError::Replay("sender session changed within a stream"));
            }
            Some((_, seq)) if f.seq <= seq => {
                return Err(WireError::Replay(
                    "sequence number went backwards in a stream",
                ));
            }
            _ => {}
        }
        self.last = Some((f.session, f.seq));
        Ok(f)
    }
}

/// Reads one frame from a stream and decodes it as `T`.
pub async fn read_frame<T: DeserializeOwned, R: AsyncRead + Unpin>(
    reader: &mut R,
    opener: &mut StreamOpener,
) -> Result<(MessageKind, T), WireError> {
    let f = opener.read_raw(reader).await?;
    let msg = postcard::from_bytes(&f.payload).map_err(WireError::Decode)?;
    Ok((f.kind, msg))
}

/// Seals `msg` and writes it as one frame to a stream, then flushes.
pub async fn write_frame<T: Serialize + ?Sized, W: AsyncWrite + Unpin>(
    writer: &mut W,
    sealer: &Sealer,
    kind: MessageKind,
    msg: &T,
) -> Result<(), WireError> {
    let frame = sealer.seal(kind, msg)?;
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}
