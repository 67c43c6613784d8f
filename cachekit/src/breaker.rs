//! The circuit breaker in front of the backend.
//!
//! Closed: calls go through; `failure_threshold` consecutive backend faults open it.
//! Open: calls skip the backend at once (no waiting on timeouts or connects) for `open_for`.
//! Half-open: after `open_for`, one call at a time probes the backend; a success closes the
//! breaker, a failure opens it again. A probe whose outcome never arrives (its caller was
//! cancelled) does not wedge the breaker: another probe is allowed after `open_for`.
//!
//! Time is `tokio::time::Instant`, so tests drive it with `tokio::time::pause`/`advance`.

use serde::Serialize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// The state of the circuit breaker, reported in [`CacheStats`](crate::CacheStats) and
/// [`Health`](crate::Health).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BreakerState {
    /// The backend is in use.
    Closed,
    /// The backend failed repeatedly and is skipped until the cool-down ends.
    Open,
    /// The cool-down ended; a probe call is testing the backend.
    HalfOpen,
}

impl std::fmt::Display for BreakerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        })
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

#[derive(Debug)]
pub(crate) struct Breaker {
    failure_threshold: u32,
    open_for: Duration,
    state: AtomicU8,
    consecutive_failures: AtomicU32,
    /// When the breaker opened, or when the current probe started.
    since: Mutex<Instant>,
}

impl Breaker {
    pub(crate) fn new(failure_threshold: u32, open_for: Duration) -> Self {
        Self {
            failure_threshold: failure_threshold.max(1),
            open_for,
            state: AtomicU8::new(CLOSED),
            consecutive_failures: AtomicU32::new(0),
            since: Mutex::new(Instant::now()),
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// Whether a call may go to the backend now. Closed: one atomic load.
    pub(crate) fn allow(&self) -> bool {
        match self.state.load(Ordering::Acquire) {
            CLOSED => true,
            current => self.try_probe(current),
        }
    }

    fn try_probe(&self, current: u8) -> bool {
        let mut since = self.since.lock().unwrap_or_else(|e| e.into_inner());
        if since.elapsed() < self.open_for {
            return false;
        }
        // Re-check under the lock: another caller may have started the probe or closed it.
        let state = self.state.load(Ordering::Acquire);
        if state == CLOSED {
            return true;
        }
        if state != current && state != OPEN {
            return false;
        }
        *since = Instant::now();
        self.state.store(HALF_OPEN, Ordering::Release);
        tracing::debug!("cache circuit breaker half-open: probing the backend");
        true
    }

    pub(crate) fn open_for(&self) -> Duration {
        self.open_for
    }

    /// Records a success; returns `true` when it closed an open or half-open breaker.
    pub(crate) fn on_success(&self) -> bool {
        let mut recovered = false;
        if self.state.load(Ordering::Acquire) != CLOSED {
            let _since = self.since.lock().unwrap_or_else(|e| e.into_inner());
            if self.state.swap(CLOSED, Ordering::AcqRel) != CLOSED {
                tracing::info!("cache backend recovered; circuit breaker closed");
                recovered = true;
            }
        }
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        recovered
    }

    /// Opens the breaker now, whatever the failure count.
    pub(crate) fn trip(&self) {
        let mut since = self.since.lock().unwrap_or_else(|e| e.into_inner());
        *since = Instant::now();
        self.consecutive_failures
            .store(self.failure_threshold, Ordering::Relaxed);
        self.state.store(OPEN, Ordering::Release);
    }

    pub(crate) fn on_failure(&self) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let state = self.state.load(Ordering::Acquire);
        let trip = state == HALF_OPEN || (state == CLOSED && failures >= self.failure_threshold);
        if trip {
            let mut since = self.since.lock().unwrap_or_else(|e| e.into_inner());
            *since = Instant::now();
            if self.state.swap(OPEN, Ordering::AcqRel) == CLOSED {
                tracing::warn!(
                    failures,
                    open_for = ?self.open_for,
                    "cache backend failing; circuit breaker open, calls skip the backend"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_and_recovers_through_half_open() {
        let b = Breaker::new(3, Duration::from_secs(5));
        assert!(b.allow());
        b.on_failure();
        b.on_failure();
        assert_eq!(b.state(), BreakerState::Closed);
        b.on_failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow());

        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(b.allow(), "one probe after the cool-down");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.allow(), "only one probe at a time");

        b.on_failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow());

        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(b.allow());
        b.on_success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allow());
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_failure_count() {
        let b = Breaker::new(2, Duration::from_secs(1));
        b.on_failure();
        b.on_success();
        b.on_failure();
        assert_eq!(b.state(), BreakerState::Closed);
        b.on_failure();
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_probe_does_not_wedge_the_breaker() {
        let b = Breaker::new(1, Duration::from_secs(2));
        b.on_failure();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(b.allow()); // the probe's caller is cancelled: no outcome is reported
        assert!(!b.allow());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(b.allow(), "a new probe once the old one is overdue");
    }
}
