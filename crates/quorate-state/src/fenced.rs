//! [`Fenced<T>`]: a resource that admits an action only if its fencing token is at least the
//! highest token seen, using the one implementation, `quorate_types::FenceGuard`.

use std::sync::Mutex as StdMutex;

use quorate_types::{FenceGuard, FencingToken, StaleToken};

/// A value guarded by fencing tokens: [`apply`](Fenced::apply) runs an action only if its token
/// is not below the highest one admitted so far. Put it where the protected resource lives
/// (the process that owns the file, the table, the external API).
///
/// ```
/// use quorate_state::Fenced;
/// use quorate_types::FencingToken;
/// let store = Fenced::new(Vec::<&str>::new());
/// store.apply(FencingToken(7), |v| v.push("by holder 7")).unwrap();
/// // A stale holder (lost its lock, token 5) is rejected, even if it still thinks it holds.
/// assert!(store.apply(FencingToken(5), |v| v.push("by holder 5")).is_err());
/// assert_eq!(store.apply(FencingToken(7), |v| v.len()).unwrap(), 1);
/// ```
#[derive(Debug, Default)]
pub struct Fenced<T> {
    inner: StdMutex<(FenceGuard, T)>,
}

impl<T> Fenced<T> {
    /// `value`, no token seen yet.
    pub fn new(value: T) -> Fenced<T> {
        Fenced {
            inner: StdMutex::new((FenceGuard::default(), value)),
        }
    }

    /// Runs `action` on the value if `token` is at least the highest seen (and remembers it);
    /// otherwise rejects it with [`StaleToken`] and leaves the value untouched.
    pub fn apply<R>(
        &self,
        token: FencingToken,
        action: impl FnOnce(&mut T) -> R,
    ) -> Result<R, StaleToken> {
        let mut g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.0.admit(token)?;
        Ok(action(&mut g.1))
    }

    /// The highest token admitted so far.
    pub fn highest(&self) -> Option<FencingToken> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .highest()
    }

    /// The value.
    pub fn into_inner(self) -> T {
        self.inner
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1
    }
}
