//! Shared vocabulary of quorate: node ids, role names, epochs, fencing tokens, node metadata, and
//! the one implementation of lease arithmetic ([`lease`]).
//!
//! Every type that can be built from outside input validates it, so a value of these types is
//! always valid. Serde forms are the plain string or number forms; deserializing validates too.
//!
//! ```
//! use quorate_types::{FencingToken, NodeId, RoleName};
//!
//! let node = NodeId::new("node-1").unwrap();
//! let role = RoleName::new("telegram-poller").unwrap();
//! assert!(NodeId::new("").is_err());
//! assert!(FencingToken(7) > FencingToken(3));
//! assert_eq!(format!("{node}/{role}"), "node-1/telegram-poller");
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

pub mod latency;
pub mod lease;

/// The longest node id or role name, in bytes.
pub const NAME_BYTES_MAX: usize = 64;
/// The most tags a node may carry in its metadata.
pub const TAGS_MAX: usize = 32;
/// The longest tag key or tag value, in bytes.
pub const TAG_BYTES_MAX: usize = 128;
/// The most roles a node may declare.
pub const ROLES_MAX: usize = 64;
/// The longest version string or API address in node metadata, in bytes.
pub const META_FIELD_BYTES_MAX: usize = 128;

/// A value given to a constructor of this crate was not valid. Nothing was created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypesError {
    /// The name was empty.
    #[error("{what} is empty: give 1 to {NAME_BYTES_MAX} characters of a-z, 0-9, '-', '_', '.'")]
    Empty {
        /// What was being named ("node id", "role name").
        what: &'static str,
    },
    /// The name was longer than [`NAME_BYTES_MAX`].
    #[error("{what} {value:?} is {len} bytes long; the limit is {NAME_BYTES_MAX}")]
    TooLong {
        /// What was being named.
        what: &'static str,
        /// The start of the rejected value.
        value: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The name held a character outside the allowed alphabet, or did not start with a letter
    /// or digit.
    #[error(
        "{what} {value:?} has {found:?} at byte {at}: use a-z, 0-9, '-', '_', '.', starting with a letter or digit"
    )]
    BadCharacter {
        /// What was being named.
        what: &'static str,
        /// The rejected value.
        value: String,
        /// The offending character.
        found: char,
        /// Its byte offset.
        at: usize,
    },
    /// Node metadata exceeded one of its limits.
    #[error("node metadata: {0}")]
    Meta(String),
    /// A clock-rate drift bound above [`lease::Drift::MAX`].
    #[error(
        "drift_ppm = {ppm} is above the maximum 100000 (10 %): a clock drifting more than that is broken and only fencing tokens protect against it; use at most 100000"
    )]
    Drift {
        /// The rejected bound, in parts per million.
        ppm: u32,
    },
}

fn validate_name(what: &'static str, s: &str) -> Result<(), TypesError> {
    if s.is_empty() {
        return Err(TypesError::Empty { what });
    }
    if s.len() > NAME_BYTES_MAX {
        return Err(TypesError::TooLong {
            what,
            value: s.chars().take(NAME_BYTES_MAX).collect(),
            len: s.len(),
        });
    }
    for (at, c) in s.char_indices() {
        let ok = c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || (at > 0 && matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(TypesError::BadCharacter {
                what,
                value: s.to_owned(),
                found: c,
                at,
            });
        }
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `s` (1 to [`NAME_BYTES_MAX`] bytes of `a-z 0-9 - _ .`, starting with a
            /// letter or digit).
            pub fn new(s: impl Into<String>) -> Result<Self, TypesError> {
                let s = s.into();
                validate_name($what, &s)?;
                Ok(Self(s))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = TypesError;
            fn try_from(s: String) -> Result<Self, TypesError> {
                Self::new(s)
            }
        }

        impl std::str::FromStr for $name {
            type Err = TypesError;
            fn from_str(s: &str) -> Result<Self, TypesError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

name_type!(
    /// The identity of a node in a cluster: 1 to 64 bytes of `a-z 0-9 - _ .`, starting with a
    /// letter or digit. Stable across restarts (the incarnation, not the id, changes).
    NodeId,
    "node id"
);

name_type!(
    /// The name of a role that has one primary at a time, e.g. `telegram-poller` or `postgres`.
    /// Same alphabet and limits as [`NodeId`].
    RoleName,
    "role name"
);

/// A term of office: increases each time a role or the cluster changes leader.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch {}", self.0)
    }
}

/// A token handed out with every grant of a role or lock. Tokens strictly increase across
/// grants (it is the Raft log index, or etcd revision, of the grant), so a protected resource
/// that remembers the highest token it has seen can reject a stale holder.
///
/// ```
/// use quorate_types::FencingToken;
/// let mut guard = quorate_types::FenceGuard::default();
/// assert!(guard.admit(FencingToken(10)).is_ok());
/// assert!(guard.admit(FencingToken(9)).is_err());   // a stale holder is rejected
/// assert!(guard.admit(FencingToken(10)).is_ok());   // the current holder may act again
/// ```
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct FencingToken(pub u64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "token {}", self.0)
    }
}

/// The resource side of fencing: remembers the highest token seen and rejects lower ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FenceGuard {
    highest: Option<FencingToken>,
}

/// An action carried a token lower than one the resource has already seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("stale fencing {got}: the resource has already seen {highest}")]
pub struct StaleToken {
    /// The token that was presented.
    pub got: FencingToken,
    /// The highest token seen before.
    pub highest: FencingToken,
}

