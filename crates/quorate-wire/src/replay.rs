//! The anti-replay guard behind [`crate::Opener`]: a bounded table of sender sessions, each with
//! the highest sequence number seen and a bitmap of the 1024 below it.
// tidy:pure-core

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::time::Duration;

/// How many sequence numbers below the highest one are remembered per session.
const WINDOW: u64 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;

struct Session {
    highest: u64,
    /// Bit `i` set: `highest - i` was accepted.
    seen: [u64; WORDS],
    last_ts: u64,
}

impl Session {
    fn new(seq: u64, ts: u64) -> Self {
        let mut seen = [0u64; WORDS];
        seen[0] = 1;
        Self {
            highest: seq,
            seen,
            last_ts: ts,
        }
    }

    fn bit(&self, back: u64) -> bool {
        let (w, b) = ((back / 64) as usize, back % 64);
        self.seen[w] & (1 << b) != 0
    }

    fn set(&mut self, back: u64) {
        let (w, b) = ((back / 64) as usize, back % 64);
        self.seen[w] |= 1 << b;
    }

    fn shift(&mut self, by: u64) {
        if by >= WINDOW {
            self.seen = [0; WORDS];
            return;
        }
        let (words, bits) = ((by / 64) as usize, by % 64);
        for i in (0..WORDS).rev() {
            let mut v = 0u64;
            if i >= words {
                v = self.seen[i - words] << bits;
                if bits > 0 && i > words {
                    v |= self.seen[i - words - 1] >> (64 - bits);
                }
            }
            self.seen[i] = v;
        }
    }

    fn accept(&mut self, seq: u64, ts: u64) -> Result<(), &'static str> {
        if seq > self.highest {
            self.shift(seq - self.highest);
            self.highest = seq;
            self.set(0);
        } else {
            let back = self.highest - seq;
            if back >= WINDOW {
                return Err("sequence number is older than the replay window");
            }
            if self.bit(back) {
                return Err("frame already accepted");
            }
            self.set(back);
        }
        self.last_ts = self.last_ts.max(ts);
        Ok(())
    }
}

pub(crate) struct ReplayGuard {
    sessions: HashMap<u64, Session>,
    /// Sessions by last activity, for eviction in order.
    by_ts: BTreeMap<(u64, u64), ()>,
    floor_ms: u64,
    window_ms: u64,
    skew_ms: u64,
    sessions_max: NonZeroUsize,
}

impl ReplayGuard {
    pub(crate) fn new(
        now_ms: u64,
        window: Duration,
        skew: Duration,
        sessions_max: NonZeroUsize,
    ) -> Self {
        let skew_ms = u64::try_from(skew.as_millis()).unwrap_or(u64::MAX);
        Self {
            sessions: HashMap::new(),
            by_ts: BTreeMap::new(),
            floor_ms: now_ms.saturating_sub(skew_ms),
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            skew_ms,
            sessions_max,
        }
    }

    pub(crate) fn check_and_record(
        &mut self,
        session: u64,
        seq: u64,
        ts: u64,
        now: u64,
    ) -> Result<(), &'static str> {
        if ts > now.saturating_add(self.skew_ms) {
            return Err("timestamp is further in the future than clock_skew_max");
        }
        if ts.saturating_add(self.window_ms) < now {
            return Err("frame is older than replay_window");
        }
        self.expire(now);
        match self.sessions.get_mut(&session) {
            Some(s) => {
                let old = s.last_ts;
                s.accept(seq, ts)?;
                let new = s.last_ts;
                if new != old {
                    self.by_ts.remove(&(old, session));
                    self.by_ts.insert((new, session), ());
                }
            }
            None => {
                if ts <= self.floor_ms {
                    return Err("unknown session with a timestamp at or below the replay floor");
                }
                if self.sessions.len() >= self.sessions_max.get() {
                    self.evict_oldest();
                }
                self.sessions.insert(session, Session::new(seq, ts));
                self.by_ts.insert((ts, session), ());
            }
        }
        Ok(())
    }

    fn evict_oldest(&mut self) {
        if let Some(((ts, session), ())) = self.by_ts.pop_first() {
            self.sessions.remove(&session);
            self.floor_ms = self.floor_ms.max(ts);
        }
    }

    /// Forgets sessions idle longer than the window: their frames are rejected as too old anyway.
    fn expire(&mut self, now: u64) {
        while let Some((&(ts, _), ())) = self.by_ts.first_key_value() {
            if ts.saturating_add(self.window_ms) >= now {
                break;
            }
            self.evict_oldest();
        }
    }

    #[cfg(test)]
    pub(crate) fn sessions(&self) -> usize {
        self.sessions.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    fn guard(max: usize) -> ReplayGuard {
        ReplayGuard::new(
            10_000,
            Duration::from_secs(30),
            Duration::from_secs(2),
            NonZeroUsize::new(max).unwrap(),
        )
    }

    #[test]
    fn window_accepts_out_of_order_once() {
        let mut g = guard(8);
        let now = 20_000;
        for seq in [5, 3, 4, 1, 2, 1000, 10] {
            g.check_and_record(1, seq, now, now).unwrap();
        }
        for seq in [5, 3, 1000, 10] {
            assert_eq!(
                g.check_and_record(1, seq, now, now),
                Err("frame already accepted")
            );
        }
        g.check_and_record(1, 5000, now, now).unwrap();
        assert!(g.check_and_record(1, 11, now, now).is_err());
        g.check_and_record(1, 4999, now, now).unwrap();
        assert!(g.check_and_record(1, 4999, now, now).is_err());
    }

    #[test]
    fn shift_by_partial_words_keeps_bits() {
        let mut g = guard(8);
        let now = 20_000;
        g.check_and_record(7, 100, now, now).unwrap();
        g.check_and_record(7, 170, now, now).unwrap(); // shift by 70 crosses a word
        assert!(g.check_and_record(7, 100, now, now).is_err());
        g.check_and_record(7, 101, now, now).unwrap();
    }

    #[test]
    fn time_bounds() {
        let mut g = guard(8);
        assert!(
            g.check_and_record(1, 1, 7_900, 10_500).is_err(),
            "below floor"
        );
        assert!(g.check_and_record(1, 1, 13_000, 10_500).is_err(), "future");
        g.check_and_record(1, 1, 10_400, 10_500).unwrap();
        assert!(g.check_and_record(1, 2, 10_400, 50_000).is_err(), "too old");
    }

    #[test]
    fn eviction_raises_floor_and_bounds_memory() {
        let mut g = guard(2);
        g.check_and_record(1, 1, 11_000, 11_000).unwrap();
        g.check_and_record(2, 1, 11_100, 11_100).unwrap();
        g.check_and_record(3, 1, 11_200, 11_200).unwrap();
        assert_eq!(g.sessions(), 2);
        // Session 1 was evicted; its old frame would look new, but the floor now rejects it.
        assert!(g.check_and_record(1, 1, 11_000, 11_300).is_err());
    }
}
