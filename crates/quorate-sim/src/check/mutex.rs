//! Mutual exclusion of locks and roles, and fencing.
//!
//! - [`check_mutual_exclusion`]: no two grants of one resource have overlapping validity in
//!   global (simulated) time, and fencing tokens strictly increase from grant to grant.
//!   Records with the same resource and token are one grant (renewals) and are merged.
//! - [`check_fencing`]: the protected resource accepted no action carrying a token lower than one
//!   it had already accepted (a stale holder's action must be rejected).
// tidy:pure-core

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::SimError;

/// One holder's validity window of a lock or role, in global simulated time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The lock or role.
    pub resource: String,
    /// Who held it.
    pub holder: String,
    /// The fencing token of the grant.
    pub token: u64,
    /// Start of validity (inclusive).
    pub from: Duration,
    /// End of validity (exclusive): when the holder stopped acting.
    pub until: Duration,
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} held by {} with token {} during [{}ms, {}ms)",
            self.resource,
            self.holder,
            self.token,
            self.from.as_millis(),
            self.until.as_millis()
        )
    }
}

/// An action on a fenced resource and whether the resource accepted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Action {
    /// The resource.
    pub resource: String,
    /// Who acted.
    pub holder: String,
    /// The token it carried.
    pub token: u64,
    /// When (global simulated time).
    pub at: Duration,
    /// Whether the resource accepted it.
    pub accepted: bool,
}

/// A broken mutual-exclusion or fencing property.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MutexViolation {
    /// Two grants were valid at the same time.
    Overlap {
        /// The earlier grant.
        a: Grant,
        /// The later grant.
        b: Grant,
        /// How long both were valid.
        overlap: Duration,
    },
    /// A later grant carries a token not greater than an earlier grant's.
    TokenNotIncreasing {
        /// The earlier grant.
        earlier: Grant,
        /// The later grant.
        later: Grant,
    },
    /// One token was granted to two holders.
    TokenReused {
        /// The resource.
        resource: String,
        /// The token.
        token: u64,
        /// The holders.
        holders: (String, String),
    },
    /// The resource accepted an action with a stale token.
    StaleAccepted {
        /// The action.
        action: Action,
        /// The highest token accepted before it.
        highest: u64,
    },
}

impl fmt::Display for MutexViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Overlap { a, b, overlap } => {
                write!(f, "overlap of {}ms: {a} and {b}", overlap.as_millis())
            }
            Self::TokenNotIncreasing { earlier, later } => {
                write!(f, "fencing token did not increase: {earlier}, then {later}")
            }
            Self::TokenReused {
                resource,
                token,
                holders,
            } => write!(
                f,
                "{resource}: token {token} granted to both {} and {}",
                holders.0, holders.1
            ),
            Self::StaleAccepted { action, highest } => write!(
                f,
                "{} accepted token {} from {} at {}ms after token {highest}",
                action.resource,
                action.token,
                action.holder,
                action.at.as_millis()
            ),
        }
    }
}

/// Checks that grants of each resource never overlap and that tokens strictly increase.
///
/// # Errors
/// [`SimError::MutualExclusion`] listing every violation.
pub fn check_mutual_exclusion(grants: &[Grant]) -> Result<(), SimError> {
    let mut violations = Vec::new();
    // Merge renewals: (resource, token) -> one grant.
    let mut merged: BTreeMap<(&str, u64), Grant> = BTreeMap::new();
    for g in grants {
        match merged.get_mut(&(g.resource.as_str(), g.token)) {
            None => {
                merged.insert((g.resource.as_str(), g.token), g.clone());
            }
            Some(m) if m.holder != g.holder => violations.push(MutexViolation::TokenReused {
                resource: g.resource.clone(),
                token: g.token,
                holders: (m.holder.clone(), g.holder.clone()),
            }),
            Some(m) => {
                m.from = m.from.min(g.from);
                m.until = m.until.max(g.until);
            }
        }
    }
    let mut by_resource: BTreeMap<&str, Vec<Grant>> = BTreeMap::new();
    for ((resource, _), g) in merged {
        by_resource.entry(resource).or_default().push(g);
    }
    for list in by_resource.values_mut() {
        list.sort_by_key(|g| (g.from, g.token));
        for (i, a) in list.iter().enumerate() {
            for b in &list[i + 1..] {
                if b.from >= a.until {
                    continue;
                }
                violations.push(MutexViolation::Overlap {
                    a: a.clone(),
                    b: b.clone(),
                    overlap: a.until.min(b.until) - b.from,
                });
            }
        }
        for pair in list.windows(2) {
            if pair[1].token <= pair[0].token {
                violations.push(MutexViolation::TokenNotIncreasing {
                    earlier: pair[0].clone(),
                    later: pair[1].clone(),
                });
            }
        }
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(SimError::MutualExclusion(violations))
    }
}

