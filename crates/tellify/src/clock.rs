//! Time, injected: the system clock in production, a manual one for tests.
//!
//! Everything that asks "what time is it" goes through [`Clock`], so tests move time forward
//! instead of sleeping. The real binary uses the manual clock when `TELLIFY_FAKE_CLOCK` is set
//! (start time in epoch ms); the test-only `POST /api/v1/_test/clock` then advances it.

use std::sync::atomic::{AtomicI64, Ordering};

pub trait Clock: Send + Sync {
    /// Now, in epoch milliseconds.
    fn now(&self) -> i64;
    /// Moves a manual clock forward; the system clock refuses.
    fn advance(&self, _ms: i64) -> bool {
        false
    }
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
}

/// A clock that only moves when told to.
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start: i64) -> Self {
        Self(AtomicI64::new(start))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
    fn advance(&self, ms: i64) -> bool {
        self.0.fetch_add(ms.max(0), Ordering::SeqCst);
        true
    }
}
