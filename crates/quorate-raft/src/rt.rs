//! The openraft [`AsyncRuntime`] of quorate: tokio for tasks and time, plus a thread-local random
//! number generator that a simulation can seed ([`seed_thread_rng`]) so that runs replay.
//!
//! openraft 0.9's only randomness is `AsyncRuntime::thread_rng()`, drawn once per `Raft::new`
//! for the election timeout. With the stock `TokioRuntime` that is the OS-seeded `ThreadRng`
//! and a simulation seed does not decide which node campaigns first. Here the generator is a
//! per-thread `StdRng`: seeded from the OS on first use in production, or from
//! [`seed_thread_rng`] (turmoil runs every host on one thread, so one call per simulation run
//! makes every election timeout a function of the seed).

use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

use openraft::async_runtime::TokioOneShotSender;
use openraft::{AsyncRuntime, OptionalSend, TokioInstant};
use rand08::rngs::StdRng;
use rand08::{RngCore, SeedableRng};

thread_local! {
    static RNG: RefCell<Option<StdRng>> = const { RefCell::new(None) };
}

/// Seeds this thread's generator used for openraft's election timeouts. Call it once at the
/// start of a simulation run (before any `Raft::new` on this thread).
pub fn seed_thread_rng(seed: u64) {
    RNG.with(|r| *r.borrow_mut() = Some(StdRng::seed_from_u64(seed)));
}

fn with_rng<T>(f: impl FnOnce(&mut StdRng) -> T) -> T {
    RNG.with(|r| {
        let mut slot = r.borrow_mut();
        let rng = slot.get_or_insert_with(StdRng::from_entropy);
        f(rng)
    })
}

/// A handle to this thread's generator (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct QuorateRng;

impl RngCore for QuorateRng {
    fn next_u32(&mut self) -> u32 {
        with_rng(|r| r.next_u32())
    }

    fn next_u64(&mut self) -> u64 {
        with_rng(|r| r.next_u64())
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        with_rng(|r| r.fill_bytes(dest));
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand08::Error> {
        with_rng(|r| r.try_fill_bytes(dest))
    }
}

/// tokio plus [`QuorateRng`]; the `AsyncRuntime` of [`crate::TypeConfig`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuorateRt;

impl AsyncRuntime for QuorateRt {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = tokio::time::error::Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = tokio::time::Timeout<T>;
    type ThreadLocalRng = QuorateRng;
    type OneshotSender<T: OptionalSend> = TokioOneShotSender<T>;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        tokio::task::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        QuorateRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (TokioOneShotSender(tx), rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_generator_replays() {
        seed_thread_rng(7);
        let a: Vec<u64> = (0..4).map(|_| QuorateRng.next_u64()).collect();
        seed_thread_rng(7);
        let b: Vec<u64> = (0..4).map(|_| QuorateRng.next_u64()).collect();
        assert_eq!(a, b);
    }
}