/// Checks that no resource accepted an action whose token is lower than one it accepted before.
/// `actions` must be in real-time order.
///
/// # Errors
/// [`SimError::MutualExclusion`] with a [`MutexViolation::StaleAccepted`] per bad action.
pub fn check_fencing(actions: &[Action]) -> Result<(), SimError> {
    let mut highest: BTreeMap<&str, u64> = BTreeMap::new();
    let mut violations = Vec::new();
    for a in actions.iter().filter(|a| a.accepted) {
        let h = highest.entry(a.resource.as_str()).or_insert(a.token);
        if a.token < *h {
            violations.push(MutexViolation::StaleAccepted {
                action: a.clone(),
                highest: *h,
            });
        } else {
            *h = a.token;
        }
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(SimError::MutualExclusion(violations))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(holder: &str, token: u64, from: u64, until: u64) -> Grant {
        Grant {
            resource: "lock".into(),
            holder: holder.into(),
            token,
            from: Duration::from_millis(from),
            until: Duration::from_millis(until),
        }
    }

    fn errs(r: Result<(), SimError>) -> Vec<MutexViolation> {
        match r {
            Err(SimError::MutualExclusion(v)) => v,
            other => panic!("expected violations, got {other:?}"),
        }
    }

    #[test]
    fn disjoint_increasing_grants_pass_and_renewals_merge() {
        let grants = [g("a", 1, 0, 100), g("a", 1, 90, 200), g("b", 5, 200, 300)];
        assert!(check_mutual_exclusion(&grants).is_ok());
    }

    #[test]
    fn overlap_and_token_order_are_caught() {
        let v = errs(check_mutual_exclusion(&[
            g("a", 1, 0, 100),
            g("b", 2, 50, 150),
        ]));
        assert_eq!(v.len(), 1);
        assert!(
            matches!(&v[0], MutexViolation::Overlap { overlap, .. } if overlap.as_millis() == 50)
        );
        let v = errs(check_mutual_exclusion(&[
            g("a", 3, 0, 100),
            g("b", 2, 100, 150),
        ]));
        assert!(matches!(&v[0], MutexViolation::TokenNotIncreasing { .. }));
        let v = errs(check_mutual_exclusion(&[
            g("a", 3, 0, 100),
            g("b", 3, 200, 300),
        ]));
        assert!(matches!(
            &v[0],
            MutexViolation::TokenReused { token: 3, .. }
        ));
        assert!(v[0].to_string().contains("granted to both a and b"));
    }

    #[test]
    fn stale_token_must_be_rejected() {
        // The one fence implementation (quorate-types) is what a resource uses.
        let mut res = quorate_types::FenceGuard::default();
        let t = quorate_types::FencingToken;
        assert_eq!(res.admit(t(2)), Ok(()));
        assert_eq!(
            res.admit(t(1)),
            Err(quorate_types::StaleToken {
                got: t(1),
                highest: t(2)
            })
        );
        assert_eq!(res.admit(t(3)), Ok(()));
        let act = |token, accepted| Action {
            resource: "db".into(),
            holder: "x".into(),
            token,
            at: Duration::ZERO,
            accepted,
        };
        assert!(check_fencing(&[act(2, true), act(1, false), act(3, true)]).is_ok());
        let v = errs(check_fencing(&[act(2, true), act(1, true)]));
        assert!(matches!(
            &v[0],
            MutexViolation::StaleAccepted { highest: 2, .. }
        ));
    }
}
