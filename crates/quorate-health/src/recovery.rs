//! Recovery actions (run when a check turns critical, with bounded retries and backoff) and
//! recovered hooks (run when it leaves critical for passing or warning).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use quorate_health_api::{CheckId, Transition};
use tokio_util::sync::CancellationToken;

use crate::config::RecoveryPolicy;
use crate::core::backoff_delay;
use crate::error::fmt_duration;

/// What a recovery action is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryContext {
    /// The check that turned critical.
    pub check: CheckId,
    /// This attempt, 1-based.
    pub attempt: u32,
    /// The policy's `attempts_max`.
    pub attempts_max: u32,
    /// The message of the result that made it critical.
    pub message: String,
}

/// The boxed future of a [`RecoveryAction`].
pub type RecoveryFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// The boxed future of a [`RecoveredHook`].
pub type HookFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// An async action that tries to repair a component after its check turned critical
/// (restart a worker, reconnect a pool, ...). `Err(reason)` means "try again" (within the
/// policy's bounds). Closures `Fn(RecoveryContext) -> impl Future<Output = Result<(), String>>`
/// implement it.
pub trait RecoveryAction: Send + Sync + 'static {
    /// Make one attempt.
    fn recover(&self, ctx: RecoveryContext) -> RecoveryFuture<'_>;
}

impl<F, Fut> RecoveryAction for F
where
    F: Fn(RecoveryContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    fn recover(&self, ctx: RecoveryContext) -> RecoveryFuture<'_> {
        Box::pin(self(ctx))
    }
}

/// An async notification that a check left critical for passing or warning. Closures
/// `Fn(Transition) -> impl Future<Output = ()>` implement it.
pub trait RecoveredHook: Send + Sync + 'static {
    /// Called once per such transition.
    fn recovered(&self, transition: Transition) -> HookFuture<'_>;
}

impl<F, Fut> RecoveredHook for F
where
    F: Fn(Transition) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn recovered(&self, transition: Transition) -> HookFuture<'_> {
        Box::pin(self(transition))
    }
}

/// The recovery behaviour of one check.
///
/// ```
/// use quorate_health::{Recovery, RecoveryContext, RecoveryPolicy};
/// use quorate_health_api::Transition;
///
/// let recovery = Recovery::new(RecoveryPolicy::standard())
///     .action(|ctx: RecoveryContext| async move {
///         // e.g. restart the worker; Err asks for another attempt
///         Ok::<(), String>(())
///     })
///     .on_recovered(|t: Transition| async move { let _ = t; });
/// ```
#[derive(Clone)]
pub struct Recovery {
    /// Run on every transition to critical.
    pub action: Option<Arc<dyn RecoveryAction>>,
    /// Run on every transition from critical to passing or warning.
    pub on_recovered: Option<Arc<dyn RecoveredHook>>,
    /// Retries and timeouts of `action` (the hook gets `attempt_timeout`, one try).
    pub policy: RecoveryPolicy,
}

impl std::fmt::Debug for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recovery")
            .field("action", &self.action.is_some())
            .field("on_recovered", &self.on_recovered.is_some())
            .field("policy", &self.policy)
            .finish()
    }
}

impl Recovery {
    /// No action, no hook, the given policy.
    #[must_use]
    pub fn new(policy: RecoveryPolicy) -> Recovery {
        Recovery {
            action: None,
            on_recovered: None,
            policy,
        }
    }

    /// Set the recovery action.
    #[must_use]
    pub fn action(mut self, action: impl RecoveryAction) -> Recovery {
        self.action = Some(Arc::new(action));
        self
    }

    /// Set the recovered hook.
    #[must_use]
    pub fn on_recovered(mut self, hook: impl RecoveredHook) -> Recovery {
        self.on_recovered = Some(Arc::new(hook));
        self
    }
}

/// Counters shared by recovery tasks.
#[derive(Debug, Default)]
pub(crate) struct RecoveryCounters {
    pub(crate) started: AtomicU64,
    pub(crate) attempts: AtomicU64,
    pub(crate) succeeded: AtomicU64,
    pub(crate) gave_up: AtomicU64,
    pub(crate) hooks: AtomicU64,
}

/// Run `action` up to `policy.attempts_max` times with backoff, until one attempt succeeds or
/// `token` is cancelled (the check recovered, was disabled or the monitor stopped).
pub(crate) async fn run_recovery(
    action: Arc<dyn RecoveryAction>,
    policy: RecoveryPolicy,
    check: CheckId,
    message: String,
    token: CancellationToken,
    counters: Arc<RecoveryCounters>,
) {
    counters.started.fetch_add(1, Ordering::Relaxed);
    let attempts_max = policy.attempts_max.get();
    for attempt in 1..=attempts_max {
        let ctx = RecoveryContext {
            check: check.clone(),
            attempt,
            attempts_max,
            message: message.clone(),
        };
        counters.attempts.fetch_add(1, Ordering::Relaxed);
        let action = Arc::clone(&action);
        let attempt_fut = AssertUnwindSafe(async move { action.recover(ctx).await }).catch_unwind();
        let outcome = tokio::select! {
            biased;
            () = token.cancelled() => return,
            r = tokio::time::timeout(policy.attempt_timeout, attempt_fut) => r,
        };
        let failure = match outcome {
            Ok(Ok(Ok(()))) => {
                counters.succeeded.fetch_add(1, Ordering::Relaxed);
                tracing::info!(check = %check, attempt, "recovery action succeeded");
                return;
            }
            Ok(Ok(Err(reason))) => reason,
            Ok(Err(_panic)) => "recovery action panicked".to_owned(),
            Err(_) => format!(
                "recovery action timed out after {}",
                fmt_duration(policy.attempt_timeout)
            ),
        };
        tracing::warn!(check = %check, attempt, attempts_max, %failure, "recovery attempt failed");
        if attempt == attempts_max {
            counters.gave_up.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(check = %check, attempts_max, "recovery gave up");
            return;
        }
        let delay: Duration = backoff_delay(policy.backoff_initial, policy.backoff_max, attempt);
        tokio::select! {
            biased;
            () = token.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Run a recovered hook once, under `timeout`.
pub(crate) async fn run_hook(
    hook: Arc<dyn RecoveredHook>,
    transition: Transition,
    timeout: Duration,
    token: CancellationToken,
    counters: Arc<RecoveryCounters>,
) {
    counters.hooks.fetch_add(1, Ordering::Relaxed);
    let check = transition.check.clone();
    let fut = AssertUnwindSafe(async move { hook.recovered(transition).await }).catch_unwind();
    let outcome = tokio::select! {
        biased;
        () = token.cancelled() => return,
        r = tokio::time::timeout(timeout, fut) => r,
    };
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(_panic)) => tracing::warn!(check = %check, "recovered hook panicked"),
        Err(_) => tracing::warn!(check = %check, "recovered hook timed out"),
    }
}