impl FenceGuard {
    /// Admits an action carrying `token` if no higher token has been seen, and remembers it.
    pub fn admit(&mut self, token: FencingToken) -> Result<(), StaleToken> {
        match self.highest {
            Some(highest) if token < highest => Err(StaleToken {
                got: token,
                highest,
            }),
            _ => {
                self.highest = Some(token);
                Ok(())
            }
        }
    }

    /// The highest token admitted so far.
    pub fn highest(&self) -> Option<FencingToken> {
        self.highest
    }
}

/// A secret string (a key, a token, a password): it never appears in `Debug` output, logs or
/// error messages. Read it with [`Secret::expose`] where it is used, and nowhere else.
///
/// ```
/// let s = quorate_types::Secret::new("hunter2");
/// assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
/// assert_eq!(s.expose(), "hunter2");
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// What a node tells its peers about itself (gossiped by membership).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    /// Where the node's HTTP API listens, if it has one (`host:port`).
    pub api_addr: Option<String>,
    /// The quorate version the node runs.
    pub version: String,
    /// The roles this node can take.
    pub roles: BTreeSet<RoleName>,
    /// Free-form tags (`zone = "a"`, `nofailover = "true"`).
    pub tags: BTreeMap<String, String>,
}

impl NodeMeta {
    /// Checks the metadata against the limits ([`TAGS_MAX`], [`TAG_BYTES_MAX`], [`ROLES_MAX`],
    /// [`META_FIELD_BYTES_MAX`]) so it always fits in a gossip packet.
    pub fn validate(&self) -> Result<(), TypesError> {
        let field = |name: &str, v: &str| {
            if v.len() > META_FIELD_BYTES_MAX {
                Err(TypesError::Meta(format!(
                    "{name} is {} bytes; the limit is {META_FIELD_BYTES_MAX}",
                    v.len()
                )))
            } else {
                Ok(())
            }
        };
        if let Some(a) = &self.api_addr {
            field("api_addr", a)?;
        }
        field("version", &self.version)?;
        if self.roles.len() > ROLES_MAX {
            return Err(TypesError::Meta(format!(
                "{} roles; the limit is {ROLES_MAX}",
                self.roles.len()
            )));
        }
        if self.tags.len() > TAGS_MAX {
            return Err(TypesError::Meta(format!(
                "{} tags; the limit is {TAGS_MAX}",
                self.tags.len()
            )));
        }
        for (k, v) in &self.tags {
            if k.is_empty() || k.len() > TAG_BYTES_MAX || v.len() > TAG_BYTES_MAX {
                return Err(TypesError::Meta(format!(
                    "tag {k:?}: keys must be 1 to {TAG_BYTES_MAX} bytes and values at most {TAG_BYTES_MAX}"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[track_caller]
    fn check_node(s: &str, ok: bool) {
        assert_eq!(NodeId::new(s).is_ok(), ok, "{s:?}");
    }

    #[test]
    fn node_id_alphabet() {
        check_node("n1", true);
        check_node("node-1.eu_west", true);
        check_node("1", true);
        check_node("", false);
        check_node("-n", false);
        check_node(".n", false);
        check_node("Node", false);
        check_node("n 1", false);
        check_node("nö", false);
        check_node(&"a".repeat(64), true);
        check_node(&"a".repeat(65), false);
    }

    #[test]
    fn errors_name_the_problem() {
        let e = NodeId::new("Bad").unwrap_err();
        assert!(e.to_string().contains("'B'"), "{e}");
        let e = RoleName::new("").unwrap_err();
        assert_eq!(e, TypesError::Empty { what: "role name" });
    }

    #[test]
    fn serde_validates() {
        let ok: NodeId = serde_json::from_str("\"n1\"").unwrap();
        assert_eq!(ok.as_str(), "n1");
        assert!(serde_json::from_str::<NodeId>("\"N1\"").is_err());
        let bytes = postcard::to_allocvec(&"UPPER".to_owned()).unwrap();
        assert!(postcard::from_bytes::<RoleName>(&bytes).is_err());
    }

    #[test]
    fn fence_guard_rejects_stale() {
        let mut g = FenceGuard::default();
        g.admit(FencingToken(5)).unwrap();
        g.admit(FencingToken(6)).unwrap();
        assert_eq!(
            g.admit(FencingToken(5)),
            Err(StaleToken {
                got: FencingToken(5),
                highest: FencingToken(6)
            })
        );
        assert_eq!(g.highest(), Some(FencingToken(6)));
    }

    #[test]
    fn meta_limits() {
        let mut m = NodeMeta {
            version: "0.1.0".into(),
            ..NodeMeta::default()
        };
        m.validate().unwrap();
        m.tags.insert("k".into(), "v".repeat(TAG_BYTES_MAX + 1));
        assert!(m.validate().is_err());
        m.tags.clear();
        for i in 0..=TAGS_MAX {
            m.tags.insert(format!("k{i}"), String::new());
        }
        assert!(m.validate().is_err());
    }

    proptest! {
        #[test]
        fn any_string_never_panics_and_valid_roundtrips(s in ".{0,80}") {
            if let Ok(id) = NodeId::new(s.clone()) {
                let back: NodeId = serde_json::from_str(&serde_json::to_string(&id).unwrap()).unwrap();
                prop_assert_eq!(back, id);
            }
        }
    }
}
