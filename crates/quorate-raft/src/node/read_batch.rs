//! Read-index batching: concurrent linearizable reads on the leader share one quorum round.
//!
//! A linearizable read needs a round that confirms leadership with a quorum and *starts after
//! the read arrived* (then the read index it returns covers every write acknowledged before
//! the read began). Without batching each read runs its own round (openraft's
//! `ensure_linearizable` broadcasts a heartbeat to every follower per call), so 64 clients
//! cost 64 broadcasts per read period.
//!
//! [`ReadBatch::run`] keeps at most one round in flight. The first caller drives a round at
//! once. Callers that arrive while a round is in flight wait; when it ends, one of them is
//! handed the drive and runs the next round for all of them (a round that started after each
//! of them arrived), so every caller's answer comes from a round that began after it called.
//! A driver that is cancelled mid-round (its request dropped) hands the drive on from its
//! drop guard, and the callers it was serving enqueue again: nobody waits on a dead driver.

use std::future::Future;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::oneshot;

/// What a waiting caller is told.
enum Msg<T> {
    /// The result of a round that started after the caller arrived.
    Done(T),
    /// The caller now drives the next round.
    Drive,
}

struct State<T> {
    /// Whether a driver exists (running a round, or handed the drive and about to).
    running: bool,
    /// Callers that arrived while a round was in flight.
    waiting: Vec<oneshot::Sender<Msg<T>>>,
    /// Rounds run (for tests and counters).
    rounds: u64,
}

/// One round in flight at a time, shared by everyone who arrived before it started.
pub(crate) struct ReadBatch<T> {
    state: Mutex<State<T>>,
}

impl<T> Default for ReadBatch<T> {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                running: false,
                waiting: Vec::new(),
                rounds: 0,
            }),
        }
    }
}

impl<T: Clone> ReadBatch<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rounds run so far.
    #[cfg(test)]
    pub(crate) fn rounds(&self) -> u64 {
        self.lock().rounds
    }

    /// The result of a `round` that started after this call: run by this caller, or shared
    /// with concurrent callers.
    pub(crate) async fn run<F, Fut>(&self, round: F) -> T
    where
        F: Fn() -> Fut,
        Fut: Future<Output = T>,
    {
        loop {
            let (tx, rx) = oneshot::channel();
            let drive = {
                let mut st = self.lock();
                if st.running {
                    st.waiting.push(tx);
                    false
                } else {
                    st.running = true;
                    true
                }
            };
            if drive {
                return self.drive(&round).await;
            }
            match rx.await {
                Ok(Msg::Done(r)) => return r,
                Ok(Msg::Drive) => return self.drive(&round).await,
                // The driver serving us was cancelled mid-round: queue again.
                Err(_) => {}
            }
        }
    }

    /// Runs one round for this caller and everyone waiting now, answers them, and hands the
    /// drive to a caller that arrived meanwhile (or ends the drive).
    async fn drive<F, Fut>(&self, round: &F) -> T
    where
        F: Fn() -> Fut,
        Fut: Future<Output = T>,
    {
        let guard = HandOff { batch: self };
        let served = {
            let mut st = self.lock();
            st.rounds += 1;
            std::mem::take(&mut st.waiting)
        };
        let r = round().await;
        for w in served {
            let _ = w.send(Msg::Done(r.clone()));
        }
        drop(guard);
        r
    }

    /// Passes the drive to the first waiting caller still there, or ends the drive.
    fn hand_off(&self) {
        let mut st = self.lock();
        while !st.waiting.is_empty() {
            let next = st.waiting.remove(0);
            if next.send(Msg::Drive).is_ok() {
                return;
            }
        }
        st.running = false;
    }
}

/// Hands the drive on when the driver finishes or is dropped mid-round.
struct HandOff<'a, T: Clone> {
    batch: &'a ReadBatch<T>,
}

impl<T: Clone> Drop for HandOff<'_, T> {
    fn drop(&mut self) {
        self.batch.hand_off();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;

    /// A round that records its start number, takes 1 ms (paused time), and returns the start
    /// number: a caller's answer must come from a round that started after it called.
    async fn round(started: &AtomicU64) -> u64 {
        let n = started.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
        n
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_rounds_that_start_after_they_called() {
        let batch = Arc::new(ReadBatch::<u64>::default());
        let started = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..64u64 {
            let (batch, started) = (batch.clone(), started.clone());
            tasks.spawn(async move {
                // Spread the arrivals over several rounds.
                tokio::time::sleep(Duration::from_micros(i * 50)).await;
                let before = started.load(Ordering::SeqCst);
                let got = batch.run(|| round(&started)).await;
                assert!(
                    got > before,
                    "caller {i} got round {got}, which started before it called (rounds started then: {before})"
                );
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("caller");
        }
        let rounds = batch.rounds();
        assert!(
            (2..=10).contains(&rounds),
            "64 callers over about 3 ms of 1 ms rounds ran {rounds} rounds"
        );
        assert_eq!(rounds, started.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_caller_runs_its_own_round_each_time() {
        let batch = ReadBatch::<u64>::default();
        let started = AtomicU64::new(0);
        for want in 1..=3 {
            assert_eq!(batch.run(|| round(&started)).await, want);
        }
        assert_eq!(batch.rounds(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_driver_cancelled_mid_round_hands_the_drive_on() {
        let batch = Arc::new(ReadBatch::<u64>::default());
        let started = Arc::new(AtomicU64::new(0));
        // The driver: cancelled after 0.5 ms, in the middle of its 1 ms round.
        let driver = {
            let (batch, started) = (batch.clone(), started.clone());
            tokio::spawn(async move { batch.run(|| round(&started)).await })
        };
        tokio::task::yield_now().await;
        // Two callers queue behind it.
        let mut waiters = tokio::task::JoinSet::new();
        for _ in 0..2 {
            let (batch, started) = (batch.clone(), started.clone());
            waiters.spawn(async move { batch.run(|| round(&started)).await });
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
        driver.abort();
        assert!(driver.await.is_err(), "the driver was cancelled");
        let mut got = Vec::new();
        while let Some(r) = waiters.join_next().await {
            got.push(r.expect("waiter"));
        }
        // Both were served by a round after the cancelled one (round 1).
        assert!(got.iter().all(|&g| g >= 2), "answers {got:?}");
        assert!(!batch.lock().running, "the drive ended");
    }
}
