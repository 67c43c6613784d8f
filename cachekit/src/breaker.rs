//! The circuit breaker in front of the backend.
//!
//! Closed: calls go through; `failure_threshold` consecutive backend faults open it.
//! Open: calls skip the backend at once (no waiting on timeouts or connects) for `open_for`.
//! Half-open: after `open_for`, one call at a time probes the backend; the probe's success
//! closes the breaker, its failure opens it again. Only the probe closes it: a call admitted
//! before the breaker opened that happens to succeed late, or a health check, changes nothing.
//! A probe whose outcome never arrives (its caller was cancelled) does not wedge the breaker:
//! another probe is allowed after `open_for`.
//!
//! Only transport faults (timeouts, unreachable server) are reported as failures; the guard
//! decides that.
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

/// What [`Breaker::allow`] grants: a call, which may be the half-open probe.
#[derive(Debug, Clone, Copy)]
#[must_use]
pub(crate) struct Permit {
    probe: bool,
}

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

    /// Whether a call may go to the backend now, and as what. Closed: one atomic load.
    pub(crate) fn allow(&self) -> Option<Permit> {
        match self.state.load(Ordering::Acquire) {
            CLOSED => Some(Permit { probe: false }),
            current => self.try_probe(current),
        }
    }

    fn try_probe(&self, current: u8) -> Option<Permit> {
        let mut since = self.since.lock().unwrap_or_else(|e| e.into_inner());
        // Re-check under the lock: another caller may have started the probe or closed it.
        let state = self.state.load(Ordering::Acquire);
        if state == CLOSED {
            return Some(Permit { probe: false });
        }
        if since.elapsed() < self.open_for || (state != current && state != OPEN) {
            return None;
        }
        *since = Instant::now();
        self.state.store(HALF_OPEN, Ordering::Release);
        tracing::debug!("cache circuit breaker half-open: probing the backend");
        Some(Permit { probe: true })
    }

    pub(crate) fn open_for(&self) -> Duration {
        self.open_for
    }

    /// Records the success of a call admitted with `permit`; returns `true` when it was the
    /// probe and closed the breaker. Other successes only reset the failure count of a closed
    /// breaker.
    pub(crate) fn on_success(&self, permit: Permit) -> bool {
        let state = self.state.load(Ordering::Acquire);
        if permit.probe {
            let _since = self.since.lock().unwrap_or_else(|e| e.into_inner());
            if self
                .state
                .compare_exchange(HALF_OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                tracing::info!("cache backend recovered; circuit breaker closed");
                return true;
            }
            return false;
        }
        if state == CLOSED && self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        false
    }

    /// Opens the breaker now, whatever the failure count.
    pub(crate) fn trip(&self) {
        let mut since = self.since.lock().unwrap_or_else(|e| e.into_inner());
        *since = Instant::now();
        self.consecutive_failures
            .store(self.failure_threshold, Ordering::Relaxed);
        self.state.store(OPEN, Ordering::Release);
    }

    /// Records a transport fault of a call admitted with `permit`.
    /// A call admitted before the breaker opened that fails late does not reopen a half-open
    /// breaker: only the probe's outcome decides it.
    pub(crate) fn on_failure(&self, permit: Permit) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let state = self.state.load(Ordering::Acquire);
        let trip = (state == HALF_OPEN && permit.probe)
            || (state == CLOSED && failures >= self.failure_threshold);
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
        let p = b.allow().unwrap();
        b.on_failure(p);
        b.on_failure(p);
        assert_eq!(b.state(), BreakerState::Closed);
        b.on_failure(p);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.allow().is_none());

        tokio::time::advance(Duration::from_secs(5)).await;
        let probe = b.allow().expect("one probe after the cool-down");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.allow().is_none(), "only one probe at a time");

        b.on_failure(probe);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.allow().is_none());

        tokio::time::advance(Duration::from_secs(5)).await;
        let probe = b.allow().unwrap();
        assert!(b.on_success(probe));
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allow().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_failure_count() {
        let b = Breaker::new(2, Duration::from_secs(1));
        let p = b.allow().unwrap();
        b.on_failure(p);
        assert!(!b.on_success(p));
        b.on_failure(p);
        assert_eq!(b.state(), BreakerState::Closed);
        b.on_failure(p);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_probe_closes_the_breaker() {
        let b = Breaker::new(1, Duration::from_secs(1));
        let early = b.allow().unwrap(); // admitted while closed, answers late
        b.on_failure(early);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.on_success(early), "a late success of an earlier call");
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(1)).await;
        let probe = b.allow().unwrap();
        assert!(!b.on_success(early));
        b.on_failure(early);
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen,
            "a late failure of an earlier call"
        );
        assert!(b.on_success(probe));
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_probe_does_not_wedge_the_breaker() {
        let b = Breaker::new(1, Duration::from_secs(2));
        b.on_failure(b.allow().unwrap());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(b.allow().is_some()); // the probe's caller is cancelled: no outcome is reported
        assert!(b.allow().is_none());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(
            b.allow().is_some(),
            "a new probe once the old one is overdue"
        );
    }
}
