//! The circuit breaker of each channel: after some consecutive failures of a receiver, its
//! channel's deliveries wait a while without spending attempts, instead of hammering it.
//!
//! A breaker is `closed` (sends go), `open` until a time (sends wait), then `half-open`: the
//! next send tries the receiver, and one more failure opens it again while a success closes
//! it. The worker changes breakers; the channels API and `/metrics` show them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::metrics::{ChannelLabel, Metrics};

/// A channel: its owner and name.
pub type ChannelKey = (String, String);

#[derive(Debug, Default, Clone, Copy)]
struct Breaker {
    /// Consecutive failures of the receiver.
    failures: u32,
    /// While later than now, the breaker is open.
    open_until: i64,
}

/// A breaker as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Circuit {
    pub state: State,
    /// When an open breaker lets the next send try (ms since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
    /// Consecutive failures of the receiver.
    pub failures: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Closed,
    HalfOpen,
    Open,
}

impl State {
    /// The value of `tellify_channel_circuit_state`.
    fn gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }
}

/// Every channel's breaker. A std mutex: held for a lookup, never across an await.
pub struct Breakers {
    /// Consecutive failures that open a breaker.
    failures: u32,
    /// How long it stays open.
    open_for: Duration,
    breakers: Mutex<HashMap<ChannelKey, Breaker>>,
}

impl Breakers {
    pub fn new(failures: u32, open_for: Duration) -> Self {
        Self {
            failures,
            open_for,
            breakers: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ChannelKey, Breaker>> {
        self.breakers.lock().expect("breakers poisoned")
    }

    /// Until when `channel`'s sends wait, if its breaker is open at `now`.
    pub fn open_until(&self, channel: &ChannelKey, now: i64) -> Option<i64> {
        self.lock()
            .get(channel)
            .map(|b| b.open_until)
            .filter(|&until| until > now)
    }

    /// A send through `channel` went: the breaker closes.
    pub fn succeeded(&self, channel: &ChannelKey) {
        if let Some(b) = self.lock().get_mut(channel) {
            *b = Breaker::default();
        }
    }

    /// The receiver of `channel` failed at `now`: one failure too many opens the breaker.
    pub fn failed(&self, channel: &ChannelKey, now: i64) {
        let mut breakers = self.lock();
        let b = breakers.entry(channel.clone()).or_default();
        b.failures += 1;
        if b.failures >= self.failures {
            b.open_until = now + self.open_for.as_millis() as i64;
        }
    }

    /// `channel`'s breaker at `now`.
    pub fn circuit(&self, channel: &ChannelKey, now: i64) -> Circuit {
        let b = self.lock().get(channel).copied().unwrap_or_default();
        self.shown(b, now)
    }

    fn shown(&self, b: Breaker, now: i64) -> Circuit {
        let state = if b.failures < self.failures {
            State::Closed
        } else if b.open_until > now {
            State::Open
        } else {
            State::HalfOpen
        };
        Circuit {
            state,
            until: (state == State::Open).then_some(b.open_until),
            failures: b.failures,
        }
    }

    /// Sets `tellify_channel_circuit_state` of every channel that has a breaker at `now`.
    pub fn publish(&self, metrics: &Metrics, now: i64) {
        for (channel, b) in self.lock().iter() {
            let label = ChannelLabel {
                owner: channel.0.clone(),
                channel: channel.1.clone(),
            };
            metrics
                .channel_circuit
                .get_or_create(&label)
                .set(self.shown(*b, now).state.gauge());
        }
    }

    /// Forgets a deleted channel's breaker (and its gauge).
    pub fn remove(&self, channel: &ChannelKey, metrics: &Metrics) {
        self.lock().remove(channel);
        metrics.channel_circuit.remove(&ChannelLabel {
            owner: channel.0.clone(),
            channel: channel.1.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_open_the_breaker_which_half_opens_and_closes() {
        let breakers = Breakers::new(3, Duration::from_secs(60));
        let ch = ("alice".to_owned(), "hook".to_owned());
        assert_eq!(breakers.circuit(&ch, 0).state, State::Closed);
        breakers.failed(&ch, 0);
        breakers.failed(&ch, 0);
        assert_eq!(breakers.open_until(&ch, 0), None);
        breakers.failed(&ch, 1_000);
        assert_eq!(
            breakers.circuit(&ch, 1_000),
            Circuit {
                state: State::Open,
                until: Some(61_000),
                failures: 3
            }
        );
        assert_eq!(breakers.open_until(&ch, 2_000), Some(61_000));
        assert_eq!(breakers.circuit(&ch, 61_000).state, State::HalfOpen);
        assert_eq!(breakers.open_until(&ch, 61_000), None);
        // The half-open try fails: open again at once.
        breakers.failed(&ch, 61_000);
        assert_eq!(breakers.circuit(&ch, 61_001).state, State::Open);
        breakers.succeeded(&ch);
        assert_eq!(breakers.circuit(&ch, 61_001).state, State::Closed);
    }
}
